// xgrad's own GEMM kernel (detail/packed_gemm.hpp), checked against triple loops in long
// double over the edges it has: row tiles of 8 and their remainders, column panels and the
// zero-padded last one, the 256-deep and 1024-wide blocks of gemm_tiled, every transpose,
// alpha, beta (beta = 0 must not read C), leading dimensions wider than the rows, and the
// split over threads (which must not change a single bit).
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "xgrad/backend/detail/blas.hpp"
#include "xgrad/backend/detail/packed_gemm.hpp"

using namespace xg;

namespace {

struct Case {
  bool ta, tb;
  std::int64_t M, N, K;
};

template <class T>
std::vector<T> random_vec(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(u(rng));
  return v;
}

// C = alpha op(A) op(B) + beta C in long double; A, B, C with leading dimensions lda, ldb, ldc.
template <class T>
std::vector<long double> reference(const Case& c, T alpha, const std::vector<T>& A, std::int64_t lda,
                                   const std::vector<T>& B, std::int64_t ldb, T beta, const std::vector<T>& C,
                                   std::int64_t ldc) {
  std::vector<long double> out(static_cast<std::size_t>(c.M * ldc));
  for (std::int64_t i = 0; i < c.M; ++i) {
    for (std::int64_t j = 0; j < c.N; ++j) {
      long double s = 0;
      for (std::int64_t k = 0; k < c.K; ++k) {
        const T a = c.ta ? A[static_cast<std::size_t>(k * lda + i)] : A[static_cast<std::size_t>(i * lda + k)];
        const T b = c.tb ? B[static_cast<std::size_t>(j * ldb + k)] : B[static_cast<std::size_t>(k * ldb + j)];
        s += static_cast<long double>(a) * b;
      }
      const auto at = static_cast<std::size_t>(i * ldc + j);
      out[at] = alpha * s + (beta == T(0) ? 0.0L : static_cast<long double>(beta) * C[at]);
    }
  }
  return out;
}

// Products of K terms of size <= 1: the float error bound grows like K * eps.
template <class T>
double tolerance(std::int64_t K) {
  return 4.0 * static_cast<double>(K + 2) * std::numeric_limits<T>::epsilon();
}

template <class T>
void check_tiled(const Case& c, T alpha, T beta, std::int64_t pad, std::mt19937& rng) {
  const std::int64_t lda = (c.ta ? c.M : c.K) + pad, ldb = (c.tb ? c.K : c.N) + pad, ldc = c.N + pad;
  const std::int64_t arows = c.ta ? c.K : c.M, brows = c.tb ? c.N : c.K;
  const auto A = random_vec<T>(static_cast<std::size_t>(std::max<std::int64_t>(arows * lda, 1)), rng);
  const auto B = random_vec<T>(static_cast<std::size_t>(std::max<std::int64_t>(brows * ldb, 1)), rng);
  auto C = random_vec<T>(static_cast<std::size_t>(std::max<std::int64_t>(c.M * ldc, 1)), rng);
  if (beta == T(0)) {
    // beta = 0: C may be uninitialised, so NaN there must not leak into the result.
    for (T& x : C) x = std::numeric_limits<T>::quiet_NaN();
  }
  const auto want = reference<T>(c, alpha, A, lda, B, ldb, beta, C, ldc);
  std::vector<T> got = C;
  detail::gemm_tiled<T>(c.ta, c.tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
  double worst = 0;
  bool pad_kept = true;
  for (std::int64_t i = 0; i < c.M; ++i) {
    for (std::int64_t j = 0; j < ldc; ++j) {
      const auto at = static_cast<std::size_t>(i * ldc + j);
      if (j >= c.N) {
        // Columns past N belong to the caller: untouched (NaN stays NaN, bit for bit).
        pad_kept = pad_kept && (std::isnan(C[at]) ? std::isnan(got[at]) : got[at] == C[at]);
        continue;
      }
      const double err = std::fabs(static_cast<double>(got[at] - want[at]));
      worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : std::max(worst, err);
    }
  }
  INFO("ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K << " alpha=" << alpha
             << " beta=" << beta << " pad=" << pad);
  CHECK(worst <= tolerance<T>(c.K) * (std::fabs(static_cast<double>(alpha)) + 1.0));
  CHECK(pad_kept);
}

const std::vector<Case> kCases = {
    // Row tiles: 1..9 and 17 rows; panels: N below, at and past one panel (16 or 32 lanes).
    {false, false, 1, 5, 3},    {false, true, 2, 16, 7},    {true, false, 7, 31, 9},   {true, true, 8, 32, 12},
    {false, false, 9, 33, 20},  {false, true, 17, 47, 64},  {true, false, 3, 64, 1},   {true, true, 5, 65, 2},
    // Across the 256-deep block of op(B) and the 1024-wide one.
    {false, false, 11, 40, 257}, {false, true, 13, 24, 513}, {true, false, 6, 1030, 5}, {true, true, 9, 1041, 3},
    // Shapes of the LSTM workloads (gate products, their gradients).
    {false, true, 32, 512, 192}, {false, false, 32, 192, 512}, {true, false, 40, 64, 300},
};

}  // namespace

TEST_CASE("gemm_tiled matches a long-double triple loop: every transpose, tile edge and block edge") {
  std::mt19937 rng(7);
  for (const Case& c : kCases) {
    check_tiled<float>(c, 1.0f, 0.0f, 0, rng);
    check_tiled<double>(c, 1.0, 0.0, 0, rng);
    check_tiled<float>(c, -0.5f, 1.0f, 3, rng);
    check_tiled<double>(c, 2.0, -1.5, 5, rng);
  }
}

TEST_CASE("gemm_tiled: degenerate sizes keep gemm()'s contract") {
  std::vector<float> A(12, 1.0f), B(12, 1.0f);
  SUBCASE("K = 0: C = beta C, and beta = 0 writes zeros over NaN") {
    std::vector<float> C = {std::numeric_limits<float>::quiet_NaN(), 2.0f, 3.0f, 4.0f};
    detail::gemm_tiled<float>(false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.0f, C.data(), 2);
    CHECK(C == std::vector<float>{0, 0, 0, 0});
    C = {1.0f, 2.0f, 3.0f, 4.0f};
    detail::gemm_tiled<float>(false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 3.0f, C.data(), 2);
    CHECK(C == std::vector<float>{3, 6, 9, 12});
  }
  SUBCASE("M = 0 or N = 0: nothing is written") {
    std::vector<float> C = {5.0f};
    detail::gemm_tiled<float>(false, false, 0, 1, 3, 1.0f, A.data(), 3, B.data(), 1, 0.0f, C.data(), 1);
    detail::gemm_tiled<float>(false, false, 1, 0, 3, 1.0f, A.data(), 3, B.data(), 1, 0.0f, C.data(), 1);
    CHECK(C[0] == 5.0f);
  }
}

TEST_CASE("PackedB: op(B) packed once, C += A op(B) for many A") {
  std::mt19937 rng(11);
  for (const bool tb : {false, true}) {
    for (const auto& [M, N, K] : std::vector<std::array<std::int64_t, 3>>{
             {1, 7, 5}, {8, 32, 16}, {13, 50, 33}, {32, 1024, 256}, {32, 256, 1024}, {3, 17, 0}}) {
      const std::int64_t ldb = (tb ? K : N) + 2, lda = K + 1, ldc = N + 4;
      const auto B = random_vec<double>(static_cast<std::size_t>(std::max<std::int64_t>((tb ? N : K) * ldb, 1)), rng);
      const detail::PackedB<double> packed(tb, K, N, B.data(), ldb);
      CHECK(packed.K() == K);
      CHECK(packed.N() == N);
      for (int rep = 0; rep < 2; ++rep) {
        const auto A = random_vec<double>(static_cast<std::size_t>(std::max<std::int64_t>(M * lda, 1)), rng);
        const auto C0 = random_vec<double>(static_cast<std::size_t>(M * ldc), rng);
        const auto want = reference<double>(Case{false, tb, M, N, K}, 1.0, A, lda, B, ldb, 1.0, C0, ldc);
        auto C = C0;
        packed.gemm_acc(M, A.data(), lda, C.data(), ldc);
        double worst = 0;
        for (std::int64_t i = 0; i < M; ++i) {
          for (std::int64_t j = 0; j < ldc; ++j) {
            const auto at = static_cast<std::size_t>(i * ldc + j);
            worst = std::max(worst, j < N ? std::fabs(static_cast<double>(C[at] - want[at])) : std::fabs(C[at] - C0[at]));
          }
        }
        INFO("tb=" << tb << " M=" << M << " N=" << N << " K=" << K);
        CHECK(worst <= tolerance<double>(K));
      }
    }
  }
}

TEST_CASE("gemm_tiled and PackedB on two threads: the same bits as on one") {
  // Each thread takes whole column panels, so every element sums the same terms in the
  // same order. 2 * 96 * 600 * 700 = 81 MFLOP is above the split threshold.
  std::mt19937 rng(3);
  const std::int64_t M = 96, N = 600, K = 700;
  const auto A = random_vec<float>(static_cast<std::size_t>(M * K), rng);
  const auto B = random_vec<float>(static_cast<std::size_t>(N * K), rng);
  const int before = get_num_threads();
  std::vector<float> one(static_cast<std::size_t>(M * N)), two(one.size()), p1(one.size(), 0.f), p2(one.size(), 0.f);
  const detail::PackedB<float> packed(true, K, N, B.data(), K);
  set_num_threads(1);
  detail::gemm_tiled<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, one.data(), N);
  packed.gemm_acc(M, A.data(), K, p1.data(), N);
  set_num_threads(2);
  const int threads = get_num_threads();
  detail::gemm_tiled<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, two.data(), N);
  packed.gemm_acc(M, A.data(), K, p2.data(), N);
  set_num_threads(before);
  CHECK(threads == 2);
  CHECK(one == two);
  CHECK(p1 == p2);
  // And both agree with the reference.
  const auto want = reference<float>(Case{false, true, M, N, K}, 1.0f, A, K, B, K, 0.0f, one, N);
  double worst = 0;
  for (std::size_t i = 0; i < one.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(one[i] - want[i])));
  CHECK(worst <= tolerance<float>(K));
}

TEST_CASE("gemm() routes to the tiled kernel only where it pays, with the same results either way") {
  // Whatever gemm() picks on this machine, it must agree with the tiled kernel and with the
  // reference on a product big enough for either path.
  std::mt19937 rng(5);
  const Case c{true, false, 64, 96, 130};
  const auto A = random_vec<double>(static_cast<std::size_t>(c.K * c.M), rng);
  const auto B = random_vec<double>(static_cast<std::size_t>(c.K * c.N), rng);
  std::vector<double> via_gemm(static_cast<std::size_t>(c.M * c.N)), via_tiled(via_gemm.size());
  detail::gemm<double>(true, false, c.M, c.N, c.K, 1.0, A.data(), c.M, B.data(), c.N, 0.0, via_gemm.data(), c.N);
  detail::gemm_tiled<double>(true, false, c.M, c.N, c.K, 1.0, A.data(), c.M, B.data(), c.N, 0.0, via_tiled.data(),
                             c.N);
  const auto want = reference<double>(c, 1.0, A, c.M, B, c.N, 0.0, via_gemm, c.N);
  for (std::size_t i = 0; i < via_gemm.size(); ++i) {
    REQUIRE(std::fabs(via_gemm[i] - static_cast<double>(want[i])) <= tolerance<double>(c.K));
    REQUIRE(std::fabs(via_tiled[i] - static_cast<double>(want[i])) <= tolerance<double>(c.K));
  }
  // The tiled kernel is only ever chosen where the packed recurrence is too, and blas_info()
  // says which one runs.
  CHECK((!detail::tiled_gemm_pays() || detail::packed_gemm_usable()));
  const BlasInfo info = blas_info();
  const std::string own = "xgrad-" + std::to_string(detail::tiled_vector_bits());
  CHECK(info.gemm == (detail::tiled_gemm_pays() ? own : "blas"));
  CHECK(info.recurrent_gemm == (detail::packed_gemm_usable() ? own : "blas"));
}
