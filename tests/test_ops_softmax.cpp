// softmax, log_softmax: values against hand-written double loops along every dim,
// definitions tying them to logsumexp and each other, float64 gradchecks over several
// shapes and dims, extreme inputs, and every bad input.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "softmax_reference.hpp"

using xgtest::error_of;
using xgtest::has;

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;
using xgtest::ref_softmax;
using xgtest::split_at;
using xgtest::Split;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(sum(exp(x))) along dim for every lane, the textbook way (max subtracted).
std::vector<double> ref_lse(const std::vector<double>& x, const Shape& s, int dim) {
  const Split p = split_at(s, dim);
  std::vector<double> out(static_cast<std::size_t>(p.outer * p.inner));
  for (std::int64_t o = 0; o < p.outer; ++o) {
    for (std::int64_t i = 0; i < p.inner; ++i) {
      double m = -kInf;
      for (std::int64_t j = 0; j < p.d; ++j) m = std::max(m, x[(o * p.d + j) * p.inner + i]);
      double acc = 0.0;
      for (std::int64_t j = 0; j < p.d; ++j) acc += std::exp(x[(o * p.d + j) * p.inner + i] - m);
      out[o * p.inner + i] = m + std::log(acc);
    }
  }
  return out;
}

std::vector<double> ref_log_softmax(const std::vector<double>& x, const Shape& s, int dim) {
  const Split p = split_at(s, dim);
  const std::vector<double> lse = ref_lse(x, s, dim);
  std::vector<double> out(x.size());
  for (std::int64_t o = 0; o < p.outer; ++o)
    for (std::int64_t j = 0; j < p.d; ++j)
      for (std::int64_t i = 0; i < p.inner; ++i) {
        const std::int64_t k = (o * p.d + j) * p.inner + i;
        out[k] = x[k] - lse[o * p.inner + i];
      }
  return out;
}

Tensor targets(const std::vector<std::int64_t>& t) { return from_vector(t); }

struct ShapeDim {
  Shape shape;
  int dim;
};

const std::vector<ShapeDim> kSoftmaxCases = {
    {{5}, 0},
    {{5}, -1},
    {{3, 4}, 0},
    {{3, 4}, 1},
    {{3, 4}, -1},
    {{2, 3, 4}, 0},
    {{2, 3, 4}, 1},
    {{2, 3, 4}, 2},
    {{2, 3, 4}, -2},
    {{1, 4}, 0},
    {{1, 4}, 1},
    {{3, 1}, 1},
    {{3, 1}, 0},
    {{2, 1, 3}, 1},
    {{}, 0},
    // Rows longer than one SIMD batch and not a multiple of it (8 doubles, 16 floats with
    // AVX-512): the kernels' overlapping last batch.
    {{4, 37}, 1},
    {{37, 3}, 0},
    {{2, 3, 20}, 1},
    {{3, 16}, 1},
    {{2, 8}, 1},
};

}  // namespace

// =========================================================================================
// softmax / log_softmax: values
// =========================================================================================

TEST_CASE("softmax and log_softmax match double reference loops along every dim (f64 and f32)") {
  for (const auto& [s, dim] : kSoftmaxCases) {
    INFO("shape " << s.str() << " dim " << dim);
    const Tensor x = rnd(s, -3.0, 3.0, 11);
    const std::vector<double> xv = x.to_vector<double>();
    check_values(softmax(x, dim), ref_softmax(xv, s, dim), 1e-13, 1e-12);
    check_values(log_softmax(x, dim), ref_log_softmax(xv, s, dim), 1e-13, 1e-12);

    const Tensor xf = x.to(f32);
    const std::vector<double> xfv = xf.to_vector<double>();
    const Tensor sf = softmax(xf, dim);
    const Tensor lf = log_softmax(xf, dim);
    CHECK(sf.dtype() == f32);
    CHECK(lf.dtype() == f32);
    CHECK(sf.shape() == s);
    check_values(sf, ref_softmax(xfv, s, dim), 1e-6, 1e-5);
    check_values(lf, ref_log_softmax(xfv, s, dim), 2e-6, 1e-5);
  }
}

TEST_CASE("softmax of hand-picked numbers") {
  // softmax([0, ln 2, ln 5]) = [1, 2, 5] / 8
  const Tensor x = from_vector(std::vector<double>{0.0, std::log(2.0), std::log(5.0)});
  check_values(softmax(x, 0), {1.0 / 8, 2.0 / 8, 5.0 / 8}, 1e-15, 1e-14);
  check_values(log_softmax(x, -1), {std::log(1.0 / 8), std::log(2.0 / 8), std::log(5.0 / 8)}, 1e-15, 1e-14);
  // A 0-d tensor is a one-element row.
  check_values(softmax(scalar(3.5, f64), 0), {1.0});
  check_values(log_softmax(scalar(3.5, f64), -1), {0.0});
}

TEST_CASE("definition of softmax: rows sum to 1, shift invariance, exp(log_softmax) == softmax") {
  for (const auto& [s, dim] : kSoftmaxCases) {
    INFO("shape " << s.str() << " dim " << dim);
    const Tensor x = rnd(s, -4.0, 4.0, 5);
    const Tensor y = softmax(x, dim);
    const std::vector<double> yv = y.to_vector<double>();
    const Split p = split_at(s, dim);
    for (std::int64_t o = 0; o < p.outer; ++o)
      for (std::int64_t i = 0; i < p.inner; ++i) {
        double acc = 0.0;
        for (std::int64_t j = 0; j < p.d; ++j) acc += yv[(o * p.d + j) * p.inner + i];
        CHECK(std::fabs(acc - 1.0) < 1e-14);
      }
    check_close(softmax(add(x, 100.0), dim), y, 1e-13, 1e-12);
    std::vector<double> e = log_softmax(x, dim).to_vector<double>();
    for (double& v : e) v = std::exp(v);
    check_values(y, e, 1e-15, 1e-13);
  }
}

TEST_CASE("definition of log_softmax: x - logsumexp(x, dim, keepdim); softmax: exp of that") {
  // Values; the gradients are checked against the hand-derived formulas and by gradcheck.
  for (const auto& [s, dim] : kSoftmaxCases) {
    if (s.size() == 0) continue;
    INFO("shape " << s.str() << " dim " << dim);
    const Tensor x = rnd(s, -4.0, 4.0, 17);
    const Tensor lse = logsumexp(x, {dim}, true);
    check_close(log_softmax(x, dim), sub(x, lse), 1e-13, 1e-12);
    check_close(softmax(x, dim), exp(sub(x, lse)), 1e-14, 1e-12);
  }
}

TEST_CASE("log_softmax and softmax are finite at logits of +-1000 and +-1e4 (f64 and f32)") {
  const double c1 = std::log1p(std::exp(-1.0));  // log(1 + e^-1)
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    const double tol = dt == f64 ? 1e-12 : 1e-6;
    const Tensor a = from_vector({1000.0, 0.0, -1000.0}, {3}, dt);
    check_values(log_softmax(a, 0), {0.0, -1000.0, -2000.0}, tol, tol);
    check_values(softmax(a, 0), {1.0, 0.0, 0.0}, tol, tol);
    const Tensor b = from_vector({1e4, 1e4 - 1.0, -1e4}, {3}, dt);
    check_values(log_softmax(b, 0), {-c1, -1.0 - c1, -2e4 - c1}, tol, tol);
    const Tensor same = from_vector({-1e4, -1e4, -1e4, -1e4}, {4}, dt);
    check_values(softmax(same, 0), {0.25, 0.25, 0.25, 0.25}, tol, tol);
    check_values(log_softmax(same, 0), std::vector<double>(4, -std::log(4.0)), tol, tol);

    // The largest logit in the last, partial SIMD batch of a long row.
    std::vector<double> big(37, 0.0), want_big(37, -1e4);
    big[36] = 1e4;
    want_big[36] = 0.0;
    check_values(log_softmax(from_vector(big, {37}, dt), 0), want_big, tol, tol);
    check_values(cross_entropy(from_vector(big, {1, 37}, dt), targets({0})), {1e4}, tol, tol);

    // The same extremes on the strided path (softmax over dim 0 of a [3, 2]).
    const Tensor m = from_vector({1000.0, 1e4, 0.0, 1e4 - 1.0, -1000.0, -1e4}, {3, 2}, dt);
    check_values(log_softmax(m, 0), {0.0, -c1, -1000.0, -1.0 - c1, -2000.0, -2e4 - c1}, tol, tol);

    // The gradient there is finite too.
    for (int dim : {0, 1}) {
      Tensor x = from_vector({1000.0, -1e4, 0.0, 1e4, -1000.0, 1e4 - 1.0}, {3, 2}, dt).requires_grad_();
      Tensor w = from_vector({0.3, -1.2, 0.7, 2.0, -0.5, 1.1}, {3, 2}, dt);
      sum(mul(log_softmax(x, dim), w)).backward();
      for (double g : x.grad().to_vector<double>()) CHECK(std::isfinite(g));
      x.zero_grad();
      sum(mul(softmax(x, dim), w)).backward();
      for (double g : x.grad().to_vector<double>()) CHECK(std::isfinite(g));
    }
  }
}

TEST_CASE("softmax with -inf entries (attention masks) gives exact zeros there") {
  const Tensor x = from_vector(std::vector<double>{0.0, -kInf, 0.0, -kInf});
  check_values(softmax(x, 0), {0.5, 0.0, 0.5, 0.0});
  check_values(log_softmax(x, 0), {-std::log(2.0), -kInf, -std::log(2.0), -kInf});
}

TEST_CASE("softmax and log_softmax of empty tensors are empty") {
  for (const Shape& s : {Shape{0}, Shape{0, 3}, Shape{3, 0}, Shape{2, 0, 3}}) {
    for (int dim = 0; dim < s.size(); ++dim) {
      INFO("shape " << s.str() << " dim " << dim);
      Tensor x = zeros(s, f64).requires_grad_();
      Tensor y = log_softmax(x, dim);
      CHECK(y.shape() == s);
      CHECK(softmax(x, dim).shape() == s);
      sum(y).backward();
      CHECK(x.grad().shape() == s);
    }
  }
}

TEST_CASE("softmax: bad input") {
  const Tensor x = rnd({3, 4});
  std::string m = error_of<IndexError>([&] { softmax(x, 2); });
  CHECK(has(m, "softmax"));
  CHECK(has(m, "dim 2"));
  m = error_of<IndexError>([&] { log_softmax(x, -3); });
  CHECK(has(m, "log_softmax"));
  m = error_of<DtypeError>([&] { softmax(targets({1, 2}), 0); });
  CHECK(has(m, "softmax"));
  m = error_of<StateError>([&] { log_softmax(Tensor(), 0); });
  CHECK(has(m, "log_softmax"));
}

// =========================================================================================
// softmax / log_softmax: gradients
// =========================================================================================

TEST_CASE("gradcheck softmax and log_softmax over shapes and dims") {
  // clang-format off
  const std::vector<ShapeDim> cases = {
      {{5}, 0}, {{5}, -1}, {{3, 4}, 0}, {{3, 4}, 1}, {{3, 4}, -1},
      {{2, 3, 4}, 1}, {{2, 3, 4}, 0}, {{2, 3, 4}, 2},
      {{1, 4}, 1}, {{3, 1}, 1}, {{2, 1, 3}, 1}, {{}, 0},
      {{2, 19}, 1}, {{2, 4, 19}, 1},  // longer than a SIMD batch, with a tail
  };
  // clang-format on
  for (const auto& [s, dim] : cases) {
    INFO("shape " << s.str() << " dim " << dim);
    const Tensor x = rnd(s, -2.0, 2.0, 3);
    gradcheck_ok([dim = dim](const std::vector<Tensor>& in) { return softmax(in[0], dim); }, {x});
    gradcheck_ok([dim = dim](const std::vector<Tensor>& in) { return log_softmax(in[0], dim); }, {x});
  }
}

TEST_CASE("softmax backward equals y * (g - sum(g * y)) by hand") {
  const Tensor x0 = rnd({2, 3}, -1.0, 1.0, 21);
  const std::vector<double> g{0.5, -1.0, 2.0, 1.5, 0.25, -0.75};
  const std::vector<double> y = ref_softmax(x0.to_vector<double>(), {2, 3}, 1);
  std::vector<double> want(6);
  for (int r = 0; r < 2; ++r) {
    double s = 0.0;
    for (int j = 0; j < 3; ++j) s += g[r * 3 + j] * y[r * 3 + j];
    for (int j = 0; j < 3; ++j) want[r * 3 + j] = y[r * 3 + j] * (g[r * 3 + j] - s);
  }
  Tensor x = x0.clone().requires_grad_();
  softmax(x, 1).backward(from_vector(g, {2, 3}));
  check_values(x.grad(), want, 1e-14, 1e-12);

  // log_softmax: g - softmax * sum(g)
  for (int r = 0; r < 2; ++r) {
    const double s = g[r * 3] + g[r * 3 + 1] + g[r * 3 + 2];
    for (int j = 0; j < 3; ++j) want[r * 3 + j] = g[r * 3 + j] - y[r * 3 + j] * s;
  }
  x.zero_grad();
  log_softmax(x, 1).backward(from_vector(g, {2, 3}));
  check_values(x.grad(), want, 1e-14, 1e-12);
}

