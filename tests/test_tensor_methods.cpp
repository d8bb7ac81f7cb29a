// Tensor's LibTorch-style methods, compound assignment, printing with << and fmt, the
// from_vector templates and from_blob.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"

using namespace xg;

namespace {

Tensor leaf(std::vector<double> v, const Shape& s) {
  Tensor t = from_vector(v, s);
  t.requires_grad_();
  return t;
}

// Compound assignment on a temporary is deleted (the effect would be lost).
template <class T>
concept AddAssignsOnTemporary = requires(T t) { std::move(t) += 1.0; };
template <class T>
concept AddAssignsOnLvalue = requires(T& t) { t += 1.0; };
static_assert(!AddAssignsOnTemporary<Tensor>);
static_assert(AddAssignsOnLvalue<Tensor>);

}  // namespace

// ---------------------------------------------------------------------------
// Methods: values
// ---------------------------------------------------------------------------

TEST_CASE("methods: sum and mean, over everything, one dim, a list of dims, keepdim") {
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  xgtest::check_values(x.sum(), {21});
  CHECK(x.sum().ndim() == 0);
  xgtest::check_values(x.sum(0), {5, 7, 9});
  xgtest::check_values(x.sum(1), {6, 15});
  xgtest::check_values(x.sum(-1), {6, 15});
  CHECK(x.sum(1, true).shape() == Shape{2, 1});
  CHECK(x.sum({0, 1}).ndim() == 0);
  xgtest::check_values(x.sum({0, 1}), {21});
  // A braced empty list is PyTorch's dim=[] (every dim), not dim 0.
  CHECK(x.sum({}).ndim() == 0);
  xgtest::check_values(x.sum({}), {21});
  xgtest::check_values(x.sum(std::vector<int>{0}), {5, 7, 9});
  xgtest::check_values(x.mean(), {3.5});
  xgtest::check_values(x.mean(0), {2.5, 3.5, 4.5});
  xgtest::check_values(x.mean(1, true), {2, 5});
  CHECK(x.mean(1, true).shape() == Shape{2, 1});
  xgtest::check_values(x.mean({0, 1}), {3.5});
  xgtest::check_values(x.mean({}), {3.5});
  CHECK_THROWS_AS(x.sum(2), IndexError);
  CHECK_THROWS_AS(x.mean(-3), IndexError);
}

TEST_CASE("methods: reshape and view share storage with the tensor") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor r = x.reshape({3, 2});
  Tensor v = x.view({-1});
  CHECK(r.shape() == Shape{3, 2});
  CHECK(v.shape() == Shape{6});
  CHECK(r.data_ptr() == x.data_ptr());
  CHECK(v.data_ptr() == x.data_ptr());
  x.data<double>()[4] = 50;
  CHECK(r.to_vector<double>()[4] == 50);
  CHECK(v.to_vector<double>()[4] == 50);
  CHECK_THROWS_AS(x.view({4, 2}), ShapeError);
  CHECK_THROWS_AS(x.reshape({-1, -1}), ShapeError);
}

TEST_CASE("methods: transpose and t()") {
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(x.t().shape() == Shape{3, 2});
  xgtest::check_values(x.t(), {1, 4, 2, 5, 3, 6});
  xgtest::check_values(x.transpose(0, 1), {1, 4, 2, 5, 3, 6});
  xgtest::check_values(x.transpose(-1, -2), {1, 4, 2, 5, 3, 6});
  // 0-D and 1-D tensors are their own transpose, as in PyTorch.
  const Tensor v = from_vector(std::vector<double>{1, 2, 3});
  CHECK(v.t().shape() == Shape{3});
  xgtest::check_values(v.t(), {1, 2, 3});
  CHECK(scalar(2.0).t().ndim() == 0);
  const Tensor y = zeros({2, 3, 4});
  xgtest::check_throws_msg<ShapeError>([&] { (void)y.t(); }, {"t:", "[2,3,4]", "transpose"});
  CHECK(y.transpose(0, 2).shape() == Shape{4, 3, 2});
  CHECK_THROWS_AS(y.transpose(0, 3), IndexError);
}

TEST_CASE("methods: matmul and the elementwise functions") {
  const Tensor a = from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  const Tensor b = from_vector(std::vector<double>{5, 6, 7, 8}, {2, 2});
  // [[1*5+2*7, 1*6+2*8], [3*5+4*7, 3*6+4*8]]
  xgtest::check_values(a.matmul(b), {19, 22, 43, 50});
  xgtest::check_throws_msg<ShapeError>([&] { (void)a.matmul(zeros({3, 2}, f64)); }, {"matmul", "[2,2]", "[3,2]"});

  const Tensor x = from_vector(std::vector<double>{-1.0, 0.5, 2.0});
  xgtest::check_values(x.exp(), {std::exp(-1.0), std::exp(0.5), std::exp(2.0)}, 1e-12);
  xgtest::check_values(x.tanh(), {std::tanh(-1.0), std::tanh(0.5), std::tanh(2.0)}, 1e-12);
  xgtest::check_values(x.sigmoid(), {1 / (1 + std::exp(1.0)), 1 / (1 + std::exp(-0.5)), 1 / (1 + std::exp(-2.0))},
                       1e-12);
  xgtest::check_values(x.relu(), {0.0, 0.5, 2.0});
  xgtest::check_values(x.pow(2), {1.0, 0.25, 4.0});
  xgtest::check_values(x.pow(3), {-1.0, 0.125, 8.0});
  xgtest::check_values(from_vector(std::vector<double>{4, 9}).pow(0.5), {2, 3}, 1e-12);
  CHECK_THROWS_AS(from_vector(std::vector<std::int64_t>{1, 2}).exp(), DtypeError);
}

TEST_CASE("methods: select, operator[] and chunk") {
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  xgtest::check_values(x[0], {1, 2, 3});
  xgtest::check_values(x[1], {4, 5, 6});
  xgtest::check_values(x[-1], {4, 5, 6});
  CHECK(x[1].shape() == Shape{3});
  CHECK(x[1][2].ndim() == 0);
  CHECK(x[1][2].item() == 6);
  xgtest::check_values(x.select(1, 2), {3, 6});
  xgtest::check_values(x.select(-1, 0), {1, 4});
  xgtest::check_throws_msg<IndexError>([&] { (void)x[2]; }, {"select", "index 2", "[2,3]"});
  CHECK_THROWS_AS(x.select(1, -4), IndexError);
  CHECK_THROWS_AS(scalar(1.0)[0], IndexError);
  // select copies: writing the copy leaves the tensor alone.
  Tensor row = x[0];
  row.data<double>()[0] = 100;
  CHECK(x.to_vector<double>()[0] == 1);

  const std::vector<Tensor> rows = x.chunk(2);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].shape() == Shape{1, 3});
  xgtest::check_values(rows[1], {4, 5, 6});
  const std::vector<Tensor> cols = x.chunk(2, 1);  // sizes 2 and 1
  REQUIRE(cols.size() == 2);
  CHECK(cols[0].shape() == Shape{2, 2});
  xgtest::check_values(cols[0], {1, 2, 4, 5});
  xgtest::check_values(cols[1], {3, 6});
  CHECK_THROWS_AS(x.chunk(0), Error);
  CHECK_THROWS_AS(x.chunk(2, 2), IndexError);
}

TEST_CASE("methods: every method agrees with its free function") {
  const Tensor x = xgtest::rnd({3, 4}, -1, 1, 3);
  const Tensor w = xgtest::rnd({4, 2}, -1, 1, 4);
  xgtest::check_close(x.sum(1, true), sum(x, {1}, true), 0, 0);
  xgtest::check_close(x.mean({0}), mean(x, {0}), 0, 0);
  xgtest::check_close(x.matmul(w), matmul(x, w), 0, 0);
  xgtest::check_close(x.t(), transpose(x, 0, 1), 0, 0);
  xgtest::check_close(x.tanh(), tanh(x), 0, 0);
  xgtest::check_close(x.sigmoid(), sigmoid(x), 0, 0);
  xgtest::check_close(abs(x).pow(1.5), pow(abs(x), 1.5), 0, 0);
  xgtest::check_close(x.relu(), relu(x), 0, 0);
  xgtest::check_close(x.exp(), exp(x), 0, 0);
}

// ---------------------------------------------------------------------------
// Methods: gradients
// ---------------------------------------------------------------------------

TEST_CASE("methods: gradients flow through the methods (float64 gradcheck)") {
  // Inputs kept off relu's kink at 0 and pow's at 0.
  const Tensor x = xgtest::rnd({3, 4}, 0.2, 1.0, 5);
  const Tensor w = xgtest::rnd({4, 2}, -1, 1, 6);
  xgtest::gradcheck_ok(
      [](const std::vector<Tensor>& in) { return in[0].matmul(in[1]).tanh().sum(1); }, {x, w});
  xgtest::gradcheck_ok(
      [](const std::vector<Tensor>& in) { return in[0].pow(3).mean({0}, true).sigmoid().exp(); }, {x});
  xgtest::gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        const std::vector<Tensor> parts = in[0].t().chunk(2);  // [2,3] each
        return (parts[0] * parts[1].relu()).view({-1}).sum({});
      },
      {x});
  xgtest::gradcheck_ok(
      [](const std::vector<Tensor>& in) { return in[0][2] * in[0].select(1, 1).sum() + in[0].reshape({4, 3}).mean(); },
      {x});
}

TEST_CASE("methods: a gradient through a method lands on the leaf") {
  Tensor x = leaf({1, 2, 3}, {3});
  x.pow(2).sum().backward();
  xgtest::check_values(x.grad(), {2, 4, 6});  // d sum(x^2) = 2x
  Tensor y = leaf({1, 2, 3, 4}, {2, 2});
  y[1].sum().backward();
  xgtest::check_values(y.grad(), {0, 0, 1, 1});
}

// ---------------------------------------------------------------------------
// Compound assignment
// ---------------------------------------------------------------------------

TEST_CASE("in place: without autograd the values are written into the storage every alias shares") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  const Tensor alias = a;         // another handle
  const Tensor view = a.view({4});  // a view
  void* storage = a.data_ptr();
  a += from_vector(std::vector<double>{10, 20});  // broadcast over rows
  xgtest::check_values(a, {11, 22, 13, 24});
  a -= 1.0;
  xgtest::check_values(a, {10, 21, 12, 23});
  a *= from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  xgtest::check_values(a, {10, 42, 36, 92});
  a /= 2.0;
  xgtest::check_values(a, {5, 21, 18, 46});
  a += 0.5;
  a *= 2.0;
  a -= from_vector(std::vector<double>{1, 1, 1, 1}, {2, 2});
  a /= from_vector(std::vector<double>{1, 2, 1, 2}, {2, 2});
  xgtest::check_values(a, {10, 21, 36, 46});
  CHECK(a.data_ptr() == storage);
  CHECK(a.is_same(alias));
  xgtest::check_values(alias, {10, 21, 36, 46});
  xgtest::check_values(view, {10, 21, 36, 46});
  CHECK_FALSE(a.requires_grad());
  CHECK(tape_size() == 0);
  // a op= a reads every value before writing any.
  Tensor s = from_vector(std::vector<double>{1, 2, 3});
  s += s;
  xgtest::check_values(s, {2, 4, 6});
  s *= s;
  xgtest::check_values(s, {4, 16, 36});
}

TEST_CASE("in place: a leaf that requires grad is refused while recording, written under NoGradGuard") {
  Tensor w = leaf({1, 2, 3}, {3});
  const Tensor held = w;  // what a model and an optimizer hold
  const std::string msg = xgtest::error_of<StateError>([&] { w += 1.0; });
  CHECK(msg.find("in-place op on a leaf that requires grad") != std::string::npos);
  CHECK(msg.find("NoGradGuard") != std::string::npos);
  CHECK(msg.find("add_") != std::string::npos);
  CHECK(msg.find("[3]") != std::string::npos);
  CHECK_THROWS_AS(w *= from_vector(std::vector<double>{1, 1, 1}), StateError);
  CHECK_THROWS_AS(w -= w, StateError);
  // Nothing happened: same handle, values, leaf, nothing recorded.
  CHECK(w.is_same(held));
  xgtest::check_values(w, {1, 2, 3});
  CHECK(tape_size() == 0);

  // The hand-written SGD step.
  (w * w).sum().backward();  // grad = 2w = [2, 4, 6]
  {
    NoGradGuard g;
    w -= 0.5 * w.grad();
  }
  xgtest::check_values(held, {0, 0, 0});
  CHECK(w.is_same(held));
  CHECK(w.is_leaf());
  CHECK(w.requires_grad());
  xgtest::check_values(w.grad(), {2, 4, 6});  // the update does not touch the gradient
  CHECK(tape_size() == 0);
}

TEST_CASE("in place: while recording, the handle is rebound to the recorded result") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor h = x * 2.0;  // not a leaf
  const Tensor before = h;
  h += x;    // 3x
  h *= x;    // 3x^2
  h -= 1.0;  // 3x^2 - 1
  h /= 2.0;  // (3x^2 - 1) / 2
  xgtest::check_values(h, {1, 5.5, 13});
  CHECK_FALSE(h.is_same(before));
  xgtest::check_values(before, {2, 4, 6});  // other handles keep the old values
  CHECK_FALSE(h.is_leaf());
  h.sum().backward();
  xgtest::check_values(x.grad(), {3, 6, 9});  // d/dx (3x^2 - 1)/2 = 3x

  // A constant accumulator joins the graph when a term requires grad, as in PyTorch.
  Tensor w = leaf({0.5, -1}, {2});
  Tensor total = zeros({2}, f64);
  for (int i = 1; i <= 3; ++i) total += w * static_cast<double>(i);
  CHECK_FALSE(total.is_leaf());
  total.sum().backward();
  xgtest::check_values(w.grad(), {6, 6});
}

TEST_CASE("in place: compound assignment passes float64 gradcheck") {
  const Tensor a = xgtest::rnd({2, 3}, -1, 1, 7);
  const Tensor b = xgtest::rnd({3}, 0.5, 1.5, 8);
  const Tensor c = xgtest::rnd({2, 3}, 0.5, 1.5, 9);
  xgtest::gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor y = in[0] * 1.0;  // a non-leaf copy to assign into
        y += in[1];
        y *= in[2];
        y -= in[1];
        y /= in[2];
        y *= 3.0;
        y += 0.25;
        y /= 2.0;
        y -= 1.0;
        return y;
      },
      {a, b, c});
}

TEST_CASE("in place: shape, dtype, history and undefined errors") {
  Tensor a = zeros({3}, f64);
  // The right-hand side broadcasts to a, never the reverse.
  xgtest::check_throws_msg<ShapeError>([&] { a += zeros({2, 3}, f64); }, {"add_", "[3]", "[2,3]"});
  xgtest::check_throws_msg<ShapeError>([&] { a *= zeros({4}, f64); }, {"mul_", "[3]", "[4]"});
  xgtest::check_throws_msg<DtypeError>([&] { a -= zeros({3}, f32); }, {"float64", "float32"});
  xgtest::check_values(a, {0, 0, 0});
  // Arithmetic is for floating tensors; int64 ones are refused, unchanged.
  Tensor ids = from_vector({1, 2});
  xgtest::check_throws_msg<DtypeError>([&] { ids += 1.0; }, {"add", "int64"});
  xgtest::check_throws_msg<DtypeError>([&] { ids *= ids; }, {"mul", "int64"});
  CHECK(ids.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2});
  Tensor undefined;
  CHECK_THROWS_AS(undefined += 1.0, StateError);
  CHECK_THROWS_AS(a /= Tensor(), StateError);

  // Under NoGradGuard a tensor with history is refused: its graph may have saved it.
  Tensor x = leaf({1, 2}, {2});
  Tensor y = x.exp();  // exp saves its output
  {
    NoGradGuard g;
    xgtest::check_throws_msg<StateError>([&] { y += 1.0; }, {"add_", "'exp'", "detach"});
  }
  y.sum().backward();
  xgtest::check_values(x.grad(), {std::exp(1.0), std::exp(2.0)}, 1e-12);
  // detach() gives a tensor that may be written (and shares y's storage).
  Tensor d = y.detach();
  d += 1.0;
  xgtest::check_values(y, {std::exp(1.0) + 1, std::exp(2.0) + 1}, 1e-12);
}

// ---------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------

TEST_CASE("print: std::ostream << tensor, dtype and shape; fmt of a dtype") {
  const Tensor t = from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
  std::ostringstream os;
  os << t;
  CHECK(os.str() ==
        "tensor([[1.0000, 2.0000],\n"
        "        [3.0000, 4.0000]], dtype=float32, shape=[2,2])");
  CHECK(os.str() == fmt::format("{}", t));
  std::ostringstream ds;
  ds << f32 << ' ' << f64 << ' ' << i64 << ' ' << Shape{2, 3};
  CHECK(ds.str() == "float32 float64 int64 [2,3]");
  CHECK(fmt::format("{}", t.dtype()) == "float32");
  CHECK(fmt::format("{} {}", f64, i64) == "float64 int64");
  CHECK(fmt::format("[{:>8}]", f32) == "[ float32]");  // format specs apply
}

// ---------------------------------------------------------------------------
// from_vector with any element type; from_blob
// ---------------------------------------------------------------------------

TEST_CASE("from_vector: braced lists and vectors of any arithmetic type, with a shape and a dtype") {
  const Tensor d = from_vector({1.0, 2.0, 3.0});
  CHECK(d.dtype() == f64);
  CHECK(d.shape() == Shape{3});
  xgtest::check_values(d, {1, 2, 3});
  const Tensor f = from_vector({1.5f, -2.0f});
  CHECK(f.dtype() == f32);
  xgtest::check_values(f, {1.5, -2});
  const Tensor i = from_vector({1, 2, 3, 4}, {2, 2});
  CHECK(i.dtype() == i64);
  CHECK(i.shape() == Shape{2, 2});
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3, 4});
  const Tensor v = from_vector(std::vector<int>{7, -8});
  CHECK(v.dtype() == i64);
  CHECK(v.to_vector<std::int64_t>() == std::vector<std::int64_t>{7, -8});
  const Tensor vs = from_vector(std::vector<int>{1, 2, 3, 4, 5, 6}, {3, 2});
  CHECK(vs.shape() == Shape{3, 2});
  CHECK(vs.dtype() == i64);
  CHECK(vs.to_vector<std::int64_t>()[5] == 6);
  CHECK_THROWS_AS(from_vector(std::vector<int>{1, 2}, {3}), ShapeError);
  CHECK(from_vector(std::vector<std::int64_t>{5}).dtype() == i64);
  CHECK(from_vector(std::vector<long long>{5, 6}).dtype() == i64);
  CHECK(from_vector(std::vector<std::uint8_t>{255, 0}).to_vector<std::int64_t>() == std::vector<std::int64_t>{255, 0});
  const Tensor sz = from_vector(std::vector<std::size_t>{0, 3, 9}, {3}, f32);
  CHECK(sz.dtype() == f32);
  xgtest::check_values(sz, {0, 3, 9});
  // A dtype converts; a shape of {} with one value is 0-d.
  const Tensor c = from_vector({1, 2, 3, 4, 5, 6}, {3, 2}, f64);
  CHECK(c.dtype() == f64);
  CHECK(c.shape() == Shape{3, 2});
  xgtest::check_values(c, {1, 2, 3, 4, 5, 6});
  CHECK(from_vector({0.5, 1.5}, f32).dtype() == f32);
  CHECK(from_vector(std::vector<short>{1, 2}, f64).dtype() == f64);
  CHECK(from_vector({2.5}, Shape{}).ndim() == 0);
  // `{}` as the second argument is the 0-d shape, never Dtype{} (float32).
  CHECK(from_vector({7}, {}).dtype() == i64);
  CHECK(from_vector({7}, {}).ndim() == 0);
  CHECK(from_vector(std::vector<std::int64_t>{7}, {}).dtype() == i64);
  // 2^53 + 1 survives as int64 (a detour through double would round it).
  const std::int64_t big = (std::int64_t{1} << 53) + 1;
  CHECK(from_vector(std::vector<long long>{big}).to_vector<std::int64_t>()[0] == big);
  // Errors.
  xgtest::check_throws_msg<ShapeError>([] { (void)from_vector({1, 2, 3}, {2, 2}); }, {"from_vector", "3 values", "[2,2]"});
  xgtest::check_throws_msg<Error>([] { (void)from_vector(std::vector<std::uint64_t>{1, std::uint64_t{1} << 63}); },
                                  {"from_vector", "9223372036854775808", "index 1", "int64"});
}

TEST_CASE("from_blob: a tensor over the caller's memory, never copied or freed") {
  // On the stack: if the tensor ever freed it, the test would crash (and ASan would name it).
  alignas(8) double buf[6] = {1, 2, 3, 4, 5, 6};
  {
    Tensor t = from_blob(buf, {2, 3}, f64);
    CHECK(t.data_ptr() == static_cast<void*>(buf));
    CHECK(t.shape() == Shape{2, 3});
    CHECK(t.is_leaf());
    xgtest::check_values(t.sum(1), {6, 15});
    buf[0] = 10;  // the caller's writes show
    CHECK(t.to_vector<double>()[0] == 10);
    t *= 2.0;  // and the tensor's writes land in the buffer
    CHECK(buf[5] == 12);
    const Tensor v = t.view({6});
    CHECK(v.data_ptr() == static_cast<void*>(buf));
    // A differentiable leaf like any other.
    t.requires_grad_();
    (t * t).sum().backward();
    xgtest::check_values(t.grad(), {40, 8, 12, 16, 20, 24});
  }
  CHECK(buf[1] == 4);  // still ours

  std::int64_t ids[3] = {4, 0, 2};
  const Tensor idx = from_blob(ids, {3}, i64);
  CHECK(idx.to_vector<std::int64_t>() == std::vector<std::int64_t>{4, 0, 2});
  float fl[2] = {0.5f, 1.5f};
  CHECK(from_blob(fl, {2}, f32).dtype() == f32);

  // Errors: null memory for elements, misaligned addresses, bad shapes.
  CHECK(from_blob(nullptr, {0, 3}, f32).numel() == 0);
  xgtest::check_throws_msg<Error>([] { (void)from_blob(nullptr, {2}, f32); }, {"from_blob", "null", "[2]"});
  alignas(8) unsigned char raw[32] = {};
  xgtest::check_throws_msg<Error>([&] { (void)from_blob(raw + 4, {2}, f64); }, {"from_blob", "aligned", "float64"});
  CHECK_NOTHROW((void)from_blob(raw + 4, {2}, f32));
  CHECK_THROWS_AS(from_blob(buf, {-1, 2}, f64), ShapeError);
}
