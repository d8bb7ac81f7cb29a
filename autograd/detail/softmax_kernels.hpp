#pragma once
// Private: the softmax row kernels, one copy each. softmax / log_softmax and the
// class-index losses use the first group (row_max, exp_sum, exp_shift, ...), the attention
// ops the masked row softmax below them. Plain loops over raw pointers, one row at a time
// while it sits in L1, with exp on xsimd batches: GCC does not vectorise std::exp without
// -fno-math-errno, and an xtensor expression per 100-element row costs more than the row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(XTENSOR_USE_XSIMD)
#include <xsimd/xsimd.hpp>
#endif

namespace xg::detail {

// ---------------------------------------------------------------------------
// Row kernels of softmax, log_softmax and the losses
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

// ---------------------------------------------------------------------------
// The masked row softmax of the attention ops
// ---------------------------------------------------------------------------

// z[j] = exp(z[j] - m) in place; returns the sum. exp_sum's overlapping last batch would
// read values already overwritten in place, so this one ends with a scalar tail.
template <class T>
T exp_sub_sum(T* z, std::int64_t n, T m) {
  T s = 0;
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using Batch = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(Batch::size);
  if (n >= W) {
    const Batch mb(m);
    Batch acc(T(0));
    for (; i + W <= n; i += W) {
      const Batch v = xsimd::exp(Batch::load_unaligned(z + i) - mb);
      v.store_unaligned(z + i);
      acc += v;
    }
    s = xsimd::hadd(acc);
  }
#endif
  for (; i < n; ++i) {
    z[i] = std::exp(z[i] - m);
    s += z[i];
  }
  return s;
}

// What masks one row of scores: a keep flag per key from the batch entry's key mask
// and/or from the attention mask's row, and an additive attention-mask row.
template <class T>
struct RowMask {
  const std::uint8_t* keep1 = nullptr;
  const std::uint8_t* keep2 = nullptr;
  const T* add = nullptr;
};

// z (one row of S scores) -> softmax(z + add) over the kept positions, exactly 0 at the
// others. Returns false when nothing is left to normalise over (every position masked
// or -inf, or S == 0); a NaN anywhere gives a NaN row, like softmax.
template <class T>
bool softmax_row(T* z, std::int64_t S, const RowMask<T>& mk) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  if (mk.add) {
    for (std::int64_t j = 0; j < S; ++j) z[j] += mk.add[j];
  }
  const bool masked = mk.keep1 || mk.keep2;
  auto dropped = [&](std::int64_t j) { return (mk.keep1 && !mk.keep1[j]) || (mk.keep2 && !mk.keep2[j]); };
  if (masked) {
    for (std::int64_t j = 0; j < S; ++j) {
      if (dropped(j)) z[j] = -kInf;
    }
  }
  T m = -kInf;
  bool nan = false;
  for (std::int64_t j = 0; j < S; ++j) {
    m = std::max(m, z[j]);
    nan |= std::isnan(z[j]);
  }
  if (nan) {
    std::fill(z, z + S, std::numeric_limits<T>::quiet_NaN());
    return true;
  }
  if (m == -kInf) return false;
  const T inv = T(1) / exp_sub_sum(z, S, m);
  for (std::int64_t j = 0; j < S; ++j) z[j] *= inv;
  if (masked) {  // exp(-inf) is 0 already; this makes "exactly 0" independent of libm
    for (std::int64_t j = 0; j < S; ++j) {
      if (dropped(j)) z[j] = T(0);
    }
  }
  return true;
}

// d = scale * y * (g - sum(g * y)) for one row.
template <class T>
void softmax_row_backward(const T* y, const T* g, T* d, std::int64_t S, T scale) {
  T s = 0;
  for (std::int64_t j = 0; j < S; ++j) s += g[j] * y[j];
  for (std::int64_t j = 0; j < S; ++j) d[j] = scale * y[j] * (g[j] - s);
}

}  // namespace xg::detail
