// Softmax, log-softmax, the losses (cross_entropy = fused log_softmax + nll, nll_loss,
// mse_loss) and dropout.
//
// The softmax row loop is the hot path of every language model ([B*T, V] logits), so the
// kernels below are plain loops over raw pointers, one row at a time while it sits in L1
// (max, exp-sum, write), with the exp done by xsimd batches: GCC does not vectorise
// std::exp without -fno-math-errno, and building an xtensor expression per 100-element
// row costs more than the row itself. Every softmax subtracts the row max first, so exp
// never overflows and the sum is >= 1 (its log is finite) for finite logits of any size.
// Backward functions are these fused kernels too, not compositions of ops: they are
// exact, one pass, and allocate only the gradient (so they are not twice-differentiable).

// GCC 12's AVX-512 intrinsics headers initialise their `undefined` vectors from themselves
// (`__m512d __Y = __Y;`), which -Wmaybe-uninitialized reports wherever xsimd's exp is
// inlined: a known GCC 12 false positive (ops_unary.cpp's xt::tanh shows it too).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <fmt/format.h>

#if defined(XTENSOR_USE_XSIMD)
#include <xsimd/xsimd.hpp>
#endif

#include "detail/kernels.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;

namespace {

// ---------------------------------------------------------------------------
// Row kernels
// ---------------------------------------------------------------------------

// Each helper runs whole batches, then ends a row of n >= W elements with one more batch
// that overlaps the previous one (loaded at n - W): a row of 100 floats would otherwise
// end in 4 scalar std::exp calls costing as much as its 6 vector ones. Recomputed lanes
// give the same bits, so overlapping stores are harmless as long as outputs never alias
// inputs; sums mask the repeated lanes out. Rows shorter than one batch run scalar.
#if defined(XTENSOR_USE_XSIMD)
template <class T>
using Batch = xsimd::batch<T>;
template <class T>
constexpr std::int64_t kWidth = static_cast<std::int64_t>(Batch<T>::size);

// Lanes [W - rem, W): the ones a batch loaded at n - W adds to the whole batches before it.
template <class T>
xsimd::batch_bool<T> new_lanes(std::int64_t rem) {
  T iota[kWidth<T>];
  for (std::int64_t k = 0; k < kWidth<T>; ++k) iota[k] = static_cast<T>(k);
  return Batch<T>::load_unaligned(iota) >= Batch<T>(static_cast<T>(kWidth<T> - rem));
}

template <class T>
T row_max(const T* x, std::int64_t n) {
  constexpr std::int64_t W = kWidth<T>;
  T m = -std::numeric_limits<T>::infinity();
  if (n < W) {
    for (std::int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    return m;
  }
  Batch<T> mb = Batch<T>::load_unaligned(x);
  for (std::int64_t i = W; i + W <= n; i += W) mb = xsimd::max(mb, Batch<T>::load_unaligned(x + i));
  if (n % W != 0) mb = xsimd::max(mb, Batch<T>::load_unaligned(x + n - W));  // repeats are harmless
  T lanes[kWidth<T>];
  mb.store_unaligned(lanes);
  for (T v : lanes) m = std::max(m, v);
  return m;
}

// sum(exp(x - m)); also writes the exps to e (not aliasing x) unless e is null. A NaN
// anywhere in x makes the sum NaN (whatever row_max did with it): it poisons its row only.
template <class T>
T exp_sum(const T* x, T m, T* e, std::int64_t n) {
  constexpr std::int64_t W = kWidth<T>;
  if (n < W) {
    T s = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const T v = std::exp(x[i] - m);
      if (e) e[i] = v;
      s += v;
    }
    return s;
  }
  const Batch<T> mb(m);
  Batch<T> acc(T(0));
  std::int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Batch<T> v = xsimd::exp(Batch<T>::load_unaligned(x + i) - mb);
    if (e) v.store_unaligned(e + i);
    acc += v;
  }
  if (i < n) {
    const Batch<T> v = xsimd::exp(Batch<T>::load_unaligned(x + n - W) - mb);
    if (e) v.store_unaligned(e + n - W);
    acc += xsimd::select(new_lanes<T>(n - i), v, Batch<T>(T(0)));
  }
  return xsimd::hadd(acc);
}

// y = exp((x - a) - b) * w for n >= W (y must not alias x).
template <class T>
void exp_batches(const T* x, T a, T b, T w, T* y, std::int64_t n) {
  constexpr std::int64_t W = kWidth<T>;
  const Batch<T> ab(a), bb(b), wb(w);
  std::int64_t i = 0;
  for (; i + W <= n; i += W) (xsimd::exp((Batch<T>::load_unaligned(x + i) - ab) - bb) * wb).store_unaligned(y + i);
  if (i < n) (xsimd::exp((Batch<T>::load_unaligned(x + n - W) - ab) - bb) * wb).store_unaligned(y + n - W);
}

// y = exp((x - a) - b) * w elementwise; y must not alias x.
template <class T>
void exp_shift(const T* x, T a, T b, T w, T* y, std::int64_t n) {
  if (n >= kWidth<T>) return exp_batches(x, a, b, w, y, n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::exp((x[i] - a) - b) * w;
}

// y = exp(x - a) with a per-element a (the strided softmax); y must not alias x or a.
template <class T>
void exp_diff(const T* x, const T* a, T* y, std::int64_t n) {
  constexpr std::int64_t W = kWidth<T>;
  if (n < W) {
    for (std::int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i] - a[i]);
    return;
  }
  std::int64_t i = 0;
  for (; i + W <= n; i += W) {
    xsimd::exp(Batch<T>::load_unaligned(x + i) - Batch<T>::load_unaligned(a + i)).store_unaligned(y + i);
  }
  if (i < n) {
    const std::int64_t j = n - W;
    xsimd::exp(Batch<T>::load_unaligned(x + j) - Batch<T>::load_unaligned(a + j)).store_unaligned(y + j);
  }
}

#else  // scalar fallback

template <class T>
T row_max(const T* x, std::int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

template <class T>
T exp_sum(const T* x, T m, T* e, std::int64_t n) {
  T s = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T v = std::exp(x[i] - m);
    if (e) e[i] = v;
    s += v;
  }
  return s;
}

template <class T>
void exp_shift(const T* x, T a, T b, T w, T* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::exp((x[i] - a) - b) * w;
}

template <class T>
void exp_diff(const T* x, const T* a, T* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i] - a[i]);
}

#endif

// y = exp(x); y must not alias x.
template <class T>
void exp_to(const T* x, T* y, std::int64_t n) {
  exp_shift(x, T(0), T(0), T(1), y, n);
}

// x viewed as [outer, d, inner] around the softmax dim: rows are contiguous when inner == 1.
struct Lanes {
  std::int64_t outer = 1;
  std::int64_t d = 1;
  std::int64_t inner = 1;
};

Lanes lanes_of(const Shape& s, int dim) {
  Lanes l;
  if (s.size() == 0) return l;  // a 0-d tensor is one row of one element
  for (int i = 0; i < dim; ++i) l.outer *= s[i];
  l.d = s[dim];
  for (int i = dim + 1; i < s.size(); ++i) l.inner *= s[i];
  return l;
}

// y = softmax(x) or log_softmax(x) along the middle axis of l.
template <bool Log, class T>
void softmax_forward(const T* x, T* y, const Lanes& l) {
  const std::int64_t d = l.d;
  if (l.inner == 1) {
    for (std::int64_t r = 0; r < l.outer; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      const T m = row_max(xr, d);
      if constexpr (Log) {
        // (x - m) - log(s), not x - (m + log s): at |x| ~ 1e4 float32 would round log s away.
        const T ls = std::log(exp_sum<T>(xr, m, nullptr, d));
        for (std::int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - m) - ls;
      } else {
        const T inv = T(1) / exp_sum(xr, m, yr, d);
        for (std::int64_t j = 0; j < d; ++j) yr[j] *= inv;
      }
    }
    return;
  }
  // Softmax over a non-last dim: walk the d rows of `inner` contiguous lanes each, so
  // every inner loop is unit-stride.
  const std::int64_t in = l.inner;
  std::vector<T> m(static_cast<std::size_t>(in));
  std::vector<T> s(static_cast<std::size_t>(in));
  for (std::int64_t o = 0; o < l.outer; ++o) {
    const T* xo = x + o * d * in;
    T* yo = y + o * d * in;
    std::copy(xo, xo + in, m.begin());
    for (std::int64_t j = 1; j < d; ++j) {
      const T* xr = xo + j * in;
      for (std::int64_t i = 0; i < in; ++i) m[i] = std::max(m[i], xr[i]);
    }
    std::fill(s.begin(), s.end(), T(0));
    for (std::int64_t j = 0; j < d; ++j) {
      const T* xr = xo + j * in;
      T* yr = yo + j * in;
      exp_diff(xr, m.data(), yr, in);
      for (std::int64_t i = 0; i < in; ++i) s[i] += yr[i];
    }
    if constexpr (Log) {
      for (std::int64_t i = 0; i < in; ++i) s[i] = std::log(s[i]);
      for (std::int64_t j = 0; j < d; ++j) {
        const T* xr = xo + j * in;
        T* yr = yo + j * in;
        for (std::int64_t i = 0; i < in; ++i) yr[i] = (xr[i] - m[i]) - s[i];
      }
    } else {
      for (std::int64_t i = 0; i < in; ++i) s[i] = T(1) / s[i];
      for (std::int64_t j = 0; j < d; ++j) {
        T* yr = yo + j * in;
        for (std::int64_t i = 0; i < in; ++i) yr[i] *= s[i];
      }
    }
  }
}

// Backward of both, from the saved output y:
//   log_softmax: dx = g - exp(y) * sum(g)
//   softmax:     dx = y * (g - sum(g * y))
template <bool Log, class T>
void softmax_backward(const T* y, const T* g, T* dx, const Lanes& l) {
  const std::int64_t d = l.d;
  if (l.inner == 1) {
    for (std::int64_t r = 0; r < l.outer; ++r) {
      const T* yr = y + r * d;
      const T* gr = g + r * d;
      T* dr = dx + r * d;
      T s = 0;
      if constexpr (Log) {
        for (std::int64_t j = 0; j < d; ++j) s += gr[j];
        exp_to(yr, dr, d);
        for (std::int64_t j = 0; j < d; ++j) dr[j] = gr[j] - dr[j] * s;
      } else {
        for (std::int64_t j = 0; j < d; ++j) s += gr[j] * yr[j];
        for (std::int64_t j = 0; j < d; ++j) dr[j] = yr[j] * (gr[j] - s);
      }
    }
    return;
  }
  const std::int64_t in = l.inner;
  std::vector<T> s(static_cast<std::size_t>(in));
  for (std::int64_t o = 0; o < l.outer; ++o) {
    const T* yo = y + o * d * in;
    const T* go = g + o * d * in;
    T* dxo = dx + o * d * in;
    std::fill(s.begin(), s.end(), T(0));
    for (std::int64_t j = 0; j < d; ++j) {
      const T* yr = yo + j * in;
      const T* gr = go + j * in;
      if constexpr (Log) {
        for (std::int64_t i = 0; i < in; ++i) s[i] += gr[i];
      } else {
        for (std::int64_t i = 0; i < in; ++i) s[i] += gr[i] * yr[i];
      }
    }
    for (std::int64_t j = 0; j < d; ++j) {
      const T* yr = yo + j * in;
      const T* gr = go + j * in;
      T* dr = dxo + j * in;
      if constexpr (Log) {
        exp_to(yr, dr, in);
        for (std::int64_t i = 0; i < in; ++i) dr[i] = gr[i] - dr[i] * s[i];
      } else {
        for (std::int64_t i = 0; i < in; ++i) dr[i] = yr[i] * (gr[i] - s[i]);
      }
    }
  }
}

template <bool Log>
Tensor softmax_impl(const char* op, const Tensor& x, int dim) {
  detail::check_floating(op, x);
  const Lanes l = lanes_of(x.shape(), wrap_dim(op, dim, x.ndim()));
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (x.numel() > 0) {
    dispatch_float(op, x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      softmax_forward<Log>(x.data<T>(), y.data<T>(), l);
      return 0;
    });
  }
  if (needs_record({&x})) {
    // log_softmax: dx = g - softmax * sum(g, dim); softmax: dx = y * (g - sum(g * y, dim))
    record(op, y, {&x}, [y = y.detach(), l](const Tensor& g, GradSlots& dx) {
      Tensor d = Tensor::empty(y.shape(), y.dtype());
      if (y.numel() > 0) {
        dispatch_float(Log ? "log_softmax backward" : "softmax backward", y.dtype(), [&](auto tag) {
          using T = decltype(tag);
          softmax_backward<Log>(y.data<T>(), g.data<T>(), d.data<T>(), l);
          return 0;
        });
      }
      dx[0] = d;
    });
  }
  return y;
}

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
// number of non-ignored rows; a mean over none of them is 0/0 = NaN, like PyTorch.
template <class T>
void reduce_rows(const std::vector<double>& rows, std::int64_t count, Reduction r, T* y) {
  if (r == Reduction::none) {
    for (std::size_t i = 0; i < rows.size(); ++i) y[i] = static_cast<T>(rows[i]);
    return;
  }
  double s = 0.0;
  for (double v : rows) s += v;
  *y = static_cast<T>(r == Reduction::sum ? s : s / static_cast<double>(count));
}

// The gradient scale of row i: g[i] (none), g (sum), g / count (mean).
template <class T>
T row_weight(const T* g, std::int64_t i, std::int64_t count, Reduction r) {
  if (r == Reduction::none) return g[i];
  if (r == Reduction::sum) return g[0];
  return g[0] / static_cast<T>(count);
}

std::int64_t count_kept(const Tensor& target, std::int64_t ignore_index) {
  const std::int64_t* t = target.data<std::int64_t>();
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < target.numel(); ++i) count += t[i] != ignore_index;
  return count;
}

}  // namespace

// ---------------------------------------------------------------------------
// Softmax
// ---------------------------------------------------------------------------

Tensor softmax(const Tensor& x, int dim) { return softmax_impl<false>("softmax", x, dim); }

Tensor log_softmax(const Tensor& x, int dim) { return softmax_impl<true>("log_softmax", x, dim); }

// ---------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts) {
  const Classes k = check_class_inputs("cross_entropy", "logits", logits, target, opts.ignore_index);
  const std::int64_t n = k.n, c = k.c;
  const std::int64_t ig = opts.ignore_index;
  const Reduction red = opts.reduction;
  const bool rec = needs_record({&logits});
  // Backward needs the logits (captured, no copy) and each row's max and log-sum-exp
  // ([N, 2]): it recomputes the softmax row by row, which costs one vectorised exp but
  // saves allocating and streaming an [N, C] buffer in the forward.
  Tensor stats = rec ? Tensor::empty(Shape{n, 2}, logits.dtype()) : Tensor();
  Tensor y = Tensor::empty(loss_shape(red, target), logits.dtype());
  const std::int64_t* t = target.data<std::int64_t>();
  const std::int64_t count = count_kept(target, ig);
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* st = rec ? stats.data<T>() : nullptr;
    std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] == ig) continue;
      const T* xr = x + i * c;
      const T m = row_max(xr, c);
      const T ls = std::log(exp_sum<T>(xr, m, nullptr, c));
      // -log softmax[t] = log(s) - (x[t] - m)
      rows[static_cast<std::size_t>(i)] = static_cast<double>(ls) - static_cast<double>(xr[t[i]] - m);
      if (st) {
        st[2 * i] = m;
        st[2 * i + 1] = ls;
      }
    }
    reduce_rows(rows, count, red, y.data<T>());
    return 0;
  });
  if (rec) {
    // d cross_entropy = (softmax - onehot(target)) * g per row, / count for mean; ignored rows 0
    record("cross_entropy", y, {&logits},
           [logits, stats, target, ig, red, count, n, c](const Tensor& g, GradSlots& dx) {
             Tensor d = Tensor::empty(logits.shape(), logits.dtype());
             dispatch_float("cross_entropy backward", logits.dtype(), [&](auto tag) {
               using T = decltype(tag);
               const T* x = logits.data<T>();
               const T* st = stats.data<T>();
               const T* gp = g.data<T>();
               const std::int64_t* t = target.data<std::int64_t>();
               T* dp = d.data<T>();
               for (std::int64_t i = 0; i < n; ++i) {
                 T* dr = dp + i * c;
                 if (t[i] == ig) {
                   std::fill(dr, dr + c, T(0));
                   continue;
                 }
                 const T w = row_weight(gp, i, count, red);
                 const T* xr = x + i * c;
                 const T m = st[2 * i], ls = st[2 * i + 1];
                 exp_shift(xr, m, ls, w, dr, c);
                 dr[t[i]] -= w;
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
  Tensor y = Tensor::empty(loss_shape(red, target), log_probs.dtype());
  const std::int64_t* t = target.data<std::int64_t>();
  const std::int64_t count = count_kept(target, ig);
  dispatch_float("nll_loss", log_probs.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = log_probs.data<T>();
    std::vector<double> rows(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] != ig) rows[static_cast<std::size_t>(i)] = -static_cast<double>(x[i * c + t[i]]);
    }
    reduce_rows(rows, count, red, y.data<T>());
    return 0;
  });
  if (needs_record({&log_probs})) {
    // d nll = -g at [i, target[i]] (/ count for mean), 0 elsewhere and on ignored rows
    record("nll_loss", y, {&log_probs},
           [target, xs = log_probs.shape(), ig, red, count, n, c](const Tensor& g, GradSlots& dx) {
             Tensor d = zeros(xs, g.dtype());
             dispatch_float("nll_loss backward", g.dtype(), [&](auto tag) {
               using T = decltype(tag);
               const T* gp = g.data<T>();
               const std::int64_t* t = target.data<std::int64_t>();
               T* dp = d.data<T>();
               for (std::int64_t i = 0; i < n; ++i) {
                 if (t[i] != ig) dp[i * c + t[i]] = -row_weight(gp, i, count, red);
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
    record("mse_loss", y, {&a, &b}, [a, b, scale](const Tensor& g, GradSlots& dx) {
      const Tensor d = mul(mul(sub(a, b), g), scale);
      if (dx.needs(0)) dx[0] = d;
      if (dx.needs(1)) dx[1] = neg(d);
    });
  }
  return y;
}

// ---------------------------------------------------------------------------
// Dropout
// ---------------------------------------------------------------------------

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  if (!(p >= 0.0 && p <= 1.0)) {  // also rejects NaN
    throw Error(fmt::format("dropout: probability p must be in [0, 1], got {}", p));
  }
  detail::check_floating("dropout", x);
  if (!training || p == 0.0) return x;
  Generator& rng = gen ? *gen : default_generator();
  const bool rec = needs_record({&x});
  // The mask holds 0 or 1/(1-p), so forward and backward are both one multiply.
  // p == 1 drops everything (PyTorch's convention): scale 0 instead of 1/0.
  const double scale = p == 1.0 ? 0.0 : 1.0 / (1.0 - p);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mask = rec ? Tensor::empty(x.shape(), x.dtype()) : Tensor();
  dispatch_float("dropout", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    T* mp = rec ? mask.data<T>() : nullptr;
    const T s = static_cast<T>(scale);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const T m = rng.uniform() >= p ? s : T(0);
      yp[i] = m == T(0) ? T(0) : xp[i] * m;
      if (mp) mp[i] = m;
    }
    return 0;
  });
  if (rec) {
    // d dropout(x) = g * mask / (1 - p)
    record("dropout", y, {&x}, [mask](const Tensor& g, GradSlots& dx) { dx[0] = mul(g, mask); });
  }
  return y;
}

}  // namespace xg
