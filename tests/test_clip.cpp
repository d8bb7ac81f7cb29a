// clip_grad_norm / clip_grad_value: PyTorch fixtures (tests/fixtures/sched/clip.npz, written by
// gen_sched.py), hand-derived values, non-finite gradients and bad input.
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using optim::clip_grad_norm;
using optim::clip_grad_value;

namespace {

using Entries = std::map<std::string, Tensor>;

Entries load_clip_fixture() {
  Entries out;
  for (auto& [name, t] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/sched/clip.npz")) out[name] = t;
  return out;
}

// Parameters of `dtype` whose grads are the fixture's "<c>.grad.<i>" entries.
std::vector<Tensor> params_from(const Entries& fx, const std::string& c, Dtype dtype) {
  std::vector<Tensor> params;
  for (int i = 0;; ++i) {
    auto it = fx.find(c + ".grad." + std::to_string(i));
    if (it == fx.end()) break;
    Tensor p = zeros(it->second.shape(), dtype);
    p.requires_grad_();
    p.set_grad(it->second.clone().to(dtype));
    params.push_back(p);
  }
  REQUIRE(!params.empty());
  return params;
}

Tensor param_with_grad(const std::vector<double>& g, Dtype dtype = f64) {
  Tensor p = zeros(Shape{static_cast<std::int64_t>(g.size())}, dtype);
  p.requires_grad_();
  p.set_grad(from_vector(g, Shape{static_cast<std::int64_t>(g.size())}, dtype));
  return p;
}

template <class F>
void check_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("expected an xg::Error");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("clip_grad_norm: matches torch.nn.utils.clip_grad_norm_ on the fixtures (f64, f32, 2 and inf)") {
  const Entries fx = load_clip_fixture();
  for (const char* c : {"norm2_f64_clipped", "norm2_f64_unclipped", "norminf_f64_clipped", "norminf_f64_unclipped",
                        "norm2_f32_clipped", "norminf_f32_clipped", "norm2_f64_zero_max"}) {
    CAPTURE(c);
    const std::string name = c;
    const bool is_f32 = name.find("f32") != std::string::npos;
    // float32: torch accumulates the norm in float32, we in double; both round to ~1e-7.
    const double tol = is_f32 ? 2e-6 : 1e-12;
    std::vector<Tensor> params = params_from(fx, name, is_f32 ? f32 : f64);
    const double total = clip_grad_norm(params, fx.at(name + ".max_norm").item(), fx.at(name + ".norm_type").item());
    const double want = fx.at(name + ".total").item();
    CHECK(std::fabs(total - want) <= tol * want);
    for (std::size_t i = 0; i < params.size(); ++i) {
      CHECK(params[i].grad().dtype() == (is_f32 ? f32 : f64));
      xgtest::check_values(params[i].grad(), fx.at(name + ".out." + std::to_string(i)).to_vector<double>(), tol,
                           tol);
    }
  }
}

TEST_CASE("clip_grad_norm: hand-computed 3-4-12-13 example, both norms") {
  SUBCASE("2-norm: total 13, grads scaled by 6.5 / (13 + 1e-6)") {
    Tensor a = param_with_grad({3.0, -4.0});
    Tensor b = param_with_grad({12.0});
    const double total = clip_grad_norm({a, b}, 6.5);
    CHECK(total == doctest::Approx(13.0).epsilon(1e-15));
    const double c = 6.5 / (13.0 + 1e-6);
    xgtest::check_values(a.grad(), {3 * c, -4 * c}, 1e-15, 1e-15);
    xgtest::check_values(b.grad(), {12 * c}, 1e-15, 1e-15);
    // The clipped gradients have norm max_norm (up to the 1e-6 guard).
    CHECK(std::hypot(std::hypot(3 * c, 4 * c), 12 * c) == doctest::Approx(6.5).epsilon(1e-6));
  }
  SUBCASE("inf-norm: total is the largest magnitude") {
    Tensor a = param_with_grad({3.0, -14.0}, f32);
    Tensor b = param_with_grad({12.0}, f32);
    const double total = clip_grad_norm({a, b}, 7.0, INFINITY);
    CHECK(total == 14.0);
    const float c = static_cast<float>(7.0 / (14.0 + 1e-6));
    xgtest::check_values(a.grad(), {3.0f * c, -14.0f * c}, 0, 0);
    xgtest::check_values(b.grad(), {12.0f * c}, 0, 0);
  }
  SUBCASE("total == max_norm: scaled by max_norm / (max_norm + 1e-6), as torch's clamp(coef, max=1) does") {
    Tensor a = param_with_grad({3.0, 4.0});
    CHECK(clip_grad_norm({a}, 5.0) == 5.0);
    const double c = 5.0 / (5.0 + 1e-6);
    xgtest::check_values(a.grad(), {3 * c, 4 * c}, 0, 1e-16);
  }
  SUBCASE("below max_norm: gradients untouched bit for bit") {
    Tensor a = param_with_grad({0.1, -0.2, 0.3});
    const std::vector<double> before = a.grad().to_vector<double>();
    const double total = clip_grad_norm({a}, 1.0);
    CHECK(total == doctest::Approx(std::sqrt(0.14)).epsilon(1e-15));
    CHECK(a.grad().to_vector<double>() == before);
  }
}

TEST_CASE("clip_grad_norm: parameters without grad are skipped; none at all gives 0") {
  Tensor no_grad = zeros(Shape{4}, f64);
  no_grad.requires_grad_();
  Tensor a = param_with_grad({6.0, 8.0});
  CHECK(clip_grad_norm({no_grad, a}, 5.0) == doctest::Approx(10.0).epsilon(1e-15));
  CHECK(!no_grad.grad().defined());
  CHECK(clip_grad_norm({no_grad}, 1.0) == 0.0);
  CHECK(clip_grad_norm(std::vector<Tensor>{}, 1.0) == 0.0);
  // An empty gradient contributes nothing and does not crash.
  Tensor e = zeros(Shape{0, 3}, f32);
  e.requires_grad_();
  e.set_grad(zeros(Shape{0, 3}, f32));
  Tensor b = param_with_grad({6.0, -8.0});
  CHECK(clip_grad_norm({e, b}, 1.0, INFINITY) == 8.0);
}

TEST_CASE("clip_grad_norm: float64 sum of squares that overflows is rescaled, not reported as inf") {
  Tensor a = param_with_grad({1e200, -1e200});
  Tensor b = param_with_grad({1e200});
  const double total = clip_grad_norm({a, b}, 1.0);
  CHECK(total == doctest::Approx(std::sqrt(3.0) * 1e200).epsilon(1e-14));
  const double c = 1.0 / (total + 1e-6);
  xgtest::check_values(a.grad(), {1e200 * c, -1e200 * c}, 1e-15, 1e-14);
}

TEST_CASE("clip_grad_norm: a NaN or Inf gradient is reported and never written into any gradient") {
  for (Dtype dt : {f32, f64}) {
    for (double norm_type : {2.0, static_cast<double>(INFINITY)}) {
      for (double bad : {std::numeric_limits<double>::quiet_NaN(), static_cast<double>(INFINITY),
                         -static_cast<double>(INFINITY)}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(norm_type);
        CAPTURE(bad);
        Tensor a = param_with_grad({30.0, 40.0}, dt);
        Tensor b = param_with_grad({1.0, bad, 2.0}, dt);
        const std::vector<double> a0 = a.grad().to_vector<double>();
        try {
          (void)clip_grad_norm({a, b}, 1.0, norm_type);
          FAIL("expected NonFiniteNormError");
        } catch (const optim::NonFiniteNormError& e) {
          const std::string msg = e.what();
          CHECK(msg.find("clip_grad_norm") != std::string::npos);
          CHECK(msg.find("parameter 1") != std::string::npos);
          CHECK(msg.find("error_if_nonfinite") != std::string::npos);
        }
        CHECK(a.grad().to_vector<double>() == a0);
        // Opting out of the error: the norm comes back, the gradients still stay as they were.
        const double total = clip_grad_norm({a, b}, 1.0, norm_type, /*error_if_nonfinite=*/false);
        CHECK(!std::isfinite(total));
        CHECK(std::isnan(total) == std::isnan(bad));
        if (!std::isnan(bad)) CHECK(total == INFINITY);
        CHECK(a.grad().to_vector<double>() == a0);
        const std::vector<double> b1 = b.grad().to_vector<double>();
        CHECK(b1[0] == 1.0);
        CHECK(b1[2] == 2.0);
      }
    }
  }
}

TEST_CASE("clip_grad_norm: NaN anywhere wins over Inf elsewhere, as in PyTorch") {
  for (double norm_type : {2.0, static_cast<double>(INFINITY)}) {
    Tensor a = param_with_grad({INFINITY});
    Tensor b = param_with_grad({std::numeric_limits<double>::quiet_NaN()});
    CHECK(std::isnan(clip_grad_norm({a, b}, 1.0, norm_type, false)));
    CHECK(std::isnan(clip_grad_norm({b, a}, 1.0, norm_type, false)));
  }
}

TEST_CASE("clip_grad_norm / clip_grad_value on a module name the offending parameter") {
  nn::Linear lin(3, 2);
  lin.weight.set_grad(full(Shape{2, 3}, 2.0, lin.weight.dtype()));
  lin.bias.set_grad(from_vector(std::vector<double>{1.0, std::numeric_limits<double>::quiet_NaN()}, Shape{2},
                                lin.bias.dtype()));
  check_error([&] { (void)clip_grad_norm(lin, 1.0); }, "'bias'");
  lin.bias.set_grad(full(Shape{2}, 4.0, lin.bias.dtype()));
  // sqrt(6 * 4 + 2 * 16) = sqrt(56)
  CHECK(clip_grad_norm(lin, 100.0) == doctest::Approx(std::sqrt(56.0)).epsilon(1e-12));
  clip_grad_value(lin, 3.0);
  xgtest::check_values(lin.bias.grad(), {3.0, 3.0}, 0, 0);
  xgtest::check_values(lin.weight.grad(), std::vector<double>(6, 2.0), 0, 0);
}

TEST_CASE("clip_grad_norm: bad input is an Error that names the op") {
  Tensor a = param_with_grad({1.0, 2.0});
  for (double p : {1.0, 3.0, 0.0, -static_cast<double>(INFINITY), std::numeric_limits<double>::quiet_NaN()}) {
    CAPTURE(p);
    check_error([&] { (void)clip_grad_norm({a}, 1.0, p); }, "clip_grad_norm: norm_type");
  }
  for (double m : {-1.0, std::numeric_limits<double>::quiet_NaN()}) {
    check_error([&] { (void)clip_grad_norm({a}, m); }, "clip_grad_norm: max_norm");
  }
  check_error([&] { (void)clip_grad_norm({a, a}, 1.0); }, "listed twice");
  check_error([&] { (void)clip_grad_norm({a, Tensor()}, 1.0); }, "parameter 1 is an undefined");
  xgtest::check_values(a.grad(), {1.0, 2.0}, 0, 0);
}

TEST_CASE("clip_grad_value: matches torch.nn.utils.clip_grad_value_ on the fixtures (f64, f32)") {
  const Entries fx = load_clip_fixture();
  for (const char* c : {"value_f64", "value_f32"}) {
    CAPTURE(c);
    const std::string name = c;
    const bool is_f32 = name.find("f32") != std::string::npos;
    std::vector<Tensor> params = params_from(fx, name, is_f32 ? f32 : f64);
    clip_grad_value(params, fx.at(name + ".clip").item());
    for (std::size_t i = 0; i < params.size(); ++i)
      xgtest::check_values(params[i].grad(), fx.at(name + ".out." + std::to_string(i)).to_vector<double>(), 0, 0);
  }
}

TEST_CASE("clip_grad_value: clamps to [-clip, clip], keeps NaN, clamps Inf, skips missing grads") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (Dtype dt : {f32, f64}) {
    Tensor a = param_with_grad({-3.0, -0.5, 0.0, 0.25, 7.0, INFINITY, -INFINITY, nan}, dt);
    Tensor none = zeros(Shape{2}, dt);
    none.requires_grad_();
    clip_grad_value({a, none}, 0.5);
    const std::vector<double> g = a.grad().to_vector<double>();
    const std::vector<double> want = {-0.5, -0.5, 0.0, 0.25, 0.5, 0.5, -0.5};
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(g[i] == want[i]);
    CHECK(std::isnan(g[7]));
    CHECK(!none.grad().defined());
    clip_grad_value({a}, 0.0);
    CHECK(a.grad().to_vector<double>()[0] == 0.0);
  }
}

TEST_CASE("clip_grad_value: bad input is an Error that names the op") {
  Tensor a = param_with_grad({1.0, -2.0});
  check_error([&] { clip_grad_value({a}, -0.1); }, "clip_grad_value: clip");
  check_error([&] { clip_grad_value({a}, std::numeric_limits<double>::quiet_NaN()); }, "clip_grad_value: clip");
  check_error([&] { clip_grad_value({a, a}, 1.0); }, "clip_grad_value");
  xgtest::check_values(a.grad(), {1.0, -2.0}, 0, 0);
}
