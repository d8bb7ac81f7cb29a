#pragma once
// Private: a GEMM for the recurrences, where one operand (W_hh) is multiplied by a new small
// [B, H] matrix at every step. BLAS re-packs W_hh into cache-friendly panels on every call
// (a full copy of W per step, ~20% of the per-step time at B = 32); PackedB packs it once
// per sequence and the per-step products run on a register-tiled kernel over the panels.
#include <cstdint>
#include <vector>

namespace xg::detail {

// op(B)[K, N] stored as column panels of a fixed width (zero-padded at the right edge),
// each panel K rows of contiguous lanes. op(B) = B stored [K, N] with row stride ldb, or
// Bᵀ when trans_b (B stored [N, K]).
template <class T>
class PackedB {
 public:
  PackedB(bool trans_b, std::int64_t K, std::int64_t N, const T* B, std::int64_t ldb);

  // C[M, N] += A[M, K] · op(B), A row-major with row stride lda, C with row stride ldc.
  void gemm_acc(std::int64_t M, const T* A, std::int64_t lda, T* C, std::int64_t ldc) const;

  // Packs new values of the same operand (same K, N, transpose) into the same panels.
  void repack(const T* B, std::int64_t ldb);

  std::int64_t K() const { return K_; }
  std::int64_t N() const { return N_; }

 private:
  bool trans_;
  std::int64_t K_, N_;
  std::vector<T> buf_;
  T* panels_;  // buf_'s first 64-byte-aligned element
};

extern template class PackedB<float>;
extern template class PackedB<double>;

// The same kernel as a whole GEMM, with gemm()'s contract (detail/blas.hpp): C[M, N] =
// alpha * op(A) . op(B) + beta * C, op(B) packed block by block on every call.
template <class T>
void gemm_tiled(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
                std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc);
extern template void gemm_tiled<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                                       std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
extern template void gemm_tiled<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double, const double*,
                                        std::int64_t, const double*, std::int64_t, double, double*, std::int64_t);

// Whether the recurrences can use PackedB instead of BLAS: when this build has vector
// registers of at least 256 bits (the kernel is compiled for the build's target) and they
// are no narrower than the BLAS's kernels. At equal width packing W_hh once still wins.
bool packed_gemm_usable();

// Whether a per-step product [M, K] · [K, N] should run on PackedB: when usable, except
// where it would be split over threads while the BLAS runs the other products (its idle
// threads spin for a while after each call and take the cores our split needs: biglstm's
// step product reached 275 GFLOP/s split against BLAS's 318 on 2 threads; alone, 463).
bool packed_gemm_pays(std::int64_t M, std::int64_t N, std::int64_t K);

// Whether gemm() should take gemm_tiled over BLAS: when the kernels OpenBLAS picked at load
// time use narrower vectors than this build (OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU),
// gemm_tiled is 1.2-2x faster on every shape measured. At equal width they tie on large
// products and BLAS wins small transposed ones (its packing is faster), so BLAS keeps them.
// Products of 64 MFLOP and more split over get_num_threads() threads, and only here: with
// every GEMM ours, the BLAS's threads stay asleep.
bool tiled_gemm_pays();

// The vector width (bits) the kernel is compiled for.
int tiled_vector_bits();

// From runtime.cpp: the BLAS's thread count, and the vector width (bits) of its kernels.
int blas_threads();
int blas_kernel_bits();

}  // namespace xg::detail
