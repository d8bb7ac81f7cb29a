// matmul and linear, and the BLAS wrapper behind them. Two independent references:
// hand-written triple loops over std::vector<double>, and xt::linalg::dot from
// xtensor-blas; linear also against its definition matmul(x, transpose(W)) + b.
#include <cmath>
#include <limits>
#include <string>

#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xview.hpp>

#include "helpers.hpp"
#include "xgrad/backend/detail/blas.hpp"

using namespace xg;
using xgtest::error_of;
using xgtest::has;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

using Vec = std::vector<double>;

// y[nb,M,N] = a[nb,M,K] . b[nb,K,N]; b_batched = false reuses b for every batch entry.
Vec ref_mm(const Vec& a, const Vec& b, std::int64_t nb, std::int64_t M, std::int64_t K, std::int64_t N,
           bool b_batched = true) {
  Vec y(static_cast<std::size_t>(nb * M * N), 0.0);
  for (std::int64_t t = 0; t < nb; ++t) {
    const std::int64_t bo = b_batched ? t * K * N : 0;
    for (std::int64_t i = 0; i < M; ++i) {
      for (std::int64_t j = 0; j < N; ++j) {
        double s = 0.0;
        for (std::int64_t k = 0; k < K; ++k) s += a[t * M * K + i * K + k] * b[bo + k * N + j];
        y[t * M * N + i * N + j] = s;
      }
    }
  }
  return y;
}

xt::xarray<double> to_xt(const Tensor& t) {
  std::vector<std::size_t> shape(t.shape().begin(), t.shape().end());
  return xt::adapt(t.to_vector<double>(), shape);
}

template <class F>
void check_throws_naming(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("expected an exception mentioning: " << needle);
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

// ---- values -------------------------------------------------------------------------

TEST_CASE("matmul of 2x2 matrices gives the hand-computed product") {
  Tensor a = from_vector(Vec{1, 2, 3, 4}, {2, 2});
  Tensor b = from_vector(Vec{5, 6, 7, 8}, {2, 2});
  Tensor y = matmul(a, b);
  CHECK(y.shape() == Shape{2, 2});
  check_values(y, {19, 22, 43, 50}, 0.0, 0.0);
}

TEST_CASE("matmul [M,K]x[K,N] matches a triple loop, f64 and f32, including M/N/K = 1") {
  const std::int64_t dims[][3] = {{3, 4, 5}, {1, 1, 1}, {1, 7, 3}, {4, 1, 6}, {5, 3, 1}, {1, 6, 1}, {17, 33, 9}};
  for (const auto& d : dims) {
    const std::int64_t M = d[0], K = d[1], N = d[2];
    CAPTURE(M);
    CAPTURE(K);
    CAPTURE(N);
    Tensor a = rnd({M, K}, -1, 1, 11);
    Tensor b = rnd({K, N}, -1, 1, 12);
    const Vec want = ref_mm(a.to_vector<double>(), b.to_vector<double>(), 1, M, K, N);
    Tensor y = matmul(a, b);
    CHECK(y.shape() == Shape{M, N});
    CHECK(y.dtype() == f64);
    check_values(y, want, 1e-12, 1e-12);
    Tensor y32 = matmul(a.to(f32), b.to(f32));
    CHECK(y32.dtype() == f32);
    check_values(y32, want, 1e-5, 1e-5);
  }
}

TEST_CASE("matmul [B,M,K]x[B,K,N] matches per-batch triple loops (batch 1 and 3)") {
  const std::int64_t dims[][4] = {{1, 2, 3, 4}, {3, 2, 3, 4}, {3, 1, 5, 1}, {2, 4, 1, 3}};
  for (const auto& d : dims) {
    const std::int64_t B = d[0], M = d[1], K = d[2], N = d[3];
    Tensor a = rnd({B, M, K}, -1, 1, 21);
    Tensor b = rnd({B, K, N}, -1, 1, 22);
    Tensor y = matmul(a, b);
    CHECK(y.shape() == Shape{B, M, N});
    check_values(y, ref_mm(a.to_vector<double>(), b.to_vector<double>(), B, M, K, N), 1e-12, 1e-12);
    check_values(matmul(a.to(f32), b.to(f32)), ref_mm(a.to_vector<double>(), b.to_vector<double>(), B, M, K, N),
                 1e-5, 1e-5);
  }
}

TEST_CASE("matmul [B,M,K]x[K,N] applies the same matrix to every batch entry") {
  const std::int64_t dims[][4] = {{1, 2, 3, 4}, {3, 2, 3, 4}, {4, 1, 5, 2}, {2, 3, 2, 1}};
  for (const auto& d : dims) {
    const std::int64_t B = d[0], M = d[1], K = d[2], N = d[3];
    Tensor a = rnd({B, M, K}, -1, 1, 31);
    Tensor b = rnd({K, N}, -1, 1, 32);
    Tensor y = matmul(a, b);
    CHECK(y.shape() == Shape{B, M, N});
    check_values(y, ref_mm(a.to_vector<double>(), b.to_vector<double>(), B, M, K, N, false), 1e-12, 1e-12);
  }
}

TEST_CASE("matmul [K]x[K,N] -> [N] and [M,K]x[K] -> [M]") {
  Tensor v = from_vector(Vec{1, -2, 3});
  Tensor w = from_vector(Vec{1, 2, 3, 4, 5, 6}, {3, 2});
  Tensor y = matmul(v, w);  // [1-6+15, 2-8+18]
  CHECK(y.shape() == Shape{2});
  check_values(y, {10, 12}, 0.0, 0.0);

  Tensor m = from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor z = matmul(m, v);  // [1-4+9, 4-10+18]
  CHECK(z.shape() == Shape{2});
  check_values(z, {6, 12}, 0.0, 0.0);

  for (std::int64_t K : {1, 4}) {
    for (std::int64_t N : {1, 5}) {
      Tensor a = rnd({K}, -1, 1, 41);
      Tensor b = rnd({K, N}, -1, 1, 42);
      check_values(matmul(a, b), ref_mm(a.to_vector<double>(), b.to_vector<double>(), 1, 1, K, N), 1e-12, 1e-12);
      Tensor c = rnd({N, K}, -1, 1, 43);
      check_values(matmul(c, a), ref_mm(c.to_vector<double>(), a.to_vector<double>(), 1, N, K, 1), 1e-12, 1e-12);
    }
  }
}

TEST_CASE("matmul agrees with xt::linalg::dot for every supported rank pair") {
  SUBCASE("[M,K]x[K,N]") {
    Tensor a = rnd({6, 5}, -1, 1, 51), b = rnd({5, 7}, -1, 1, 52);
    xt::xarray<double> want = xt::linalg::dot(to_xt(a), to_xt(b));
    check_values(matmul(a, b), Vec(want.begin(), want.end()), 1e-12, 1e-12);
  }
  SUBCASE("[K]x[K,N] and [M,K]x[K]") {
    Tensor v = rnd({5}, -1, 1, 53), m = rnd({5, 3}, -1, 1, 54), n = rnd({4, 5}, -1, 1, 55);
    xt::xarray<double> w1 = xt::linalg::dot(to_xt(v), to_xt(m));
    xt::xarray<double> w2 = xt::linalg::dot(to_xt(n), to_xt(v));
    check_values(matmul(v, m), Vec(w1.begin(), w1.end()), 1e-12, 1e-12);
    check_values(matmul(n, v), Vec(w2.begin(), w2.end()), 1e-12, 1e-12);
  }
  SUBCASE("[B,M,K]x[B,K,N] and [B,M,K]x[K,N], batch entry by batch entry") {
    Tensor a = rnd({3, 4, 5}, -1, 1, 56), b = rnd({3, 5, 2}, -1, 1, 57), c = rnd({5, 2}, -1, 1, 58);
    const xt::xarray<double> xa = to_xt(a), xb = to_xt(b), xc = to_xt(c);
    const xt::xarray<double> y1 = to_xt(matmul(a, b)), y2 = to_xt(matmul(a, c));
    for (std::size_t t = 0; t < 3; ++t) {
      xt::xarray<double> a_t = xt::view(xa, t), b_t = xt::view(xb, t);
      xt::xarray<double> w1 = xt::linalg::dot(a_t, b_t);
      xt::xarray<double> w2 = xt::linalg::dot(a_t, xc);
      xt::xarray<double> g1 = xt::view(y1, t), g2 = xt::view(y2, t);
      CHECK(xt::allclose(g1, w1, 1e-12, 1e-12));
      CHECK(xt::allclose(g2, w2, 1e-12, 1e-12));
    }
  }
}

// ---- gradients ----------------------------------------------------------------------

TEST_CASE("matmul gradcheck over every rank pair, with M, N, K and batch of 1") {
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  const std::int64_t sizes[] = {1, 3};
  for (std::int64_t M : sizes) {
    for (std::int64_t K : sizes) {
      for (std::int64_t N : sizes) {
        CAPTURE(M);
        CAPTURE(K);
        CAPTURE(N);
        gradcheck_ok(mm, {rnd({M, K}, -1, 1, 61), rnd({K, N}, -1, 1, 62)});
        gradcheck_ok(mm, {rnd({2, M, K}, -1, 1, 63), rnd({2, K, N}, -1, 1, 64)});
        gradcheck_ok(mm, {rnd({1, M, K}, -1, 1, 65), rnd({1, K, N}, -1, 1, 66)});
        gradcheck_ok(mm, {rnd({2, M, K}, -1, 1, 67), rnd({K, N}, -1, 1, 68)});
        gradcheck_ok(mm, {rnd({K}, -1, 1, 69), rnd({K, N}, -1, 1, 70)});
        gradcheck_ok(mm, {rnd({M, K}, -1, 1, 71), rnd({K}, -1, 1, 72)});
      }
    }
  }
  gradcheck_ok(mm, {rnd({4, 6}, -1, 1, 73), rnd({6, 5}, -1, 1, 74)});
  gradcheck_ok(mm, {rnd({3, 4, 6}, -1, 1, 75), rnd({3, 6, 5}, -1, 1, 76)});
}

TEST_CASE("matmul gradients equal g.bT and aT.g by hand (f32, one input needing grad)") {
  // With g = ones: da[i,k] = sum_j b[k,j], db[k,j] = sum_i a[i,k].
  Tensor a = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3}).requires_grad_();
  Tensor b = from_vector(std::vector<float>{1, -1, 2, 0, 3, 5}, {3, 2}).requires_grad_();
  sum(matmul(a, b)).backward();
  check_values(a.grad(), {0, 2, 8, 0, 2, 8}, 0.0, 0.0);  // row sums of b: 1-1, 2+0, 3+5
  check_values(b.grad(), {5, 5, 7, 7, 9, 9}, 0.0, 0.0);  // column sums of a: 1+4, 2+5, 3+6
  CHECK(a.grad().dtype() == f32);

  // Only b requires grad: a gets nothing and b's gradient is still right.
  Tensor c = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor d = from_vector(std::vector<float>{1, 1, 1, 1, 1, 1}, {3, 2}).requires_grad_();
  sum(matmul(c, d)).backward();
  CHECK_FALSE(c.grad().defined());
  check_values(d.grad(), {5, 5, 7, 7, 9, 9}, 0.0, 0.0);
}

TEST_CASE("matmul [B,M,K]x[K,N] accumulates the weight gradient over the whole batch") {
  // db = sum over b, m of a[b,m,:]ᵀ g[b,m,:]; with g = ones that is the column sums of a.
  Tensor a = rnd({4, 3, 2}, -1, 1, 81);
  Tensor w = rnd({2, 5}, -1, 1, 82).requires_grad_();
  sum(matmul(a, w)).backward();
  const Vec av = a.to_vector<double>();
  Vec want(10, 0.0);
  for (int r = 0; r < 12; ++r) {
    for (int k = 0; k < 2; ++k) {
      for (int j = 0; j < 5; ++j) want[k * 5 + j] += av[r * 2 + k];
    }
  }
  check_values(w.grad(), want, 1e-12, 1e-12);
}

// ---- empty and degenerate -----------------------------------------------------------

TEST_CASE("matmul with a zero inner dimension gives zeros; zero M, N or batch gives empty results") {
  Tensor a = zeros({3, 0}, f64).requires_grad_();
  Tensor b = zeros({0, 2}, f64).requires_grad_();
  Tensor y = matmul(a, b);
  CHECK(y.shape() == Shape{3, 2});
  check_values(y, Vec(6, 0.0), 0.0, 0.0);
  sum(y).backward();
  CHECK(a.grad().shape() == Shape{3, 0});
  CHECK(b.grad().shape() == Shape{0, 2});

  Tensor c = rnd({0, 4}).requires_grad_();
  Tensor d = rnd({4, 5}).requires_grad_();
  Tensor z = matmul(c, d);
  CHECK(z.shape() == Shape{0, 5});
  sum(z).backward();
  check_values(d.grad(), Vec(20, 0.0), 0.0, 0.0);  // nothing flowed in: an empty sum is 0

  CHECK(matmul(rnd({2, 4}), rnd({4, 0})).shape() == Shape{2, 0});
  CHECK(matmul(rnd({0, 2, 3}), rnd({0, 3, 4})).shape() == Shape{0, 2, 4});
  CHECK(matmul(rnd({2, 0, 3}), rnd({3, 4})).shape() == Shape{2, 0, 4});
  CHECK(matmul(rnd({0}), rnd({0, 4})).shape() == Shape{4});
  check_values(matmul(rnd({0}), rnd({0, 4})), Vec(4, 0.0), 0.0, 0.0);
  check_values(matmul(rnd({2, 0}, -1, 1, 3).to(f32), rnd({0}).to(f32)), Vec(2, 0.0), 0.0, 0.0);
}

// ---- bad input ----------------------------------------------------------------------

TEST_CASE("matmul rejects mismatched inner dimensions with the shapes in the message") {
  try {
    (void)matmul(zeros({32, 64}), zeros({65, 128}));
    FAIL("no exception");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "matmul: [32,64] x [65,128]: inner dimensions differ (64 vs 65)");
  }
  CHECK_THROWS_AS((void)matmul(zeros({2, 3, 4}), zeros({2, 5, 6})), ShapeError);
  CHECK_THROWS_AS((void)matmul(zeros({2, 3, 4}), zeros({5, 6})), ShapeError);
  CHECK_THROWS_AS((void)matmul(zeros({3}), zeros({4, 2})), ShapeError);
  CHECK_THROWS_AS((void)matmul(zeros({2, 3}), zeros({4})), ShapeError);
  check_throws_naming([] { (void)matmul(zeros({3}), zeros({4, 2})); }, "matmul: [3] x [4,2]");
}

TEST_CASE("matmul rejects mismatched batch sizes") {
  CHECK_THROWS_AS((void)matmul(zeros({4, 2, 3}), zeros({5, 3, 2})), ShapeError);
  check_throws_naming([] { (void)matmul(zeros({4, 2, 3}), zeros({5, 3, 2})); },
                      "matmul: [4,2,3] x [5,3,2]: batch sizes differ (4 vs 5)");
}

TEST_CASE("matmul rejects unsupported ranks and names them") {
  CHECK_THROWS_AS((void)matmul(scalar(1.0), zeros({1, 2})), ShapeError);
  check_throws_naming([] { (void)matmul(scalar(1.0), zeros({1, 2})); }, "0-d x 2-d");
  check_throws_naming([] { (void)matmul(zeros({2, 2, 3, 4}), zeros({4, 5})); }, "4-d x 2-d");
  check_throws_naming([] { (void)matmul(zeros({2, 3}), zeros({2, 3, 4, 5})); }, "2-d x 4-d");
  check_throws_naming([] { (void)matmul(zeros({3}), zeros({3})); }, "1-d x 1-d");
  check_throws_naming([] { (void)matmul(zeros({2, 3}), zeros({4, 3, 2})); }, "2-d x 3-d");
  check_throws_naming([] { (void)matmul(zeros({3}), zeros({4, 3, 2})); }, "1-d x 3-d");
  check_throws_naming([] { (void)matmul(zeros({4, 2, 3}), zeros({3})); }, "3-d x 1-d");
}

TEST_CASE("matmul rejects mixed and integer dtypes, and undefined tensors") {
  CHECK_THROWS_AS((void)matmul(zeros({2, 2}, f32), zeros({2, 2}, f64)), DtypeError);
  check_throws_naming([] { (void)matmul(zeros({2, 2}, f32), zeros({2, 2}, f64)); }, "matmul");
  Tensor idx = from_vector(std::vector<std::int64_t>{1, 2, 3, 4}, {2, 2});
  CHECK_THROWS_AS((void)matmul(idx, idx), DtypeError);
  check_throws_naming([&] { (void)matmul(idx, idx); }, "matmul");
  CHECK_THROWS_AS((void)matmul(Tensor(), zeros({2, 2})), StateError);
}

// ---- the gemm wrapper ---------------------------------------------------------------

TEST_CASE("detail::gemm with every transpose flag, alpha and beta matches a loop (gemm and gemv paths)") {
  const std::int64_t dims[][3] = {{3, 4, 5}, {1, 4, 5}, {3, 1, 5}, {1, 1, 5}, {3, 4, 1}};
  for (const auto& d : dims) {
    const std::int64_t M = d[0], N = d[1], K = d[2];
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        CAPTURE(M);
        CAPTURE(N);
        CAPTURE(K);
        CAPTURE(ta);
        CAPTURE(tb);
        // A is stored [M,K] or [K,M]; B [K,N] or [N,K]; C has a padded row stride.
        const Vec A = rnd({M * K}, -1, 1, 91).to_vector<double>();
        const Vec B = rnd({K * N}, -1, 1, 92).to_vector<double>();
        const std::int64_t lda = ta ? M : K, ldb = tb ? K : N, ldc = N + 2;
        Vec C(static_cast<std::size_t>(M * ldc), 0.5);
        Vec want = C;
        for (std::int64_t i = 0; i < M; ++i) {
          for (std::int64_t j = 0; j < N; ++j) {
            double s = 0.0;
            for (std::int64_t k = 0; k < K; ++k) {
              s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
            }
            want[i * ldc + j] = 2.0 * s + 3.0 * want[i * ldc + j];
          }
        }
        detail::gemm<double>(ta, tb, M, N, K, 2.0, A.data(), lda, B.data(), ldb, 3.0, C.data(), ldc);
        for (std::size_t i = 0; i < C.size(); ++i) CHECK(C[i] == doctest::Approx(want[i]).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("detail::gemm with beta 0 ignores NaN garbage in C; K = 0 gives beta * C") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Vec A{1, 2, 3}, B{4, 5, 6};
  Vec C(1, nan);  // 1x3 . 3x1 (gemv path)
  detail::gemm<double>(false, false, 1, 1, 3, 1.0, A.data(), 3, B.data(), 1, 0.0, C.data(), 1);
  CHECK(C[0] == 32.0);
  Vec C2(9, nan);  // 3x1 . 1x3 outer product (gemm path)
  detail::gemm<double>(false, false, 3, 3, 1, 1.0, A.data(), 1, B.data(), 3, 0.0, C2.data(), 3);
  CHECK(C2[0] == 4.0);
  CHECK(C2[8] == 18.0);
  std::vector<float> C3(4, std::numeric_limits<float>::quiet_NaN());
  detail::gemm<float>(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, C3.data(), 2);
  for (float v : C3) CHECK(v == 0.0f);
  Vec C4{1, 2, 3, 4};
  detail::gemm<double>(true, true, 2, 2, 0, 1.0, nullptr, 2, nullptr, 1, 2.0, C4.data(), 2);
  CHECK(C4 == Vec{2, 4, 6, 8});
  detail::gemm<double>(false, false, 0, 2, 3, 1.0, nullptr, 3, nullptr, 2, 0.0, nullptr, 2);  // nothing to do
}

// ---- linear -------------------------------------------------------------------------

namespace {

std::int64_t rows_of(const Shape& s, int trailing) {
  std::int64_t n = 1;
  for (int i = 0; i < s.size() - trailing; ++i) n *= s[i];
  return n;
}

// y[r, o] = Σ_i x[r, i] W[o, i] + b[o]
std::vector<double> ref_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>();
  const std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>();
  const std::int64_t out = w.shape()[0], in = w.shape()[1], n = rows_of(x.shape(), 1);
  std::vector<double> y(static_cast<std::size_t>(n * out));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t o = 0; o < out; ++o) {
      double acc = bv.empty() ? 0.0 : bv[o];
      for (std::int64_t i = 0; i < in; ++i) acc += xv[r * in + i] * wv[o * in + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

}  // namespace

TEST_CASE("linear: values against a hand loop for 2-D, 3-D and 1-D inputs, with and without bias") {
  struct Case {
    Shape x;
    std::int64_t out;
  };
  for (const Case& c : {Case{{5, 3}, 4}, Case{{2, 4, 3}, 2}, Case{{3}, 5}, Case{{1, 1}, 1}, Case{{2, 1, 3, 2}, 3}}) {
    const std::int64_t in = c.x.back();
    const Tensor x = rnd(c.x, -1, 1, 3);
    const Tensor w = rnd({c.out, in}, -1, 1, 4);
    const Tensor b = rnd({c.out}, -1, 1, 5);
    Shape ys = c.x;
    ys[ys.size() - 1] = c.out;
    INFO("x " << c.x.str() << " out " << c.out);
    const Tensor y = linear(x, w, b);
    CHECK(y.shape() == ys);
    check_values(y, ref_linear(x, w, b), 1e-12, 1e-12);
    const Tensor y0 = linear(x, w);
    CHECK(y0.shape() == ys);
    check_values(y0, ref_linear(x, w, Tensor()), 1e-12, 1e-12);
    // float32 goes through sgemm and agrees to float precision.
    check_values(linear(x.to(f32), w.to(f32), b.to(f32)), ref_linear(x, w, b), 1e-5, 1e-5);
  }
}

TEST_CASE("linear: definition: linear(x, W, b) == matmul(x, transpose(W)) + b, values and gradients") {
  const Tensor x0 = rnd({6, 5}, -1, 1, 11), w0 = rnd({3, 5}, -1, 1, 12), b0 = rnd({3}, -1, 1, 13);
  Tensor x1 = x0.clone().requires_grad_(), w1 = w0.clone().requires_grad_(), b1 = b0.clone().requires_grad_();
  Tensor x2 = x0.clone().requires_grad_(), w2 = w0.clone().requires_grad_(), b2 = b0.clone().requires_grad_();
  const Tensor g = rnd({6, 3}, -1, 1, 14);
  const Tensor fused = linear(x1, w1, b1);
  const Tensor composed = add(matmul(x2, transpose(w2, 0, 1)), b2);
  check_close(fused, composed, 1e-13, 1e-13);
  sum(mul(fused, g)).backward();
  sum(mul(composed, g)).backward();
  check_close(x1.grad(), x2.grad(), 1e-13, 1e-13);
  check_close(w1.grad(), w2.grad(), 1e-13, 1e-13);
  check_close(b1.grad(), b2.grad(), 1e-13, 1e-13);
  CHECK(fused.op_name() == "linear");
}

TEST_CASE("linear: gradcheck w.r.t. input, weight and bias over several shapes") {
  struct Case {
    Shape x;
    std::int64_t out;
  };
  for (const Case& c : {Case{{5, 3}, 4}, Case{{2, 4, 3}, 2}, Case{{3}, 5}, Case{{1, 1}, 1}, Case{{4, 2}, 1},
                        Case{{1, 6}, 3}, Case{{2, 1, 3, 2}, 3}}) {
    INFO("x " << c.x.str() << " out " << c.out);
    const std::int64_t in = c.x.back();
    const Tensor x = rnd(c.x, -1, 1, 21), w = rnd({c.out, in}, -1, 1, 22), b = rnd({c.out}, -1, 1, 23);
    gradcheck_ok([](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b});
    gradcheck_ok([](const std::vector<Tensor>& v) { return linear(v[0], v[1]); }, {x, w});
  }
}

TEST_CASE("linear: a weight used at every step of a loop accumulates its gradient") {
  // h_{t+1} = tanh(linear(h_t, W, b)): the RNN use of linear.
  const Tensor h0 = rnd({2, 3}, -1, 1, 31), w = rnd({3, 3}, -0.5, 0.5, 32), b = rnd({3}, -0.5, 0.5, 33);
  gradcheck_ok(
      [](const std::vector<Tensor>& v) {
        Tensor h = v[0];
        for (int t = 0; t < 4; ++t) h = tanh(linear(h, v[1], v[2]));
        return h;
      },
      {h0, w, b});
}

TEST_CASE("linear: only the inputs that require grad get one") {
  Tensor x = rnd({4, 3}, -1, 1, 41);
  Tensor w = rnd({2, 3}, -1, 1, 42).requires_grad_();
  const Tensor b = rnd({2}, -1, 1, 43);
  sum(linear(x, w, b)).backward();
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(b.grad().defined());
  // dW[o, i] = Σ_r x[r, i]
  std::vector<double> want;
  const std::vector<double> xv = x.to_vector<double>();
  for (int o = 0; o < 2; ++o) {
    for (int i = 0; i < 3; ++i) want.push_back(xv[i] + xv[3 + i] + xv[6 + i] + xv[9 + i]);
  }
  check_values(w.grad(), want, 1e-12, 1e-12);
  {
    NoGradGuard ng;
    CHECK_FALSE(linear(x, w, b).requires_grad());
  }
}

TEST_CASE("linear: empty batches and zero features") {
  Tensor w = rnd({4, 3}, -1, 1, 51).requires_grad_();
  Tensor b = rnd({4}, -1, 1, 52).requires_grad_();
  Tensor x = zeros({0, 3}, f64).requires_grad_();
  const Tensor y = linear(x, w, b);
  CHECK(y.shape() == Shape{0, 4});
  sum(y).backward();
  check_values(w.grad(), std::vector<double>(12, 0.0));
  check_values(b.grad(), std::vector<double>(4, 0.0));
  CHECK(x.grad().shape() == Shape{0, 3});

  // in_features == 0: the output is the bias on every row.
  Tensor w0 = zeros({2, 0}, f64).requires_grad_();
  const Tensor b0 = from_vector(std::vector<double>{1.5, -2.0});
  Tensor x0 = zeros({3, 0}, f64).requires_grad_();
  const Tensor y0 = linear(x0, w0, b0);
  check_values(y0, {1.5, -2.0, 1.5, -2.0, 1.5, -2.0});
  sum(y0).backward();
  CHECK(w0.grad().shape() == Shape{2, 0});
  CHECK(x0.grad().shape() == Shape{3, 0});
  // out_features == 0
  CHECK(linear(rnd({3, 2}), zeros({0, 2}, f64)).shape() == Shape{3, 0});
}

TEST_CASE("linear: bad inputs name the op and the shapes") {
  const Tensor w = rnd({4, 3}), b = rnd({4});
  std::string m = error_of<ShapeError>([&] { linear(rnd({5, 2}), w, b); });
  CHECK(has(m, "linear"));
  CHECK(has(m, "[5,2]"));
  CHECK(has(m, "[4,3]"));
  m = error_of<ShapeError>([&] { linear(scalar(1.0, f64), w, b); });
  CHECK(has(m, "linear"));
  m = error_of<ShapeError>([&] { linear(rnd({5, 3}), rnd({3}), Tensor()); });
  CHECK(has(m, "2-D"));
  m = error_of<ShapeError>([&] { linear(rnd({5, 3}), w, rnd({3})); });
  CHECK(has(m, "bias"));
  CHECK(has(m, "[3]"));
  m = error_of<ShapeError>([&] { linear(rnd({5, 3}), w, rnd({1, 4})); });
  CHECK(has(m, "[1,4]"));
  m = error_of<DtypeError>([&] { linear(from_vector(std::vector<std::int64_t>{1, 2, 3}), w, b); });
  CHECK(has(m, "linear"));
  m = error_of<DtypeError>([&] { linear(rnd({5, 3}).to(f32), w, b); });
  CHECK(has(m, "linear"));
  m = error_of<DtypeError>([&] { linear(rnd({5, 3}), w, b.to(f32)); });
  CHECK(has(m, "linear"));
  m = error_of<StateError>([&] { linear(Tensor(), w, b); });
  CHECK(has(m, "linear"));
}


// [2^40, 0] x [0, 2^40]: both inputs are empty, the product would be [2^40, 2^40]
// (2^80 elements, which wraps around int64).
TEST_CASE("matmul and linear: an output shape past the element limit is a ShapeError naming the op") {
  const std::int64_t big = 1LL << 40;
  std::string m = error_of<ShapeError>([&] { (void)matmul(zeros({big, 0}), zeros({0, big})); });
  CHECK(has(m, "matmul"));
  CHECK(has(m, "[1099511627776,0] x [0,1099511627776]"));
  CHECK(has(m, "2^60"));
  // [B,M,K] x [B,K,N] and [B,M,K] x [K,N]
  m = error_of<ShapeError>([&] { (void)matmul(zeros({1LL << 20, 1LL << 20, 0}), zeros({1LL << 20, 0, 1LL << 30})); });
  CHECK(has(m, "matmul"));
  m = error_of<ShapeError>([&] { (void)matmul(zeros({1LL << 30, 1LL << 30, 0}), zeros({0, big})); });
  CHECK(has(m, "matmul"));
  CHECK(has(m, "[1073741824,1073741824,0]"));
  // An empty result within the limit is fine.
  CHECK(matmul(zeros({0, 0}), zeros({0, big})).shape() == Shape{0, big});
  m = error_of<ShapeError>([&] { (void)linear(zeros({big, 0}), zeros({big, 0})); });
  CHECK(has(m, "linear"));
  CHECK(has(m, "[1099511627776,0]"));
}
