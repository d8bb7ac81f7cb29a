// Reductions: sum, mean, max, argmax, logsumexp.
//
// Every reduction kernel sees x as [outer, len, inner] where the reduced dims form one
// contiguous block of length `len` (size-1 dims do not count: they do not change the
// layout). Reducing dim 1 of [B, T, H] is then one loop over B, T, H with the H elements
// of a step contiguous, and reducing the last dim is a contiguous row per output.
// Reduced dims that are not one block ({0, 2} of [A, B, C]) are reduced one block at a
// time, last block first (sum of sums, logsumexp of logsumexps: exact identities), which
// needs no transposed copy and leaves each stage smaller than the last.
//
// Choices (PyTorch's unless stated):
// - An empty dims list reduces over every dim (sum(x, {}) == sum(x)); keepdim then keeps
//   all dims as size 1. PyTorch's sum/mean do the same for dim=[].
// - A dim named twice (also as d and d - ndim) is an IndexError.
// - Empty reductions: sum -> 0, mean -> NaN (0/0), logsumexp -> -inf (log 0); max and
//   argmax of an empty set have no value and throw ShapeError.
// - max/argmax treat NaN as larger than any number (the first NaN wins), so a NaN in the
//   input shows up in the max, as in PyTorch.
// - float32 sums accumulate in double within each block (a sum over B*T*V logits must
//   not drift); a multi-block reduction rounds its partial sums to float32 in between.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <limits>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include <xtensor/xoperation.hpp>
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

// Bit d set: dim d is reduced (a Shape has at most 8 dims).
using DimMask = std::uint32_t;

bool reduced(DimMask m, int d) { return (m >> d) & 1u; }

DimMask dims_mask(const char* op, const Shape& s, const std::vector<int>& dims) {
  const int nd = s.size();
  if (dims.empty()) return nd == 0 ? 0u : (DimMask{1} << nd) - 1u;
  DimMask m = 0;
  for (int d : dims) {
    const int w = wrap_dim(op, d, nd);
    if (reduced(m, w)) {
      throw IndexError(fmt::format("{}: dim {} appears more than once in dims [{}] for a {}-d tensor {}", op, w,
                                   fmt::join(dims, ","), nd, s.str()));
    }
    m |= DimMask{1} << w;
  }
  // A 0-d tensor accepts dim 0 / -1 (as PyTorch) but has no dim to mark.
  return nd == 0 ? 0u : m;
}

// x's shape with the reduced dims set to 1: the result with keepdim, and the shape the
// incoming gradient is viewed as so that it broadcasts back over x.
Shape keep_shape(const Shape& s, DimMask m) {
  Shape k = s;
  for (int d = 0; d < s.size(); ++d) {
    if (reduced(m, d)) k[d] = 1;
  }
  return k;
}

Shape out_shape(const Shape& s, DimMask m, bool keepdim) {
  if (keepdim) return keep_shape(s, m);
  Shape o;
  for (int d = 0; d < s.size(); ++d) {
    if (!reduced(m, d)) o.push_back(s[d]);
  }
  return o;
}

struct Plan {
  std::int64_t outer = 1;
  std::int64_t len = 1;
  std::int64_t inner = 1;
};

// x as [outer, len, inner] around the reduced dims of m, which must form one block once
// size-1 dims are ignored (blocks() guarantees it).
Plan make_plan(const Shape& s, DimMask m) {
  Plan p;
  bool seen = false;  // passed the reduced block
  for (int d = 0; d < s.size(); ++d) {
    if (s[d] == 1) continue;  // reduced or not, it changes no product and no layout
    if (reduced(m, d)) {
      p.len *= s[d];
      seen = true;
    } else {
      (seen ? p.inner : p.outer) *= s[d];
    }
  }
  return p;
}

// The reduced dims of m split into blocks that are contiguous in memory, last block
// first. Reduced size-1 dims join the first block listed (they fit anywhere). A mask
// with nothing to reduce (a 0-d tensor) is one empty block: a copy.
std::vector<DimMask> blocks(const Shape& s, DimMask m) {
  std::vector<DimMask> out;
  DimMask cur = 0, ones = 0;
  for (int d = s.size() - 1; d >= 0; --d) {
    const DimMask bit = DimMask{1} << d;
    if (s[d] == 1) {
      if (reduced(m, d)) ones |= bit;
    } else if (reduced(m, d)) {
      cur |= bit;
    } else if (cur != 0) {
      out.push_back(cur);
      cur = 0;
    }
  }
  if (cur != 0 || out.empty()) out.push_back(cur);
  out[0] |= ones;
  return out;
}

// Number of elements each output element reduces over.
std::int64_t reduced_count(const Shape& s, DimMask m) {
  std::int64_t n = 1;
  for (int d = 0; d < s.size(); ++d) {
    if (reduced(m, d)) n *= s[d];
  }
  return n;
}

// g (the gradient of a reduction's output) viewed with the reduced dims as size 1, so it
// broadcasts against x. The gradient is contiguous, so this is a free view. Under
// create_graph (grad mode on inside backward) g has history, which a bare alias would
// drop: the recorded reshape keeps it.
Tensor grad_keep(const Tensor& g, const Shape& xs, DimMask m) {
  const Shape k = keep_shape(xs, m);
  if (g.shape() == k) return g;
  return is_grad_enabled() ? reshape(g, k) : detail::alias(g, k);
}

// ---- kernels over [outer, len, inner] ------------------------------------------------

// Four independent partial sums: the dependency chain of one accumulator, not the adds,
// bounds a serial sum.
template <class T>
double row_sum(const T* p, std::int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < n; ++i) s0 += p[i];
  return (s0 + s1) + (s2 + s3);
}

// y[o, i] = sum_r x[o, r, i] / divisor.
template <class T>
void sum_kernel(const T* x, T* y, const Plan& p, double divisor) {
  const std::int64_t len = p.len, inner = p.inner;
  if (inner == 1) {
    for (std::int64_t o = 0; o < p.outer; ++o) y[o] = static_cast<T>(row_sum(x + o * len, len) / divisor);
    return;
  }
  std::vector<double> acc(static_cast<std::size_t>(inner));
  for (std::int64_t o = 0; o < p.outer; ++o) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::int64_t r = 0; r < len; ++r) {
      const T* xr = x + (o * len + r) * inner;
      for (std::int64_t i = 0; i < inner; ++i) acc[i] += xr[i];
    }
    T* yo = y + o * inner;
    for (std::int64_t i = 0; i < inner; ++i) yo[i] = static_cast<T>(acc[i] / divisor);
  }
}

// v beats the current best: larger, or the first NaN.
template <class T>
bool beats(T v, T best) {
  return v > best || (v != v && best == best);
}

// Index of the first maximum of x[0, n), n >= 1, NaN counting as the maximum. For float
// rows (the argmax over a vocabulary) the max and a NaN flag are found with SIMD, then
// one early-exit scan finds the first index holding it; a compare-and-branch loop is
// several times slower.
template <class T>
std::int64_t row_argmax(const T* x, std::int64_t n) {
  std::int64_t i = 0;
  T m = x[0];
  bool nan = false;
#if defined(XTENSOR_USE_XSIMD)
  if constexpr (std::is_floating_point_v<T>) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
    if (n >= W) {
      B mb = B::load_unaligned(x);
      auto nb = xsimd::isnan(mb);
      for (i = W; i + W <= n; i += W) {
        const B v = B::load_unaligned(x + i);
        mb = xsimd::max(mb, v);
        nb = nb || xsimd::isnan(v);
      }
      nan = xsimd::any(nb);
      T lanes[W];
      mb.store_unaligned(lanes);
      for (T v : lanes) m = std::max(m, v);
    }
  }
#endif
  for (; i < n; ++i) {
    nan = nan || x[i] != x[i];
    m = std::max(m, x[i]);
  }
  if (nan) {
    for (std::int64_t k = 0; k < n; ++k) {
      if (x[k] != x[k]) return k;
    }
  }
  for (std::int64_t k = 0; k < n; ++k) {
    if (x[k] == m) return k;
  }
  return 0;
}

// val[o, i] = max_r x[o, r, i] and idx[o, i] = its first r (idx may be null). len >= 1.
template <class T>
void max_kernel(const T* x, T* val, std::int64_t* idx, const Plan& p) {
  const std::int64_t len = p.len, inner = p.inner;
  for (std::int64_t o = 0; o < p.outer; ++o) {
    const T* xo = x + o * len * inner;
    T* vo = val + o * inner;
    std::int64_t* io = idx ? idx + o * inner : nullptr;
    if (inner == 1) {
      const std::int64_t k = row_argmax(xo, len);
      vo[0] = xo[k];
      if (io) io[0] = k;
      continue;
    }
    std::copy(xo, xo + inner, vo);
    if (io) std::fill(io, io + inner, std::int64_t{0});
    for (std::int64_t r = 1; r < len; ++r) {
      const T* xr = xo + r * inner;
      for (std::int64_t i = 0; i < inner; ++i) {
        if (beats(xr[i], vo[i])) {
          vo[i] = xr[i];
          if (io) io[i] = r;
        }
      }
    }
  }
}

// Row maximum for logsumexp's shift (NaN handling does not matter there: a NaN in the
// row makes the exp sum NaN whatever the shift is).
template <class T>
T row_max(const T* x, std::int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  if (n >= W) {
    B mb = B::load_unaligned(x);
    for (i = W; i + W <= n; i += W) mb = xsimd::max(mb, B::load_unaligned(x + i));
    T lanes[W];
    mb.store_unaligned(lanes);
    for (T v : lanes) m = std::max(m, v);
  }
#endif
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// sum_i exp(x[i] - m), in T: every term is <= 1 and one of them is 1, and the SIMD
// lanes are independent partial sums.
template <class T>
T row_exp_sum(const T* x, T m, std::int64_t n) {
  T s = 0;
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  const B mb(m);
  B acc(T(0));
  for (; i + W <= n; i += W) acc += xsimd::exp(B::load_unaligned(x + i) - mb);
  s = xsimd::hadd(acc);
#endif
  for (; i < n; ++i) s += std::exp(x[i] - m);
  return s;
}

// acc[i] += exp(x[i] - m[i]).
template <class T>
void exp_acc(const T* x, const T* m, T* acc, std::int64_t n) {
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  for (; i + W <= n; i += W) {
    const B a = B::load_unaligned(acc + i) + xsimd::exp(B::load_unaligned(x + i) - B::load_unaligned(m + i));
    a.store_unaligned(acc + i);
  }
#endif
  for (; i < n; ++i) acc[i] += std::exp(x[i] - m[i]);
}

// x = exp(x).
template <class T>
void exp_inplace(T* x, std::int64_t n) {
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(B::size);
  for (; i + W <= n; i += W) xsimd::exp(B::load_unaligned(x + i)).store_unaligned(x + i);
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

// The shift: the max, or 0 when it is infinite (all -inf gives log(0) = -inf, a +inf
// gives +inf, instead of inf - inf = NaN).
template <class T>
T lse_shift(T m) {
  return std::isinf(m) ? T(0) : m;
}

// y[o, i] = log sum_r exp(x[o, r, i]), stably: the max is subtracted before exp.
template <class T>
void logsumexp_kernel(const T* x, T* y, const Plan& p) {
  const std::int64_t len = p.len, inner = p.inner;
  if (inner == 1) {
    for (std::int64_t o = 0; o < p.outer; ++o) {
      const T* xo = x + o * len;
      const T m = lse_shift(row_max(xo, len));
      y[o] = m + std::log(row_exp_sum(xo, m, len));
    }
    return;
  }
  std::vector<T> shift(static_cast<std::size_t>(inner));
  std::vector<T> acc(static_cast<std::size_t>(inner));
  for (std::int64_t o = 0; o < p.outer; ++o) {
    const T* xo = x + o * len * inner;
    std::fill(shift.begin(), shift.end(), -std::numeric_limits<T>::infinity());
    for (std::int64_t r = 0; r < len; ++r) {
      const T* xr = xo + r * inner;
      for (std::int64_t i = 0; i < inner; ++i) shift[i] = std::max(shift[i], xr[i]);
    }
    for (T& m : shift) m = lse_shift(m);
    std::fill(acc.begin(), acc.end(), T(0));
    for (std::int64_t r = 0; r < len; ++r) exp_acc(xo + r * inner, shift.data(), acc.data(), inner);
    T* yo = y + o * inner;
    for (std::int64_t i = 0; i < inner; ++i) yo[i] = shift[i] + std::log(acc[i]);
  }
}

// Runs kernel(x, y, plan, last) once per block of the reduced dims (last block first),
// each stage writing a keepdim-shaped tensor, and returns the result in the shape
// asked for. One block (the common case) is one pass straight from x.
template <class Kernel>
Tensor reduce_blocks(const char* op, const Tensor& x, DimMask m, bool keepdim, Kernel&& kernel) {
  const std::vector<DimMask> bl = blocks(x.shape(), m);
  Tensor cur = x;
  for (std::size_t k = 0; k < bl.size(); ++k) {
    const Plan p = make_plan(cur.shape(), bl[k]);
    Tensor next = Tensor::empty(keep_shape(cur.shape(), bl[k]), x.dtype());
    dispatch_float(op, x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernel(std::as_const(cur).data<T>(), next.data<T>(), p, k + 1 == bl.size());  // a read: x's version stays
      return 0;
    });
    cur = next;
  }
  return keepdim ? cur : detail::alias(cur, out_shape(x.shape(), m, false));
}

Tensor sum_impl(const char* op, const Tensor& x, const std::vector<int>& dims, bool keepdim, bool mean) {
  detail::check_floating(op, x);
  const DimMask m = dims_mask(op, x.shape(), dims);
  // mean divides once, at the last stage, by the total count (0 / 0 = NaN when empty).
  const double divisor = mean ? static_cast<double>(reduced_count(x.shape(), m)) : 1.0;
  return reduce_blocks(op, x, m, keepdim, [divisor](const auto* in, auto* out, const Plan& p, bool last) {
    sum_kernel(in, out, p, last ? divisor : 1.0);
  });
}

// The max along one dim: values and/or first indices, both in the keepdim shape.
struct MaxAlong {
  DimMask mask = 0;
  Plan plan;
  Tensor val;
  Tensor idx;
};

MaxAlong max_along(const char* op, const Tensor& x, int dim, bool want_val, bool want_idx) {
  MaxAlong r;
  const int d = wrap_dim(op, dim, x.ndim());
  if (x.ndim() > 0) {
    if (x.shape()[d] == 0) {
      throw ShapeError(fmt::format("{}: dim {} of {} has size 0; the max of an empty set is undefined", op, d,
                                   x.shape().str()));
    }
    r.mask = DimMask{1} << d;
  }
  r.plan = make_plan(x.shape(), r.mask);
  const Shape keep = keep_shape(x.shape(), r.mask);
  if (want_idx) r.idx = Tensor::empty(keep, Dtype::i64);
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    // argmax alone still needs the running max: it goes to a scratch tensor.
    Tensor v = Tensor::empty(keep, x.dtype());
    max_kernel<T>(x.data<T>(), v.data<T>(), want_idx ? r.idx.data<std::int64_t>() : nullptr, r.plan);
    if (want_val) r.val = v;
    return 0;
  };
  if (x.dtype() == Dtype::i64) {
    run(std::int64_t{});
  } else {
    dispatch_float(op, x.dtype(), run);
  }
  return r;
}

}  // namespace

Tensor sum(const Tensor& x) {
  detail::check_defined("sum", x);
  if (x.dtype() == Dtype::b8) {
    // Counts the true elements, as int64 (PyTorch's sum of a bool tensor).
    Tensor y = Tensor::empty(Shape{}, Dtype::i64);
    // Bytes are 0 or 1 (every way in normalises them): summed in blocks of 32-bit
    // counters, which the compiler vectorises.
    const auto* p = reinterpret_cast<const std::uint8_t*>(std::as_const(x).data<bool>());
    std::int64_t c = 0;
    const std::int64_t n = x.numel();
    for (std::int64_t i = 0; i < n; i += (std::int64_t{1} << 20)) {
      const std::int64_t end = std::min(n, i + (std::int64_t{1} << 20));
      std::uint32_t block = 0;
      for (std::int64_t j = i; j < end; ++j) block += p[j];
      c += block;
    }
    *y.data<std::int64_t>() = c;
    return y;
  }
  detail::check_floating("sum", x);
  Tensor y = Tensor::empty(Shape{}, x.dtype());
  dispatch_float("sum", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    *y.data<T>() = static_cast<T>(row_sum(x.data<T>(), x.numel()));
    return 0;
  });
  if (needs_record({&x})) {
    // d sum(x) = g broadcast to x's shape
    record("sum", y, {&x}, [](const Tensor& g, GradSlots& dx) { dx[0] = broadcast_to(g, dx.shape(0)); });
  }
  return y;
}

Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim) {
  detail::check_defined("sum", x);
  if (x.dtype() == Dtype::b8) {
    // Counts per slice, as int64. Summed as float64 0/1 by the float kernels: exact for
    // counts below 2^53 (8 PiB of bools).
    return sum_impl("sum", x.to(Dtype::f64), dims, keepdim, false).to(Dtype::i64);
  }
  Tensor y = sum_impl("sum", x, dims, keepdim, false);
  if (needs_record({&x})) {
    const DimMask m = dims_mask("sum", x.shape(), dims);
    // d sum(x, dims) = g broadcast back over the reduced dims
    record("sum", y, {&x}, [m](const Tensor& g, GradSlots& dx) {
      dx[0] = broadcast_to(grad_keep(g, dx.shape(0), m), dx.shape(0));
    });
  }
  return y;
}

Tensor mean(const Tensor& x) {
  detail::check_floating("mean", x);
  Tensor y = Tensor::empty(Shape{}, x.dtype());
  const std::int64_t n = x.numel();
  dispatch_float("mean", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // 0 / 0 = NaN for an empty tensor, as PyTorch.
    *y.data<T>() = static_cast<T>(row_sum(x.data<T>(), n) / static_cast<double>(n));
    return 0;
  });
  if (needs_record({&x})) {
    // d mean(x) = g / n broadcast to x's shape
    record("mean", y, {&x}, [n](const Tensor& g, GradSlots& dx) {
      dx[0] = broadcast_to(mul(g, 1.0 / static_cast<double>(n)), dx.shape(0));
    });
  }
  return y;
}

Tensor mean(const Tensor& x, const std::vector<int>& dims, bool keepdim) {
  Tensor y = sum_impl("mean", x, dims, keepdim, true);
  if (needs_record({&x})) {
    const DimMask m = dims_mask("mean", x.shape(), dims);
    const double n = static_cast<double>(reduced_count(x.shape(), m));
    // d mean(x, dims) = g / n broadcast back over the reduced dims (n = reduced count)
    record("mean", y, {&x}, [m, n](const Tensor& g, GradSlots& dx) {
      dx[0] = broadcast_to(grad_keep(mul(g, 1.0 / n), dx.shape(0), m), dx.shape(0));
    });
  }
  return y;
}

Tensor max(const Tensor& x) {
  detail::check_floating("max", x);
  const std::int64_t n = x.numel();
  if (n == 0) {
    throw ShapeError(fmt::format("max: the tensor {} is empty; the max of an empty set is undefined", x.shape().str()));
  }
  Tensor y = Tensor::empty(Shape{}, x.dtype());
  std::int64_t at = 0;
  dispatch_float("max", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* p = x.data<T>();
    at = row_argmax(p, n);
    *y.data<T>() = p[at];
    return 0;
  });
  if (needs_record({&x})) {
    // d max(x) = g at the first maximum, 0 elsewhere
    record("max", y, {&x}, [at](const Tensor& g, GradSlots& dx) {
      Tensor onehot = zeros(dx.shape(0), g.dtype());
      dispatch_float("max", g.dtype(), [&](auto tag) {
        onehot.data<decltype(tag)>()[at] = 1;
        return 0;
      });
      dx[0] = mul(g, onehot);
    });
  }
  return y;
}

Tensor max(const Tensor& x, int dim, bool keepdim) {
  detail::check_floating("max", x);
  const bool rec = needs_record({&x});
  MaxAlong r = max_along("max", x, dim, true, rec);
  Tensor y = keepdim ? r.val : detail::alias(r.val, out_shape(x.shape(), r.mask, false));
  if (rec) {
    // d max(x, dim) = g at the first maximum along dim, 0 elsewhere
    record("max", y, {&x}, [idx = r.idx, m = r.mask, p = r.plan](const Tensor& g, GradSlots& dx) {
      Tensor onehot = zeros(dx.shape(0), g.dtype());
      dispatch_float("max", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* h = onehot.data<T>();
        const std::int64_t* k = idx.data<std::int64_t>();
        for (std::int64_t o = 0; o < p.outer; ++o) {
          for (std::int64_t i = 0; i < p.inner; ++i) h[(o * p.len + k[o * p.inner + i]) * p.inner + i] = 1;
        }
        return 0;
      });
      dx[0] = mul(grad_keep(g, dx.shape(0), m), onehot);
    });
  }
  return y;
}

Tensor argmax(const Tensor& x, int dim, bool keepdim) {
  detail::check_defined("argmax", x);
  MaxAlong r = max_along("argmax", x, dim, false, true);
  return keepdim ? r.idx : detail::alias(r.idx, out_shape(x.shape(), r.mask, false));
}

Tensor logsumexp(const Tensor& x, const std::vector<int>& dims, bool keepdim) {
  detail::check_floating("logsumexp", x);
  const DimMask m = dims_mask("logsumexp", x.shape(), dims);
  Tensor y = reduce_blocks("logsumexp", x, m, keepdim,
                           [](const auto* in, auto* out, const Plan& p, bool) { logsumexp_kernel(in, out, p); });
  if (needs_record({&x})) {
    // d logsumexp(x) = g * softmax(x) = g * exp(x - y)
    record("logsumexp", y, {&x}, [sx = save(x, 0), sy = save_output(y), m](const Tensor& g, GradSlots& dx) {
      const Tensor& x = sx.get();
      const Tensor& y = sy.get();
      const Shape& xs = dx.shape(0);
      const Tensor yk = grad_keep(y, xs, m);
      if (is_grad_enabled()) {
        // create_graph: softmax recomputed by recorded ops from x and the re-attached y,
        // so its own dependence on x (d softmax = softmax (dx - <softmax, dx>)) is kept.
        dx[0] = mul(grad_keep(g, xs, m), exp(sub(x, yk)));
        return;
      }
      // softmax = exp(x - y): the broadcast difference, then exp in place.
      Tensor softmax = Tensor::empty(xs, x.dtype());
      dispatch_float("logsumexp", x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        detail::binary_kernel<T>(x, yk, softmax, [](const auto& a, const auto& b) { return a - b; });
        exp_inplace(softmax.data<T>(), softmax.numel());
        return 0;
      });
      dx[0] = mul(grad_keep(g, xs, m), softmax);
    });
  }
  return y;
}

}  // namespace xg
