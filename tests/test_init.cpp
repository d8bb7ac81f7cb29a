// nn::init: bounds and moments over large tensors, gains and fans against PyTorch's
// formulas, orthogonality (QᵀQ = I) for square, wide and tall shapes, seeding, and errors.
#include <cmath>
#include <string>
#include <vector>

#include "helpers.hpp"

using xgtest::error_of;
using xgtest::has;

using namespace xg;
namespace init = xg::nn::init;

namespace {

struct Moments {
  double mean = 0, std = 0, min = 1e300, max = -1e300;
};
Moments moments(const Tensor& t) {
  const std::vector<double> v = t.to_vector<double>();
  Moments m;
  for (double x : v) {
    m.mean += x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
  }
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.std += (x - m.mean) * (x - m.mean);
  m.std = std::sqrt(m.std / static_cast<double>(v.size()));
  return m;
}

// The uniform U(-bound, bound): inside the bounds, reaching near both, std bound/sqrt(3).
void check_uniform(const Tensor& t, double bound) {
  const Moments m = moments(t);
  INFO("bound " << bound << " min " << m.min << " max " << m.max << " mean " << m.mean << " std " << m.std);
  CHECK(m.min >= -bound);
  CHECK(m.max <= bound);
  CHECK(m.min < -0.99 * bound);
  CHECK(m.max > 0.99 * bound);
  CHECK(std::fabs(m.mean) < 0.01 * bound);
  CHECK(std::fabs(m.std / (bound / std::sqrt(3.0)) - 1.0) < 0.01);
}

void check_normal(const Tensor& t, double mean, double std) {
  const Moments m = moments(t);
  INFO("want N(" << mean << ", " << std << "): mean " << m.mean << " std " << m.std);
  CHECK(std::fabs(m.mean - mean) < 0.01 * std + 1e-12);
  CHECK(std::fabs(m.std / std - 1.0) < 0.01);
}

// max |QᵀQ - I| (cols orthonormal) or |QQᵀ - I| (rows orthonormal) in double.
double orthogonality_error(const Tensor& t, bool rows_orthonormal, double gain) {
  const std::vector<double> q = t.to_vector<double>();
  const std::int64_t r = t.shape()[0], c = t.numel() / r;
  double err = 0.0;
  const std::int64_t n = rows_orthonormal ? r : c;
  for (std::int64_t a = 0; a < n; ++a) {
    for (std::int64_t b = 0; b < n; ++b) {
      double dot = 0.0;
      if (rows_orthonormal) {
        for (std::int64_t k = 0; k < c; ++k) dot += q[a * c + k] * q[b * c + k];
      } else {
        for (std::int64_t k = 0; k < r; ++k) dot += q[k * c + a] * q[k * c + b];
      }
      err = std::max(err, std::fabs(dot / (gain * gain) - (a == b ? 1.0 : 0.0)));
    }
  }
  return err;
}

}  // namespace

TEST_CASE("init: calculate_gain follows PyTorch's table") {
  using N = init::Nonlinearity;
  CHECK(init::calculate_gain(N::linear) == 1.0);
  CHECK(init::calculate_gain(N::conv2d) == 1.0);
  CHECK(init::calculate_gain(N::sigmoid) == 1.0);
  CHECK(init::calculate_gain(N::tanh) == doctest::Approx(5.0 / 3.0).epsilon(1e-15));
  CHECK(init::calculate_gain(N::relu) == doctest::Approx(std::sqrt(2.0)).epsilon(1e-15));
  CHECK(init::calculate_gain(N::selu) == 0.75);
  CHECK(init::calculate_gain(N::leaky_relu) == doctest::Approx(std::sqrt(2.0 / (1 + 0.01 * 0.01))).epsilon(1e-15));
  CHECK(init::calculate_gain(N::leaky_relu, 0.2) == doctest::Approx(std::sqrt(2.0 / 1.04)).epsilon(1e-15));
  CHECK(init::calculate_gain(N::leaky_relu, std::sqrt(5.0)) == doctest::Approx(std::sqrt(1.0 / 3.0)).epsilon(1e-15));
  CHECK_THROWS_AS(init::calculate_gain(N::leaky_relu, std::nan("")), Error);
}

TEST_CASE("init: fan_in_and_fan_out for linear and conv weights") {
  auto f = init::fan_in_and_fan_out(zeros({8, 3}));
  CHECK(f.fan_in == 3);
  CHECK(f.fan_out == 8);
  f = init::fan_in_and_fan_out(zeros({16, 4, 3, 5}));  // conv [out, in, kh, kw]
  CHECK(f.fan_in == 4 * 15);
  CHECK(f.fan_out == 16 * 15);
  const std::string m = error_of<ShapeError>([] { init::fan_in_and_fan_out(zeros({5})); });
  CHECK(has(m, "fan_in_and_fan_out"));
  CHECK(has(m, "[5]"));
}

TEST_CASE("init: uniform_, normal_, constant_, zeros_, ones_") {
  Generator gen(1);
  check_uniform(init::uniform_(Tensor::empty({200000}, f64), -0.3, 0.3, &gen), 0.3);
  const Moments u = moments(init::uniform_(Tensor::empty({200000}, f32), 2.0, 5.0, &gen));
  CHECK(u.min >= 2.0);
  CHECK(u.max <= 5.0);
  CHECK(std::fabs(u.mean - 3.5) < 0.01);
  check_normal(init::normal_(Tensor::empty({200000}, f32), 0.5, 2.0, &gen), 0.5, 2.0);
  xgtest::check_values(init::constant_(Tensor::empty({2, 2}, f64), 1.25), {1.25, 1.25, 1.25, 1.25}, 0, 0);
  xgtest::check_values(init::zeros_(full({3}, 4.0)), {0, 0, 0}, 0, 0);
  xgtest::check_values(init::ones_(zeros({3}, f64)), {1, 1, 1}, 0, 0);
  // In place on the caller's handle, not recorded.
  Tensor p = zeros({4}, f64).requires_grad_();
  const Tensor r = init::uniform_(p, 0.5, 1.0);
  CHECK(r.is_same(p));
  CHECK(p.is_leaf());
  CHECK(moments(p).min >= 0.5);
  // Works on 0-d and empty tensors.
  CHECK(init::normal_(scalar(0.0)).numel() == 1);
  CHECK(init::uniform_(zeros({0, 3})).numel() == 0);
}

TEST_CASE("init: xavier_uniform_ and xavier_normal_ bounds, std and gain") {
  Generator gen(2);
  // fan_in 300, fan_out 500: a = sqrt(6 / 800)
  check_uniform(init::xavier_uniform_(Tensor::empty({500, 300}, f64), 1.0, &gen), std::sqrt(6.0 / 800.0));
  check_uniform(init::xavier_uniform_(Tensor::empty({500, 300}, f32), 2.0, &gen), 2.0 * std::sqrt(6.0 / 800.0));
  check_normal(init::xavier_normal_(Tensor::empty({500, 300}, f64), 1.0, &gen), 0.0, std::sqrt(2.0 / 800.0));
  // conv weight [16, 8, 5, 5]: fans 200 and 400
  check_uniform(init::xavier_uniform_(Tensor::empty({160, 80, 5, 5}, f64), 1.0, &gen), std::sqrt(6.0 / 6000.0));
}

TEST_CASE("init: kaiming_uniform_ and kaiming_normal_ with modes, slopes and gains") {
  using N = init::Nonlinearity;
  using M = init::FanMode;
  Generator gen(3);
  // Default: leaky_relu with a = 0 (gain sqrt 2), fan_in: bound sqrt(6 / fan_in).
  check_uniform(init::kaiming_uniform_(Tensor::empty({400, 250}, f64), 0.0, M::fan_in, N::leaky_relu, &gen),
                std::sqrt(6.0 / 250.0));
  check_uniform(init::kaiming_uniform_(Tensor::empty({400, 250}, f64), 0.0, M::fan_out, N::relu, &gen),
                std::sqrt(6.0 / 400.0));
  // a = sqrt(5): Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  check_uniform(init::kaiming_uniform_(Tensor::empty({400, 250}, f32), std::sqrt(5.0), M::fan_in, N::leaky_relu, &gen),
                1.0 / std::sqrt(250.0));
  check_normal(init::kaiming_normal_(Tensor::empty({400, 250}, f64), 0.0, M::fan_in, N::relu, &gen), 0.0,
               std::sqrt(2.0 / 250.0));
  check_normal(init::kaiming_normal_(Tensor::empty({400, 250}, f64), 0.0, M::fan_out, N::tanh, &gen), 0.0,
               (5.0 / 3.0) / std::sqrt(400.0));
  // A zero-size dim is a no-op (PyTorch warns and returns).
  CHECK(init::kaiming_uniform_(zeros({3, 0})).numel() == 0);
}

TEST_CASE("init: orthogonal_ gives QᵀQ = I for square, wide and tall shapes, scaled by gain") {
  Generator gen(4);
  for (Dtype dt : {f64, f32}) {
    const double tol = dt == f64 ? 1e-12 : 1e-5;
    INFO(dtype_name(dt));
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({64, 64}, dt), 1.0, &gen), false, 1.0) < tol);
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({64, 64}, dt), 1.0, &gen), true, 1.0) < tol);
    // Wide: rows orthonormal. Tall: columns orthonormal.
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({32, 128}, dt), 1.0, &gen), true, 1.0) < tol);
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({128, 32}, dt), 1.0, &gen), false, 1.0) < tol);
    // Gain scales; more than 2 dims flatten to [size(0), rest].
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({20, 20}, dt), 2.5, &gen), false, 2.5) < tol);
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({6, 2, 3, 2}, dt), 1.0, &gen), true, 1.0) < tol);
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({1, 5}, dt), 1.0, &gen), true, 1.0) < tol);
    CHECK(orthogonality_error(init::orthogonal_(Tensor::empty({5, 1}, dt), 1.0, &gen), false, 1.0) < tol);
  }
}

TEST_CASE("init: orthogonal_ is Haar-distributed, not biased toward the identity") {
  // With the sign correction, E[Q] = 0 elementwise; without it (or with a fixed
  // Householder sign) the diagonal would be biased. Average the diagonal over many draws.
  Generator gen(5);
  double diag = 0.0;
  const int draws = 400;
  for (int k = 0; k < draws; ++k) {
    const std::vector<double> q = init::orthogonal_(Tensor::empty({4, 4}, f64), 1.0, &gen).to_vector<double>();
    diag += q[0] + q[5] + q[10] + q[15];
  }
  diag /= 4.0 * draws;
  // Each entry has variance 1/4: the mean of 1600 is within ~4 * 0.0125 of 0.
  CHECK(std::fabs(diag) < 0.05);
}

TEST_CASE("init: the same seed reproduces every initialiser; the default generator is used without one") {
  auto run_all = [](Generator* g) {
    std::vector<double> out;
    for (const Tensor& t :
         {init::uniform_(Tensor::empty({3, 4}, f64), -1, 1, g), init::normal_(Tensor::empty({3, 4}, f64), 0, 1, g),
          init::xavier_uniform_(Tensor::empty({3, 4}, f64), 1, g), init::xavier_normal_(Tensor::empty({3, 4}, f64), 1, g),
          init::kaiming_uniform_(Tensor::empty({3, 4}, f64), 0, init::FanMode::fan_in, init::Nonlinearity::relu, g),
          init::kaiming_normal_(Tensor::empty({3, 4}, f64), 0, init::FanMode::fan_in, init::Nonlinearity::relu, g),
          init::orthogonal_(Tensor::empty({3, 4}, f64), 1, g)}) {
      const std::vector<double> v = t.to_vector<double>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  Generator a(11), b(11), c(12);
  const std::vector<double> ra = run_all(&a);
  CHECK(ra == run_all(&b));
  CHECK(ra != run_all(&c));
  manual_seed(11);
  CHECK(run_all(nullptr) == ra);  // same stream as Generator(11)
}

TEST_CASE("init: bad tensors and arguments") {
  // Fewer than 2 dims: PyTorch's ValueError, here a ShapeError naming the initialiser.
  for (auto fn : {+[](Tensor t) { init::xavier_uniform_(t); }, +[](Tensor t) { init::xavier_normal_(t); },
                  +[](Tensor t) { init::kaiming_uniform_(t); }, +[](Tensor t) { init::kaiming_normal_(t); },
                  +[](Tensor t) { init::orthogonal_(t); }}) {
    CHECK_THROWS_AS(fn(zeros({5})), ShapeError);
    CHECK_THROWS_AS(fn(scalar(1.0)), ShapeError);
  }
  CHECK(has(error_of<ShapeError>([] { init::xavier_uniform_(zeros({5})); }), "xavier_uniform_"));
  CHECK(has(error_of<ShapeError>([] { init::orthogonal_(zeros({5})); }), "orthogonal_"));
  // int64 tensors: DtypeError.
  const Tensor ints = from_vector(std::vector<std::int64_t>{1, 2, 3, 4}, {2, 2});
  std::string m = error_of<DtypeError>([&] { init::uniform_(ints); });
  CHECK(has(m, "uniform_"));
  CHECK(has(m, "int64"));
  CHECK_THROWS_AS(init::normal_(ints), DtypeError);
  CHECK_THROWS_AS(init::zeros_(ints), DtypeError);
  CHECK_THROWS_AS(init::xavier_uniform_(ints), DtypeError);
  CHECK_THROWS_AS(init::kaiming_normal_(ints), DtypeError);
  CHECK_THROWS_AS(init::orthogonal_(ints), DtypeError);
  CHECK_THROWS_AS(init::constant_(Tensor(), 1.0), StateError);
  // Bad distribution parameters.
  CHECK(has(error_of<Error>([] { init::uniform_(zeros({2}), 1.0, 0.0); }), "uniform_"));
  CHECK(has(error_of<Error>([] { init::normal_(zeros({2}), 0.0, -1.0); }), "normal_"));
  CHECK_THROWS_AS(init::uniform_(zeros({2}), 0.0, std::nan("")), Error);
}
