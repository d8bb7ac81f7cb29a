// The losses: cross_entropy (fused log_softmax + nll: one node; class weights and label
// smoothing as PyTorch), nll_loss, mse_loss.
// cross_entropy runs the softmax row kernels of detail/softmax_kernels.hpp; its backward
// is one fused pass too (softmax minus the one-hot target, scaled per row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

#include "detail/composite.hpp"
#include "detail/kernels.hpp"
#include "detail/softmax_kernels.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::exp_shift;
using detail::exp_sum;
using detail::row_max;

namespace {

// ---------------------------------------------------------------------------
// Class-index losses: shared input checks
// ---------------------------------------------------------------------------

struct Classes {
  std::int64_t n = 0;  // batch rows (1 for [C] input)
  std::int64_t c = 0;  // classes
};

// Checks x ([N, C] or [C]) against target (int64 [N] or 0-d) and every target value.
Classes check_class_inputs(const char* op, const char* xname, const Tensor& x, const Tensor& target,
                           std::int64_t ignore_index) {
  detail::check_floating(op, x);
  detail::check_defined(op, target);
  if (target.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("{}: target must be int64 class indices, got {} {}", op, dtype_name(target.dtype()),
                                 target.shape().str()));
  }
  const Shape& xs = x.shape();
  const Shape& ts = target.shape();
  Classes k;
  if (xs.size() == 2) {
    k.n = xs[0];
    k.c = xs[1];
    if (ts.size() != 1 || ts[0] != k.n) {
      throw ShapeError(
          fmt::format("{}: {} {} and target {}: target must be [N] = [{}]", op, xname, xs.str(), ts.str(), k.n));
    }
  } else if (xs.size() == 1) {
    k.n = 1;
    k.c = xs[0];
    if (ts.size() != 0) {
      throw ShapeError(fmt::format("{}: {} {} (one sample of C classes) and target {}: target must be 0-d", op, xname,
                                   xs.str(), ts.str()));
    }
  } else if (xs.size() >= 3) {
    throw ShapeError(
        fmt::format("{}: {} {} must be [N, C] or [C]; for a sequence, reshape [B,T,V] {} to [B*T,V] and the target "
                    "to [B*T]",
                    op, xname, xs.str(), xname));
  } else {
    throw ShapeError(fmt::format("{}: {} {} must be [N, C] or [C], got a 0-d tensor", op, xname, xs.str()));
  }
  const std::int64_t* t = target.data<std::int64_t>();
  for (std::int64_t i = 0; i < k.n; ++i) {
    if (t[i] != ignore_index && (t[i] < 0 || t[i] >= k.c)) {
      throw IndexError(
          fmt::format("{}: target {} at position {} is out of range for C = {} classes "
                      "(valid 0..{}, or ignore_index {})",
                      op, t[i], i, k.c, k.c - 1, ignore_index));
    }
  }
  return k;
}

Shape loss_shape(Reduction r, const Tensor& target) { return r == Reduction::none ? target.shape() : Shape{}; }

// Finishes a class loss from per-row losses (ignored rows hold 0) into y. `count` is the
// mean's denominator: the number of non-ignored rows, or the sum of their targets' class
// weights; a mean over none of them is 0/0 = NaN, like PyTorch.
template <class T>
void reduce_rows(const std::vector<double>& rows, double count, Reduction r, T* y) {
  if (r == Reduction::none) {
    for (std::size_t i = 0; i < rows.size(); ++i) y[i] = static_cast<T>(rows[i]);
    return;
  }
  double s = 0.0;
  for (double v : rows) s += v;
  *y = static_cast<T>(r == Reduction::sum ? s : s / count);
}

// The gradient scale of row i: g[i] (none), g (sum), g / count (mean).
template <class T>
T row_weight(const T* g, std::int64_t i, double count, Reduction r) {
  if (r == Reduction::none) return g[i];
  if (r == Reduction::sum) return g[0];
  return g[0] / static_cast<T>(count);
}

// The class weights as doubles, or empty for none (every class 1), checked against the
// input x [N, C] or [C].
std::vector<double> class_weights(const char* op, const char* xname, const Tensor& x, const Tensor& weight,
                                  std::int64_t c) {
  if (!weight.defined()) return {};
  if (weight.dtype() != x.dtype()) {
    throw DtypeError(fmt::format("{}: weight is {} {} but {} is {} {}: the class weights must have the {}' dtype "
                                 "(pass weight.to({}))",
                                 op, dtype_name(weight.dtype()), weight.shape().str(), xname, dtype_name(x.dtype()),
                                 x.shape().str(), xname, dtype_name(x.dtype())));
  }
  if (weight.shape() != Shape{c}) {
    throw ShapeError(fmt::format("{}: weight {} with {} {}: the class weights must be [C] = [{}], one per class", op,
                                 weight.shape().str(), xname, x.shape().str(), c));
  }
  std::vector<double> w = weight.to_vector<double>();
  for (std::size_t j = 0; j < w.size(); ++j) {
    if (!std::isfinite(w[j]) || w[j] < 0.0) {
      throw Error(fmt::format("{}: weight[{}] = {}: class weights must be finite and >= 0 (a negative weight rewards "
                              "wrong predictions of its class; use 0 to leave a class out)",
                              op, j, w[j]));
    }
  }
  return w;
}

// The mean's denominator: the number of non-ignored targets, or with class weights the sum
// of their weights (PyTorch's weighted mean).
double count_kept(const Tensor& target, std::int64_t ignore_index, const std::vector<double>& w) {
  const std::int64_t* t = target.data<std::int64_t>();
  double count = 0.0;
  for (std::int64_t i = 0; i < target.numel(); ++i) {
    if (t[i] != ignore_index) count += w.empty() ? 1.0 : w[static_cast<std::size_t>(t[i])];
  }
  return count;
}

// sum_j w[j] (x[j] - m) (every w[j] = 1 without Weighted), in eight independent partial
// sums: one accumulator chains every add and cost more than the rest of the loss.
template <class T, bool Weighted>
double shifted_sum(const T* x, T m, const T* w, std::int64_t n) {
  T acc[8] = {};
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int k = 0; k < 8; ++k) {
      if constexpr (Weighted) {
        acc[k] += w[j + k] * (x[j + k] - m);
      } else {
        acc[k] += x[j + k] - m;
      }
    }
  }
  double s = 0.0;
  for (; j < n; ++j) s += static_cast<double>(Weighted ? w[j] * (x[j] - m) : x[j] - m);
  for (T a : acc) s += static_cast<double>(a);
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts) {
  const Classes k = check_class_inputs("cross_entropy", "logits", logits, target, opts.ignore_index);
  const std::int64_t n = k.n, c = k.c;
  const std::int64_t ig = opts.ignore_index;
  const Reduction red = opts.reduction;
  const double eps = opts.label_smoothing;
  if (!(eps >= 0.0 && eps <= 1.0)) {
    throw Error(fmt::format("cross_entropy: label_smoothing must be in [0, 1], got {} (logits {})", eps,
                            logits.shape().str()));
  }
  std::vector<double> wc = class_weights("cross_entropy", "logits", logits, opts.weight, c);
  // Smoothing's uniform part sums the class weights: sum_c w[c] (-log p[c]).
  double wsum = static_cast<double>(c);
  if (!wc.empty()) {
    wsum = 0.0;
    for (double v : wc) wsum += v;
  }
  const bool rec = needs_record({&logits});
  // Backward needs the logits (captured, no copy) and each row's max and log-sum-exp
  // ([N, 2]): it recomputes the softmax row by row, which costs one vectorised exp but
  // saves allocating and streaming an [N, C] buffer in the forward.
  Tensor stats = rec ? Tensor::empty(Shape{n, 2}, logits.dtype()) : Tensor();
  Tensor y = Tensor::empty(loss_shape(red, target), logits.dtype());
  const std::int64_t* t = target.data<std::int64_t>();
  const double count = count_kept(target, ig, wc);
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* st = rec ? stats.data<T>() : nullptr;
    const std::vector<T> wt(wc.begin(), wc.end());
    std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] == ig) continue;
      const T* xr = x + i * c;
      const T m = row_max(xr, c);
      const T ls = std::log(exp_sum<T>(xr, m, nullptr, c));
      // -log softmax[t] = log(s) - (x[t] - m)
      double r = static_cast<double>(ls) - static_cast<double>(xr[t[i]] - m);
      if (!wc.empty()) r *= wc[static_cast<std::size_t>(t[i])];
      if (eps > 0.0) {
        // sum_c w[c] (-log p[c]) = W log(s) - sum_c w[c] (x[c] - m)
        const double sx = wc.empty() ? shifted_sum<T, false>(xr, m, nullptr, c) : shifted_sum<T, true>(xr, m, wt.data(), c);
        r = (1.0 - eps) * r + eps / static_cast<double>(c) * (wsum * static_cast<double>(ls) - sx);
      }
      rows[static_cast<std::size_t>(i)] = r;
      if (st) {
        st[2 * i] = m;
        st[2 * i + 1] = ls;
      }
    }
    reduce_rows(rows, count, red, y.data<T>());
    return 0;
  });
  if (rec) {
    // Row i's target distribution is q = (1 - eps) w[t] onehot(t) + eps / C * w, so
    // d row = (sum_c q[c]) softmax - q, times g (/ count for mean); ignored rows 0.
    record("cross_entropy", y, {&logits},
           [sl = save(logits, 0), stats, st = save(target, 1), ig, red, count, n, c, eps, wsum,
            wc = std::move(wc)](const Tensor& g, GradSlots& dx) {
             // The target is not differentiated but its values pick the rows' classes:
             // saved as cross_entropy's argument 1, so writing into it is caught too.
             const Tensor& logits = sl.get();
             const Tensor& target = st.get();
             if (is_grad_enabled()) {
               // create_graph: composite_backward through cross_entropy_composite (where,
               // log_softmax, gather, mul, sum); the stats are constants.
               CrossEntropyOptions o;
               o.ignore_index = ig;
               o.reduction = red;
               o.label_smoothing = eps;
               if (!wc.empty()) o.weight = from_vector(wc, Shape{c}, logits.dtype());
               composite_backward({logits}, g, dx, [&target, &o](const std::vector<Tensor>& in) {
                 return detail::cross_entropy_composite(in[0], target, o);
               });
               return;
             }
             Tensor d = Tensor::empty(logits.shape(), logits.dtype());
             dispatch_float("cross_entropy backward", logits.dtype(), [&](auto tag) {
               using T = decltype(tag);
               const T* x = logits.data<T>();
               const T* st = stats.data<T>();
               const T* gp = g.data<T>();
               const std::int64_t* t = target.data<std::int64_t>();
               T* dp = d.data<T>();
               const double uniform = eps / static_cast<double>(c);
               const std::vector<T> wcls(wc.begin(), wc.end());  // the class weights in T, for the loops
               for (std::int64_t i = 0; i < n; ++i) {
                 T* dr = dp + i * c;
                 if (t[i] == ig) {
                   std::fill(dr, dr + c, T(0));
                   continue;
                 }
                 const T w = row_weight(gp, i, count, red);
                 const T* xr = x + i * c;
                 const T m = st[2 * i], ls = st[2 * i + 1];
                 if (wc.empty() && eps == 0.0) {
                   exp_shift(xr, m, ls, w, dr, c);
                   dr[t[i]] -= w;
                   continue;
                 }
                 const double wt = wc.empty() ? 1.0 : wc[static_cast<std::size_t>(t[i])];
                 exp_shift(xr, m, ls, static_cast<T>(static_cast<double>(w) * ((1.0 - eps) * wt + uniform * wsum)),
                           dr, c);
                 dr[t[i]] -= static_cast<T>(static_cast<double>(w) * (1.0 - eps) * wt);
                 if (eps > 0.0) {
                   // Branch outside the loops so each vectorises.
                   const T u = static_cast<T>(static_cast<double>(w) * uniform);
                   if (wc.empty()) {
                     for (std::int64_t j = 0; j < c; ++j) dr[j] -= u;
                   } else {
                     for (std::int64_t j = 0; j < c; ++j) dr[j] -= u * wcls[static_cast<std::size_t>(j)];
                   }
                 }
               }
               return 0;
             });
             dx[0] = d;
           });
  }
  return y;
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& target, const CrossEntropyOptions& opts) {
  const Classes k = check_class_inputs("nll_loss", "log_probs", log_probs, target, opts.ignore_index);
  const std::int64_t n = k.n, c = k.c;
  const std::int64_t ig = opts.ignore_index;
  const Reduction red = opts.reduction;
  if (opts.label_smoothing != 0.0) {
    throw Error(fmt::format("nll_loss: label_smoothing {} is not supported (PyTorch's nll_loss has none either); use "
                            "cross_entropy on the logits",
                            opts.label_smoothing));
  }
  const std::vector<double> wc = class_weights("nll_loss", "log_probs", log_probs, opts.weight, c);
  Tensor y = Tensor::empty(loss_shape(red, target), log_probs.dtype());
  const std::int64_t* t = target.data<std::int64_t>();
  const double count = count_kept(target, ig, wc);
  dispatch_float("nll_loss", log_probs.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = log_probs.data<T>();
    std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] == ig) continue;
      const double wt = wc.empty() ? 1.0 : wc[static_cast<std::size_t>(t[i])];
      rows[static_cast<std::size_t>(i)] = -wt * static_cast<double>(x[i * c + t[i]]);
    }
    reduce_rows(rows, count, red, y.data<T>());
    return 0;
  });
  if (needs_record({&log_probs})) {
    // d nll = -g at [i, target[i]] (/ count for mean), 0 elsewhere and on ignored rows
    record("nll_loss", y, {&log_probs},
           [st = save(target, 1), ig, red, count, n, c, wc](const Tensor& g, GradSlots& dx) {
             if (!dx.needs(0)) return;
             const Tensor& target = st.get();  // nll_loss's argument 1: its values pick the entries
             if (is_grad_enabled()) {
               // create_graph: the gradient is linear in g alone, written as g (per row for none)
               // times a constant [N, C] matrix m, m[i, target[i]] = -w[target[i]] (/ count).
               const std::int64_t* t = target.data<std::int64_t>();
               std::vector<double> m(static_cast<std::size_t>(n * c), 0.0);
               for (std::int64_t i = 0; i < n; ++i) {
                 if (t[i] == ig) continue;
                 const double wt = wc.empty() ? 1.0 : wc[static_cast<std::size_t>(t[i])];
                 m[static_cast<std::size_t>(i * c + t[i])] = -wt / (red == Reduction::mean ? count : 1.0);
               }
               const Tensor mt = from_vector(m, dx.shape(0), g.dtype());
               dx[0] = mul(red == Reduction::none && dx.shape(0).size() == 2 ? unsqueeze(g, 1) : g, mt);
               return;
             }
             Tensor d = zeros(dx.shape(0), g.dtype());
             dispatch_float("nll_loss backward", g.dtype(), [&](auto tag) {
               using T = decltype(tag);
               const T* gp = g.data<T>();
               const std::int64_t* t = target.data<std::int64_t>();
               T* dp = d.data<T>();
               for (std::int64_t i = 0; i < n; ++i) {
                 if (t[i] == ig) continue;
                 const T w = row_weight(gp, i, count, red);
                 dp[i * c + t[i]] = wc.empty() ? -w : static_cast<T>(-static_cast<double>(w) * wc[static_cast<std::size_t>(t[i])]);
               }
               return 0;
             });
             dx[0] = d;
           });
  }
  return y;
}

Tensor mse_loss(const Tensor& a, const Tensor& b, Reduction reduction) {
  detail::check_same_float("mse_loss", a, b);
  if (a.shape() != b.shape()) {
    throw ShapeError(
        fmt::format("mse_loss: input {} and target {} must have the same shape (mse_loss does not "
                    "broadcast)",
                    a.shape().str(), b.shape().str()));
  }
  const std::int64_t n = a.numel();
  Tensor y = Tensor::empty(reduction == Reduction::none ? a.shape() : Shape{}, a.dtype());
  dispatch_float("mse_loss", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* yp = y.data<T>();
    if (reduction == Reduction::none) {
      for (std::int64_t i = 0; i < n; ++i) yp[i] = (ap[i] - bp[i]) * (ap[i] - bp[i]);
      return 0;
    }
    double s = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(ap[i]) - static_cast<double>(bp[i]);
      s += d * d;
    }
    // Mean of no elements is 0/0 = NaN, like PyTorch.
    *yp = static_cast<T>(reduction == Reduction::sum ? s : s / static_cast<double>(n));
    return 0;
  });
  if (needs_record({&a, &b})) {
    // d mse = 2 (a - b) g (/ numel for mean), and its negation for b
    const double scale = reduction == Reduction::mean ? 2.0 / static_cast<double>(n) : 2.0;
    record("mse_loss", y, {&a, &b}, [a = save(a, 0), b = save(b, 1), scale](const Tensor& g, GradSlots& dx) {
      const Tensor d = mul(mul(sub(a.get(), b.get()), g), scale);
      if (dx.needs(0)) dx[0] = d;
      if (dx.needs(1)) dx[1] = neg(d);
    });
  }
  return y;
}

}  // namespace xg

namespace xg::detail {

Tensor cross_entropy_composite(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts) {
  const bool one = logits.ndim() == 1;
  const std::int64_t c = logits.shape().back(), n = one ? 1 : logits.shape()[0];
  const Dtype dt = logits.dtype();
  const Tensor x = one ? reshape(logits, Shape{1, c}) : logits;
  const std::int64_t* t = target.data<std::int64_t>();
  const std::vector<double> wc = opts.weight.defined() ? opts.weight.to_vector<double>() : std::vector<double>{};
  // Constants per row: kept or not, the picked class (0 on ignored rows, so gather stays in
  // range), its weight (0 on ignored rows).
  std::vector<bool> keep(static_cast<std::size_t>(n));
  std::vector<std::int64_t> pick(static_cast<std::size_t>(n), 0);
  std::vector<double> wrow(static_cast<std::size_t>(n), 0.0), krow(static_cast<std::size_t>(n), 0.0);
  double count = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    keep[k] = t[i] != opts.ignore_index;
    if (!keep[k]) continue;
    pick[k] = t[i];
    wrow[k] = wc.empty() ? 1.0 : wc[static_cast<std::size_t>(t[i])];
    krow[k] = 1.0;
    count += wrow[k];
  }
  const double eps = opts.label_smoothing;
  // Ignored rows' logits are replaced by 0 before the softmax, so their (unused) values,
  // even non-finite ones, reach neither the loss nor the gradient.
  const Tensor lp = log_softmax(where(from_vector(keep, Shape{n, 1}), x, zeros(Shape{}, dt)), 1);
  const Tensor picked = reshape(gather(lp, 1, from_vector(pick, Shape{n, 1})), Shape{n});
  for (double& w : wrow) w *= -(1.0 - eps);
  Tensor rows = mul(picked, from_vector(wrow, Shape{n}, dt));
  if (eps > 0.0) {
    // - eps / C sum_c w[c] log p[c]
    const Tensor u = wc.empty() ? sum(lp, {1}) : sum(mul(lp, from_vector(wc, Shape{c}, dt)), {1});
    for (double& k : krow) k *= -eps / static_cast<double>(c);
    rows = add(rows, mul(u, from_vector(krow, Shape{n}, dt)));
  }
  if (opts.reduction == Reduction::none) return reshape(rows, target.shape());
  const Tensor total = sum(rows);
  return opts.reduction == Reduction::sum ? total : div(total, count);
}

}  // namespace xg::detail
