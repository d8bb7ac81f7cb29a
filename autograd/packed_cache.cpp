// The packed-parameter cache (detail/packed_cache.hpp).
//
// A recurrent step multiplies a small [B, H] matrix by the same weight at every step, and
// its backward multiplies by the weight's transpose; a GEMM packs its B operand into
// panels on every call, a copy of the whole weight per product (~25% of a step at B = 8).
// nn::LSTM's fused sequence op packs W_hh once per sequence; this cache gives the same to
// a cell written from matmul and linear, for any parameter, and keeps the panels across
// steps, sequences and forward/backward.
//
// Staleness is impossible by construction: an entry is keyed by the parameter's
// TensorImpl (held weakly, so a freed parameter is never mistaken for a new one at the
// same address), its data pointer, dtype, shape and transpose, and it stores the
// storage version it was packed at. Every write into a parameter's storage bumps that
// version (optimizer steps, load_state_dict, nn::init, data<T>(), compound assignment,
// Module::to's replacement storage starts past the old one), so a changed parameter is
// re-packed at its next use. Storage from from_blob is never cached: its owner writes
// into it without a bump.
//
// Per thread (the tape is per thread), no locks. At most kMaxEntries entries and
// kMaxBytes bytes; past either the least recently used entry goes.
#include "detail/packed_cache.hpp"

#include <algorithm>
#include <memory>
#include <vector>

namespace xg::detail {

namespace {

// Past this many rows the GEMM's own packing costs under 1/256 of its multiply.
constexpr std::int64_t kMaxRows = 256;
constexpr std::size_t kMaxEntries = 64;
constexpr std::int64_t kMaxBytes = std::int64_t{256} << 20;

struct Entry {
  std::weak_ptr<TensorImpl> owner;
  const TensorImpl* impl = nullptr;
  const void* data = nullptr;
  Dtype dtype = Dtype::f32;
  bool trans = false;
  std::int64_t K = 0, N = 0;
  std::uint32_t version = 0;
  std::uint64_t last_use = 0;
  std::int64_t bytes = 0;
  std::shared_ptr<void> packed;  // PackedB<T> for dtype's T
};

struct Cache {
  std::vector<Entry> entries;
  std::uint64_t clock = 0;
  std::uint64_t epoch = memory_epoch();
  std::int64_t bytes = 0;
  PackedCacheCounts counts;

  void sync_epoch() {
    const std::uint64_t e = memory_epoch();
    if (e != epoch) {
      entries.clear();
      bytes = 0;
      epoch = e;
    }
  }
  void erase(std::size_t i) {
    bytes -= entries[i].bytes;
    entries[i] = std::move(entries.back());
    entries.pop_back();
  }
  // Drops entries whose parameter is gone, then the least recently used ones, until one
  // more entry of `incoming` bytes fits.
  void make_room(std::int64_t incoming) {
    for (std::size_t i = entries.size(); i-- > 0;) {
      if (entries[i].owner.expired()) erase(i);
    }
    while (!entries.empty() && (entries.size() >= kMaxEntries || bytes + incoming > kMaxBytes)) {
      const auto lru = std::min_element(entries.begin(), entries.end(),
                                        [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
      erase(static_cast<std::size_t>(lru - entries.begin()));
    }
  }
};

Cache& cache() {
  thread_local Cache c;
  return c;
}

}  // namespace

template <class T>
const PackedB<T>* packed_parameter(const Tensor& w, bool trans, std::int64_t M, std::int64_t K, std::int64_t N) {
  const TensorImpl* t = w.impl();
  if (t == nullptr || !t->requires_grad || t->node != kNoNode || t->header().external) return nullptr;
  if (M > kMaxRows || M <= 0 || K <= 0 || N <= 0 || !packed_gemm_pays(M, N, K)) return nullptr;
  const std::int64_t bytes = K * N * static_cast<std::int64_t>(sizeof(T));
  if (bytes > kMaxBytes / 2) return nullptr;
  Cache& c = cache();
  c.sync_epoch();
  const std::uint32_t version = t->header().version.load(std::memory_order_relaxed);
  ++c.clock;
  for (Entry& e : c.entries) {
    if (e.impl != t || e.trans != trans || e.K != K || e.N != N || e.dtype != t->dtype || e.data != t->data) continue;
    if (e.owner.expired()) break;  // cannot happen while t is alive; re-pack to be safe
    auto* p = static_cast<PackedB<T>*>(e.packed.get());
    if (e.version != version) {
      p->repack(static_cast<const T*>(t->data), trans ? K : N);
      e.version = version;
      ++c.counts.packs;
    } else {
      ++c.counts.hits;
    }
    e.last_use = c.clock;
    return p;
  }
  c.make_room(bytes);
  Entry e;
  e.owner = w.impl_ptr();
  e.impl = t;
  e.data = t->data;
  e.dtype = t->dtype;
  e.trans = trans;
  e.K = K;
  e.N = N;
  e.version = version;
  e.last_use = c.clock;
  e.bytes = bytes;
  auto packed = std::make_shared<PackedB<T>>(trans, K, N, static_cast<const T*>(t->data), trans ? K : N);
  const PackedB<T>* p = packed.get();
  e.packed = std::move(packed);
  c.entries.push_back(std::move(e));
  c.bytes += bytes;
  ++c.counts.packs;
  return p;
}

template const PackedB<float>* packed_parameter<float>(const Tensor&, bool, std::int64_t, std::int64_t, std::int64_t);
template const PackedB<double>* packed_parameter<double>(const Tensor&, bool, std::int64_t, std::int64_t,
                                                         std::int64_t);

PackedCacheCounts packed_cache_counts() {
  Cache& c = cache();
  c.sync_epoch();
  PackedCacheCounts r = c.counts;
  r.entries = static_cast<std::int64_t>(c.entries.size());
  r.bytes = c.bytes;
  return r;
}

void reset_packed_cache_counts() { cache().counts = {}; }

}  // namespace xg::detail
