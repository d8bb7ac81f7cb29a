// The public gradcheck: it must pass correct backwards and catch wrong ones.
#include "helpers.hpp"

using namespace xg;

namespace {
// x^3 as a user-defined op whose backward can be made wrong on purpose.
Tensor cube(const Tensor& x, double wrong_factor) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  const double* px = x.data<double>();
  double* py = y.data<double>();
  for (std::int64_t i = 0; i < x.numel(); ++i) py[i] = px[i] * px[i] * px[i];
  if (needs_record({&x})) {
    // d x^3 = 3 x^2 g (times wrong_factor, which is 1 for the correct version)
    record("cube", y, {&x}, [x, wrong_factor](const Tensor& g, GradSlots& dx) {
      dx[0] = mul(mul(mul(x, x), g), 3.0 * wrong_factor);
    });
  }
  return y;
}

// A backward that routes gradients to the mirrored element: right in sum, wrong per element.
Tensor mirrored(const Tensor& x) {
  Tensor y = mul(x, x).detach();
  if (needs_record({&x})) {
    record("mirrored", y, {&x}, [x](const Tensor& g, GradSlots& dx) {
      Tensor d = mul(mul(x, g), 2.0);
      std::vector<double> v = d.to_vector<double>();
      std::reverse(v.begin(), v.end());
      dx[0] = from_vector(v, x.shape());
    });
  }
  return y;
}
}  // namespace

TEST_CASE("gradcheck passes a correct user-defined op") {
  const GradcheckReport r = gradcheck([](const std::vector<Tensor>& in) { return cube(in[0], 1.0); },
                                      {xgtest::rnd({3, 4})});
  CHECK(r.passed);
  CHECK(r.checked == 12);
  CHECK(r.max_abs_err < 1e-7);
}

TEST_CASE("gradcheck catches a deliberately wrong backward") {
  const GradcheckReport r = gradcheck([](const std::vector<Tensor>& in) { return cube(in[0], 1.01); },
                                      {xgtest::rnd({3, 4}, 0.5, 1.5)});
  CHECK_FALSE(r.passed);
  CHECK(r.worst_input == 0);
  CHECK(r.worst_element >= 0);
  CHECK(r.str().find("FAILED") != std::string::npos);
  CHECK(fmt::format("{}", r) == r.str());
}

TEST_CASE("gradcheck catches a backward that is right only in sum (asymmetric weights)") {
  const GradcheckReport r =
      gradcheck([](const std::vector<Tensor>& in) { return mirrored(in[0]); }, {xgtest::rnd({5}, 0.5, 2.0)});
  CHECK_FALSE(r.passed);
}

TEST_CASE("gradcheck random-projection mode: passes right, catches wrong") {
  GradcheckOptions o;
  o.random_projection = true;
  o.projections = 4;
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return cube(in[0], 1.0); }, {xgtest::rnd({20, 30})}, o)
            .passed);
  const GradcheckReport bad =
      gradcheck([](const std::vector<Tensor>& in) { return cube(in[0], 1.01); }, {xgtest::rnd({20, 30}, 0.5, 1.5)}, o);
  CHECK_FALSE(bad.passed);
  CHECK(bad.checked == 4);
  CHECK(bad.worst_element == -1);
}

TEST_CASE("gradcheck converts float32 inputs and runs fn in float64; int64 inputs pass through") {
  Tensor x32 = xgtest::rnd({4}).to(f32);
  Tensor idx = from_vector(std::vector<std::int64_t>{1, 2});
  const GradcheckReport r = gradcheck(
      [](const std::vector<Tensor>& in) {
        CHECK(in[0].dtype() == f64);
        CHECK(in[1].dtype() == i64);
        CHECK(default_dtype() == f64);
        return mul(in[0], in[0]);
      },
      {x32, idx});
  CHECK(r.passed);
  CHECK(r.checked == 4);
  CHECK(default_dtype() == f32);
}

TEST_CASE("gradcheck over tensors fn reads itself restores their values and gradients") {
  Tensor w = xgtest::rnd({3}).requires_grad_();
  const std::vector<double> before = w.to_vector<double>();
  Tensor old_grad = from_vector(std::vector<double>{7, 8, 9});
  w.set_grad(old_grad);
  const GradcheckReport r = gradcheck([&] { return tanh(mul(w, w)); }, {w});
  CHECK(r.passed);
  CHECK(w.to_vector<double>() == before);
  CHECK(w.grad().to_vector<double>() == std::vector<double>{7, 8, 9});
}

TEST_CASE("gradcheck rejects float32 outputs and non-float64 tensors to check") {
  Tensor w32 = ones({2});
  CHECK_THROWS_AS(gradcheck([&] { return w32; }, {w32}), DtypeError);
  CHECK_THROWS_AS(gradcheck([](const std::vector<Tensor>& in) { return in[0].to(f32); }, {xgtest::rnd({2})}),
                  DtypeError);
  GradcheckOptions bad;
  bad.eps = 0.0;
  CHECK_THROWS_AS(gradcheck([](const std::vector<Tensor>& in) { return in[0]; }, {xgtest::rnd({2})}, bad), Error);
}
