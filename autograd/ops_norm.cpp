// layer_norm: one node, statistics accumulated in double, plain row loops (no xtensor).
#include "ops_norm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

#include "detail/composite.hpp"
#include "detail/dispatch.hpp"
#include "detail/tensor_impl.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::prod;

// ---------------------------------------------------------------------------
// layer_norm
// ---------------------------------------------------------------------------

namespace {

void check_affine(const char* what, const Tensor& x, const Tensor& p, const Shape& ns) {
  if (!p.defined()) return;
  detail::check_same_float("layer_norm", x, p);
  if (p.shape() != ns) {
    throw ShapeError(fmt::format("layer_norm: {} {} must have normalized_shape {}", what, p.shape().str(), ns.str()));
  }
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  detail::check_floating("layer_norm", x);
  const Shape& xs = x.shape();
  const Shape& ns = normalized_shape;
  const int k = ns.size(), nd = xs.size();
  bool trailing = k > 0 && k <= nd;
  for (int i = 0; trailing && i < k; ++i) trailing = xs[nd - k + i] == ns[i];
  if (!trailing) {
    throw ShapeError(fmt::format("layer_norm: input {}: normalized_shape {} must be non-empty and equal the input's "
                                 "trailing dims",
                                 xs.str(), ns.str()));
  }
  check_affine("weight", x, weight, ns);
  check_affine("bias", x, bias, ns);
  if (!(eps >= 0.0)) throw Error(fmt::format("layer_norm: eps must be >= 0, got {}", eps));

  const std::int64_t D = ns.numel();
  const std::int64_t M = prod(xs, 0, nd - k);
  const bool rec = needs_record({&x, &weight, &bias});
  Tensor y = Tensor::empty(xs, x.dtype());
  // Per row: mean and 1/sqrt(var + eps), for the backward.
  Tensor stats = rec ? Tensor::empty(Shape{M, 2}, Dtype::f64) : Tensor();
  dispatch_float("layer_norm", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const T* wp = weight.defined() ? weight.data<T>() : nullptr;
    const T* bp = bias.defined() ? bias.data<T>() : nullptr;
    T* yp = y.data<T>();
    double* st = rec ? stats.data<double>() : nullptr;
    for (std::int64_t r = 0; r < M; ++r) {
      const T* xr = xp + r * D;
      T* yr = yp + r * D;
      double s = 0.0;
      for (std::int64_t j = 0; j < D; ++j) s += static_cast<double>(xr[j]);
      const double mu = s / static_cast<double>(D);
      double v = 0.0;  // two passes: no cancellation when |mean| >> std
      for (std::int64_t j = 0; j < D; ++j) {
        const double c = static_cast<double>(xr[j]) - mu;
        v += c * c;
      }
      const double rstd = 1.0 / std::sqrt(v / static_cast<double>(D) + eps);
      for (std::int64_t j = 0; j < D; ++j) {
        double h = (static_cast<double>(xr[j]) - mu) * rstd;
        if (wp) h *= static_cast<double>(wp[j]);
        if (bp) h += static_cast<double>(bp[j]);
        yr[j] = static_cast<T>(h);
      }
      if (st) {
        st[2 * r] = mu;
        st[2 * r + 1] = rstd;
      }
    }
    return 0;
  });
  if (rec) {
    // xhat = (x - mean) rstd, gh = g w: dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), dw = Σ g xhat, db = Σ g
    // bias is kept for create_graph only (the composite's output includes it); the stats are
    // constants there, recomputed by the composite.
    record("layer_norm", y, {&x, &weight, &bias},
           [x = save(x, 0), weight = save(weight, 1), bias = save(bias, 2), stats, eps](const Tensor& g,
                                                                                      GradSlots& dx) {
      // D is not captured (the closure then fits BackwardFn's inline room): g holds M rows of
      // D, or with no rows the affine parameters' size.
      const std::int64_t M = stats.shape()[0];
      const std::int64_t D = M > 0 ? g.numel() / M
                             : dx.needs(1)  ? dx.shape(1).numel()
                             : dx.needs(2)  ? dx.shape(2).numel()
                                            : 0;
      if (is_grad_enabled()) {
        // create_graph: composite_backward through layer_norm_composite (mean, sub, mul, pow)
        // over the rows flattened to [M, D]: the same statistics.
        composite_backward({x.get(), weight.get(), bias.get()}, g, dx, [D, eps](const std::vector<Tensor>& in) {
          return detail::layer_norm_composite(in[0], Shape{D}, in[1], in[2], eps);
        });
        return;
      }
      const bool need_x = dx.needs(0), need_w = dx.needs(1), need_b = dx.needs(2);
      dispatch_float("layer_norm backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        // x's values are read for dx and dw, the weight's for dx only: db needs neither.
        const T* xp = need_x || need_w ? x.get().data<T>() : nullptr;
        const T* gp = g.data<T>();
        const T* wp = need_x && weight.defined() ? weight.get().data<T>() : nullptr;
        const double* st = stats.data<double>();
        Tensor dxt = need_x ? Tensor::empty(dx.shape(0), g.dtype()) : Tensor();
        T* dxp = need_x ? dxt.data<T>() : nullptr;
        std::vector<double> dw(need_w ? static_cast<std::size_t>(D) : 0, 0.0);
        std::vector<double> db(need_b ? static_cast<std::size_t>(D) : 0, 0.0);
        for (std::int64_t r = 0; r < M; ++r) {
          const T* xr = xp ? xp + r * D : nullptr;
          const T* gr = gp + r * D;
          const double mu = st[2 * r], rstd = st[2 * r + 1];
          if (need_w || need_b) {
            for (std::int64_t j = 0; j < D; ++j) {
              const double gj = static_cast<double>(gr[j]);
              if (need_w) dw[j] += gj * (static_cast<double>(xr[j]) - mu) * rstd;
              if (need_b) db[j] += gj;
            }
          }
          if (!need_x) continue;
          double sg = 0.0, sgh = 0.0;  // Σ gh, Σ gh * xhat
          for (std::int64_t j = 0; j < D; ++j) {
            const double gh = static_cast<double>(gr[j]) * (wp ? static_cast<double>(wp[j]) : 1.0);
            sg += gh;
            sgh += gh * (static_cast<double>(xr[j]) - mu) * rstd;
          }
          const double a = sg / static_cast<double>(D), b = sgh / static_cast<double>(D);
          T* dr = dxp + r * D;
          for (std::int64_t j = 0; j < D; ++j) {
            const double gh = static_cast<double>(gr[j]) * (wp ? static_cast<double>(wp[j]) : 1.0);
            const double xh = (static_cast<double>(xr[j]) - mu) * rstd;
            dr[j] = static_cast<T>(rstd * (gh - a - xh * b));
          }
        }
        if (need_x) dx[0] = dxt;
        auto to_tensor = [&](const std::vector<double>& v, std::size_t slot) {
          Tensor t = Tensor::empty(dx.shape(slot), g.dtype());
          T* p = t.data<T>();
          for (std::int64_t j = 0; j < D; ++j) p[j] = static_cast<T>(v[static_cast<std::size_t>(j)]);
          dx[slot] = t;
        };
        if (need_w) to_tensor(dw, 1);
        if (need_b) to_tensor(db, 2);
        return 0;
      });
    });
  }
  return y;
}

}  // namespace xg

namespace xg::detail {

Tensor layer_norm_composite(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                            double eps) {
  // Rows of D = numel(normalized_shape), so any normalized_shape of that size means the same.
  const std::int64_t D = normalized_shape.numel();
  const Tensor x2 = reshape(x, Shape{D > 0 ? x.numel() / D : 0, D});
  const Tensor xc = sub(x2, mean(x2, {1}, true));
  Tensor y = mul(xc, pow(add(mean(mul(xc, xc), {1}, true), eps), -0.5));
  if (weight.defined()) y = mul(y, reshape(weight, Shape{D}));
  if (bias.defined()) y = add(y, reshape(bias, Shape{D}));
  return reshape(y, x.shape());
}

}  // namespace xg::detail
