#include "detail/thread_pool.hpp"

#include <algorithm>

#include "detail/packed_gemm.hpp"

namespace xg::detail {

// One run() in flight, on its caller's stack. Every field is guarded by the pool's mutex_;
// the caller returns (and the Call dies) only after the last task's runner has signalled
// `done` under that mutex and released it, so no worker touches a Call after its end.
struct ThreadPool::Call {
  std::int64_t n;
  void* task;
  Thunk thunk;
  std::int64_t next = 0;      // the first task nobody has claimed
  std::int64_t finished = 0;  // tasks that have returned or thrown
  std::vector<std::exception_ptr> errors;
  std::condition_variable done;
};

ThreadPool::ThreadPool(int workers) { resize(workers); }

ThreadPool::~ThreadPool() { resize(0); }

int ThreadPool::workers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(target_);
}

void ThreadPool::resize(int workers) {
  const auto want = static_cast<std::size_t>(std::max(0, workers));
  std::lock_guard<std::mutex> guard(resize_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = want;
  }
  if (want < threads_.size()) {
    wake_.notify_all();  // the workers with id >= want see target_ and return
    for (std::size_t id = want; id < threads_.size(); ++id) threads_[id].join();
    threads_.resize(want);
  }
  try {
    while (threads_.size() < want) {
      const std::size_t id = threads_.size();
      threads_.emplace_back([this, id] { work(id); });
    }
  } catch (...) {
    // Could not start a thread: keep the ones that started; callers do the rest of the work.
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = threads_.size();
  }
}

void ThreadPool::run_one(Call& call, std::unique_lock<std::mutex>& lock) {
  const std::int64_t i = call.next++;
  if (call.next == call.n) {
    // Fully claimed: no worker may pick it up any more. (A call run by its caller alone
    // was never queued.)
    const auto it = std::find(queue_.begin(), queue_.end(), &call);
    if (it != queue_.end()) queue_.erase(it);
  }
  lock.unlock();
  std::exception_ptr error;
  try {
    call.thunk(call.task, i);
  } catch (...) {
    error = std::current_exception();
  }
  lock.lock();
  if (error) call.errors[static_cast<std::size_t>(i)] = error;
  if (++call.finished == call.n) call.done.notify_all();
}

void ThreadPool::run_erased(std::int64_t n, void* task, Thunk thunk) {
  if (n <= 0) return;
  Call call{n, task, thunk, 0, 0, std::vector<std::exception_ptr>(static_cast<std::size_t>(n)), {}};
  std::unique_lock<std::mutex> lock(mutex_);
  if (n > 1 && target_ > 0) {
    queue_.push_back(&call);
    // One wake per task the caller leaves to others; more would only wake workers to find
    // nothing left.
    const auto wakes = std::min(static_cast<std::size_t>(n - 1), target_);
    for (std::size_t k = 0; k < wakes; ++k) wake_.notify_one();
  }
  while (call.next < call.n) run_one(call, lock);
  call.done.wait(lock, [&] { return call.finished == call.n; });
  lock.unlock();
  for (const std::exception_ptr& e : call.errors) {
    if (e) std::rethrow_exception(e);
  }
}

void ThreadPool::work(std::size_t id) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return id >= target_ || !queue_.empty(); });
    if (id >= target_) return;
    run_one(*queue_.front(), lock);
  }
}

namespace {

int pool_workers_for(int threads) {
  static const int hw = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  return std::min(std::max(threads, 1), hw) - 1;
}

}  // namespace

ThreadPool& thread_pool() {
  static ThreadPool pool(pool_workers_for(blas_threads()));
  return pool;
}

void set_pool_threads(int n) { thread_pool().resize(pool_workers_for(n)); }

}  // namespace xg::detail
