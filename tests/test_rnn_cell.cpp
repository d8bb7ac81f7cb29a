// RNNCell, LSTMCell, GRUCell: values against the hand-written double loops (batched and
// unbatched, with and without state), float64 gradchecks w.r.t. input, state and every
// parameter, bad inputs, and agreement with the PyTorch fixtures.
#include <cmath>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "rnn_reference.hpp"

using namespace xg;
using namespace xg::nn;
using namespace rnnref;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::rnd;

TEST_CASE("cells: values match the loops, batched and unbatched, with and without state") {
  DefaultDtypeGuard g(f64);
  const std::int64_t B = 3, I = 4, H = 5;
  Tensor x = rnd({B, I}, -1, 1, 31), h = rnd({B, H}, -1, 1, 32), c = rnd({B, H}, -1, 1, 33);
  auto ref = [&](RefMode mode, const RefWeights& w, bool with_state, std::vector<double>* c_out) {
    std::vector<double> hs = with_state ? vec(h) : std::vector<double>(B * H, 0.0);
    std::vector<double> cs = with_state ? vec(c) : std::vector<double>(B * H, 0.0);
    const std::vector<double> xs = vec(x);
    for (std::int64_t b = 0; b < B; ++b) {
      ref_step(mode, false, w, xs.data() + b * I, I, hs.data() + b * H, cs.data() + b * H, H, nullptr);
    }
    if (c_out) *c_out = cs;
    return hs;
  };
  for (bool with_state : {false, true}) {
    INFO("state " << with_state);
    for (RNNNonlinearity nl : {RNNNonlinearity::tanh, RNNNonlinearity::relu}) {
      RNNCell m(RNNCellOptions{.input_size = I, .hidden_size = H, .nonlinearity = nl});
      const RefWeights w = cell_weights(m);
      const RefMode mode = nl == RNNNonlinearity::relu ? RefMode::relu : RefMode::tanh;
      check_values(m(x, with_state ? h : Tensor()), ref(mode, w, with_state, nullptr), 1e-14, 1e-13);
    }
    {
      LSTMCell m(I, H);
      const RefWeights w = cell_weights(m);
      std::vector<double> cw;
      const std::vector<double> hw = ref(RefMode::lstm, w, with_state, &cw);
      LSTMState s = m(x, with_state ? LSTMState{h, c} : LSTMState{});
      check_values(s.h, hw, 1e-14, 1e-13);
      check_values(s.c, cw, 1e-14, 1e-13);
      // unbatched: row 1 alone
      LSTMState su = m(select(x, 0, 1), with_state ? LSTMState{select(h, 0, 1), select(c, 0, 1)} : LSTMState{});
      CHECK(su.h.shape() == Shape{H});
      check_values(su.h, std::vector<double>(hw.begin() + H, hw.begin() + 2 * H), 1e-14, 1e-13);
      check_values(su.c, std::vector<double>(cw.begin() + H, cw.begin() + 2 * H), 1e-14, 1e-13);
    }
    {
      GRUCell m(GRUCellOptions{.input_size = I, .hidden_size = H, .bias = with_state});
      const RefWeights w = cell_weights(m);
      const std::vector<double> hw = ref(RefMode::gru, w, with_state, nullptr);
      check_values(m(x, with_state ? h : Tensor()), hw, 1e-14, 1e-13);
      Tensor hu = m(select(x, 0, 2), with_state ? select(h, 0, 2) : Tensor());
      CHECK(hu.shape() == Shape{H});
      check_values(hu, std::vector<double>(hw.begin() + 2 * H, hw.end()), 1e-14, 1e-13);
    }
  }
}

TEST_CASE("gradcheck cells: RNNCell tanh/relu, LSTMCell, GRUCell (with state, without, unbatched)") {
  DefaultDtypeGuard g(f64);
  Tensor x = rnd({2, 3}, -1, 1, 71), h = rnd({2, 4}, -1, 1, 72), c = rnd({2, 4}, -1, 1, 73);
  for (RNNNonlinearity nl : {RNNNonlinearity::tanh, RNNNonlinearity::relu}) {
    RNNCell m(RNNCellOptions{.input_size = 3, .hidden_size = 4, .nonlinearity = nl});
    gradcheck_module(m, {x, h}, [&] { return m(x, h); });
  }
  LSTMCell lc(3, 4);
  gradcheck_module(lc, {x, h, c}, [&] {
    LSTMState s = lc(x, {h, c});
    return flat_all({s.h, s.c});
  });
  gradcheck_module(lc, {x}, [&] { return lc(x).c; });
  Tensor xu = rnd({3}, -1, 1, 74), hu = rnd({4}, -1, 1, 75), cu = rnd({4}, -1, 1, 76);
  gradcheck_module(lc, {xu, hu, cu}, [&] {
    LSTMState s = lc(xu, {hu, cu});
    return flat_all({s.h, s.c});
  });
  GRUCell gc(3, 4);
  gradcheck_module(gc, {x, h}, [&] { return gc(x, h); });
  gradcheck_module(gc, {xu, hu}, [&] { return gc(xu, hu); });
  gradcheck_module(gc, {x}, [&] { return gc(x); });
}

TEST_CASE("cells: bad inputs are errors naming the cell and the shapes") {
  LSTMCell lc(8, 5);
  CHECK(message_of([&] { lc(zeros({3, 10})); }) == "LSTMCell: input [3,10]: expected feature size 8");
  CHECK_THROWS_AS(lc(zeros({3, 10})), ShapeError);
  CHECK_THROWS_AS(lc(zeros({2, 3, 8})), ShapeError);
  CHECK(has(message_of([&] { lc(zeros({3, 8}), {zeros({3, 4}), zeros({3, 5})}); }), "LSTMCell: h [3,4]: expected [3,5]"));
  CHECK(has(message_of([&] { lc(zeros({3, 8}), {zeros({4, 5}), zeros({4, 5})}); }), "batch sizes differ"));
  CHECK_THROWS_AS(lc(zeros({3, 8}), {zeros({4, 5}), zeros({4, 5})}), ShapeError);
  CHECK(has(message_of([&] { lc(zeros({3, 8}), {zeros({3, 5}), Tensor()}); }), "has h but not c"));
  CHECK(has(message_of([&] { lc(zeros({8}), {zeros({1, 5}), zeros({1, 5})}); }), "expected [5]"));
  CHECK_THROWS_AS(lc(zeros({3, 8}, f64)), DtypeError);
  GRUCell gc(4, 2);
  CHECK(has(message_of([&] { gc(zeros({3, 4}), zeros({2, 2})); }), "GRUCell: batch sizes differ"));
  CHECK(has(message_of([&] { gc(zeros({})); }), "GRUCell: input []"));
  RNNCell rc(4, 2);
  CHECK(message_of([&] { rc(zeros({3, 5})); }) == "RNNCell: input [3,5]: expected feature size 4");
  CHECK_THROWS_AS(rc(zeros({3, 4}), zeros({3, 2}, f64)), DtypeError);
}

TEST_CASE("PyTorch agreement: LSTMCell and GRUCell (lstmcell.npz, grucell.npz), float64 and float32") {
  for (const Precision& pr : kPrecisions) {
    INFO(dtype_name(pr.dt));
    DefaultDtypeGuard g(pr.dt);
    {
      Agreement a("lstmcell", pr.dt, pr.tol);
      LSTMCell m(4, 6);
      a.load(m);
      Tensor x = a.input("x"), h0 = a.input("h0"), c0 = a.input("c0");
      LSTMState s = m(x, {h0, c0});
      a.check(m, {{"h", s.h}, {"c", s.c}});
    }
    {
      Agreement a("grucell", pr.dt, pr.tol);
      GRUCell m(4, 6);
      a.load(m);
      Tensor x = a.input("x"), h0 = a.input("h0");
      a.check(m, {{"h", m(x, h0)}});
    }
  }
}
