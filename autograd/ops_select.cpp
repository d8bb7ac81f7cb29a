// Elementwise max/min, comparisons, and selection (where, masked_fill).
#include <cstdint>

#include <fmt/format.h>

#include <xtensor/xmath.hpp>
#include <xtensor/xoperation.hpp>

#include "detail/kernels.hpp"
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

// a OP b elementwise with broadcasting, as 1/0 in a's dtype; both inputs of one dtype
// (int64 allowed: eq(argmax(logits, 1), target) is how accuracy is computed).
template <class F>
Tensor compare(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_defined(op, a);
  detail::check_defined(op, b);
  if (a.dtype() != b.dtype()) {
    throw DtypeError(fmt::format("{}: dtypes differ: {} {} and {} {} (convert one with .to())", op,
                                 dtype_name(a.dtype()), a.shape().str(), dtype_name(b.dtype()), b.shape().str()));
  }
  const Shape s = broadcast_shapes(op, a.shape(), b.shape());
  Tensor y = Tensor::empty(s, a.dtype());
  dispatch_any(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::binary_kernel<T>(a, b, y, [&f](const auto& xa, const auto& xb) {
      return xt::where(f(xa, xb), T(1), T(0));
    });
    return 0;
  });
  return y;
}

// a OP s for a scalar s. Floating tensors compare in their own precision (s rounded to
// float32 for a float32 tensor, as PyTorch); int64 tensors compare as double so that
// gt(ids, 0.5) means what it says.
template <class F>
Tensor compare_scalar(const char* op, const Tensor& a, double s, F&& f) {
  detail::check_defined(op, a);
  Tensor y = Tensor::empty(a.shape(), a.dtype());
  dispatch_any(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = std::conditional_t<std::is_integral_v<T>, double, T>;
    const T* x = a.data<T>();
    T* o = y.data<T>();
    const C c = static_cast<C>(s);
    const std::int64_t n = a.numel();
    for (std::int64_t i = 0; i < n; ++i) o[i] = f(static_cast<C>(x[i]), c) ? T(1) : T(0);
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
      if (dx.needs(0)) dx[0] = sum_to(mul(g, win_share(a.get(), b.get())), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(mul(g, win_share(b.get(), a.get())), dx.shape(1));
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
      if (dx.needs(0)) dx[0] = sum_to(mul(g, win_share(b.get(), a.get())), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(mul(g, win_share(a.get(), b.get())), dx.shape(1));
    });
  }
  return y;
}

// Comparisons record nothing: their output is piecewise constant (zero gradient).
Tensor eq(const Tensor& a, const Tensor& b) {
  return compare("eq", a, b, [](const auto& xa, const auto& xb) { return xt::equal(xa, xb); });
}

Tensor gt(const Tensor& a, const Tensor& b) {
  return compare("gt", a, b, [](const auto& xa, const auto& xb) { return xa > xb; });
}

Tensor lt(const Tensor& a, const Tensor& b) {
  return compare("lt", a, b, [](const auto& xa, const auto& xb) { return xa < xb; });
}

Tensor gt(const Tensor& a, double b) {
  return compare_scalar("gt", a, b, [](auto x, auto c) { return x > c; });
}

Tensor lt(const Tensor& a, double b) {
  return compare_scalar("lt", a, b, [](auto x, auto c) { return x < c; });
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
    dispatch_any(cond.dtype(), [&](auto ctag) {
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
      const Tensor& cond = sc.get();
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
    dispatch_any(mask.dtype(), [&](auto mtag) {
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
      dx[0] = masked_fill(g, mask.get(), 0.0);
    });
  }
  return y;
}

}  // namespace xg
