// lstm_cell_fused and gru_cell_fused: values against hand-written double loops, values
// and gradients against the same step composed from sigmoid/tanh/mul/add/narrow (float64
// and float32), float64 gradchecks over several (B, H) including B = 1 and H = 1, the h/c
// views of the packed output, empty and extreme inputs, and every bad input.
#include <cmath>
#include <string>
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
  auto msg_has = [](auto&& fn, const std::string& what) {
    try {
      fn();
      FAIL("no exception");
    } catch (const Error& e) {
      const std::string m = e.what();
      INFO(m);
      CHECK(m.find("lstm_cell_fused") != std::string::npos);
      CHECK(m.find(what) != std::string::npos);
    }
  };
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
  auto msg_has = [](auto&& fn, const std::string& what) {
    try {
      fn();
      FAIL("no exception");
    } catch (const Error& e) {
      const std::string m = e.what();
      INFO(m);
      CHECK(m.find("gru_cell_fused") != std::string::npos);
      CHECK(m.find(what) != std::string::npos);
    }
  };
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
