// One owner per graph: a tensor with history belongs to the thread that recorded it.
// Using it elsewhere is a StateError; destroying it elsewhere is safe and leaks nothing.
// Leaves shared by several threads' graphs (Hogwild) accumulate every gradient.
// These also run under ThreadSanitizer (the `engine` suite of tools/dev.sh tsan).
#include <atomic>
#include <mutex>
#include <thread>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_throws_msg;

namespace {
Tensor vec(std::vector<double> v) { return from_vector(v); }

// Runs f on a new thread and returns what it threw (empty if nothing).
template <class F>
std::string on_thread(F&& f) {
  std::string err;
  std::thread th([&] {
    try {
      f();
    } catch (const std::exception& e) {
      err = e.what();
    }
  });
  th.join();
  return err;
}
}  // namespace

TEST_CASE("a tensor with history used or backpropagated on another thread is a StateError") {
  Tensor w = vec({0.5, 1.5}).requires_grad_();
  Tensor y = tanh(w);
  std::string err = on_thread([&] { Tensor z = mul(y, 2.0); });
  CHECK(err.find("another thread") != std::string::npos);
  CHECK(err.find("detach()") != std::string::npos);
  CHECK(err.find("'tanh'") != std::string::npos);
  err = on_thread([&] { sum(y).backward(); });  // sum itself refuses y
  CHECK(err.find("another thread") != std::string::npos);
  err = on_thread([&] { y.backward(ones({2}, Dtype::f64)); });
  CHECK(err.find("backward") != std::string::npos);
  CHECK(err.find("another thread") != std::string::npos);
  // Detached, it is a plain value on any thread; the owner's graph is untouched.
  err = on_thread([&] {
    Tensor v = y.detach().requires_grad_();
    sum(mul(v, v)).backward();
    xgtest::check_values(v.grad(), {2 * std::tanh(0.5), 2 * std::tanh(1.5)});
  });
  CHECK(err.empty());
  sum(y).backward();
  CHECK(w.grad().defined());
}

TEST_CASE("a tensor with history destroyed on another thread is released to its owner, in a loop") {
  Tensor w = vec({0.1, 0.2, 0.3}).requires_grad_();
  for (int i = 0; i < 300; ++i) {
    Tensor y = tanh(mul(w, static_cast<double>(i)));
    Tensor keep = sigmoid(w);  // another pending node, so the tape is not simply cleared
    CHECK(tape_pending() >= 3);
    std::thread th([t = std::move(y)]() mutable { t = Tensor(); });
    th.join();
    // The owner applies the release at its next query: only keep's node remains.
    CHECK(tape_pending() == 1);
  }
  CHECK(tape_pending() == 0);
  CHECK(tape_size() == 0);
}

TEST_CASE("a tensor destroyed on another thread after its owner exited is harmless") {
  Tensor survivor;
  std::thread owner([&] {
    Tensor w = vec({1, 2}).requires_grad_();
    survivor = exp(w);  // history on the owner's tape
  });
  owner.join();
  CHECK(survivor.requires_grad());
  survivor = Tensor();  // the owner's tape is gone: nothing to release, nothing touched
  CHECK(tape_pending() == 0);
}

TEST_CASE("two threads train while a third destroys their tensors") {
  std::mutex mu;
  std::vector<Tensor> handed;
  std::atomic<bool> done{false};
  std::atomic<int> trained{0};
  auto train = [&](double target) {
    Tensor w = vec({0.0}).requires_grad_();
    optim::SGD opt({w}, {.lr = 0.1});
    for (int i = 0; i < 400; ++i) {
      Tensor d = sub(w, target);
      Tensor loss = sum(mul(d, d));
      {
        std::lock_guard lock(mu);
        handed.push_back(tanh(w));  // a tensor with history, destroyed by the third thread
      }
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    CHECK(std::fabs(w.item() - target) < 1e-6);
    trained.fetch_add(1);
  };
  std::thread destroyer([&] {
    while (!done.load()) {
      std::vector<Tensor> batch;
      {
        std::lock_guard lock(mu);
        batch.swap(handed);
      }
      batch.clear();
      std::this_thread::yield();
    }
  });
  std::thread a(train, 1.0), b(train, -2.0);
  a.join();
  b.join();
  done.store(true);
  destroyer.join();
  handed.clear();
  CHECK(trained.load() == 2);
}

TEST_CASE("Hogwild: gradients from two threads into one shared leaf all arrive") {
  // Before: 39,599 of 40,000 increments arrived.
  Tensor w = vec({0.0, 0.0}).requires_grad_();
  constexpr int kPerThread = 20000;
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      Tensor loss = sum(mul(w, 1.0));
      loss.backward();
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  xgtest::check_values(w.grad(), {2.0 * kPerThread, 2.0 * kPerThread}, 0.0);
}

TEST_CASE("Hogwild: zero_grad, grad() and an optimizer step race gradient accumulation safely") {
  Tensor w = vec({1.0, 1.0, 1.0, 1.0}).requires_grad_();
  optim::SGD opt({w}, {.lr = 1e-6});
  std::mutex values;  // the documented contract: a step and a forward reading w do not overlap
  std::atomic<bool> stop{false};
  std::atomic<long> backwards{0};
  std::thread worker([&] {
    while (!stop.load()) {
      Tensor loss;
      {
        std::lock_guard lock(values);
        loss = sum(add(w, w));  // its backward reads no value of w
      }
      loss.backward();  // accumulates into w.grad() while the other thread reads and drops it
      backwards.fetch_add(1);
    }
  });
  double seen = 0;
  // At least 2,000 rounds, and on until the worker has run 500 backward passes meanwhile.
  for (int i = 0; i < 2000 || backwards.load() < 500; ++i) {
    Tensor g = w.grad();
    if (g.defined()) {
      const double* p = g.data<const double>();
      // Each contribution (one per input slot of add) adds 1 to every element under the
      // leaf's lock: a grad handed out is whole contributions, never a torn sum.
      for (int k = 0; k < 4; ++k) {
        INFO("grad " << p[k] << " vs " << p[0]);
        CHECK(p[k] == p[0]);
        CHECK(p[k] == std::floor(p[k]));
      }
      seen += p[0];
    }
    if (i % 3 == 0) {
      std::lock_guard lock(values);
      opt.step();
    }
    opt.zero_grad();
  }
  stop.store(true);
  worker.join();
  CHECK(backwards.load() >= 500);
  CHECK(seen >= 0);
}
