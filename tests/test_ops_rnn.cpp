// lstm_cell_fused, gru_cell_fused and lstm_sequence: values against hand-written double loops, values
// and gradients against the same step composed from sigmoid/tanh/mul/add/narrow (float64
// and float32), float64 gradchecks over several (B, H) including B = 1 and H = 1, the h/c
// views of the packed output, empty and extreme inputs, and every bad input.
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---- independent references: the PyTorch equations as plain loops -------------------

struct LstmRef {
  std::vector<double> h, c;
};

LstmRef ref_lstm(const std::vector<double>& gates, const std::vector<double>& cp, std::int64_t B, std::int64_t H) {
  LstmRef r{std::vector<double>(B * H), std::vector<double>(B * H)};
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t j = 0; j < H; ++j) {
      const double* g = gates.data() + b * 4 * H;
      const double i = sig(g[j]), f = sig(g[H + j]), gg = std::tanh(g[2 * H + j]), o = sig(g[3 * H + j]);
      const double c = f * cp[b * H + j] + i * gg;
      r.c[b * H + j] = c;
      r.h[b * H + j] = o * std::tanh(c);
    }
  }
  return r;
}

std::vector<double> ref_gru(const std::vector<double>& gi, const std::vector<double>& gh,
                            const std::vector<double>& hp, std::int64_t B, std::int64_t H) {
  std::vector<double> h(B * H);
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t j = 0; j < H; ++j) {
      const double* x = gi.data() + b * 3 * H;
      const double* y = gh.data() + b * 3 * H;
      const double r = sig(x[j] + y[j]);
      const double z = sig(x[H + j] + y[H + j]);
      const double n = std::tanh(x[2 * H + j] + r * y[2 * H + j]);
      h[b * H + j] = (1.0 - z) * n + z * hp[b * H + j];
    }
  }
  return h;
}

// ---- the composed versions (the fused ops must agree with these) ----------------------

LSTMGatesOut composed_lstm(const Tensor& gates, const Tensor& c_prev) {
  const std::int64_t H = gates.shape()[1] / 4;
  Tensor i = sigmoid(narrow(gates, 1, 0, H));
  Tensor f = sigmoid(narrow(gates, 1, H, H));
  Tensor g = tanh(narrow(gates, 1, 2 * H, H));
  Tensor o = sigmoid(narrow(gates, 1, 3 * H, H));
  LSTMGatesOut out;
  out.c = add(mul(f, c_prev), mul(i, g));
  out.h = mul(o, tanh(out.c));
  return out;
}

Tensor composed_gru(const Tensor& gi, const Tensor& gh, const Tensor& h_prev) {
  const std::int64_t H = gi.shape()[1] / 3;
  auto part = [H](const Tensor& t, int k) { return narrow(t, 1, k * H, H); };
  Tensor r = sigmoid(add(part(gi, 0), part(gh, 0)));
  Tensor z = sigmoid(add(part(gi, 1), part(gh, 1)));
  Tensor n = tanh(add(part(gi, 2), mul(r, part(gh, 2))));
  return add(mul(rsub(1.0, z), n), mul(z, h_prev));
}

// A fresh leaf copy of t in dtype d.
Tensor leaf(const Tensor& t, Dtype d) { return t.detach().to(d).clone().requires_grad_(); }

const std::vector<std::pair<std::int64_t, std::int64_t>> kSizes = {{1, 1}, {2, 3}, {3, 8}, {4, 17}, {1, 33}};

}  // namespace

// ---------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------

TEST_CASE("lstm_cell_fused: values match the PyTorch equations written as loops") {
  for (auto [B, H] : kSizes) {
    INFO("B=" << B << " H=" << H);
    Tensor gates = rnd({B, 4 * H}, -3.0, 3.0, 11);
    Tensor cp = rnd({B, H}, -2.0, 2.0, 12);
    const LstmRef want = ref_lstm(gates.to_vector<double>(), cp.to_vector<double>(), B, H);
    LSTMGatesOut out = lstm_cell_fused(gates, cp);
    CHECK(out.h.shape() == Shape{B, H});
    CHECK(out.c.shape() == Shape{B, H});
    CHECK(out.hc.shape() == Shape{2, B, H});
    check_values(out.h, want.h, 1e-14, 1e-13);
    check_values(out.c, want.c, 1e-14, 1e-13);
    // float32 runs the same kernel with float lanes.
    LSTMGatesOut o32 = lstm_cell_fused(gates.to(f32), cp.to(f32));
    check_values(o32.h, want.h, 1e-6, 1e-5);
    check_values(o32.c, want.c, 1e-6, 1e-5);
  }
}

TEST_CASE("lstm_cell_fused: h and c are views of the packed hc (no copy)") {
  Tensor gates = rnd({3, 8}, -1.0, 1.0, 3);
  Tensor cp = rnd({3, 2}, -1.0, 1.0, 4);
  LSTMGatesOut out = lstm_cell_fused(gates, cp);
  const double* base = out.hc.data<double>();
  CHECK(out.h.data<double>() == base);
  CHECK(out.c.data<double>() == base + 6);
  check_close(select(out.hc, 0, 0), out.h, 0, 0);
  check_close(select(out.hc, 0, 1), out.c, 0, 0);
}

TEST_CASE("lstm_cell_fused: values and gradients equal the composed sigmoid/tanh/mul/add version") {
  for (Dtype dt : {f64, f32}) {
    const double tol = dt == f64 ? 1e-13 : 2e-6;
    for (auto [B, H] : kSizes) {
      INFO("B=" << B << " H=" << H << " " << dtype_name(dt));
      const Tensor gates0 = rnd({B, 4 * H}, -2.5, 2.5, 21);
      const Tensor cp0 = rnd({B, H}, -1.5, 1.5, 22);
      const Tensor wh = rnd({B, H}, -1.0, 1.0, 23).to(dt);
      const Tensor wc = rnd({B, H}, -1.0, 1.0, 24).to(dt);

      Tensor g1 = leaf(gates0, dt), c1 = leaf(cp0, dt);
      LSTMGatesOut fused = lstm_cell_fused(g1, c1);
      add(sum(mul(fused.h, wh)), sum(mul(fused.c, wc))).backward();

      Tensor g2 = leaf(gates0, dt), c2 = leaf(cp0, dt);
      LSTMGatesOut comp = composed_lstm(g2, c2);
      add(sum(mul(comp.h, wh)), sum(mul(comp.c, wc))).backward();

      check_close(fused.h, comp.h, tol, tol);
      check_close(fused.c, comp.c, tol, tol);
      check_close(g1.grad(), g2.grad(), tol, tol);
      check_close(c1.grad(), c2.grad(), tol, tol);
    }
  }
}

TEST_CASE("lstm_cell_fused: gradient through h only, c only, and into a chain of steps") {
  const Tensor gates0 = rnd({2, 12}, -2.0, 2.0, 31);
  const Tensor cp0 = rnd({2, 3}, -1.0, 1.0, 32);
  for (int which = 0; which < 2; ++which) {
    INFO("through " << (which == 0 ? "h" : "c"));
    Tensor g1 = leaf(gates0, f64), c1 = leaf(cp0, f64);
    LSTMGatesOut a = lstm_cell_fused(g1, c1);
    sum(which == 0 ? a.h : a.c).backward();
    Tensor g2 = leaf(gates0, f64), c2 = leaf(cp0, f64);
    LSTMGatesOut b = composed_lstm(g2, c2);
    sum(which == 0 ? b.h : b.c).backward();
    check_close(g1.grad(), g2.grad(), 1e-13, 1e-13);
    check_close(c1.grad(), c2.grad(), 1e-13, 1e-13);
  }
  // Two steps: c of step 1 is c_prev of step 2, h of step 1 feeds step 2's gates.
  Tensor w = rnd({3, 12}, -0.8, 0.8, 33);
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        LSTMGatesOut s1 = lstm_cell_fused(in[0], in[1]);
        LSTMGatesOut s2 = lstm_cell_fused(add(in[0], matmul(s1.h, in[2])), s1.c);
        return concat({s2.h, s2.c, s1.h}, 1);
      },
      {gates0, cp0, w});
}

TEST_CASE("lstm_cell_fused: float64 gradcheck over several (B, H), through h, c and both") {
  for (auto [B, H] : kSizes) {
    INFO("B=" << B << " H=" << H);
    Tensor gates = rnd({B, 4 * H}, -2.0, 2.0, 41);
    Tensor cp = rnd({B, H}, -1.5, 1.5, 42);
    gradcheck_ok(
        [](const std::vector<Tensor>& in) {
          LSTMGatesOut o = lstm_cell_fused(in[0], in[1]);
          return concat({o.h, o.c}, 1);
        },
        {gates, cp});
    gradcheck_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).h; }, {gates, cp});
    gradcheck_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).c; }, {gates, cp});
    gradcheck_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).hc; }, {gates, cp});
  }
}

TEST_CASE("lstm_cell_fused: gradient for one input only (the other is a constant)") {
  Tensor gates = rnd({2, 8}, -2.0, 2.0, 51);
  Tensor cp = rnd({2, 2}, -1.0, 1.0, 52);
  gradcheck_ok([&](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], cp).h; }, {gates});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return lstm_cell_fused(gates, in[0]).c; }, {cp});
}

TEST_CASE("lstm_cell_fused: records one fused node plus the two view nodes; nothing under NoGradGuard") {
  Tensor gates = rnd({2, 8}).requires_grad_();
  Tensor cp = rnd({2, 2});
  const std::size_t before = tape_size();
  {
    LSTMGatesOut o = lstm_cell_fused(gates, cp);
    CHECK(tape_size() == before + 3);
    CHECK(o.hc.op_name() == "lstm_cell_fused");
    CHECK(o.h.op_name() == "lstm_h");
    CHECK(o.c.op_name() == "lstm_c");
  }
  CHECK(tape_pending() == 0);
  NoGradGuard ng;
  LSTMGatesOut o = lstm_cell_fused(gates, cp);
  CHECK_FALSE(o.h.requires_grad());
  CHECK_FALSE(o.hc.requires_grad());
}

TEST_CASE("lstm_cell_fused: saturated gates (|x| = 1000) give finite values and gradients") {
  for (Dtype dt : {f64, f32}) {
    std::vector<double> gv{1000, -1000, 1000, -1000, -1000, 1000, -1000, 1000};
    Tensor gates = from_vector(gv, {2, 4}, dt).requires_grad_();
    Tensor cp = from_vector(std::vector<double>{0.5, -0.25}, {2, 1}, dt).requires_grad_();
    LSTMGatesOut o = lstm_cell_fused(gates, cp);
    // Row 0: i = 1, f = 0, g = 1, o = 0 -> c = 1, h = 0. Row 1: i = 0, f = 1, g = -1, o = 1 -> c = c_prev.
    check_values(o.c, {1.0, -0.25}, 1e-7, 0);
    check_values(o.h, {0.0, std::tanh(-0.25)}, 1e-7, 1e-6);
    sum(add(o.h, o.c)).backward();
    for (double v : gates.grad().to_vector<double>()) CHECK(std::isfinite(v));
    for (double v : cp.grad().to_vector<double>()) CHECK(std::isfinite(v));
  }
}

TEST_CASE("lstm_cell_fused: empty batch and zero hidden size") {
  Tensor gates = zeros({0, 8}, f64).requires_grad_();
  Tensor cp = zeros({0, 2}, f64).requires_grad_();
  LSTMGatesOut o = lstm_cell_fused(gates, cp);
  CHECK(o.h.shape() == Shape{0, 2});
  CHECK(o.hc.shape() == Shape{2, 0, 2});
  sum(o.h).backward();
  CHECK(gates.grad().shape() == Shape{0, 8});

  LSTMGatesOut z = lstm_cell_fused(zeros({3, 0}, f64), zeros({3, 0}, f64));
  CHECK(z.c.shape() == Shape{3, 0});
}

TEST_CASE("lstm_cell_fused: bad inputs throw errors naming the op and the shapes") {
  auto msg_has = [](auto&& fn, const std::string& what) { xgtest::check_throws_msg<Error>(fn, {"lstm_cell_fused", what}); };
  CHECK_THROWS_AS(lstm_cell_fused(zeros({2, 7}), zeros({2, 2})), ShapeError);
  msg_has([] { lstm_cell_fused(zeros({2, 7}), zeros({2, 2})); }, "[2,7]");
  CHECK_THROWS_AS(lstm_cell_fused(zeros({8}), zeros({2})), ShapeError);
  CHECK_THROWS_AS(lstm_cell_fused(zeros({1, 2, 8}), zeros({1, 2, 2})), ShapeError);
  // wrong hidden size, then a batch mismatch
  CHECK_THROWS_AS(lstm_cell_fused(zeros({2, 8}), zeros({2, 3})), ShapeError);
  msg_has([] { lstm_cell_fused(zeros({2, 8}), zeros({2, 3})); }, "[2,3]");
  CHECK_THROWS_AS(lstm_cell_fused(zeros({2, 8}), zeros({3, 2})), ShapeError);
  msg_has([] { lstm_cell_fused(zeros({2, 8}), zeros({3, 2})); }, "expected c_prev [2,2]");
  CHECK_THROWS_AS(lstm_cell_fused(zeros({2, 8}, f32), zeros({2, 2}, f64)), DtypeError);
  msg_has([] { lstm_cell_fused(zeros({2, 8}, f32), zeros({2, 2}, f64)); }, "float64");
  CHECK_THROWS_AS(lstm_cell_fused(zeros({2, 8}), randint(0, 3, {2, 2})), DtypeError);
  CHECK_THROWS_AS(lstm_cell_fused(Tensor(), zeros({2, 2})), StateError);
}

// ---------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------

TEST_CASE("gru_cell_fused: values match the PyTorch equations written as loops") {
  for (auto [B, H] : kSizes) {
    INFO("B=" << B << " H=" << H);
    Tensor gi = rnd({B, 3 * H}, -3.0, 3.0, 61);
    Tensor gh = rnd({B, 3 * H}, -3.0, 3.0, 62);
    Tensor hp = rnd({B, H}, -1.0, 1.0, 63);
    const std::vector<double> want =
        ref_gru(gi.to_vector<double>(), gh.to_vector<double>(), hp.to_vector<double>(), B, H);
    Tensor h = gru_cell_fused(gi, gh, hp);
    CHECK(h.shape() == Shape{B, H});
    check_values(h, want, 1e-14, 1e-13);
    check_values(gru_cell_fused(gi.to(f32), gh.to(f32), hp.to(f32)), want, 1e-6, 1e-5);
  }
}

TEST_CASE("gru_cell_fused: values and gradients equal the composed version") {
  for (Dtype dt : {f64, f32}) {
    const double tol = dt == f64 ? 1e-13 : 2e-6;
    for (auto [B, H] : kSizes) {
      INFO("B=" << B << " H=" << H << " " << dtype_name(dt));
      const Tensor gi0 = rnd({B, 3 * H}, -2.5, 2.5, 71);
      const Tensor gh0 = rnd({B, 3 * H}, -2.5, 2.5, 72);
      const Tensor hp0 = rnd({B, H}, -1.0, 1.0, 73);
      const Tensor w = rnd({B, H}, -1.0, 1.0, 74).to(dt);
      Tensor a1 = leaf(gi0, dt), b1 = leaf(gh0, dt), h1 = leaf(hp0, dt);
      Tensor y1 = gru_cell_fused(a1, b1, h1);
      sum(mul(y1, w)).backward();
      Tensor a2 = leaf(gi0, dt), b2 = leaf(gh0, dt), h2 = leaf(hp0, dt);
      Tensor y2 = composed_gru(a2, b2, h2);
      sum(mul(y2, w)).backward();
      check_close(y1, y2, tol, tol);
      check_close(a1.grad(), a2.grad(), tol, tol);
      check_close(b1.grad(), b2.grad(), tol, tol);
      check_close(h1.grad(), h2.grad(), tol, tol);
    }
  }
}

TEST_CASE("gru_cell_fused: float64 gradcheck over several (B, H) and for each input alone") {
  for (auto [B, H] : kSizes) {
    INFO("B=" << B << " H=" << H);
    Tensor gi = rnd({B, 3 * H}, -2.0, 2.0, 81);
    Tensor gh = rnd({B, 3 * H}, -2.0, 2.0, 82);
    Tensor hp = rnd({B, H}, -1.0, 1.0, 83);
    gradcheck_ok([](const std::vector<Tensor>& in) { return gru_cell_fused(in[0], in[1], in[2]); }, {gi, gh, hp});
  }
  Tensor gi = rnd({2, 6}, -2.0, 2.0, 84), gh = rnd({2, 6}, -2.0, 2.0, 85), hp = rnd({2, 2}, -1.0, 1.0, 86);
  gradcheck_ok([&](const std::vector<Tensor>& in) { return gru_cell_fused(in[0], gh, hp); }, {gi});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return gru_cell_fused(gi, in[0], hp); }, {gh});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return gru_cell_fused(gi, gh, in[0]); }, {hp});
  // Two chained steps: h of step 1 is h_prev of step 2 and feeds its gh.
  Tensor w = rnd({2, 6}, -0.8, 0.8, 87);
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor h1 = gru_cell_fused(in[0], in[1], in[2]);
        return gru_cell_fused(in[0], matmul(h1, in[3]), h1);
      },
      {gi, gh, hp, w});
}

TEST_CASE("gru_cell_fused: one node; saturated gates stay finite; empty batch") {
  Tensor gi = rnd({2, 6}).requires_grad_();
  const std::size_t before = tape_size();
  {
    Tensor h = gru_cell_fused(gi, rnd({2, 6}), rnd({2, 2}));
    CHECK(tape_size() == before + 1);
    CHECK(h.op_name() == "gru_cell_fused");
  }
  for (Dtype dt : {f64, f32}) {
    Tensor a = from_vector(std::vector<double>{1000, -1000, -1000, -1000, 1000, 500}, {2, 3}, dt).requires_grad_();
    Tensor b = from_vector(std::vector<double>{0, 0, 0, 0, 0, -500}, {2, 3}, dt).requires_grad_();
    Tensor hp = from_vector(std::vector<double>{0.3, -0.6}, {2, 1}, dt).requires_grad_();
    Tensor h = gru_cell_fused(a, b, hp);
    // Row 0: r = 1, z = 0, n = tanh(-1000) = -1 -> h = n = -1.
    // Row 1: r = 0, z = 1 (n = tanh(500 + 0 * -500) = 1) -> h = h_prev = -0.6.
    check_values(h, {-1.0, -0.6}, 1e-7, 1e-6);
    sum(h).backward();
    for (double v : a.grad().to_vector<double>()) CHECK(std::isfinite(v));
    for (double v : b.grad().to_vector<double>()) CHECK(std::isfinite(v));
  }
  Tensor e = zeros({0, 6}, f64).requires_grad_();
  Tensor h = gru_cell_fused(e, zeros({0, 6}, f64), zeros({0, 2}, f64));
  CHECK(h.shape() == Shape{0, 2});
  sum(h).backward();
  CHECK(e.grad().shape() == Shape{0, 6});
}

TEST_CASE("gru_cell_fused: bad inputs throw errors naming the op and the shapes") {
  auto msg_has = [](auto&& fn, const std::string& what) { xgtest::check_throws_msg<Error>(fn, {"gru_cell_fused", what}); };
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 7}), zeros({2, 7}), zeros({2, 2})), ShapeError);
  msg_has([] { gru_cell_fused(zeros({2, 7}), zeros({2, 7}), zeros({2, 2})); }, "[2,7]");
  CHECK_THROWS_AS(gru_cell_fused(zeros({6}), zeros({6}), zeros({2})), ShapeError);
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 6}), zeros({3, 6}), zeros({2, 2})), ShapeError);
  msg_has([] { gru_cell_fused(zeros({2, 6}), zeros({3, 6}), zeros({2, 2})); }, "gh [3,6]");
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 6}), zeros({2, 6}), zeros({2, 3})), ShapeError);
  msg_has([] { gru_cell_fused(zeros({2, 6}), zeros({2, 6}), zeros({1, 2})); }, "expected h_prev [2,2]");
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 6}, f64), zeros({2, 6}), zeros({2, 2})), DtypeError);
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 6}), zeros({2, 6}), zeros({2, 2}, f64)), DtypeError);
  CHECK_THROWS_AS(gru_cell_fused(zeros({2, 6}), zeros({2, 6}), Tensor()), StateError);
}

// ---------------------------------------------------------------------------
// lstm_sequence
// ---------------------------------------------------------------------------

namespace {

// The recurrence as plain loops over doubles: gates = gx[t] + h_prev · W_hhᵀ, then the
// cell equations of ref_lstm. Returns every h (time order) and the last c.
struct LstmSeqRef {
  std::vector<double> y, c_n;
};

LstmSeqRef ref_lstm_sequence(const std::vector<double>& gx, const std::vector<double>& w, std::vector<double> h,
                             std::vector<double> c, std::int64_t T, std::int64_t B, std::int64_t H, bool reverse) {
  LstmSeqRef r{std::vector<double>(T * B * H), {}};
  for (std::int64_t k = 0; k < T; ++k) {
    const std::int64_t t = reverse ? T - 1 - k : k;
    std::vector<double> gates(gx.begin() + t * B * 4 * H, gx.begin() + (t + 1) * B * 4 * H);
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t g = 0; g < 4 * H; ++g) {
        for (std::int64_t j = 0; j < H; ++j) gates[b * 4 * H + g] += h[b * H + j] * w[g * H + j];
      }
    }
    const LstmRef s = ref_lstm(gates, c, B, H);
    h = s.h;
    c = s.c;
    std::copy(h.begin(), h.end(), r.y.begin() + t * B * H);
  }
  r.c_n = c;
  return r;
}

// The same sequence as a loop of lstm_cell_fused steps (the per-step path).
LSTMSequenceOut composed_sequence(const Tensor& gx, const Tensor& w, const Tensor& h0, const Tensor& c0,
                                  bool reverse) {
  const std::int64_t T = gx.shape()[0], B = gx.shape()[1], H = gx.shape()[2] / 4;
  Tensor h = h0, c = c0.defined() ? c0 : zeros({B, H}, gx.dtype());
  std::vector<Tensor> ys(static_cast<std::size_t>(T));
  for (std::int64_t k = 0; k < T; ++k) {
    const std::int64_t t = reverse ? T - 1 - k : k;
    Tensor gates = select(gx, 0, t);
    if (h.defined()) gates = add(gates, matmul(h, transpose(w, 0, 1)));
    const LSTMGatesOut o = lstm_cell_fused(gates, c);
    h = o.h;
    c = o.c;
    ys[static_cast<std::size_t>(t)] = h;
  }
  LSTMSequenceOut out;
  out.y = stack(ys, 0);
  out.h_n = h;
  out.c_n = c;
  return out;
}

}  // namespace

TEST_CASE("lstm_sequence: values match the recurrence written as loops, both directions, with and without h0/c0") {
  for (const auto& [T, B, H] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
           {1, 1, 1}, {3, 2, 3}, {5, 3, 8}, {4, 1, 17}}) {
    for (bool reverse : {false, true}) {
      for (bool init : {false, true}) {
        CAPTURE(T);
        CAPTURE(B);
        CAPTURE(H);
        CAPTURE(reverse);
        CAPTURE(init);
        const Tensor gx = rnd({T, B, 4 * H}, -2, 2, 3);
        const Tensor w = rnd({4 * H, H}, -0.7, 0.7, 4);
        const Tensor h0 = init ? rnd({B, H}, -1, 1, 5) : Tensor();
        const Tensor c0 = init ? rnd({B, H}, -1, 1, 6) : Tensor();
        const LstmSeqRef ref = ref_lstm_sequence(
            gx.to_vector<double>(), w.to_vector<double>(),
            init ? h0.to_vector<double>() : std::vector<double>(B * H, 0.0),
            init ? c0.to_vector<double>() : std::vector<double>(B * H, 0.0), T, B, H, reverse);
        const LSTMSequenceOut o = lstm_sequence(gx, w, h0, c0, reverse);
        CHECK(o.y.shape() == Shape{T, B, H});
        CHECK(o.packed.shape() == Shape{T + 1, B, H});
        check_values(o.y, ref.y, 1e-12, 1e-10);
        check_values(o.c_n, ref.c_n, 1e-12, 1e-10);
        const std::int64_t last = reverse ? 0 : T - 1;
        check_values(o.h_n, std::vector<double>(ref.y.begin() + last * B * H, ref.y.begin() + (last + 1) * B * H),
                     1e-12, 1e-10);
      }
    }
  }
}

TEST_CASE("lstm_sequence: values and gradients equal the per-step lstm_cell_fused loop (float32 and float64)") {
  const std::int64_t T = 6, B = 3, H = 5;
  for (Dtype d : {f64, f32}) {
    for (bool reverse : {false, true}) {
      CAPTURE(reverse);
      const Tensor gx0 = rnd({T, B, 4 * H}, -2, 2, 7), w0 = rnd({4 * H, H}, -0.6, 0.6, 8);
      const Tensor h00 = rnd({B, H}, -1, 1, 9), c00 = rnd({B, H}, -1, 1, 10);
      const Tensor wy = rnd({T, B, H}, -1, 1, 11), wc = rnd({B, H}, -1, 1, 12), wh = rnd({B, H}, -1, 1, 13);
      auto run = [&](bool fused) {
        Tensor gx = leaf(gx0, d), w = leaf(w0, d), h0 = leaf(h00, d), c0 = leaf(c00, d);
        const LSTMSequenceOut o = fused ? lstm_sequence(gx, w, h0, c0, reverse) : composed_sequence(gx, w, h0, c0, reverse);
        // Asymmetric weights on y, c_n and h_n, so every path carries gradient.
        Tensor loss = add(add(sum(mul(o.y, wy.to(d))), sum(mul(o.c_n, wc.to(d)))), sum(mul(o.h_n, wh.to(d))));
        loss.backward();
        return std::vector<Tensor>{o.y.detach(), o.c_n.detach(), gx.grad(), w.grad(), h0.grad(), c0.grad()};
      };
      const auto a = run(true), b = run(false);
      const double tol = d == f64 ? 1e-12 : 1e-5;
      for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        check_close(a[i], b[i], tol, tol);
      }
    }
  }
}

TEST_CASE("lstm_sequence: float64 gradcheck over several (T, B, H), both directions, through y, h_n and c_n") {
  for (const auto& [T, B, H] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
           {1, 1, 1}, {2, 1, 3}, {3, 2, 2}, {4, 3, 5}}) {
    for (bool reverse : {false, true}) {
      CAPTURE(T);
      CAPTURE(B);
      CAPTURE(H);
      CAPTURE(reverse);
      const Tensor gx = rnd({T, B, 4 * H}, -1.5, 1.5, 21), w = rnd({4 * H, H}, -0.6, 0.6, 22);
      const Tensor h0 = rnd({B, H}, -1, 1, 23), c0 = rnd({B, H}, -1, 1, 24);
      gradcheck_ok([reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], in[2], in[3], reverse).y; },
                   {gx, w, h0, c0});
      gradcheck_ok(
          [reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], in[2], in[3], reverse).c_n; },
          {gx, w, h0, c0});
      gradcheck_ok(
          [reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], in[2], in[3], reverse).h_n; },
          {gx, w, h0, c0});
      // Without an initial state (zeros), and with W_hh a constant.
      gradcheck_ok([reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], {}, {}, reverse).packed; },
                   {gx, w});
      gradcheck_ok([w, reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], w, {}, {}, reverse).y; },
                   {gx});
    }
  }
}

TEST_CASE("lstm_sequence: one recurrence node whatever T; nothing recorded under NoGradGuard") {
  const Tensor w = rnd({8, 2}, -0.5, 0.5, 31).requires_grad_();
  for (std::int64_t T : {1, 5, 40}) {
    CAPTURE(T);
    const Tensor gx = rnd({T, 3, 8}, -1, 1, 32).requires_grad_();
    const std::size_t before = tape_size();
    const LSTMSequenceOut o = lstm_sequence(gx, w);
    // the recurrence, the y and c_n views, select for h_n
    CHECK(tape_size() == before + 4);
    CHECK(o.packed.op_name() == "lstm_sequence");
    CHECK(o.y.op_name() == "lstm_sequence_y");
    CHECK(o.c_n.op_name() == "lstm_sequence_c");
    sum(o.y).backward();
  }
  NoGradGuard no_grad;
  const LSTMSequenceOut o = lstm_sequence(rnd({3, 2, 8}, -1, 1, 33).requires_grad_(), w);
  CHECK_FALSE(o.y.requires_grad());
  CHECK_FALSE(o.c_n.requires_grad());
}

TEST_CASE("lstm_sequence: empty batch and zero hidden size give empty results") {
  Tensor gx = zeros({3, 0, 8}, f64).requires_grad_(), w = rnd({8, 2}).requires_grad_();
  LSTMSequenceOut o = lstm_sequence(gx, w);
  CHECK(o.y.shape() == Shape{3, 0, 2});
  CHECK(o.c_n.shape() == Shape{0, 2});
  sum(o.y).backward();
  CHECK(gx.grad().shape() == Shape{3, 0, 8});
  check_values(w.grad(), std::vector<double>(16, 0.0));
  CHECK(lstm_sequence(zeros({2, 3, 0}), zeros({0, 0})).y.shape() == Shape{2, 3, 0});
}

TEST_CASE("lstm_sequence: bad inputs throw errors naming the op and the shapes") {
  auto msg_has = [](auto&& fn, const std::string& what) { xgtest::check_throws_msg<Error>(fn, {"lstm_sequence", what}); };
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 7}), zeros({4, 1})), ShapeError);
  msg_has([] { lstm_sequence(zeros({3, 2, 7}), zeros({4, 1})); }, "[3,2,7]");
  CHECK_THROWS_AS(lstm_sequence(zeros({2, 8}), zeros({8, 2})), ShapeError);
  CHECK_THROWS_AS(lstm_sequence(zeros({0, 2, 8}), zeros({8, 2})), ShapeError);
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 8}), zeros({8, 3})), ShapeError);
  msg_has([] { lstm_sequence(zeros({3, 2, 8}), zeros({8, 3})); }, "expected w_hh [8,2]");
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 8}), zeros({8, 2}), zeros({2, 2}), Tensor()), ShapeError);
  msg_has([] { lstm_sequence(zeros({3, 2, 8}), zeros({8, 2}), zeros({2, 2}), Tensor()); }, "both h0 and c0");
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 8}), zeros({8, 2}), zeros({3, 2}), zeros({3, 2})), ShapeError);
  msg_has([] { lstm_sequence(zeros({3, 2, 8}), zeros({8, 2}), zeros({3, 2}), zeros({3, 2})); },
          "expected h0 and c0 [2,2]");
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 8}, f32), zeros({8, 2}, f64)), DtypeError);
  CHECK_THROWS_AS(lstm_sequence(zeros({3, 2, 8}), zeros({8, 2}), zeros({2, 2}, f64), zeros({2, 2}, f64)), DtypeError);
  CHECK_THROWS_AS(lstm_sequence(Tensor(), zeros({8, 2})), StateError);
}

// ---- step_views -----------------------------------------------------------------------

namespace {

// A recurrence over the steps of x [T*B, G]: h = tanh(step + 0.5 h), summed with weights.
Tensor run_steps(const std::vector<Tensor>& steps) {
  Tensor h, out;
  for (std::size_t k = 0; k < steps.size(); ++k) {
    h = h.defined() ? tanh(add(steps[k], mul(h, 0.5))) : tanh(steps[k]);
    const Tensor term = mul(sum(h), static_cast<double>(k + 1));
    out = out.defined() ? add(out, term) : term;
  }
  return out;
}

}  // namespace

TEST_CASE("step_views: the T steps of x as [B, G] views in processing order, both directions") {
  const Tensor x = rnd({6, 2}, -1, 1, 3);  // T = 3, B = 2
  const std::vector<double> xv = x.to_vector<double>();
  for (bool reverse : {false, true}) {
    const std::vector<Tensor> v = step_views(x, 3, reverse);
    REQUIRE(v.size() == 3);
    for (std::int64_t k = 0; k < 3; ++k) {
      const std::int64_t t = reverse ? 2 - k : k;
      CHECK(v[k].shape() == Shape{2, 2});
      CHECK(v[k].data<double>() == x.data<double>() + t * 4);  // a view, not a copy
      check_values(v[k], std::vector<double>(xv.begin() + t * 4, xv.begin() + t * 4 + 4), 0, 0);
    }
  }
}

TEST_CASE("step_views: gradients through a recurrence equal those of the narrow() steps, twice over") {
  for (bool reverse : {false, true}) {
    Tensor x = rnd({8, 3}, -1, 1, 5);  // T = 4, B = 2
    x.requires_grad_();
    std::vector<Tensor> narrowed;
    for (std::int64_t k = 0; k < 4; ++k) narrowed.push_back(narrow(x, 0, (reverse ? 3 - k : k) * 2, 2));
    run_steps(narrowed).backward();
    const Tensor want = x.grad().clone();
    x.zero_grad();
    // A second pass over a new graph starts a new buffer: nothing carries over.
    for (int pass = 0; pass < 2; ++pass) {
      run_steps(step_views(x, 4, reverse)).backward();
      check_close(x.grad(), want, 1e-15, 1e-13);
      x.zero_grad();
    }
  }
}

TEST_CASE("gradcheck step_views through a recurrence: several (T, B, G), both directions") {
  for (bool reverse : {false, true}) {
    gradcheck_ok([&](const std::vector<Tensor>& in) { return run_steps(step_views(in[0], 3, reverse)); },
                 {rnd({6, 2})});
    gradcheck_ok([&](const std::vector<Tensor>& in) { return run_steps(step_views(in[0], 1, reverse)); },
                 {rnd({1, 1})});
    gradcheck_ok([&](const std::vector<Tensor>& in) { return run_steps(step_views(in[0], 5, reverse)); },
                 {rnd({5, 4})});
  }
}

TEST_CASE("step_views: x not 2-D or T not dividing its rows is a ShapeError naming the op") {
  xgtest::check_throws_msg<ShapeError>([] { step_views(rnd({6, 2}), 4); }, {"step_views", "[6,2]"});
  xgtest::check_throws_msg<ShapeError>([] { step_views(rnd({6}), 3); }, {"step_views", "[6]"});
  xgtest::check_throws_msg<ShapeError>([] { step_views(rnd({6, 2}), 0); }, {"step_views"});
}

// ---- variable-length batches: packed_layout, pack_padded / pad_packed, lstm_sequence_packed ----

TEST_CASE("packed_layout: stable sort by decreasing length, batch sizes, offsets, steps") {
  const PackedLayout p = packed_layout({3, 6, 1, 3, 4}, 7);
  CHECK(p.order == std::vector<std::int64_t>{1, 4, 0, 3, 2});
  CHECK(p.batch_sizes == std::vector<std::int64_t>{5, 4, 4, 2, 1, 1, 0});
  CHECK(p.offsets == std::vector<std::int64_t>{0, 5, 9, 13, 15, 16, 17, 17});
  CHECK(p.rows() == 17);
  CHECK(p.steps == 6);
  CHECK_FALSE(p.sorted());
  CHECK(packed_layout({4, 4, 2}, 4).sorted());
}

TEST_CASE("pack_padded / pad_packed: real rows only, zeros back at the padding, each other's gradient") {
  const PackedLayout p = packed_layout({2, 4, 1}, 4);
  for (bool bf : {false, true}) {
    CAPTURE(bf);
    const Tensor x = rnd(bf ? Shape{3, 4, 2} : Shape{4, 3, 2}, -1, 1, 61);
    const Tensor pk = pack_padded(x, p, bf);
    REQUIRE(pk.shape() == Shape{7, 2});
    // step 0: sequences 1, 0, 2; step 1: 1, 0; steps 2 and 3: 1
    const std::vector<std::pair<std::int64_t, std::int64_t>> rows = {{0, 1}, {0, 0}, {0, 2}, {1, 1},
                                                                     {1, 0}, {2, 1}, {3, 1}};
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto [t, b] = rows[r];
      check_close(select(pk, 0, static_cast<std::int64_t>(r)), bf ? select(select(x, 0, b), 0, t)
                                                                  : select(select(x, 0, t), 0, b), 0, 0);
    }
    const Tensor back = pad_packed(pk, p, bf);
    REQUIRE(back.shape() == x.shape());
    const std::vector<std::int64_t> len = {2, 4, 1};
    const std::vector<double> xv = x.to_vector<double>(), bv = back.to_vector<double>();
    for (std::int64_t t = 0; t < 4; ++t) {
      for (std::int64_t b = 0; b < 3; ++b) {
        for (std::int64_t f = 0; f < 2; ++f) {
          const std::size_t i = static_cast<std::size_t>(((bf ? b * 4 + t : t * 3 + b)) * 2 + f);
          CHECK(bv[i] == (t < len[static_cast<std::size_t>(b)] ? xv[i] : 0.0));
        }
      }
    }
    gradcheck_ok([&p, bf](const std::vector<Tensor>& in) { return pack_padded(in[0], p, bf); }, {x});
    gradcheck_ok([&p, bf](const std::vector<Tensor>& in) { return pad_packed(in[0], p, bf); }, {pk});
  }
  CHECK_THROWS_AS(pack_padded(zeros({4, 2, 2}), p), ShapeError);
  CHECK_THROWS_AS(pad_packed(zeros({6, 2}), p), ShapeError);
}

namespace {

// lstm_sequence_packed on a padded gx [T, B, 4H] and states in the caller's order.
LSTMSequenceOut packed_run(const Tensor& gx, const Tensor& w, const Tensor& h0, const Tensor& c0,
                           const PackedLayout& p, bool reverse) {
  const Tensor order = from_vector(p.order);
  return lstm_sequence_packed(pack_padded(gx, p), w, h0.defined() ? index_select(h0, 0, order) : Tensor(),
                              c0.defined() ? index_select(c0, 0, order) : Tensor(), p, reverse);
}

}  // namespace

TEST_CASE("lstm_sequence_packed: each sequence equals lstm_sequence over its own steps, both directions") {
  const std::int64_t T = 6, H = 3;
  const std::vector<std::int64_t> lens = {3, 6, 1, 3, 5};
  const std::int64_t B = static_cast<std::int64_t>(lens.size());
  const PackedLayout p = packed_layout(lens, T);
  const Tensor gx = rnd({T, B, 4 * H}, -1.5, 1.5, 62), w = rnd({4 * H, H}, -0.6, 0.6, 63);
  const Tensor h0 = rnd({B, H}, -1, 1, 64), c0 = rnd({B, H}, -1, 1, 65);
  for (bool reverse : {false, true}) {
    for (bool with_state : {true, false}) {
      CAPTURE(reverse);
      CAPTURE(with_state);
      const LSTMSequenceOut o = packed_run(gx, w, with_state ? h0 : Tensor(), with_state ? c0 : Tensor(), p, reverse);
      const Tensor y = pad_packed(o.y, p);
      for (std::int64_t i = 0; i < B; ++i) {
        // sorted row i is sequence p.order[i]
        const std::int64_t b = p.order[static_cast<std::size_t>(i)], len = lens[static_cast<std::size_t>(b)];
        const LSTMSequenceOut one =
            lstm_sequence(narrow(narrow(gx, 1, b, 1), 0, 0, len), w, with_state ? narrow(h0, 0, b, 1) : Tensor(),
                          with_state ? narrow(c0, 0, b, 1) : Tensor(), reverse);
        check_close(narrow(narrow(y, 1, b, 1), 0, 0, len), one.y, 1e-14, 1e-14);
        check_close(narrow(o.h_n, 0, i, 1), one.h_n, 1e-14, 1e-14);
        check_close(narrow(o.c_n, 0, i, 1), one.c_n, 1e-14, 1e-14);
      }
    }
  }
}

TEST_CASE("lstm_sequence_packed: float64 gradcheck over several layouts, both directions, through y, h_n and c_n") {
  const std::int64_t H = 2;
  for (const auto& [lens, T] : std::vector<std::pair<std::vector<std::int64_t>, std::int64_t>>{
           {{1}, 1}, {{1, 1}, 3}, {{2, 3, 1}, 3}, {{4, 1, 2, 3}, 5}}) {
    const std::int64_t B = static_cast<std::int64_t>(lens.size());
    const PackedLayout p = packed_layout(lens, T);
    for (bool reverse : {false, true}) {
      CAPTURE(B);
      CAPTURE(reverse);
      const Tensor gx = pack_padded(rnd({T, B, 4 * H}, -1.5, 1.5, 66), p), w = rnd({4 * H, H}, -0.6, 0.6, 67);
      const Tensor h0 = rnd({B, H}, -1, 1, 68), c0 = rnd({B, H}, -1, 1, 69);
      gradcheck_ok([&p, reverse](const std::vector<Tensor>& in) {
        return lstm_sequence_packed(in[0], in[1], in[2], in[3], p, reverse).packed;
      }, {gx, w, h0, c0});
      gradcheck_ok([&p, reverse](const std::vector<Tensor>& in) {
        return lstm_sequence_packed(in[0], in[1], in[2], in[3], p, reverse).h_n;
      }, {gx, w, h0, c0});
      gradcheck_ok([&p, reverse](const std::vector<Tensor>& in) {
        return lstm_sequence_packed(in[0], in[1], in[2], in[3], p, reverse).c_n;
      }, {gx, w, h0, c0});
      gradcheck_ok([&p, reverse](const std::vector<Tensor>& in) {
        return lstm_sequence_packed(in[0], in[1], {}, {}, p, reverse).y;
      }, {gx, w});
    }
  }
}

TEST_CASE("lstm_sequence_packed: every length T gives lstm_sequence's values and gradients") {
  const std::int64_t T = 4, B = 3, H = 3;
  const PackedLayout p = packed_layout({T, T, T}, T);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    Tensor gx = rnd({T, B, 4 * H}, -1, 1, 70).requires_grad_(), w = rnd({4 * H, H}, -0.5, 0.5, 71).requires_grad_();
    const LSTMSequenceOut a = lstm_sequence(gx, w, {}, {}, reverse);
    sum(mul(a.y, a.y)).backward();
    const Tensor ggx = gx.grad().clone(), gw = w.grad().clone();
    gx.zero_grad();
    w.zero_grad();
    const LSTMSequenceOut b = lstm_sequence_packed(reshape(gx, Shape{T * B, 4 * H}), w, {}, {}, p, reverse);
    check_close(reshape(b.y, Shape{T, B, H}), a.y, 1e-15, 1e-15);
    check_close(b.h_n, a.h_n, 1e-15, 1e-15);
    check_close(b.c_n, a.c_n, 1e-15, 1e-15);
    sum(mul(b.y, b.y)).backward();
    check_close(gx.grad(), ggx, 1e-14, 1e-14);
    check_close(w.grad(), gw, 1e-14, 1e-14);
  }
}

TEST_CASE("lstm_sequence_packed: bad inputs throw errors naming the op and the shapes") {
  const PackedLayout p = packed_layout({2, 1}, 2);  // 3 packed rows
  auto msg_has = [](auto&& fn, const std::string& what) {
    xgtest::check_throws_msg<Error>(fn, {"lstm_sequence_packed", what});
  };
  CHECK_THROWS_AS(lstm_sequence_packed(zeros({4, 8}), zeros({8, 2}), {}, {}, p), ShapeError);
  msg_has([&] { lstm_sequence_packed(zeros({4, 8}), zeros({8, 2}), {}, {}, p); }, "3 packed rows");
  CHECK_THROWS_AS(lstm_sequence_packed(zeros({3, 8}), zeros({8, 3}), {}, {}, p), ShapeError);
  CHECK_THROWS_AS(lstm_sequence_packed(zeros({3, 8}), zeros({8, 2}), zeros({2, 2}), {}, p), ShapeError);
  msg_has([&] { lstm_sequence_packed(zeros({3, 8}), zeros({8, 2}), zeros({3, 2}), zeros({3, 2}), p); },
          "expected h0 and c0 [2,2]");
  CHECK_THROWS_AS(lstm_sequence_packed(zeros({3, 8}, f32), zeros({8, 2}, f64), {}, {}, p), DtypeError);
}
