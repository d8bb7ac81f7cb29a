// The caching allocator behind every tensor's storage (see memory.hpp).
//
// Size classes: multiples of 64 bytes up to 1 KiB, then eight classes per doubling up to
// 2 GiB (a block wastes at most 1/8 of itself); larger blocks come from and go straight
// back to the system. Each thread keeps one free list per class, touched only by that
// thread, so the hot path has no lock and no atomic read-modify-write: empty_cache()
// reaches other threads through an epoch they compare at their next call.
//
// Handles' blocks (detail::object_alloc) have their own lists in the same per-thread cache,
// in 16-byte classes up to 512 bytes: one class serves every TensorImpl.
#include "memory.hpp"

#include <atomic>
#include <string>
#include <algorithm>
#include <bit>
#include <cstdlib>
#include <vector>

#include "detail/packed_cache.hpp"
#include "detail/storage.hpp"
#include "../backend/error.hpp"

namespace xg {

namespace {

constexpr int kSmallClasses = 16;                 // 64, 128, ..., 1024 bytes
constexpr int kLargestShift = 31;                 // classes up to 2^31 bytes
constexpr int kClasses = kSmallClasses + (kLargestShift - 10) * 8;
constexpr std::size_t kLargestClass = std::size_t{1} << kLargestShift;

// The class of a block of `bytes`, or -1 for one past the largest class.
int size_class(std::size_t bytes) {
  if (bytes <= 1024) return bytes == 0 ? 0 : static_cast<int>((bytes - 1) >> 6);
  if (bytes > kLargestClass) return -1;
  const int e = std::bit_width(bytes - 1) - 1;  // 2^e < bytes <= 2^(e+1)
  const int sub = static_cast<int>(((bytes - 1) >> (e - 3)) & 7);
  return kSmallClasses + (e - 10) * 8 + sub;
}

std::size_t class_size(int k) {
  if (k < kSmallClasses) return static_cast<std::size_t>(k + 1) << 6;
  const int e = (k - kSmallClasses) / 8 + 10, sub = (k - kSmallClasses) % 8;
  return static_cast<std::size_t>(8 + sub + 1) << (e - 3);
}

constexpr int kObjectClasses = 32;                 // 16, 32, ..., 512 bytes
constexpr std::size_t kLargestObject = 16 * kObjectClasses;
// A thread keeps at most this many bytes of handles' blocks (and no more than the cache
// limit): bounded even when one thread only frees what another makes.
constexpr std::int64_t kObjectLimit = std::int64_t{16} << 20;

int object_class(std::size_t bytes) { return bytes == 0 ? 0 : static_cast<int>((bytes - 1) >> 4); }

std::atomic<std::uint64_t> g_epoch{0};
std::atomic<std::int64_t> g_limit{std::int64_t{1} << 30};

struct ThreadCache;
// 0: this thread has no cache yet; 1: it has one; 2: it was destroyed at thread exit
// (storages freed later by other thread_local destructors go straight to the system).
constinit thread_local int tl_state = 0;

struct ThreadCache {
  std::vector<void*> lists[kClasses];
  std::int64_t cached = 0;
  std::vector<void*> objects[kObjectClasses];
  std::int64_t object_bytes = 0;   // held in `objects`
  std::int64_t object_count = 0;
  std::uint64_t epoch = g_epoch.load(std::memory_order_relaxed);
  MemoryStats stats;

  ThreadCache() { tl_state = 1; }
  ~ThreadCache() {
    release();
    tl_state = 2;
  }
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;

  void release() noexcept {
    for (int k = 0; k < kClasses; ++k) {
      const std::size_t size = class_size(k);
      for (void* p : lists[k]) {
        detail::unpoison(p, static_cast<std::ptrdiff_t>(size));
        std::free(p);
      }
      lists[k].clear();
      lists[k].shrink_to_fit();
    }
    cached = 0;
    for (int k = 0; k < kObjectClasses; ++k) {
      for (void* p : objects[k]) {
        detail::unpoison(p, static_cast<std::ptrdiff_t>(16 * (k + 1)));
        std::free(p);
      }
      objects[k].clear();
      objects[k].shrink_to_fit();
    }
    object_bytes = object_count = 0;
  }
  void sync_epoch() noexcept {
    const std::uint64_t e = g_epoch.load(std::memory_order_relaxed);
    if (e != epoch) {
      release();
      epoch = e;
    }
  }
};

ThreadCache& cache() {
  thread_local ThreadCache c;
  return c;
}

void* system_alloc(std::size_t bytes) {
  void* p = std::malloc(bytes);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

namespace detail {

void* storage_alloc(std::size_t bytes) {
  if (tl_state == 2) {  // the class's full size: another thread may cache the block when it is freed
    const int k = size_class(bytes);
    return system_alloc(k < 0 ? bytes : class_size(k));
  }
  ThreadCache& c = cache();
  c.sync_epoch();
  const int k = size_class(bytes);
  const std::size_t size = k < 0 ? bytes : class_size(k);
  void* p = nullptr;
  if (k >= 0 && !c.lists[k].empty()) {
    p = c.lists[k].back();
    c.lists[k].pop_back();
    c.cached -= static_cast<std::int64_t>(size);
    unpoison(p, static_cast<std::ptrdiff_t>(size));
  } else {
    p = std::malloc(size);
    if (p == nullptr && c.cached > 0) {  // the cache may hold what the system lacks
      c.release();
      p = std::malloc(size);
    }
    if (p == nullptr) throw std::bad_alloc();
    ++c.stats.system_allocations;
  }
  MemoryStats& s = c.stats;
  s.allocated_bytes += static_cast<std::int64_t>(size);
  if (s.allocated_bytes > s.peak_allocated_bytes) s.peak_allocated_bytes = s.allocated_bytes;
  ++s.requests;
  s.requested_bytes += static_cast<std::int64_t>(size);
  return p;
}

void storage_free(void* p, std::size_t bytes) noexcept {
  if (tl_state == 2) {
    std::free(p);
    return;
  }
  ThreadCache& c = cache();
  c.sync_epoch();
  const int k = size_class(bytes);
  const std::size_t size = k < 0 ? bytes : class_size(k);
  c.stats.allocated_bytes -= static_cast<std::int64_t>(size);
  if (k < 0 || c.cached + static_cast<std::int64_t>(size) > g_limit.load(std::memory_order_relaxed)) {
    std::free(p);
    return;
  }
  try {
    c.lists[k].push_back(p);
  } catch (...) {  // no memory for the list's growth: give the block back instead
    std::free(p);
    return;
  }
  c.cached += static_cast<std::int64_t>(size);
  poison(p, static_cast<std::ptrdiff_t>(size));
}

void* object_alloc(std::size_t bytes) {
  if (bytes > kLargestObject) return system_alloc(bytes);
  // Always the class's full size: the block may be freed on a thread that caches it.
  if (tl_state == 2) return system_alloc(static_cast<std::size_t>(16 * (object_class(bytes) + 1)));
  ThreadCache& c = cache();
  c.sync_epoch();
  const int k = object_class(bytes);
  ++c.stats.object_requests;
  std::vector<void*>& list = c.objects[k];
  if (!list.empty()) {
    void* p = list.back();
    list.pop_back();
    c.object_bytes -= 16 * (k + 1);
    --c.object_count;
    ++c.stats.object_reuses;
    unpoison(p, 16 * (k + 1));
    return p;
  }
  // The class's full size, so that any request of the class can reuse the block.
  return system_alloc(static_cast<std::size_t>(16 * (k + 1)));
}

void object_free(void* p, std::size_t bytes) noexcept {
  if (tl_state == 2 || bytes > kLargestObject) {
    std::free(p);
    return;
  }
  ThreadCache& c = cache();
  c.sync_epoch();
  const int k = object_class(bytes);
  const std::int64_t size = 16 * (k + 1);
  if (c.object_bytes + size > std::min(kObjectLimit, g_limit.load(std::memory_order_relaxed))) {
    std::free(p);
    return;
  }
  try {
    c.objects[k].push_back(p);
  } catch (...) {
    std::free(p);
    return;
  }
  c.object_bytes += size;
  ++c.object_count;
  poison(p, size);
}

}  // namespace detail

std::uint64_t detail::memory_epoch() { return g_epoch.load(std::memory_order_relaxed); }

MemoryStats memory_stats() {
  MemoryStats s;
  if (tl_state == 1) {
    ThreadCache& c = cache();
    c.sync_epoch();
    s = c.stats;
    s.cached_bytes = c.cached;
    s.cached_objects = c.object_count;
  }
  const detail::PackedCacheCounts p = detail::packed_cache_counts();
  s.packed_bytes = p.bytes;
  s.packed_hits = p.hits;
  s.packed_packs = p.packs;
  return s;
}

void reset_memory_stats() {
  detail::reset_packed_cache_counts();
  if (tl_state != 1) return;
  MemoryStats& s = cache().stats;
  s.peak_allocated_bytes = s.allocated_bytes;
  s.requests = s.requested_bytes = s.system_allocations = 0;
  s.object_requests = s.object_reuses = 0;
}

void empty_cache() {
  g_epoch.fetch_add(1, std::memory_order_relaxed);
  if (tl_state == 1) cache().sync_epoch();
}

void set_cache_limit(std::int64_t bytes) {
  if (bytes < 0) throw Error("set_cache_limit: the limit must be >= 0 bytes, got " + std::to_string(bytes));
  g_limit.store(bytes, std::memory_order_relaxed);
  empty_cache();  // what is cached now may be past the new limit
}

std::int64_t cache_limit() { return g_limit.load(std::memory_order_relaxed); }

}  // namespace xg
