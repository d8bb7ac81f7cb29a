// RNN / LSTM / GRU sequence modules (the cells are in test_rnn_cell.cpp): parameter names
// and init, values against hand-written double loops (multi-layer, bidirectional, batch_first, unbatched, initial
// state, the LSTM extras), float64 gradchecks w.r.t. input, initial state and every
// parameter, truncated BPTT with detach(), introspection records and gradient norms, the
// per-step cost of the sequence loop, bad inputs, and agreement with PyTorch fixtures.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "rnn_reference.hpp"

using namespace xg;
using namespace xg::nn;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::rnd;
using namespace rnnref;

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

TEST_CASE("LSTM: parameter names, shapes and order are PyTorch's (2 layers, bidirectional)") {
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
  const std::vector<std::pair<std::string, Shape>> want = {
      {"weight_ih_l0", {20, 3}},          {"weight_hh_l0", {20, 5}},         {"bias_ih_l0", {20}},
      {"bias_hh_l0", {20}},               {"weight_ih_l0_reverse", {20, 3}}, {"weight_hh_l0_reverse", {20, 5}},
      {"bias_ih_l0_reverse", {20}},       {"bias_hh_l0_reverse", {20}},      {"weight_ih_l1", {20, 10}},
      {"weight_hh_l1", {20, 5}},          {"bias_ih_l1", {20}},              {"bias_hh_l1", {20}},
      {"weight_ih_l1_reverse", {20, 10}}, {"weight_hh_l1_reverse", {20, 5}}, {"bias_ih_l1_reverse", {20}},
      {"bias_hh_l1_reverse", {20}}};
  const StateDict got = m.named_parameters();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    CHECK(got[i].first == want[i].first);
    CHECK(got[i].second.shape() == want[i].second);
    CHECK(got[i].second.requires_grad());
  }
  CHECK(m.weights(1, true).weight_ih.is_same(got[12].second));
  CHECK(m.num_parameters() == 2 * (20 * 3 + 20 * 5 + 40) + 2 * (20 * 10 + 20 * 5 + 40));
}

TEST_CASE("RNN / GRU / cells: gate multiples G*H, no biases with bias = false") {
  RNN rnn(RNNOptions{.input_size = 4, .hidden_size = 3, .bias = false});
  const StateDict r = rnn.named_parameters();
  REQUIRE(r.size() == 2);
  CHECK(r[0].first == "weight_ih_l0");
  CHECK(r[0].second.shape() == Shape{3, 4});
  CHECK(r[1].second.shape() == Shape{3, 3});
  CHECK_FALSE(rnn.weights(0).bias_ih.defined());

  GRU gru(GRUOptions{.input_size = 4, .hidden_size = 3, .num_layers = 2});
  CHECK(gru.weights(1).weight_ih.shape() == Shape{9, 3});
  CHECK(gru.named_parameters().size() == 8);

  LSTMCell lc(4, 3);
  GRUCell gc(4, 3);
  RNNCell rc(4, 3);
  const std::vector<std::string> names{"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  for (const StateDict& sd : {lc.named_parameters(), gc.named_parameters(), rc.named_parameters()}) {
    REQUIRE(sd.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(sd[i].first == names[i]);
  }
  CHECK(lc.weight_ih.shape() == Shape{12, 4});
  CHECK(gc.weight_hh.shape() == Shape{9, 3});
  CHECK(rc.bias_hh.shape() == Shape{3});
  CHECK_THROWS_AS(rnn.weights(1), IndexError);
  CHECK_THROWS_AS(rnn.weights(0, true), IndexError);
}

TEST_CASE("init: every parameter in U(-1/sqrt(H), 1/sqrt(H)), reproducible from manual_seed, default dtype") {
  manual_seed(7);
  LSTM a(LSTMOptions{.input_size = 6, .hidden_size = 16, .num_layers = 2});
  manual_seed(7);
  LSTM b(LSTMOptions{.input_size = 6, .hidden_size = 16, .num_layers = 2});
  const double k = 1.0 / 4.0;
  for (const Tensor& p : a.parameters()) {
    CHECK(p.dtype() == f32);
    double lo = 1, hi = -1;
    for (double v : p.to_vector<double>()) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    CHECK(lo >= -k);
    CHECK(hi <= k);
    CHECK(hi - lo > k);  // spread over the range, not constant
  }
  const auto pa = a.parameters(), pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) check_close(pa[i], pb[i], 0, 0);

  DefaultDtypeGuard g(f64);
  GRUCell c(3, 4);
  CHECK(c.weight_ih.dtype() == f64);
  for (double v : c.bias_hh.to_vector<double>()) CHECK(std::fabs(v) <= 0.5);
}

TEST_CASE("LSTM forget_bias adds to the forget slice of bias_ih only; LN parameters start at 1 and 0") {
  manual_seed(3);
  LSTM a(LSTMOptions{.input_size = 2, .hidden_size = 3, .num_layers = 2});
  manual_seed(3);
  LSTM b(LSTMOptions{.input_size = 2, .hidden_size = 3, .num_layers = 2, .forget_bias = 1.0});
  for (std::int64_t l = 0; l < 2; ++l) {
    const std::vector<double> x = a.weights(l).bias_ih.to_vector<double>();
    const std::vector<double> y = b.weights(l).bias_ih.to_vector<double>();
    for (std::size_t i = 0; i < 12; ++i) CHECK(y[i] - x[i] == doctest::Approx(i >= 3 && i < 6 ? 1.0 : 0.0));
    check_close(a.weights(l).bias_hh, b.weights(l).bias_hh, 0, 0);
  }
  manual_seed(3);
  LSTMCell c0(2, 3);
  manual_seed(3);
  LSTMCell c1(LSTMCellOptions{.input_size = 2, .hidden_size = 3, .forget_bias = 2.0});
  const std::vector<double> x = c0.bias_ih.to_vector<double>(), y = c1.bias_ih.to_vector<double>();
  for (std::size_t i = 0; i < 12; ++i) CHECK(y[i] - x[i] == doctest::Approx(i >= 3 && i < 6 ? 2.0 : 0.0));

  LSTM ln(LSTMOptions{.input_size = 2, .hidden_size = 3, .bidirectional = true, .layer_norm = true});
  const StateDict sd = ln.named_parameters();
  REQUIRE(sd.size() == 20);
  CHECK(sd[4].first == "ln_ih_weight_l0");
  CHECK(sd[9].first == "ln_c_bias_l0");
  CHECK(sd[19].first == "ln_c_bias_l0_reverse");
  check_values(ln.weights(0, true).ln_hh_weight, std::vector<double>(12, 1.0), 0, 0);
  check_values(ln.weights(0).ln_c_bias, std::vector<double>(3, 0.0), 0, 0);
}

TEST_CASE("invalid options are Errors naming the module") {
  CHECK(has(message_of([] { LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 0}); }), "LSTM: hidden_size"));
  CHECK(has(message_of([] { GRU m(GRUOptions{.input_size = 0, .hidden_size = 2}); }), "GRU: input_size"));
  CHECK(has(message_of([] { RNN m(RNNOptions{.input_size = 1, .hidden_size = 2, .num_layers = 0}); }),
            "RNN: num_layers"));
  CHECK(has(message_of([] { LSTM m(LSTMOptions{.input_size = 1, .hidden_size = 2, .dropout = 1.5}); }), "dropout"));
  CHECK(has(message_of([] { LSTM m(LSTMOptions{.input_size = 1, .hidden_size = 2, .variational_dropout = 1.0}); }),
            "variational_dropout"));
  CHECK(has(message_of([] { LSTM m(LSTMOptions{.input_size = 1, .hidden_size = 2, .bias = false, .forget_bias = 1}); }),
            "forget_bias"));
  CHECK(has(message_of([] { LSTMCell m(LSTMCellOptions{.input_size = 1, .hidden_size = 2, .bias = false, .forget_bias = 1}); }),
            "LSTMCell: forget_bias"));
  CHECK(has(message_of([] { RNNCell m(2, 0); }), "RNNCell: hidden_size"));
}

// ---------------------------------------------------------------------------
// Values against the loops
// ---------------------------------------------------------------------------

TEST_CASE("sequence modules: values match the loops (all modes, 2 layers, bidirectional, initial state)") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 4, B = 3, I = 5, H = 4, L = 2;
  for (RefMode mode : {RefMode::tanh, RefMode::relu, RefMode::lstm, RefMode::gru}) {
    for (bool bidir : {false, true}) {
      for (bool with_state : {false, true}) {
        INFO("mode " << int(mode) << " bidirectional " << bidir << " initial state " << with_state);
        const std::int64_t D = bidir ? 2 : 1;
        manual_seed(11);
        Tensor x = rnd({T, B, I}, -1.0, 1.0, 5);
        Tensor h0 = with_state ? rnd({L * D, B, H}, -0.8, 0.8, 6) : Tensor();
        Tensor c0 = with_state ? rnd({L * D, B, H}, -0.8, 0.8, 7) : Tensor();
        const RefSpec spec = spec_of(mode, T, B, I, H, L, D);
        Tensor out, hn, cn;
        std::vector<RefWeights> W;
        if (mode == RefMode::lstm) {
          LSTM m(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = L, .bidirectional = bidir});
          auto [y, st] = m(x, {h0, c0});
          out = y, hn = st.h, cn = st.c;
          W = all_weights(m);
        } else if (mode == RefMode::gru) {
          GRU m(GRUOptions{.input_size = I, .hidden_size = H, .num_layers = L, .bidirectional = bidir});
          auto [y, st] = m(x, {h0});
          out = y, hn = st.h;
          W = all_weights(m);
        } else {
          RNN m(RNNOptions{.input_size = I,
                           .hidden_size = H,
                           .num_layers = L,
                           .nonlinearity = mode == RefMode::relu ? RNNNonlinearity::relu : RNNNonlinearity::tanh,
                           .bidirectional = bidir});
          auto [y, st] = m(x, {h0});
          out = y, hn = st.h;
          W = all_weights(m);
        }
        const RefResult want = ref_sequence(spec, W, vec(x), vec(h0), vec(c0));
        CHECK(out.shape() == Shape{T, B, D * H});
        CHECK(hn.shape() == Shape{L * D, B, H});
        check_values(out, want.out, 1e-13, 1e-12);
        check_values(hn, want.hn, 1e-13, 1e-12);
        if (mode == RefMode::lstm) check_values(cn, want.cn, 1e-13, 1e-12);
      }
    }
  }
}

TEST_CASE("batch_first transposes input and output only; unbatched [T, I] equals a batch of one") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 5, B = 2, I = 3, H = 4;
  manual_seed(21);
  LSTM tm(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = 2, .bidirectional = true});
  manual_seed(21);
  LSTM bf(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = 2, .batch_first = true, .bidirectional = true});
  Tensor x = rnd({T, B, I}, -1, 1, 8);
  Tensor h0 = rnd({4, B, H}, -1, 1, 9), c0 = rnd({4, B, H}, -1, 1, 10);
  auto [y1, s1] = tm(x, {h0, c0});
  auto [y2, s2] = bf(transpose(x, 0, 1), {h0, c0});
  CHECK(y2.shape() == Shape{B, T, 2 * H});
  check_close(transpose(y2, 0, 1), y1, 1e-15, 1e-14);
  check_close(s2.h, s1.h, 1e-15, 1e-14);
  check_close(s2.c, s1.c, 1e-15, 1e-14);

  // Unbatched: x [T, I], state [L*D, H].
  Tensor xb = narrow(x, 1, 1, 1);
  auto [yb, sb] = tm(xb, {narrow(h0, 1, 1, 1), narrow(c0, 1, 1, 1)});
  auto [yu, su] = tm(squeeze(xb, 1), {squeeze(narrow(h0, 1, 1, 1), 1), squeeze(narrow(c0, 1, 1, 1), 1)});
  CHECK(yu.shape() == Shape{T, 2 * H});
  CHECK(su.h.shape() == Shape{4, H});
  check_close(yu, squeeze(yb, 1), 0, 0);
  check_close(su.c, squeeze(sb.c, 1), 0, 0);
  // batch_first is ignored for unbatched input, as in PyTorch.
  auto [yu2, su2] = bf(squeeze(xb, 1), {squeeze(narrow(h0, 1, 1, 1), 1), squeeze(narrow(c0, 1, 1, 1), 1)});
  check_close(yu2, yu, 0, 0);

  GRU gru(GRUOptions{.input_size = I, .hidden_size = H, .batch_first = true});
  auto [yg, sg] = gru(rnd({T, I}));
  CHECK(yg.shape() == Shape{T, H});
  CHECK(sg.h.shape() == Shape{1, H});
}

TEST_CASE("output ends are the final states: y[T-1] forward half = h_n, y[0] reverse half = h_n reverse") {
  DefaultDtypeGuard g(f64);
  GRU m(GRUOptions{.input_size = 3, .hidden_size = 4, .bidirectional = true});
  auto [y, st] = m(rnd({6, 2, 3}));
  check_close(narrow(select(y, 0, 5), 1, 0, 4), select(st.h, 0, 0), 0, 0);
  check_close(narrow(select(y, 0, 0), 1, 4, 4), select(st.h, 0, 1), 0, 0);
}

TEST_CASE("a sequence module equals its cell stepped by hand (LSTM vs LSTMCell, GRU vs GRUCell)") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 6, B = 2, I = 3, H = 4;
  LSTM seq(I, H);
  LSTMCell cell(I, H);
  GRU gseq(I, H);
  GRUCell gcell(I, H);
  // Same weights in both (weight_ih_l0 -> weight_ih, ...).
  cell.load_state_dict({{"weight_ih", seq.weights(0).weight_ih}, {"weight_hh", seq.weights(0).weight_hh},
                        {"bias_ih", seq.weights(0).bias_ih}, {"bias_hh", seq.weights(0).bias_hh}});
  gcell.load_state_dict({{"weight_ih", gseq.weights(0).weight_ih}, {"weight_hh", gseq.weights(0).weight_hh},
                         {"bias_ih", gseq.weights(0).bias_ih}, {"bias_hh", gseq.weights(0).bias_hh}});
  Tensor x = rnd({T, B, I}, -1, 1, 41);
  auto [y, st] = seq(x);
  auto [gy, gst] = gseq(x);
  LSTMState s;
  Tensor gh;
  for (std::int64_t t = 0; t < T; ++t) {
    s = cell(select(x, 0, t), s);
    gh = gcell(select(x, 0, t), gh);
    check_close(select(y, 0, t), s.h, 1e-15, 1e-14);
    check_close(select(gy, 0, t), gh, 1e-15, 1e-14);
  }
  check_close(select(st.c, 0, 0), s.c, 1e-15, 1e-14);
}

TEST_CASE("float32 modules agree with float64 ones (same weights) to float precision") {
  manual_seed(5);
  LSTM m32(LSTMOptions{.input_size = 3, .hidden_size = 8, .num_layers = 2, .bidirectional = true});
  manual_seed(5);
  LSTM m64(LSTMOptions{.input_size = 3, .hidden_size = 8, .num_layers = 2, .bidirectional = true});
  m64.to(f64);
  Tensor x = rnd({7, 2, 3});
  auto [y32, s32] = m32(x.to(f32));
  auto [y64, s64] = m64(x);
  CHECK(y32.dtype() == f32);
  check_close(y32, y64, 1e-5, 1e-5);
  check_close(s32.c, s64.c, 1e-5, 1e-5);
}

TEST_CASE("empty batch (B = 0) runs and gives empty results") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
  Tensor x = zeros({4, 0, 3}).requires_grad_();
  auto [y, st] = m(x);
  CHECK(y.shape() == Shape{4, 0, 4});
  CHECK(st.h.shape() == Shape{4, 0, 2});
  sum(y).backward();
  CHECK(x.grad().shape() == Shape{4, 0, 3});
  GRU gm(3, 2);
  CHECK(gm(zeros({2, 0, 3})).output.shape() == Shape{2, 0, 2});
}

// ---------------------------------------------------------------------------
// Gradchecks
// ---------------------------------------------------------------------------

TEST_CASE("gradcheck LSTM (2 layers, bidirectional) w.r.t. input, h0, c0 and every parameter") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
  Tensor x = rnd({3, 2, 3}, -1, 1, 51), h0 = rnd({4, 2, 2}, -1, 1, 52), c0 = rnd({4, 2, 2}, -1, 1, 53);
  gradcheck_module(m, {x, h0, c0}, [&] {
    auto [y, st] = m(x, {h0, c0});
    return flat_all({y, st.h, st.c});
  });
}

TEST_CASE("gradcheck LSTM batch_first, zero initial state, one layer; loss through h_n only") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 3, .batch_first = true});
  Tensor x = rnd({2, 4, 2}, -1, 1, 54);
  gradcheck_module(m, {x}, [&] {
    auto [y, st] = m(x);
    return flat_all({y, st.c});
  });
  gradcheck_module(m, {x}, [&] { return m(x).state.h; });
}

TEST_CASE("gradcheck GRU (2 layers, bidirectional, h0) and GRU batch_first without bias") {
  DefaultDtypeGuard g(f64);
  GRU m(GRUOptions{.input_size = 3, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
  Tensor x = rnd({3, 2, 3}, -1, 1, 55), h0 = rnd({4, 2, 2}, -1, 1, 56);
  gradcheck_module(m, {x, h0}, [&] {
    auto [y, st] = m(x, {h0});
    return flat_all({y, st.h});
  });
  GRU nb(GRUOptions{.input_size = 2, .hidden_size = 3, .bias = false, .batch_first = true});
  Tensor x2 = rnd({2, 3, 2}, -1, 1, 57);
  gradcheck_module(nb, {x2}, [&] { return nb(x2).output; });
}

TEST_CASE("gradcheck RNN tanh and relu (2 layers, bidirectional, h0)") {
  DefaultDtypeGuard g(f64);
  for (RNNNonlinearity nl : {RNNNonlinearity::tanh, RNNNonlinearity::relu}) {
    INFO("relu " << (nl == RNNNonlinearity::relu));
    manual_seed(17);
    RNN m(RNNOptions{.input_size = 3, .hidden_size = 3, .num_layers = 2, .nonlinearity = nl, .bidirectional = true});
    Tensor x = rnd({4, 2, 3}, -1, 1, 58), h0 = rnd({4, 2, 3}, 0.1, 1, 59);
    gradcheck_module(m, {x, h0}, [&] {
      auto [y, st] = m(x, {h0});
      return flat_all({y, st.h});
    });
  }
}

TEST_CASE("gradcheck unbatched input and single-step sequences (T = 1, B = 1, H = 1)") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 1, .num_layers = 2, .bidirectional = true});
  Tensor x = rnd({3, 2}, -1, 1, 60), h0 = rnd({4, 1}, -1, 1, 61), c0 = rnd({4, 1}, -1, 1, 62);
  gradcheck_module(m, {x, h0, c0}, [&] {
    auto [y, st] = m(x, {h0, c0});
    return flat_all({y, st.h, st.c});
  });
  GRU gm(2, 1);
  Tensor x1 = rnd({1, 1, 2}, -1, 1, 63);
  gradcheck_module(gm, {x1}, [&] { return gm(x1).output; });
}

// ---------------------------------------------------------------------------
// LSTM extras
// ---------------------------------------------------------------------------

TEST_CASE("layer-normalised LSTM: values match the loops; gradcheck w.r.t. input, state and all parameters") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 4, B = 2, I = 3, H = 3;
  LSTM m(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = 2, .bidirectional = true, .layer_norm = true});
  // Move gamma / beta away from 1 / 0 so they matter.
  for (auto& [name, p] : m.named_parameters()) {
    if (name.rfind("ln_", 0) == 0) {
      Tensor r = rnd(p.shape(), 0.5, 1.5, name.size());
      std::memcpy(p.data<double>(), r.data<double>(), p.numel() * 8);
    }
  }
  Tensor x = rnd({T, B, I}, -1, 1, 81), h0 = rnd({4, B, H}, -1, 1, 82), c0 = rnd({4, B, H}, -1, 1, 83);
  for (bool with_state : {false, true}) {
    auto [y, st] = m(x, with_state ? LSTMState{h0, c0} : LSTMState{});
    const RefSpec spec = spec_of(RefMode::lstm, T, B, I, H, 2, 2, true);
    const RefResult want = ref_sequence(spec, all_weights(m), vec(x), with_state ? vec(h0) : std::vector<double>(),
                                        with_state ? vec(c0) : std::vector<double>());
    check_values(y, want.out, 1e-12, 1e-11);
    check_values(st.h, want.hn, 1e-12, 1e-11);
    check_values(st.c, want.cn, 1e-12, 1e-11);
  }
  gradcheck_module(m, {x, h0, c0}, [&] {
    auto [y, st] = m(x, {h0, c0});
    return flat_all({y, st.h, st.c});
  });
}

TEST_CASE("variational dropout: one mask per sequence on the input and the recurrent h (matches the loops)") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 5, B = 3, I = 4, H = 3, L = 2;
  const double p = 0.4;
  LSTM m(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = L, .bidirectional = true,
                     .variational_dropout = p});
  Tensor x = rnd({T, B, I}, -1, 1, 91);
  // The masks are drawn from the default generator at the start of forward, per layer: the
  // input mask [B, I_l], then one [B, H] recurrent mask per direction (LSTMOptions' contract).
  manual_seed(1234);
  auto [y, st] = m(x);
  manual_seed(1234);
  RefSpec spec = spec_of(RefMode::lstm, T, B, I, H, L, 2);
  Generator& gen = default_generator();
  auto draw = [&](std::int64_t n) {
    std::vector<double> mk(n);
    for (double& v : mk) v = gen.uniform() >= p ? 1.0 / (1.0 - p) : 0.0;
    return mk;
  };
  for (std::int64_t l = 0; l < L; ++l) {
    spec.mx.push_back(draw(B * (l == 0 ? I : 2 * H)));
    for (int d = 0; d < 2; ++d) spec.mh.push_back(draw(B * H));
  }
  const RefResult want = ref_sequence(spec, all_weights(m), vec(x), {}, {});
  check_values(y, want.out, 1e-13, 1e-12);
  check_values(st.c, want.cn, 1e-13, 1e-12);

  // Eval mode: identity, so the output equals the plain LSTM's.
  m.eval();
  auto [ye, se] = m(x);
  const RefResult plain = ref_sequence(spec_of(RefMode::lstm, T, B, I, H, L, 2), all_weights(m), vec(x), {}, {});
  check_values(ye, plain.out, 1e-13, 1e-12);
}

TEST_CASE("variational dropout: an input feature dropped for a sequence gets zero gradient at every step") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 6, B = 4, I = 5;
  LSTM m(LSTMOptions{.input_size = I, .hidden_size = 3, .variational_dropout = 0.5});
  Tensor x = rnd({T, B, I}, -1, 1, 92).requires_grad_();
  manual_seed(99);
  sum(m(x).output).backward();
  const std::vector<double> gx = x.grad().to_vector<double>();
  int dropped = 0, kept = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < I; ++i) {
      int zero_steps = 0;
      for (std::int64_t t = 0; t < T; ++t) zero_steps += gx[(t * B + b) * I + i] == 0.0;
      CHECK((zero_steps == 0 || zero_steps == T));  // the same mask at every step
      (zero_steps == T ? dropped : kept)++;
    }
  }
  CHECK(dropped > 0);
  CHECK(kept > 0);
}

TEST_CASE("gradcheck LSTM with variational dropout and dropout between layers (masks fixed by the seed)") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 2, .num_layers = 2, .dropout = 0.3, .bidirectional = true,
                     .variational_dropout = 0.3});
  Tensor x = rnd({3, 2, 3}, -1, 1, 93), h0 = rnd({4, 2, 2}, -1, 1, 94), c0 = rnd({4, 2, 2}, -1, 1, 95);
  gradcheck_module(m, {x, h0, c0}, [&] {
    manual_seed(2024);
    auto [y, st] = m(x, {h0, c0});
    return flat_all({y, st.h, st.c});
  });
}

TEST_CASE("dropout between layers: only in training, never on the last layer's output") {
  DefaultDtypeGuard g(f64);
  Tensor x = rnd({4, 2, 3}, -1, 1, 96);
  manual_seed(8);
  GRU one(GRUOptions{.input_size = 3, .hidden_size = 4, .dropout = 0.9});
  manual_seed(8);
  GRU ref(GRUOptions{.input_size = 3, .hidden_size = 4});
  check_close(one(x).output, ref(x).output, 0, 0);  // one layer: nothing between layers

  manual_seed(9);
  GRU two(GRUOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .dropout = 0.5});
  manual_seed(9);
  GRU two_ref(GRUOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2});
  const Tensor y1 = two(x).output, y2 = two(x).output;
  CHECK(y1.to_vector<double>() != y2.to_vector<double>());  // a new mask per forward
  two.eval();
  check_close(two(x).output, two_ref(x).output, 0, 0);
}

// ---------------------------------------------------------------------------
// Truncated BPTT
// ---------------------------------------------------------------------------

TEST_CASE("truncated BPTT: state.detach() between chunks works; carrying the state is the engine's StateError") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2});
  GRU gm(3, 4);
  Tensor data = rnd({12, 2, 3}, -1, 1, 101);
  LSTMState st;
  RNNState gst;
  for (std::int64_t chunk = 0; chunk < 4; ++chunk) {
    Tensor x = narrow(data, 0, chunk * 3, 3);
    auto [y, s] = m(x, st);
    auto [gy, gs] = gm(x, gst);
    add(sum(y), sum(gy)).backward();
    st = s.detach();
    gst = gs.detach();
    CHECK_FALSE(st.h.requires_grad());
    CHECK(st.h.shape() == Shape{2, 2, 4});
  }
  CHECK(m.weights(1).weight_hh.grad().defined());
  CHECK(tape_pending() == 0);

  // The classic bug: the second chunk starts from the first chunk's (freed) graph.
  auto [y1, s1] = m(narrow(data, 0, 0, 3));
  sum(y1).backward();
  auto [y2, s2] = m(narrow(data, 0, 3, 3), s1);
  const std::string msg = message_of([&] { sum(y2).backward(); });
  CHECK(has(msg, "detach()"));
  CHECK_THROWS_AS(sum(y2).backward(), StateError);

  // The detached state carries the values: chunked forward == one long forward.
  m.zero_grad();
  auto [yall, sall] = m(data);
  LSTMState cs;
  Tensor last;
  for (std::int64_t chunk = 0; chunk < 4; ++chunk) {
    auto [y, s] = m(narrow(data, 0, chunk * 3, 3), cs);
    cs = s.detach();
    last = y;
  }
  check_close(last, narrow(yall, 0, 9, 3), 1e-15, 1e-14);
  check_close(cs.c, sall.c, 1e-15, 1e-14);
}

// ---------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------

TEST_CASE("introspection LSTM: records per layer/direction/step with consistent gates, c and h") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 4, B = 2, I = 3, H = 5;
  LSTM m(LSTMOptions{.input_size = I, .hidden_size = H, .num_layers = 2, .bidirectional = true});
  Tensor x = rnd({T, B, I}, -1, 1, 111);
  Tensor c0 = rnd({4, B, H}, -1, 1, 112), h0 = rnd({4, B, H}, -1, 1, 113);
  CHECK(m.introspection().empty());
  m.set_record(true);
  auto [y, st] = m(x, {h0, c0});
  const Introspection& in = m.introspection();
  CHECK(in.num_layers == 2);
  CHECK(in.num_directions == 2);
  CHECK(in.seq_len() == T);
  CHECK(in.gate_names == std::vector<std::string>{"i", "f", "g", "o"});
  for (std::int64_t l = 0; l < 2; ++l) {
    for (std::int64_t d = 0; d < 2; ++d) {
      for (std::int64_t t = 0; t < T; ++t) {
        const StepRecord& r = in.at(l, t, d);
        REQUIRE(r.gates.size() == 4);
        for (const Tensor& gt_ : r.gates) CHECK(gt_.shape() == Shape{B, H});
        CHECK_FALSE(r.h.requires_grad());
        // c_t = f ⊙ c_{t-1} + i ⊙ g, h_t = o ⊙ tanh(c_t), in processing order.
        const std::int64_t prev_t = d == 0 ? t - 1 : t + 1;
        const Tensor c_prev = prev_t < 0 || prev_t >= T ? select(c0, 0, l * 2 + d) : in.at(l, prev_t, d).c;
        check_close(r.c, add(mul(r.gates[1], c_prev), mul(r.gates[0], r.gates[2])), 1e-14, 1e-13);
        check_close(r.h, mul(r.gates[3], tanh(r.c)), 1e-14, 1e-13);
        if (l == 1) check_close(r.h, narrow(select(y, 0, t), 1, d * H, H), 0, 0);
      }
    }
  }
  CHECK_THROWS_AS(in.at(2, 0), IndexError);
  CHECK_THROWS_AS(in.at(0, T), IndexError);
  // Before backward there is no gradient to measure.
  CHECK(std::isnan(in.at(0, 0).grad_norm()));
  sum(y).backward();
  for (double v : in.grad_norms(0, 1)) CHECK((std::isfinite(v) && v > 0));
}

TEST_CASE("introspection GRU: r, z, n reproduce h; recording adds no tape nodes; off records nothing") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 3, B = 2, H = 4;
  GRU m(GRUOptions{.input_size = 3, .hidden_size = H});
  Tensor x = rnd({T, B, 3}, -1, 1, 121);
  const std::size_t n0 = tape_size();
  auto [y0, s0] = m(x);
  const std::size_t plain_nodes = tape_size() - n0;
  m.set_record(true);
  const std::size_t n1 = tape_size();
  auto [y, st] = m(x);
  CHECK(tape_size() - n1 == plain_nodes);
  const Introspection& in = m.introspection();
  CHECK(in.gate_names == std::vector<std::string>{"r", "z", "n"});
  for (std::int64_t t = 0; t < T; ++t) {
    const StepRecord& r = in.at(0, t);
    const Tensor hp = t == 0 ? zeros({B, H}) : in.at(0, t - 1).h;
    check_close(r.h, add(mul(rsub(1.0, r.gates[1]), r.gates[2]), mul(r.gates[1], hp)), 1e-14, 1e-13);
    CHECK_FALSE(r.c.defined());
  }
  RNN rnn(3, 4);
  rnn.set_record(true, RecordOptions{.gates = true, .states = false, .grad_norms = true});
  rnn(x);
  CHECK(rnn.introspection().at(0, 1).gates.empty());
  CHECK_FALSE(rnn.introspection().at(0, 1).h.defined());
  m.set_record(false);
  m.clear_record();
  m(x);
  CHECK(m.introspection().empty());
}

TEST_CASE("introspection: gradient norms per step decay backwards in time for a vanilla RNN with small weights") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 12, B = 2, H = 6;
  RNN m(RNNOptions{.input_size = 3, .hidden_size = H});
  // ‖W_hh‖₂ <= ‖W_hh‖_F < 0.5 and |tanh'| <= 1: each step back shrinks the gradient.
  Tensor small = rnd({H, H}, -0.08, 0.08, 131);
  Tensor w_hh = m.weights(0).weight_hh;
  std::memcpy(w_hh.data<double>(), small.data<double>(), H * H * 8);
  m.set_record(true);
  Tensor x = rnd({T, B, 3}, -1, 1, 132);
  Tensor w = rnd({B, H}, -1, 1, 133);
  auto [y, st] = m(x);
  sum(mul(select(y, 0, T - 1), w)).backward();
  const std::vector<double> norms = m.introspection().grad_norms(0);
  REQUIRE(norms.size() == static_cast<std::size_t>(T));
  // The last step's h only feeds the loss: its gradient is w itself.
  double wn = 0;
  for (double v : w.to_vector<double>()) wn += v * v;
  CHECK(norms.back() == doctest::Approx(std::sqrt(wn)).epsilon(1e-12));
  for (std::int64_t t = 0; t + 1 < T; ++t) CHECK(norms[t] < 0.5 * norms[t + 1]);
  CHECK(norms[0] < 1e-3 * norms.back());
}

// ---------------------------------------------------------------------------
// The speed design, observable on the tape
// ---------------------------------------------------------------------------

TEST_CASE("per-step cost: LSTM 0 tape nodes (one lstm_sequence node per layer), GRU 3, RNN 4; introspection 6") {
  DefaultDtypeGuard g(f64);
  auto nodes_per_step = [](auto& m, std::int64_t I) {
    auto count = [&](std::int64_t T) {
      const std::size_t before = tape_size();
      auto r = m(rnd({T, 2, I}));
      return static_cast<std::int64_t>(tape_size() - before);
    };
    return (count(9) - count(5)) / 4;
  };
  LSTM lstm(3, 4);
  GRU gru(3, 4);
  RNN rnn(3, 4);
  CHECK(nodes_per_step(lstm, 3) == 0);
  CHECK(nodes_per_step(gru, 3) == 3);
  CHECK(nodes_per_step(rnn, 3) == 4);
  // Recording introspection takes the per-step path (view, GEMM, add, fused gates, h/c views).
  lstm.set_record(true, RecordOptions{false, false, false});
  CHECK(nodes_per_step(lstm, 3) == 6);
}

TEST_CASE("LSTM: the whole-sequence path and the per-step (introspection) path agree in values and gradients") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
  const Tensor x0 = rnd({6, 2, 3}, -1, 1, 151), h0 = rnd({4, 2, 5}, -1, 1, 152), c0 = rnd({4, 2, 5}, -1, 1, 153);
  const Tensor wy = rnd({6, 2, 10}, -1, 1, 154), wh = rnd({4, 2, 5}, -1, 1, 155), wc = rnd({4, 2, 5}, -1, 1, 156);
  auto run = [&](bool perstep) {
    m.set_record(perstep, RecordOptions{false, false, false});
    m.zero_grad();
    Tensor x = x0.clone().requires_grad_(), h = h0.clone().requires_grad_(), c = c0.clone().requires_grad_();
    auto [y, st] = m(x, LSTMState{h, c});
    add(add(sum(mul(y, wy)), sum(mul(st.h, wh))), sum(mul(st.c, wc))).backward();
    std::vector<Tensor> out = {y.detach(), st.h.detach(), st.c.detach(), x.grad(), h.grad(), c.grad()};
    for (const Tensor& p : m.parameters()) out.push_back(p.grad());
    return out;
  };
  const auto a = run(false), b = run(true);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    check_close(a[i], b[i], 1e-12, 1e-10);
  }
}

TEST_CASE("a long sequence (T = 2000) backwards through the gathered projection gradient") {
  LSTM m(LSTMOptions{.input_size = 4, .hidden_size = 8});
  Tensor x = rnd({2000, 2, 4}, -1, 1, 141).to(f32).detach().requires_grad_();
  {
    auto [y, st] = m(x);
    sum(y).backward();
  }
  CHECK(x.grad().shape() == Shape{2000, 2, 4});
  CHECK(m.weights(0).weight_ih.grad().defined());
  // Every step's input got its own rows of the gathered gradient.
  for (std::int64_t t : {0, 1000, 1999}) {
    double s = 0;
    for (double v : select(x.grad(), 0, t).to_vector<double>()) s += std::fabs(v);
    CHECK(s > 0);
  }
  CHECK(tape_pending() == 0);
}

TEST_CASE("retain_graph: two backward passes through the same sequence give twice the gradient") {
  DefaultDtypeGuard g(f64);
  GRU m(GRUOptions{.input_size = 2, .hidden_size = 3, .bidirectional = true});
  Tensor x = rnd({4, 2, 2}, -1, 1, 151).requires_grad_();
  Tensor loss = sum(m(x).output);
  loss.backward(Tensor(), true);
  const Tensor g1 = x.grad().clone();
  loss.backward();
  check_close(x.grad(), mul(g1, 2.0), 1e-14, 1e-14);
}

TEST_CASE("loss on one reverse-direction step only still reaches every earlier-processed step") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 2, .bidirectional = true});
  Tensor x = rnd({5, 1, 2}, -1, 1, 152);
  // The reverse half of y[3] depends on x[3], x[4] only.
  gradcheck_module(m, {x}, [&] { return narrow(select(m(x).output, 0, 3), 1, 2, 2); });
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

TEST_CASE("sequence modules: bad inputs are errors naming the module and the shapes") {
  LSTM m(LSTMOptions{.input_size = 8, .hidden_size = 5, .num_layers = 2});
  std::string s = message_of([&] { m(zeros({5, 3, 10})); });
  CHECK(s == "LSTM: input [5,3,10]: expected feature size 8");
  CHECK_THROWS_AS(m(zeros({5, 3, 10})), ShapeError);
  CHECK_THROWS_AS(m(zeros({0, 3, 8})), ShapeError);
  CHECK(has(message_of([&] { m(zeros({0, 3, 8})); }), "zero-length"));
  CHECK_THROWS_AS(m(zeros({8})), ShapeError);
  CHECK(has(message_of([&] { m(zeros({2, 2, 2, 8})); }), "LSTM: input [2,2,2,8]"));
  // state of the wrong shape, batch mismatch, h without c
  CHECK_THROWS_AS(m(zeros({4, 3, 8}), {zeros({2, 3, 4}), zeros({2, 3, 4})}), ShapeError);
  CHECK(has(message_of([&] { m(zeros({4, 3, 8}), {zeros({2, 3, 4}), zeros({2, 3, 5})}); }),
            "h0 [2,3,4]: expected [2,3,5]"));
  CHECK(has(message_of([&] { m(zeros({4, 3, 8}), {zeros({1, 3, 5}), zeros({1, 3, 5})}); }), "expected [2,3,5]"));
  s = message_of([&] { m(zeros({4, 3, 8}), {zeros({2, 4, 5}), zeros({2, 4, 5})}); });
  CHECK(has(s, "batch sizes differ"));
  CHECK(has(s, "[4,3,8]"));
  CHECK(has(s, "[2,4,5]"));
  CHECK_THROWS_AS(m(zeros({4, 3, 8}), {zeros({2, 4, 5}), zeros({2, 4, 5})}), ShapeError);
  CHECK(has(message_of([&] { m(zeros({4, 3, 8}), {zeros({2, 3, 5}), zeros({2, 3, 4})}); }), "c0 [2,3,4]"));
  CHECK_THROWS_AS(m(zeros({4, 3, 8}), {zeros({2, 3, 5}), Tensor()}), ShapeError);
  CHECK(has(message_of([&] { m(zeros({4, 3, 8}), {Tensor(), zeros({2, 3, 5})}); }), "has c but not h"));
  // unbatched input needs a 2-D state
  CHECK(has(message_of([&] { m(zeros({4, 8}), {zeros({2, 1, 5}), zeros({2, 1, 5})}); }), "expected [2,5]"));
  // dtype
  CHECK_THROWS_AS(m(zeros({4, 3, 8}, f64)), DtypeError);
  CHECK(has(message_of([&] { m(zeros({4, 3, 8}, f64)); }), "LSTM: input is float64"));
  CHECK_THROWS_AS(m(zeros({4, 3, 8}), {zeros({2, 3, 5}, f64), zeros({2, 3, 5}, f64)}), DtypeError);
  CHECK_THROWS_AS(m(Tensor()), StateError);

  GRU gm(GRUOptions{.input_size = 2, .hidden_size = 3, .batch_first = true, .bidirectional = true});
  CHECK(message_of([&] { gm(zeros({4, 5, 3})); }) == "GRU: input [4,5,3]: expected feature size 2");
  CHECK(has(message_of([&] { gm(zeros({4, 5, 2}), {zeros({2, 5, 3})}); }), "batch sizes differ"));
  CHECK(has(message_of([&] { gm(zeros({4, 0, 2})); }), "GRU: input [4,0,2]: zero-length"));
  RNN rm(2, 3);
  CHECK_THROWS_AS(rm(zeros({3, 2, 2}), {zeros({1, 3, 3})}), ShapeError);
  CHECK(has(message_of([&] { rm(randint(0, 2, {3, 2, 2})); }), "RNN: input is int64"));
}

// ---------------------------------------------------------------------------
// Agreement with PyTorch (tests/fixtures/gen_nn.py; see tests/fixtures/README.md)
// ---------------------------------------------------------------------------

TEST_CASE("PyTorch agreement: RNN tanh, 2 layers, h0 (rnn_tanh_2l.npz), float64 and float32") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("rnn_tanh_2l", pr.dt, pr.tol);
    RNN m(RNNOptions{.input_size = 4, .hidden_size = 6, .num_layers = 2});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0");
    auto [y, st] = m(x, {h0});
    a.check(m, {{"y", y}, {"h_n", st.h}});
  }
}

TEST_CASE("PyTorch agreement: LSTM, 2 layers, bidirectional, h0/c0 (lstm_2l_bi_h0.npz), float64 and float32") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("lstm_2l_bi_h0", pr.dt, pr.tol);
    LSTM m(LSTMOptions{.input_size = 4, .hidden_size = 6, .num_layers = 2, .bidirectional = true});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0"), c0 = a.input("c0");
    auto [y, st] = m(x, {h0, c0});
    a.check(m, {{"y", y}, {"h_n", st.h}, {"c_n", st.c}});
  }
}

TEST_CASE("PyTorch agreement: GRU batch_first with h0 (gru.npz), float64 and float32") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("gru", pr.dt, pr.tol);
    GRU m(GRUOptions{.input_size = 4, .hidden_size = 6, .batch_first = true});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0");
    auto [y, st] = m(x, {h0});
    a.check(m, {{"y", y}, {"h_n", st.h}});
  }
}


// ---------------------------------------------------------------------------
// Variable-length batches: forward(x, state, lengths)
// ---------------------------------------------------------------------------

namespace {

struct Ran {
  Tensor y, h, c;  // y time-major [T, B, D*H]; h, c [L*D, B, H] (c undefined for RNN / GRU)
};
// Runs a module on time-major x [T, B, I] with an optional state and lengths (undefined: none).
using RunFn = std::function<Ran(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& lengths)>;

Tensor i64s(const std::vector<std::int64_t>& v) { return from_vector(v); }

// The batch with lengths against each sequence run alone on its real steps: outputs, final
// states, and zeros past every length.
void check_against_single_runs(const RunFn& run, const Tensor& x, const Tensor& h0, const Tensor& c0,
                               const std::vector<std::int64_t>& lengths, double tol) {
  const Ran all = run(x, h0, c0, i64s(lengths));
  const std::int64_t T = x.shape()[0];
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    INFO("sequence " << b << ", length " << lengths[b]);
    const std::int64_t len = lengths[b], bi = static_cast<std::int64_t>(b);
    const Tensor xb = narrow(narrow(x, 1, bi, 1), 0, 0, len);
    const Ran one = run(xb, h0.defined() ? narrow(h0, 1, bi, 1) : Tensor(), c0.defined() ? narrow(c0, 1, bi, 1) : Tensor(),
                        Tensor());
    const Tensor yb = narrow(all.y, 1, bi, 1);
    check_close(narrow(yb, 0, 0, len), one.y, tol, tol);
    if (len < T) {
      for (double v : narrow(yb, 0, len, T - len).to_vector<double>()) REQUIRE(v == 0.0);
    }
    check_close(narrow(all.h, 1, bi, 1), one.h, tol, tol);
    if (all.c.defined()) check_close(narrow(all.c, 1, bi, 1), one.c, tol, tol);
  }
}

RunFn lstm_runner(const LSTM& m) {
  return [&m](const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& lengths) {
    const bool bf = m.options.batch_first;
    auto [y, st] = m(bf ? transpose(x, 0, 1) : x, {h0, c0}, lengths);
    return Ran{bf ? transpose(y, 0, 1) : y, st.h, st.c};
  };
}

template <class M>
RunFn h_runner(const M& m) {
  return [&m](const Tensor& x, const Tensor& h0, const Tensor&, const Tensor& lengths) {
    const bool bf = m.options.batch_first;
    auto [y, st] = m(bf ? transpose(x, 0, 1) : x, {h0}, lengths);
    return Ran{bf ? transpose(y, 0, 1) : y, st.h, Tensor()};
  };
}

// The lengths entry of a fixture, as int64 (Agreement converts its entries to the test dtype).
Tensor fixture_lengths(const std::string& name) {
  for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/" + name + ".npz")) {
    if (k == "in.lengths") return v;
  }
  FAIL("no in.lengths in " << name);
  return Tensor();
}

}  // namespace

TEST_CASE("PyTorch agreement with lengths: LSTM 2 layers bidirectional, unsorted (lstm_2l_bi_lengths.npz)") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("lstm_2l_bi_lengths", pr.dt, pr.tol);
    LSTM m(LSTMOptions{.input_size = 4, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0"), c0 = a.input("c0");
    auto [y, st] = m(x, {h0, c0}, fixture_lengths("lstm_2l_bi_lengths"));
    a.check(m, {{"y", y}, {"h_n", st.h}, {"c_n", st.c}});
  }
}

TEST_CASE("PyTorch agreement with lengths: the LSTM's per-step path (record on) gives the same") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("lstm_2l_bi_lengths", pr.dt, pr.tol);
    LSTM m(LSTMOptions{.input_size = 4, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
    a.load(m);
    m.set_record(true);
    Tensor x = a.input("x"), h0 = a.input("h0"), c0 = a.input("c0");
    auto [y, st] = m(x, {h0, c0}, fixture_lengths("lstm_2l_bi_lengths"));
    a.check(m, {{"y", y}, {"h_n", st.h}, {"c_n", st.c}});
  }
}

TEST_CASE("PyTorch agreement with lengths: GRU 2 layers bidirectional batch_first (gru_2l_bi_lengths.npz)") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("gru_2l_bi_lengths", pr.dt, pr.tol);
    GRU m(GRUOptions{.input_size = 4, .hidden_size = 5, .num_layers = 2, .batch_first = true, .bidirectional = true});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0");
    auto [y, st] = m(x, {h0}, fixture_lengths("gru_2l_bi_lengths"));
    a.check(m, {{"y", y}, {"h_n", st.h}});
  }
}

TEST_CASE("PyTorch agreement with lengths: RNN tanh (rnn_lengths.npz)") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    Agreement a("rnn_lengths", pr.dt, pr.tol);
    RNN m(RNNOptions{.input_size = 4, .hidden_size = 5});
    a.load(m);
    Tensor x = a.input("x"), h0 = a.input("h0");
    auto [y, st] = m(x, {h0}, fixture_lengths("rnn_lengths"));
    a.check(m, {{"y", y}, {"h_n", st.h}});
  }
}

TEST_CASE("lengths: every module and option equals running each sequence alone on its real steps") {
  DefaultDtypeGuard g(f64);
  const std::int64_t T = 6, I = 3, Hd = 4;
  const std::vector<std::vector<std::int64_t>> cases = {{3, 6, 1, 4}, {1, 1, 1}, {6, 6, 6}, {2, 5, 5, 1, 3}};
  for (const auto& lens : cases) {
    const std::int64_t B = static_cast<std::int64_t>(lens.size());
    INFO("B " << B << ", first length " << lens[0]);
    const Tensor x = rnd({T, B, I}, -1, 1, 71);
    for (bool bf : {false, true}) {
      INFO("batch_first " << bf);
      manual_seed(3);
      LSTM lstm(LSTMOptions{.input_size = I, .hidden_size = Hd, .num_layers = 2, .batch_first = bf, .bidirectional = true});
      lstm.to(f64);
      const Tensor h0 = rnd({4, B, Hd}, -1, 1, 72), c0 = rnd({4, B, Hd}, -1, 1, 73);
      check_against_single_runs(lstm_runner(lstm), x, h0, c0, lens, 1e-12);
      check_against_single_runs(lstm_runner(lstm), x, Tensor(), Tensor(), lens, 1e-12);
      lstm.set_record(true);  // the per-step path
      check_against_single_runs(lstm_runner(lstm), x, h0, c0, lens, 1e-12);

      // layer norm, forget bias, variational dropout (eval: identity) take the per-step path
      LSTM ln(LSTMOptions{.input_size = I, .hidden_size = Hd, .num_layers = 2, .batch_first = bf,
                          .bidirectional = true, .forget_bias = 1.0, .variational_dropout = 0.3, .layer_norm = true});
      ln.to(f64);
      ln.eval();
      check_against_single_runs(lstm_runner(ln), x, h0, c0, lens, 1e-12);
      check_against_single_runs(lstm_runner(ln), x, Tensor(), Tensor(), lens, 1e-12);

      GRU gru(GRUOptions{.input_size = I, .hidden_size = Hd, .num_layers = 2, .batch_first = bf, .bidirectional = true});
      gru.to(f64);
      check_against_single_runs(h_runner(gru), x, h0, Tensor(), lens, 1e-12);
      check_against_single_runs(h_runner(gru), x, Tensor(), Tensor(), lens, 1e-12);
      for (RNNNonlinearity nl : {RNNNonlinearity::tanh, RNNNonlinearity::relu}) {
        RNN rnn(RNNOptions{.input_size = I, .hidden_size = Hd, .num_layers = 2, .nonlinearity = nl,
                           .batch_first = bf, .bidirectional = true});
        rnn.to(f64);
        check_against_single_runs(h_runner(rnn), x, h0, Tensor(), lens, 1e-12);
        check_against_single_runs(h_runner(rnn), x, Tensor(), Tensor(), lens, 1e-12);
      }
    }
  }
}

TEST_CASE("lengths: unbatched input takes lengths [1]") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 3, .bidirectional = true});
  m.to(f64);
  const Tensor x = rnd({5, 2}, -1, 1, 74);
  auto [y, st] = m(x, {}, i64s({3}));
  CHECK(y.shape() == Shape{5, 6});
  CHECK(st.h.shape() == Shape{2, 3});
  auto [y3, st3] = m(narrow(x, 0, 0, 3));
  check_close(narrow(y, 0, 0, 3), y3, 1e-14, 1e-14);
  check_close(st.c, st3.c, 1e-14, 1e-14);
  for (double v : narrow(y, 0, 3, 2).to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE("lengths: outputs and gradients at padded positions are exactly zero") {
  DefaultDtypeGuard g(f64);
  const std::vector<std::int64_t> lens = {2, 5, 1, 4};
  const std::int64_t T = 5, B = 4;
  auto check_padding = [&](const Tensor& x, const Tensor& y) {
    const std::vector<double> xg = x.grad().to_vector<double>(), yv = y.to_vector<double>();
    const std::int64_t I = x.shape()[2], O = y.shape()[2];
    bool any_real_grad = false;
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t b = 0; b < B; ++b) {
        const bool pad = t >= lens[static_cast<std::size_t>(b)];
        for (std::int64_t i = 0; i < I; ++i) {
          const double v = xg[static_cast<std::size_t>((t * B + b) * I + i)];
          if (pad) REQUIRE(v == 0.0);
          any_real_grad = any_real_grad || v != 0.0;
        }
        for (std::int64_t o = 0; o < O; ++o) {
          if (pad) REQUIRE(yv[static_cast<std::size_t>((t * B + b) * O + o)] == 0.0);
        }
      }
    }
    CHECK(any_real_grad);
  };
  for (bool record : {false, true}) {
    INFO("record " << record);
    LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true});
    m.to(f64);
    m.set_record(record);
    Tensor x = rnd({T, B, 3}, -1, 1, 75).requires_grad_();
    auto [y, st] = m(x, {}, i64s(lens));
    // the loss weighs padded outputs too: they must not send gradient anywhere
    sum(mul(add(y, scalar(1.0, f64)), rnd(y.shape(), -1, 1, 76))).backward();
    check_padding(x, y);
  }
  {
    // training mode: dropout between layers and variational dropout on the packed rows
    LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .dropout = 0.5, .bidirectional = true,
                       .variational_dropout = 0.3});
    m.to(f64);
    m.train();
    Tensor x = rnd({T, B, 3}, -1, 1, 85).requires_grad_();
    auto [y, st] = m(x, {}, i64s(lens));
    sum(mul(y, rnd(y.shape(), -1, 1, 86))).backward();
    check_padding(x, y);
  }
  GRU gm(GRUOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true});
  gm.to(f64);
  Tensor x = rnd({T, B, 3}, -1, 1, 77).requires_grad_();
  auto [y, st] = gm(x, {}, i64s(lens));
  add(sum(mul(y, rnd(y.shape(), -1, 1, 78))), sum(st.h)).backward();
  check_padding(x, y);
}

TEST_CASE("lengths: introspection records are [B, H] in the caller's order, zeros past the end") {
  DefaultDtypeGuard g(f64);
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 3, .bidirectional = true});
  m.to(f64);
  m.set_record(true);
  const Tensor x = rnd({4, 3, 2}, -1, 1, 79).requires_grad_();
  auto [y, st] = m(x, {}, i64s({2, 4, 1}));
  sum(y).backward();
  const Introspection& in = m.introspection();
  REQUIRE(in.seq_len() == 4);
  for (std::int64_t d = 0; d < 2; ++d) {
    for (std::int64_t t = 0; t < 4; ++t) {
      const StepRecord& r = in.at(0, t, d);
      REQUIRE(r.h.shape() == Shape{3, 3});
      REQUIRE(r.gates.size() == 4);
      CHECK(r.gates[1].shape() == Shape{3, 3});
      // the step's h equals the output rows of this direction
      check_close(r.h, narrow(select(y, 0, t), 1, 3 * d, 3), 1e-15, 1e-15);
      CHECK(std::isfinite(r.grad_norm()));
    }
  }
  for (double v : select(in.at(0, 2, 0).h, 0, 0).to_vector<double>()) CHECK(v == 0.0);  // length 2, t = 2
  CHECK(in.at(0, 1, 0).h_graph.shape() == Shape{2, 3});  // two sequences still running at t = 1
}

TEST_CASE("lengths: variational dropout in training draws the masks as without lengths") {
  DefaultDtypeGuard g(f64);
  // Forward-only outputs at real steps do not depend on the padding, so with the same
  // seed the run with lengths matches the one without there: the masks follow their sequences.
  LSTM m(LSTMOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .dropout = 0.0,
                     .variational_dropout = 0.4});
  m.to(f64);
  const std::vector<std::int64_t> lens = {2, 5, 3};
  const Tensor x = rnd({5, 3, 3}, -1, 1, 80);
  manual_seed(11);
  const Tensor y_len = m(x, {}, i64s(lens)).output;
  manual_seed(11);
  const Tensor y_pad = m(x).output;
  for (std::size_t b = 0; b < lens.size(); ++b) {
    const std::int64_t bi = static_cast<std::int64_t>(b);
    check_close(narrow(narrow(y_len, 1, bi, 1), 0, 0, lens[b]), narrow(narrow(y_pad, 1, bi, 1), 0, 0, lens[b]), 1e-14,
                1e-14);
  }
}

TEST_CASE("gradcheck with lengths: LSTM, GRU, RNN (length-1 sequences, every length different)") {
  DefaultDtypeGuard g(f64);
  for (const std::vector<std::int64_t>& lv : std::vector<std::vector<std::int64_t>>{{1, 3, 2}, {1, 1}, {2, 4, 1, 3}}) {
    const std::int64_t B = static_cast<std::int64_t>(lv.size());
    INFO("B " << B);
    const Tensor lens = i64s(lv);
    Tensor x = rnd({4, B, 2}, -1, 1, 81), h0 = rnd({4, B, 2}, -1, 1, 82), c0 = rnd({4, B, 2}, -1, 1, 83);
    LSTM lm(LSTMOptions{.input_size = 2, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
    lm.to(f64);
    gradcheck_module(lm, {x, h0, c0}, [&] {
      auto [y, st] = lm(x, {h0, c0}, lens);
      return flat_all({y, st.h, st.c});
    });
    LSTM ln(LSTMOptions{.input_size = 2, .hidden_size = 2, .num_layers = 2, .bidirectional = true, .layer_norm = true});
    ln.to(f64);
    gradcheck_module(ln, {x, h0, c0}, [&] {
      auto [y, st] = ln(x, {h0, c0}, lens);
      return flat_all({y, st.h, st.c});
    });
    GRU gm(GRUOptions{.input_size = 2, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
    gm.to(f64);
    gradcheck_module(gm, {x, h0}, [&] {
      auto [y, st] = gm(x, {h0}, lens);
      return flat_all({y, st.h});
    });
    RNN rm(RNNOptions{.input_size = 2, .hidden_size = 2, .num_layers = 2, .bidirectional = true});
    rm.to(f64);
    gradcheck_module(rm, {x, h0}, [&] {
      auto [y, st] = rm(x, {h0}, lens);
      return flat_all({y, st.h});
    });
    LSTM bf(LSTMOptions{.input_size = 2, .hidden_size = 3, .batch_first = true});
    bf.to(f64);
    Tensor xb = rnd({B, 4, 2}, -1, 1, 84);
    gradcheck_module(bf, {xb}, [&] {
      auto [y, st] = bf(xb, {}, lens);
      return flat_all({y, st.h, st.c});
    });
  }
}

TEST_CASE("lengths: bad lengths are errors naming the module, the shapes and the length") {
  LSTM m(LSTMOptions{.input_size = 2, .hidden_size = 3, .num_layers = 2});
  const Tensor x = zeros({5, 3, 2});
  std::string s = message_of([&] { m(x, {}, i64s({2, 0, 5})); });
  CHECK(has(s, "LSTM: lengths[1] = 0 for input [5,3,2]"));
  CHECK(has(s, "[1, T = 5]"));
  CHECK_THROWS_AS(m(x, {}, i64s({2, 0, 5})), ShapeError);
  s = message_of([&] { m(x, {}, i64s({2, 6, 5})); });
  CHECK(has(s, "lengths[1] = 6"));
  CHECK_THROWS_AS(m(x, {}, i64s({2, 6, 5})), ShapeError);
  CHECK_THROWS_AS(m(x, {}, i64s({2, -1, 5})), ShapeError);
  s = message_of([&] { m(x, {}, i64s({2, 3})); });
  CHECK(has(s, "LSTM: lengths [2] for input [5,3,2] read as [T, B, I]: expected [3]"));
  CHECK_THROWS_AS(m(x, {}, i64s({2, 3})), ShapeError);
  CHECK_THROWS_AS(m(x, {}, from_vector(std::vector<std::int64_t>{2, 3, 1}, Shape{1, 3})), ShapeError);
  CHECK_THROWS_AS(m(x, {}, scalar(2.0).to(i64)), ShapeError);
  s = message_of([&] { m(x, {}, from_vector(std::vector<double>{2, 3, 1})); });
  CHECK(has(s, "LSTM: lengths is float"));
  CHECK(has(s, "int64"));
  CHECK_THROWS_AS(m(x, {}, from_vector(std::vector<double>{2, 3, 1})), DtypeError);
  // lengths written for the other layout: [B, T, I] read as [T, B, I] or the reverse
  s = message_of([&] { m(x, {}, i64s({2, 3, 1, 4, 5})); });
  CHECK(has(s, "is batch_first = false right?"));
  GRU bf(GRUOptions{.input_size = 2, .hidden_size = 3, .batch_first = true});
  s = message_of([&] { bf(zeros({3, 5, 2}), {}, i64s({2, 3, 1, 4, 5})); });
  CHECK(has(s, "GRU: lengths [5] for input [3,5,2] read as [B, T, I] (batch_first): expected [3]"));
  CHECK(has(s, "is batch_first = true right?"));
  CHECK(has(message_of([&] { bf(zeros({3, 5, 2}), {}, i64s({2, 6, 1})); }), "GRU: lengths[1] = 6"));
  RNN rm(2, 3);
  CHECK(has(message_of([&] { rm(zeros({4, 2}), {}, i64s({2, 2})); }), "RNN: lengths [2] for input [4,2] read as [T, I]"));
  // the input's own checks come first
  CHECK(has(message_of([&] { m(zeros({5, 3, 4}), {}, i64s({2, 6, 5})); }), "expected feature size 2"));
  // empty batch with lengths [0]
  CHECK(m(zeros({5, 0, 2}), {}, i64s({})).output.shape() == Shape{5, 0, 3});
}
