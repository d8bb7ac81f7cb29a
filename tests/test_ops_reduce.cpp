// Reductions (sum, mean, max, argmax, logsumexp): values against hand-written loops over
// every dim subset (contiguous and non-contiguous, negative dims, keepdim), empty and 0-d
// tensors, the first-maximum and NaN rules, stability at +-1000, float64 gradchecks on
// several shapes, identities, and every bad input.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
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

using Dims = std::vector<std::int64_t>;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Independent reduction: groups the elements of x (shape s) by their index with the
// reduced dims dropped, in row-major order of the kept dims, and folds each group.
struct Groups {
  Dims out_shape;                          // kept dims
  std::vector<std::vector<double>> items;  // per output element, in x's order
};

Groups group(const std::vector<double>& x, const Dims& s, std::set<int> red) {
  if (red.empty())
    for (int d = 0; d < static_cast<int>(s.size()); ++d) red.insert(d);
  Groups g;
  for (int d = 0; d < static_cast<int>(s.size()); ++d)
    if (!red.count(d)) g.out_shape.push_back(s[d]);
  std::int64_t nout = 1;
  for (auto d : g.out_shape) nout *= d;
  g.items.resize(static_cast<std::size_t>(nout));
  Dims idx(s.size(), 0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::int64_t r = static_cast<std::int64_t>(i);
    for (std::size_t k = s.size(); k-- > 0;) {
      idx[k] = r % s[k];
      r /= s[k];
    }
    std::int64_t o = 0;
    for (std::size_t k = 0; k < s.size(); ++k)
      if (!red.count(static_cast<int>(k))) o = o * s[k] + idx[k];
    g.items[static_cast<std::size_t>(o)].push_back(x[i]);
  }
  return g;
}

std::vector<double> fold(const Groups& g, const std::function<double(const std::vector<double>&)>& f) {
  std::vector<double> out;
  for (const auto& items : g.items) out.push_back(f(items));
  return out;
}

double ref_sum(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e;
  return s;
}
double ref_mean(const std::vector<double>& v) { return ref_sum(v) / static_cast<double>(v.size()); }
double ref_max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
double ref_argmax(const std::vector<double>& v) {
  return static_cast<double>(std::max_element(v.begin(), v.end()) - v.begin());  // first maximum
}
double ref_lse(const std::vector<double>& v) {
  // Long double sum of exp around the max: independent of the kernel's shift handling.
  const double m = v.empty() ? 0.0 : ref_max(v);
  long double s = 0;
  for (double e : v) s += std::exp(static_cast<long double>(e - m));
  return m + static_cast<double>(std::log(s));
}

Dims keep_dims(const Dims& s, const std::set<int>& red_in) {
  std::set<int> red = red_in;
  if (red.empty())
    for (int d = 0; d < static_cast<int>(s.size()); ++d) red.insert(d);
  Dims k = s;
  for (int d : red)
    if (d < static_cast<int>(s.size())) k[static_cast<std::size_t>(d)] = 1;  // (a 0-d tensor accepts dim 0)
  return k;
}

// Wraps negative dims for the reference.
std::set<int> wrapped(const std::vector<int>& dims, int nd) {
  std::set<int> r;
  for (int d : dims) r.insert(d < 0 ? d + std::max(nd, 1) : d);
  return r;
}

using Red = std::function<Tensor(const Tensor&, const std::vector<int>&, bool)>;

struct DimCase {
  Dims shape;
  std::vector<int> dims;
};

// Every dim subset of [2,3,4] (contiguous blocks and the non-contiguous {0,2}), negative
// dims, size-1 dims that make a gapped set contiguous, and 0-d / 1-D inputs.
const std::vector<DimCase> kDimCases = {
    {{2, 3, 4}, {0}},       {{2, 3, 4}, {1}},       {{2, 3, 4}, {2}},        {{2, 3, 4}, {-1}},
    {{2, 3, 4}, {0, 1}},    {{2, 3, 4}, {1, 2}},    {{2, 3, 4}, {0, 2}},     {{2, 3, 4}, {2, 0}},
    {{2, 3, 4}, {0, 1, 2}}, {{2, 3, 4}, {}},        {{2, 3, 4}, {-3, -1}},   {{2, 1, 3}, {0, 2}},
    {{1, 3, 1, 4}, {0, 2}}, {{3, 2, 4, 5}, {1, 3}}, {{3, 2, 4, 5}, {0, 2}},  {{5}, {0}},
    {{5}, {}},              {{}, {}},               {{}, {0}},               {{}, {-1}},
    {{3, 4}, {1}},          {{3, 4}, {0}},          {{1, 1}, {0}},           {{4, 1}, {1}},
    {{1, 3, 4}, {0, 2}},    {{3, 4, 1}, {0, 2}},    {{1, 3, 1}, {0, 2}},     {{2, 1, 3, 1}, {1, 3}},
    {{2, 3, 4, 5}, {0, 2, 3}}, {{2, 3, 4, 5}, {0, 1, 3}}, {{2, 3, 4, 5}, {3, 1}},
};

}  // namespace

TEST_CASE("sum/mean/logsumexp over dims: values match hand loops for every dim pattern, keepdim or not") {
  const std::vector<std::tuple<std::string, Red, std::function<double(const std::vector<double>&)>>> reds = {
      {"sum", [](const Tensor& x, const std::vector<int>& d, bool k) { return sum(x, d, k); }, ref_sum},
      {"mean", [](const Tensor& x, const std::vector<int>& d, bool k) { return mean(x, d, k); }, ref_mean},
      {"logsumexp", [](const Tensor& x, const std::vector<int>& d, bool k) { return logsumexp(x, d, k); }, ref_lse},
  };
  for (const DimCase& c : kDimCases) {
    const Tensor x = rnd(Shape(c.shape), -2.0, 2.0, 5);
    const Groups g = group(x.to_vector<double>(), c.shape, wrapped(c.dims, static_cast<int>(c.shape.size())));
    for (const auto& [name, op, ref] : reds) {
      for (bool keep : {false, true}) {
        INFO(name << " " << Shape(c.shape).str() << " dims " << Shape(Dims(c.dims.begin(), c.dims.end())).str()
                  << " keepdim " << keep);
        const Tensor y = op(x, c.dims, keep);
        const Dims want_shape = keep ? keep_dims(c.shape, wrapped(c.dims, static_cast<int>(c.shape.size()))) : g.out_shape;
        CHECK(y.shape() == Shape(want_shape));
        CHECK(y.dtype() == f64);
        check_values(y, fold(g, ref), 1e-13, 1e-13);
      }
    }
  }
}

TEST_CASE("sum/mean/logsumexp over dims: float32 values (sums accumulate in double)") {
  const Tensor x = rnd(Shape{3, 5, 7}, -2.0, 2.0, 6).to(f32);
  const std::vector<double> xv = x.to_vector<double>();
  for (const std::vector<int>& dims : std::vector<std::vector<int>>{{0}, {1}, {2}, {0, 2}, {}}) {
    INFO("dims " << Shape(Dims(dims.begin(), dims.end())).str());
    const Groups g = group(xv, {3, 5, 7}, wrapped(dims, 3));
    CHECK(sum(x, dims).dtype() == f32);
    check_values(sum(x, dims), fold(g, ref_sum), 1e-5, 1e-6);
    check_values(mean(x, dims), fold(g, ref_mean), 1e-6, 1e-6);
    check_values(logsumexp(x, dims), fold(g, ref_lse), 1e-6, 1e-6);
  }
  // 2^24 + 1 ones: a float32 running sum would stop at 2^24.
  const std::int64_t n = (std::int64_t{1} << 24) + 8;
  const Tensor ones32 = ones(Shape{n}, f32);
  CHECK(sum(ones32).item() == static_cast<double>(static_cast<float>(n)));
  CHECK(sum(ones32, {0}).item() == static_cast<double>(static_cast<float>(n)));
  CHECK(mean(ones32).item() == 1.0);
  CHECK(mean(ones32, {0}).item() == 1.0);
}

TEST_CASE("sum(x) and mean(x) over all elements; sum(x, {}) sums everything (PyTorch's dim=[])") {
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3});
  check_values(sum(x), {21.0});
  CHECK(sum(x).shape() == Shape{});
  check_values(mean(x), {3.5});
  CHECK(mean(x).shape() == Shape{});
  check_values(sum(x, {}), {21.0});
  CHECK(sum(x, {}).shape() == Shape{});
  CHECK(sum(x, {}, true).shape() == Shape{1, 1});
  check_values(mean(x, {}, true), {3.5});
  check_values(sum(x, {0}), {5, 7, 9});
  check_values(sum(x, {1}, true), {6, 15});
  CHECK(sum(x, {1}, true).shape() == Shape{2, 1});
  check_values(mean(x, {0}), {2.5, 3.5, 4.5});
  check_values(mean(scalar(4.0, f64)), {4.0});
  check_values(sum(scalar(4.0, f64), {0}), {4.0});
}

TEST_CASE("empty reductions: sum -> 0, mean -> NaN, logsumexp -> -inf, empty outputs stay empty") {
  const Tensor e = zeros(Shape{0, 3}, f64);
  check_values(sum(e), {0.0});
  CHECK(std::isnan(mean(e).item()));
  check_values(sum(e, {0}), {0, 0, 0});
  CHECK(sum(e, {0}).shape() == Shape{3});
  for (double v : mean(e, {0}).to_vector<double>()) CHECK(std::isnan(v));
  check_values(logsumexp(e, {0}), {-kInf, -kInf, -kInf});
  CHECK(sum(e, {1}).shape() == Shape{0});
  CHECK(sum(e, {1}, true).shape() == Shape{0, 1});
  CHECK(mean(e, {1}).shape() == Shape{0});
  CHECK(logsumexp(e, {1}).shape() == Shape{0});
  CHECK(max(zeros(Shape{2, 0}, f64), 0).shape() == Shape{0});
  CHECK(argmax(zeros(Shape{2, 0}, f64), 0).shape() == Shape{0});
  CHECK(sum(zeros(Shape{2, 0, 3}, f64), {0, 2}).shape() == Shape{0});
  CHECK(sum(zeros(Shape{0, 2, 3}, f64), {0, 2}).shape() == Shape{2});
  // Backward through empty reductions.
  Tensor x = zeros(Shape{0, 3}, f64).requires_grad_();
  add(add(sum(sum(x, {0})), sum(mean(x, {1}))), sum(logsumexp(x, {1}, true))).backward();
  CHECK(x.grad().shape() == Shape{0, 3});
}

TEST_CASE("logsumexp: stable at +-1000 and at infinities") {
  const Tensor x = from_vector(std::vector<double>{1000.0, 1000.0, -1000.0, -1000.0}, Shape{2, 2});
  check_values(logsumexp(x, {1}), {1000.0 + std::log(2.0), -1000.0 + std::log(2.0)}, 1e-12, 1e-15);
  check_values(logsumexp(x.to(f32), {1}), {1000.0 + std::log(2.0), -1000.0 + std::log(2.0)}, 1e-3, 1e-7);
  // Along a non-last dim (the strided kernel).
  check_values(logsumexp(x, {0}), {1000.0, 1000.0}, 1e-12, 0);
  check_values(logsumexp(from_vector(std::vector<double>{-kInf, -kInf}), {0}), {-kInf});
  check_values(logsumexp(from_vector(std::vector<double>{-kInf, -kInf}, Shape{2, 1}), {0}), {-kInf});
  check_values(logsumexp(from_vector(std::vector<double>{kInf, 0.0}), {0}), {kInf});
  check_values(logsumexp(from_vector(std::vector<double>{-kInf, 0.0}), {0}), {0.0});
  CHECK(std::isnan(logsumexp(from_vector(std::vector<double>{NAN, 0.0}), {0}).item()));
  // A long row: the SIMD body and tail agree with the reference.
  const Tensor r = rnd(Shape{3, 101}, -50.0, 50.0, 8);
  const Groups g = group(r.to_vector<double>(), {3, 101}, {1});
  check_values(logsumexp(r, {1}), fold(g, ref_lse), 1e-12, 1e-13);
  check_values(logsumexp(r.to(f32), {1}), fold(group(r.to(f32).to_vector<double>(), {3, 101}, {1}), ref_lse), 1e-4, 1e-6);
}

TEST_CASE("logsumexp: the gradient is g * softmax (hand-computed)") {
  Tensor x = from_vector(std::vector<double>{1.0, 2.0, 3.0, -1.0, 0.0, 1000.0}, Shape{2, 3}).requires_grad_();
  const Tensor w = from_vector(std::vector<double>{2.0, -3.0}, Shape{2});
  sum(mul(logsumexp(x, {1}), w)).backward();
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  check_values(x.grad(), {2 * std::exp(1.0) / z, 2 * std::exp(2.0) / z, 2 * std::exp(3.0) / z, 0.0, 0.0, -3.0},
               1e-14, 1e-12);
}

TEST_CASE("max/argmax: values along each dim match hand loops; the first maximum wins ties") {
  for (const DimCase& c : std::vector<DimCase>{{{2, 3, 4}, {0}}, {{2, 3, 4}, {1}}, {{2, 3, 4}, {2}},
                                               {{2, 3, 4}, {-2}}, {{5}, {0}}, {{1, 3, 1}, {1}},
                                               {{1, 3, 1}, {0}}, {{3, 4}, {-1}}}) {
    // Values drawn from a small set so ties are common.
    std::vector<double> xv;
    const Tensor r = rnd(Shape(c.shape), 0.0, 3.0, 9);
    for (double v : r.to_vector<double>()) xv.push_back(std::floor(v));
    const Tensor x = from_vector(xv, Shape(c.shape));
    const Groups g = group(xv, c.shape, wrapped(c.dims, static_cast<int>(c.shape.size())));
    for (bool keep : {false, true}) {
      INFO(Shape(c.shape).str() << " dim " << c.dims[0] << " keepdim " << keep);
      const Dims ws = keep ? keep_dims(c.shape, wrapped(c.dims, static_cast<int>(c.shape.size()))) : g.out_shape;
      const Tensor m = max(x, c.dims[0], keep);
      const Tensor a = argmax(x, c.dims[0], keep);
      CHECK(m.shape() == Shape(ws));
      CHECK(a.shape() == Shape(ws));
      CHECK(a.dtype() == i64);
      check_values(m, fold(g, ref_max), 0, 0);
      check_values(a, fold(g, ref_argmax), 0, 0);
      // float32 gives the same.
      check_values(max(x.to(f32), c.dims[0], keep), fold(g, ref_max), 0, 0);
      check_values(argmax(x.to(f32), c.dims[0], keep), fold(g, ref_argmax), 0, 0);
    }
  }
  const Tensor x = from_vector(std::vector<double>{1.0, 5.0, 5.0, -2.0}, Shape{2, 2});
  check_values(max(x), {5.0});
  CHECK(max(x).shape() == Shape{});
  // 0-d input: dim 0 / -1 are accepted, the result is 0-d.
  CHECK(max(scalar(2.0, f64), 0).shape() == Shape{});
  check_values(max(scalar(2.0, f64), -1, true), {2.0});
  CHECK(argmax(scalar(2.0, f64), 0).item() == 0.0);
  // int64 input to argmax.
  const Tensor ids = from_vector(std::vector<std::int64_t>{3, 9, 9, 1}, Shape{2, 2});
  CHECK(argmax(ids, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
  CHECK(argmax(ids, 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
}

TEST_CASE("max/argmax: NaN counts as the maximum (the first NaN), like PyTorch") {
  const Tensor x = from_vector(std::vector<double>{1.0, NAN, 3.0, NAN, 7.0, 2.0}, Shape{2, 3});
  CHECK(std::isnan(max(x).item()));
  const std::vector<double> m1 = max(x, 1).to_vector<double>();
  CHECK(std::isnan(m1[0]));
  CHECK(std::isnan(m1[1]));
  CHECK(argmax(x, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
  const std::vector<double> m0 = max(x, 0).to_vector<double>();
  CHECK(std::isnan(m0[0]));
  CHECK(std::isnan(m0[1]));
  CHECK(m0[2] == 3.0);
  CHECK(argmax(x, 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 0});
  check_values(max(from_vector(std::vector<double>{-kInf, -kInf})), {-kInf});
}

TEST_CASE("max: the gradient goes to the first maximum only (all elements and along a dim)") {
  Tensor x = from_vector(std::vector<double>{1.0, 3.0, 3.0, 2.0}).requires_grad_();
  mul(max(x), 2.0).backward();
  check_values(x.grad(), {0.0, 2.0, 0.0, 0.0});
  // [2,3] along dim 0 with a tie in column 1; along dim 1 with a tie in row 1.
  Tensor y = from_vector(std::vector<double>{4.0, 1.0, 0.0, 4.0, 1.0, 5.0}, Shape{2, 3}).requires_grad_();
  sum(mul(max(y, 0), from_vector(std::vector<double>{1.0, 2.0, 3.0}))).backward();
  check_values(y.grad(), {1.0, 2.0, 0.0, 0.0, 0.0, 3.0});
  y.zero_grad();
  sum(mul(max(y, 1, true), from_vector(std::vector<double>{10.0, 20.0}, Shape{2, 1}))).backward();
  check_values(y.grad(), {10.0, 0.0, 0.0, 0.0, 0.0, 20.0});
  // argmax records nothing.
  CHECK_FALSE(argmax(y, 1).requires_grad());
}

TEST_CASE("reductions: gradcheck on 0-d, [5], [3,4], [2,3,4] and size-1 dims") {
  for (const DimCase& c : kDimCases) {
    INFO(Shape(c.shape).str() << " dims " << Shape(Dims(c.dims.begin(), c.dims.end())).str());
    const Tensor x = rnd(Shape(c.shape), -2.0, 2.0, 81);
    const std::vector<int> dims = c.dims;
    for (bool keep : {false, true}) {
      gradcheck_ok([dims, keep](const std::vector<Tensor>& v) { return sum(v[0], dims, keep); }, {x});
      gradcheck_ok([dims, keep](const std::vector<Tensor>& v) { return mean(v[0], dims, keep); }, {x});
      gradcheck_ok([dims, keep](const std::vector<Tensor>& v) { return logsumexp(v[0], dims, keep); }, {x});
    }
  }
  for (const Shape& s : {Shape{}, Shape{5}, Shape{3, 4}, Shape{2, 3, 4}, Shape{1, 3, 1}}) {
    INFO(s.str());
    // Continuous random values: no ties.
    const Tensor x = rnd(s, -2.0, 2.0, 82);
    gradcheck_ok([](const std::vector<Tensor>& v) { return sum(v[0]); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return mean(v[0]); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return max(v[0]); }, {x});
    for (int d = -std::max(s.size(), 1); d < std::max(s.size(), 1); ++d) {
      for (bool keep : {false, true}) {
        gradcheck_ok([d, keep](const std::vector<Tensor>& v) { return max(v[0], d, keep); }, {x});
      }
    }
  }
  // Large logits: the gradient (a softmax) stays accurate.
  gradcheck_ok([](const std::vector<Tensor>& v) { return logsumexp(v[0], {1}); }, {rnd(Shape{3, 5}, 500.0, 510.0, 83)});
}

TEST_CASE("definition: reductions agree with each other") {
  const Tensor x = rnd(Shape{3, 4, 5}, -3.0, 3.0, 91);
  check_close(sum(x, {0, 1, 2}), sum(x), 1e-13, 1e-13);
  check_close(sum(x, {0, 2}), sum(sum(x, {2}), {0}), 1e-13, 1e-13);
  check_close(mean(x, {1}), div(sum(x, {1}), 4.0), 1e-15, 1e-14);
  check_close(mean(x), div(sum(x), 60.0), 1e-15, 1e-14);
  // logsumexp(x + c) = logsumexp(x) + c; logsumexp >= max; logsumexp(x) = log(sum(exp(x))).
  check_close(logsumexp(add(x, 7.0), {2}), add(logsumexp(x, {2}), 7.0), 1e-13, 1e-13);
  check_close(logsumexp(x, {0, 2}), log(sum(exp(x), {0, 2})), 1e-13, 1e-13);
  for (double d : sub(logsumexp(x, {1}), max(x, 1)).to_vector<double>()) CHECK(d >= 0.0);
  // max along each dim, then the rest, equals the global max.
  CHECK(max(max(max(x, 2), 1), 0).item() == max(x).item());
  // argmax picks the max value.
  const std::vector<std::int64_t> a = argmax(x, 2).to_vector<std::int64_t>();
  const std::vector<double> m = max(x, 2).to_vector<double>();
  const std::vector<double> xv = x.to_vector<double>();
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(xv[i * 5 + static_cast<std::size_t>(a[i])] == m[i]);
}

TEST_CASE("reductions: dim out of range is an IndexError naming the op and the dim") {
  const Tensor x = zeros(Shape{2, 3}, f64);
  check_throws_msg<IndexError>([&] { sum(x, {2}); }, {"sum", "2"});
  check_throws_msg<IndexError>([&] { sum(x, {-3}); }, {"sum", "-3"});
  check_throws_msg<IndexError>([&] { mean(x, {0, 5}); }, {"mean", "5"});
  check_throws_msg<IndexError>([&] { logsumexp(x, {2}); }, {"logsumexp", "2"});
  check_throws_msg<IndexError>([&] { max(x, 2); }, {"max", "2"});
  check_throws_msg<IndexError>([&] { max(x, -3); }, {"max", "-3"});
  check_throws_msg<IndexError>([&] { argmax(x, 2); }, {"argmax", "2"});
  check_throws_msg<IndexError>([&] { sum(scalar(1.0, f64), {1}); }, {"sum", "1"});
  check_throws_msg<IndexError>([&] { max(scalar(1.0, f64), 1); }, {"max", "1"});
}

TEST_CASE("reductions: a dim named twice is an IndexError naming the op") {
  const Tensor x = zeros(Shape{2, 3, 4}, f64);
  check_throws_msg<IndexError>([&] { sum(x, {1, 1}); }, {"sum", "more than once"});
  check_throws_msg<IndexError>([&] { sum(x, {0, -3}); }, {"sum", "more than once"});
  check_throws_msg<IndexError>([&] { mean(x, {2, -1}); }, {"mean", "more than once"});
  check_throws_msg<IndexError>([&] { logsumexp(x, {0, 1, 0}); }, {"logsumexp", "more than once"});
  check_throws_msg<IndexError>([&] { sum(scalar(1.0, f64), {0, -1}); }, {"sum", "more than once"});
}

TEST_CASE("reductions: max/argmax of an empty set is a ShapeError naming the op and the shape") {
  check_throws_msg<ShapeError>([&] { max(zeros(Shape{0}, f64)); }, {"max", "[0]"});
  check_throws_msg<ShapeError>([&] { max(zeros(Shape{2, 0}, f64)); }, {"max", "[2,0]"});
  check_throws_msg<ShapeError>([&] { max(zeros(Shape{0, 3}, f64), 0); }, {"max", "[0,3]"});
  check_throws_msg<ShapeError>([&] { max(zeros(Shape{2, 0}, f64), -1, true); }, {"max", "[2,0]"});
  check_throws_msg<ShapeError>([&] { argmax(zeros(Shape{0, 3}, f64), 0); }, {"argmax", "[0,3]"});
}

TEST_CASE("reductions: int64 input is a DtypeError and an undefined tensor a StateError, naming the op") {
  const Tensor i = zeros(Shape{2, 3}, i64);
  check_throws_msg<DtypeError>([&] { sum(i); }, {"sum", "int64"});
  check_throws_msg<DtypeError>([&] { sum(i, {0}); }, {"sum", "int64"});
  check_throws_msg<DtypeError>([&] { mean(i); }, {"mean", "int64"});
  check_throws_msg<DtypeError>([&] { mean(i, {1}); }, {"mean", "int64"});
  check_throws_msg<DtypeError>([&] { max(i); }, {"max", "int64"});
  check_throws_msg<DtypeError>([&] { max(i, 0); }, {"max", "int64"});
  check_throws_msg<DtypeError>([&] { logsumexp(i, {0}); }, {"logsumexp", "int64"});
  const Tensor u;
  check_throws_msg<StateError>([&] { sum(u); }, {"sum"});
  check_throws_msg<StateError>([&] { sum(u, {0}); }, {"sum"});
  check_throws_msg<StateError>([&] { mean(u); }, {"mean"});
  check_throws_msg<StateError>([&] { mean(u, {0}); }, {"mean"});
  check_throws_msg<StateError>([&] { max(u); }, {"max"});
  check_throws_msg<StateError>([&] { max(u, 0); }, {"max"});
  check_throws_msg<StateError>([&] { argmax(u, 0); }, {"argmax"});
  check_throws_msg<StateError>([&] { logsumexp(u, {0}); }, {"logsumexp"});
}
