#pragma once
// Private, for tests only (never installed): forces the paths of xgrad's GEMM that a build
// may otherwise never take. Why: the sanitizer build has 128-bit tiles, so gemm() never
// picks gemm_tiled and nothing splits, and everywhere else the split needs 64 MFLOP; with
// the guard the tests reach both at small sizes in any build.
//
// While a GemmForceGuard lives (anywhere in the process: the state is global, in atomics,
// so the pool's workers see it too):
//   - gemm() takes gemm_tiled wherever it would have called the BLAS's sgemm/dgemm, and
//     the recurrences take PackedB (packed_gemm_pays() is true);
//   - a product of at least split_flops (2 M N K) splits over the threads, tiled_gemm_pays()
//     or not (still at most min(get_num_threads(), hardware threads, panels) shares).
// Guards nest: each restores what was in force before it. Two guards alive on two threads
// at once are not supported (tests run one case at a time).
#include <cstdint>

namespace xg::detail {

class GemmForceGuard {
 public:
  explicit GemmForceGuard(double split_flops = 1.0);
  ~GemmForceGuard();
  GemmForceGuard(const GemmForceGuard&) = delete;
  GemmForceGuard& operator=(const GemmForceGuard&) = delete;

  // Since this guard started: calls of gemm_tiled (from gemm() or directly), and GEMMs
  // (gemm_tiled or PackedB::gemm_acc) that split over more than one share.
  std::int64_t tiled_calls() const;
  std::int64_t split_calls() const;

 private:
  bool prev_forced_;
  double prev_split_flops_;
  std::int64_t tiled0_, split0_;
};

// Whether a GemmForceGuard is alive (read by gemm() and packed_gemm_pays()).
bool gemm_forced();

}  // namespace xg::detail
