#pragma once
// Private: a parameter's GEMM panels, packed once and reused by every matmul and linear
// that multiplies by it, across time steps and across forward and backward, until its
// version changes (see packed_cache.cpp).
#include <cstdint>

#include "../../backend/detail/packed_gemm.hpp"
#include "../tensor.hpp"

namespace xg::detail {

// op(w) [K, N] (w stored [K, N], or [N, K] when trans) packed for PackedB::gemm_acc, for
// a product with M rows; null when the plain GEMM is the better path: w is not a
// parameter (a leaf that requires grad), its storage is the caller's (from_blob: writes
// into it are not seen), M is large enough that packing per call is already amortised,
// or the packed kernel does not pay here. The pointer is valid until the next call on
// this thread.
template <class T>
const PackedB<T>* packed_parameter(const Tensor& w, bool trans, std::int64_t M, std::int64_t K, std::int64_t N);

// The calling thread's cache: entries, their bytes, and lookups since the last reset
// that found current panels (hits) or had to pack (packs).
struct PackedCacheCounts {
  std::int64_t entries = 0, bytes = 0, hits = 0, packs = 0;
};
PackedCacheCounts packed_cache_counts();
void reset_packed_cache_counts();

// memory.cpp's epoch: empty_cache() empties the packed caches too.
std::uint64_t memory_epoch();

}  // namespace xg::detail
