// Binary elementwise arithmetic (add, sub, mul, div, their scalar forms, neg, rsub,
// rdiv), sum_to and broadcast_to: values against hand-written broadcasting loops,
// float64 gradchecks over broadcast pairs, the identities tying the ops together, and
// every bad input.
#include <cmath>
#include <functional>
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

// Independent numpy broadcasting: out[idx] = f(a[idx mapped], b[idx mapped]) with the
// output shape given by hand.
std::vector<double> ref_binary(const std::vector<double>& a, const Dims& as, const std::vector<double>& b,
                               const Dims& bs, const Dims& os, const std::function<double(double, double)>& f) {
  std::int64_t n = 1;
  for (auto d : os) n *= d;
  std::vector<double> out(static_cast<std::size_t>(n));
  auto offset = [&](const Dims& s, const Dims& idx) {
    std::int64_t off = 0;
    const std::size_t lead = os.size() - s.size();
    for (std::size_t k = 0; k < s.size(); ++k) off = off * s[k] + (s[k] == 1 ? 0 : idx[lead + k]);
    return off;
  };
  Dims idx(os.size(), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t r = i;
    for (std::size_t k = os.size(); k-- > 0;) {
      idx[k] = r % os[k];
      r /= os[k];
    }
    out[static_cast<std::size_t>(i)] = f(a[static_cast<std::size_t>(offset(as, idx))], b[static_cast<std::size_t>(offset(bs, idx))]);
  }
  return out;
}

// f() throws E and its message contains every needle.
struct Pair {
  Dims a, b, out;
};

// The broadcast pairs of the brief plus the equal-shape fast path.
const std::vector<Pair> kPairs = {
    {{3, 4}, {3, 4}, {3, 4}},  {{3, 1}, {1, 4}, {3, 4}}, {{2, 3}, {3}, {2, 3}},
    {{4}, {}, {4}},            {{}, {4}, {4}},           {{1}, {2, 1, 3}, {2, 1, 3}},
    {{2, 1, 3}, {1}, {2, 1, 3}}, {{}, {}, {}},
    // A block repeated along leading dims (the row loop), on either side.
    {{1, 3}, {4, 2, 3}, {4, 2, 3}}, {{4, 2, 3}, {2, 3}, {4, 2, 3}},
};

using BinOp = Tensor (*)(const Tensor&, const Tensor&);

struct NamedOp {
  const char* name;
  BinOp op;
  std::function<double(double, double)> ref;
};

const std::vector<NamedOp> kOps = {
    {"add", static_cast<BinOp>(&add), [](double x, double y) { return x + y; }},
    {"sub", static_cast<BinOp>(&sub), [](double x, double y) { return x - y; }},
    {"mul", static_cast<BinOp>(&mul), [](double x, double y) { return x * y; }},
    {"div", static_cast<BinOp>(&div), [](double x, double y) { return x / y; }},
};

}  // namespace

TEST_CASE("add/sub/mul/div: hand-computed values, same shape") {
  Tensor a = from_vector(std::vector<double>{1.0, -2.0, 3.5, 0.0});
  Tensor b = from_vector(std::vector<double>{4.0, 0.5, -2.0, 8.0});
  check_values(add(a, b), {5.0, -1.5, 1.5, 8.0});
  check_values(sub(a, b), {-3.0, -2.5, 5.5, -8.0});
  check_values(mul(a, b), {4.0, -1.0, -7.0, 0.0});
  check_values(div(a, b), {0.25, -4.0, -1.75, 0.0});
  check_values(a + b, {5.0, -1.5, 1.5, 8.0});
  check_values(a - b, {-3.0, -2.5, 5.5, -8.0});
  check_values(a * b, {4.0, -1.0, -7.0, 0.0});
  check_values(a / b, {0.25, -4.0, -1.75, 0.0});
  check_values(neg(a), {-1.0, 2.0, -3.5, 0.0});
  check_values(-a, {-1.0, 2.0, -3.5, 0.0});
}

TEST_CASE("add/sub/mul/div: broadcasting [3,1]x[1,4], [2,3]x[3], [4]x[], [1]x[2,1,3] match a hand loop") {
  for (const Pair& p : kPairs) {
    const Tensor a = rnd(Shape(p.a), -2.0, 2.0, 11);
    // b away from 0 so div's reference is well conditioned.
    const Tensor b = rnd(Shape(p.b), 0.5, 2.0, 12);
    for (const NamedOp& op : kOps) {
      INFO(std::string(op.name) << " " << Shape(p.a).str() << " x " << Shape(p.b).str());
      const Tensor y = op.op(a, b);
      CHECK(y.shape() == Shape(p.out));
      CHECK(y.dtype() == f64);
      check_values(y, ref_binary(a.to_vector<double>(), p.a, b.to_vector<double>(), p.b, p.out, op.ref), 1e-12, 1e-12);
    }
  }
}

TEST_CASE("add/sub/mul/div: float32 inputs give float32 results with the same values") {
  const std::vector<float> av{1.5f, -2.25f, 3.0f, 0.75f, -1.0f, 2.0f};
  const std::vector<float> bv{0.5f, 4.0f, -1.5f};
  const Tensor a = from_vector(av, Shape{2, 3});
  const Tensor b = from_vector(bv, Shape{3});
  const std::vector<double> ad(av.begin(), av.end()), bd(bv.begin(), bv.end());
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    const Tensor y = op.op(a, b);
    CHECK(y.dtype() == f32);
    check_values(y, ref_binary(ad, {2, 3}, bd, {3}, {2, 3}, op.ref), 1e-6, 1e-6);
  }
}

TEST_CASE("scalar forms: add/sub/mul/div by a double, rsub, rdiv and the operators") {
  const Tensor a = from_vector(std::vector<double>{1.0, -2.0, 4.0}, Shape{3, 1});
  check_values(add(a, 2.5), {3.5, 0.5, 6.5});
  check_values(sub(a, 2.5), {-1.5, -4.5, 1.5});
  check_values(mul(a, -3.0), {-3.0, 6.0, -12.0});
  check_values(div(a, 4.0), {0.25, -0.5, 1.0});
  check_values(rsub(10.0, a), {9.0, 12.0, 6.0});
  check_values(rdiv(2.0, a), {2.0, -1.0, 0.5});
  check_values(a + 1.0, {2.0, -1.0, 5.0});
  check_values(1.0 + a, {2.0, -1.0, 5.0});
  check_values(a - 1.0, {0.0, -3.0, 3.0});
  check_values(1.0 - a, {0.0, 3.0, -3.0});
  check_values(a * 2.0, {2.0, -4.0, 8.0});
  check_values(2.0 * a, {2.0, -4.0, 8.0});
  check_values(a / 2.0, {0.5, -1.0, 2.0});
  check_values(8.0 / a, {8.0, -4.0, 2.0});
  CHECK(add(a, 1.0).shape() == Shape{3, 1});
  // 0-d and float32.
  check_values(rdiv(1.0, scalar(4.0, f64)), {0.25});
  CHECK(rdiv(1.0, scalar(4.0, f64)).shape() == Shape{});
  const Tensor h = from_vector(std::vector<float>{0.5f, -1.5f});
  CHECK(mul(h, 2.0).dtype() == f32);
  check_values(mul(h, 2.0), {1.0, -3.0});
  check_values(rsub(1.0, h), {0.5, 2.5});
}

TEST_CASE("add/sub/mul/div: IEEE edge values (division by zero, inf, NaN) follow IEEE like PyTorch") {
  const Tensor a = from_vector(std::vector<double>{1.0, -1.0, 0.0});
  const Tensor z = zeros(Shape{3}, f64);
  const std::vector<double> q = div(a, z).to_vector<double>();
  CHECK(q[0] == INFINITY);
  CHECK(q[1] == -INFINITY);
  CHECK(std::isnan(q[2]));
  const std::vector<double> r = rdiv(1.0, z).to_vector<double>();
  CHECK(r[0] == INFINITY);
  CHECK(std::isnan(add(a, NAN).to_vector<double>()[0]));
}

TEST_CASE("add/sub/mul/div: gradcheck over the broadcast pairs (incl. 0-d and size-1 dims)") {
  for (const Pair& p : kPairs) {
    INFO(Shape(p.a).str() << " x " << Shape(p.b).str());
    const Tensor a = rnd(Shape(p.a), -2.0, 2.0, 21);
    const Tensor b = rnd(Shape(p.b), 0.5, 2.0, 22);
    gradcheck_ok([](const std::vector<Tensor>& v) { return add(v[0], v[1]); }, {a, b});
    gradcheck_ok([](const std::vector<Tensor>& v) { return sub(v[0], v[1]); }, {a, b});
    gradcheck_ok([](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {a, b});
    gradcheck_ok([](const std::vector<Tensor>& v) { return div(v[0], v[1]); }, {a, b});
  }
  // 3-D against 3-D with size-1 dims on both sides.
  const Tensor a = rnd(Shape{2, 1, 4}, -2.0, 2.0, 23);
  const Tensor b = rnd(Shape{1, 3, 1}, 0.5, 2.0, 24);
  gradcheck_ok([](const std::vector<Tensor>& v) { return div(mul(v[0], v[1]), add(v[1], 1.0)); }, {a, b});
}

TEST_CASE("scalar forms and neg: gradcheck on 0-d, 1-D, 2-D, 3-D") {
  for (const Shape& s : {Shape{}, Shape{5}, Shape{3, 4}, Shape{2, 3, 4}, Shape{1, 3, 1}}) {
    INFO(s.str());
    const Tensor x = rnd(s, 0.5, 2.0, 31);
    gradcheck_ok([](const std::vector<Tensor>& v) { return add(v[0], 1.5); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return sub(v[0], 1.5); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return mul(v[0], -2.5); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return div(v[0], 3.0); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return rsub(2.0, v[0]); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return rdiv(2.0, v[0]); }, {x});
    gradcheck_ok([](const std::vector<Tensor>& v) { return neg(v[0]); }, {x});
  }
}

TEST_CASE("definition: sub(a,b) == add(a,neg(b)) and div(a,b) == mul(a,rdiv(1,b)), with broadcasting") {
  for (const Pair& p : kPairs) {
    INFO(Shape(p.a).str() << " x " << Shape(p.b).str());
    const Tensor a = rnd(Shape(p.a), -3.0, 3.0, 41);
    const Tensor b = rnd(Shape(p.b), 0.25, 3.0, 42);
    check_close(sub(a, b), add(a, neg(b)), 0.0, 0.0);
    // a * (1/b) rounds twice: equal within an ulp or two.
    check_close(div(a, b), mul(a, rdiv(1.0, b)), 1e-15, 1e-14);
    check_close(rsub(2.0, b), add(neg(b), 2.0), 0.0, 0.0);
    check_close(div(a, 4.0), mul(a, 0.25), 0.0, 0.0);
  }
}

TEST_CASE("backward: a value used on both sides gets both contributions (x+x, x*x, x/x)") {
  Tensor x = from_vector(std::vector<double>{3.0, -2.0}).requires_grad_();
  sum(add(x, x)).backward();
  check_values(x.grad(), {2.0, 2.0});
  x.zero_grad();
  sum(mul(x, x)).backward();
  check_values(x.grad(), {6.0, -4.0});
  x.zero_grad();
  sum(div(x, x)).backward();
  check_values(x.grad(), {0.0, 0.0}, 1e-12);
  x.zero_grad();
  sum(sub(x, x)).backward();
  check_values(x.grad(), {0.0, 0.0});
}

TEST_CASE("backward: broadcast gradients are summed back to each input's shape (hand-computed)") {
  // a [3,1], b [1,4]: d sum(a*b)/da[i] = sum_j b[j], d/db[j] = sum_i a[i].
  Tensor a = from_vector(std::vector<double>{1.0, 2.0, 3.0}, Shape{3, 1}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{0.5, -1.0, 2.0, 4.0}, Shape{1, 4}).requires_grad_();
  sum(mul(a, b)).backward();
  CHECK(a.grad().shape() == Shape{3, 1});
  CHECK(b.grad().shape() == Shape{1, 4});
  check_values(a.grad(), {5.5, 5.5, 5.5});
  check_values(b.grad(), {6.0, 6.0, 6.0, 6.0});
  // A 0-d operand collects the sum over everything.
  Tensor s = scalar(2.0, f64).requires_grad_();
  Tensor v = from_vector(std::vector<double>{1.0, 2.0, 3.0, 4.0}).requires_grad_();
  sum(mul(v, s)).backward();
  CHECK(s.grad().shape() == Shape{});
  check_values(s.grad(), {10.0});
  check_values(v.grad(), {2.0, 2.0, 2.0, 2.0});
  // Only the input that requires grad gets one.
  Tensor c = from_vector(std::vector<double>{1.0, 2.0});
  Tensor w = from_vector(std::vector<double>{3.0}).requires_grad_();
  sum(div(c, w)).backward();
  CHECK_FALSE(c.grad().defined());
  check_values(w.grad(), {-(1.0 + 2.0) / 9.0});
}

TEST_CASE("sum_to: values against a hand reduction, and the identity when shapes match") {
  // x [2,3,4] with x[i][j][k] = 100 i + 10 j + k.
  std::vector<double> xv;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) xv.push_back(100.0 * i + 10.0 * j + k);
  const Tensor x = from_vector(xv, Shape{2, 3, 4});
  // -> [3,1]: sum over i and k.
  std::vector<double> want31(3, 0.0), want4(4, 0.0), want1x4(4, 0.0), want2x1x1(2, 0.0);
  double total = 0.0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        const double v = 100.0 * i + 10.0 * j + k;
        want31[j] += v;
        want4[k] += v;
        want2x1x1[i] += v;
        total += v;
      }
  want1x4 = want4;
  Tensor y = sum_to(x, Shape{3, 1});
  CHECK(y.shape() == Shape{3, 1});
  check_values(y, want31);
  check_values(sum_to(x, Shape{4}), want4);
  check_values(sum_to(x, Shape{1, 4}), want1x4);
  check_values(sum_to(x, Shape{2, 1, 1}), want2x1x1);
  check_values(sum_to(x, Shape{}), {total});
  CHECK(sum_to(x, Shape{}).shape() == Shape{});
  check_values(sum_to(x, Shape{2, 3, 4}), xv);
  // float32 too.
  check_values(sum_to(x.to(f32), Shape{3, 1}), want31, 1e-4, 1e-6);
}

TEST_CASE("sum_to and broadcast_to: gradcheck") {
  const Tensor x = rnd(Shape{2, 3, 4}, -1.0, 1.0, 51);
  for (const Shape& s : {Shape{3, 1}, Shape{4}, Shape{1, 4}, Shape{2, 1, 1}, Shape{}, Shape{1, 3, 4}}) {
    INFO(s.str());
    gradcheck_ok([s](const std::vector<Tensor>& v) { return sum_to(v[0], s); }, {x});
  }
  for (const Shape& s : {Shape{3, 1}, Shape{4}, Shape{}, Shape{1, 1, 4}}) {
    INFO(s.str());
    gradcheck_ok([](const std::vector<Tensor>& v) { return broadcast_to(v[0], Shape{2, 3, 4}); },
                 {rnd(s, -1.0, 1.0, 52)});
  }
}

TEST_CASE("broadcast_to: values against a hand loop, and the identity when shapes match") {
  const Tensor x = from_vector(std::vector<double>{1.0, 2.0, 3.0}, Shape{3, 1});
  const Tensor y = broadcast_to(x, Shape{2, 3, 2});
  CHECK(y.shape() == Shape{2, 3, 2});
  check_values(y, {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3});
  check_values(broadcast_to(scalar(7.0, f64), Shape{2, 2}), {7, 7, 7, 7});
  check_values(broadcast_to(x, Shape{3, 1}), {1, 2, 3});
  CHECK(broadcast_to(x, Shape{3, 0}).numel() == 0);
}

TEST_CASE("broadcast_to: whole-block repeats (scalars, suffix shapes) of every dtype match the general path") {
  // A scalar, a row, a row behind leading 1s, and a [2, 3] block under two more dims.
  const std::vector<std::pair<Shape, Shape>> cases{
      {Shape{}, Shape{3, 5}}, {Shape{4}, Shape{3, 4}}, {Shape{1, 1, 4}, Shape{2, 3, 4}},
      {Shape{2, 3}, Shape{2, 2, 3}}, {Shape{1}, Shape{7}}, {Shape{2, 3}, Shape{4, 1, 2, 3}}};
  for (const auto& [xs, ys] : cases) {
    CAPTURE(xs.str());
    CAPTURE(ys.str());
    const std::int64_t n = xs.numel(), m = ys.numel();
    std::vector<double> v(static_cast<std::size_t>(n));
    for (std::int64_t k = 0; k < n; ++k) v[k] = 0.5 + k;
    const Tensor x = from_vector(v, xs);
    const Tensor y = broadcast_to(x, ys);
    REQUIRE(y.shape() == ys);
    // Row-major: element k of the result is x's element k mod numel(x).
    std::vector<double> want(static_cast<std::size_t>(m));
    for (std::int64_t k = 0; k < m; ++k) want[k] = v[k % n];
    check_values(y, want);
    check_values(broadcast_to(x.to(f32), ys), want);
    const std::vector<std::int64_t> ints = broadcast_to(x.to(Dtype::i64), ys).to_vector<std::int64_t>();
    const std::vector<bool> bools = broadcast_to(gt(x, 1.0), ys).to_vector<bool>();
    for (std::int64_t k = 0; k < m; ++k) {
      CHECK(ints[k] == static_cast<std::int64_t>(want[k]));
      CHECK(bools[k] == (want[k] > 1.0));
    }
  }
}

TEST_CASE("binary ops: empty tensors broadcast and backpropagate without crashing") {
  Tensor a = zeros(Shape{0, 3}, f64).requires_grad_();
  Tensor b = from_vector(std::vector<double>{1.0, 2.0, 3.0}).requires_grad_();
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    const Tensor y = op.op(a, b);
    CHECK(y.shape() == Shape{0, 3});
  }
  sum(mul(a, b)).backward();
  CHECK(a.grad().shape() == Shape{0, 3});
  check_values(b.grad(), {0.0, 0.0, 0.0});
  // Reducing an empty dim with sum_to gives zeros.
  check_values(sum_to(zeros(Shape{0, 3}, f64), Shape{1, 3}), {0.0, 0.0, 0.0});
  check_values(sum_to(zeros(Shape{2, 0}, f64), Shape{2, 1}), {0.0, 0.0});
  CHECK(add(zeros(Shape{0}, f64), scalar(1.0, f64)).shape() == Shape{0});
}

TEST_CASE("binary ops: shapes that do not broadcast are a ShapeError naming the op and both shapes") {
  const Tensor a = zeros(Shape{2, 3}, f64);
  const Tensor b = zeros(Shape{4}, f64);
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    check_throws_msg<ShapeError>([&] { op.op(a, b); }, {op.name, "[2,3]", "[4]"});
  }
  check_throws_msg<ShapeError>([&] { add(zeros(Shape{3, 1}, f64), zeros(Shape{2, 4}, f64)); }, {"add", "[3,1]", "[2,4]"});
  check_throws_msg<ShapeError>([&] { mul(zeros(Shape{0}, f64), zeros(Shape{3}, f64)); }, {"mul", "[0]", "[3]"});
}

TEST_CASE("binary ops: float32 with float64 is a DtypeError naming the op and both dtypes") {
  const Tensor a = zeros(Shape{2}, f32);
  const Tensor b = zeros(Shape{2}, f64);
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    check_throws_msg<DtypeError>([&] { op.op(a, b); }, {op.name, "float32", "float64"});
    check_throws_msg<DtypeError>([&] { op.op(b, a); }, {op.name, "float32", "float64"});
  }
}

TEST_CASE("binary ops: int64 inputs are a DtypeError naming the op") {
  const Tensor i = from_vector(std::vector<std::int64_t>{1, 2});
  const Tensor f = zeros(Shape{2}, f64);
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    check_throws_msg<DtypeError>([&] { op.op(i, f); }, {op.name, "int64"});
    check_throws_msg<DtypeError>([&] { op.op(f, i); }, {op.name, "int64"});
    check_throws_msg<DtypeError>([&] { op.op(i, i); }, {op.name, "int64"});
  }
  check_throws_msg<DtypeError>([&] { add(i, 1.0); }, {"add", "int64"});
  check_throws_msg<DtypeError>([&] { mul(i, 2.0); }, {"mul", "int64"});
  check_throws_msg<DtypeError>([&] { rsub(1.0, i); }, {"rsub", "int64"});
  check_throws_msg<DtypeError>([&] { rdiv(1.0, i); }, {"rdiv", "int64"});
  check_throws_msg<DtypeError>([&] { neg(i); }, {"neg", "int64"});
  check_throws_msg<DtypeError>([&] { sum_to(i, Shape{1}); }, {"sum_to", "int64"});
  // broadcast_to only moves values: int64 (and bool) tensors broadcast, as PyTorch's expand.
  CHECK(broadcast_to(i, Shape{2, 2}).dtype() == i64);
}

// sub(x, s) and div(x, s) run as x + (-s) and x * (1/s): their errors must still name
// the op the user called.
TEST_CASE("sub/div by a scalar: errors name the op the user called") {
  const Tensor i = from_vector(std::vector<std::int64_t>{1, 2});
  check_throws_msg<DtypeError>([&] { sub(i, 1.0); }, {"sub"});
  check_throws_msg<DtypeError>([&] { div(i, 2.0); }, {"div"});
}

TEST_CASE("binary ops: an undefined tensor is a StateError naming the op") {
  const Tensor u;
  const Tensor f = zeros(Shape{2}, f64);
  for (const NamedOp& op : kOps) {
    INFO(std::string(op.name));
    check_throws_msg<StateError>([&] { op.op(u, f); }, {op.name});
    check_throws_msg<StateError>([&] { op.op(f, u); }, {op.name});
  }
  check_throws_msg<StateError>([&] { add(u, 1.0); }, {"add"});
  check_throws_msg<StateError>([&] { mul(u, 1.0); }, {"mul"});
  check_throws_msg<StateError>([&] { rsub(1.0, u); }, {"rsub"});
  check_throws_msg<StateError>([&] { rdiv(1.0, u); }, {"rdiv"});
  check_throws_msg<StateError>([&] { neg(u); }, {"neg"});
  check_throws_msg<StateError>([&] { sum_to(u, Shape{1}); }, {"sum_to"});
  check_throws_msg<StateError>([&] { broadcast_to(u, Shape{1}); }, {"broadcast_to"});
}

TEST_CASE("sum_to / broadcast_to: a target the input does not broadcast with is a ShapeError") {
  const Tensor x = zeros(Shape{2, 3}, f64);
  check_throws_msg<ShapeError>([&] { sum_to(x, Shape{4}); }, {"sum_to", "[2,3]", "[4]"});
  check_throws_msg<ShapeError>([&] { sum_to(x, Shape{1, 2, 3}); }, {"sum_to", "[2,3]", "[1,2,3]"});
  check_throws_msg<ShapeError>([&] { sum_to(x, Shape{2, 2}); }, {"sum_to", "[2,3]", "[2,2]"});
  check_throws_msg<ShapeError>([&] { broadcast_to(x, Shape{3}); }, {"broadcast_to", "[2,3]", "[3]"});
  check_throws_msg<ShapeError>([&] { broadcast_to(x, Shape{2, 1}); }, {"broadcast_to", "[2,3]", "[2,1]"});
  check_throws_msg<ShapeError>([&] { broadcast_to(x, Shape{4, 3}); }, {"broadcast_to", "[2,3]", "[4,3]"});
}

// Each input is empty and within the limit; their broadcast [2^40, 2^40, 0] is empty too,
// but its nonzero dims multiply to 2^80.
TEST_CASE("broadcasting: a result shape past the element limit is a ShapeError naming the op") {
  const std::int64_t big = 1LL << 40;
  const Tensor a = zeros({big, 1, 0}), b = zeros({1, big, 0});
  check_throws_msg<ShapeError>([&] { (void)add(a, b); }, {"add", "[1099511627776,1,0]", "[1,1099511627776,0]", "2^60"});
  check_throws_msg<ShapeError>([&] { (void)mul(a, b); }, {"mul"});
  // The 0 first: the running product stayed 0, so [0, 2^40, 2^40] was accepted.
  check_throws_msg<ShapeError>([&] { (void)sub(zeros({0, big, 1}), zeros({0, 1, big})); }, {"sub", "[0,1099511627776,1]"});
  check_throws_msg<ShapeError>([&] { (void)broadcast_to(zeros({0, 1}), Shape{0, 1LL << 62}); },
                               {"broadcast_to", "[0,4611686018427387904]"});
  check_throws_msg<ShapeError>([&] { (void)gt(a, b); }, {"gt"});
  CHECK(broadcast_shapes("op", Shape{big, 1, 0}, Shape{1, 1LL << 20, 0}) == Shape{big, 1LL << 20, 0});
}
