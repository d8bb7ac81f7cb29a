// Elementwise functions (pow, sqrt, exp, log, abs, tanh, sigmoid, relu, clamp*): values
// against std:: references in a loop (float64 and float32, lengths that exercise both the
// SIMD body and the scalar tail), IEEE edge values, the kink choices, float64 gradchecks
// on several shapes with inputs kept off kinks, identities, and every bad input.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "helpers.hpp"

using xgtest::check_throws_msg;

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// n values evenly spread over [lo, hi] (37 = several SIMD batches plus a tail).
std::vector<double> spread(double lo, double hi, int n = 37) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(lo + (hi - lo) * i / (n - 1));
  return v;
}

std::vector<double> apply(const std::vector<double>& x, const std::function<double(double)>& f) {
  std::vector<double> y;
  for (double v : x) y.push_back(f(v));
  return y;
}

// Random float64 values in [-r, r] of shape s, each at least `gap` away from every kink.
Tensor off_kinks(const Shape& s, std::vector<double> kinks, double gap = 0.1, double r = 1.5, std::uint64_t seed = 7) {
  Tensor t = rnd(s, -r, r, seed);
  double* p = t.data<double>();
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    for (double k : kinks) {
      if (std::fabs(p[i] - k) < gap) p[i] = k + (p[i] >= k ? 2 * gap : -2 * gap);
    }
  }
  return t;
}

double sigmoid_ref(double v) { return v >= 0 ? 1.0 / (1.0 + std::exp(-v)) : std::exp(v) / (1.0 + std::exp(v)); }

using UnaryFn = std::function<Tensor(const Tensor&)>;

struct Case {
  const char* name;
  UnaryFn op;
  std::function<double(double)> ref;
  double lo, hi;  // input range for the value check
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"pow2", [](const Tensor& x) { return pow(x, 2.0); }, [](double v) { return v * v; }, -3.0, 3.0},
      {"pow3", [](const Tensor& x) { return pow(x, 3.0); }, [](double v) { return v * v * v; }, -3.0, 3.0},
      {"pow0.5", [](const Tensor& x) { return pow(x, 0.5); }, [](double v) { return std::sqrt(v); }, 0.0, 4.0},
      {"pow-1", [](const Tensor& x) { return pow(x, -1.0); }, [](double v) { return 1.0 / v; }, 0.25, 4.0},
      {"pow1.7", [](const Tensor& x) { return pow(x, 1.7); }, [](double v) { return std::pow(v, 1.7); }, 0.0, 4.0},
      {"pow-2.5", [](const Tensor& x) { return pow(x, -2.5); }, [](double v) { return std::pow(v, -2.5); }, 0.25, 4.0},
      {"pow1", [](const Tensor& x) { return pow(x, 1.0); }, [](double v) { return v; }, -3.0, 3.0},
      {"pow-2", [](const Tensor& x) { return pow(x, -2.0); }, [](double v) { return 1.0 / (v * v); }, 0.25, 4.0},
      {"pow-0.5", [](const Tensor& x) { return pow(x, -0.5); }, [](double v) { return 1.0 / std::sqrt(v); }, 0.25, 4.0},
      {"pow4", [](const Tensor& x) { return pow(x, 4.0); }, [](double v) { return v * v * v * v; }, -3.0, 3.0},
      {"pow0", [](const Tensor& x) { return pow(x, 0.0); }, [](double) { return 1.0; }, -3.0, 3.0},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double v) { return std::sqrt(v); }, 0.0, 9.0},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double v) { return std::exp(v); }, -20.0, 20.0},
      {"log", [](const Tensor& x) { return log(x); }, [](double v) { return std::log(v); }, 1e-3, 50.0},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double v) { return std::fabs(v); }, -3.0, 3.0},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double v) { return std::tanh(v); }, -5.0, 5.0},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, sigmoid_ref, -30.0, 30.0},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double v) { return v > 0 ? v : 0.0; }, -3.0, 3.0},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 1.25); },
       [](double v) { return std::min(std::max(v, -0.5), 1.25); }, -3.0, 3.0},
      {"clamp_min", [](const Tensor& x) { return clamp_min(x, -0.5); }, [](double v) { return std::max(v, -0.5); },
       -3.0, 3.0},
      {"clamp_max", [](const Tensor& x) { return clamp_max(x, 1.25); }, [](double v) { return std::min(v, 1.25); },
       -3.0, 3.0},
  };
  return c;
}

}  // namespace

TEST_CASE("unary ops: float64 values match std:: references over SIMD body and tail") {
  for (const Case& c : cases()) {
    INFO(std::string(c.name));
    const std::vector<double> xv = spread(c.lo, c.hi);
    const Tensor y = c.op(from_vector(xv, Shape{37}));
    CHECK(y.dtype() == f64);
    CHECK(y.shape() == Shape{37});
    check_values(y, apply(xv, c.ref), 1e-14, 1e-13);
  }
}

TEST_CASE("unary ops: float32 values match std:: references (float32 rounding)") {
  for (const Case& c : cases()) {
    INFO(std::string(c.name));
    std::vector<float> xf;
    for (double v : spread(c.lo, c.hi)) xf.push_back(static_cast<float>(v));
    const std::vector<double> xd(xf.begin(), xf.end());
    const Tensor y = c.op(from_vector(xf, Shape{37}));
    CHECK(y.dtype() == f32);
    check_values(y, apply(xd, c.ref), 1e-6, 4e-6);
  }
}

TEST_CASE("unary ops: shapes are kept (0-d, [3,4], [2,1,3]) and values are per element") {
  for (const Shape& s : {Shape{}, Shape{3, 4}, Shape{2, 1, 3}}) {
    const Tensor x = rnd(s, 0.5, 2.0, 3);
    const std::vector<double> xv = x.to_vector<double>();
    for (const Case& c : cases()) {
      INFO(std::string(c.name) << " " << s.str());
      const Tensor y = c.op(x);
      CHECK(y.shape() == s);
      check_values(y, apply(xv, c.ref), 1e-14, 1e-13);
    }
  }
}

TEST_CASE("pow: IEEE special values, also inside SIMD batches (0^-1 = inf, 0^0 = 1, negative bases)") {
  // 17 copies so every value goes through the vector body as well as the scalar tail.
  auto rep = [](double v) { return from_vector(std::vector<double>(17, v)); };
  auto each = [](const Tensor& t, const std::function<bool(double)>& ok) {
    for (double v : t.to_vector<double>()) {
      INFO("value " << v);
      CHECK(ok(v));
    }
  };
  auto is = [](double want) { return [want](double v) { return v == want; }; };
  auto near = [](double want) { return [want](double v) { return std::fabs(v - want) <= 1e-14 * std::fabs(want); }; };
  auto is_nan = [](double v) { return std::isnan(v); };
  for (double e : {-1.0, -2.0, -0.5, -2.5, -3.0}) {
    INFO("0^" << e);
    each(pow(rep(0.0), e), is(kInf));
  }
  each(pow(rep(0.0), 0.0), is(1.0));
  each(pow(rep(NAN), 0.0), is(1.0));
  each(pow(rep(0.0), 1.7), is(0.0));
  each(pow(rep(0.0), 3.0), is(0.0));
  // Exact where PyTorch is exact (the special-cased exponents).
  each(pow(rep(-2.0), 2.0), is(4.0));
  each(pow(rep(-2.0), 3.0), is(-8.0));
  each(pow(rep(-2.0), -1.0), is(-0.5));
  each(pow(rep(-2.0), -2.0), is(0.25));
  each(pow(rep(4.0), -0.5), is(0.5));
  // Other integer exponents keep the sign of a negative base.
  each(pow(rep(-2.0), 4.0), near(16.0));
  each(pow(rep(-2.0), 5.0), near(-32.0));
  each(pow(rep(-3.0), -3.0), near(-1.0 / 27.0));
  // A negative base to a fractional power is NaN.
  each(pow(rep(-2.0), 0.5), is_nan);
  each(pow(rep(-2.0), 1.7), is_nan);
}

TEST_CASE("unary ops: IEEE edges (sqrt(-1), log(0), exp overflow) and NaN propagation") {
  CHECK(std::isnan(sqrt(scalar(-1.0, f64)).item()));
  CHECK(log(scalar(0.0, f64)).item() == -kInf);
  CHECK(exp(scalar(1000.0, f64)).item() == kInf);
  CHECK(exp(scalar(-1000.0, f64)).item() == 0.0);
  const Tensor n = from_vector(std::vector<double>(9, NAN));
  for (const Case& c : cases()) {
    if (std::string(c.name) == "pow0") continue;  // NaN^0 = 1
    INFO(std::string(c.name));
    for (double v : c.op(n).to_vector<double>()) CHECK(std::isnan(v));
  }
}

TEST_CASE("sigmoid: stable and precise at large |x| (no overflow, full relative precision)") {
  const std::vector<double> xv{-1000.0, -700.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0};
  const Tensor y = sigmoid(from_vector(xv));
  const std::vector<double> got = y.to_vector<double>();
  CHECK(got[0] == 0.0);
  CHECK(got[7] == 1.0);
  CHECK(got[4] == 0.5);
  // exp(x) / (1 + exp(x)) to full relative precision where 1/(1+exp(-x)) would be 1/inf.
  CHECK(got[2] == doctest::Approx(std::exp(-100.0)).epsilon(1e-14));
  CHECK(got[3] == doctest::Approx(std::exp(-30.0) / (1 + std::exp(-30.0))).epsilon(1e-14));
  CHECK(got[1] == doctest::Approx(std::exp(-700.0)).epsilon(1e-12));
  for (double v : got) CHECK(std::isfinite(v));
  // float32: e^-80 is a normal float; 1 / (1 + e^80) would also be, but e^-88.7 is not.
  const std::vector<float> xf(19, -80.0f);
  const Tensor yf = sigmoid(from_vector(xf));
  for (double v : yf.to_vector<double>()) CHECK(v == doctest::Approx(std::exp(-80.0)).epsilon(1e-5));
  for (double v : sigmoid(from_vector(std::vector<float>(19, 1000.0f))).to_vector<double>()) CHECK(v == 1.0);
  for (double v : sigmoid(from_vector(std::vector<float>(19, -1000.0f))).to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE("sigmoid: gradient is y*(1-y), finite at large |x|") {
  Tensor x = from_vector(std::vector<double>{-1000.0, -2.0, 0.0, 3.0, 1000.0}).requires_grad_();
  sum(sigmoid(x)).backward();
  std::vector<double> want;
  for (double v : {-1000.0, -2.0, 0.0, 3.0, 1000.0}) want.push_back(sigmoid_ref(v) * (1 - sigmoid_ref(v)));
  check_values(x.grad(), want, 1e-15, 1e-12);
}

TEST_CASE("unary ops: gradcheck on 0-d, [5], [3,4], [2,3,4] and size-1 dims, off kinks") {
  const std::vector<Shape> shapes{Shape{}, Shape{5}, Shape{3, 4}, Shape{2, 3, 4}, Shape{1, 3, 1}};
  for (const Shape& s : shapes) {
    INFO(s.str());
    const Tensor pos = rnd(s, 0.5, 2.0, 61);  // log, sqrt, negative and fractional powers
    const Tensor any = rnd(s, -2.0, 2.0, 62);
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 2.0); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 3.0); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 1.0); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 0.0); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 0.5); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], -1.5); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 1.7); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], -2.0); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], -0.5); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], -1.0); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return pow(v[0], 4.0); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return sqrt(v[0]); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return log(v[0]); }, {pos});
    gradcheck_ok([](const std::vector<Tensor>& v) { return exp(v[0]); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return tanh(v[0]); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return sigmoid(v[0]); }, {any});
    gradcheck_ok([](const std::vector<Tensor>& v) { return sigmoid(mul(v[0], 8.0)); }, {any});
    const Tensor off0 = off_kinks(s, {0.0});
    gradcheck_ok([](const std::vector<Tensor>& v) { return abs(v[0]); }, {off0});
    gradcheck_ok([](const std::vector<Tensor>& v) { return relu(v[0]); }, {off0});
    const Tensor offc = off_kinks(s, {-0.5, 0.75});
    gradcheck_ok([](const std::vector<Tensor>& v) { return clamp(v[0], -0.5, 0.75); }, {offc});
    gradcheck_ok([](const std::vector<Tensor>& v) { return clamp_min(v[0], -0.5); }, {offc});
    gradcheck_ok([](const std::vector<Tensor>& v) { return clamp_max(v[0], 0.75); }, {offc});
  }
}

TEST_CASE("unary ops: hand-computed gradients (pow, sqrt, exp, log, tanh)") {
  Tensor x = from_vector(std::vector<double>{0.5, 2.0}).requires_grad_();
  sum(pow(x, 3.0)).backward();
  check_values(x.grad(), {3 * 0.25, 3 * 4.0});
  x.zero_grad();
  sum(sqrt(x)).backward();
  check_values(x.grad(), {0.5 / std::sqrt(0.5), 0.5 / std::sqrt(2.0)});
  x.zero_grad();
  sum(exp(x)).backward();
  check_values(x.grad(), {std::exp(0.5), std::exp(2.0)});
  x.zero_grad();
  sum(log(x)).backward();
  check_values(x.grad(), {2.0, 0.5});
  x.zero_grad();
  sum(tanh(x)).backward();
  check_values(x.grad(), {1 - std::tanh(0.5) * std::tanh(0.5), 1 - std::tanh(2.0) * std::tanh(2.0)});
}

TEST_CASE("kinks: relu'(0) = 0, abs'(0) = 0, clamp passes the gradient at lo and hi, pow(x,0)' = 0 at 0") {
  Tensor x = from_vector(std::vector<double>{-1.0, 0.0, 2.0}).requires_grad_();
  sum(relu(x)).backward();
  check_values(x.grad(), {0.0, 0.0, 1.0});
  x.zero_grad();
  sum(abs(x)).backward();
  check_values(x.grad(), {-1.0, 0.0, 1.0});
  x.zero_grad();
  sum(pow(x, 0.0)).backward();
  check_values(x.grad(), {0.0, 0.0, 0.0});

  // Gradient where lo <= x <= hi, bounds included (PyTorch).
  Tensor c = from_vector(std::vector<double>{-2.0, -1.0, 0.0, 1.0, 2.0}).requires_grad_();
  sum(clamp(c, -1.0, 1.0)).backward();
  check_values(c.grad(), {0.0, 1.0, 1.0, 1.0, 0.0});
  c.zero_grad();
  sum(clamp_min(c, 0.0)).backward();
  check_values(c.grad(), {0.0, 0.0, 1.0, 1.0, 1.0});
  c.zero_grad();
  sum(clamp_max(c, 0.0)).backward();
  check_values(c.grad(), {1.0, 1.0, 1.0, 0.0, 0.0});
}

TEST_CASE("clamp: lo > hi gives hi everywhere and no gradient (PyTorch's min(max(x, lo), hi))") {
  Tensor c = from_vector(std::vector<double>{-2.0, 0.5, 1.0, 3.0}).requires_grad_();
  const Tensor y = clamp(c, 2.0, 1.0);
  check_values(y, {1.0, 1.0, 1.0, 1.0});
  sum(y).backward();
  check_values(c.grad(), {0.0, 0.0, 0.0, 0.0});
  // Infinite bounds are no bound.
  check_values(clamp(c.detach(), -kInf, kInf), {-2.0, 0.5, 1.0, 3.0});
}

TEST_CASE("definition: identities between the unary ops") {
  const Tensor x = rnd(Shape{4, 9}, -4.0, 4.0, 71);
  const Tensor p = rnd(Shape{4, 9}, 0.1, 4.0, 72);
  check_close(sigmoid(neg(x)), rsub(1.0, sigmoid(x)), 1e-15, 1e-12);
  check_close(sigmoid(x), rdiv(1.0, add(exp(neg(x)), 1.0)), 1e-15, 1e-13);
  check_close(tanh(x), sub(mul(sigmoid(mul(x, 2.0)), 2.0), 1.0), 1e-14, 1e-12);
  check_close(relu(x), clamp_min(x, 0.0), 0.0, 0.0);
  check_close(abs(x), add(relu(x), relu(neg(x))), 0.0, 0.0);
  check_close(clamp(x, -1.0, 2.0), clamp_max(clamp_min(x, -1.0), 2.0), 0.0, 0.0);
  check_close(pow(p, 0.5), sqrt(p), 0.0, 0.0);
  check_close(pow(p, 2.0), mul(p, p), 0.0, 0.0);
  check_close(pow(p, -1.0), rdiv(1.0, p), 1e-15, 1e-14);
  check_close(exp(log(p)), p, 1e-15, 1e-14);
  check_close(log(exp(x)), x, 1e-14, 1e-14);
  check_close(pow(p, 1.5), mul(p, sqrt(p)), 1e-14, 1e-13);
}

TEST_CASE("unary ops: empty tensors give empty results and backpropagate") {
  for (const Case& c : cases()) {
    INFO(std::string(c.name));
    Tensor x = zeros(Shape{0, 3}, f64).requires_grad_();
    const Tensor y = c.op(x);
    CHECK(y.shape() == Shape{0, 3});
    sum(y).backward();
    CHECK(x.grad().shape() == Shape{0, 3});
  }
}

TEST_CASE("unary ops: int64 input is a DtypeError and an undefined tensor a StateError, naming the op") {
  const Tensor i = from_vector(std::vector<std::int64_t>{1, 2, 3});
  const Tensor u;
  const std::vector<std::pair<std::string, UnaryFn>> ops = {
      {"pow", [](const Tensor& x) { return pow(x, 2.0); }},
      {"pow", [](const Tensor& x) { return pow(x, 1.7); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }},
      {"exp", [](const Tensor& x) { return exp(x); }},
      {"log", [](const Tensor& x) { return log(x); }},
      {"abs", [](const Tensor& x) { return abs(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }},
      {"relu", [](const Tensor& x) { return relu(x); }},
      {"clamp", [](const Tensor& x) { return clamp(x, 0.0, 1.0); }},
      {"clamp_min", [](const Tensor& x) { return clamp_min(x, 0.0); }},
      {"clamp_max", [](const Tensor& x) { return clamp_max(x, 0.0); }},
  };
  for (const auto& [name, op] : ops) {
    INFO(name);
    check_throws_msg<DtypeError>([&] { op(i); }, {name, "int64", "[3]"});
    check_throws_msg<StateError>([&] { op(u); }, {name});
  }
}

TEST_CASE("clamp: a NaN bound is an Error naming the op") {
  const Tensor x = zeros(Shape{2}, f64);
  check_throws_msg<Error>([&] { clamp(x, NAN, 1.0); }, {"clamp", "NaN"});
  check_throws_msg<Error>([&] { clamp(x, 0.0, NAN); }, {"clamp", "NaN"});
  check_throws_msg<Error>([&] { clamp_min(x, NAN); }, {"clamp_min", "NaN"});
  check_throws_msg<Error>([&] { clamp_max(x, NAN); }, {"clamp_max", "NaN"});
}
