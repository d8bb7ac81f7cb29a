// xgrad's own GEMM kernel (detail/packed_gemm.hpp), checked against triple loops in long
// double over the edges it has: row tiles of 8 and their remainders, column panels and the
// zero-padded last one, the 256-deep and 1024-wide blocks of gemm_tiled, every transpose,
// alpha, beta (beta = 0 must not read C), leading dimensions wider than the rows, and the
// split over threads (which must not change a single bit). Under a GemmForceGuard the same
// checks reach gemm()'s tiled route and the split at small sizes in any build.
//
// Also compiled (with XGRAD_TEST_WIDE_TILES) into the wide-tile binaries of tests/meson.build,
// gemm_avx2 and gemm_native, whose GEMM sources are built for AVX2 or -march=native: there
// every case is skipped on a CPU that cannot run those tiles, and the environment variable
// XGRAD_TEST_TILE_BITS, when set, is the vector width the kernel must report.
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "xgrad/backend/detail/blas.hpp"
#include "xgrad/backend/detail/gemm_test_hook.hpp"
#include "xgrad/backend/detail/packed_gemm.hpp"

using namespace xg;

#ifdef XGRAD_TEST_WIDE_TILES
namespace {
// Whether this binary's kernel is a wide one this CPU can run (runs before main: hence
// __builtin_cpu_init).
bool wide_tiles_runnable() {
  __builtin_cpu_init();
  const int bits = detail::tiled_vector_bits();
  if (bits < 256 || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
  return bits < 512 || __builtin_cpu_supports("avx512f");
}
}  // namespace
TEST_SUITE_BEGIN("wide tiles" * doctest::skip(!wide_tiles_runnable()));

TEST_CASE("wide-tile binary: the kernel runs the vector width it was built for") {
  MESSAGE("tiled kernel: " << detail::tiled_vector_bits() << "-bit vectors");
  CHECK(detail::tiled_vector_bits() >= 256);
  if (const char* want = std::getenv("XGRAD_TEST_TILE_BITS")) CHECK(detail::tiled_vector_bits() == std::atoi(want));
}
#endif

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

// got against the reference on the M x N block; columns past N belong to the caller and
// must be untouched (NaN stays NaN, bit for bit).
struct Deviation {
  double worst = 0;
  bool pad_kept = true;
};
template <class T>
Deviation deviation(const Case& c, const std::vector<T>& C, const std::vector<T>& got,
                    const std::vector<long double>& want, std::int64_t ldc) {
  Deviation d;
  for (std::int64_t i = 0; i < c.M; ++i) {
    for (std::int64_t j = 0; j < ldc; ++j) {
      const auto at = static_cast<std::size_t>(i * ldc + j);
      if (j >= c.N) {
        d.pad_kept = d.pad_kept && (std::isnan(C[at]) ? std::isnan(got[at]) : got[at] == C[at]);
        continue;
      }
      const double err = std::fabs(static_cast<double>(got[at] - want[at]));
      d.worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : std::max(d.worst, err);
    }
  }
  return d;
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
  const Deviation d = deviation(c, C, got, want, ldc);
  INFO("ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K << " alpha=" << alpha
             << " beta=" << beta << " pad=" << pad);
  CHECK(d.worst <= tolerance<T>(c.K) * (std::fabs(static_cast<double>(alpha)) + 1.0));
  CHECK(d.pad_kept);
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
    for (const auto& shape : std::vector<std::array<std::int64_t, 3>>{
             {1, 7, 5}, {8, 32, 16}, {13, 50, 33}, {32, 1024, 256}, {32, 256, 1024}, {3, 17, 0}}) {
      // Not a structured binding: clang 14 cannot capture one in INFO's lambda.
      const std::int64_t M = shape[0], N = shape[1], K = shape[2];
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

namespace {

// Sets the thread count (BLAS and pool) for a scope, then restores it.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : before_(get_num_threads()) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(before_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int before_;
};

bool hardware_can_split() { return std::thread::hardware_concurrency() > 1; }

// Under a guard that splits everything: gemm() (through its tiled route) and gemm_tiled on
// 1..4 threads, each against the long-double reference, and every thread count's result the
// same bits as one thread's. Returns how many gemm() calls should have gone to gemm_tiled.
template <class T>
std::int64_t check_forced(const Case& c, T alpha, T beta, std::int64_t pad, std::mt19937& rng) {
  const std::int64_t lda = (c.ta ? c.M : c.K) + pad, ldb = (c.tb ? c.K : c.N) + pad, ldc = c.N + pad;
  const std::int64_t arows = c.ta ? c.K : c.M, brows = c.tb ? c.N : c.K;
  const auto A = random_vec<T>(static_cast<std::size_t>(arows * lda), rng);
  const auto B = random_vec<T>(static_cast<std::size_t>(brows * ldb), rng);
  auto C = random_vec<T>(static_cast<std::size_t>(c.M * ldc), rng);
  if (beta == T(0)) {
    for (T& x : C) x = std::numeric_limits<T>::quiet_NaN();
  }
  const auto want = reference<T>(c, alpha, A, lda, B, ldb, beta, C, ldc);
  std::vector<T> first;
  for (const bool via_gemm : {true, false}) {
    for (const int threads : {1, 2, 3, 4}) {
      const ThreadCount scope(threads);
      std::vector<T> got = C;
      if (via_gemm) {
        detail::gemm<T>(c.ta, c.tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
      } else {
        detail::gemm_tiled<T>(c.ta, c.tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
      }
      const Deviation d = deviation(c, C, got, want, ldc);
      INFO("ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K << " alpha=" << alpha
                 << " beta=" << beta << " pad=" << pad << " threads=" << threads << " via_gemm=" << via_gemm);
      CHECK(d.worst <= tolerance<T>(c.K) * (std::fabs(static_cast<double>(alpha)) + 1.0));
      CHECK(d.pad_kept);
      // gemm_tiled: bit for bit what one thread computes (gemm() may have taken gemv or the
      // outer-product loop for a single row, column or K = 1, so only the tiled calls compare).
      if (!via_gemm) {
        if (threads == 1) {
          first = got;
        } else {
          const bool same_bits = std::memcmp(first.data(), got.data(), sizeof(T) * got.size()) == 0;
          CHECK(same_bits);
        }
      }
    }
  }
  // gemm() hands M, N, K > 1 to its tiled route under the guard, once per thread count.
  return (c.M > 1 && c.N > 1 && c.K > 1) ? 4 : 0;
}

// Odd sizes around the tile edges (8 rows; 8 to 32 columns a panel, by dtype and width) and
// the 256-deep block: 1, 7, 63, 64, 65, 257.
const std::vector<Case> kForcedCases = {
    {false, false, 1, 7, 5},     {false, true, 7, 1, 9},       {true, false, 7, 7, 1},
    {true, true, 63, 65, 7},     {false, false, 65, 63, 64},   {false, true, 64, 64, 64},
    {true, false, 64, 64, 64},   {true, true, 65, 257, 63},    {false, false, 257, 65, 65},
    {false, true, 9, 257, 257},  {true, false, 63, 7, 257},    {true, true, 1, 257, 65},
};

}  // namespace

TEST_CASE("GemmForceGuard: gemm() takes the tiled kernel and splits from 64x64x64, f32 and f64, every transpose") {
  std::mt19937 rng(13);
  const detail::GemmForceGuard force(2.0 * 64 * 64 * 64);
  CHECK(detail::gemm_forced());
  CHECK(detail::packed_gemm_pays(64, 64, 64));
  std::int64_t want_tiled = 0;
  for (const Case& c : kForcedCases) {
    for (const bool ta : {false, true}) {
      for (const bool tb : {false, true}) {
        const Case t{ta, tb, c.M, c.N, c.K};
        want_tiled += check_forced<float>(t, 1.0f, 0.0f, 0, rng);
        want_tiled += check_forced<double>(t, -1.5, 0.5, 3, rng);
        want_tiled += 8;  // the gemm_tiled calls: 4 thread counts, 2 dtypes
      }
    }
  }
  // Every gemm() call with M, N, K > 1 went to gemm_tiled, plus the direct calls.
  CHECK(force.tiled_calls() == want_tiled);
  // 64x64x64 splits on 2 threads (whenever the hardware has 2): at least 2 panels at any width.
  const std::int64_t before = force.split_calls();
  {
    const ThreadCount two(2);
    std::vector<float> A(64 * 64, 0.5f), B(64 * 64, 0.25f), C(64 * 64);
    detail::gemm<float>(false, false, 64, 64, 64, 1.0f, A.data(), 64, B.data(), 64, 0.0f, C.data(), 64);
    CHECK(C.front() == 8.0f);
    CHECK(C.back() == 8.0f);
  }
  CHECK(force.split_calls() - before == (hardware_can_split() ? 1 : 0));
  // Just below the threshold: no split.
  {
    const ThreadCount two(2);
    std::vector<float> A(64 * 64, 0.5f), B(64 * 64, 0.25f), C(64 * 64);
    detail::gemm<float>(false, false, 64, 64, 63, 1.0f, A.data(), 63, B.data(), 64, 0.0f, C.data(), 64);
  }
  CHECK(force.split_calls() - before == (hardware_can_split() ? 1 : 0));
}

TEST_CASE("GemmForceGuard: PackedB splits at small sizes with the same bits as one thread") {
  std::mt19937 rng(17);
  const detail::GemmForceGuard force;  // split everything
  for (const bool tb : {false, true}) {
    for (const auto& shape : std::vector<std::array<std::int64_t, 3>>{{1, 65, 7}, {7, 257, 63}, {65, 63, 65}}) {
      const std::int64_t M = shape[0], N = shape[1], K = shape[2];
      const std::int64_t ldb = (tb ? K : N) + 1, lda = K + 2, ldc = N + 3;
      const auto B = random_vec<float>(static_cast<std::size_t>((tb ? N : K) * ldb), rng);
      const auto A = random_vec<float>(static_cast<std::size_t>(M * lda), rng);
      const auto C0 = random_vec<float>(static_cast<std::size_t>(M * ldc), rng);
      const detail::PackedB<float> packed(tb, K, N, B.data(), ldb);
      const auto want = reference<float>(Case{false, tb, M, N, K}, 1.0f, A, lda, B, ldb, 1.0f, C0, ldc);
      std::vector<float> one;
      for (const int threads : {1, 2, 4}) {
        const ThreadCount scope(threads);
        const std::int64_t splits_before = force.split_calls();
        auto C = C0;
        packed.gemm_acc(M, A.data(), lda, C.data(), ldc);
        INFO("tb=" << tb << " M=" << M << " N=" << N << " K=" << K << " threads=" << threads);
        CHECK(force.split_calls() - splits_before == (threads > 1 && hardware_can_split() ? 1 : 0));
        double worst = 0;
        for (std::int64_t i = 0; i < M; ++i) {
          for (std::int64_t j = 0; j < ldc; ++j) {
            const auto at = static_cast<std::size_t>(i * ldc + j);
            worst = std::max(worst, j < N ? std::fabs(static_cast<double>(C[at] - want[at]))
                                          : std::fabs(static_cast<double>(C[at] - C0[at])));
          }
        }
        CHECK(worst <= tolerance<float>(K));
        if (threads == 1) {
          one = C;
        } else {
          CHECK(C == one);
        }
      }
    }
  }
}

TEST_CASE("GemmForceGuard: nests, and the routes return to tiled_gemm_pays() when the last one ends") {
  CHECK_FALSE(detail::gemm_forced());
  {
    const detail::GemmForceGuard outer(1e9);
    {
      const detail::GemmForceGuard inner;  // splits everything
      const ThreadCount two(2);
      std::vector<double> A(7 * 65, 1.0), B(65 * 65, 1.0), C(7 * 65);
      detail::gemm<double>(false, false, 7, 65, 65, 1.0, A.data(), 65, B.data(), 65, 0.0, C.data(), 65);
      CHECK(inner.tiled_calls() == 1);
      CHECK(inner.split_calls() == (hardware_can_split() ? 1 : 0));
    }
    CHECK(detail::gemm_forced());
    // The outer guard's threshold is back: 2 * 7 * 65 * 65 flops is far below 1e9.
    const ThreadCount two(2);
    const std::int64_t before = outer.split_calls();
    std::vector<double> A(7 * 65, 1.0), B(65 * 65, 1.0), C(7 * 65);
    detail::gemm<double>(false, false, 7, 65, 65, 1.0, A.data(), 65, B.data(), 65, 0.0, C.data(), 65);
    CHECK(outer.split_calls() == before);
    CHECK(C[0] == 65.0);
  }
  CHECK_FALSE(detail::gemm_forced());
}

#ifdef XGRAD_TEST_WIDE_TILES
TEST_SUITE_END();
#endif
