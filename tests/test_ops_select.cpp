// maximum/minimum, comparisons (eq, gt, lt) and selection (where, masked_fill): values
// against hand-written broadcasting loops, tie and NaN rules, float64 gradchecks over
// broadcast pairs (inputs without ties), identities, empty tensors and every bad input.
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

using Dims = std::vector<std::int64_t>;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Offset of the element of an input of shape s that output index idx (of shape os) reads
// under numpy broadcasting.
std::int64_t bcast_offset(const Dims& s, const Dims& os, const Dims& idx) {
  std::int64_t off = 0;
  const std::size_t lead = os.size() - s.size();
  for (std::size_t k = 0; k < s.size(); ++k) off = off * s[k] + (s[k] == 1 ? 0 : idx[lead + k]);
  return off;
}

// Independent broadcasting of three inputs (the output shape is given by hand).
std::vector<double> ref_ternary(const std::vector<double>& a, const Dims& as, const std::vector<double>& b,
                                const Dims& bs, const std::vector<double>& c, const Dims& cs, const Dims& os,
                                const std::function<double(double, double, double)>& f) {
  std::int64_t n = 1;
  for (auto d : os) n *= d;
  std::vector<double> out;
  Dims idx(os.size(), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t r = i;
    for (std::size_t k = os.size(); k-- > 0;) {
      idx[k] = r % os[k];
      r /= os[k];
    }
    out.push_back(f(a[static_cast<std::size_t>(bcast_offset(as, os, idx))],
                    b[static_cast<std::size_t>(bcast_offset(bs, os, idx))],
                    c[static_cast<std::size_t>(bcast_offset(cs, os, idx))]));
  }
  return out;
}

std::vector<double> ref_binary(const std::vector<double>& a, const Dims& as, const std::vector<double>& b,
                               const Dims& bs, const Dims& os, const std::function<double(double, double)>& f) {
  return ref_ternary(a, as, b, bs, {0.0}, {}, os, [&f](double x, double y, double) { return f(x, y); });
}

// Values on a grid of step 0.2 shifted by `offset`: a tensor with offset 0 and one with
// offset 0.1 never tie (every pair differs by at least 0.1), so max/min are smooth there.
Tensor grid(const Shape& s, double offset, std::uint64_t seed) {
  Tensor t = rnd(s, -1.0, 1.0, seed);
  double* p = t.data<double>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = std::floor(p[i] * 5.0) / 5.0 + offset;
  return t;
}

// A 0/1 int64 mask of shape s (about half ones).
Tensor bool_mask(const Shape& s, std::uint64_t seed) {
  const Tensor r = rnd(s, 0.0, 1.0, seed);
  std::vector<std::int64_t> v;
  for (double x : r.to_vector<double>()) v.push_back(x < 0.5 ? 1 : 0);
  return from_vector(v, s);
}

struct Pair {
  Dims a, b, out;
};

const std::vector<Pair> kPairs = {
    {{3, 4}, {3, 4}, {3, 4}}, {{3, 1}, {1, 4}, {3, 4}}, {{2, 3}, {3}, {2, 3}},
    {{4}, {}, {4}},           {{}, {4}, {4}},           {{1}, {2, 1, 3}, {2, 1, 3}},
    {{}, {}, {}},
};

std::vector<double> dv(const Tensor& t) { return t.to_vector<double>(); }

}  // namespace

// ---- maximum / minimum ------------------------------------------------------------

TEST_CASE("maximum/minimum: values match a hand broadcasting loop ([3,1]x[1,4], [2,3]x[3], [4]x[], ...)") {
  for (const Pair& p : kPairs) {
    INFO(Shape(p.a).str() << " x " << Shape(p.b).str());
    const Tensor a = rnd(Shape(p.a), -1.0, 1.0, 1);
    const Tensor b = rnd(Shape(p.b), -1.0, 1.0, 2);
    const Tensor mx = maximum(a, b);
    const Tensor mn = minimum(a, b);
    CHECK(mx.shape() == Shape(p.out));
    CHECK(mn.shape() == Shape(p.out));
    check_values(mx, ref_binary(dv(a), p.a, dv(b), p.b, p.out, [](double x, double y) { return x > y ? x : y; }), 0, 0);
    check_values(mn, ref_binary(dv(a), p.a, dv(b), p.b, p.out, [](double x, double y) { return x < y ? x : y; }), 0, 0);
  }
  // float32.
  const Tensor a = from_vector(std::vector<float>{1.5f, -2.0f, 3.0f});
  const Tensor b = from_vector(std::vector<float>{0.5f}, Shape{1});
  CHECK(maximum(a, b).dtype() == f32);
  check_values(maximum(a, b), {1.5, 0.5, 3.0});
  check_values(minimum(a, b), {0.5, -2.0, 0.5});
}

TEST_CASE("maximum/minimum: NaN on either side gives NaN (PyTorch propagates NaN)") {
  const Tensor a = from_vector(std::vector<double>{NAN, 1.0, NAN});
  const Tensor b = from_vector(std::vector<double>{1.0, NAN, NAN});
  for (const Tensor& y : {maximum(a, b), minimum(a, b), maximum(b, a), minimum(b, a)}) {
    for (double v : dv(y)) CHECK(std::isnan(v));
  }
  check_values(maximum(from_vector(std::vector<double>{-kInf, 2.0}), from_vector(std::vector<double>{1.0, kInf})),
               {1.0, kInf});
}

TEST_CASE("maximum/minimum: the gradient goes to the winner and a tie splits it evenly") {
  Tensor a = from_vector(std::vector<double>{1.0, 2.0, 3.0}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{3.0, 2.0, 1.0}).requires_grad_();
  sum(maximum(a, b)).backward();
  check_values(a.grad(), {0.0, 0.5, 1.0});
  check_values(b.grad(), {1.0, 0.5, 0.0});
  a.zero_grad();
  b.zero_grad();
  sum(minimum(a, b)).backward();
  check_values(a.grad(), {1.0, 0.5, 0.0});
  check_values(b.grad(), {0.0, 0.5, 1.0});
  // Broadcast: b [1] against a [4] collects its share from every element.
  Tensor c = from_vector(std::vector<double>{-1.0, 0.0, 1.0, 2.0}).requires_grad_();
  Tensor z = from_vector(std::vector<double>{0.0}).requires_grad_();
  sum(maximum(c, z)).backward();
  check_values(c.grad(), {0.0, 0.5, 1.0, 1.0});
  check_values(z.grad(), {1.0 + 0.5});
  // maximum(x, x): each side gets half, so x gets the whole gradient.
  Tensor x = from_vector(std::vector<double>{0.3, -0.7}).requires_grad_();
  sum(maximum(x, x)).backward();
  check_values(x.grad(), {1.0, 1.0});
}

TEST_CASE("maximum/minimum: gradcheck over broadcast pairs and 3-D, without ties") {
  for (const Pair& p : kPairs) {
    INFO(Shape(p.a).str() << " x " << Shape(p.b).str());
    const Tensor a = grid(Shape(p.a), 0.0, 3);
    const Tensor b = grid(Shape(p.b), 0.1, 4);
    gradcheck_ok([](const std::vector<Tensor>& v) { return maximum(v[0], v[1]); }, {a, b});
    gradcheck_ok([](const std::vector<Tensor>& v) { return minimum(v[0], v[1]); }, {a, b});
  }
  const Tensor a = grid(Shape{2, 3, 4}, 0.0, 5);
  const Tensor b = grid(Shape{2, 1, 4}, 0.1, 6);
  gradcheck_ok([](const std::vector<Tensor>& v) { return maximum(v[0], v[1]); }, {a, b});
  gradcheck_ok([](const std::vector<Tensor>& v) { return minimum(v[1], v[0]); }, {a, b});
}

TEST_CASE("definition: maximum + minimum == a + b, maximum == where(gt(a,b), a, b), relu == maximum(x, 0)") {
  const Tensor a = rnd(Shape{3, 5}, -2.0, 2.0, 7);
  const Tensor b = rnd(Shape{5}, -2.0, 2.0, 8);
  check_close(add(maximum(a, b), minimum(a, b)), add(a, b), 1e-15, 0);
  check_close(maximum(a, b), where(gt(a, b), a, b), 0, 0);
  check_close(minimum(a, b), where(lt(a, b), a, b), 0, 0);
  check_close(maximum(a, b), neg(minimum(neg(a), neg(b))), 0, 0);
  check_close(relu(a), maximum(a, scalar(0.0, f64)), 0, 0);
}

// ---- comparisons ------------------------------------------------------------------

TEST_CASE("eq/gt/lt: bool with broadcasting, matching a hand loop") {
  for (const Pair& p : kPairs) {
    INFO(Shape(p.a).str() << " x " << Shape(p.b).str());
    // Coarse grid values so equal elements occur.
    const Tensor a = grid(Shape(p.a), 0.0, 9);
    const Tensor b = grid(Shape(p.b), 0.0, 10);
    const Tensor e = eq(a, b), g = gt(a, b), l = lt(a, b);
    for (const Tensor& t : {e, g, l}) {
      CHECK(t.shape() == Shape(p.out));
      CHECK(t.dtype() == b8);
    }
    check_values(e, ref_binary(dv(a), p.a, dv(b), p.b, p.out, [](double x, double y) { return x == y ? 1.0 : 0.0; }), 0, 0);
    check_values(g, ref_binary(dv(a), p.a, dv(b), p.b, p.out, [](double x, double y) { return x > y ? 1.0 : 0.0; }), 0, 0);
    check_values(l, ref_binary(dv(a), p.a, dv(b), p.b, p.out, [](double x, double y) { return x < y ? 1.0 : 0.0; }), 0, 0);
  }
  const Tensor a = from_vector(std::vector<float>{1.0f, 2.0f, 3.0f});
  const Tensor b = from_vector(std::vector<float>{2.0f}, Shape{1});
  CHECK(gt(a, b).dtype() == b8);
  check_values(eq(a, b), {0, 1, 0});
  check_values(gt(a, b), {0, 0, 1});
  check_values(lt(a, b), {1, 0, 0});
}

TEST_CASE("eq/gt/lt: int64 tensors compare as int64 into bool (accuracy = sum(eq(argmax, target)))") {
  const Tensor pred = from_vector(std::vector<std::int64_t>{0, 2, 1, 1});
  const Tensor target = from_vector(std::vector<std::int64_t>{0, 1, 1, 3});
  const Tensor e = eq(pred, target);
  CHECK(e.dtype() == b8);
  CHECK(e.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 1, 0});
  CHECK(sum(e).dtype() == i64);
  CHECK(sum(e).item<std::int64_t>() == 2);
  CHECK(gt(pred, target).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 0, 0});
  CHECK(lt(pred, target).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0, 0, 1});
  // Large int64 values that float64 could not tell apart compare exactly.
  const std::int64_t big = (std::int64_t{1} << 60);
  CHECK(eq(from_vector(std::vector<std::int64_t>{big}), from_vector(std::vector<std::int64_t>{big + 1})).item() == 0.0);
  CHECK(gt(from_vector(std::vector<std::int64_t>{big + 1}), from_vector(std::vector<std::int64_t>{big})).item() == 1.0);
}

TEST_CASE("gt/lt with a scalar: values, float32 compares in float32, int64 compares as double") {
  const Tensor x = from_vector(std::vector<double>{0.5, -1.0, 2.0, 0.0}, Shape{2, 2});
  const Tensor g = gt(x, 0.0);
  CHECK(g.shape() == Shape{2, 2});
  check_values(g, {1, 0, 1, 0}, 0, 0);
  check_values(lt(x, 0.5), {0, 1, 0, 1}, 0, 0);
  check_values(lt(x, 0.0), {0, 1, 0, 0}, 0, 0);
  check_values(gt(scalar(3.0, f64), 2.0), {1.0});
  // 0.1f > 0.1 in double, but PyTorch compares a float32 tensor with the scalar in float32.
  check_values(gt(from_vector(std::vector<float>{0.1f}), 0.1), {0.0});
  check_values(lt(from_vector(std::vector<float>{0.1f}), 0.1), {0.0});
  const Tensor ids = from_vector(std::vector<std::int64_t>{0, 1, 2});
  CHECK(gt(ids, 0.5).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 1});
  CHECK(lt(ids, 1.5).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 1, 0});
  CHECK(gt(ids, 0.5).dtype() == b8);
  CHECK(g.dtype() == b8);
}

TEST_CASE("eq/gt/lt: NaN compares false; the result records nothing (not differentiable)") {
  const Tensor n = from_vector(std::vector<double>{NAN, 1.0});
  const Tensor m = from_vector(std::vector<double>{NAN, NAN});
  check_values(eq(n, m), {0, 0}, 0, 0);
  check_values(gt(n, m), {0, 0}, 0, 0);
  check_values(lt(n, m), {0, 0}, 0, 0);
  check_values(gt(n, 0.0), {0, 1}, 0, 0);
  check_values(lt(n, 0.0), {0, 0}, 0, 0);
  Tensor x = from_vector(std::vector<double>{1.0, 2.0}).requires_grad_();
  CHECK_FALSE(gt(x, 1.5).requires_grad());
  CHECK_FALSE(lt(x, x).requires_grad());
  CHECK_FALSE(eq(x, x).requires_grad());
  check_values(eq(x, x), {1, 1}, 0, 0);
}

// ---- where ------------------------------------------------------------------------

TEST_CASE("where: broadcasting of cond, a and b matches a hand loop; cond of any dtype, nonzero = true") {
  struct Tri {
    Dims c, a, b, out;
  };
  const std::vector<Tri> tris = {
      {{3, 4}, {3, 4}, {3, 4}, {3, 4}}, {{3, 1}, {1, 4}, {}, {3, 4}},   {{2, 3, 4}, {3, 1}, {4}, {2, 3, 4}},
      {{4}, {2, 1}, {1, 4}, {2, 4}},    {{}, {2, 3}, {3}, {2, 3}},      {{1, 1}, {}, {}, {1, 1}},
      {{}, {}, {}, {}},
  };
  for (const Tri& t : tris) {
    INFO(Shape(t.c).str() << " " << Shape(t.a).str() << " " << Shape(t.b).str());
    const Tensor a = rnd(Shape(t.a), -1.0, 1.0, 11);
    const Tensor b = rnd(Shape(t.b), -1.0, 1.0, 12);
    const Tensor ci = bool_mask(Shape(t.c), 13);
    // Float conditions: any nonzero value (negative, fractional, NaN) is true.
    Tensor cf = ci.to(f32);
    float* cp = cf.data<float>();
    for (std::int64_t i = 0; i < cf.numel(); ++i) cp[i] = cp[i] != 0 ? (i % 3 == 0 ? -0.5f : (i % 3 == 1 ? NAN : 7.0f)) : 0.0f;
    const std::vector<double> want =
        ref_ternary(dv(ci), t.c, dv(a), t.a, dv(b), t.b, t.out, [](double c, double x, double y) { return c != 0 ? x : y; });
    for (const Tensor& c : {ci, cf, ci.to(f64)}) {
      const Tensor y = where(c, a, b);
      CHECK(y.shape() == Shape(t.out));
      CHECK(y.dtype() == f64);
      check_values(y, want, 0, 0);
    }
  }
  // float32 a and b.
  const Tensor y = where(from_vector(std::vector<std::int64_t>{1, 0}), from_vector(std::vector<float>{1.0f, 2.0f}),
                         from_vector(std::vector<float>{3.0f}, Shape{1}));
  CHECK(y.dtype() == f32);
  check_values(y, {1.0, 3.0});
}

TEST_CASE("where/masked_fill: a NaN condition is true in every lane (vector body and scalar tail)") {
  for (Dtype d : {f32, f64}) {
    INFO(dtype_name(d));
    // 37 elements: several SIMD batches plus a tail, all of one dtype so the vector path runs.
    const Tensor c = full(Shape{37}, NAN, d);
    const Tensor a = full(Shape{37}, 1.0, d);
    const Tensor b = full(Shape{37}, 2.0, d);
    check_values(where(c, a, b), std::vector<double>(37, 1.0), 0, 0);
    check_values(masked_fill(b, c, 5.0), std::vector<double>(37, 5.0), 0, 0);
    check_values(where(zeros(Shape{37}, d), a, b), std::vector<double>(37, 2.0), 0, 0);
    check_values(where(full(Shape{37}, -0.0, d), a, b), std::vector<double>(37, 2.0), 0, 0);
  }
}

TEST_CASE("where: gradients are masked and summed back to a's and b's shapes (hand-computed)") {
  // cond [3,1] = {1,0,1}; a [1,4]; b 0-d. out [3,4].
  const Tensor c = from_vector(std::vector<std::int64_t>{1, 0, 1}, Shape{3, 1});
  Tensor a = from_vector(std::vector<double>{1, 2, 3, 4}, Shape{1, 4}).requires_grad_();
  Tensor b = scalar(5.0, f64).requires_grad_();
  const Tensor w = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, Shape{3, 4});
  sum(mul(where(c, a, b), w)).backward();
  CHECK(a.grad().shape() == Shape{1, 4});
  CHECK(b.grad().shape() == Shape{});
  // a gets rows 0 and 2 of w; b gets row 1.
  check_values(a.grad(), {1 + 9, 2 + 10, 3 + 11, 4 + 12});
  check_values(b.grad(), {5 + 6 + 7 + 8});
}

TEST_CASE("where: gradcheck with broadcasting of all three (cond int64 and float)") {
  struct Tri {
    Shape c, a, b;
  };
  const std::vector<Tri> tris = {
      {Shape{3, 4}, Shape{3, 4}, Shape{3, 4}}, {Shape{3, 1}, Shape{1, 4}, Shape{}},
      {Shape{2, 3, 4}, Shape{3, 1}, Shape{4}}, {Shape{4}, Shape{2, 1}, Shape{1, 4}},
      {Shape{}, Shape{5}, Shape{}},            {Shape{}, Shape{}, Shape{}},
  };
  for (const Tri& t : tris) {
    INFO(t.c.str() << " " << t.a.str() << " " << t.b.str());
    const Tensor c = bool_mask(t.c, 21);
    const Tensor a = rnd(t.a, -1.0, 1.0, 22);
    const Tensor b = rnd(t.b, -1.0, 1.0, 23);
    gradcheck_ok([c](const std::vector<Tensor>& v) { return where(c, v[0], v[1]); }, {a, b});
    // cond passed through gradcheck as an int64 input (not checked, not perturbed).
    gradcheck_ok([](const std::vector<Tensor>& v) { return where(v[0], v[1], v[2]); }, {c, a, b});
    // A float condition that is a function of the inputs (constant almost everywhere).
    gradcheck_ok([](const std::vector<Tensor>& v) { return where(gt(v[1], 0.05), mul(v[0], v[1]), v[1]); },
                 {a, grid(t.b, 0.1, 24)});
  }
}

TEST_CASE("where: empty tensors") {
  Tensor a = zeros(Shape{0, 3}, f64).requires_grad_();
  Tensor b = from_vector(std::vector<double>{1, 2, 3}).requires_grad_();
  const Tensor c = zeros(Shape{0, 1}, i64);
  const Tensor y = where(c, a, b);
  CHECK(y.shape() == Shape{0, 3});
  sum(y).backward();
  CHECK(a.grad().shape() == Shape{0, 3});
  check_values(b.grad(), {0, 0, 0});
}

// ---- masked_fill ------------------------------------------------------------------

TEST_CASE("masked_fill: value where the (broadcast) mask is nonzero, x elsewhere") {
  struct Case {
    Dims x, m;
  };
  for (const Case& k : std::vector<Case>{{{3, 4}, {3, 4}}, {{3, 4}, {3, 1}}, {{3, 4}, {4}}, {{2, 3, 4}, {1, 3, 1}},
                                         {{2, 3}, {}}, {{}, {}}, {{5}, {1}}}) {
    INFO(Shape(k.x).str() << " mask " << Shape(k.m).str());
    const Tensor x = rnd(Shape(k.x), -1.0, 1.0, 31);
    const Tensor m = bool_mask(Shape(k.m), 32);
    const std::vector<double> want =
        ref_ternary(dv(x), k.x, dv(m), k.m, {0.0}, {}, k.x, [](double xv, double mv, double) { return mv != 0 ? 9.5 : xv; });
    for (const Tensor& mm : {m, m.to(f32), m.to(f64)}) {
      const Tensor y = masked_fill(x, mm, 9.5);
      CHECK(y.shape() == Shape(k.x));
      check_values(y, want, 0, 0);
    }
  }
  // -inf fill (attention masks) in float32.
  const Tensor y = masked_fill(from_vector(std::vector<float>{1.0f, 2.0f, 3.0f}),
                               from_vector(std::vector<std::int64_t>{0, 1, 0}), -kInf);
  CHECK(y.dtype() == f32);
  check_values(y, {1.0, -kInf, 3.0});
}

TEST_CASE("masked_fill: the gradient is zero where filled (hand-computed) and gradcheck passes") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3}).requires_grad_();
  const Tensor m = from_vector(std::vector<std::int64_t>{1, 0, 1}, Shape{3});
  const Tensor w = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3});
  sum(mul(masked_fill(x, m, -1.0), w)).backward();
  check_values(x.grad(), {0, 2, 0, 0, 5, 0});
  for (const auto& [xs, ms] : std::vector<std::pair<Shape, Shape>>{{Shape{3, 4}, Shape{3, 1}},
                                                                   {Shape{2, 3, 4}, Shape{4}},
                                                                   {Shape{}, Shape{}},
                                                                   {Shape{5}, Shape{5}},
                                                                   {Shape{1, 3, 1}, Shape{1}}}) {
    INFO(xs.str() << " mask " << ms.str());
    const Tensor mask = bool_mask(ms, 41);
    gradcheck_ok([mask](const std::vector<Tensor>& v) { return masked_fill(v[0], mask, 0.25); }, {rnd(xs, -1, 1, 42)});
  }
}

TEST_CASE("definition: masked_fill(x, m, v) == where(m, v, x)") {
  const Tensor x = rnd(Shape{4, 6}, -1.0, 1.0, 51);
  const Tensor m = bool_mask(Shape{4, 1}, 52);
  check_close(masked_fill(x, m, 3.0), where(m, full(Shape{}, 3.0, f64), x), 0, 0);
}

TEST_CASE("masked_fill: empty tensors") {
  Tensor x = zeros(Shape{2, 0}, f64).requires_grad_();
  const Tensor y = masked_fill(x, zeros(Shape{0}, i64), 1.0);
  CHECK(y.shape() == Shape{2, 0});
  sum(y).backward();
  CHECK(x.grad().shape() == Shape{2, 0});
}

// ---- bad input ------------------------------------------------------------------

TEST_CASE("maximum/minimum: shape, dtype and undefined-tensor errors name the op") {
  const Tensor a = zeros(Shape{2, 3}, f64);
  for (auto [name, op] : std::vector<std::pair<std::string, Tensor (*)(const Tensor&, const Tensor&)>>{
           {"maximum", &maximum}, {"minimum", &minimum}}) {
    INFO(name);
    check_throws_msg<ShapeError>([&] { op(a, zeros(Shape{4}, f64)); }, {name, "[2,3]", "[4]"});
    check_throws_msg<DtypeError>([&] { op(a, zeros(Shape{2, 3}, f32)); }, {name, "float32", "float64"});
    check_throws_msg<DtypeError>([&] { op(a, zeros(Shape{2, 3}, i64)); }, {name, "int64"});
    check_throws_msg<DtypeError>([&] { op(zeros(Shape{2, 3}, i64), zeros(Shape{2, 3}, i64)); }, {name, "int64"});
    check_throws_msg<StateError>([&] { op(a, Tensor()); }, {name});
    check_throws_msg<StateError>([&] { op(Tensor(), a); }, {name});
  }
}

TEST_CASE("eq/gt/lt: shape, dtype and undefined-tensor errors name the op") {
  const Tensor a = zeros(Shape{2, 3}, f64);
  using Cmp = Tensor (*)(const Tensor&, const Tensor&);
  for (auto [name, op] : std::vector<std::pair<std::string, Cmp>>{
           {"eq", &eq}, {"gt", static_cast<Cmp>(&gt)}, {"lt", static_cast<Cmp>(&lt)}}) {
    INFO(name);
    check_throws_msg<ShapeError>([&] { op(a, zeros(Shape{2, 2}, f64)); }, {name, "[2,3]", "[2,2]"});
    check_throws_msg<DtypeError>([&] { op(a, zeros(Shape{2, 3}, f32)); }, {name, "float64", "float32"});
    check_throws_msg<DtypeError>([&] { op(zeros(Shape{3}, i64), zeros(Shape{3}, f64)); }, {name, "int64", "float64"});
    check_throws_msg<StateError>([&] { op(a, Tensor()); }, {name});
    check_throws_msg<StateError>([&] { op(Tensor(), a); }, {name});
  }
  check_throws_msg<StateError>([&] { gt(Tensor(), 0.0); }, {"gt"});
  check_throws_msg<StateError>([&] { lt(Tensor(), 0.0); }, {"lt"});
}

TEST_CASE("where: non-broadcastable shapes, dtypes of a/b and undefined tensors are errors naming the op") {
  const Tensor a = zeros(Shape{2, 3}, f64);
  const Tensor b = zeros(Shape{3}, f64);
  check_throws_msg<ShapeError>([&] { where(zeros(Shape{4}, i64), a, b); }, {"where", "[4]", "[2,3]", "[3]"});
  check_throws_msg<ShapeError>([&] { where(zeros(Shape{2, 1}, i64), a, zeros(Shape{2}, f64)); },
                               {"where", "[2,1]", "[2,3]", "[2]"});
  check_throws_msg<ShapeError>([&] { where(zeros(Shape{3, 3}, i64), a, b); }, {"where", "[3,3]"});
  check_throws_msg<DtypeError>([&] { where(zeros(Shape{3}, i64), a, zeros(Shape{3}, f32)); }, {"where", "float64", "float32"});
  check_throws_msg<DtypeError>([&] { where(zeros(Shape{3}, i64), zeros(Shape{3}, i64), b); }, {"where", "int64"});
  check_throws_msg<StateError>([&] { where(Tensor(), a, b); }, {"where"});
  check_throws_msg<StateError>([&] { where(zeros(Shape{3}, i64), Tensor(), b); }, {"where"});
  check_throws_msg<StateError>([&] { where(zeros(Shape{3}, i64), a, Tensor()); }, {"where"});
}

TEST_CASE("masked_fill: a mask that does not broadcast to x's shape, int64 x and undefined tensors are errors") {
  const Tensor x = zeros(Shape{2, 3}, f64);
  check_throws_msg<ShapeError>([&] { masked_fill(x, zeros(Shape{4}, i64), 0.0); }, {"masked_fill", "[4]", "[2,3]"});
  check_throws_msg<ShapeError>([&] { masked_fill(x, zeros(Shape{2, 2}, i64), 0.0); }, {"masked_fill", "[2,2]", "[2,3]"});
  // The mask may not enlarge x.
  check_throws_msg<ShapeError>([&] { masked_fill(x, zeros(Shape{5, 2, 3}, i64), 0.0); },
                               {"masked_fill", "[5,2,3]", "[2,3]"});
  check_throws_msg<ShapeError>([&] { masked_fill(zeros(Shape{3}, f64), zeros(Shape{2, 1}, i64), 0.0); },
                               {"masked_fill", "[2,1]", "[3]"});
  check_throws_msg<DtypeError>([&] { masked_fill(zeros(Shape{3}, i64), zeros(Shape{3}, i64), 0.0); },
                               {"masked_fill", "int64"});
  check_throws_msg<StateError>([&] { masked_fill(Tensor(), zeros(Shape{3}, i64), 0.0); }, {"masked_fill"});
  check_throws_msg<StateError>([&] { masked_fill(x, Tensor(), 0.0); }, {"masked_fill"});
}
