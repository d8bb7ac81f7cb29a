// conv2d (im2col + GEMM) and max_pool2d.
//
// Layout of the column matrix of one image: row k = (c, u, v) flattened exactly like
// weight [O, C, kh, kw] is, column p = (i, j) flattened like the output plane, so
//   cols[(c·kh + u)·kw + v, i·Wo + j] = xpad[c, i·sh + u, j·sw + v]
// and the forward is the plain product weight[O, K] · cols[K, P]. im2col and col2im walk
// one output row at a time with the in-bounds column range [lo, hi) worked out once per
// kernel column, so the inner loops have no bounds tests and stride 1 is a memcpy.
#include "ops_conv.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../backend/detail/blas.hpp"
#include "detail/composite.hpp"
#include "detail/kernels.hpp"
#include "../backend/error.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::gemm;

namespace {

std::string pair_str(Size2 s) { return fmt::format("({}, {})", s.h, s.w); }

// Sizes of one conv2d call.
struct Geo {
  std::int64_t B, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo;
  std::int64_t K() const { return C * kh * kw; }
  std::int64_t P() const { return Ho * Wo; }
  // A 1x1 kernel at stride 1 without padding reads each pixel once, in order: the image
  // [C, H·W] already is its column matrix.
  bool direct() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

// Output size along one axis; <= 0 when the kernel does not fit.
std::int64_t out_size(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t p) {
  const std::int64_t span = in + 2 * p - k;
  return span < 0 ? 0 : span / s + 1;
}

Geo geometry(const Shape& xs, const Shape& ws, Size2 stride, Size2 padding) {
  Geo g{xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], stride.h, stride.w, padding.h, padding.w, 0, 0};
  g.Ho = out_size(g.H, g.kh, g.sh, g.ph);
  g.Wo = out_size(g.W, g.kw, g.sw, g.pw);
  return g;
}

Geo check_conv(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding) {
  detail::check_same_float("conv2d", x, weight);
  if (bias.defined()) detail::check_same_float("conv2d", x, bias);
  const Shape& xs = x.shape();
  const Shape& ws = weight.shape();
  if (xs.size() != 4) {
    throw ShapeError(fmt::format("conv2d: input {} must be 4-D [B, C, H, W], got {}-D", xs.str(), xs.size()));
  }
  if (ws.size() != 4) {
    throw ShapeError(fmt::format("conv2d: weight {} must be 4-D [O, C, kh, kw], got {}-D", ws.str(), ws.size()));
  }
  if (xs[1] != ws[1]) {
    throw ShapeError(fmt::format("conv2d: input {} and weight {}: the input has {} channels, the weight expects {}",
                                 xs.str(), ws.str(), xs[1], ws[1]));
  }
  if (ws[2] < 1 || ws[3] < 1) {
    throw ShapeError(fmt::format("conv2d: weight {}: the kernel {}x{} is empty", ws.str(), ws[2], ws[3]));
  }
  if (bias.defined() && (bias.ndim() != 1 || bias.shape()[0] != ws[0])) {
    throw ShapeError(fmt::format("conv2d: bias {} must be [{}] (one per output channel of weight {})",
                                 bias.shape().str(), ws[0], ws.str()));
  }
  if (stride.h < 1 || stride.w < 1) {
    throw ShapeError(fmt::format("conv2d: input {}, weight {}: stride {} must be positive", xs.str(), ws.str(),
                                 pair_str(stride)));
  }
  if (padding.h < 0 || padding.w < 0) {
    throw ShapeError(fmt::format("conv2d: input {}, weight {}: padding {} must be non-negative", xs.str(), ws.str(),
                                 pair_str(padding)));
  }
  // Inputs hold at most 2^60 elements, so with padding <= 2^60 the padded size fits int64.
  if (padding.h > kMaxNumel || padding.w > kMaxNumel) {
    throw ShapeError(fmt::format("conv2d: input {}, weight {}: padding {} is larger than 2^60 (xgrad's limit on "
                                 "elements per tensor)",
                                 xs.str(), ws.str(), pair_str(padding)));
  }
  const Geo g = geometry(xs, ws, stride, padding);
  if (g.Ho < 1 || g.Wo < 1) {
    throw ShapeError(fmt::format(
        "conv2d: input {}, weight {}, padding {}: the {}x{} kernel is larger than the padded input {}x{}", xs.str(),
        ws.str(), pair_str(padding), g.kh, g.kw, g.H + 2 * g.ph, g.W + 2 * g.pw));
  }
  // The output and the unfolded input [C·kh·kw, Ho·Wo] (one batch entry's im2col buffer)
  // must fit, even for an empty batch: their sizes are computed before the batch loop.
  auto what = [&](const char* part) {
    return fmt::format("conv2d: input {}, weight {}, stride {}, padding {}: {}", xs.str(), ws.str(), pair_str(stride),
                       pair_str(padding), part);
  };
  const Shape ys{g.B, g.O, g.Ho, g.Wo};
  if (!numel_fits("conv2d", ys)) throw_numel_error(what("the output"), ys);
  const Shape cols{g.C, g.kh, g.kw, g.Ho, g.Wo};
  if (!numel_fits(cols)) throw_numel_error(what("the unfolded input"), cols);
  return g;
}

// Output columns j whose input column j·s + off lies in [0, W), as [lo, hi) within [0, Wo).
void valid_cols(std::int64_t W, std::int64_t Wo, std::int64_t s, std::int64_t off, std::int64_t& lo,
                std::int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = W - off <= 0 ? 0 : (W - off - 1) / s + 1;
  hi = std::min(hi, Wo);
  lo = std::min(lo, hi);
}

// cols [K, P] from one image x [C, H, W] (zeros where the window hangs over the padding).
template <class T>
void im2col(const T* x, const Geo& g, T* cols) {
  const std::int64_t P = g.P();
  for (std::int64_t c = 0; c < g.C; ++c) {
    const T* xc = x + c * g.H * g.W;
    for (std::int64_t u = 0; u < g.kh; ++u) {
      for (std::int64_t v = 0; v < g.kw; ++v) {
        T* row = cols + ((c * g.kh + u) * g.kw + v) * P;
        const std::int64_t off = v - g.pw;
        std::int64_t lo = 0, hi = 0;
        valid_cols(g.W, g.Wo, g.sw, off, lo, hi);
        for (std::int64_t i = 0; i < g.Ho; ++i) {
          T* r = row + i * g.Wo;
          const std::int64_t ih = i * g.sh - g.ph + u;
          if (ih < 0 || ih >= g.H) {
            std::fill(r, r + g.Wo, T(0));
            continue;
          }
          const T* xr = xc + ih * g.W;
          for (std::int64_t j = 0; j < lo; ++j) r[j] = T(0);  // the padding: usually 0-2 entries
          if (g.sw == 1) {
            std::copy(xr + lo + off, xr + hi + off, r + lo);
          } else {
            for (std::int64_t j = lo; j < hi; ++j) r[j] = xr[j * g.sw + off];
          }
          for (std::int64_t j = hi; j < g.Wo; ++j) r[j] = T(0);
        }
      }
    }
  }
}

// The adjoint of im2col: dx [C, H, W] += each column entry at the pixel it was read from
// (padding entries are dropped).
template <class T>
void col2im(const T* cols, const Geo& g, T* dx) {
  const std::int64_t P = g.P();
  for (std::int64_t c = 0; c < g.C; ++c) {
    T* dc = dx + c * g.H * g.W;
    for (std::int64_t u = 0; u < g.kh; ++u) {
      for (std::int64_t v = 0; v < g.kw; ++v) {
        const T* row = cols + ((c * g.kh + u) * g.kw + v) * P;
        const std::int64_t off = v - g.pw;
        std::int64_t lo = 0, hi = 0;
        valid_cols(g.W, g.Wo, g.sw, off, lo, hi);
        for (std::int64_t i = 0; i < g.Ho; ++i) {
          const std::int64_t ih = i * g.sh - g.ph + u;
          if (ih < 0 || ih >= g.H) continue;
          const T* r = row + i * g.Wo;
          T* dr = dc + ih * g.W;
          if (g.sw == 1) {
            // Contiguous on both sides: a loop the compiler vectorises.
            T* d = dr + lo + off;
            const T* src = r + lo;
            for (std::int64_t j = 0; j < hi - lo; ++j) d[j] += src[j];
          } else {
            for (std::int64_t j = lo; j < hi; ++j) dr[j * g.sw + off] += r[j];
          }
        }
      }
    }
  }
}

// max_pool2d's create_graph path: scatter g to the saved argmax positions, and its
// adjoint, gather at them. Each op's backward is the other, so both are twice (and more)
// differentiable; the positions are constants (piecewise constant in x).
Tensor pool_gather(const Tensor& x, const Tensor& idx);

// idx [B, C, Ho, Wo] (positions within each H·W plane); g idx-shaped -> x_shape, summed where
// windows share a maximum.
Tensor pool_scatter(const Tensor& g, const Tensor& idx, const Shape& x_shape) {
  Tensor d = zeros(x_shape, g.dtype());
  const std::int64_t HW = x_shape[2] * x_shape[3], per = idx.shape()[2] * idx.shape()[3];
  dispatch_float("max_pool2d backward", g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* dp = d.data<T>();
    const T* gp = g.data<T>();
    const std::int64_t* ip = idx.data<std::int64_t>();
    for (std::int64_t k = 0; k < g.numel(); ++k) dp[(k / per) * HW + ip[k]] += gp[k];
    return 0;
  });
  if (needs_record({&g})) {
    record("max_pool2d_scatter", d, {&g}, [idx](const Tensor& gg, GradSlots& dx) { dx[0] = pool_gather(gg, idx); });
  }
  return d;
}

Tensor pool_gather(const Tensor& x, const Tensor& idx) {
  Tensor y = Tensor::empty(idx.shape(), x.dtype());
  const std::int64_t HW = x.shape()[2] * x.shape()[3], per = idx.shape()[2] * idx.shape()[3];
  dispatch_float("max_pool2d backward", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const std::int64_t* ip = idx.data<std::int64_t>();
    for (std::int64_t k = 0; k < y.numel(); ++k) yp[k] = xp[(k / per) * HW + ip[k]];
    return 0;
  });
  if (needs_record({&x})) {
    record("max_pool2d_gather", y, {&x}, [idx](const Tensor& g, GradSlots& dx) {
      dx[0] = pool_scatter(g, idx, dx.shape(0));
    });
  }
  return y;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding) {
  const Geo geo = check_conv(x, weight, bias, stride, padding);
  Tensor y = Tensor::empty(Shape{geo.B, geo.O, geo.Ho, geo.Wo}, x.dtype());
  dispatch_float("conv2d", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t K = geo.K(), P = geo.P(), O = geo.O;
    std::vector<T> cols(geo.direct() ? 0 : static_cast<std::size_t>(K * P));
    const T* w = weight.data<T>();
    const T* bp = bias.defined() ? bias.data<T>() : nullptr;
    for (std::int64_t b = 0; b < geo.B; ++b) {
      const T* xb = x.data<T>() + b * geo.C * geo.H * geo.W;
      T* yb = y.data<T>() + b * O * P;
      const T* cb = xb;
      if (!geo.direct()) {
        im2col(xb, geo, cols.data());
        cb = cols.data();
      }
      // The bias goes in first and the GEMM accumulates onto it (beta = 1): no second pass.
      if (bp) {
        for (std::int64_t o = 0; o < O; ++o) std::fill(yb + o * P, yb + (o + 1) * P, bp[o]);
      }
      gemm<T>(false, false, O, P, K, T(1), w, K, cb, P, bp ? T(1) : T(0), yb, P);
    }
    return 0;
  });
  if (needs_record({&x, &weight, &bias})) {
    // d conv2d: dW = Σ_b g_b · cols_bᵀ, dx_b = col2im(Wᵀ · g_b), db = Σ_{b,i,j} g
    record("conv2d", y, {&x, &weight, &bias}, [x = save(x, 0), weight = save(weight, 1), stride, padding](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        // create_graph: the formulas above in recorded ops, with conv_unfold / conv_fold (a
        // recorded adjoint pair) for im2col / col2im and batched matmuls for the GEMMs.
        const Shape& gs = g.shape();
        const std::int64_t B = gs[0], O = gs[1], P = gs[2] * gs[3];
        const Tensor& w = weight.get();
        const Shape& ws = w.shape();
        const std::int64_t K = ws[1] * ws[2] * ws[3];
        const Tensor g3 = reshape(g, Shape{B, O, P});
        if (dx.needs(0)) {
          // dcols_b [K, P] = Wᵀ g_b, formed as (g_bᵀ W)ᵀ: matmul broadcasts the right operand only.
          const Tensor dcols = transpose(matmul(transpose(g3, 1, 2), reshape(w, Shape{O, K})), 1, 2);
          dx[0] = detail::conv_fold(dcols, dx.shape(0), ws[2], ws[3], stride, padding);
        }
        if (dx.needs(1)) {
          const Tensor cols = detail::conv_unfold(x.get(), ws[2], ws[3], stride, padding);
          dx[1] = reshape(sum(matmul(g3, transpose(cols, 1, 2)), {0}), ws);
        }
        if (dx.needs(2)) dx[2] = sum(g, {0, 2, 3});
        return;
      }
      const bool need_x = dx.needs(0), need_w = dx.needs(1);
      // dx reads the weight's values, dW the input's, db neither: each is checked only where
      // it is read, shapes come from the grad slots (and g: [B, O, Ho, Wo]) otherwise.
      Geo geo{};
      if (need_x || need_w) {
        geo = geometry(need_x ? dx.shape(0) : x.get().shape(), need_w ? dx.shape(1) : weight.get().shape(), stride,
                       padding);
      } else {
        geo.B = g.shape()[0];
        geo.O = g.shape()[1];
        geo.Ho = g.shape()[2];
        geo.Wo = g.shape()[3];
      }
      dispatch_float("conv2d backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const std::int64_t K = geo.K(), P = geo.P(), O = geo.O, B = geo.B;
        const std::int64_t xstride = geo.C * geo.H * geo.W;
        const T* gp = g.data<T>();
        const T* w = need_x ? weight.get().data<T>() : nullptr;
        const T* xp = need_w ? x.get().data<T>() : nullptr;
        Tensor dxt, dwt;
        if (need_x) {
          dxt = Tensor::empty(dx.shape(0), g.dtype());
          if (!geo.direct()) std::fill_n(dxt.data<T>(), dxt.numel(), T(0));  // col2im accumulates
        }
        if (need_w) {
          dwt = Tensor::empty(dx.shape(1), g.dtype());
          if (B == 0) std::fill_n(dwt.data<T>(), dwt.numel(), T(0));
        }
        std::vector<T> cols(need_w && !geo.direct() ? static_cast<std::size_t>(K * P) : 0);
        std::vector<T> dcols(need_x && !geo.direct() ? static_cast<std::size_t>(K * P) : 0);
        for (std::int64_t b = 0; b < B; ++b) {
          const T* gb = gp + b * O * P;
          if (need_w) {
            const T* xb = xp + b * xstride;
            const T* cb = xb;
            if (!geo.direct()) {
              im2col(xb, geo, cols.data());
              cb = cols.data();
            }
            // dW[O,K] (+)= g_b[O,P] · cols_bᵀ[P,K]; the first image overwrites, the rest accumulate.
            gemm<T>(false, true, O, K, P, T(1), gb, P, cb, P, b == 0 ? T(0) : T(1), dwt.data<T>(), K);
          }
          if (need_x) {
            T* dxb = dxt.data<T>() + b * xstride;
            // dcols[K,P] = Wᵀ[K,O] · g_b[O,P]
            if (geo.direct()) {
              gemm<T>(true, false, K, P, O, T(1), w, K, gb, P, T(0), dxb, P);
            } else {
              gemm<T>(true, false, K, P, O, T(1), w, K, gb, P, T(0), dcols.data(), P);
              col2im(dcols.data(), geo, dxb);
            }
          }
        }
        if (need_x) dx[0] = dxt;
        if (need_w) dx[1] = dwt;
        if (dx.needs(2)) {
          // db[O] (+)= g_b[O,P] · 1[P]: a gemv per image, vectorised by the BLAS.
          Tensor db = Tensor::empty(Shape{O}, g.dtype());
          if (B == 0) std::fill_n(db.data<T>(), O, T(0));
          const std::vector<T> ones(static_cast<std::size_t>(P), T(1));
          for (std::int64_t b = 0; b < B; ++b) {
            gemm<T>(false, false, O, 1, P, T(1), gp + b * O * P, P, ones.data(), 1, b == 0 ? T(0) : T(1),
                    db.data<T>(), 1);
          }
          dx[2] = db;
        }
        return 0;
      });
    });
  }
  return y;
}

Tensor max_pool2d(const Tensor& x, Size2 kernel) { return max_pool2d(x, kernel, kernel); }

Tensor max_pool2d(const Tensor& x, Size2 kernel, Size2 stride) {
  detail::check_floating("max_pool2d", x);
  const Shape& xs = x.shape();
  if (xs.size() != 4) {
    throw ShapeError(fmt::format("max_pool2d: input {} must be 4-D [B, C, H, W], got {}-D", xs.str(), xs.size()));
  }
  if (kernel.h < 1 || kernel.w < 1) {
    throw ShapeError(fmt::format("max_pool2d: input {}: kernel {} must be positive", xs.str(), pair_str(kernel)));
  }
  if (stride.h < 1 || stride.w < 1) {
    throw ShapeError(fmt::format("max_pool2d: input {}: stride {} must be positive", xs.str(), pair_str(stride)));
  }
  const std::int64_t planes = xs[0] * xs[1], H = xs[2], W = xs[3];
  if (kernel.h > H || kernel.w > W) {
    throw ShapeError(fmt::format("max_pool2d: input {}: the {}x{} kernel is larger than the {}x{} input", xs.str(),
                                 kernel.h, kernel.w, H, W));
  }
  const std::int64_t Ho = out_size(H, kernel.h, stride.h, 0), Wo = out_size(W, kernel.w, stride.w, 0);
  const Shape ys{xs[0], xs[1], Ho, Wo};
  Tensor y = Tensor::empty(ys, x.dtype());
  const bool rec = needs_record({&x});
  // Position of each window's maximum within its H·W plane; kept only for backward.
  Tensor idx = rec ? Tensor::empty(ys, Dtype::i64) : Tensor();
  dispatch_float("max_pool2d", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    std::vector<std::int64_t> scratch(rec ? 0 : static_cast<std::size_t>(Wo));
    for (std::int64_t n = 0; n < planes; ++n) {
      const T* plane = xp + n * H * W;
      for (std::int64_t i = 0; i < Ho; ++i) {
        // One output row at a time, window element by window element: the running maxima
        // of the whole row update branch-free (random data makes a per-element branch
        // mispredict half the time: ~10x slower than this, measured).
        const std::int64_t o = (n * Ho + i) * Wo;
        T* best = yp + o;
        std::int64_t* at = rec ? idx.data<std::int64_t>() + o : scratch.data();
        const std::int64_t h0 = i * stride.h;
        for (std::int64_t u = 0; u < kernel.h; ++u) {
          const T* r = plane + (h0 + u) * W;
          for (std::int64_t v = 0; v < kernel.w; ++v) {
            const std::int64_t base = (h0 + u) * W + v;
            if (u == 0 && v == 0) {
              for (std::int64_t j = 0; j < Wo; ++j) {
                best[j] = r[j * stride.w];
                at[j] = base + j * stride.w;
              }
              continue;
            }
            for (std::int64_t j = 0; j < Wo; ++j) {
              const T val = r[j * stride.w + v];
              // Strict >: ties keep the first maximum; a NaN wins so it propagates (PyTorch's rule).
              const bool take = (val > best[j]) | (val != val);
              best[j] = take ? val : best[j];
              at[j] = take ? base + j * stride.w : at[j];
            }
          }
        }
      }
    }
    return 0;
  });
  if (rec) {
    // d max_pool2d: dx[argmax of each window] += g (windows may share a maximum)
    record("max_pool2d", y, {&x}, [idx, HW = H * W, per = Ho * Wo](const Tensor& g, GradSlots& dx) {
      if (!dx.needs(0)) return;
      if (is_grad_enabled()) {
        // create_graph: the same scatter as a recorded op (its backward gathers at idx).
        dx[0] = pool_scatter(g, idx, dx.shape(0));
        return;
      }
      Tensor dxt = Tensor::empty(dx.shape(0), g.dtype());
      dispatch_float("max_pool2d backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const std::int64_t nplanes = dxt.numel() / HW;  // H, W >= kernel >= 1
        T* d = dxt.data<T>();
        std::fill_n(d, dxt.numel(), T(0));
        const T* gp = g.data<T>();
        const std::int64_t* ip = idx.data<std::int64_t>();
        for (std::int64_t n = 0; n < nplanes; ++n) {
          T* dp = d + n * HW;
          for (std::int64_t k = n * per; k < (n + 1) * per; ++k) dp[ip[k]] += gp[k];
        }
        return 0;
      });
      dx[0] = dxt;
    });
  }
  return y;
}

}  // namespace xg

namespace xg::detail {

namespace {

// The sizes of a conv2d of a kernel kh x kw over images of x_shape.
Geo unfold_geometry(const char* op, const Shape& xs, std::int64_t kh, std::int64_t kw, Size2 stride, Size2 padding) {
  if (xs.size() != 4) throw ShapeError(fmt::format("{}: input {} must be 4-D [B, C, H, W]", op, xs.str()));
  Geo g{xs[0], xs[1], xs[2], xs[3], 0, kh, kw, stride.h, stride.w, padding.h, padding.w, 0, 0};
  g.Ho = out_size(g.H, kh, stride.h, padding.h);
  g.Wo = out_size(g.W, kw, stride.w, padding.w);
  if (kh < 1 || kw < 1 || stride.h < 1 || stride.w < 1 || padding.h < 0 || padding.w < 0 || g.Ho < 1 || g.Wo < 1) {
    throw ShapeError(fmt::format("{}: input {}, kernel {}x{}, stride {}, padding {}: no valid window", op, xs.str(),
                                 kh, kw, pair_str(stride), pair_str(padding)));
  }
  return g;
}

}  // namespace

Tensor conv_unfold(const Tensor& x, std::int64_t kh, std::int64_t kw, Size2 stride, Size2 padding) {
  detail::check_floating("conv_unfold", x);
  const Geo g = unfold_geometry("conv_unfold", x.shape(), kh, kw, stride, padding);
  const std::int64_t K = g.K(), P = g.P();
  Tensor cols = Tensor::empty(Shape{g.B, K, P}, x.dtype());
  dispatch_float("conv_unfold", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (std::int64_t b = 0; b < g.B; ++b) im2col(x.data<T>() + b * g.C * g.H * g.W, g, cols.data<T>() + b * K * P);
    return 0;
  });
  if (needs_record({&x})) {
    // d unfold = fold (col2im), its adjoint
    record("conv_unfold", cols, {&x}, [kh, kw, stride, padding](const Tensor& gc, GradSlots& dx) {
      dx[0] = conv_fold(gc, dx.shape(0), kh, kw, stride, padding);
    });
  }
  return cols;
}

Tensor conv_fold(const Tensor& cols, const Shape& x_shape, std::int64_t kh, std::int64_t kw, Size2 stride,
                 Size2 padding) {
  detail::check_floating("conv_fold", cols);
  const Geo g = unfold_geometry("conv_fold", x_shape, kh, kw, stride, padding);
  const std::int64_t K = g.K(), P = g.P();
  if (cols.shape() != Shape{g.B, K, P}) {
    throw ShapeError(fmt::format("conv_fold: cols {}: expected {} for images {}", cols.shape().str(),
                                 Shape{g.B, K, P}.str(), x_shape.str()));
  }
  Tensor x = zeros(x_shape, cols.dtype());
  dispatch_float("conv_fold", cols.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (std::int64_t b = 0; b < g.B; ++b) col2im(cols.data<T>() + b * K * P, g, x.data<T>() + b * g.C * g.H * g.W);
    return 0;
  });
  if (needs_record({&cols})) {
    // d fold = unfold (im2col), its adjoint
    record("conv_fold", x, {&cols}, [kh, kw, stride, padding](const Tensor& gx, GradSlots& dx) {
      dx[0] = conv_unfold(gx, kh, kw, stride, padding);
    });
  }
  return x;
}

Tensor conv2d_composite(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding) {
  const Shape& ws = weight.shape();
  const Tensor cols = conv_unfold(x, ws[2], ws[3], stride, padding);  // [B, K, P]
  const Shape& cs = cols.shape();
  // y_b [O, P] = W [O, K] cols_b [K, P], formed as (cols_bᵀ Wᵀ)ᵀ with the bias by linear.
  const Tensor yt = linear(transpose(cols, 1, 2), reshape(weight, Shape{ws[0], cs[1]}), bias);  // [B, P, O]
  const std::int64_t B = x.shape()[0], Ho = out_size(x.shape()[2], ws[2], stride.h, padding.h);
  return reshape(transpose(yt, 1, 2), Shape{B, ws[0], Ho, cs[2] / Ho});
}

}  // namespace xg::detail
