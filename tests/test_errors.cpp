// The bad-input inventory of the foundation: every one is an xg::Error subclass whose
// message names the op and the shapes.
#include "helpers.hpp"

using namespace xg;

namespace {
// Runs f, requires it to throw E, and returns the message.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("threw the wrong type: " << e.what());
    return {};
  }
  FAIL("did not throw");
  return {};
}
bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("shape mismatch in every binary op names the op and both shapes") {
  const Tensor a = ones({2, 3}), b = ones({4, 3});
  using Fn = Tensor (*)(const Tensor&, const Tensor&);
  const std::vector<std::pair<const char*, Fn>> ops{
      {"add", static_cast<Fn>(add)}, {"sub", static_cast<Fn>(sub)}, {"mul", static_cast<Fn>(mul)},
      {"div", static_cast<Fn>(div)}, {"maximum", maximum},          {"minimum", minimum}};
  for (const auto& [name, fn] : ops) {
    const std::string msg = message_of<ShapeError>([&] { fn(a, b); });
    INFO(msg);
    CHECK(has(msg, name));
    CHECK(has(msg, "[2,3]"));
    CHECK(has(msg, "[4,3]"));
  }
}

TEST_CASE("matmul inner-dimension mismatch") {
  const std::string msg = message_of<ShapeError>([] { matmul(ones({32, 64}), ones({65, 128})); });
  INFO(msg);
  CHECK(has(msg, "matmul"));
  CHECK(has(msg, "[32,64]"));
  CHECK(has(msg, "[65,128]"));
}

TEST_CASE("mixed dtypes are a DtypeError naming both") {
  const std::string msg = message_of<DtypeError>([] { add(ones({2}, f32), ones({2}, f64)); });
  CHECK(has(msg, "float32"));
  CHECK(has(msg, "float64"));
  CHECK_THROWS_AS(matmul(ones({2, 2}, f32), ones({2, 2}, f64)), DtypeError);
  CHECK_THROWS_AS(tanh(zeros({2}, i64)), DtypeError);
}

TEST_CASE("non-scalar backward without a seed, and a seed of the wrong shape") {
  Tensor x = ones({3}).requires_grad_();
  Tensor y = mul(x, 2.0);
  const std::string msg = message_of<StateError>([&] { y.backward(); });
  CHECK(has(msg, "[3]"));
  CHECK(has(msg, "seed"));
  CHECK_THROWS_AS(y.backward(ones({4})), ShapeError);
}

TEST_CASE("backward twice without retain_graph says how to fix it") {
  Tensor x = ones({1}).requires_grad_();
  Tensor loss = sum(mul(x, x));
  loss.backward();
  const std::string msg = message_of<StateError>([&] { loss.backward(); });
  CHECK(has(msg, "retain_graph"));
}

TEST_CASE("backward of a tensor that does not require grad") {
  CHECK_THROWS_AS(sum(ones({2})).backward(), StateError);
}

TEST_CASE("out-of-range indices in index_select and cross_entropy") {
  const Tensor table = ones({5, 3});
  const std::string m1 = message_of<IndexError>([&] { index_select(table, 0, from_vector(std::vector<std::int64_t>{1, 5})); });
  CHECK(has(m1, "index_select"));
  CHECK(has(m1, "5"));
  CHECK_THROWS_AS(index_select(table, 0, from_vector(std::vector<std::int64_t>{-1})), IndexError);
  const std::string m2 = message_of<IndexError>(
      [&] { cross_entropy(ones({2, 4}), from_vector(std::vector<std::int64_t>{0, 4})); });
  CHECK(has(m2, "cross_entropy"));
  CHECK_THROWS_AS(index_select(table, 0, from_vector(std::vector<float>{1.0f})), DtypeError);
}

TEST_CASE("empty tensors where an op cannot take them") {
  CHECK_THROWS_AS(max(zeros({0})), Error);
  CHECK_THROWS_AS(zeros({0}).item(), ShapeError);
  CHECK_THROWS_AS(concat({}, 0), Error);
  // ...and where it can, it works like numpy.
  CHECK(sum(zeros({0, 3})).item() == 0.0);
  CHECK(add(zeros({0, 3}), ones({3})).shape() == Shape{0, 3});
}

TEST_CASE("undefined tensors are a StateError, not a crash") {
  Tensor u;
  CHECK_THROWS_AS(u.shape(), StateError);
  CHECK_THROWS_AS(add(u, ones({1})), StateError);
  CHECK_THROWS_AS(u.backward(), StateError);
}

TEST_CASE("DetectAnomalyGuard names the op whose backward made a NaN/Inf (log(0))") {
  Tensor x = from_vector(std::vector<double>{0.0, 1.0}).requires_grad_();
  {
    DetectAnomalyGuard guard;
    Tensor loss = sum(log(x));
    const std::string msg = message_of<AnomalyError>([&] { loss.backward(); });
    INFO(msg);
    CHECK(has(msg, "'log'"));
  }
  // Without the guard the same backward quietly produces inf, like PyTorch.
  x.zero_grad();
  sum(log(x)).backward();
  CHECK(std::isinf(x.grad().to_vector<double>()[0]));
}
