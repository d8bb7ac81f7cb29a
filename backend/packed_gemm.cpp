#include "detail/packed_gemm.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "detail/gemm_test_hook.hpp"
#include "detail/thread_pool.hpp"

namespace xg::detail {

namespace {

// The widest vector registers this build targets (-march=native picks them up).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

typedef float VecF __attribute__((vector_size(kVecBytes)));
typedef double VecD __attribute__((vector_size(kVecBytes)));

template <class T>
struct Vec;
template <>
struct Vec<float> {
  using V = VecF;
};
template <>
struct Vec<double> {
  using V = VecD;
};

// A tile is kMR rows by kNV vectors: 16 accumulators, plus kNV panel loads and one
// broadcast per k, fit the 32 AVX-512 registers (and, as halves, the 16 of AVX2) with room
// to spare. Measured on Zen 5 for [32, 256] · [256, 1024]: 250 GFLOP/s for 8 x 2 vectors,
// 194 for 4 x 4, 190 for 16 x 1.
constexpr int kMR = 8;
constexpr int kNV = 2;
template <class T>
constexpr std::int64_t kLanes = kVecBytes / static_cast<int>(sizeof(T));
template <class T>
constexpr std::int64_t kNR = kNV * kLanes<T>;

template <class V, class T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// C[MR, NR] += op(A)[MR, K] · P[K, NR], the accumulators held in registers across the K
// loop. op(A)[i, k] is A[i * lda + k], or A[k * lda + i] when TA (A stored [K, M]).
template <class T, int MR, bool TA>
void tile(std::int64_t K, const T* A, std::int64_t lda, const T* P, T* C, std::int64_t ldc) {
  using V = typename Vec<T>::V;
  constexpr std::int64_t L = kLanes<T>, NR = kNR<T>;
  V acc[MR][kNV] = {};
  for (std::int64_t k = 0; k < K; ++k) {
    V b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = load<V>(P + k * NR + v * L);
    for (int i = 0; i < MR; ++i) {
      const T a = TA ? A[k * lda + i] : A[i * lda + k];
      for (int v = 0; v < kNV; ++v) acc[i][v] += a * b[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < kNV; ++v) {
      T* c = C + i * ldc + v * L;
      store(c, load<V>(c) + acc[i][v]);
    }
  }
}

template <class T, bool TA>
void tile_rows(int mr, std::int64_t K, const T* A, std::int64_t lda, const T* P, T* C, std::int64_t ldc) {
  static_assert(kMR == 8, "one case per row count below");
  switch (mr) {
    case 8: return tile<T, 8, TA>(K, A, lda, P, C, ldc);
    case 7: return tile<T, 7, TA>(K, A, lda, P, C, ldc);
    case 6: return tile<T, 6, TA>(K, A, lda, P, C, ldc);
    case 5: return tile<T, 5, TA>(K, A, lda, P, C, ldc);
    case 4: return tile<T, 4, TA>(K, A, lda, P, C, ldc);
    case 3: return tile<T, 3, TA>(K, A, lda, P, C, ldc);
    case 2: return tile<T, 2, TA>(K, A, lda, P, C, ldc);
    default: return tile<T, 1, TA>(K, A, lda, P, C, ldc);
  }
}

// Column panels of kNR<T> columns that hold N columns, the last one zero-padded.
template <class T>
std::int64_t panel_count(std::int64_t N) {
  return (N + kNR<T> - 1) / kNR<T>;
}

// The first element of buf on a 64-byte line, buf grown to hold n elements from there.
template <class T>
T* line_aligned(std::vector<T>& buf, std::int64_t n) {
  constexpr std::size_t line = 64 / sizeof(T);
  if (buf.size() < static_cast<std::size_t>(n) + line) buf.resize(static_cast<std::size_t>(n) + line);
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(T);
}

// op(B)[K, N] (times alpha) into panels of kNR<T> columns at dst, K x kNR each, the last
// one zero-padded; dst holds panel_count(N) * kNR * K elements. op(B) = B stored [K, N]
// with row stride ldb, or Bᵀ when trans_b (B stored [N, K]).
template <class T>
void pack_panels(bool trans_b, std::int64_t K, std::int64_t N, const T* B, std::int64_t ldb, T alpha, T* dst) {
  constexpr std::int64_t NR = kNR<T>;
  for (std::int64_t j0 = 0; j0 < N; j0 += NR) {
    T* d = dst + j0 * K;
    const std::int64_t nc = std::min(NR, N - j0);
    if (nc < NR) std::fill(d, d + K * NR, T(0));
    if (trans_b) {
      // op(B)[k, j] = B[j, k]: read B's rows contiguously.
      for (std::int64_t j = 0; j < nc; ++j) {
        const T* src = B + (j0 + j) * ldb;
        for (std::int64_t k = 0; k < K; ++k) d[k * NR + j] = alpha * src[k];
      }
    } else if (alpha == T(1)) {
      for (std::int64_t k = 0; k < K; ++k) std::memcpy(d + k * NR, B + k * ldb + j0, sizeof(T) * nc);
    } else {
      for (std::int64_t k = 0; k < K; ++k) {
        for (std::int64_t j = 0; j < nc; ++j) d[k * NR + j] = alpha * B[k * ldb + j0 + j];
      }
    }
  }
}

// C[M, N] += op(A)[M, K] · P, P packed by pack_panels. Panel-outer: one K x NR panel
// serves every row tile while it sits in L1.
template <class T, bool TA>
void run_panels(std::int64_t M, std::int64_t N, std::int64_t K, const T* A, std::int64_t lda, const T* P, T* C,
                std::int64_t ldc) {
  constexpr std::int64_t NR = kNR<T>;
  const auto a_rows = [&](std::int64_t i0) { return TA ? A + i0 : A + i0 * lda; };
  for (std::int64_t j0 = 0; j0 < N; j0 += NR) {
    const T* p = P + j0 * K;
    const std::int64_t nc = std::min(NR, N - j0);
    for (std::int64_t i0 = 0; i0 < M; i0 += kMR) {
      const int mr = static_cast<int>(std::min<std::int64_t>(kMR, M - i0));
      if (nc == NR) {
        tile_rows<T, TA>(mr, K, a_rows(i0), lda, p, C + i0 * ldc + j0, ldc);
      } else {
        // The right edge: the tile writes full vectors, so it runs into scratch.
        T tmp[kMR * NR] = {};
        tile_rows<T, TA>(mr, K, a_rows(i0), lda, p, tmp, NR);
        for (int i = 0; i < mr; ++i) {
          T* c = C + (i0 + i) * ldc + j0;
          for (std::int64_t j = 0; j < nc; ++j) c[j] += tmp[i * NR + j];
        }
      }
    }
  }
}

// GemmForceGuard's state (detail/gemm_test_hook.hpp): atomics, as the pool's workers and
// other threads read them while a test's guard is alive. The counters count only then.
std::atomic<bool> g_forced{false};
std::atomic<double> g_split_flops{0.0};
std::atomic<std::int64_t> g_tiled_calls{0}, g_split_calls{0};

void count(std::atomic<std::int64_t>& counter) {
  if (g_forced.load(std::memory_order_relaxed)) counter.fetch_add(1, std::memory_order_relaxed);
}

double flops(std::int64_t M, std::int64_t N, std::int64_t K) {
  return 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
}

// Whether a product is big enough to split over threads: 64 MFLOP is ~300 us of work on
// one thread. Chosen when each split started its threads (~20 us apiece); kept with the
// pool, whose wake-up is cheaper, as smaller splits have not been measured.
bool worth_splitting(std::int64_t M, std::int64_t N, std::int64_t K) { return flops(M, N, K) >= 64e6; }

// Whether it splits: also needs threads > 1 and no BLAS threads competing for the cores
// (tiled_gemm_pays: only when every GEMM is xgrad's do the BLAS's threads stay asleep).
// Under a GemmForceGuard: from its split_flops up, whatever the BLAS.
bool splits(std::int64_t M, std::int64_t N, std::int64_t K, int threads) {
  if (threads <= 1) return false;
  if (g_forced.load(std::memory_order_relaxed)) return flops(M, N, K) >= g_split_flops.load(std::memory_order_relaxed);
  return worth_splitting(M, N, K) && tiled_gemm_pays();
}

// Runs f(t, j0, nc) over nt column ranges [j0, j0 + nc) of whole panels of width NR, t the
// range's index in [0, nt): on the thread pool, nt = min(threads, hardware threads, panels)
// when splits(), else f(0, 0, N) on the caller alone. threads: blas_threads() read once by
// the caller (another thread may change it meanwhile; the caller's packing spaces are sized
// by the same read). Each range's columns are computed as on one thread, so the result is
// bit-identical at any thread count. If any f throws, every range still runs and the caller
// gets the exception of the lowest t.
template <class F>
void split_columns(std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t NR, int threads, F&& f) {
  const std::int64_t panels = (N + NR - 1) / NR;
  std::int64_t nt = 1;
  if (splits(M, N, K, threads)) {
    static const auto hw = static_cast<std::int64_t>(std::max(1U, std::thread::hardware_concurrency()));
    nt = std::min({static_cast<std::int64_t>(threads), hw, panels});
  }
  if (nt <= 1) {
    f(std::int64_t{0}, std::int64_t{0}, N);
    return;
  }
  count(g_split_calls);
  const auto lo = [&](std::int64_t t) { return std::min(N, panels * t / nt * NR); };
  thread_pool().run(nt, [&](std::int64_t t) { f(t, lo(t), lo(t + 1) - lo(t)); });
}

}  // namespace

template <class T>
PackedB<T>::PackedB(bool trans_b, std::int64_t K, std::int64_t N, const T* B, std::int64_t ldb)
    : trans_(trans_b), K_(K), N_(N) {
  panels_ = line_aligned(buf_, panel_count<T>(N) * kNR<T> * K);
  pack_panels<T>(trans_b, K, N, B, ldb, T(1), panels_);
}

template <class T>
void PackedB<T>::repack(const T* B, std::int64_t ldb) {
  pack_panels<T>(trans_, K_, N_, B, ldb, T(1), panels_);
}

template <class T>
void PackedB<T>::gemm_acc(std::int64_t M, const T* A, std::int64_t lda, T* C, std::int64_t ldc) const {
  split_columns(M, N_, K_, kNR<T>, blas_threads(), [&](std::int64_t, std::int64_t j0, std::int64_t nc) {
    run_panels<T, false>(M, nc, K_, A, lda, panels_ + j0 * K_, C + j0, ldc);
  });
}

namespace {

template <class T>
void gemm_tiled_serial(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
                       const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc,
                       std::vector<T>& buf) {
  for (std::int64_t i = 0; i < M; ++i) {
    T* row = C + i * ldc;
    if (beta == T(0)) {
      std::fill(row, row + N, T(0));  // C may be uninitialised: never read it
    } else if (beta != T(1)) {
      for (std::int64_t j = 0; j < N; ++j) row[j] *= beta;
    }
  }
  if (K <= 0 || alpha == T(0)) return;
  // Blocks of op(B) small enough to stay in L2 while every row of A passes over them.
  constexpr std::int64_t KC = 256, NC = 1024;
  T* P = line_aligned(buf, std::min(KC, K) * panel_count<T>(std::min(NC, N)) * kNR<T>);
  for (std::int64_t j0 = 0; j0 < N; j0 += NC) {
    const std::int64_t nc = std::min(NC, N - j0);
    for (std::int64_t k0 = 0; k0 < K; k0 += KC) {
      const std::int64_t kc = std::min(KC, K - k0);
      // op(B)[k0:k0+kc, j0:j0+nc]
      const T* b = trans_b ? B + j0 * ldb + k0 : B + k0 * ldb + j0;
      pack_panels<T>(trans_b, kc, nc, b, ldb, alpha, P);
      if (trans_a) {
        run_panels<T, true>(M, nc, kc, A + k0 * lda, lda, P, C + j0, ldc);
      } else {
        run_panels<T, false>(M, nc, kc, A + k0, lda, P, C + j0, ldc);
      }
    }
  }
}

}  // namespace

template <class T>
void gemm_tiled(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
                std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  count(g_tiled_calls);
  // Packing space per share, owned by the calling thread and indexed by the share, not by
  // whichever pool worker runs it: reused from call to call, and never shared by two calls
  // at once (a pool worker serves any caller's shares, one call after another's).
  thread_local std::vector<std::vector<T>> space;
  const int threads = std::max(1, blas_threads());
  if (space.size() < static_cast<std::size_t>(threads)) space.resize(static_cast<std::size_t>(threads));
  // A pointer, not the name: inside a pool worker, `space` would be the worker's own instance.
  std::vector<std::vector<T>>* mine = &space;
  split_columns(M, N, K, kNR<T>, threads, [&](std::int64_t t, std::int64_t j0, std::int64_t nc) {
    gemm_tiled_serial<T>(trans_a, trans_b, M, nc, K, alpha, A, lda, trans_b ? B + j0 * ldb : B + j0, ldb, beta,
                         C + j0, ldc, (*mine)[static_cast<std::size_t>(t)]);
  });
}

template void gemm_tiled<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                                std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
template void gemm_tiled<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double, const double*,
                                 std::int64_t, const double*, std::int64_t, double, double*, std::int64_t);
template class PackedB<float>;
template class PackedB<double>;

int tiled_vector_bits() { return kVecBytes * 8; }

bool packed_gemm_usable() { return kVecBytes >= 32 && kVecBytes * 8 >= blas_kernel_bits(); }

bool packed_gemm_pays(std::int64_t M, std::int64_t N, std::int64_t K) {
  if (gemm_forced()) return true;
  return packed_gemm_usable() && (tiled_gemm_pays() || blas_threads() == 1 || !worth_splitting(M, N, K));
}

bool tiled_gemm_pays() { return kVecBytes >= 32 && kVecBytes * 8 > blas_kernel_bits(); }

GemmForceGuard::GemmForceGuard(double split_flops)
    : prev_forced_(g_forced.load()),
      prev_split_flops_(g_split_flops.load()),
      tiled0_(g_tiled_calls.load()),
      split0_(g_split_calls.load()) {
  g_split_flops.store(split_flops);
  g_forced.store(true);
}

GemmForceGuard::~GemmForceGuard() {
  g_split_flops.store(prev_split_flops_);
  g_forced.store(prev_forced_);
}

std::int64_t GemmForceGuard::tiled_calls() const { return g_tiled_calls.load() - tiled0_; }
std::int64_t GemmForceGuard::split_calls() const { return g_split_calls.load() - split0_; }

bool gemm_forced() { return g_forced.load(std::memory_order_relaxed); }

}  // namespace xg::detail
