// Binary elementwise arithmetic with numpy broadcasting, and the two ops every
// broadcast backward uses: sum_to and broadcast_to.
#include <fmt/format.h>

#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xreducer.hpp>

#include "xgrad/autograd/detail/kernels.hpp"
#include "xgrad/autograd/factory.hpp"
#include "xgrad/autograd/ops.hpp"
#include "xgrad/autograd/tape.hpp"

namespace xg {

using detail::dispatch_float;

namespace {

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_same_float(op, a, b);
  const Shape s = broadcast_shapes(op, a.shape(), b.shape());
  Tensor y = Tensor::empty(s, a.dtype());
  dispatch_float(op, a.dtype(), [&](auto tag) {
    detail::arith_kernel<decltype(tag)>(a, b, y, f);
    return 0;
  });
  return y;
}

template <class F>
Tensor scalar_op(const char* op, const Tensor& x, F&& f) {
  detail::check_floating(op, x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(op, x.dtype(), [&](auto tag) {
    detail::unary_kernel<decltype(tag)>(x, y, f);
    return 0;
  });
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = binary("add", a, b, [](const auto& x, const auto& z) { return x + z; });
  if (needs_record({&a, &b})) {
    // d(a + b) = g, g (summed back over broadcast dims)
    record("add", y, {&a, &b}, [](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(g, dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(g, dx.shape(1));
    });
  }
  return y;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = binary("sub", a, b, [](const auto& x, const auto& z) { return x - z; });
  if (needs_record({&a, &b})) {
    // d(a - b) = g, -g
    record("sub", y, {&a, &b}, [](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(g, dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(neg(g), dx.shape(1));
    });
  }
  return y;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary("mul", a, b, [](const auto& x, const auto& z) { return x * z; });
  if (needs_record({&a, &b})) {
    // d(a * b) = g * b, g * a
    record("mul", y, {&a, &b}, [a, b](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(mul(g, b), a.shape());
      if (dx.needs(1)) dx[1] = sum_to(mul(g, a), b.shape());
    });
  }
  return y;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = binary("div", a, b, [](const auto& x, const auto& z) { return x / z; });
  if (needs_record({&a, &b})) {
    // d(a / b) = g / b, -g * a / b^2 = -g * y / b
    record("div", y, {&a, &b}, [a, b, y = y.detach()](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(div(g, b), a.shape());
      if (dx.needs(1)) dx[1] = sum_to(neg(div(mul(g, y), b)), b.shape());
    });
  }
  return y;
}

Tensor add(const Tensor& a, double b) {
  Tensor y = scalar_op("add", a, [b](const auto& x) { return x + static_cast<typename std::decay_t<decltype(x)>::value_type>(b); });
  if (needs_record({&a})) {
    // d(a + s) = g
    record("add_scalar", y, {&a}, [](const Tensor& g, GradSlots& dx) { dx[0] = g; });
  }
  return y;
}

Tensor sub(const Tensor& a, double b) { return add(a, -b); }

Tensor mul(const Tensor& a, double b) {
  Tensor y = scalar_op("mul", a, [b](const auto& x) { return x * static_cast<typename std::decay_t<decltype(x)>::value_type>(b); });
  if (needs_record({&a})) {
    // d(a * s) = g * s
    record("mul_scalar", y, {&a}, [b](const Tensor& g, GradSlots& dx) { dx[0] = mul(g, b); });
  }
  return y;
}

Tensor div(const Tensor& a, double b) { return mul(a, 1.0 / b); }

Tensor rsub(double a, const Tensor& b) {
  Tensor y = scalar_op("rsub", b, [a](const auto& x) { return static_cast<typename std::decay_t<decltype(x)>::value_type>(a) - x; });
  if (needs_record({&b})) {
    // d(s - b) = -g
    record("rsub_scalar", y, {&b}, [](const Tensor& g, GradSlots& dx) { dx[0] = neg(g); });
  }
  return y;
}

Tensor rdiv(double a, const Tensor& b) {
  Tensor y = scalar_op("rdiv", b, [a](const auto& x) { return static_cast<typename std::decay_t<decltype(x)>::value_type>(a) / x; });
  if (needs_record({&b})) {
    // d(s / b) = -g * y / b
    record("rdiv_scalar", y, {&b}, [b, y = y.detach()](const Tensor& g, GradSlots& dx) {
      dx[0] = neg(div(mul(g, y), b));
    });
  }
  return y;
}

Tensor neg(const Tensor& x) {
  Tensor y = scalar_op("neg", x, [](const auto& v) { return -v; });
  if (needs_record({&x})) {
    // d(-x) = -g
    record("neg", y, {&x}, [](const Tensor& g, GradSlots& dx) { dx[0] = neg(g); });
  }
  return y;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  detail::check_floating("sum_to", x);
  const Shape& xs = x.shape();
  if (xs == shape) return x;
  if (broadcast_shapes("sum_to", xs, shape) != xs) {
    throw ShapeError(fmt::format("sum_to: {} does not broadcast to {}", shape.str(), xs.str()));
  }
  // Reduce the leading extra dims and every dim that is 1 in the target.
  const int lead = xs.size() - shape.size();
  std::vector<std::size_t> axes;
  for (int i = 0; i < xs.size(); ++i) {
    if (i < lead || (shape[i - lead] == 1 && xs[i] != 1)) axes.push_back(static_cast<std::size_t>(i));
  }
  Tensor y = Tensor::empty(shape, x.dtype());
  dispatch_float("sum_to", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto xx = detail::nd<T>(x);
    auto o = detail::flat<T>(y);
    auto r = xt::sum(xx, axes, xt::evaluation_strategy::immediate);
    std::copy(r.begin(), r.end(), o.begin());
    return 0;
  });
  if (needs_record({&x})) {
    // d sum_to(x) = broadcast of g back to x's shape
    record("sum_to", y, {&x}, [xs](const Tensor& g, GradSlots& dx) { dx[0] = broadcast_to(g, xs); });
  }
  return y;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  detail::check_floating("broadcast_to", x);
  if (broadcast_shapes("broadcast_to", x.shape(), shape) != shape) {
    throw ShapeError(fmt::format("broadcast_to: {} does not broadcast to {}", x.shape().str(), shape.str()));
  }
  if (x.shape() == shape) return x;
  Tensor y = Tensor::empty(shape, x.dtype());
  dispatch_float("broadcast_to", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto xx = detail::nd<T>(x);
    auto o = detail::nd<T>(y);
    xt::noalias(o) = xt::broadcast(xx, o.shape());
    return 0;
  });
  if (needs_record({&x})) {
    // d broadcast_to(x) = g summed back to x's shape
    record("broadcast_to", y, {&x}, [xs = x.shape()](const Tensor& g, GradSlots& dx) { dx[0] = sum_to(g, xs); });
  }
  return y;
}

}  // namespace xg
