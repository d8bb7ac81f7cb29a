// softmax, log_softmax, cross_entropy, nll_loss, mse_loss, dropout: values against
// hand-written double loops, the fused ops against their composed versions, float64
// gradchecks over several shapes, extreme and NaN inputs, and every bad input.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "helpers.hpp"

using xgtest::error_of;
using xgtest::has;

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- independent references (double, std::exp / std::log) ----------------------------

struct Split {
  std::int64_t outer = 1, d = 1, inner = 1;
};

Split split_at(const Shape& s, int dim) {
  Split r;
  if (s.size() == 0) return r;
  if (dim < 0) dim += s.size();
  for (int i = 0; i < dim; ++i) r.outer *= s[i];
  r.d = s[dim];
  for (int i = dim + 1; i < s.size(); ++i) r.inner *= s[i];
  return r;
}

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

// exp(x) / sum(exp(x)), without going through the log.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& s, int dim) {
  const Split p = split_at(s, dim);
  std::vector<double> out(x.size());
  for (std::int64_t o = 0; o < p.outer; ++o)
    for (std::int64_t i = 0; i < p.inner; ++i) {
      double m = -kInf;
      for (std::int64_t j = 0; j < p.d; ++j) m = std::max(m, x[(o * p.d + j) * p.inner + i]);
      double acc = 0.0;
      for (std::int64_t j = 0; j < p.d; ++j) acc += std::exp(x[(o * p.d + j) * p.inner + i] - m);
      for (std::int64_t j = 0; j < p.d; ++j) {
        const std::int64_t k = (o * p.d + j) * p.inner + i;
        out[k] = std::exp(x[k] - m) / acc;
      }
    }
  return out;
}

// Per-row -log softmax(x)[t] for logits [n, c]; 0 for ignored rows.
std::vector<double> ref_ce_rows(const std::vector<double>& x, std::int64_t n, std::int64_t c,
                                const std::vector<std::int64_t>& t, std::int64_t ignore = -100) {
  std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    if (t[i] == ignore) continue;
    double acc = 0.0;
    for (std::int64_t j = 0; j < c; ++j) acc += std::exp(x[i * c + j]);
    rows[i] = std::log(acc) - x[i * c + t[i]];
  }
  return rows;
}

double total(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

Tensor targets(const std::vector<std::int64_t>& t) { return from_vector(t); }

// The message of the E that f throws ("" and a failed check when it throws nothing or
// something else).
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

// =========================================================================================
// cross_entropy
// =========================================================================================

TEST_CASE("cross_entropy equals the mean of -log softmax picked by hand, for each reduction") {
  const Tensor x = rnd({4, 5}, -2.0, 2.0, 31);
  const std::vector<std::int64_t> t{1, 0, 4, 2};
  const std::vector<double> rows = ref_ce_rows(x.to_vector<double>(), 4, 5, t);
  const Tensor tt = targets(t);
  const Tensor mean_loss = cross_entropy(x, tt);
  CHECK(mean_loss.shape() == Shape{});
  check_values(mean_loss, {total(rows) / 4}, 1e-14, 1e-13);
  check_values(cross_entropy(x, tt, {.reduction = Reduction::sum}), {total(rows)}, 1e-14, 1e-13);
  const Tensor none = cross_entropy(x, tt, {.reduction = Reduction::none});
  CHECK(none.shape() == Shape{4});
  check_values(none, rows, 1e-14, 1e-13);

  // Uniform logits over C classes: loss log C exactly.
  check_values(cross_entropy(zeros({3, 7}, f64), targets({0, 3, 6})), {std::log(7.0)}, 1e-15, 1e-14);
}

TEST_CASE("cross_entropy in float32 on a language-model-sized batch matches the double reference") {
  const std::int64_t n = 64, c = 100;
  const Tensor x = rnd({n, c}, -8.0, 8.0, 41).to(f32);
  Generator gen(3);
  const Tensor t = randint(0, c, {n}, &gen);
  const std::vector<double> rows = ref_ce_rows(x.to_vector<double>(), n, c, t.to_vector<std::int64_t>());
  const Tensor loss = cross_entropy(x, t);
  CHECK(loss.dtype() == f32);
  check_values(loss, {total(rows) / n}, 1e-6, 1e-6);
  check_values(cross_entropy(x, t, {.reduction = Reduction::none}), rows, 1e-5, 1e-5);
}

TEST_CASE("cross_entropy backward is (softmax - onehot) / N, by hand") {
  const Tensor x0 = rnd({3, 4}, -1.0, 1.0, 51);
  const std::vector<std::int64_t> t{3, 0, 1};
  const std::vector<double> p = ref_softmax(x0.to_vector<double>(), {3, 4}, 1);
  std::vector<double> want(12);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) want[i * 4 + j] = (p[i * 4 + j] - (j == t[i] ? 1.0 : 0.0)) / 3.0;
  Tensor x = x0.clone().requires_grad_();
  cross_entropy(x, targets(t)).backward();
  check_values(x.grad(), want, 1e-15, 1e-13);
}

TEST_CASE("fused cross_entropy agrees with nll_loss(log_softmax(x, 1)) in value and gradient") {
  struct Case {
    Shape shape;
    std::vector<std::int64_t> t;
    std::int64_t ignore;
  };
  // clang-format off
  const std::vector<Case> cases = {
      {{4, 5}, {1, 0, 4, 2}, -100},
      {{4, 5}, {1, -100, 4, -100}, -100},
      {{5, 3}, {2, 0, 0, 1, 0}, 0},             // ignore_index 0 as a padding class
      {{1, 3}, {2}, -100},
      {{5, 37}, {36, 0, -100, 17, 20}, -100},  // rows longer than a SIMD batch
  };
  // clang-format on
  for (Dtype dt : {f64, f32}) {
    const double tol = dt == f64 ? 1e-14 : 1e-6;
    for (const Case& c : cases) {
      for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
        INFO(dtype_name(dt) << " shape " << c.shape.str() << " reduction " << static_cast<int>(r));
        const CrossEntropyOptions o{.ignore_index = c.ignore, .reduction = r};
        const Tensor tt = targets(c.t);
        Tensor x1 = rnd(c.shape, -2.0, 2.0, 61).to(dt).requires_grad_();
        Tensor x2 = x1.detach().clone().requires_grad_();
        const Tensor fused = cross_entropy(x1, tt, o);
        const Tensor composed = nll_loss(log_softmax(x2, 1), tt, o);
        check_close(fused, composed, tol, tol);
        // Asymmetric weights for the per-row losses.
        const Tensor w = r == Reduction::none ? rnd({c.shape[0]}, 0.5, 1.5, 7).to(dt) : scalar(1.7, dt);
        sum(mul(fused, w)).backward();
        sum(mul(composed, w)).backward();
        check_close(x1.grad(), x2.grad(), tol, tol);
      }
    }
  }
}

TEST_CASE("cross_entropy is one tape node") {
  Tensor x = rnd({4, 5}).requires_grad_();
  const std::size_t before = tape_size();
  const Tensor loss = cross_entropy(x, targets({1, 2, 3, 4}));
  CHECK(tape_size() == before + 1);
  CHECK(loss.op_name() == "cross_entropy");
}

TEST_CASE("cross_entropy ignore_index excludes rows and changes the mean's denominator") {
  const Tensor x = rnd({5, 4}, -2.0, 2.0, 71);
  const std::vector<double> xv = x.to_vector<double>();
  // Default ignore_index -100.
  {
    const std::vector<std::int64_t> t{1, -100, 3, -100, 0};
    const std::vector<double> rows = ref_ce_rows(xv, 5, 4, t);
    CHECK(rows[1] == 0.0);
    check_values(cross_entropy(x, targets(t)), {total(rows) / 3}, 1e-14, 1e-13);
    check_values(cross_entropy(x, targets(t), {.reduction = Reduction::sum}), {total(rows)}, 1e-14, 1e-13);
    check_values(cross_entropy(x, targets(t), {.reduction = Reduction::none}), rows, 1e-14, 1e-13);
  }
  // A custom ignore_index that is also a valid class id (padding token 2).
  {
    const std::vector<std::int64_t> t{2, 1, 2, 3, 0};
    const std::vector<double> rows = ref_ce_rows(xv, 5, 4, t, 2);
    const CrossEntropyOptions o{.ignore_index = 2};
    check_values(cross_entropy(x, targets(t), o), {total(rows) / 3}, 1e-14, 1e-13);
    // Ignored rows get zero gradient; the others are (p - onehot) / 3.
    Tensor xg = x.clone().requires_grad_();
    cross_entropy(xg, targets(t), o).backward();
    const std::vector<double> p = ref_softmax(xv, {5, 4}, 1);
    std::vector<double> want(20, 0.0);
    for (int i = 0; i < 5; ++i) {
      if (t[i] == 2) continue;
      for (int j = 0; j < 4; ++j) want[i * 4 + j] = (p[i * 4 + j] - (j == t[i] ? 1.0 : 0.0)) / 3.0;
    }
    check_values(xg.grad(), want, 1e-15, 1e-13);
  }
}

TEST_CASE("cross_entropy with every target ignored: mean is NaN like PyTorch, sum is 0, gradient 0") {
  Tensor x = rnd({3, 4}).requires_grad_();
  const Tensor t = targets({-100, -100, -100});
  const Tensor mean_loss = cross_entropy(x, t);
  CHECK(std::isnan(mean_loss.item()));
  check_values(cross_entropy(x, t, {.reduction = Reduction::sum}), {0.0});
  check_values(cross_entropy(x, t, {.reduction = Reduction::none}), {0.0, 0.0, 0.0});
  mean_loss.backward();
  check_values(x.grad(), std::vector<double>(12, 0.0));
}

TEST_CASE("cross_entropy on one sample: logits [C] with a 0-d target") {
  const Tensor x = rnd({5}, -2.0, 2.0, 81);
  const Tensor t = from_vector(std::vector<std::int64_t>{3}, Shape{});
  const std::vector<double> rows = ref_ce_rows(x.to_vector<double>(), 1, 5, {3});
  check_values(cross_entropy(x, t), rows, 1e-14, 1e-13);
  const Tensor none = cross_entropy(x, t, {.reduction = Reduction::none});
  CHECK(none.shape() == Shape{});
  check_values(none, rows, 1e-14, 1e-13);
  check_close(cross_entropy(x, t), nll_loss(log_softmax(x, 0), t), 1e-14, 1e-14);
}

TEST_CASE("cross_entropy on an empty batch (N = 0): mean is NaN like PyTorch, sum 0, none []") {
  Tensor x = zeros({0, 5}, f64).requires_grad_();
  const Tensor t = from_vector(std::vector<std::int64_t>{}, Shape{0});
  const Tensor m = cross_entropy(x, t);
  CHECK(std::isnan(m.item()));
  check_values(cross_entropy(x, t, {.reduction = Reduction::sum}), {0.0});
  CHECK(cross_entropy(x, t, {.reduction = Reduction::none}).shape() == Shape{0});
  cross_entropy(x, t, {.reduction = Reduction::sum}).backward();
  CHECK(x.grad().shape() == Shape{0, 5});
  // No classes: every non-ignored target is out of range.
  const Tensor no_classes = zeros({2, 0}, f64);
  CHECK(has(error_of<IndexError>([&] { cross_entropy(no_classes, targets({0, -100})); }), "C = 0"));
  check_values(cross_entropy(no_classes, targets({-100, -100}), {.reduction = Reduction::sum}), {0.0});
}

TEST_CASE("cross_entropy with a NaN logit gives a NaN loss, no crash") {
  Tensor x = rnd({3, 4}, -1.0, 1.0, 91).clone();
  x.data<double>()[5] = std::nan("");  // row 1
  x.requires_grad_();
  const Tensor t = targets({0, 2, 3});
  const Tensor loss = cross_entropy(x, t);
  CHECK(std::isnan(loss.item()));
  loss.backward();
  const std::vector<double> g = x.grad().to_vector<double>();
  for (int j = 0; j < 4; ++j) CHECK(std::isfinite(g[j]));  // row 0 untouched
  const std::vector<double> rows = cross_entropy(x, t, {.reduction = Reduction::none}).to_vector<double>();
  CHECK(std::isfinite(rows[0]));
  CHECK(std::isnan(rows[1]));
  CHECK(std::isfinite(rows[2]));
  // An ignored row's NaN does not reach the loss.
  CHECK(std::isfinite(cross_entropy(x, targets({0, -100, 3})).item()));
  // Nor does a NaN in a float32 run.
  CHECK(std::isnan(cross_entropy(x.detach().to(f32), t).item()));
}

TEST_CASE("cross_entropy under NoGradGuard records nothing") {
  Tensor x = rnd({2, 3}).requires_grad_();
  const std::size_t before = tape_size();
  NoGradGuard ng;
  const Tensor loss = cross_entropy(x, targets({0, 2}));
  CHECK_FALSE(loss.requires_grad());
  CHECK(tape_size() == before);
}

TEST_CASE("gradcheck cross_entropy: shapes, 0-d target, ignored rows, each reduction") {
  struct Case {
    Shape shape;
    Tensor t;
    std::int64_t ignore;
  };
  const std::vector<Case> cases = {
      {{1, 3}, targets({2}), -100},
      {{4, 5}, targets({1, 0, 4, 2}), -100},
      {{4, 5}, targets({1, -100, 4, 3}), -100},
      {{6, 4}, targets({3, 1, 1, 0, 3, 2}), 1},
      {{5}, from_vector(std::vector<std::int64_t>{4}, Shape{}), -100},
      {{3, 1}, targets({0, 0, -100}), -100},
      {{3, 19}, targets({18, 0, 9}), -100},
  };
  for (const Case& c : cases) {
    for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
      INFO("shape " << c.shape.str() << " reduction " << static_cast<int>(r));
      const CrossEntropyOptions o{.ignore_index = c.ignore, .reduction = r};
      gradcheck_ok([o](const std::vector<Tensor>& in) { return cross_entropy(in[0], in[1], o); },
                   {rnd(c.shape, -2.0, 2.0, 13), c.t});
    }
  }
}

TEST_CASE("cross_entropy: bad input") {
  const Tensor x = rnd({4, 5});
  std::string m;
  SUBCASE("target not int64") {
    m = error_of<DtypeError>([&] { cross_entropy(x, rnd({4})); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "int64"));
  }
  SUBCASE("logits not floating") {
    m = error_of<DtypeError>([&] { cross_entropy(targets({1, 2}), targets({0})); });
    CHECK(has(m, "cross_entropy"));
  }
  SUBCASE("target out of range, above") {
    m = error_of<IndexError>([&] { cross_entropy(x, targets({1, 5, 0, 0})); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "target 5"));
    CHECK(has(m, "C = 5"));
  }
  SUBCASE("negative target that is not ignore_index") {
    m = error_of<IndexError>([&] { cross_entropy(x, targets({1, 2, -1, 0})); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "target -1"));
    CHECK(has(m, "C = 5"));
    m = error_of<IndexError>([&] { cross_entropy(x, targets({-100, 2, 0, 0}), {.ignore_index = -1}); });
    CHECK(has(m, "target -100"));
  }
  SUBCASE("target batch differs from logits batch") {
    m = error_of<ShapeError>([&] { cross_entropy(x, targets({1, 2, 3})); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "[4,5]"));
    CHECK(has(m, "[3]"));
    m = error_of<ShapeError>([&] { cross_entropy(x, from_vector(std::vector<std::int64_t>{1, 2, 3, 4}, {4, 1})); });
    CHECK(has(m, "[4,1]"));
    m = error_of<ShapeError>([&] { cross_entropy(rnd({5}), targets({1})); });
    CHECK(has(m, "[5]"));
    CHECK(has(m, "0-d"));
  }
  SUBCASE("3-D logits: the message says how to reshape") {
    m = error_of<ShapeError>([&] { cross_entropy(rnd({2, 3, 5}), targets({0, 1, 2, 3, 4, 0})); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "[2,3,5]"));
    CHECK(has(m, "[B*T,V]"));
  }
  SUBCASE("0-d logits") {
    m = error_of<ShapeError>([&] { cross_entropy(scalar(1.0), from_vector(std::vector<std::int64_t>{0}, Shape{})); });
    CHECK(has(m, "cross_entropy"));
  }
  SUBCASE("undefined tensors") {
    m = error_of<StateError>([&] { cross_entropy(Tensor(), targets({0})); });
    CHECK(has(m, "cross_entropy"));
    m = error_of<StateError>([&] { cross_entropy(x, Tensor()); });
    CHECK(has(m, "cross_entropy"));
  }
}

// =========================================================================================
// nll_loss
// =========================================================================================

TEST_CASE("nll_loss picks -log_probs[n, target[n]], with ignore_index and each reduction") {
  const Tensor lp = from_vector(std::vector<double>{-0.1, -2.0, -3.0, -1.5, -0.5, -4.0}, {2, 3});
  check_values(nll_loss(lp, targets({0, 2})), {(0.1 + 4.0) / 2}, 1e-15, 1e-14);
  check_values(nll_loss(lp, targets({1, 1}), {.reduction = Reduction::sum}), {2.0 + 0.5}, 1e-15, 1e-14);
  check_values(nll_loss(lp, targets({2, 0}), {.reduction = Reduction::none}), {3.0, 1.5}, 1e-15, 1e-14);
  check_values(nll_loss(lp, targets({-100, 1})), {0.5}, 1e-15, 1e-14);
  check_values(nll_loss(lp, targets({0, 1}), {.ignore_index = 0}), {0.5}, 1e-15, 1e-14);
  CHECK(std::isnan(nll_loss(lp, targets({-100, -100})).item()));
  // One sample: [C] with a 0-d target.
  check_values(
      nll_loss(from_vector(std::vector<double>{-1.0, -2.0}), from_vector(std::vector<std::int64_t>{1}, Shape{})),
      {2.0});
}

TEST_CASE("nll_loss backward puts -g (/ count) at the targets") {
  Tensor lp = rnd({3, 4}).requires_grad_();
  nll_loss(lp, targets({2, -100, 0})).backward();
  check_values(lp.grad(), {0, 0, -0.5, 0, 0, 0, 0, 0, -0.5, 0, 0, 0});
}

TEST_CASE("gradcheck nll_loss") {
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    INFO("reduction " << static_cast<int>(r));
    const CrossEntropyOptions o{.reduction = r};
    gradcheck_ok([o](const std::vector<Tensor>& in) { return nll_loss(in[0], in[1], o); },
                 {rnd({4, 3}, -3.0, -0.1), targets({2, -100, 0, 1})});
    gradcheck_ok([o](const std::vector<Tensor>& in) { return nll_loss(in[0], in[1], o); },
                 {rnd({3}, -3.0, -0.1), from_vector(std::vector<std::int64_t>{1}, Shape{})});
    // Through log_softmax: the composed cross-entropy.
    gradcheck_ok([o](const std::vector<Tensor>& in) { return nll_loss(log_softmax(in[0], 1), in[1], o); },
                 {rnd({4, 5}, -2.0, 2.0), targets({4, 0, -100, 2})});
  }
}

TEST_CASE("nll_loss: bad input") {
  const Tensor lp = rnd({2, 3});
  std::string m = error_of<DtypeError>([&] { nll_loss(lp, rnd({2})); });
  CHECK(has(m, "nll_loss"));
  m = error_of<IndexError>([&] { nll_loss(lp, targets({3, 0})); });
  CHECK(has(m, "nll_loss"));
  CHECK(has(m, "target 3"));
  CHECK(has(m, "C = 3"));
  m = error_of<ShapeError>([&] { nll_loss(lp, targets({0})); });
  CHECK(has(m, "nll_loss"));
  CHECK(has(m, "[2,3]"));
  CHECK(has(m, "[1]"));
  m = error_of<ShapeError>([&] { nll_loss(rnd({2, 2, 3}), targets({0, 0, 0, 0})); });
  CHECK(has(m, "[B*T,V]"));
}

// =========================================================================================
// mse_loss
// =========================================================================================

TEST_CASE("mse_loss values for each reduction") {
  const Tensor a = from_vector(std::vector<double>{1.0, -2.0, 3.5, 0.0}, {2, 2});
  const Tensor b = from_vector(std::vector<double>{0.5, 1.0, 3.0, -2.0}, {2, 2});
  // squared differences 0.25, 9, 0.25, 4
  check_values(mse_loss(a, b), {13.5 / 4}, 1e-15, 1e-14);
  check_values(mse_loss(a, b, Reduction::sum), {13.5}, 1e-15, 1e-14);
  const Tensor none = mse_loss(a, b, Reduction::none);
  CHECK(none.shape() == Shape{2, 2});
  check_values(none, {0.25, 9.0, 0.25, 4.0}, 1e-15, 1e-14);
  check_values(mse_loss(a.to(f32), b.to(f32)), {13.5 / 4}, 1e-7, 1e-7);
  check_values(mse_loss(scalar(3.0, f64), scalar(1.0, f64)), {4.0});
  // Mean of no elements is NaN (PyTorch), sum is 0.
  CHECK(std::isnan(mse_loss(zeros({0, 3}, f64), zeros({0, 3}, f64)).item()));
  check_values(mse_loss(zeros({0}, f64), zeros({0}, f64), Reduction::sum), {0.0});
}

TEST_CASE("mse_loss backward is 2 (a - b) / N for a, the negation for b") {
  Tensor a = from_vector(std::vector<double>{1.0, -2.0, 3.5}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{0.5, 1.0, 3.0}).requires_grad_();
  mse_loss(a, b).backward();
  check_values(a.grad(), {2 * 0.5 / 3, 2 * -3.0 / 3, 2 * 0.5 / 3}, 1e-15, 1e-14);
  check_values(b.grad(), {-2 * 0.5 / 3, -2 * -3.0 / 3, -2 * 0.5 / 3}, 1e-15, 1e-14);
}

TEST_CASE("gradcheck mse_loss over shapes and reductions, both inputs") {
  for (const Shape& s : {Shape{}, Shape{3}, Shape{2, 3}, Shape{2, 3, 4}, Shape{1, 4}}) {
    for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
      INFO("shape " << s.str() << " reduction " << static_cast<int>(r));
      gradcheck_ok([r](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], r); },
                   {rnd(s, -1.0, 1.0, 1), rnd(s, -1.0, 1.0, 2)});
    }
  }
}

TEST_CASE("mse_loss: bad input") {
  std::string m = error_of<ShapeError>([] { mse_loss(rnd({2, 3}), rnd({3, 2})); });
  CHECK(has(m, "mse_loss"));
  CHECK(has(m, "[2,3]"));
  CHECK(has(m, "[3,2]"));
  // No broadcasting, even where numpy would.
  m = error_of<ShapeError>([] { mse_loss(rnd({2, 3}), rnd({3})); });
  CHECK(has(m, "[3]"));
  m = error_of<DtypeError>([] { mse_loss(rnd({2}), rnd({2}).to(f32)); });
  CHECK(has(m, "mse_loss"));
  CHECK(has(m, "float32"));
  m = error_of<DtypeError>([] { mse_loss(targets({1, 2}), targets({1, 2})); });
  CHECK(has(m, "mse_loss"));
}

// =========================================================================================
// dropout
// =========================================================================================

TEST_CASE("dropout keeps 1 - p of the elements, scaled by 1/(1-p)") {
  const std::int64_t n = 100000;
  const Tensor x = ones({n}, f32);
  Generator gen(123);
  const Tensor y = dropout(x, 0.3, true, &gen);
  std::int64_t kept = 0, badly_scaled = 0;
  for (float v : y.to_vector<float>()) {
    if (v != 0.0f) {
      ++kept;
      badly_scaled += std::fabs(v - 1.0 / 0.7) > 1e-6;
    }
  }
  CHECK(badly_scaled == 0);
  const double frac = static_cast<double>(kept) / static_cast<double>(n);
  INFO("kept fraction " << frac);
  CHECK(std::fabs(frac - 0.7) < 0.01);
  // On general values the kept ones are x / 0.7 exactly where kept.
  const Tensor x2 = rnd({1000}, 0.5, 1.5);
  Generator g2(5);
  const std::vector<double> yv = dropout(x2, 0.3, true, &g2).to_vector<double>();
  const std::vector<double> xv = x2.to_vector<double>();
  for (std::size_t i = 0; i < xv.size(); ++i) CHECK((yv[i] == 0.0 || std::fabs(yv[i] - xv[i] / 0.7) < 1e-15));
}

TEST_CASE("dropout is the identity in eval mode and for p == 0; zeros for p == 1") {
  Tensor x = rnd({3, 4}, 0.5, 1.5).requires_grad_();
  CHECK(dropout(x, 0.5, false).is_same(x));
  CHECK(dropout(x, 0.0, true).is_same(x));
  Tensor y = dropout(x, 1.0, true);
  check_values(y, std::vector<double>(12, 0.0));
  sum(y).backward();
  check_values(x.grad(), std::vector<double>(12, 0.0));
}

TEST_CASE("dropout is reproducible from a Generator or the default generator") {
  const Tensor x = rnd({50}, 0.5, 1.5);
  Generator g1(9), g2(9);
  check_close(dropout(x, 0.4, true, &g1), dropout(x, 0.4, true, &g2), 0.0, 0.0);
  manual_seed(77);
  const Tensor a = dropout(x, 0.4, true);
  manual_seed(77);
  check_close(dropout(x, 0.4, true), a, 0.0, 0.0);
  // And it does draw: a new draw differs.
  CHECK(dropout(x, 0.4, true).to_vector<double>() != a.to_vector<double>());
}

TEST_CASE("dropout backward is g * mask / (1 - p)") {
  Tensor x = rnd({200}, 0.5, 1.5).requires_grad_();
  Generator gen(4);
  const Tensor y = dropout(x, 0.25, true, &gen);
  const std::vector<double> g = rnd({200}, -1.0, 1.0, 8).to_vector<double>();
  y.backward(from_vector(g));
  const std::vector<double> yv = y.to_vector<double>();
  std::vector<double> want(200);
  for (std::size_t i = 0; i < 200; ++i) want[i] = yv[i] == 0.0 ? 0.0 : g[i] / 0.75;
  check_values(x.grad(), want, 1e-15, 1e-14);
}

TEST_CASE("gradcheck dropout with a Generator reseeded on every call") {
  for (const Shape& s : {Shape{7}, Shape{3, 4}, Shape{2, 3, 4}, Shape{}}) {
    INFO("shape " << s.str());
    gradcheck_ok(
        [](const std::vector<Tensor>& in) {
          Generator gen(2024);  // the same mask on every forward pass
          return dropout(in[0], 0.4, true, &gen);
        },
        {rnd(s)});
  }
}

TEST_CASE("dropout: bad p and bad input; empty tensors") {
  const Tensor x = rnd({3});
  for (double p : {-0.1, 1.5, std::nan("")}) {
    INFO("p = " << p);
    const std::string m = error_of<Error>([&] { dropout(x, p, true); });
    CHECK(has(m, "dropout"));
    CHECK(has(m, "[0, 1]"));
  }
  CHECK_THROWS_AS(dropout(x, 2.0, false), Error);  // p is checked in eval mode too
  CHECK(has(error_of<DtypeError>([] { dropout(targets({1, 2}), 0.5, true); }), "dropout"));
  CHECK(dropout(zeros({0, 4}, f32), 0.5, true).shape() == Shape{0, 4});
}
