#pragma once
// Private: the one BLAS entry point the ops use. Only blas.cpp sees <cblas.h> (it
// clashes with xtensor-blas's own CBLAS declarations), so this header stays plain C++.
#include <cstdint>

namespace xg::detail {

// Row-major C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C, where op(A) = A (A is
// [M,K], row stride lda) or Aᵀ when trans_a (A is stored [K,M]); likewise B. The
// transposes are never materialised: the flags go straight to BLAS.
// Degenerate sizes are fine: M or N == 0 does nothing; K == 0 leaves beta * C (zeros
// when beta == 0, even if C was uninitialised). With beta == 0, C may be uninitialised.
// Vector-shaped products (M == 1 or N == 1) go to gemv, which does not pack operands;
// outer products (K == 1) are one loop.
// Dimensions and leading dimensions beyond the BLAS integer range throw ShapeError.
template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
          std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc);

extern template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                                 std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
extern template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double, const double*,
                                  std::int64_t, const double*, std::int64_t, double, double*, std::int64_t);

}  // namespace xg::detail
