// nn::Conv2d and nn::MaxPool2d: PyTorch names, shapes and initialisation, forward shapes,
// gradchecks w.r.t. input and parameters, PyTorch agreement through load_state_dict,
// bad options and bad input.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_values;
using xgtest::rnd;

namespace {

template <class F>
void check_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("no exception; expected one mentioning '" << needle << "'");
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

// The module layout of tests/fixtures/gen_nn.py's ConvPool: conv -> pool, and conv2.
struct ConvPool : nn::Module {
  std::shared_ptr<nn::Conv2d> conv, conv2;
  std::shared_ptr<nn::MaxPool2d> pool;
  ConvPool() {
    conv = register_module("conv", std::make_shared<nn::Conv2d>(3, 4, 3, 1, 1));
    pool = register_module("pool", std::make_shared<nn::MaxPool2d>(2));
    conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(nn::Conv2dOptions{
                                         .in_channels = 3, .out_channels = 4, .kernel_size = {3, 2}, .stride = 2}));
  }
};

Tensor entry(const std::vector<std::pair<std::string, Tensor>>& npz, const std::string& name) {
  for (const auto& [n, t] : npz) {
    if (n == name) return t;
  }
  FAIL("fixture entry '" << name << "' missing");
  return Tensor();
}

// Within rtol of the reference relative to its largest magnitude (see test_ops_conv.cpp).
void check_rel(const Tensor& got, const Tensor& want, double rtol) {
  REQUIRE(got.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> w = want.to_vector<double>();
  double scale = 0;
  for (double v : w) scale = std::max(scale, std::fabs(v));
  check_values(got, w, rtol * scale, rtol);
}

}  // namespace

TEST_CASE("Conv2d registers weight [out, in, kh, kw] then bias [out], PyTorch's names") {
  nn::Conv2d m(3, 8, {3, 2});
  const nn::StateDict p = m.named_parameters();
  REQUIRE(p.size() == 2);
  CHECK(p[0].first == "weight");
  CHECK(p[0].second.shape() == Shape{8, 3, 3, 2});
  CHECK(p[1].first == "bias");
  CHECK(p[1].second.shape() == Shape{8});
  CHECK(p[0].second.is_same(m.weight));
  CHECK(p[1].second.is_same(m.bias));
  CHECK(m.weight.requires_grad());
  CHECK(m.num_parameters() == 8 * 3 * 3 * 2 + 8);
  CHECK(m.options().kernel_size == Size2{3, 2});
  CHECK(m.options().stride == Size2{1, 1});

  nn::Conv2d nb(nn::Conv2dOptions{.in_channels = 2, .out_channels = 4, .kernel_size = 1, .bias = false});
  REQUIRE(nb.named_parameters().size() == 1);
  CHECK(nb.named_parameters()[0].first == "weight");
  CHECK_FALSE(nb.bias.defined());
  CHECK(nb(rnd({1, 2, 3, 3}).to(f32)).shape() == Shape{1, 4, 3, 3});
}

TEST_CASE("Conv2d init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, seeded, in the default dtype") {
  manual_seed(123);
  nn::Conv2d m(16, 32, 3);  // fan_in = 144, bound = 1/12
  const double bound = 1.0 / 12.0;
  CHECK(m.weight.dtype() == default_dtype());
  for (const Tensor& t : {m.weight, m.bias}) {
    const std::vector<double> v = t.to_vector<double>();
    double lo = 1, hi = -1, mean = 0;
    for (double e : v) {
      lo = std::min(lo, e);
      hi = std::max(hi, e);
      mean += e / static_cast<double>(v.size());
    }
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
    // 4608 weights / 32 biases fill the interval: extremes near the bounds.
    CHECK(lo < -0.8 * bound);
    CHECK(hi > 0.8 * bound);
    if (v.size() > 1000) CHECK(std::fabs(mean) < 0.05 * bound);
  }
  // Same seed, same parameters; float64 under a DefaultDtypeGuard.
  manual_seed(123);
  nn::Conv2d again(16, 32, 3);
  xgtest::check_close(again.weight, m.weight, 0, 0);
  xgtest::check_close(again.bias, m.bias, 0, 0);
  DefaultDtypeGuard g(f64);
  nn::Conv2d d(2, 3, 3);
  CHECK(d.weight.dtype() == f64);
  CHECK(d.bias.dtype() == f64);
}

TEST_CASE("Conv2d and MaxPool2d forward shapes; the module equals the conv2d / max_pool2d ops") {
  DefaultDtypeGuard g(f64);
  const Tensor x = rnd({2, 3, 8, 7});
  nn::Conv2d c(3, 5, 3, 2, 1);  // [2,5,(8+2-3)/2+1,(7+2-3)/2+1] = [2,5,4,4]
  const Tensor y = c(x);
  CHECK(y.shape() == Shape{2, 5, 4, 4});
  xgtest::check_close(y, conv2d(x, c.weight, c.bias, 2, 1), 0, 0);
  nn::Conv2d ns(3, 2, {1, 3}, {1, 2}, {0, 1});  // [2,2,8,(7+2-3)/2+1] = [2,2,8,4]
  CHECK(ns(x).shape() == Shape{2, 2, 8, 4});

  nn::MaxPool2d p(2);  // stride defaults to the kernel
  CHECK(p(x).shape() == Shape{2, 3, 4, 3});
  xgtest::check_close(p(x), max_pool2d(x, 2, 2), 0, 0);
  nn::MaxPool2d ps(3, 1);
  CHECK(ps(x).shape() == Shape{2, 3, 6, 5});
  nn::MaxPool2d po(nn::MaxPool2dOptions{.kernel_size = {2, 3}, .stride = Size2{1, 2}});
  CHECK(po(x).shape() == Shape{2, 3, 7, 3});
  CHECK(p.named_parameters().empty());
}

TEST_CASE("gradcheck Conv2d w.r.t. input, weight and bias (strided, padded, non-square, no bias)") {
  DefaultDtypeGuard g(f64);
  manual_seed(5);
  struct Cfg {
    nn::Conv2dOptions o;
    Shape x;
  };
  for (const Cfg& c : std::vector<Cfg>{
           {{.in_channels = 2, .out_channels = 3, .kernel_size = 3, .stride = 1, .padding = 1}, {2, 2, 5, 5}},
           {{.in_channels = 3, .out_channels = 2, .kernel_size = {2, 3}, .stride = 2, .padding = {1, 0}}, {1, 3, 6, 7}},
           {{.in_channels = 1, .out_channels = 2, .kernel_size = 1}, {2, 1, 3, 4}},
           {{.in_channels = 2, .out_channels = 2, .kernel_size = 2, .bias = false}, {1, 2, 4, 3}}}) {
    INFO("x " << c.x.str() << " kernel " << c.o.kernel_size.h << "x" << c.o.kernel_size.w);
    nn::Conv2d m(c.o);
    Tensor x = rnd(c.x).requires_grad_();
    std::vector<Tensor> wrt{x};
    for (const Tensor& p : m.parameters()) wrt.push_back(p);
    const GradcheckReport r = gradcheck([&] { return m(x); }, wrt);
    INFO(r.str());
    CHECK(r.passed);
    CHECK(r.checked > 0);
  }
}

TEST_CASE("gradcheck a small CNN: Conv2d -> tanh -> MaxPool2d -> Conv2d, w.r.t. input and every parameter") {
  DefaultDtypeGuard g(f64);
  manual_seed(6);
  nn::Conv2d c1(2, 3, 3, 1, 1), c2(3, 2, 2);
  nn::MaxPool2d pool(2);
  Tensor x = rnd({2, 2, 6, 6}).requires_grad_();
  std::vector<Tensor> wrt{x, c1.weight, c1.bias, c2.weight, c2.bias};
  const GradcheckReport r = gradcheck([&] { return c2(pool(tanh(c1(x)))); }, wrt);
  INFO(r.str());
  CHECK(r.passed);
}

TEST_CASE("Conv2d + MaxPool2d agree with PyTorch through load_state_dict (f64 1e-10, f32 1e-5)") {
  const auto npz = load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/conv_pool.npz");
  for (const Dtype dt : {f64, f32}) {
    INFO("dtype " << dtype_name(dt));
    const double rtol = dt == f64 ? 1e-10 : 1e-5;
    DefaultDtypeGuard g(dt);
    ConvPool m;
    nn::StateDict sd;
    for (const auto& [name, t] : npz) {
      if (name.rfind("param.", 0) == 0) sd.emplace_back(name.substr(6), t.to(dt));
    }
    m.load_state_dict(sd);  // strict: names and shapes match PyTorch's exactly
    Tensor x = entry(npz, "in.x").to(dt).detach().requires_grad_();
    const Tensor y = (*m.pool)((*m.conv)(x));
    const Tensor y2 = (*m.conv2)(x);
    check_rel(y, entry(npz, "out.y"), rtol);
    check_rel(y2, entry(npz, "out.y2"), rtol);
    add(sum(mul(y, entry(npz, "in.w_y").to(dt))), sum(mul(y2, entry(npz, "in.w_y2").to(dt)))).backward();
    check_rel(x.grad(), entry(npz, "grad.in.x"), rtol);
    for (const auto& [name, p] : m.named_parameters()) {
      INFO("parameter " << name);
      check_rel(p.grad(), entry(npz, "grad.param." + name), rtol);
    }
  }
}

TEST_CASE("Conv2d follows Module::to: a float32 model converted to float64 runs on float64 input") {
  nn::Conv2d m(2, 3, 3);
  CHECK(m.weight.dtype() == f32);
  m.to(f64);
  CHECK(m.weight.dtype() == f64);
  CHECK(m.bias.dtype() == f64);
  CHECK(m(rnd({1, 2, 4, 4})).dtype() == f64);
  CHECK_THROWS_AS(m(rnd({1, 2, 4, 4}).to(f32)), DtypeError);
}

TEST_CASE("Conv2d and MaxPool2d: bad options and bad input throw errors that say what is wrong") {
  check_error([] { nn::Conv2d(0, 3, 3); }, "Conv2d: in_channels (0) and out_channels (3) must be positive");
  check_error([] { nn::Conv2d(2, -1, 3); }, "Conv2d: in_channels (2) and out_channels (-1)");
  check_error([] { nn::Conv2d(2, 3, {3, 0}); }, "Conv2d: kernel_size (3, 0) must be positive");
  check_error([] { nn::Conv2d(nn::Conv2dOptions{.in_channels = 2, .out_channels = 3}); }, "Conv2d: kernel_size (0, 0)");
  check_error([] { nn::Conv2d(2, 3, 3, 0); }, "Conv2d: stride (0, 0) must be positive");
  check_error([] { nn::Conv2d(2, 3, 3, 1, {0, -1}); }, "Conv2d: padding (0, -1) must be non-negative");
  check_error([] { nn::MaxPool2d(0); }, "MaxPool2d: kernel_size (0, 0) must be positive");
  check_error([] { nn::MaxPool2d(2, {1, 0}); }, "MaxPool2d: stride (1, 0) must be positive");
  CHECK_THROWS_AS(nn::MaxPool2d(2, -1), Error);

  nn::Conv2d m(3, 4, 3);
  CHECK_THROWS_AS(m(rnd({2, 5, 8, 8}).to(f32)), ShapeError);
  check_error([&] { m(rnd({2, 5, 8, 8}).to(f32)); }, "Conv2d: input [2,5,8,8]: expected [B, 3, H, W]");
  check_error([&] { m(rnd({3, 8, 8}).to(f32)); }, "Conv2d: input [3,8,8]: expected [B, 3, H, W]");
  check_error([&] { m(rnd({1, 3, 2, 8}).to(f32)); }, "larger than the padded input 2x8");
  CHECK_THROWS_AS(m(Tensor()), StateError);
  nn::MaxPool2d p(3);
  check_error([&] { p(rnd({1, 1, 2, 8})); },
              "max_pool2d: input [1,1,2,8]: the 3x3 kernel is larger than the 2x8 input");
  check_error([&] { p(rnd({8, 8})); }, "max_pool2d: input [8,8] must be 4-D");
  CHECK_THROWS_AS(p(Tensor()), StateError);
}
