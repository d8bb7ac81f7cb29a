// Elementwise functions of one tensor. The kernels are xtensor expressions over the flat
// storage, so xsimd vectorises exp/log/tanh/sqrt/pow for float32 and float64.

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include <xtensor/xbuilder.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xoperation.hpp>

#include "detail/kernels.hpp"
#include "detail/lanes.hpp"
#include "detail/mask_values.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::unary_new;

namespace {

// Backward helpers: constant tensors (1/0 masks, signs) that multiply the incoming
// gradient. They depend on x only, so they are plain kernels, not recorded ops.

// 1 where lo <= x <= hi, else 0 (NaN gets 0).
Tensor range_mask(const Tensor& x, double lo, double hi) {
  return unary_new("clamp", x, [lo, hi](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return xt::where(v >= static_cast<T>(lo) && v <= static_cast<T>(hi), T(1), T(0));
  });
}

// -1, 0 or +1 (NaN stays NaN, like PyTorch's sgn).
Tensor sign_of(const Tensor& x) {
  return unary_new("abs", x, [](const auto& v) { return xt::sign(v); });
}

Tensor clamp_impl(const char* op, const Tensor& x, double lo, double hi) {
  detail::check_floating(op, x);
  if (std::isnan(lo) || std::isnan(hi)) {
    throw Error(fmt::format("{}: bound is NaN (min {}, max {}) for input {}", op, lo, hi, x.shape().str()));
  }
  // PyTorch computes min(max(x, lo), hi), so lo > hi gives hi everywhere; folding lo
  // down to hi gives the same values from the two selects below.
  const double vlo = std::min(lo, hi);
  // Comparisons (not std::max) so that NaN inputs stay NaN, as in PyTorch.
  // (The bounds are passed as prvalues: xtensor keeps lvalue scalars by reference, and
  // the expression outlives this lambda.)
  Tensor y = unary_new(op, x, [vlo, hi](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return xt::where(v > static_cast<T>(hi), static_cast<T>(hi), xt::where(v < static_cast<T>(vlo), static_cast<T>(vlo), v));
  });
  if (needs_record({&x})) {
    // d clamp(x, lo, hi) = g * [lo <= x <= hi]
    // NOTE kink: at x == lo or x == hi the gradient passes (PyTorch's choice); with
    // lo > hi no x is in range, so no gradient flows (again as PyTorch).
    record(op, y, {&x}, [x = save(x, 0), lo, hi](const Tensor& g, GradSlots& dx) {
      dx[0] = mul(g, range_mask(detail::mask_values(x), lo, hi));
    });
  }
  return y;
}

}  // namespace

Tensor pow(const Tensor& x, double exponent) {
  const double e = exponent;
  // The exponents PyTorch special-cases are computed exactly by multiplication, division
  // and sqrt (x^3 of -2 is -8, not exp(3 log 2) = 7.999999999999998) and 10x cheaper.
  Tensor y;
  if (e == 2.0) {
    y = unary_new("pow", x, [](const auto& v) { return v * v; });
  } else if (e == 3.0) {
    y = unary_new("pow", x, [](const auto& v) { return v * v * v; });
  } else if (e == 1.0) {
    y = unary_new("pow", x, [](const auto& v) { return v; });
  } else if (e == 0.0) {
    // x^0 = 1 for every x, NaN included (IEEE pow, as PyTorch).
    y = unary_new("pow", x, [](const auto& v) { return xt::ones_like(v); });
  } else if (e == 0.5) {
    y = unary_new("pow", x, [](const auto& v) { return xt::sqrt(v); });
  } else if (e == -0.5) {
    y = unary_new("pow", x, [](const auto& v) {
      using T = typename std::decay_t<decltype(v)>::value_type;
      return T(1) / xt::sqrt(v);
    });
  } else if (e == -1.0) {
    y = unary_new("pow", x, [](const auto& v) {
      using T = typename std::decay_t<decltype(v)>::value_type;
      return T(1) / v;
    });
  } else if (e == -2.0) {
    y = unary_new("pow", x, [](const auto& v) {
      using T = typename std::decay_t<decltype(v)>::value_type;
      return T(1) / (v * v);
    });
  } else {
    // xsimd's pow maps 0^e to 0 for every e (0^-1.5 would be 0, not inf), so zero bases
    // take std::pow's value. (Exponents are prvalues: xtensor keeps lvalue scalars by
    // reference, and the expression outlives this lambda.)
    y = unary_new("pow", x, [e](const auto& v) {
      using T = typename std::decay_t<decltype(v)>::value_type;
      return xt::where(xt::equal(v, T(0)), std::pow(T(0), static_cast<T>(e)), xt::pow(v, static_cast<T>(e)));
    });
  }
  if (needs_record({&x})) {
    // d x^e = g * e * x^(e-1)   (e == 0: zero, even at x == 0 where x^-1 is inf)
    record("pow", y, {&x}, [x = save(x, 0), e](const Tensor& g, GradSlots& dx) {
      if (e == 0.0) {
        // g has x's shape and dtype; x's values are not needed. Under create_graph a
        // recorded fill keeps the result's (zero) dependence on g, which fresh zeros lack.
        dx[0] = is_grad_enabled() ? masked_fill(g, from_vector({true}, Shape{}), 0.0) : zeros_like(g);
      } else {
        dx[0] = mul(g, mul(pow(x.get(), e - 1.0), e));
      }
    });
  }
  return y;
}

Tensor sqrt(const Tensor& x) {
  Tensor y = unary_new("sqrt", x, [](const auto& v) { return xt::sqrt(v); });
  if (needs_record({&x})) {
    // d sqrt(x) = g / (2 y)   (inf at x == 0, NaN below: as PyTorch)
    record("sqrt", y, {&x}, [y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: recorded, d/dx of it is -g / (4 y^3)
        dx[0] = div(mul(g, 0.5), y.get());
        return;
      }
      dx[0] = detail::zip_new("sqrt", g, y.get(), [](auto gi, auto yi) { return gi * decltype(gi)(0.5) / yi; });
    });
  }
  return y;
}

Tensor exp(const Tensor& x) {
  Tensor y = unary_new("exp", x, [](const auto& v) { return xt::exp(v); });
  if (needs_record({&x})) {
    // d exp(x) = g * y
    record("exp", y, {&x}, [y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: recorded, so d/dx of it is g * y again
        dx[0] = mul(g, y.get());
        return;
      }
      dx[0] = detail::zip_new("exp", g, y.get(), [](auto gi, auto yi) { return gi * yi; });
    });
  }
  return y;
}

Tensor log(const Tensor& x) {
  Tensor y = unary_new("log", x, [](const auto& v) { return xt::log(v); });
  if (needs_record({&x})) {
    // d log(x) = g / x
    record("log", y, {&x}, [x = save(x, 0)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: recorded, d/dx of it is -g / x^2
        dx[0] = div(g, x.get());
        return;
      }
      dx[0] = detail::zip_new("log", g, x.get(), [](auto gi, auto xi) { return gi / xi; });
    });
  }
  return y;
}

Tensor abs(const Tensor& x) {
  Tensor y = unary_new("abs", x, [](const auto& v) { return xt::abs(v); });
  if (needs_record({&x})) {
    // d |x| = g * sign(x)
    // NOTE kink: abs'(0) = 0 (the subgradient PyTorch picks).
    record("abs", y, {&x}, [x = save(x, 0)](const Tensor& g, GradSlots& dx) { dx[0] = mul(g, sign_of(detail::mask_values(x))); });
  }
  return y;
}

Tensor tanh(const Tensor& x) {
  detail::check_floating("tanh", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float("tanh", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    // xtensor's own split (xsimd batches from the aligned start, std::tanh for the tail),
    // without its per-call expression setup, most of the cost of a small tensor.
    detail::for_lanes<T>(x.numel(), [&]<class L>(std::int64_t j) { L::store(yp + j, L::tanh(L::load(xp + j))); });
    return 0;
  });
  if (needs_record({&x})) {
    // d tanh(x) = g * (1 - y^2)
    record("tanh", y, {&x}, [y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: recorded, d/dx of it is -2 g y (1 - y^2)
        const Tensor& yv = y.get();
        dx[0] = mul(g, rsub(1.0, mul(yv, yv)));
        return;
      }
      dx[0] = detail::zip_new("tanh", g, y.get(), [](auto gi, auto yi) { return gi * (decltype(gi)(1) - yi * yi); });
    });
  }
  return y;
}

Tensor sigmoid(const Tensor& x) {
  detail::check_floating("sigmoid", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float("sigmoid", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    // One pass, exp once per element on xsimd batches; the stable formula is in lanes.hpp.
    detail::for_lanes<T>(x.numel(), [&]<class L>(std::int64_t j) { L::store(yp + j, L::sigmoid(L::load(xp + j))); });
    return 0;
  });
  if (needs_record({&x})) {
    // d sigmoid(x) = g * y * (1 - y)
    record("sigmoid", y, {&x}, [y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: recorded, d/dx of it is g y (1 - y) (1 - 2y)
        const Tensor& yv = y.get();
        dx[0] = mul(g, mul(yv, rsub(1.0, yv)));
        return;
      }
      dx[0] = detail::zip_new("sigmoid", g, y.get(), [](auto gi, auto yi) { return gi * yi * (decltype(gi)(1) - yi); });
    });
  }
  return y;
}

Tensor relu(const Tensor& x) {
  // Written as a select, not max(x, 0), so that NaN propagates like PyTorch's relu.
  Tensor y = unary_new("relu", x, [](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return xt::where(v < T(0), T(0), v);
  });
  if (needs_record({&x})) {
    // d relu(x) = g * [y > 0]
    // NOTE kink: relu'(0) = 0, as PyTorch.
    record("relu", y, {&x}, [y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: the mask is a constant, g is routed by a recorded where
        dx[0] = where(gt(detail::mask_values(y), 0.0), g, scalar(0.0, g.dtype()));
        return;
      }
      dx[0] = detail::zip_new("relu", g, y.get(), [](auto gi, auto yi) { return yi > 0 ? gi : decltype(gi)(0); });
    });
  }
  return y;
}

Tensor clamp(const Tensor& x, double lo, double hi) { return clamp_impl("clamp", x, lo, hi); }

Tensor clamp_min(const Tensor& x, double lo) {
  return clamp_impl("clamp_min", x, lo, std::numeric_limits<double>::infinity());
}

Tensor clamp_max(const Tensor& x, double hi) {
  return clamp_impl("clamp_max", x, -std::numeric_limits<double>::infinity(), hi);
}

}  // namespace xg
