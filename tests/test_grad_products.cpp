// Weight gradients of products stacked per leaf and summed by one GEMM
// (GradSlots::set_product): values against hand sums, the early flush past 4 MiB, tall
// products, the 16 MiB budget of all stacks, xg::grad and anomaly mode, what a walk that
// throws leaves behind, the bytes a T-step loop's backward asks for, and bad operands.
#include <array>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include <xgrad/xgrad.hpp>

#include "helpers.hpp"

using namespace xg;

namespace {

struct Loop {
  std::vector<Tensor> xs, cs;  // inputs x_t [B, I] and loss weights c_t [B, N] per step
};

Loop make_loop(std::int64_t T, std::int64_t B, std::int64_t I, std::int64_t N) {
  Loop l;
  for (std::int64_t t = 0; t < T; ++t) {
    l.xs.push_back(randn({B, I}, Dtype::f64));
    l.cs.push_back(randn({B, N}, Dtype::f64));
  }
  return l;
}

// Leaf weights W [I, N] and V [N, I].
std::pair<Tensor, Tensor> make_weights(std::int64_t I, std::int64_t N) {
  return {randn({I, N}, Dtype::f64).requires_grad_(), randn({N, I}, Dtype::f64).requires_grad_()};
}

// L = Σ_t sum(c_t ⊙ (x_t · W)) + Σ_t sum(c_t ⊙ linear(x_t, V)) for W [I, N], V [N, I].
Tensor loop_loss(const Loop& l, const Tensor& w, const Tensor& v) {
  Tensor loss = scalar(0.0, Dtype::f64);
  for (std::size_t t = 0; t < l.xs.size(); ++t) {
    loss = add(loss, sum(mul(matmul(l.xs[t], w), l.cs[t])));
    loss = add(loss, sum(mul(linear(l.xs[t], v), l.cs[t])));
  }
  return loss;
}

// dL/dW = Σ_t x_tᵀ c_t by plain loops ([I, N]); dL/dV is its transpose.
std::vector<double> hand_grad(const Loop& l, std::int64_t I, std::int64_t N) {
  std::vector<double> g(static_cast<std::size_t>(I * N), 0.0);
  for (std::size_t t = 0; t < l.xs.size(); ++t) {
    const std::vector<double> x = l.xs[t].to_vector<double>(), c = l.cs[t].to_vector<double>();
    const std::int64_t B = l.xs[t].size(0);
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t i = 0; i < I; ++i) {
        for (std::int64_t n = 0; n < N; ++n) g[i * N + n] += x[b * I + i] * c[b * N + n];
      }
    }
  }
  return g;
}

void check_grads(const Tensor& w, const Tensor& v, const std::vector<double>& want, std::int64_t I, std::int64_t N,
                 double scale = 1.0) {
  const std::vector<double> gw = w.grad().to_vector<double>(), gv = v.grad().to_vector<double>();
  REQUIRE(gw.size() == want.size());
  REQUIRE(gv.size() == want.size());
  double worst = 0;
  for (std::int64_t i = 0; i < I; ++i) {
    for (std::int64_t n = 0; n < N; ++n) {
      const double e = scale * want[i * N + n];
      worst = std::max(worst, std::abs(gw[i * N + n] - e) / (1 + std::abs(e)));
      worst = std::max(worst, std::abs(gv[n * I + i] - e) / (1 + std::abs(e)));
    }
  }
  CHECK(worst < 1e-12);
}

// Fresh weights, one backward of loop_loss, the gradients against the hand sum.
void backward_matches_hand(const Loop& l, std::int64_t I, std::int64_t N) {
  Tensor w, v;
  std::tie(w, v) = make_weights(I, N);
  loop_loss(l, w, v).backward();
  check_grads(w, v, hand_grad(l, I, N), I, N);
}

}  // namespace

TEST_CASE("weight products: a loop's stacked weight gradients equal the hand sum, for matmul and linear") {
  manual_seed(11);
  // Not a structured binding: clang 14 cannot capture those (CAPTURE, lambdas).
  for (const auto& d : std::vector<std::array<std::int64_t, 4>>{{1, 1, 1, 1}, {7, 3, 4, 5}, {16, 2, 9, 3}}) {
    const std::int64_t T = d[0], B = d[1], I = d[2], N = d[3];
    CAPTURE(T);
    const Loop l = make_loop(T, B, I, N);
    Tensor w, v;
    std::tie(w, v) = make_weights(I, N);
    loop_loss(l, w, v).backward();
    check_grads(w, v, hand_grad(l, I, N), I, N);
    // A second backward adds onto the gradients already there.
    loop_loss(l, w, v).backward();
    check_grads(w, v, hand_grad(l, I, N), I, N, 2.0);
  }
}

TEST_CASE("weight products: stacks past 4 MiB are multiplied out early and the sum stays exact") {
  manual_seed(12);
  // 160 KiB of rows per step and leaf: 60 steps flush each stack twice.
  constexpr std::int64_t T = 60, B = 64, I = 64, N = 256;
  backward_matches_hand(make_loop(T, B, I, N), I, N);
}

TEST_CASE("weight products: a product taller than half a stack is multiplied at once, beside stacked ones") {
  manual_seed(17);
  // 2 KiB per row: a stack holds 2048 rows, so the 1500-row step is not copied.
  constexpr std::int64_t I = 128, N = 128;
  Loop l = make_loop(3, 2, I, N);
  const Loop tall = make_loop(1, 1500, I, N);
  l.xs.insert(l.xs.begin() + 1, tall.xs[0]);
  l.cs.insert(l.cs.begin() + 1, tall.cs[0]);
  backward_matches_hand(l, I, N);
}

TEST_CASE("weight products: backward, xg::grad and an anomaly-checked backward agree") {
  manual_seed(13);
  constexpr std::int64_t T = 9, B = 4, I = 6, N = 5;
  const Loop l = make_loop(T, B, I, N);
  Tensor w, v;
  std::tie(w, v) = make_weights(I, N);
  const std::vector<Tensor> g = xg::grad({loop_loss(l, w, v)}, {w, v});
  {
    DetectAnomalyGuard guard;
    loop_loss(l, w, v).backward();
  }
  const std::vector<double> want = hand_grad(l, I, N);
  check_grads(w, v, want, I, N);
  w.zero_grad();
  v.zero_grad();
  loop_loss(l, w, v).backward();
  check_grads(w, v, want, I, N);
  CHECK(max(abs(sub(g[0], w.grad()))).item() < 1e-12);
  CHECK(max(abs(sub(g[1], v.grad()))).item() < 1e-12);
}

TEST_CASE("weight products: a walk that throws leaves no stacked rows for the next one") {
  manual_seed(14);
  constexpr std::int64_t I = 3, N = 4, B = 2;
  Tensor w = randn({I, N}, Dtype::f64).requires_grad_();
  Tensor p = randn({B, N}, Dtype::f64).requires_grad_();
  Tensor q = randn({B, N}, Dtype::f64);
  const Loop l = make_loop(1, B, I, N);
  // Recorded first, so walked last: the product for w is stacked before this throws.
  Tensor pq = mul(p, q);
  Tensor loss = add(sum(mul(matmul(l.xs[0], w), l.cs[0])), sum(pq));
  q.data<double>()[0] += 1.0;  // a saved value written in place
  CHECK_THROWS_AS(loss.backward(), StateError);
  w.zero_grad();
  Tensor loss2 = sum(mul(matmul(l.xs[0], w), l.cs[0]));
  loss2.backward();
  const std::vector<double> want = hand_grad(l, I, N);
  const std::vector<double> got = w.grad().to_vector<double>();
  for (std::size_t k = 0; k < want.size(); ++k) CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-12));
}

TEST_CASE("weight products: a T = 64 loop's backward asks for O(T) rows, not T weight-sized tensors") {
  manual_seed(15);
  constexpr std::int64_t T = 64, B = 2, H = 128;
  const std::int64_t w_bytes = H * H * 4;  // 64 KiB
  Tensor w = randn({H, H}).requires_grad_();
  Tensor h = randn({B, H});
  for (std::int64_t t = 0; t < T; ++t) h = tanh(matmul(h, w));
  Tensor loss = sum(h);
  reset_memory_stats();
  loss.backward();
  const MemoryStats s = memory_stats();
  INFO("backward requested " << s.requested_bytes << " bytes; W is " << w_bytes);
  // Per step: the step-sized gradients and rows (a few KiB); once: the stacks (doubling)
  // and one product. A weight-sized product per step would be T * w_bytes = 4 MiB.
  CHECK(s.requested_bytes < T * w_bytes / 4);
  CHECK(w.grad().shape() == Shape{H, H});
}

TEST_CASE("weight products: a leaf reached by products and by other ops sums both, in backward and xg::grad") {
  manual_seed(16);
  constexpr std::int64_t T = 5, B = 3, I = 4, N = 2;
  const Loop l = make_loop(T, B, I, N);
  Tensor w, v;
  std::tie(w, v) = make_weights(I, N);
  // + sum(w ⊙ w) + sum(v ⊙ v): 2w and 2v on top of the products' sums.
  auto loss = [&] { return add(loop_loss(l, w, v), add(sum(mul(w, w)), sum(mul(v, v)))); };
  const std::vector<Tensor> g = xg::grad({loss()}, {v, w});
  loss().backward();
  const std::vector<double> prod = hand_grad(l, I, N);
  const std::vector<double> wv = w.to_vector<double>(), vv = v.to_vector<double>();
  const std::vector<double> gw = w.grad().to_vector<double>(), gv = v.grad().to_vector<double>();
  const std::vector<double> xw = g[1].to_vector<double>(), xv = g[0].to_vector<double>();
  for (std::int64_t i = 0; i < I; ++i) {
    for (std::int64_t n = 0; n < N; ++n) {
      const double ew = prod[i * N + n] + 2 * wv[i * N + n], ev = prod[i * N + n] + 2 * vv[n * I + i];
      CHECK(gw[i * N + n] == doctest::Approx(ew).epsilon(1e-12));
      CHECK(xw[i * N + n] == doctest::Approx(ew).epsilon(1e-12));
      CHECK(gv[n * I + i] == doctest::Approx(ev).epsilon(1e-12));
      CHECK(xv[n * I + i] == doctest::Approx(ev).epsilon(1e-12));
    }
  }
}

TEST_CASE("weight products: a set_product of the wrong shape or rank is a StateError naming the op") {
  Tensor w = randn({3, 4}, Dtype::f64).requires_grad_();
  const Tensor x = randn({2, 3}, Dtype::f64);
  // lhs [K, M], rhs [K, N] must give w's [3, 4]; each case breaks one rule.
  const std::vector<std::pair<Shape, Shape>> bad{
      {Shape{2, 4}, Shape{2, 4}}, {Shape{2, 3}, Shape{2, 5}}, {Shape{2, 3}, Shape{5, 4}}, {Shape{6}, Shape{2, 4}}};
  for (const auto& pair : bad) {
    const Shape ls = pair.first, rs = pair.second;
    CAPTURE(ls.str());
    CAPTURE(rs.str());
    Tensor y = matmul(x, w.detach());
    record("bad_product", y, {&w}, [ls, rs](const Tensor&, GradSlots& dx) {
      dx.set_product(0, zeros(ls, Dtype::f64), zeros(rs, Dtype::f64));
    });
    try {
      sum(y).backward();
      FAIL("no error");
    } catch (const StateError& e) {
      const std::string m = e.what();
      CHECK(m.find("bad_product") != std::string::npos);
      CHECK((m.find(ls.str()) != std::string::npos || m.find("[3,4]") != std::string::npos));
    }
    CHECK(!w.grad().defined());
  }
}

TEST_CASE("weight products: many weights together stay within the stacks' total budget, and exact") {
  manual_seed(18);
  // 12 weights, 64 KiB of rows per step each, 40 steps: 2.5 MiB a stack (under the 4 MiB
  // of one stack) and 30 MiB in all (over the 16 MiB budget).
  constexpr std::int64_t T = 40, B = 64, I = 64, N = 64, L = 12;
  const Loop l = make_loop(T, B, I, N);
  std::vector<Tensor> ws;
  for (std::int64_t k = 0; k < L; ++k) ws.push_back(randn({I, N}, Dtype::f64).requires_grad_());
  Tensor loss = scalar(0.0, Dtype::f64);
  for (std::int64_t t = 0; t < T; ++t) {
    for (const Tensor& w : ws) loss = add(loss, sum(mul(matmul(l.xs[t], w), l.cs[t])));
  }
  reset_memory_stats();
  const std::int64_t before = memory_stats().allocated_bytes;
  loss.backward();
  const MemoryStats s = memory_stats();
  INFO("peak during backward " << (s.peak_allocated_bytes - before) << " bytes");
  CHECK(s.peak_allocated_bytes - before < (std::int64_t{40} << 20));
  const std::vector<double> want = hand_grad(l, I, N);
  for (const Tensor& w : ws) {
    const std::vector<double> got = w.grad().to_vector<double>();
    double worst = 0;
    for (std::size_t k = 0; k < want.size(); ++k) worst = std::max(worst, std::abs(got[k] - want[k]) / (1 + std::abs(want[k])));
    CHECK(worst < 1e-12);
  }
}
