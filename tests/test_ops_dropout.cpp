// dropout: the kept fraction and scale, eval mode, reproducibility from a Generator,
// the backward mask, a float64 gradcheck, and every bad input.
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

Tensor targets(const std::vector<std::int64_t>& t) { return from_vector(t); }

}  // namespace

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

