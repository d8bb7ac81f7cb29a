// The caching allocator behind tensor storage (autograd/memory.hpp): reuse, alignment,
// limits, empty_cache across threads, and what AddressSanitizer still sees.
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <atomic>
#include <thread>
#include <vector>

#include <xgrad/xgrad.hpp>

#include "helpers.hpp"

using xg::Tensor;

namespace {

// Restores the cache limit a test changed, whatever the test's outcome.
struct LimitGuard {
  std::int64_t saved = xg::cache_limit();
  ~LimitGuard() { xg::set_cache_limit(saved); }
};

}  // namespace

TEST_CASE("memory: a freed storage is reused: a loop of same-sized tensors asks the system once") {
  xg::empty_cache();
  xg::reset_memory_stats();
  for (int i = 0; i < 200; ++i) {
    Tensor t = xg::zeros({37, 129});
    Tensor u = xg::ones({1 << 16});  // 256 KiB: past glibc's mmap threshold, the costly case
    CHECK(t.numel() == 37 * 129);
  }
  const xg::MemoryStats s = xg::memory_stats();
  CHECK(s.requests == 400);
  CHECK(s.system_allocations == 2);
  CHECK(s.cached_bytes >= 37 * 129 * 4 + (1 << 18));
}

TEST_CASE("memory: values start on a 64-byte line in fresh and reused blocks of every size") {
  std::vector<Tensor> keep;
  for (int round = 0; round < 2; ++round) {  // round 1 takes the blocks round 0 freed
    for (std::int64_t n : {0, 1, 3, 15, 16, 17, 255, 256, 257, 1000, 4099, 65536, 300001}) {
      for (xg::Dtype d : {xg::f32, xg::f64, xg::i64}) {
        Tensor t = xg::zeros({n}, d);
        CHECK(reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 64 == 0);
        if (round == 1) keep.push_back(t);
      }
    }
  }
}

TEST_CASE("memory: a reused block holds the new tensor's values, not the old one's") {
  const std::vector<float> v(1000, 3.5f);
  { Tensor a = xg::from_vector(v, {1000}); }
  Tensor z = xg::zeros({1000});
  for (float x : z.to_vector<float>()) REQUIRE(x == 0.0f);
  Tensor o = xg::ones({1000});
  CHECK(xg::sum(o).item() == 1000.0);
}

TEST_CASE("memory: results are bit-identical with the cache on and off") {
  LimitGuard guard;
  auto run = [] {
    xg::manual_seed(5);
    Tensor w = xg::randn({33, 47}).requires_grad_();
    Tensor x = xg::randn({19, 33});
    double acc = 0;
    for (int i = 0; i < 20; ++i) {
      Tensor y = xg::tanh(xg::matmul(x, w));
      Tensor loss = xg::sum(xg::mul(y, y));
      loss.backward();
      acc += loss.item();
    }
    std::vector<float> g = w.grad().to_vector<float>();
    g.push_back(static_cast<float>(acc));
    return g;
  };
  xg::set_cache_limit(0);
  const std::vector<float> off = run();
  CHECK(xg::memory_stats().cached_bytes == 0);
  xg::set_cache_limit(std::int64_t{1} << 30);
  const std::vector<float> on = run();
  const std::vector<float> on2 = run();
  CHECK(std::memcmp(off.data(), on.data(), off.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(on.data(), on2.data(), on.size() * sizeof(float)) == 0);
}

TEST_CASE("memory: the cache limit: a freed block that would pass it goes back to the system") {
  LimitGuard guard;
  xg::set_cache_limit(1 << 20);
  { Tensor big = xg::zeros({1 << 19}); }  // 2 MiB: past the limit, not cached
  CHECK(xg::memory_stats().cached_bytes == 0);
  { Tensor small = xg::zeros({1 << 10}); }
  CHECK(xg::memory_stats().cached_bytes > 0);
  CHECK(xg::memory_stats().cached_bytes <= (1 << 20));
  CHECK_THROWS_AS(xg::set_cache_limit(-1), xg::Error);
}

TEST_CASE("memory: empty_cache releases this thread's cache now and another thread's at its next call") {
  { Tensor t = xg::zeros({4096}); }
  REQUIRE(xg::memory_stats().cached_bytes > 0);
  xg::empty_cache();
  CHECK(xg::memory_stats().cached_bytes == 0);

  std::int64_t other_before = -1, other_after = -1;
  std::atomic<int> phase{0};
  std::thread other([&] {
    { Tensor t = xg::zeros({4096}); }
    other_before = xg::memory_stats().cached_bytes;
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
    other_after = xg::memory_stats().cached_bytes;
  });
  while (phase.load() != 1) std::this_thread::yield();
  xg::empty_cache();
  phase = 2;
  other.join();
  CHECK(other_before > 0);
  CHECK(other_after == 0);
}

TEST_CASE("memory: storages made on one thread and freed on another, while both train") {
  // Blocks migrate to the freeing thread's cache; nothing is lost or handed out twice
  // (ASan and TSan builds run this too).
  std::vector<Tensor> made;
  for (int i = 0; i < 64; ++i) made.push_back(xg::full({100 + i}, static_cast<double>(i)));
  std::thread other([&] {
    for (auto& t : made) t = Tensor();
    for (int i = 0; i < 64; ++i) {
      Tensor t = xg::full({100 + i}, 1.0);
      REQUIRE(xg::sum(t).item() == 100.0 + i);
    }
  });
  for (int i = 0; i < 64; ++i) {
    Tensor t = xg::full({100 + i}, 2.0);
    REQUIRE(xg::sum(t).item() == 2.0 * (100 + i));
  }
  other.join();
}

TEST_CASE("memory: a training loop's live bytes stay flat over 2,000 steps") {
  xg::manual_seed(2);
  Tensor w = xg::randn({64, 64}).requires_grad_();
  auto step = [&] {
    Tensor h = xg::zeros({8, 64});
    for (int t = 0; t < 8; ++t) h = xg::tanh(xg::matmul(h, w));
    xg::sum(h).backward();
    w.grad();
  };
  for (int i = 0; i < 50; ++i) step();
  xg::reset_memory_stats();
  const xg::MemoryStats before = xg::memory_stats();
  for (int i = 0; i < 2000; ++i) step();
  const xg::MemoryStats after = xg::memory_stats();
  CHECK(after.allocated_bytes == before.allocated_bytes);
  CHECK(after.system_allocations == 0);
  CHECK(after.peak_allocated_bytes < before.allocated_bytes + (1 << 20));
}


TEST_CASE("memory: under ASan, a read of a storage waiting in the cache is reported" *
          doctest::skip(!xgtest::kAddressSanitizer)) {
  CHECK(xgtest::asan_reports([] {
    Tensor t = xg::ones({1000});
    const volatile float* p = t.data<const float>();
    t = Tensor();  // the block goes to this thread's cache, not back to malloc
    (void)p[10];
  }));
  // The control: the same read while the tensor lives is not reported.
  CHECK_FALSE(xgtest::asan_reports([] {
    Tensor t = xg::ones({1000});
    const volatile float* p = t.data<const float>();
    (void)p[10];
  }));
}

// ---- tensor handles' blocks (TensorImpl and its reference counts) -------------------------

namespace {
// y = tanh(y * a + b) on [1, 1], forward and backward: every op makes and drops handles.
void tiny_chain(const Tensor& a, const Tensor& b, int n) {
  Tensor y = xg::full({1, 1}, 0.3);
  for (int k = 0; k < n; ++k) y = xg::tanh(xg::mul(y, a) + b);
  y.backward(xg::ones({1, 1}));
}
}  // namespace

TEST_CASE("memory: tensor handles are recycled: after the first step every handle comes from the free lists") {
  Tensor a = xg::full({1, 1}, 0.5).requires_grad_();
  Tensor b = xg::full({1, 1}, 0.1).requires_grad_();
  // Warm-up: the first steps also make the leaves' grads (kept) and reach the peak.
  for (int step = 0; step < 3; ++step) tiny_chain(a, b, 300);
  xg::reset_memory_stats();
  const std::int64_t cached_before = xg::memory_stats().cached_objects;
  for (int step = 0; step < 20; ++step) tiny_chain(a, b, 300);
  const xg::MemoryStats s = xg::memory_stats();
  // At least the three outputs of each of the 20 * 300 * 3 ops: all of them reused.
  CHECK(s.object_requests >= 20 * 300 * 3);
  CHECK(s.object_reuses == s.object_requests);
  // No growth: each step returns what it took.
  CHECK(s.cached_objects == cached_before);
  CHECK(cached_before >= 300);
}

TEST_CASE("memory: the handles' free lists are per thread: two training threads, each reuses its own") {
  struct Counts {
    std::int64_t requests = 0, reuses = 0, cached_first = 0, cached_last = 0;
  };
  auto train = [](Counts& c) {
    Tensor a = xg::full({1, 1}, 0.5).requires_grad_();
    Tensor b = xg::full({1, 1}, 0.1).requires_grad_();
    for (int step = 0; step < 3; ++step) tiny_chain(a, b, 200);
    xg::reset_memory_stats();
    c.cached_first = xg::memory_stats().cached_objects;
    for (int step = 0; step < 50; ++step) tiny_chain(a, b, 200);
    const xg::MemoryStats s = xg::memory_stats();
    c.requests = s.object_requests;
    c.reuses = s.object_reuses;
    c.cached_last = s.cached_objects;
  };
  xg::reset_memory_stats();
  const std::int64_t here_before = xg::memory_stats().object_requests;
  Counts c1, c2;
  std::thread t1([&] { train(c1); });
  std::thread t2([&] { train(c2); });
  t1.join();
  t2.join();
  for (const Counts* c : {&c1, &c2}) {
    CHECK(c->requests >= 50 * 200 * 3);
    CHECK(c->reuses == c->requests);
    CHECK(c->cached_last == c->cached_first);
  }
  // The other threads' traffic is not counted here.
  CHECK(xg::memory_stats().object_requests == here_before);
}

TEST_CASE("memory: a handle made on one thread and destroyed on another joins the destroying thread's lists") {
  // The thread that destroys a handle keeps its block (malloc's, so any thread may free
  // it), and the next handle it makes reuses it; the making thread's lists do not change.
  constexpr int kN = 500;
  std::vector<Tensor> made;
  const Tensor base = xg::zeros({4});
  for (int i = 0; i < kN; ++i) made.push_back(base.detach());
  const std::int64_t here_cached = xg::memory_stats().cached_objects;
  std::int64_t cached_before = -1, cached_after_free = -1, reuses = -1, requests = -1;
  std::thread other([&] {
    { Tensor warm = base.detach(); }  // this thread's cache exists
    cached_before = xg::memory_stats().cached_objects;
    made.clear();
    cached_after_free = xg::memory_stats().cached_objects;
    xg::reset_memory_stats();
    std::vector<Tensor> mine;
    for (int i = 0; i < kN; ++i) mine.push_back(base.detach());
    reuses = xg::memory_stats().object_reuses;
    requests = xg::memory_stats().object_requests;
  });
  other.join();
  CHECK(cached_after_free == cached_before + kN);
  CHECK(requests == kN);
  CHECK(reuses == kN);
  CHECK(xg::memory_stats().cached_objects == here_cached);
}

TEST_CASE("memory: the handles' lists are bounded by the cache limit and emptied by empty_cache") {
  LimitGuard guard;
  { std::vector<Tensor> v(100, xg::zeros({2})); for (auto& t : v) t = t.detach(); }
  CHECK(xg::memory_stats().cached_objects >= 100);
  xg::empty_cache();
  CHECK(xg::memory_stats().cached_objects == 0);
  xg::set_cache_limit(0);
  { std::vector<Tensor> v(100, xg::zeros({2})); for (auto& t : v) t = t.detach(); }
  CHECK(xg::memory_stats().cached_objects == 0);
}

TEST_CASE("memory: under ASan, a read of a handle waiting in the free lists is reported" *
          doctest::skip(!xgtest::kAddressSanitizer)) {
  CHECK(xgtest::asan_reports([] {
    Tensor t = xg::ones({3});
    const xg::TensorImpl* impl = t.impl();
    t = Tensor();  // the TensorImpl's block goes to this thread's free lists
    const volatile std::int64_t* dims = impl->shape.data();
    (void)dims[0];
  }));
  CHECK_FALSE(xgtest::asan_reports([] {
    Tensor t = xg::ones({3});
    const volatile std::int64_t* dims = t.impl()->shape.data();
    (void)dims[0];
  }));
}
