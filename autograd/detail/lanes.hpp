#pragma once
// Private: one step body for scalars and xsimd batches. Lanes L (Scalar<T> or Simd<T>)
// offer load, store, sigmoid and tanh on L::V, so a kernel written once as
// step.template operator()<L>(j) runs on whole batches for the bulk of a row and on
// scalars for its tail (for_lanes), and both paths compute the same formulas.
#include <cmath>
#include <cstdint>

#if defined(XTENSOR_USE_XSIMD)
#include <xsimd/xsimd.hpp>
#endif

namespace xg::detail {

// NOTE stability: e = exp(-|x|) <= 1 never overflows; σ(x) = 1/(1+e) for x >= 0 and
// e/(1+e) below, so very negative x keep their relative precision (1/(1+exp(-x)) would
// overflow exp and flush to 0). The one sigmoid formula of the library.
template <class T, class V, class Exp, class Abs, class Select>
V stable_sigmoid(const V& x, Exp&& exp, Abs&& abs, Select&& select) {
  const V e = exp(-abs(x));
  const V r = V(T(1)) / (V(T(1)) + e);
  return select(x >= V(T(0)), r, e * r);
}

template <class T>
struct Scalar {
  using V = T;
  static constexpr std::int64_t W = 1;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V sigmoid(V x) {
    return stable_sigmoid<T>(
        x, [](V v) { return std::exp(v); }, [](V v) { return std::fabs(v); },
        [](bool c, V a, V b) { return c ? a : b; });
  }
  static V tanh(V x) { return std::tanh(x); }
};

#if defined(XTENSOR_USE_XSIMD)
template <class T>
struct Simd {
  using V = xsimd::batch<T>;
  static constexpr std::int64_t W = static_cast<std::int64_t>(V::size);
  static V load(const T* p) { return V::load_unaligned(p); }
  static void store(T* p, const V& v) { v.store_unaligned(p); }
  static V sigmoid(const V& x) {
    return stable_sigmoid<T>(
        x, [](const V& v) { return xsimd::exp(v); }, [](const V& v) { return xsimd::abs(v); },
        [](const auto& c, const V& a, const V& b) { return xsimd::select(c, a, b); });
  }
  static V tanh(const V& x) { return xsimd::tanh(x); }
};
#endif

// Runs step.template operator()<Lanes>(j) over j in [0, n): whole batches, then scalars.
template <class T, class Step>
void for_lanes(std::int64_t n, Step&& step) {
  std::int64_t j = 0;
#if defined(XTENSOR_USE_XSIMD)
  for (; j + Simd<T>::W <= n; j += Simd<T>::W) step.template operator()<Simd<T>>(j);
#endif
  for (; j < n; ++j) step.template operator()<Scalar<T>>(j);
}

}  // namespace xg::detail
