// cross_entropy, nll_loss, mse_loss: values against hand-written double loops, the
// fused cross_entropy against its composed version, float64 gradchecks over several
// shapes and reductions, ignored targets, NaN inputs, and every bad input.
#include <cmath>
#include <limits>
#include <map>
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

namespace {

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

}  // namespace

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
// cross_entropy: class weights and label smoothing
// =========================================================================================

namespace {

// PyTorch's formula, by hand in double: row i (not ignored) loses
//   (1 - eps) w[t] (-log p[t]) + eps / C * sum_c w[c] (-log p[c]),
// and the mean divides by sum_i w[t_i] over the rows kept.
std::vector<double> ref_wls_rows(const std::vector<double>& x, std::int64_t n, std::int64_t c,
                                 const std::vector<std::int64_t>& t, const std::vector<double>& w, double eps,
                                 std::int64_t ignore, double* denom) {
  std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
  *denom = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (t[i] == ignore) continue;
    double acc = 0.0;
    for (std::int64_t j = 0; j < c; ++j) acc += std::exp(x[i * c + j]);
    double smooth = 0.0;
    for (std::int64_t j = 0; j < c; ++j) smooth += w[j] * (std::log(acc) - x[i * c + j]);
    rows[i] = (1.0 - eps) * w[t[i]] * (std::log(acc) - x[i * c + t[i]]) + eps / static_cast<double>(c) * smooth;
    *denom += w[t[i]];
  }
  return rows;
}

std::map<std::string, Tensor> load_fixture(const std::string& name) {
  std::map<std::string, Tensor> e;
  for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/loss/" + name + ".npz")) e[k] = v;
  return e;
}

}  // namespace

TEST_CASE("cross_entropy with weight and label_smoothing equals PyTorch's formula by hand, each reduction") {
  const std::int64_t n = 6, c = 4;
  const Tensor x = rnd({n, c}, -2.0, 2.0, 21);
  const std::vector<std::int64_t> tv{3, 0, -100, 1, 2, 1};
  const std::vector<double> wv{0.5, 2.0, 1.25, 0.0};
  const Tensor w = from_vector(wv);
  const std::vector<double> ones(4, 1.0);
  for (double eps : {0.0, 0.1, 1.0}) {
    for (bool weighted : {false, true}) {
      INFO("eps " << eps << " weighted " << weighted);
      double denom = 0.0;
      const std::vector<double> rows =
          ref_wls_rows(x.to_vector<double>(), n, c, tv, weighted ? wv : ones, eps, -100, &denom);
      CrossEntropyOptions o{.weight = weighted ? w : Tensor(), .label_smoothing = eps};
      check_values(cross_entropy(x, targets(tv), o), {total(rows) / denom}, 1e-13, 1e-13);
      o.reduction = Reduction::sum;
      check_values(cross_entropy(x, targets(tv), o), {total(rows)}, 1e-13, 1e-13);
      o.reduction = Reduction::none;
      check_values(cross_entropy(x, targets(tv), o), rows, 1e-13, 1e-13);
    }
  }
  // The weighted mean divides by the kept targets' weights (0.0 + 2.0 + 0.5 + 1.25 + 2.0),
  // not by the 5 kept rows: a class weight of 0 on row 0's target drops it from both sums.
  double denom = 0.0;
  ref_wls_rows(x.to_vector<double>(), n, c, tv, wv, 0.0, -100, &denom);
  CHECK(denom == doctest::Approx(5.75));
}

TEST_CASE("cross_entropy with weight and label_smoothing stays one tape node, and float32 matches float64") {
  Tensor x = rnd({5, 7}, -3.0, 3.0, 22).requires_grad_();
  const Tensor w = rnd({7}, 0.1, 2.0, 23);
  const std::size_t before = tape_size();
  const CrossEntropyOptions o{.weight = w, .label_smoothing = 0.2};
  const Tensor loss = cross_entropy(x, targets({6, 0, 3, -100, 2}), o);
  CHECK(tape_size() == before + 1);
  CHECK(loss.op_name() == "cross_entropy");
  loss.backward();
  Tensor x32 = x.detach().to(f32).requires_grad_();
  const Tensor loss32 = cross_entropy(x32, targets({6, 0, 3, -100, 2}), {.weight = w.to(f32), .label_smoothing = 0.2});
  check_close(loss32, loss, 1e-6, 1e-5);
  loss32.backward();
  check_close(x32.grad(), x.grad(), 1e-6, 1e-5);
  // Ignored rows get exactly zero gradient, smoothing or not.
  const std::vector<double> g = x.grad().to_vector<double>();
  for (int j = 0; j < 7; ++j) CHECK(g[3 * 7 + j] == 0.0);
}

TEST_CASE("cross_entropy with weight + label_smoothing + ignore_index: agreement with PyTorch (loss/ce_*.npz)") {
  for (const char* name : {"ce_wls_mean", "ce_wls_sum", "ce_wls_none", "ce_w_mean", "ce_ls_mean",
                           "ce_wls_ignore1_mean", "ce_wls_one_mean", "ce_ls1_sum"}) {
    const std::map<std::string, Tensor> e = load_fixture(name);
    REQUIRE(e.count("in.logits"));
    const std::string n = name;
    const Reduction red = n.ends_with("_sum") ? Reduction::sum : n.ends_with("_none") ? Reduction::none : Reduction::mean;
    for (Dtype dt : {f64, f32}) {
      INFO(name << " " << dtype_name(dt));
      const double rtol = dt == f64 ? 1e-12 : 1e-5, atol = dt == f64 ? 1e-12 : 1e-6;
      CrossEntropyOptions o{.ignore_index = e.at("in.ignore_index").item<std::int64_t>(),
                            .reduction = red,
                            .label_smoothing = e.at("in.label_smoothing").item<double>()};
      if (e.count("in.weight")) o.weight = e.at("in.weight").to(dt);
      Tensor x = e.at("in.logits").to(dt).detach().requires_grad_();
      const Tensor loss = cross_entropy(x, e.at("in.target"), o);
      check_values(loss, e.at("out.loss").to_vector<double>(), atol, rtol);
      sum(mul(loss, e.at("in.w_loss").to(dt))).backward();
      check_values(x.grad(), e.at("grad.in.logits").to_vector<double>(), atol, rtol);
    }
  }
}

TEST_CASE("gradcheck cross_entropy with weight and label_smoothing: shapes, ignored rows, each reduction") {
  struct Case {
    Shape shape;
    Tensor t;
    std::int64_t ignore;
  };
  const std::vector<Case> cases = {
      {{1, 3}, targets({2}), -100},
      {{4, 5}, targets({1, -100, 4, 3}), -100},
      {{6, 4}, targets({3, 1, 1, 0, 3, 2}), 1},
      {{5}, from_vector(std::vector<std::int64_t>{4}, Shape{}), -100},
      {{3, 19}, targets({18, 0, 9}), -100},
  };
  for (const Case& c : cases) {
    const std::int64_t C = c.shape.back();
    const Tensor w = rnd({C}, 0.0, 2.0, 24);
    for (double eps : {0.0, 0.15, 1.0}) {
      for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
        INFO("shape " << c.shape.str() << " eps " << eps << " reduction " << static_cast<int>(r));
        for (bool weighted : {false, true}) {
          const CrossEntropyOptions o{
              .ignore_index = c.ignore, .reduction = r, .weight = weighted ? w : Tensor(), .label_smoothing = eps};
          gradcheck_ok([o](const std::vector<Tensor>& in) { return cross_entropy(in[0], in[1], o); },
                       {rnd(c.shape, -2.0, 2.0, 13), c.t});
        }
      }
    }
  }
}

TEST_CASE("cross_entropy with weight: every target ignored or weighted 0 gives NaN like PyTorch") {
  const Tensor x = rnd({3, 4});
  const Tensor w = from_vector(std::vector<double>{1.0, 0.0, 2.0, 1.0});
  CHECK(std::isnan(cross_entropy(x, targets({-100, -100, -100}), {.weight = w}).item<double>()));
  CHECK(std::isnan(cross_entropy(x, targets({1, 1, -100}), {.weight = w}).item<double>()));
  CHECK(cross_entropy(x, targets({1, 1, -100}), {.reduction = Reduction::sum, .weight = w}).item<double>() == 0.0);
}

TEST_CASE("cross_entropy: bad weight and label_smoothing name the op, the shapes and the value") {
  const Tensor x = rnd({4, 5});
  const Tensor t = targets({1, 2, 3, 4});
  std::string m = error_of<ShapeError>([&] { cross_entropy(x, t, {.weight = rnd({4})}); });
  CHECK(has(m, "cross_entropy"));
  CHECK(has(m, "weight [4]"));
  CHECK(has(m, "[4,5]"));
  CHECK(has(m, "[C] = [5]"));
  m = error_of<ShapeError>([&] { cross_entropy(x, t, {.weight = rnd({1, 5})}); });
  CHECK(has(m, "[1,5]"));
  m = error_of<DtypeError>([&] { cross_entropy(x, t, {.weight = rnd({5}).to(f32)}); });
  CHECK(has(m, "cross_entropy"));
  CHECK(has(m, "float32"));
  CHECK(has(m, "float64"));
  m = error_of<DtypeError>([&] { cross_entropy(x, t, {.weight = targets({1, 1, 1, 1, 1})}); });
  CHECK(has(m, "int64"));
  m = error_of<Error>([&] { cross_entropy(x, t, {.weight = from_vector(std::vector<double>{1, 1, -0.5, 1, 1})}); });
  CHECK(has(m, "cross_entropy"));
  CHECK(has(m, "weight[2] = -0.5"));
  m = error_of<Error>([&] {
    cross_entropy(x, t, {.weight = from_vector(std::vector<double>{1, 1, 1, std::nan(""), 1})});
  });
  CHECK(has(m, "weight[3] = nan"));
  for (double eps : {-0.1, 1.5, std::nan("")}) {
    m = error_of<Error>([&] { cross_entropy(x, t, {.label_smoothing = eps}); });
    CHECK(has(m, "cross_entropy"));
    CHECK(has(m, "label_smoothing"));
    CHECK(has(m, "[4,5]"));
  }
  CHECK(has(error_of<Error>([&] { cross_entropy(x, t, {.label_smoothing = 1.5}); }), "got 1.5"));
}

TEST_CASE("nll_loss takes class weights like PyTorch and refuses label_smoothing") {
  const Tensor lp = log_softmax(rnd({5, 3}, -2, 2, 25), 1);
  const std::vector<double> wv{0.5, 2.0, 1.5};
  const Tensor w = from_vector(wv);
  const std::vector<std::int64_t> tv{2, 0, -100, 1, 1};
  const std::vector<double> l = lp.to_vector<double>();
  double s = 0.0, d = 0.0;
  for (int i = 0; i < 5; ++i) {
    if (tv[i] == -100) continue;
    s -= wv[tv[i]] * l[i * 3 + tv[i]];
    d += wv[tv[i]];
  }
  check_values(nll_loss(lp, targets(tv), {.weight = w}), {s / d}, 1e-14, 1e-14);
  check_values(nll_loss(lp, targets(tv), {.reduction = Reduction::sum, .weight = w}), {s}, 1e-14, 1e-14);
  // Weighted nll_loss(log_softmax) is cross_entropy with the same weight.
  check_close(nll_loss(lp, targets(tv), {.weight = w}),
              cross_entropy(rnd({5, 3}, -2, 2, 25), targets(tv), {.weight = w}), 1e-14, 1e-14);
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    const CrossEntropyOptions o{.reduction = r, .weight = w};
    gradcheck_ok([o](const std::vector<Tensor>& in) { return nll_loss(in[0], in[1], o); },
                 {rnd({5, 3}, -3.0, -0.1, 26), targets(tv)});
  }
  const std::string m = error_of<Error>([&] { nll_loss(lp, targets(tv), {.label_smoothing = 0.1}); });
  CHECK(has(m, "nll_loss"));
  CHECK(has(m, "label_smoothing"));
  CHECK_THROWS_AS(nll_loss(lp, targets(tv), {.weight = rnd({4})}), ShapeError);
}
