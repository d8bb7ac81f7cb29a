#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "helpers.hpp"

using namespace xg;

namespace {
// Every call on an undefined tensor throws StateError naming the call.
template <class F>
void check_undefined(const char* name, F&& f) {
  INFO(name);
  CHECK_THROWS_WITH_AS(f(), doctest::Contains(name), StateError);
}
}  // namespace

// ---------------------------------------------------------------------------
// Factories
// ---------------------------------------------------------------------------

TEST_CASE("tensor: zeros/ones/full/scalar have the requested shape, dtype and value") {
  Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == f32);
  CHECK(z.numel() == 6);
  CHECK(z.ndim() == 2);
  xgtest::check_values(z, {0, 0, 0, 0, 0, 0});
  xgtest::check_values(ones({3}, f64), {1, 1, 1});
  Tensor f = full({2, 1, 2}, -2.5, f64);
  CHECK(f.shape() == Shape{2, 1, 2});
  xgtest::check_values(f, {-2.5, -2.5, -2.5, -2.5});
  Tensor fi = full({2}, 7.9, i64);
  CHECK(fi.dtype() == i64);
  CHECK(fi.to_vector<std::int64_t>() == std::vector<std::int64_t>{7, 7});  // truncated like a C++ cast
  Tensor s = scalar(4.25);
  CHECK(s.ndim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item() == 4.25);
  // *_like copy shape and dtype.
  Tensor l = ones_like(f);
  CHECK(l.shape() == f.shape());
  CHECK(l.dtype() == f64);
  xgtest::check_values(zeros_like(fi), {0, 0});
  xgtest::check_values(full_like(s, 3.0), {3});
  // The default dtype follows set_default_dtype (scoped here).
  {
    DefaultDtypeGuard g(f64);
    CHECK(zeros({1}).dtype() == f64);
    CHECK(rand({1}).dtype() == f64);
  }
  CHECK(zeros({1}).dtype() == f32);
  CHECK_THROWS_AS(set_default_dtype(i64), DtypeError);
}

TEST_CASE("tensor: storage starts on a 64-byte line, whatever was allocated before") {
  // Vector loops split head and tail by address; aligned storage keeps results the same
  // from run to run (a captioning run printed 39.6% or 39.9% depending on its --out path).
  std::vector<Tensor> keep;
  for (std::int64_t n : {1, 3, 5, 16, 17, 100, 1000, 4097}) {
    for (Dtype d : {f32, f64}) {
      keep.push_back(Tensor::empty(Shape{n}, d));
      keep.push_back(zeros({n, 3}, d));
      const auto addr = reinterpret_cast<std::uintptr_t>(keep.back().data_ptr());
      INFO("n=" << n);
      CHECK(addr % 64 == 0);
      CHECK(reinterpret_cast<std::uintptr_t>(keep[keep.size() - 2].data_ptr()) % 64 == 0);
    }
  }
}

TEST_CASE("tensor: arange with float steps, negative steps and empty ranges") {
  xgtest::check_values(arange(4.0, f64), {0, 1, 2, 3});
  xgtest::check_values(arange(0.0, 1.0, 0.25, f64), {0, 0.25, 0.5, 0.75});
  xgtest::check_values(arange(1.0, 2.0, 0.3, f64), {1.0, 1.3, 1.6, 1.9}, 1e-12);
  xgtest::check_values(arange(3.0, 0.0, -1.0, f64), {3, 2, 1});
  xgtest::check_values(arange(0.5, -1.0, -0.5, f64), {0.5, 0.0, -0.5});
  // Empty ranges give a [0] tensor, not an error.
  CHECK(arange(0.0, f64).shape() == Shape{0});
  CHECK(arange(2.0, 1.0, 1.0, f64).shape() == Shape{0});
  CHECK(arange(1.0, 2.0, -1.0, f64).shape() == Shape{0});
  Tensor ai = arange(0.0, 5.0, 2.0, i64);
  CHECK(ai.dtype() == i64);
  CHECK(ai.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 2, 4});
  CHECK(arange(3.0).dtype() == f32);
  CHECK_THROWS_WITH_AS(arange(0.0, 1.0, 0.0), doctest::Contains("arange"), Error);
  CHECK_THROWS_AS(arange(0.0, std::numeric_limits<double>::infinity()), Error);
  CHECK_THROWS_AS(arange(std::nan(""), 1.0), Error);
}

TEST_CASE("tensor: eye") {
  xgtest::check_values(eye(2, f64), {1, 0, 0, 1});
  xgtest::check_values(eye(3), {1, 0, 0, 0, 1, 0, 0, 0, 1});
  CHECK(eye(0).shape() == Shape{0, 0});
  CHECK(eye(2, i64).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 0, 1});
  CHECK_THROWS_AS(eye(-1), ShapeError);
}

TEST_CASE("tensor: from_vector copies the values and checks the shape") {
  std::vector<float> v{1, 2, 3, 4, 5, 6};
  Tensor t = from_vector(v, {3, 2});
  CHECK(t.shape() == Shape{3, 2});
  CHECK(t.dtype() == f32);
  v[0] = 100;  // a copy: the tensor is unaffected
  CHECK(t.to_vector<float>()[0] == 1.f);
  CHECK(from_vector(std::vector<double>{1, 2}).shape() == Shape{2});
  CHECK(from_vector(std::vector<double>{1, 2}).dtype() == f64);
  CHECK(from_vector(std::vector<std::int64_t>{5}).dtype() == i64);
  Tensor s = from_vector(std::vector<double>{2.5}, Shape{});
  CHECK(s.ndim() == 0);
  CHECK(s.item() == 2.5);
  CHECK(from_vector(std::vector<float>{}).shape() == Shape{0});
  CHECK(from_vector(std::vector<float>{}, {0, 4}).shape() == Shape{0, 4});
  Tensor c = from_vector(std::vector<double>{1.5, -2.5}, {2}, f32);
  CHECK(c.dtype() == f32);
  xgtest::check_values(c, {1.5, -2.5});
  CHECK_THROWS_WITH_AS(from_vector(std::vector<float>{1, 2, 3}, {2, 2}), doctest::Contains("from_vector"), ShapeError);
  CHECK_THROWS_AS(from_vector(std::vector<double>{1, 2}, Shape{}), ShapeError);
  CHECK_THROWS_AS(from_vector(std::vector<std::int64_t>{1}, {0}), ShapeError);
}

TEST_CASE("tensor: random factories have the requested shape, dtype and range") {
  Generator g(9);
  Tensor r = rand({3, 4}, f64, &g);
  CHECK(r.shape() == Shape{3, 4});
  CHECK(r.dtype() == f64);
  for (double v : r.to_vector<double>()) CHECK((v >= 0.0 && v < 1.0));
  Tensor u = uniform({1000}, -2.0, 3.0, f32, &g);
  CHECK(u.dtype() == f32);
  for (double v : u.to_vector<double>()) {
    if (!(v >= -2.0 && v <= 3.0)) FAIL("uniform out of range: " << v);
  }
  Tensor n = randn({2, 2, 2}, f32, &g);
  CHECK(n.shape() == Shape{2, 2, 2});
  CHECK(n.dtype() == f32);
  Tensor m = normal({20000}, 5.0, 0.5, f64, &g);
  const std::vector<double> mv = m.to_vector<double>();
  double mean = 0;
  for (double v : mv) mean += v;
  mean /= static_cast<double>(mv.size());
  CHECK(std::fabs(mean - 5.0) < 0.02);
  Tensor ri = randint(-2, 3, {500}, &g);
  CHECK(ri.dtype() == i64);
  bool seen_low = false, seen_high = false;
  for (std::int64_t v : ri.to_vector<std::int64_t>()) {
    if (v < -2 || v >= 3) FAIL("randint out of range: " << v);
    seen_low = seen_low || v == -2;
    seen_high = seen_high || v == 2;
  }
  CHECK(seen_low);
  CHECK(seen_high);
  CHECK(rand({0, 3}).numel() == 0);
  CHECK(randn({}).ndim() == 0);
  // Bad arguments.
  CHECK_THROWS_WITH_AS(rand({2}, i64), doctest::Contains("rand"), DtypeError);
  CHECK_THROWS_AS(randn({2}, i64), DtypeError);
  CHECK_THROWS_AS(uniform({2}, 1.0, 0.0), Error);
  CHECK_THROWS_AS(normal({2}, 0.0, -1.0), Error);
  CHECK_THROWS_AS(randint(3, 3, {2}), Error);
}

TEST_CASE("tensor: negative dims and more than 8 dims are ShapeErrors") {
  CHECK_THROWS_AS(zeros({2, -1}), ShapeError);
  CHECK_THROWS_AS(Tensor::empty({-3}, f32), ShapeError);
  CHECK_THROWS_AS(rand({-1}), ShapeError);
  CHECK_THROWS_WITH_AS(Shape({1, 1, 1, 1, 1, 1, 1, 1, 1}), doctest::Contains("at most 8"), ShapeError);
  Shape s{1, 1, 1, 1, 1, 1, 1, 1};
  CHECK(s.size() == 8);
  CHECK_THROWS_AS(s.push_back(1), ShapeError);
  CHECK_THROWS_AS(s.insert(0, 1), ShapeError);
  CHECK_THROWS_AS(Shape(std::vector<std::int64_t>(9, 1)), ShapeError);
}

// ---------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------

TEST_CASE("tensor: shape accessors, size(-1), item") {
  Tensor t = zeros({2, 3, 4});
  CHECK(t.size(0) == 2);
  CHECK(t.size(-1) == 4);
  CHECK(t.size(-3) == 2);
  CHECK_THROWS_AS(t.size(3), IndexError);
  CHECK_THROWS_AS(t.size(-4), IndexError);
  CHECK(t.shape().str() == "[2,3,4]");
  CHECK(Shape{}.str() == "[]");
  CHECK(Shape{}.numel() == 1);
  CHECK(Shape{3, 0}.numel() == 0);

  CHECK(from_vector(std::vector<double>{2.5}, {1, 1}).item() == 2.5);
  CHECK(scalar(3.0, i64).item<std::int64_t>() == 3);
  CHECK(scalar(1.5f, f32).item<float>() == 1.5f);
  CHECK_THROWS_WITH_AS(zeros({2}).item(), doctest::Contains("item"), ShapeError);
  CHECK_THROWS_AS(zeros({0}).item(), ShapeError);
}

TEST_CASE("tensor: data<T>() checks the dtype") {
  Tensor t = zeros({2}, f32);
  t.data<float>()[1] = 5.f;
  CHECK(t.to_vector<float>()[1] == 5.f);
  CHECK(t.data_ptr() == static_cast<void*>(t.data<float>()));
  CHECK_THROWS_WITH_AS(t.data<double>(), doctest::Contains("float32"), DtypeError);
  CHECK_THROWS_AS(t.data<std::int64_t>(), DtypeError);
  const Tensor ct = t;
  CHECK_THROWS_AS(ct.data<double>(), DtypeError);
  CHECK(ct.data<float>()[1] == 5.f);
}

TEST_CASE("tensor: calls on an undefined tensor are StateErrors naming the call") {
  Tensor u;
  CHECK_FALSE(u.defined());
  check_undefined("shape", [&] { (void)u.shape(); });
  check_undefined("ndim", [&] { (void)u.ndim(); });
  check_undefined("numel", [&] { (void)u.numel(); });
  check_undefined("dtype", [&] { (void)u.dtype(); });
  check_undefined("item", [&] { (void)u.item(); });
  check_undefined("data", [&] { (void)u.data<float>(); });
  check_undefined("data_ptr", [&] { (void)u.data_ptr(); });
  check_undefined("to_vector", [&] { (void)u.to_vector<float>(); });
  check_undefined("clone", [&] { (void)u.clone(); });
  check_undefined("detach", [&] { (void)u.detach(); });
  check_undefined("to", [&] { (void)u.to(f64); });
  check_undefined("requires_grad", [&] { (void)u.requires_grad(); });
  check_undefined("requires_grad_", [&] { (void)u.requires_grad_(); });
  check_undefined("is_leaf", [&] { (void)u.is_leaf(); });
  check_undefined("grad", [&] { (void)u.grad(); });
  check_undefined("set_grad", [&] { u.set_grad(Tensor()); });
  check_undefined("zero_grad", [&] { u.zero_grad(); });
  check_undefined("backward", [&] { u.backward(); });
  check_undefined("op_name", [&] { (void)u.op_name(); });
  // Ops taking an undefined input say so too.
  CHECK_THROWS_AS(add(u, ones({1})), StateError);
}

// ---------------------------------------------------------------------------
// Copies, views and conversion
// ---------------------------------------------------------------------------

TEST_CASE("tensor: copying a handle aliases; clone is independent") {
  Tensor a = from_vector(std::vector<float>{1, 2, 3});
  Tensor alias = a;
  CHECK(alias.is_same(a));
  alias.data<float>()[0] = 10.f;
  CHECK(a.to_vector<float>()[0] == 10.f);

  Tensor c = a.clone();
  CHECK_FALSE(c.is_same(a));
  CHECK(c.data_ptr() != a.data_ptr());
  CHECK(c.to_vector<float>() == a.to_vector<float>());
  c.data<float>()[1] = -1.f;
  CHECK(a.to_vector<float>()[1] == 2.f);
  CHECK(zeros({0, 2}).clone().shape() == Shape{0, 2});
}

TEST_CASE("tensor: clone of a tensor that requires grad passes the gradient through") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3}).requires_grad_();
  Tensor c = a.clone();
  CHECK_FALSE(c.is_leaf());
  CHECK(c.op_name() == "clone");
  sum(mul(c, from_vector(std::vector<double>{4, 5, 6}))).backward();
  xgtest::check_values(a.grad(), {4, 5, 6});
  xgtest::gradcheck_ok([](const std::vector<Tensor>& x) { return x[0].clone(); }, {xgtest::rnd({2, 3})});
}

TEST_CASE("tensor: detach shares storage but has no history") {
  Tensor a = from_vector(std::vector<double>{1, 2}).requires_grad_();
  Tensor y = mul(a, a);
  CHECK_FALSE(y.is_leaf());
  CHECK(y.requires_grad());
  Tensor d = y.detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  CHECK(d.op_name() == "leaf");
  CHECK(d.data_ptr() == y.data_ptr());
  d.data<double>()[0] = 9.0;
  CHECK(y.to_vector<double>()[0] == 9.0);
  // An op on the detached tensor records nothing.
  Tensor z = mul(d, 2.0);
  CHECK_FALSE(z.requires_grad());
  CHECK(z.is_leaf());
}

TEST_CASE("tensor: to(dtype) converts, round trips and returns *this for the same dtype") {
  Tensor a = from_vector(std::vector<float>{1.5f, -2.f, 3.25f});
  CHECK(a.to(f32).is_same(a));
  Tensor d = a.to(f64);
  CHECK(d.dtype() == f64);
  xgtest::check_values(d, {1.5, -2.0, 3.25}, 0, 0);
  Tensor back = d.to(f32);
  CHECK(back.dtype() == f32);
  CHECK(back.to_vector<float>() == a.to_vector<float>());
  // Float to int truncates toward zero; int to float is exact for small ints.
  Tensor i = from_vector(std::vector<double>{2.9, -2.9, 0.5}).to(i64);
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{2, -2, 0});
  xgtest::check_values(i.to(f64), {2, -2, 0});
  // float64 -> float32 rounds to nearest.
  CHECK(scalar(0.1, f64).to(f32).item<float>() == 0.1f);
  CHECK(zeros({0, 3}, f32).to(f64).shape() == Shape{0, 3});
}

TEST_CASE("tensor: the gradient of to() is converted back to the input's dtype") {
  // float32 leaf -> float64 graph: the gradient arrives as float32.
  Tensor a = from_vector(std::vector<float>{1, 2, 3}).requires_grad_();
  Tensor y = a.to(f64);
  CHECK(y.op_name() == "to");
  sum(mul(y, from_vector(std::vector<double>{0.5, -1, 2}))).backward();
  REQUIRE(a.grad().defined());
  CHECK(a.grad().dtype() == f32);
  xgtest::check_values(a.grad(), {0.5, -1, 2});
  // gradcheck through f64 -> f32 -> f64. The float32 hop rounds the input by ~1e-7
  // relative, so the difference step must be large; the function is linear, so a large
  // step is exact.
  GradcheckOptions opts;
  opts.eps = 1e-2;
  opts.atol = 1e-4;
  xgtest::gradcheck_ok([](const std::vector<Tensor>& x) { return mul(x[0].to(f32), 3.0).to(f64); },
                       {xgtest::rnd({2, 3})}, opts);
  // Converting to int64 records nothing (no gradient through an integer).
  Tensor b = from_vector(std::vector<double>{1.5}).requires_grad_();
  Tensor bi = b.to(i64);
  CHECK_FALSE(bi.requires_grad());
}

// ---------------------------------------------------------------------------
// Autograd state
// ---------------------------------------------------------------------------

TEST_CASE("tensor: requires_grad_ only on float leaves") {
  Tensor a = zeros({2});
  CHECK_FALSE(a.requires_grad());
  CHECK(a.is_leaf());
  CHECK(&a.requires_grad_() == &a);
  CHECK(a.requires_grad());
  a.requires_grad_(false);
  CHECK_FALSE(a.requires_grad());

  CHECK_THROWS_WITH_AS(zeros({2}, i64).requires_grad_(), doctest::Contains("requires_grad_"), DtypeError);
  zeros({2}, i64).requires_grad_(false);  // turning it off is always fine

  Tensor p = ones({2}).requires_grad_();
  Tensor y = mul(p, 2.0);
  CHECK_THROWS_WITH_AS(y.requires_grad_(), doctest::Contains("mul"), StateError);
  // The documented way out: detach() makes a new leaf.
  CHECK(y.detach().requires_grad_().requires_grad());
}

TEST_CASE("tensor: set_grad checks shape and dtype; zero_grad drops the gradient") {
  Tensor a = zeros({2, 2}).requires_grad_();
  CHECK_FALSE(a.grad().defined());
  a.set_grad(ones({2, 2}));
  xgtest::check_values(a.grad(), {1, 1, 1, 1});
  CHECK_THROWS_WITH_AS(a.set_grad(ones({4})), doctest::Contains("set_grad"), ShapeError);
  CHECK_THROWS_AS(a.set_grad(ones({2, 2}, f64)), Error);  // dtype mismatch
  a.zero_grad();
  CHECK_FALSE(a.grad().defined());
  a.set_grad(Tensor());  // clearing is allowed
  CHECK_FALSE(a.grad().defined());
}

// ---- shapes past the element limit -------------------------------------------------

// Every factory checks the shape it is given and names itself: [2^40, 2^40] has 2^80
// elements, which wraps around int64; [0, 2^62, 2^62] has none but its nonzero dims
// multiply past 2^60 (kernels form such partial products as strides).
TEST_CASE("factories: a shape whose element count overflows is a ShapeError naming the factory") {
  using xgtest::check_throws_msg;
  const Shape big{1LL << 40, 1LL << 40};
  const std::string big_str = "[1099511627776,1099511627776]";
  check_throws_msg<ShapeError>([&] { (void)Tensor::empty(big, f32); }, {"empty", big_str, "2^60"});
  check_throws_msg<ShapeError>([&] { (void)zeros(big); }, {"zeros", big_str});
  check_throws_msg<ShapeError>([&] { (void)ones(big); }, {"ones", big_str});
  check_throws_msg<ShapeError>([&] { (void)full(big, 2.0); }, {"full", big_str});
  check_throws_msg<ShapeError>([&] { (void)rand(big); }, {"rand", big_str});
  check_throws_msg<ShapeError>([&] { (void)randn(big); }, {"randn", big_str});
  check_throws_msg<ShapeError>([&] { (void)uniform(big, 0.0, 1.0); }, {"uniform", big_str});
  check_throws_msg<ShapeError>([&] { (void)normal(big, 0.0, 1.0); }, {"normal", big_str});
  check_throws_msg<ShapeError>([&] { (void)randint(0, 5, big); }, {"randint", big_str});
  check_throws_msg<ShapeError>([&] { (void)eye(1LL << 40); }, {"eye", big_str});
  // from_vector compared values.size() with the wrapped product (2^80 -> 0 for no values).
  check_throws_msg<ShapeError>([&] { (void)from_vector(std::vector<float>{}, {1LL << 40, 1LL << 40, 1LL << 40, 1LL << 4}); },
                               {"from_vector", "[1099511627776,1099511627776,1099511627776,16]"});
  float buf[4] = {};
  check_throws_msg<ShapeError>([&] { (void)from_blob(buf, big, f32); }, {"from_blob", big_str});
}

TEST_CASE("factories: a 0-size shape whose other dims multiply past 2^60 is a ShapeError") {
  using xgtest::throws_naming;
  const Shape s{0, 1LL << 62, 1LL << 62};
  throws_naming<ShapeError>([&] { (void)Tensor::empty(s, f32); }, "[0,4611686018427387904,4611686018427387904]");
  throws_naming<ShapeError>([&] { (void)zeros(s); }, "zeros");
  throws_naming<ShapeError>([&] { (void)from_vector(std::vector<double>{}, s); }, "from_vector");
  throws_naming<ShapeError>([&] { (void)from_blob(nullptr, s, f64); }, "from_blob");
  // Order does not matter: [2^62, 2^62, 0] was already refused, [0, 2^62, 2^62] was not.
  throws_naming<ShapeError>([] { (void)zeros({1LL << 62, 1LL << 62, 0}); }, "zeros");
  CHECK(zeros({0, 1LL << 60}).numel() == 0);
  CHECK_THROWS_AS((void)zeros({0, (1LL << 60) + 1}), ShapeError);
}

TEST_CASE("arange: a count past the element limit is a ShapeError, not a float-to-int overflow") {
  using xgtest::check_throws_msg;
  // ceil(1e30) does not fit int64: the conversion itself was undefined.
  check_throws_msg<ShapeError>([] { (void)arange(0.0, 1e30); }, {"arange", "1e+30"});
  check_throws_msg<ShapeError>([] { (void)arange(-1e19, 1e19, 1.0); }, {"arange"});
}

TEST_CASE("Shape::numel of a shape whose product wraps around int64 throws instead of wrapping") {
  // Before: 2^64 + 16 wrapped to 16.
  xgtest::throws_naming<ShapeError>([] { (void)Shape({4611686018427387908, 4}).numel(); },
                                    "[4611686018427387908,4]");
  CHECK(Shape{1LL << 31, 1LL << 31}.numel() == 1LL << 62);  // plain Shapes may exceed 2^60
  CHECK(Shape{}.numel() == 1);
  CHECK(checked_numel("op", Shape{0, 1LL << 60}) == 0);
  xgtest::check_throws_msg<ShapeError>([] { (void)checked_numel("myop", Shape{2, -3}); },
                                       {"myop", "negative", "[2,-3]"});
}

TEST_CASE("tensor: set_grad refuses a gradient that is, aliases or cycles back to the tensor; nothing leaks") {
  std::weak_ptr<TensorImpl> gone_p, gone_q;
  {
    Tensor p = ones({2, 3}).requires_grad_();
    gone_p = p.impl_ptr();
    // The tensor itself: p.grad = p would hold p forever.
    CHECK_THROWS_WITH_AS(p.set_grad(p), doctest::Contains("set_grad"), StateError);
    // A view or detach() of it: shares its bytes, so each step would move the gradient too.
    CHECK_THROWS_WITH_AS(p.set_grad(p.detach()), doctest::Contains("shares memory"), StateError);
    CHECK_THROWS_WITH_AS(p.set_grad(reshape(p.detach(), {3, 2}).view({2, 3})), doctest::Contains("set_grad"),
                         StateError);
    CHECK_FALSE(p.grad().defined());
    // A cycle through two tensors: q.grad = p, then p.grad = q.
    Tensor q = zeros({2, 3}).requires_grad_();
    gone_q = q.impl_ptr();
    q.set_grad(p.detach().clone());  // a copy is fine
    p.set_grad(q);
    CHECK_THROWS_WITH_AS(q.set_grad(p), doctest::Contains("never be freed"), StateError);
    Tensor r = full({2, 3}, 2.0).requires_grad_();
    r.set_grad(p);  // r -> p -> q: no cycle yet
    CHECK_THROWS_WITH_AS(q.set_grad(r), doctest::Contains("set_grad"), StateError);
    CHECK(q.grad().defined());
    CHECK_FALSE(q.grad().is_same(p));
    // Empty tensors have no bytes to share, but p.grad = p is still a cycle.
    Tensor e = zeros({0}).requires_grad_();
    CHECK_THROWS_WITH_AS(e.set_grad(e), doctest::Contains("never be freed"), StateError);
  }
  CHECK(gone_p.expired());
  CHECK(gone_q.expired());
}
