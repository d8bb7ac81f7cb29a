// The pool behind the GEMM split (backend/detail/thread_pool.hpp): every task once, on the
// workers too, exceptions to the caller, calls from several user threads and from inside a
// task, resizing while calls run, workers asleep when idle; and the split GEMM from two user
// threads at once giving the bits of one thread.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "xgrad/backend/detail/packed_gemm.hpp"
#include "xgrad/backend/detail/thread_pool.hpp"

using namespace xg;
using detail::ThreadPool;

namespace {

// Runs n tasks on pool and returns how many times each ran.
std::vector<int> run_counts(ThreadPool& pool, std::int64_t n) {
  std::vector<std::atomic<int>> counts(static_cast<std::size_t>(n));
  pool.run(n, [&](std::int64_t i) { counts.at(static_cast<std::size_t>(i)).fetch_add(1); });
  std::vector<int> out;
  for (const auto& c : counts) out.push_back(c.load());
  return out;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

TEST_CASE("ThreadPool::run: every task exactly once, for any task count and pool size") {
  for (int workers : {0, 1, 3}) {
    ThreadPool pool(workers);
    CHECK(pool.workers() == workers);
    for (std::int64_t n : {0, 1, 2, 3, 4, 7, 100}) {
      INFO("workers=" << workers << " n=" << n);
      CHECK(run_counts(pool, n) == std::vector<int>(static_cast<std::size_t>(n), 1));
    }
  }
}

TEST_CASE("ThreadPool::run: the workers take tasks while the caller runs its own") {
  // Two tasks that each wait for the other to start: they finish only if a worker runs one
  // while the caller runs the other. The wait is bounded so that a broken pool fails, not hangs.
  ThreadPool pool(1);
  std::atomic<int> started{0};
  std::atomic<bool> met{true};
  pool.run(2, [&](std::int64_t) {
    started.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (started.load() < 2) {
      if (std::chrono::steady_clock::now() > deadline) {
        met = false;
        return;
      }
      std::this_thread::yield();
    }
  });
  CHECK(met.load());
}

TEST_CASE("ThreadPool::run: an exception reaches the caller after every task ran, the lowest task's") {
  ThreadPool pool(2);
  for (int rep = 0; rep < 20; ++rep) {
    std::atomic<int> ran{0};
    const auto throwing = [&](std::int64_t i) {
      ran.fetch_add(1);
      if (i == 3 || i == 5) throw std::runtime_error("task " + std::to_string(i));
    };
    CHECK_THROWS_WITH_AS(pool.run(8, throwing), "task 3", std::runtime_error);
    CHECK(ran.load() == 8);
  }
  // Still usable afterwards.
  CHECK(run_counts(pool, 9) == std::vector<int>(9, 1));
  ThreadPool alone(0);
  CHECK_THROWS_WITH_AS(alone.run(4, [](std::int64_t i) {
    if (i > 0) throw Error("task " + std::to_string(i));
  }),
                       "task 1", Error);
}

TEST_CASE("ThreadPool::run: nested calls, from inside a task, complete") {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> counts(5 * 6);
  pool.run(5, [&](std::int64_t i) {
    pool.run(6, [&](std::int64_t j) { counts[static_cast<std::size_t>(i * 6 + j)].fetch_add(1); });
  });
  for (const auto& c : counts) CHECK(c.load() == 1);
}

TEST_CASE("ThreadPool::run: calls from several user threads at once, while the pool is resized") {
  ThreadPool pool(2);
  std::atomic<int> wrong{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> users;
  for (int u = 0; u < 3; ++u) {
    users.emplace_back([&, u] {
      for (int call = 0; call < 300; ++call) {
        const std::int64_t n = 1 + (call + u) % 6;
        if (run_counts(pool, n) != std::vector<int>(static_cast<std::size_t>(n), 1)) wrong.fetch_add(1);
      }
    });
  }
  std::thread resizer([&] {
    for (int k = 0; !stop.load(); ++k) pool.resize(k % 4);
  });
  for (std::thread& t : users) t.join();
  stop = true;
  resizer.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("ThreadPool: idle workers sleep") {
  // Spinning workers would burn ~the whole wait in CPU time each. The process's other
  // threads (OpenBLAS's, after earlier tests) stop spinning within a fraction of a second.
  ThreadPool pool(2);
  run_counts(pool, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double t0 = process_cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(process_cpu_seconds() - t0 < 0.1);
}

TEST_CASE("set_num_threads sizes the BLAS and the process-wide pool: n threads are the caller and n - 1 workers") {
  const int before = get_num_threads();
  const int hw = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  set_num_threads(1);
  CHECK(detail::thread_pool().workers() == 0);
  set_num_threads(2);
  CHECK(get_num_threads() == 2);
  CHECK(detail::thread_pool().workers() == std::min(2, hw) - 1);
  // blas_info() tells what runs, under either BLAS: its threads and the kernels it picked.
  const BlasInfo info = blas_info();
  CHECK(info.threads == 2);
  CHECK((info.library == "openblas" || info.library == "blis"));
  CHECK_FALSE(info.core.empty());
  set_num_threads(before);
}

TEST_CASE("gemm_tiled from two user threads at once, split over the pool: the bits of one thread") {
  // Two models training at once, each calling gemm on split-size products (2 * 96 * 600 *
  // 700 = 81 MFLOP): they share the pool and each caller's packing space is its own.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::int64_t M = 96, N = 600, K = 700;
  std::vector<float> A(static_cast<std::size_t>(M * K)), B(static_cast<std::size_t>(N * K));
  for (float& x : A) x = u(rng);
  for (float& x : B) x = u(rng);
  const int before = get_num_threads();
  set_num_threads(1);
  std::vector<float> want(static_cast<std::size_t>(M * N));
  detail::gemm_tiled<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, want.data(), N);
  set_num_threads(2);
  std::atomic<int> wrong{0};
  std::vector<std::thread> users;
  for (int t = 0; t < 2; ++t) {
    users.emplace_back([&] {
      std::vector<float> C(want.size());
      for (int call = 0; call < 10; ++call) {
        detail::gemm_tiled<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
        if (C != want) wrong.fetch_add(1);
      }
    });
  }
  for (std::thread& t : users) t.join();
  set_num_threads(before);
  CHECK(wrong.load() == 0);
}
