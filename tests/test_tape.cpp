// The tape engine: accumulation, release, retain_graph, freed-graph errors, threads.
#include <thread>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_values;

TEST_CASE("backward of a value used twice accumulates (x*x)") {
  Tensor x = from_vector(std::vector<double>{3.0}).requires_grad_();
  Tensor y = mul(x, x);
  sum(y).backward();
  check_values(x.grad(), {6.0});
}

TEST_CASE("leaf gradients accumulate across backward calls until zero_grad") {
  Tensor x = from_vector(std::vector<double>{1.0, 2.0}).requires_grad_();
  sum(mul(x, 3.0)).backward();
  sum(mul(x, 3.0)).backward();
  check_values(x.grad(), {6.0, 6.0});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  sum(mul(x, 2.0)).backward();
  check_values(x.grad(), {2.0, 2.0});
}

TEST_CASE("backward frees the walked graph; a second backward is a StateError") {
  Tensor x = from_vector(std::vector<double>{0.5}).requires_grad_();
  Tensor loss = sum(tanh(x));
  loss.backward();
  CHECK(tape_pending() == 0);
  CHECK_THROWS_AS(loss.backward(), StateError);
}

TEST_CASE("retain_graph allows a second backward") {
  Tensor x = from_vector(std::vector<double>{0.5}).requires_grad_();
  Tensor loss = sum(tanh(x));
  loss.backward(Tensor(), true);
  loss.backward();
  const double d = 1.0 - std::tanh(0.5) * std::tanh(0.5);
  check_values(x.grad(), {2 * d});
}

TEST_CASE("a 10,000-op chain backwards without recursion") {
  Tensor a = from_vector(std::vector<double>{0.9}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{0.1}).requires_grad_();
  Tensor y = from_vector(std::vector<double>{0.3});
  double yv = 0.3, dy = 0.0, da = 0.0;
  std::vector<double> ys{yv};
  for (int i = 0; i < 10000; ++i) {
    y = tanh(add(mul(y, a), b));
    yv = std::tanh(yv * 0.9 + 0.1);
    ys.push_back(yv);
  }
  CHECK(tape_size() == 30000);
  sum(y).backward();
  // Hand-written reverse pass: dy_{i} = dy_{i+1} * (1 - y_{i+1}^2) * a.
  dy = 1.0;
  for (int i = 10000; i >= 1; --i) {
    const double draw = dy * (1.0 - ys[i] * ys[i]);
    da += draw * ys[i - 1];
    dy = draw * 0.9;
  }
  check_values(a.grad(), {da}, 1e-9, 1e-9);
  CHECK(tape_size() == 0);
}

TEST_CASE("dropping an unused graph frees its nodes (no growth without NoGradGuard)") {
  Tensor w = from_vector(std::vector<double>{0.5}).requires_grad_();
  for (int i = 0; i < 100; ++i) {
    Tensor y = tanh(mul(w, 2.0));
    (void)y;
  }
  CHECK(tape_pending() == 0);
  CHECK(tape_size() == 0);
}

TEST_CASE("NoGradGuard records nothing") {
  Tensor w = from_vector(std::vector<double>{0.5}).requires_grad_();
  NoGradGuard g;
  Tensor y = tanh(mul(w, 2.0));
  CHECK_FALSE(y.requires_grad());
  CHECK(tape_size() == 0);
}

TEST_CASE("carried state from a freed graph: the explaining error (truncated BPTT bug)") {
  Tensor w = from_vector(std::vector<double>{0.5}).requires_grad_();
  Tensor h = from_vector(std::vector<double>{0.1});
  h = tanh(mul(h, w));
  sum(h).backward();
  Tensor h2 = tanh(mul(h, w));  // h not detached
  try {
    sum(h2).backward();
    FAIL("expected StateError");
  } catch (const StateError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("freed") != std::string::npos);
    CHECK(msg.find("detach()") != std::string::npos);
  }
  // With detach it works.
  Tensor h3 = tanh(mul(h.detach(), w));
  w.zero_grad();
  sum(h3).backward();
  CHECK(w.grad().defined());
}

TEST_CASE("non-scalar backward needs a seed") {
  Tensor x = from_vector(std::vector<double>{1.0, 2.0}).requires_grad_();
  Tensor y = mul(x, 2.0);
  CHECK_THROWS_AS(y.backward(), StateError);
  y.backward(from_vector(std::vector<double>{1.0, 10.0}));
  check_values(x.grad(), {2.0, 20.0});
}

TEST_CASE("two threads train independently") {
  auto train = [](double start, double* out) {
    Tensor w = from_vector(std::vector<double>{start}).requires_grad_();
    for (int s = 0; s < 200; ++s) {
      Tensor loss = sum(mul(sub(w, 3.0), sub(w, 3.0)));
      loss.backward();
      double* p = w.data<double>();
      p[0] -= 0.1 * w.grad().item();
      w.zero_grad();
    }
    *out = w.item();
  };
  double r1 = 0, r2 = 0, s1 = 0, s2 = 0;
  train(0.0, &s1);
  train(10.0, &s2);
  std::thread t1(train, 0.0, &r1);
  std::thread t2(train, 10.0, &r2);
  t1.join();
  t2.join();
  CHECK(r1 == s1);
  CHECK(r2 == s2);
  CHECK(std::fabs(r1 - 3.0) < 1e-6);
}

#include <pthread.h>

TEST_CASE("a 10,000-op chain records, backwards and is freed on a 256 KiB stack") {
  // Recursion anywhere (backward, or the cascade that frees a dropped graph) would need
  // far more than this stack for 30,000 nodes.
  struct Result {
    double grad = 0.0;
    std::size_t left = 1;
    std::string error;
  } res;
  auto body = [](void* p) -> void* {
    auto* r = static_cast<Result*>(p);
    try {
      Tensor a = from_vector(std::vector<double>{0.5}).requires_grad_();
      {
        Tensor y = from_vector(std::vector<double>{0.3});
        for (int i = 0; i < 10000; ++i) y = tanh(add(mul(y, a), 0.1));
        sum(y).backward();
      }
      {
        Tensor y = from_vector(std::vector<double>{0.3});
        for (int i = 0; i < 10000; ++i) y = tanh(add(mul(y, a), 0.1));
        // dropped without backward: freed by the reference-count cascade
      }
      r->grad = a.grad().item();
      r->left = tape_size();
    } catch (const std::exception& e) {
      r->error = e.what();
    }
    return nullptr;
  };
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t th;
  REQUIRE(pthread_create(&th, &attr, body, &res) == 0);
  pthread_join(th, nullptr);
  pthread_attr_destroy(&attr);
  CHECK(res.error.empty());
  CHECK(res.grad != 0.0);
  CHECK(res.left == 0);
}

TEST_CASE("retain_grad keeps a non-leaf's gradient") {
  Tensor x = from_vector(std::vector<double>{1.0, 2.0}).requires_grad_();
  Tensor h = mul(x, 3.0);
  h.retain_grad();
  sum(mul(h, h)).backward();
  xgtest::check_values(h.grad(), {6.0, 12.0});
  xgtest::check_values(x.grad(), {18.0, 36.0});
}

TEST_CASE("tape_dump lists ops, shapes and edges") {
  Tensor x = ones({2, 3}, f64).requires_grad_();
  Tensor y = tanh(mul(x, 2.0));
  const std::string d = tape_dump();
  CHECK(d.find("mul_scalar") != std::string::npos);
  CHECK(d.find("tanh -> float64 [2,3]") != std::string::npos);
  CHECK(d.find("leaf[2,3]") != std::string::npos);
  CHECK(d.find("#0") != std::string::npos);
}

TEST_CASE("a gradient shared by two inputs is not corrupted by later accumulation") {
  // add's backward hands the same g to both inputs; accumulating into one must not
  // change the other.
  Tensor a = from_vector(std::vector<double>{1.0}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{1.0}).requires_grad_();
  Tensor s = add(a, b);
  Tensor loss = add(sum(s), sum(mul(a, 5.0)));
  loss.backward();
  xgtest::check_values(a.grad(), {6.0});
  xgtest::check_values(b.grad(), {1.0});
}

TEST_CASE("a backward that throws leaves nothing pending once its tensors are gone") {
  Tensor x = from_vector(std::vector<double>{0.0, 1.0}).requires_grad_();
  {
    DetectAnomalyGuard guard;
    Tensor loss = sum(mul(log(x), 2.0));
    CHECK_THROWS_AS(loss.backward(), AnomalyError);
  }
  CHECK(tape_pending() == 0);
  CHECK(tape_size() == 0);
  // ...and the engine still works.
  Tensor y = from_vector(std::vector<double>{2.0}).requires_grad_();
  sum(mul(y, y)).backward();
  xgtest::check_values(y.grad(), {4.0});
}
