// conv2d and max_pool2d: values against direct loops written here, hand-computed
// examples, gradchecks, PyTorch agreement (fixtures/nn/conv_pool.npz), bad input.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

// One conv2d configuration: x [B, C, H, W], weight [O, C, kh, kw].
struct ConvCase {
  std::int64_t B, C, H, W, O, kh, kw, sh, sw, ph, pw;
  std::int64_t Ho() const { return (H + 2 * ph - kh) / sh + 1; }
  std::int64_t Wo() const { return (W + 2 * pw - kw) / sw + 1; }
};

// Covers: plain 3x3, stride 2 + padding 1, 1x1 (the direct path), 1x1 with stride and
// padding (not direct), non-square kernel with mixed stride/padding, C = 1, B = 1,
// padding wider than the kernel, a kernel as large as the padded input.
const std::vector<ConvCase> kCases = {
    {2, 3, 5, 5, 4, 3, 3, 1, 1, 0, 0}, {2, 2, 6, 5, 3, 3, 3, 2, 2, 1, 1}, {1, 3, 4, 4, 2, 1, 1, 1, 1, 0, 0},
    {2, 2, 5, 4, 3, 1, 1, 2, 1, 1, 0}, {2, 3, 5, 6, 2, 3, 2, 1, 2, 1, 0}, {1, 1, 4, 5, 2, 2, 3, 2, 1, 0, 1},
    {1, 1, 3, 3, 1, 1, 1, 1, 1, 2, 2}, {2, 1, 3, 4, 2, 5, 4, 1, 1, 1, 0},
};

// y[b,o,i,j] = bias[o] + Σ w[o,c,u,v] · x[b,c,i·sh+u-ph, j·sw+v-pw] (0 outside x).
std::vector<double> ref_conv(const ConvCase& k, const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>& bias) {
  const std::int64_t Ho = k.Ho(), Wo = k.Wo();
  std::vector<double> y(static_cast<std::size_t>(k.B * k.O * Ho * Wo), 0.0);
  for (std::int64_t b = 0; b < k.B; ++b) {
    for (std::int64_t o = 0; o < k.O; ++o) {
      for (std::int64_t i = 0; i < Ho; ++i) {
        for (std::int64_t j = 0; j < Wo; ++j) {
          double s = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(o)];
          for (std::int64_t c = 0; c < k.C; ++c) {
            for (std::int64_t u = 0; u < k.kh; ++u) {
              for (std::int64_t v = 0; v < k.kw; ++v) {
                const std::int64_t r = i * k.sh + u - k.ph, q = j * k.sw + v - k.pw;
                if (r < 0 || r >= k.H || q < 0 || q >= k.W) continue;
                s += w[static_cast<std::size_t>(((o * k.C + c) * k.kh + u) * k.kw + v)] *
                     x[static_cast<std::size_t>(((b * k.C + c) * k.H + r) * k.W + q)];
              }
            }
          }
          y[static_cast<std::size_t>(((b * k.O + o) * Ho + i) * Wo + j)] = s;
        }
      }
    }
  }
  return y;
}

// y[n,i,j] = max over the window at (i·sh, j·sw) of x[n] (planes n = B·C).
std::vector<double> ref_pool(const std::vector<double>& x, std::int64_t planes, std::int64_t H, std::int64_t W,
                             std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw) {
  const std::int64_t Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1;
  std::vector<double> y;
  for (std::int64_t n = 0; n < planes; ++n) {
    for (std::int64_t i = 0; i < Ho; ++i) {
      for (std::int64_t j = 0; j < Wo; ++j) {
        double m = -std::numeric_limits<double>::infinity();
        for (std::int64_t u = 0; u < kh; ++u) {
          for (std::int64_t v = 0; v < kw; ++v) {
            m = std::max(m, x[static_cast<std::size_t>((n * H + i * sh + u) * W + j * sw + v)]);
          }
        }
        y.push_back(m);
      }
    }
  }
  return y;
}

// Distinct values spaced 0.05 apart in a scrambled order: no ties, so max_pool2d is
// differentiable with a margin far above gradcheck's step.
Tensor distinct(const Shape& s, std::uint64_t seed) {
  const std::int64_t n = s.numel();
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = 0.05 * static_cast<double>(i) - 1.0;
  Generator g(seed);
  for (std::int64_t i = n - 1; i > 0; --i) {
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(g.randint(0, i + 1))]);
  }
  return from_vector(v, s);
}

// A fresh leaf of dtype dt holding t's values (to() of the same dtype returns t itself).
Tensor leaf(const Tensor& t, Dtype dt) { return t.to(dt).detach().requires_grad_(); }

template <class F>
void check_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("no exception; expected one mentioning '" << needle << "'");
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

Tensor entry(const std::vector<std::pair<std::string, Tensor>>& npz, const std::string& name) {
  for (const auto& [n, t] : npz) {
    if (n == name) return t;
  }
  FAIL("fixture entry '" << name << "' missing");
  return Tensor();
}

// Every element within rtol of the reference, relative to the reference tensor's
// largest magnitude (elementwise relative error is meaningless for entries near 0).
void check_rel(const Tensor& got, const Tensor& want, double rtol) {
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> w = want.to_vector<double>();
  double scale = 0;
  for (double v : w) scale = std::max(scale, std::fabs(v));
  check_values(got, w, rtol * scale, rtol);
}

}  // namespace

// ---- conv2d values ------------------------------------------------------------------

TEST_CASE("conv2d matches a direct convolution loop (f64 and f32, with and without bias)") {
  for (const ConvCase& k : kCases) {
    INFO("case B" << k.B << " C" << k.C << " " << k.H << "x" << k.W << " O" << k.O << " k" << k.kh << "x" << k.kw
                  << " s" << k.sh << "," << k.sw << " p" << k.ph << "," << k.pw);
    const Tensor x = rnd({k.B, k.C, k.H, k.W}, -1, 1, 11);
    const Tensor w = rnd({k.O, k.C, k.kh, k.kw}, -1, 1, 12);
    const Tensor b = rnd({k.O}, -1, 1, 13);
    const auto want = ref_conv(k, x.to_vector<double>(), w.to_vector<double>(), b.to_vector<double>());
    const auto want_nb = ref_conv(k, x.to_vector<double>(), w.to_vector<double>(), {});
    const Tensor y = conv2d(x, w, b, {k.sh, k.sw}, {k.ph, k.pw});
    CHECK(y.shape() == Shape{k.B, k.O, k.Ho(), k.Wo()});
    CHECK(y.dtype() == f64);
    check_values(y, want, 1e-12, 1e-12);
    check_values(conv2d(x, w, Tensor(), {k.sh, k.sw}, {k.ph, k.pw}), want_nb, 1e-12, 1e-12);
    const Tensor y32 = conv2d(x.to(f32), w.to(f32), b.to(f32), {k.sh, k.sw}, {k.ph, k.pw});
    CHECK(y32.dtype() == f32);
    check_values(y32, want, 1e-5, 1e-5);
  }
}

TEST_CASE("conv2d of hand-computed examples: box filter with padding and stride") {
  // x = 1..9 in a 3x3 image, weight = 3x3 ones, padding 1, stride 2: each output is the
  // sum of the in-bounds 2x2 corner block: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9.
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 1, 3, 3});
  const Tensor w = ones({1, 1, 3, 3}, f64);
  check_values(conv2d(x, w, Tensor(), 2, 1), {12, 16, 24, 28}, 0, 0);
  // Stride 1, no padding, weight [[1,0],[0,-1]] + bias 0.5: x[i,j] - x[i+1,j+1] + 0.5 = -3.5.
  const Tensor d = from_vector(std::vector<double>{1, 0, 0, -1}, {1, 1, 2, 2});
  check_values(conv2d(x, d, from_vector(std::vector<double>{0.5})), {-3.5, -3.5, -3.5, -3.5}, 0, 0);
  // Two output channels, non-square 1x2 kernel [1, 10] and [-1, 0]: horizontal pairs.
  const Tensor h = from_vector(std::vector<double>{1, 10, -1, 0}, {2, 1, 1, 2});
  check_values(conv2d(x, h), {21, 32, 54, 65, 87, 98, -1, -2, -4, -5, -7, -8}, 0, 0);
}

TEST_CASE("definition of conv2d: a 1x1 kernel is a matmul over channels") {
  const Tensor x = rnd({2, 3, 4, 5}, -1, 1, 21);
  const Tensor w = rnd({6, 3, 1, 1}, -1, 1, 22);
  // y[b] = W[6,3] · x[b][3, 20]
  const Tensor y = conv2d(x, w);
  const Tensor w2 = reshape(w, {6, 3});
  for (std::int64_t b = 0; b < 2; ++b) {
    const Tensor yb = matmul(w2, reshape(select(x, 0, b), {3, 20}));
    xgtest::check_close(reshape(select(y, 0, b), {6, 20}), yb, 1e-12, 1e-12);
  }
}

TEST_CASE("definition of conv2d: a kernel covering the whole image is a linear map of the flattened image") {
  const Tensor x = rnd({3, 2, 4, 3}, -1, 1, 31);
  const Tensor w = rnd({5, 2, 4, 3}, -1, 1, 32);
  const Tensor b = rnd({5}, -1, 1, 33);
  // y[b, o] = x[b] (flattened, 24) · w[o] (flattened, 24) + bias[o]
  const Tensor want = add(matmul(reshape(x, {3, 24}), transpose(reshape(w, {5, 24}), 0, 1)), b);
  xgtest::check_close(reshape(conv2d(x, w, b), {3, 5}), want, 1e-12, 1e-12);
}

// ---- conv2d gradients ---------------------------------------------------------------

TEST_CASE("gradcheck conv2d w.r.t. input, weight and bias over shapes, strides, paddings") {
  for (const ConvCase& k : kCases) {
    INFO("case B" << k.B << " C" << k.C << " " << k.H << "x" << k.W << " O" << k.O << " k" << k.kh << "x" << k.kw
                  << " s" << k.sh << "," << k.sw << " p" << k.ph << "," << k.pw);
    const Size2 s{k.sh, k.sw}, p{k.ph, k.pw};
    gradcheck_ok([s, p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], s, p); },
                 {rnd({k.B, k.C, k.H, k.W}, -1, 1, 41), rnd({k.O, k.C, k.kh, k.kw}, -1, 1, 42), rnd({k.O}, -1, 1, 43)});
  }
  // Without bias, and with only the weight requiring grad (input a constant).
  const Tensor x = rnd({2, 2, 5, 5}, -1, 1, 44);
  gradcheck_ok([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 2, 1); },
               {x, rnd({3, 2, 3, 3}, -1, 1, 45)});
  gradcheck_ok([x](const std::vector<Tensor>& in) { return conv2d(x, in[0], in[1], 1, 1); },
               {rnd({3, 2, 2, 3}, -1, 1, 46), rnd({3}, -1, 1, 47)});
}

TEST_CASE("conv2d backward by hand: 1x1 image, 1x1 kernel") {
  // y = w·x + b with one pixel and scalar weight: dx = g·w, dw = g·x, db = g.
  Tensor x = from_vector(std::vector<double>{2.0}, {1, 1, 1, 1}).requires_grad_();
  Tensor w = from_vector(std::vector<double>{-3.0}, {1, 1, 1, 1}).requires_grad_();
  Tensor b = from_vector(std::vector<double>{0.5}).requires_grad_();
  Tensor y = conv2d(x, w, b);
  check_values(y, {-5.5});
  sum(mul(y, 4.0)).backward();
  check_values(x.grad(), {-12.0});
  check_values(w.grad(), {8.0});
  check_values(b.grad(), {4.0});
}

TEST_CASE("conv2d bias gradient sums over batch and positions; float32 backward agrees with float64") {
  const Tensor x64 = rnd({3, 2, 6, 5}, -1, 1, 51), w64 = rnd({4, 2, 3, 2}, -1, 1, 52), b64 = rnd({4}, -1, 1, 53);
  const Tensor gw = rnd({3, 4, 3, 3}, -1, 1, 54);  // output [3,4,(6+2-3)/2+1,(5+2-2)/2+1] = [3,4,3,3]
  std::vector<Tensor> grads[2];
  for (int d = 0; d < 2; ++d) {
    const Dtype dt = d == 0 ? f64 : f32;
    Tensor x = leaf(x64, dt), w = leaf(w64, dt), b = leaf(b64, dt);
    sum(mul(conv2d(x, w, b, 2, 1), gw.to(dt))).backward();
    grads[d] = {x.grad(), w.grad(), b.grad()};
  }
  // db[o] = Σ_{b,i,j} gw[b,o,i,j]
  const std::vector<double> g = gw.to_vector<double>();
  std::vector<double> db(4, 0.0);
  for (std::size_t i = 0; i < g.size(); ++i) db[(i / 9) % 4] += g[i];
  check_values(grads[0][2], db, 1e-12, 1e-12);
  for (int i = 0; i < 3; ++i) xgtest::check_close(grads[1][i], grads[0][i], 1e-5, 1e-5);
}

// ---- max_pool2d ---------------------------------------------------------------------

TEST_CASE("max_pool2d matches a direct loop (default stride, overlapping, non-square, f32)") {
  struct P {
    std::int64_t B, C, H, W, kh, kw, sh, sw;
  };
  for (const P& p : std::vector<P>{{2, 3, 8, 8, 2, 2, 2, 2},
                                   {1, 2, 5, 7, 2, 2, 2, 2},  // floor: last row / column dropped
                                   {2, 1, 5, 5, 3, 3, 1, 1},  // overlapping windows
                                   {1, 2, 6, 5, 3, 2, 2, 1},
                                   {1, 1, 4, 4, 4, 4, 4, 4},     // one window
                                   {1, 1, 3, 3, 1, 1, 1, 1}}) {  // identity
    INFO("B" << p.B << " C" << p.C << " " << p.H << "x" << p.W << " k" << p.kh << "x" << p.kw << " s" << p.sh << ","
             << p.sw);
    const Tensor x = rnd({p.B, p.C, p.H, p.W}, -1, 1, 61);
    const auto want = ref_pool(x.to_vector<double>(), p.B * p.C, p.H, p.W, p.kh, p.kw, p.sh, p.sw);
    const Tensor y = max_pool2d(x, {p.kh, p.kw}, {p.sh, p.sw});
    CHECK(y.shape() == Shape{p.B, p.C, (p.H - p.kh) / p.sh + 1, (p.W - p.kw) / p.sw + 1});
    check_values(y, want, 0, 0);
    check_values(max_pool2d(x.to(f32), {p.kh, p.kw}, {p.sh, p.sw}), want, 1e-7, 1e-7);
  }
  // The one-argument form uses stride = kernel.
  const Tensor x = rnd({1, 2, 6, 6}, -1, 1, 62);
  xgtest::check_close(max_pool2d(x, 3), max_pool2d(x, 3, 3), 0, 0);
}

TEST_CASE("max_pool2d of a hand-picked image, and its gradient routed to each maximum") {
  // 4x4 image, 2x2 windows: maxima 6 (at 1,1), 8 (at 0,3), 14 (at 3,0), 16 (at 3,3).
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 8,     //
                                             5, 6, 7, 4,     //
                                             9, 10, 11, 12,  //
                                             14, 13, 15, 16},
                         {1, 1, 4, 4})
                 .requires_grad_();
  Tensor y = max_pool2d(x, 2);
  check_values(y, {6, 8, 14, 16}, 0, 0);
  sum(mul(y, from_vector(std::vector<double>{1, 2, 3, 4}, {1, 1, 2, 2}))).backward();
  check_values(x.grad(), {0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 4}, 0, 0);
}

TEST_CASE("max_pool2d: ties go to the first maximum; overlapping windows sum their gradients") {
  // All equal: the gradient of each window goes to its top-left element.
  Tensor x = full({1, 1, 2, 4}, 1.5, f64).requires_grad_();
  sum(max_pool2d(x, 2)).backward();
  check_values(x.grad(), {1, 0, 1, 0, 0, 0, 0, 0}, 0, 0);
  // A tie inside a window, scanned row-major: [[0, 7], [7, 1]] -> the 7 at (0,1).
  Tensor t = from_vector(std::vector<double>{0, 7, 7, 1}, {1, 1, 2, 2}).requires_grad_();
  sum(max_pool2d(t, 2)).backward();
  check_values(t.grad(), {0, 1, 0, 0}, 0, 0);
  // Windows [1,3] and [3,2] at stride 1 share the maximum 3: it receives both gradients.
  Tensor o = from_vector(std::vector<double>{1, 3, 2}, {1, 1, 1, 3}).requires_grad_();
  Tensor y = max_pool2d(o, {1, 2}, {1, 1});
  check_values(y, {3, 3}, 0, 0);
  sum(mul(y, from_vector(std::vector<double>{2, 5}, {1, 1, 1, 2}))).backward();
  check_values(o.grad(), {0, 7, 0}, 0, 0);
}

TEST_CASE("max_pool2d propagates NaN and handles -inf like PyTorch") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const Tensor x = from_vector(std::vector<double>{1, nan, 2, 3, -inf, -inf, -inf, -inf}, {1, 2, 2, 2});
  const std::vector<double> y = max_pool2d(x, 2).to_vector<double>();
  REQUIRE(y.size() == 2);
  CHECK(std::isnan(y[0]));
  CHECK(y[1] == -inf);
}

TEST_CASE("gradcheck max_pool2d on inputs without ties") {
  struct P {
    Shape s;
    Size2 k, st;
  };
  for (const P& p : std::vector<P>{{{2, 3, 4, 4}, 2, 2},
                                   {{1, 1, 5, 5}, 2, 2},
                                   {{2, 2, 5, 6}, 3, 1},
                                   {{1, 2, 6, 5}, {3, 2}, {2, 1}},
                                   {{1, 1, 3, 3}, 3, 3}}) {
    INFO("x " << p.s.str() << " kernel " << p.k.h << "x" << p.k.w << " stride " << p.st.h << "," << p.st.w);
    gradcheck_ok([p](const std::vector<Tensor>& in) { return max_pool2d(in[0], p.k, p.st); },
                 {distinct(p.s, static_cast<std::uint64_t>(p.s.numel()))});
  }
}

TEST_CASE("gradcheck conv2d -> max_pool2d -> conv2d (a small CNN)") {
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor h = max_pool2d(conv2d(in[0], in[1], in[2], 1, 1), 2);
        return conv2d(h, in[3], Tensor(), 1, 0);
      },
      {rnd({2, 2, 6, 6}, -1, 1, 71), rnd({3, 2, 3, 3}, -1, 1, 72), rnd({3}, -1, 1, 73),
       rnd({2, 3, 2, 2}, -1, 1, 74)});
}

// ---- PyTorch agreement --------------------------------------------------------------

TEST_CASE("conv2d + max_pool2d agree with PyTorch (fixtures/nn/conv_pool.npz, f64 1e-10, f32 1e-5)") {
  const auto npz = load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/conv_pool.npz");
  for (const Dtype dt : {f64, f32}) {
    INFO("dtype " << dtype_name(dt));
    const double rtol = dt == f64 ? 1e-10 : 1e-5;
    Tensor x = leaf(entry(npz, "in.x"), dt);
    Tensor w = leaf(entry(npz, "param.conv.weight"), dt);
    Tensor b = leaf(entry(npz, "param.conv.bias"), dt);
    Tensor w2 = leaf(entry(npz, "param.conv2.weight"), dt);
    Tensor b2 = leaf(entry(npz, "param.conv2.bias"), dt);
    const Tensor y = max_pool2d(conv2d(x, w, b, 1, 1), 2);
    const Tensor y2 = conv2d(x, w2, b2, 2, 0);
    check_rel(y, entry(npz, "out.y"), rtol);
    check_rel(y2, entry(npz, "out.y2"), rtol);
    add(sum(mul(y, entry(npz, "in.w_y").to(dt))), sum(mul(y2, entry(npz, "in.w_y2").to(dt)))).backward();
    check_rel(x.grad(), entry(npz, "grad.in.x"), rtol);
    check_rel(w.grad(), entry(npz, "grad.param.conv.weight"), rtol);
    check_rel(b.grad(), entry(npz, "grad.param.conv.bias"), rtol);
    check_rel(w2.grad(), entry(npz, "grad.param.conv2.weight"), rtol);
    check_rel(b2.grad(), entry(npz, "grad.param.conv2.bias"), rtol);
  }
}

// ---- empty tensors, recording -------------------------------------------------------

TEST_CASE("conv2d and max_pool2d on an empty batch give empty outputs and zero parameter gradients") {
  Tensor x = zeros({0, 2, 5, 5}, f64).requires_grad_();
  Tensor w = rnd({3, 2, 3, 3}).requires_grad_();
  Tensor b = rnd({3}).requires_grad_();
  Tensor y = conv2d(x, w, b, 1, 1);
  CHECK(y.shape() == Shape{0, 3, 5, 5});
  Tensor p = max_pool2d(y, 2);
  CHECK(p.shape() == Shape{0, 3, 2, 2});
  sum(p).backward();
  CHECK(x.grad().shape() == x.shape());
  check_values(w.grad(), std::vector<double>(54, 0.0), 0, 0);
  check_values(b.grad(), {0, 0, 0}, 0, 0);
  // Zero output channels.
  CHECK(conv2d(rnd({2, 2, 4, 4}), zeros({0, 2, 3, 3}, f64)).shape() == Shape{2, 0, 2, 2});
}

TEST_CASE("conv2d and max_pool2d record one node only when an input requires grad") {
  const Tensor x = rnd({1, 2, 4, 4}), w = rnd({2, 2, 3, 3});
  CHECK_FALSE(conv2d(x, w).requires_grad());
  CHECK_FALSE(max_pool2d(x, 2).requires_grad());
  Tensor wg = w.clone().requires_grad_();
  const Tensor y = conv2d(x, wg);
  CHECK(y.requires_grad());
  CHECK(y.op_name() == "conv2d");
  CHECK(max_pool2d(y, 2).op_name() == "max_pool2d");
  NoGradGuard ng;
  CHECK_FALSE(conv2d(x, wg).requires_grad());
}

// ---- bad input ----------------------------------------------------------------------

TEST_CASE("conv2d: bad input throws errors naming the op and the shapes") {
  const Tensor x = rnd({2, 3, 5, 5}), w = rnd({4, 3, 3, 3}), b = rnd({4});
  CHECK_THROWS_AS(conv2d(rnd({2, 2, 5, 5}), w), ShapeError);
  check_error([&] { conv2d(rnd({2, 2, 5, 5}), w); }, "conv2d: input [2,2,5,5] and weight [4,3,3,3]");
  CHECK_THROWS_AS(conv2d(rnd({3, 5, 5}), w), ShapeError);
  check_error([&] { conv2d(rnd({3, 5, 5}), w); }, "conv2d: input [3,5,5] must be 4-D");
  check_error([&] { conv2d(rnd({1, 2, 3, 5, 5}), w); }, "conv2d: input [1,2,3,5,5] must be 4-D");
  check_error([&] { conv2d(x, rnd({4, 3, 3})); }, "conv2d: weight [4,3,3] must be 4-D");
  check_error([&] { conv2d(x, rnd({4, 3, 0, 3})); }, "conv2d: weight [4,3,0,3]: the kernel 0x3 is empty");
  CHECK_THROWS_AS(conv2d(x, w, rnd({5})), ShapeError);
  check_error([&] { conv2d(x, w, rnd({5})); }, "conv2d: bias [5] must be [4]");
  check_error([&] { conv2d(x, w, rnd({4, 1})); }, "conv2d: bias [4,1] must be [4]");
  // Kernel larger than the (padded) input.
  CHECK_THROWS_AS(conv2d(rnd({1, 3, 2, 2}), w), ShapeError);
  check_error([&] { conv2d(rnd({1, 3, 2, 2}), w); }, "conv2d: input [1,3,2,2], weight [4,3,3,3], padding (0, 0)");
  check_error([&] { conv2d(rnd({1, 3, 2, 5}), w); }, "larger than the padded input 2x5");
  CHECK_NOTHROW(conv2d(rnd({1, 3, 1, 1}), w, b, 1, 1));  // padding makes it 3x3
  // Stride and padding.
  CHECK_THROWS_AS(conv2d(x, w, b, 0), ShapeError);
  check_error([&] { conv2d(x, w, b, 0); }, "conv2d: input [2,3,5,5], weight [4,3,3,3]: stride (0, 0) must be positive");
  check_error([&] { conv2d(x, w, b, {1, -2}); }, "stride (1, -2) must be positive");
  check_error([&] { conv2d(x, w, b, 1, {-1, 0}); }, "conv2d: input [2,3,5,5], weight [4,3,3,3]: padding (-1, 0)");
  // Dtypes and undefined tensors.
  CHECK_THROWS_AS(conv2d(x.to(f32), w), DtypeError);
  CHECK_THROWS_AS(conv2d(x, w, b.to(f32)), DtypeError);
  check_error([&] { conv2d(x, w, b.to(f32)); }, "conv2d");
  CHECK_THROWS_AS(conv2d(zeros({1, 1, 3, 3}, i64), zeros({1, 1, 1, 1}, i64)), DtypeError);
  CHECK_THROWS_AS(conv2d(Tensor(), w), StateError);
  check_error([&] { conv2d(Tensor(), w); }, "conv2d");
}

TEST_CASE("max_pool2d: bad input throws errors naming the op and the shapes") {
  const Tensor x = rnd({2, 3, 5, 5});
  CHECK_THROWS_AS(max_pool2d(rnd({3, 5, 5}), 2), ShapeError);
  check_error([&] { max_pool2d(rnd({3, 5, 5}), 2); }, "max_pool2d: input [3,5,5] must be 4-D");
  CHECK_THROWS_AS(max_pool2d(x, 0), ShapeError);
  check_error([&] { max_pool2d(x, {2, 0}); }, "max_pool2d: input [2,3,5,5]: kernel (2, 0) must be positive");
  CHECK_THROWS_AS(max_pool2d(x, 2, 0), ShapeError);
  check_error([&] { max_pool2d(x, 2, {-1, 1}); }, "max_pool2d: input [2,3,5,5]: stride (-1, 1) must be positive");
  CHECK_THROWS_AS(max_pool2d(x, 6), ShapeError);
  check_error([&] { max_pool2d(x, {2, 6}); },
              "max_pool2d: input [2,3,5,5]: the 2x6 kernel is larger than the 5x5 input");
  CHECK_THROWS_AS(max_pool2d(zeros({1, 1, 4, 4}, i64), 2), DtypeError);
  check_error([&] { max_pool2d(zeros({1, 1, 4, 4}, i64), 2); }, "max_pool2d");
  CHECK_THROWS_AS(max_pool2d(Tensor(), 2), StateError);
}

TEST_CASE("conv2d: a padding whose padded size or output shape overflows is a ShapeError naming conv2d") {
  const Tensor x = rnd({1, 1, 4, 4}), w = rnd({1, 1, 1, 1});
  // 4 + 2 * 2^62 wraps around int64.
  xgtest::check_throws_msg<ShapeError>([&] { (void)conv2d(x, w, Tensor(), 1, Size2(1LL << 62)); },
                                       {"conv2d", "[1,1,4,4]", "padding"});
  xgtest::throws_naming<ShapeError>([&] { (void)conv2d(x, w, Tensor(), 1, Size2(0, 1LL << 62)); }, "conv2d");
  // A 2^41 x 2^41 output: 2^82 elements.
  xgtest::check_throws_msg<ShapeError>([&] { (void)conv2d(x, w, Tensor(), 1, Size2(1LL << 40)); },
                                       {"conv2d", "2^60"});
}
