#pragma once
// Private: the threads that split one operation (today: a GEMM's column panels) started
// once, not per call. A thread start costs ~20 us, which set the split threshold of the
// GEMM; a sleeping worker is woken with one futex call.
//
// run(n, task) runs task(0) .. task(n - 1), each exactly once, on the calling thread and
// the pool's idle workers, and returns when all have finished. The caller takes tasks from
// its own call too, so a call completes even when every worker is busy elsewhere: two user
// threads may call at once, and a task may itself call run() (nested) without deadlock.
// Which thread runs which task is unspecified: a task must compute the same bits wherever
// it runs (the GEMM's tasks own disjoint columns and their packing space is indexed by the
// task, not by the thread).
//
// Idle workers sleep on a condition variable; they never spin (the BLAS's spinning threads
// already compete for the cores).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace xg::detail {

class ThreadPool {
 public:
  // A pool of `workers` threads besides the callers (0: every call runs on its caller).
  explicit ThreadPool(int workers = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Starts or stops workers until there are `workers` (clamped to >= 0). Calls in flight
  // finish: their tasks are taken by whoever is left, the callers at least. Must not be
  // called from inside a task (it joins the workers it stops).
  void resize(int workers);
  int workers() const;

  // Every task(i), i in [0, n), once; then, if any threw, rethrows the exception of the
  // lowest such i (the same one whichever thread ran it).
  template <class F>
  void run(std::int64_t n, F&& task) {
    using Fn = std::remove_reference_t<F>;
    run_erased(n, const_cast<void*>(static_cast<const void*>(&task)),
               [](void* f, std::int64_t i) { (*static_cast<Fn*>(f))(i); });
  }

 private:
  struct Call;
  using Thunk = void (*)(void*, std::int64_t);

  void run_erased(std::int64_t n, void* task, Thunk thunk);
  // Runs the next unclaimed task of `call`; `lock` holds mutex_ on entry and on return.
  void run_one(Call& call, std::unique_lock<std::mutex>& lock);
  void work(std::size_t id);

  mutable std::mutex mutex_;
  std::condition_variable wake_;  // a call was queued, or target_ fell
  std::deque<Call*> queue_;       // calls with unclaimed tasks, oldest first
  std::size_t target_ = 0;        // workers with id >= target_ exit
  std::mutex resize_mutex_;       // one resize at a time; threads_ is only touched under it
  std::vector<std::thread> threads_;
};

// The process-wide pool behind the GEMM split: get_num_threads() - 1 workers (the caller is
// the remaining thread), at most one fewer than the hardware threads. Created on first use;
// set_num_threads() resizes it.
ThreadPool& thread_pool();
// Resizes the process-wide pool for n threads in all, callers included.
void set_pool_threads(int n);

}  // namespace xg::detail
