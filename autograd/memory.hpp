#pragma once
// Tensor storage is recycled: a freed storage goes to a free list of its size class, on
// the thread that frees it, and the next tensor of that class reuses it without a trip
// to the system. A training step allocates the same sizes every step, so after the first
// step allocation costs a few loads and stores, and the kernel's page faults and
// glibc's unmap/remap of large blocks are gone. No environment variable is needed.
//
// Bytes go back to the system only when a thread's cache would pass its limit
// (set_cache_limit, default 1 GiB a thread), when the thread exits, or on request:
// empty_cache() releases the calling thread's cache at once and every other thread's at
// its next allocation. Results do not depend on which block a tensor gets: values start
// on a 64-byte line inside every block.
//
// The small block behind every tensor handle (its TensorImpl and reference counts) is
// recycled the same way, from per-thread free lists of 16-byte classes, so making and
// dropping a 1x1 tensor costs no malloc or free either (a chain of tiny ops frees
// thousands at once in backward, more than glibc's per-thread cache holds). A handle
// freed on another thread than the one that made it goes to the freeing thread's lists;
// each thread keeps at most min(16 MiB, the cache limit) of them.
//
// Under AddressSanitizer a cached block is poisoned, so a use after free is still
// reported while the block waits in the cache.
#include <cstdint>

namespace xg {

// Counts of the calling thread's storage traffic. A storage freed on another thread
// counts there (the tape is per thread, so a training loop allocates and frees on one).
struct MemoryStats {
  std::int64_t allocated_bytes = 0;       // live bytes this thread allocated minus those it freed
  std::int64_t peak_allocated_bytes = 0;  // the most allocated_bytes has been since the last reset
  std::int64_t cached_bytes = 0;          // bytes held in this thread's free lists
  std::int64_t requests = 0;              // storages allocated since the last reset
  std::int64_t requested_bytes = 0;       // their bytes (block sizes), since the last reset
  std::int64_t system_allocations = 0;    // requests that went to the system since the last reset
  // Parameters' GEMM panels, kept packed between the matmul/linear calls that use them
  // (re-packed when the parameter's version changes; released by empty_cache()):
  std::int64_t packed_bytes = 0;          // bytes held now
  std::int64_t packed_hits = 0;           // products that reused panels, since the last reset
  std::int64_t packed_packs = 0;          // products that packed (first use or a changed parameter)
  // Tensor handles' blocks (TensorImpl and its reference counts), recycled per thread:
  std::int64_t object_requests = 0;       // blocks handed out since the last reset
  std::int64_t object_reuses = 0;         // of those, taken from this thread's free lists
  std::int64_t cached_objects = 0;        // blocks held in this thread's free lists now
};

MemoryStats memory_stats();
// Sets peak_allocated_bytes to allocated_bytes and the counts since the last reset to 0.
void reset_memory_stats();
// Releases the calling thread's cached blocks (storage and handles) and packed parameters
// now, every other thread's at its next allocation, free or product.
void empty_cache();
// The most bytes one thread's cache holds; a freed block that would pass it goes back to
// the system. 0 turns caching off (every block is returned at once).
void set_cache_limit(std::int64_t bytes);
std::int64_t cache_limit();

}  // namespace xg
