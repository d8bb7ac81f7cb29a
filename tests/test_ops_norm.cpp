// layer_norm: values against hand-written double loops, the fused op against its composed
// version (mean/sub/mul/sqrt/div), float64 gradchecks over several shapes, empty
// tensors, and every bad input.
#include <cmath>
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

std::int64_t rows_of(const Shape& s, int trailing) {
  std::int64_t n = 1;
  for (int i = 0; i < s.size() - trailing; ++i) n *= s[i];
  return n;
}

// Textbook layer norm over the last `k` dims: (x - mean) / sqrt(var + eps) * w + b.
std::vector<double> ref_layer_norm(const Tensor& x, int k, const Tensor& w, const Tensor& b, double eps) {
  const std::vector<double> xv = x.to_vector<double>();
  const std::vector<double> wv = w.defined() ? w.to_vector<double>() : std::vector<double>();
  const std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>();
  const std::int64_t n = rows_of(x.shape(), k);
  const std::int64_t d = n > 0 ? x.numel() / n : 0;
  std::vector<double> y(xv.size());
  for (std::int64_t r = 0; r < n; ++r) {
    double mu = 0.0;
    for (std::int64_t j = 0; j < d; ++j) mu += xv[r * d + j];
    mu /= static_cast<double>(d);
    double var = 0.0;
    for (std::int64_t j = 0; j < d; ++j) var += (xv[r * d + j] - mu) * (xv[r * d + j] - mu);
    var /= static_cast<double>(d);
    for (std::int64_t j = 0; j < d; ++j) {
      double v = (xv[r * d + j] - mu) / std::sqrt(var + eps);
      if (!wv.empty()) v *= wv[j];
      if (!bv.empty()) v += bv[j];
      y[r * d + j] = v;
    }
  }
  return y;
}

// layer_norm composed from primitive ops (the definition the fused op must match).
Tensor composed_layer_norm(const Tensor& x, int k, const Tensor& w, const Tensor& b, double eps) {
  std::vector<int> dims;
  for (int i = x.ndim() - k; i < x.ndim(); ++i) dims.push_back(i);
  const Tensor mu = mean(x, dims, true);
  const Tensor c = sub(x, mu);
  const Tensor var = mean(mul(c, c), dims, true);
  Tensor y = div(c, sqrt(add(var, eps)));
  if (w.defined()) y = mul(y, w);
  if (b.defined()) y = add(y, b);
  return y;
}

}  // namespace

// =========================================================================================
// layer_norm
// =========================================================================================

TEST_CASE("layer_norm: values against a hand loop over 1 and 2 trailing dims, with and without affine") {
  struct Case {
    Shape x;
    Shape ns;
  };
  for (const Case& c : {Case{{4, 5}, {5}}, Case{{2, 3, 4}, {3, 4}}, Case{{6}, {6}}, Case{{2, 3, 4}, {4}},
                        Case{{2, 1, 3}, {1, 3}}}) {
    INFO("x " << c.x.str() << " normalized " << c.ns.str());
    const Tensor x = rnd(c.x, -2, 3, 61);
    const Tensor w = rnd(c.ns, 0.5, 1.5, 62), b = rnd(c.ns, -1, 1, 63);
    const int k = c.ns.size();
    for (double eps : {1e-5, 0.1}) {
      check_values(layer_norm(x, c.ns, w, b, eps), ref_layer_norm(x, k, w, b, eps), 1e-12, 1e-12);
      check_values(layer_norm(x, c.ns, Tensor(), Tensor(), eps), ref_layer_norm(x, k, Tensor(), Tensor(), eps), 1e-12,
                   1e-12);
      check_values(layer_norm(x, c.ns, w, Tensor(), eps), ref_layer_norm(x, k, w, Tensor(), eps), 1e-12, 1e-12);
      check_values(layer_norm(x, c.ns, Tensor(), b, eps), ref_layer_norm(x, k, Tensor(), b, eps), 1e-12, 1e-12);
    }
    check_values(layer_norm(x.to(f32), c.ns, w.to(f32), b.to(f32)), ref_layer_norm(x, k, w, b, 1e-5), 1e-5, 1e-5);
  }
}

TEST_CASE("layer_norm: closed-form value of one row") {
  // x = [1, 2, 3, 4]: mean 2.5, var 1.25, eps 0 -> (x - 2.5) / sqrt(1.25)
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4});
  const double s = std::sqrt(1.25);
  check_values(layer_norm(x, {4}, Tensor(), Tensor(), 0.0), {-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s}, 1e-15, 1e-15);
}

TEST_CASE("layer_norm: definition: the fused op matches mean/sub/mul/sqrt/div in values and gradients") {
  struct Case {
    Shape x;
    Shape ns;
  };
  for (const Case& c : {Case{{4, 5}, {5}}, Case{{2, 3, 4}, {3, 4}}, Case{{3, 2, 2}, {2}}}) {
    INFO("x " << c.x.str() << " normalized " << c.ns.str());
    const int k = c.ns.size();
    const Tensor x0 = rnd(c.x, -2, 3, 71), w0 = rnd(c.ns, 0.5, 1.5, 72), b0 = rnd(c.ns, -1, 1, 73);
    const Tensor g = rnd(c.x, -1, 1, 74);
    Tensor x1 = x0.clone().requires_grad_(), w1 = w0.clone().requires_grad_(), b1 = b0.clone().requires_grad_();
    Tensor x2 = x0.clone().requires_grad_(), w2 = w0.clone().requires_grad_(), b2 = b0.clone().requires_grad_();
    const Tensor fused = layer_norm(x1, c.ns, w1, b1, 1e-3);
    const Tensor composed = composed_layer_norm(x2, k, w2, b2, 1e-3);
    check_close(fused, composed, 1e-12, 1e-12);
    sum(mul(fused, g)).backward();
    sum(mul(composed, g)).backward();
    check_close(x1.grad(), x2.grad(), 1e-11, 1e-11);
    check_close(w1.grad(), w2.grad(), 1e-12, 1e-12);
    check_close(b1.grad(), b2.grad(), 1e-12, 1e-12);
    CHECK(fused.op_name() == "layer_norm");
  }
}

TEST_CASE("layer_norm: gradcheck w.r.t. input, weight and bias over several shapes") {
  struct Case {
    Shape x;
    Shape ns;
  };
  for (const Case& c : {Case{{5}, {5}}, Case{{3, 4}, {4}}, Case{{2, 3, 4}, {3, 4}}, Case{{2, 1, 4}, {1, 4}},
                        Case{{2, 3, 2}, {2}}, Case{{3, 1}, {1}}}) {
    INFO("x " << c.x.str() << " normalized " << c.ns.str());
    const Shape ns = c.ns;
    const Tensor x = rnd(c.x, -2, 3, 81), w = rnd(ns, 0.5, 1.5, 82), b = rnd(ns, -1, 1, 83);
    gradcheck_ok([ns](const std::vector<Tensor>& v) { return layer_norm(v[0], ns, v[1], v[2], 1e-5); }, {x, w, b});
    gradcheck_ok([ns](const std::vector<Tensor>& v) { return layer_norm(v[0], ns, Tensor(), Tensor(), 1e-5); }, {x});
    gradcheck_ok([ns](const std::vector<Tensor>& v) { return layer_norm(v[0], ns, v[1], Tensor(), 0.01); }, {x, w});
    gradcheck_ok([ns](const std::vector<Tensor>& v) { return layer_norm(v[0], ns, Tensor(), v[1], 0.01); }, {x, b});
  }
}

TEST_CASE("layer_norm: rows have mean 0 and variance 1 even far from the origin in float32") {
  Generator gen(5);
  const Tensor x = add(uniform({8, 64}, -1, 1, f32, &gen), 1e4);
  const Tensor y = layer_norm(x, {64}, Tensor(), Tensor(), 0.0);
  const std::vector<double> yv = y.to_vector<double>();
  for (int r = 0; r < 8; ++r) {
    double m = 0, v = 0;
    for (int j = 0; j < 64; ++j) m += yv[r * 64 + j];
    m /= 64;
    for (int j = 0; j < 64; ++j) v += (yv[r * 64 + j] - m) * (yv[r * 64 + j] - m);
    v /= 64;
    CHECK(std::fabs(m) < 1e-4);
    CHECK(std::fabs(v - 1.0) < 5e-3);  // x itself is rounded to ~1e-3 at 1e4 in float32
  }
}

TEST_CASE("layer_norm: a constant row gives the bias and a finite gradient") {
  Tensor x = full({2, 3}, 7.0, f64).requires_grad_();
  const Tensor b = from_vector(std::vector<double>{1, 2, 3});
  const Tensor y = layer_norm(x, {3}, Tensor(), b);
  check_values(y, {1, 2, 3, 1, 2, 3}, 1e-12);
  sum(mul(y, rnd({2, 3}))).backward();
  for (double v : x.grad().to_vector<double>()) CHECK(std::isfinite(v));
}

TEST_CASE("layer_norm: empty leading dims work") {
  Tensor x = zeros({0, 4}, f64).requires_grad_();
  Tensor w = ones({4}, f64).requires_grad_();
  const Tensor y = layer_norm(x, {4}, w, Tensor());
  CHECK(y.shape() == Shape{0, 4});
  sum(y).backward();
  check_values(w.grad(), {0, 0, 0, 0});
}

TEST_CASE("layer_norm: bad inputs name the op and the shapes") {
  const Tensor x = rnd({2, 3, 4});
  std::string m = error_of<ShapeError>([&] { layer_norm(x, {3}); });
  CHECK(has(m, "layer_norm"));
  CHECK(has(m, "[2,3,4]"));
  CHECK(has(m, "[3]"));
  m = error_of<ShapeError>([&] { layer_norm(x, {4, 3}); });
  CHECK(has(m, "[4,3]"));
  m = error_of<ShapeError>([&] { layer_norm(x, {1, 2, 3, 4}); });
  CHECK(has(m, "[1,2,3,4]"));
  m = error_of<ShapeError>([&] { layer_norm(x, Shape{}); });
  CHECK(has(m, "layer_norm"));
  m = error_of<ShapeError>([&] { layer_norm(x, {4}, rnd({3})); });
  CHECK(has(m, "weight"));
  m = error_of<ShapeError>([&] { layer_norm(x, {3, 4}, rnd({3, 4}), rnd({12})); });
  CHECK(has(m, "bias"));
  CHECK(has(m, "[12]"));
  m = error_of<DtypeError>([&] { layer_norm(x, {4}, rnd({4}).to(f32)); });
  CHECK(has(m, "layer_norm"));
  m = error_of<DtypeError>([&] { layer_norm(from_vector(std::vector<std::int64_t>{1, 2}), {2}); });
  CHECK(has(m, "layer_norm"));
  m = error_of<Error>([&] { layer_norm(x, {4}, Tensor(), Tensor(), -1.0); });
  CHECK(has(m, "eps"));
}
