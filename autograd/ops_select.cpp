// Elementwise max/min, comparisons, and selection (where, masked_fill).
#include <cstdint>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include <xtensor/xmath.hpp>
#include <xtensor/xoperation.hpp>

#include "detail/kernels.hpp"
#include "detail/mask_values.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_any;
using detail::dispatch_float;

namespace {

template <class F>
Tensor binary_float(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_same_float(op, a, b);
  const Shape s = broadcast_shapes(op, a.shape(), b.shape());
  Tensor y = Tensor::empty(s, a.dtype());
  dispatch_float(op, a.dtype(), [&](auto tag) {
    detail::binary_kernel<decltype(tag)>(a, b, y, f);
    return 0;
  });
  return y;
}

// Share of the gradient that p gets in max(p, q): 1 where p wins, 1/2 on a tie, 0 where
// it loses. min(p, q) is max with the order reversed, so it passes (q, p). Mirrors
// PyTorch's rule (NaN compares false both ways, so both sides get the gradient).
Tensor win_share(const Tensor& p, const Tensor& q) {
  return binary_float("maximum", p, q, [](const auto& xp, const auto& xq) {
    using T = typename std::decay_t<decltype(xp)>::value_type;
    return xt::where(xp < xq, T(0), xt::where(xt::equal(xp, xq), T(0.5), T(1)));
  });
}

// Calls f(k, ia, ib) for every element k of the broadcast shape s (row-major), with the
// offsets ia, ib of the elements of a (shape as) and b (shape bs) that it reads.
template <class F>
void for_each_broadcast(const Shape& s, const Shape& as, const Shape& bs, F&& f) {
  const int n = s.size();
  std::int64_t sa[Shape::kMaxDims] = {}, sb[Shape::kMaxDims] = {}, idx[Shape::kMaxDims] = {};
  std::int64_t st = 1;
  for (int i = as.size() - 1, d = n - 1; i >= 0; --i, --d) {
    sa[d] = as[i] == 1 ? 0 : st;
    st *= as[i];
  }
  st = 1;
  for (int i = bs.size() - 1, d = n - 1; i >= 0; --i, --d) {
    sb[d] = bs[i] == 1 ? 0 : st;
    st *= bs[i];
  }
  // The last dim runs in a plain loop; the odometer only moves between rows.
  const std::int64_t total = s.numel();
  const std::int64_t inner = n > 0 ? s[n - 1] : 1;
  if (total == 0) return;
  const std::int64_t la = n > 0 ? sa[n - 1] : 0, lb = n > 0 ? sb[n - 1] : 0;
  std::int64_t ia = 0, ib = 0;
  for (std::int64_t k = 0; k < total; k += inner) {
    for (std::int64_t j = 0; j < inner; ++j) f(k + j, ia + j * la, ib + j * lb);
    for (int d = n - 2; d >= 0; --d) {
      if (++idx[d] < s[d]) {
        ia += sa[d];
        ib += sb[d];
        break;
      }
      ia -= sa[d] * (s[d] - 1);
      ib -= sb[d] * (s[d] - 1);
      idx[d] = 0;
    }
  }
}

// a OP b elementwise with broadcasting, as a bool tensor; both inputs of one dtype
// (int64 allowed: eq(argmax(logits, 1), target) is how accuracy is computed; bool too).
template <class F>
Tensor compare(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_defined(op, a);
  detail::check_defined(op, b);
  if (a.dtype() != b.dtype()) {
    throw DtypeError(fmt::format("{}: dtypes differ: {} {} and {} {} (convert one with .to())", op,
                                 dtype_name(a.dtype()), a.shape().str(), dtype_name(b.dtype()), b.shape().str()));
  }
  const Shape s = broadcast_shapes(op, a.shape(), b.shape());
  Tensor y = Tensor::empty(s, Dtype::b8);
  dispatch_any(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = std::as_const(a).data<T>();
    const T* pb = std::as_const(b).data<T>();
    bool* o = y.data<bool>();
    if (a.shape() == b.shape()) {
      const std::int64_t n = y.numel();
      for (std::int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    } else {
      for_each_broadcast(s, a.shape(), b.shape(),
                         [&](std::int64_t k, std::int64_t ia, std::int64_t ib) { o[k] = f(pa[ia], pb[ib]); });
    }
    return 0;
  });
  return y;
}

// a OP s for a scalar s, as a bool tensor. Floating tensors compare in their own
// precision (s rounded to float32 for a float32 tensor, as PyTorch); int64 and bool
// tensors compare as double so that gt(ids, 0.5) means what it says.
template <class F>
Tensor compare_scalar(const char* op, const Tensor& a, double s, F&& f) {
  detail::check_defined(op, a);
  Tensor y = Tensor::empty(a.shape(), Dtype::b8);
  dispatch_any(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = std::conditional_t<std::is_integral_v<T>, double, T>;
    const T* x = std::as_const(a).data<T>();
    bool* o = y.data<bool>();
    const C c = static_cast<C>(s);
    const std::int64_t n = a.numel();
    for (std::int64_t i = 0; i < n; ++i) o[i] = f(static_cast<C>(x[i]), c);
    return 0;
  });
  return y;
}

// Truth of one element of any dtype: nonzero, NaN included (bool(NaN) is true in PyTorch).
template <class T>
bool truth(T v) {
  return static_cast<bool>(v);
}

// a OP b on the truth values of a and b (any dtypes, broadcast), as a bool tensor.
template <class F>
Tensor logical(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_defined(op, a);
  detail::check_defined(op, b);
  const Shape s = broadcast_shapes(op, a.shape(), b.shape());
  Tensor y = Tensor::empty(s, Dtype::b8);
  dispatch_any(a.dtype(), [&](auto atag) {
    using A = decltype(atag);
    dispatch_any(b.dtype(), [&](auto btag) {
      using B = decltype(btag);
      const A* pa = std::as_const(a).data<A>();
      const B* pb = std::as_const(b).data<B>();
      bool* o = y.data<bool>();
      for_each_broadcast(s, a.shape(), b.shape(), [&](std::int64_t k, std::int64_t ia, std::int64_t ib) {
        o[k] = f(truth(pa[ia]), truth(pb[ib]));
      });
      return 0;
    });
    return 0;
  });
  return y;
}

}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) {
  // A NaN on either side wins (PyTorch propagates NaN through maximum).
  Tensor y = binary_float("maximum", a, b, [](const auto& xa, const auto& xb) {
    return xt::where(xa >= xb || xt::isnan(xa), xa, xb);
  });
  if (needs_record({&a, &b})) {
    // d max(a, b) = g * [a > b], g * [b > a]; a tie splits g evenly
    record("maximum", y, {&a, &b}, [a = save(a, 0), b = save(b, 1)](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(mul(g, win_share(detail::mask_values(a), detail::mask_values(b))), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(mul(g, win_share(detail::mask_values(b), detail::mask_values(a))), dx.shape(1));
    });
  }
  return y;
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  Tensor y = binary_float("minimum", a, b, [](const auto& xa, const auto& xb) {
    return xt::where(xa <= xb || xt::isnan(xa), xa, xb);
  });
  if (needs_record({&a, &b})) {
    // d min(a, b) = g * [a < b], g * [b < a]; a tie splits g evenly
    record("minimum", y, {&a, &b}, [a = save(a, 0), b = save(b, 1)](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(mul(g, win_share(detail::mask_values(b), detail::mask_values(a))), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(mul(g, win_share(detail::mask_values(a), detail::mask_values(b))), dx.shape(1));
    });
  }
  return y;
}

// Comparisons record nothing: their output is piecewise constant (zero gradient).
Tensor eq(const Tensor& a, const Tensor& b) {
  return compare("eq", a, b, [](auto x, auto y) { return x == y; });
}

Tensor ne(const Tensor& a, const Tensor& b) {
  return compare("ne", a, b, [](auto x, auto y) { return x != y; });
}

Tensor gt(const Tensor& a, const Tensor& b) {
  return compare("gt", a, b, [](auto x, auto y) { return x > y; });
}

Tensor lt(const Tensor& a, const Tensor& b) {
  return compare("lt", a, b, [](auto x, auto y) { return x < y; });
}

Tensor ge(const Tensor& a, const Tensor& b) {
  return compare("ge", a, b, [](auto x, auto y) { return x >= y; });
}

Tensor le(const Tensor& a, const Tensor& b) {
  return compare("le", a, b, [](auto x, auto y) { return x <= y; });
}

Tensor eq(const Tensor& a, double b) {
  return compare_scalar("eq", a, b, [](auto x, auto c) { return x == c; });
}

Tensor ne(const Tensor& a, double b) {
  return compare_scalar("ne", a, b, [](auto x, auto c) { return x != c; });
}

Tensor gt(const Tensor& a, double b) {
  return compare_scalar("gt", a, b, [](auto x, auto c) { return x > c; });
}

Tensor lt(const Tensor& a, double b) {
  return compare_scalar("lt", a, b, [](auto x, auto c) { return x < c; });
}

Tensor ge(const Tensor& a, double b) {
  return compare_scalar("ge", a, b, [](auto x, auto c) { return x >= c; });
}

Tensor le(const Tensor& a, double b) {
  return compare_scalar("le", a, b, [](auto x, auto c) { return x <= c; });
}

Tensor logical_and(const Tensor& a, const Tensor& b) {
  return logical("logical_and", a, b, [](bool x, bool y) { return x && y; });
}

Tensor logical_or(const Tensor& a, const Tensor& b) {
  return logical("logical_or", a, b, [](bool x, bool y) { return x || y; });
}

Tensor logical_not(const Tensor& x) {
  detail::check_defined("logical_not", x);
  Tensor y = Tensor::empty(x.shape(), Dtype::b8);
  dispatch_any(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* p = std::as_const(x).data<T>();
    bool* o = y.data<bool>();
    const std::int64_t n = x.numel();
    for (std::int64_t i = 0; i < n; ++i) o[i] = !truth(p[i]);
    return 0;
  });
  return y;
}

// Conditions and masks test !(c == 0), not c != 0: xsimd 8's vector != is the ordered
// compare (NaN != 0 is false), so a NaN condition would be true in the scalar tail and
// false in the vector body. NaN counts as true (nonzero), like bool(NaN) in PyTorch.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  detail::check_defined("where", cond);
  detail::check_same_float("where", a, b);
  Shape s;
  try {
    s = broadcast_shapes("where", broadcast_shapes("where", cond.shape(), a.shape()), b.shape());
  } catch (const ShapeError&) {
    throw ShapeError(fmt::format("where: cond {}, a {} and b {} do not broadcast together", cond.shape().str(),
                                 a.shape().str(), b.shape().str()));
  }
  Tensor y = Tensor::empty(s, a.dtype());
  dispatch_float("where", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (cond.dtype() == Dtype::b8 && cond.shape() == s && a.shape() == s && b.shape() == s) {
      // xsimd mixes byte conditions with float values slowly (3.7x a float mask): a plain loop.
      const auto* c = reinterpret_cast<const std::uint8_t*>(std::as_const(cond).data<bool>());
      const T* pa = std::as_const(a).data<T>();
      const T* pb = std::as_const(b).data<T>();
      T* o = y.data<T>();
      for (std::int64_t i = 0, n = y.numel(); i < n; ++i) {
        // Both values loaded and the flag widened to T first: a compare and blend the
        // compiler vectorises, not a branch on the mask (a random mask mispredicts half
        // the time: 17x slower).
        const T va = pa[i], vb = pb[i];
        o[i] = static_cast<T>(c[i]) != T(0) ? va : vb;
      }
      return 0;
    }
    detail::dispatch_mask(cond.dtype(), [&](auto ctag) {
      using C = decltype(ctag);
      if (cond.shape() == s && a.shape() == s && b.shape() == s) {
        auto o = detail::flat<T>(y);
        xt::noalias(o) = xt::where(!xt::equal(detail::flat<C>(cond), C(0)), detail::flat<T>(a), detail::flat<T>(b));
      } else {
        auto o = detail::nd<T>(y);
        xt::noalias(o) = xt::where(!xt::equal(detail::nd<C>(cond), C(0)), detail::nd<T>(a), detail::nd<T>(b));
      }
      return 0;
    });
    return 0;
  });
  if (needs_record({&a, &b})) {
    // d where(c, a, b) = where(c, g, 0), where(c, 0, g)   (cond gets no gradient)
    record("where", y, {&a, &b}, [sc = save(cond, 2)](const Tensor& g, GradSlots& dx) {
      // cond is not an input of the node but its values route g: saved, numbered after
      // the node's inputs a (0) and b (1).
      const Tensor& cond = detail::mask_values(sc);
      const Tensor zero = scalar(0.0, g.dtype());
      if (dx.needs(0)) dx[0] = sum_to(where(cond, g, zero), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(where(cond, zero, g), dx.shape(1));
    });
  }
  return y;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  detail::check_floating("masked_fill", x);
  detail::check_defined("masked_fill", mask);
  if (broadcast_shapes("masked_fill", x.shape(), mask.shape()) != x.shape()) {
    throw ShapeError(fmt::format("masked_fill: mask {} does not broadcast to x's shape {}", mask.shape().str(),
                                 x.shape().str()));
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float("masked_fill", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T v = static_cast<T>(value);
    if (mask.dtype() == Dtype::b8 && mask.shape() == x.shape()) {
      const auto* m = reinterpret_cast<const std::uint8_t*>(std::as_const(mask).data<bool>());
      const T* px = std::as_const(x).data<T>();
      T* o = y.data<T>();
      for (std::int64_t i = 0, n = y.numel(); i < n; ++i) {
        const T vx = px[i];
        o[i] = static_cast<T>(m[i]) != T(0) ? v : vx;
      }
      return 0;
    }
    detail::dispatch_mask(mask.dtype(), [&](auto mtag) {
      using M = decltype(mtag);
      if (mask.shape() == x.shape()) {
        auto o = detail::flat<T>(y);
        xt::noalias(o) = xt::where(!xt::equal(detail::flat<M>(mask), M(0)), v, detail::flat<T>(x));
      } else {
        auto o = detail::nd<T>(y);
        xt::noalias(o) = xt::where(!xt::equal(detail::nd<M>(mask), M(0)), v, detail::nd<T>(x));
      }
      return 0;
    });
    return 0;
  });
  if (needs_record({&x})) {
    // d masked_fill(x, m, v) = g with zeros where m
    record("masked_fill", y, {&x}, [mask = save(mask, 1)](const Tensor& g, GradSlots& dx) {
      dx[0] = masked_fill(g, detail::mask_values(mask), 0.0);
    });
  }
  return y;
}

}  // namespace xg
