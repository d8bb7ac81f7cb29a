// The BLAS wrapper behind matmul. The only file that includes <cblas.h>.
#include "detail/blas.hpp"

#include <cblas.h>

#include <limits>
#include <vector>

#include <fmt/format.h>

#include "detail/gemm_test_hook.hpp"
#include "detail/packed_gemm.hpp"
#include "error.hpp"

namespace xg::detail {

namespace {

// The integer type of the CBLAS interface: each library names its own.
#ifdef XGRAD_BLAS_OPENBLAS
using blasint = ::blasint;
#else
using blasint = f77_int;
#endif

// Overloads so the template below reads once for both precisions.
void gemm_call(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k, float alpha,
               const float* a, blasint lda, const float* b, blasint ldb, float beta, float* c, blasint ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm_call(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k, double alpha,
               const double* a, blasint lda, const double* b, blasint ldb, double beta, double* c, blasint ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemv_call(CBLAS_TRANSPOSE t, blasint m, blasint n, float alpha, const float* a, blasint lda, const float* x,
               blasint incx, float beta, float* y, blasint incy) {
  cblas_sgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
void gemv_call(CBLAS_TRANSPOSE t, blasint m, blasint n, double alpha, const double* a, blasint lda, const double* x,
               blasint incx, double beta, double* y, blasint incy) {
  cblas_dgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

blasint to_blas(std::int64_t v, std::int64_t M, std::int64_t N, std::int64_t K) {
  if (v < 0 || v > std::numeric_limits<blasint>::max()) {
    throw ShapeError(fmt::format("gemm: size {} (M={}, N={}, K={}) is outside the range of the BLAS integer type", v,
                                 M, N, K));
  }
  return static_cast<blasint>(v);
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
          std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    // An empty inner product is zero: C = beta * C, and beta == 0 must not read C.
    for (std::int64_t i = 0; i < M; ++i) {
      T* row = C + i * ldc;
      for (std::int64_t j = 0; j < N; ++j) row[j] = beta == T(0) ? T(0) : beta * row[j];
    }
    return;
  }
  if (K == 1) {
    // An outer product (the weight gradient of a single-row or single-column step): sgemm
    // would pack both operands and pre-scale C for 2*M*N flops; one pass is cheaper.
    const std::int64_t sa = trans_a ? 1 : lda, sb = trans_b ? ldb : 1;
    const T* b = B;
    std::vector<T> packed;
    if (sb != 1) {
      // A strided row of op(B): gather it once so the loop below runs unit-stride (vectorised).
      packed.resize(static_cast<std::size_t>(N));
      for (std::int64_t j = 0; j < N; ++j) packed[static_cast<std::size_t>(j)] = B[j * sb];
      b = packed.data();
    }
    for (std::int64_t i = 0; i < M; ++i) {
      const T ai = alpha * A[i * sa];
      T* row = C + i * ldc;
      if (beta == T(0)) {
        for (std::int64_t j = 0; j < N; ++j) row[j] = ai * b[j];
      } else {
        for (std::int64_t j = 0; j < N; ++j) row[j] = beta * row[j] + ai * b[j];
      }
    }
    return;
  }
  const blasint m = to_blas(M, M, N, K), n = to_blas(N, M, N, K), k = to_blas(K, M, N, K);
  const blasint la = to_blas(lda, M, N, K), lb = to_blas(ldb, M, N, K), lc = to_blas(ldc, M, N, K);
  if (beta == T(0) && (M == 1 || N == 1)) {
    // gemv scales y by beta first; make "C may be uninitialised" hold whatever the BLAS does with 0 * NaN.
    for (std::int64_t i = 0; i < M; ++i) {
      for (std::int64_t j = 0; j < N; ++j) C[i * ldc + j] = T(0);
    }
  }
  if (N == 1) {
    // C[:,0] = op(A) . b, with b the single column of op(B).
    const blasint incb = trans_b ? 1 : lb;
    if (trans_a) {
      gemv_call(CblasTrans, k, m, alpha, A, la, B, incb, beta, C, lc);  // A stored [K,M]
    } else {
      gemv_call(CblasNoTrans, m, k, alpha, A, la, B, incb, beta, C, lc);
    }
    return;
  }
  if (M == 1) {
    // C[0,:] = a . op(B) = op(B)ᵀ . a, with a the single row of op(A).
    const blasint inca = trans_a ? la : 1;
    if (trans_b) {
      gemv_call(CblasNoTrans, n, k, alpha, B, lb, A, inca, beta, C, 1);  // B stored [N,K]
    } else {
      gemv_call(CblasTrans, k, n, alpha, B, lb, A, inca, beta, C, 1);
    }
    return;
  }
  if (tiled_gemm_pays() || gemm_forced()) {
    gemm_tiled<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  gemm_call(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, A, la, B, lb,
            beta, C, lc);
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*, std::int64_t,
                          const float*, std::int64_t, float, float*, std::int64_t);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double, const double*,
                           std::int64_t, const double*, std::int64_t, double, double*, std::int64_t);

}  // namespace xg::detail
