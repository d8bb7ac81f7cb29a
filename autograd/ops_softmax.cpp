// softmax and log_softmax: one fused node each, along any dim.
//
// The softmax row loop is the hot path of every language model ([B*T, V] logits), so the
// kernels (detail/softmax_kernels.hpp) are plain loops over raw pointers, one row at a
// time while it sits in L1 (max, exp-sum, write), with the exp done by xsimd batches.
// Every softmax subtracts the row max first, so exp never overflows and the sum is >= 1
// (its log is finite) for finite logits of any size. Backward functions are fused kernels
// too, not compositions of ops: they are exact, one pass, and allocate only the gradient.
// Under create_graph the same formulas run as recorded ops on the re-attached output, so
// the gradient is differentiable again.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "detail/kernels.hpp"
#include "detail/softmax_kernels.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::exp_diff;
using detail::exp_sum;
using detail::exp_to;
using detail::row_max;

namespace {

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

// The backward as recorded ops (create_graph): y is the re-attached output, so its
// dependence on x is differentiated too.
template <bool Log>
Tensor recorded_backward(const Tensor& y, const Tensor& g, int dim) {
  // A 0-d tensor is one row of one element: its own sum, and sum() takes no dim there.
  auto row_sum = [&](const Tensor& t) { return y.ndim() == 0 ? t : sum(t, {dim}, true); };
  if constexpr (Log) {
    return sub(g, mul(exp(y), row_sum(g)));
  } else {
    return mul(y, sub(g, row_sum(mul(g, y))));
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
    record(op, y, {&x}, [ys = save_output(y), l, dim = wrap_dim(op, dim, x.ndim())](const Tensor& g, GradSlots& dx) {
      const Tensor& y = ys.get();
      if (is_grad_enabled()) {
        dx[0] = recorded_backward<Log>(y, g, dim);
        return;
      }
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

}  // namespace

Tensor softmax(const Tensor& x, int dim) { return softmax_impl<false>("softmax", x, dim); }

Tensor log_softmax(const Tensor& x, int dim) { return softmax_impl<true>("log_softmax", x, dim); }

}  // namespace xg
