// Binary elementwise arithmetic with numpy broadcasting, and the two ops every
// broadcast backward uses: sum_to and broadcast_to.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmath.hpp>

#include "detail/kernels.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::unary_new;

namespace {

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  detail::check_same_float(op, a, b);
  Tensor y = a.shape() == b.shape() ? Tensor::empty(a.shape(), a.dtype())
                                    : Tensor::empty(broadcast_shapes(op, a.shape(), b.shape()), a.dtype());
  dispatch_float(op, a.dtype(), [&](auto tag) {
    detail::arith_kernel<decltype(tag)>(a, b, y, f);
    return 0;
  });
  return y;
}

// g summed back to an input's shape; g itself when the shapes match (no call, no check:
// the engine compares the result with the input's shape anyway).
Tensor grad_to(const Tensor& g, const Shape& shape) { return g.shape() == shape ? g : sum_to(g, shape); }

// d(a * b)/da = g * b, summed back to a's shape. A plain backward (nothing recorded) of
// same-shaped operands is one pass into a new tensor: the recorded op's checks,
// broadcasting and sum_to would cost more than the product of a small tensor.
Tensor grad_product(const Tensor& g, const Tensor& v, const Shape& shape) {
  if (!is_grad_enabled() && g.shape() == shape && v.shape() == shape && g.dtype() == v.dtype()) {
    return detail::zip_new("mul", g, v, [](auto gi, auto vi) { return gi * vi; });
  }
  return sum_to(mul(g, v), shape);
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = binary("add", a, b, [](const auto& x, const auto& z) { return x + z; });
  if (needs_record({&a, &b})) {
    // d(a + b) = g, g (summed back over broadcast dims)
    record("add", y, {&a, &b}, [](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = grad_to(g, dx.shape(0));
      if (dx.needs(1)) dx[1] = grad_to(g, dx.shape(1));
    });
  }
  return y;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = binary("sub", a, b, [](const auto& x, const auto& z) { return x - z; });
  if (needs_record({&a, &b})) {
    // d(a - b) = g, -g
    record("sub", y, {&a, &b}, [](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = grad_to(g, dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(neg(g), dx.shape(1));
    });
  }
  return y;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary("mul", a, b, [](const auto& x, const auto& z) { return x * z; });
  if (needs_record({&a, &b})) {
    // d(a * b) = g * b, g * a
    record("mul", y, {&a, &b}, [a = save(a, 0), b = save(b, 1)](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = grad_product(g, b.get(), dx.shape(0));
      if (dx.needs(1)) dx[1] = grad_product(g, a.get(), dx.shape(1));
    });
  }
  return y;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = binary("div", a, b, [](const auto& x, const auto& z) { return x / z; });
  if (needs_record({&a, &b})) {
    // d(a / b) = g / b, -g * a / b^2 = -g * y / b
    record("div", y, {&a, &b}, [b = save(b, 1), y = save_output(y)](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = sum_to(div(g, b.get()), dx.shape(0));
      if (dx.needs(1)) dx[1] = sum_to(neg(div(mul(g, y.get()), b.get())), dx.shape(1));
    });
  }
  return y;
}

namespace {
// x + s, recorded under the name of the op the user called (add or sub).
Tensor add_scalar(const char* op, const Tensor& a, double b) {
  Tensor y = unary_new(op, a, [b](const auto& x) { return x + static_cast<typename std::decay_t<decltype(x)>::value_type>(b); });
  if (needs_record({&a})) {
    // d(a + s) = g
    record(op, y, {&a}, [](const Tensor& g, GradSlots& dx) { dx[0] = g; });
  }
  return y;
}

// x * s, recorded under the name of the op the user called (mul or div).
Tensor mul_scalar(const char* op, const Tensor& a, double b) {
  Tensor y = unary_new(op, a, [b](const auto& x) { return x * static_cast<typename std::decay_t<decltype(x)>::value_type>(b); });
  if (needs_record({&a})) {
    // d(a * s) = g * s
    record(op, y, {&a}, [b](const Tensor& g, GradSlots& dx) { dx[0] = mul(g, b); });
  }
  return y;
}
}  // namespace

Tensor add(const Tensor& a, double b) { return add_scalar("add_scalar", a, b); }
Tensor sub(const Tensor& a, double b) { return add_scalar("sub_scalar", a, -b); }
Tensor mul(const Tensor& a, double b) { return mul_scalar("mul_scalar", a, b); }
Tensor div(const Tensor& a, double b) { return mul_scalar("div_scalar", a, 1.0 / b); }

Tensor rsub(double a, const Tensor& b) {
  Tensor y = unary_new("rsub", b, [a](const auto& x) { return static_cast<typename std::decay_t<decltype(x)>::value_type>(a) - x; });
  if (needs_record({&b})) {
    // d(s - b) = -g
    record("rsub_scalar", y, {&b}, [](const Tensor& g, GradSlots& dx) { dx[0] = neg(g); });
  }
  return y;
}

Tensor rdiv(double a, const Tensor& b) {
  Tensor y = unary_new("rdiv", b, [a](const auto& x) { return static_cast<typename std::decay_t<decltype(x)>::value_type>(a) / x; });
  if (needs_record({&b})) {
    // d(s / b) = -g * y / b
    record("rdiv_scalar", y, {&b}, [b = save(b, 0), y = save_output(y)](const Tensor& g, GradSlots& dx) {
      dx[0] = neg(div(mul(g, y.get()), b.get()));
    });
  }
  return y;
}

Tensor neg(const Tensor& x) {
  Tensor y = unary_new("neg", x, [](const auto& v) { return -v; });
  if (needs_record({&x})) {
    // d(-x) = -g
    record("neg", y, {&x}, [](const Tensor& g, GradSlots& dx) { dx[0] = neg(g); });
  }
  return y;
}

namespace {

// out (zeroed, the target shape) += x summed over the dims that are 1 in the target
// (x's shape padded on the left). Adjacent dims that are both kept or both reduced are
// merged first, so the common cases ([B,T,H] -> [H], [N,C] -> [N,1]) are one or two
// flat loops. xt::sum works here since backend/detail/xtensor_compat.hpp (without it
// xtensor 0.24's immediate reducers crash under C++20), but is no faster: on [32*35, 256]
// -> [256] in float64 it took 47 us against 41 us for this loop.
template <class T>
void sum_to_kernel(const Tensor& x, const Shape& target, Tensor& out) {
  const Shape& xs = x.shape();
  const int lead = xs.size() - target.size();
  // Merged dims: size and whether it is reduced.
  std::int64_t size[Shape::kMaxDims];
  bool red[Shape::kMaxDims];
  int m = 0;
  for (int i = 0; i < xs.size(); ++i) {
    const bool r = i < lead || (target[i - lead] == 1 && xs[i] != 1);
    if (xs[i] == 1) continue;  // contributes nothing either way
    if (m > 0 && red[m - 1] == r) {
      size[m - 1] *= xs[i];
    } else {
      size[m] = xs[i];
      red[m] = r;
      ++m;
    }
  }
  const T* px = x.data<T>();
  T* po = out.data<T>();
  if (m == 0) {
    po[0] += px[0];
    return;
  }
  // Odometer over the outer merged dims; the innermost one is a flat loop.
  std::int64_t idx[Shape::kMaxDims] = {};
  std::int64_t ostride[Shape::kMaxDims];  // out stride per merged dim (0 when reduced)
  std::int64_t s = 1;
  for (int d = m - 1; d >= 0; --d) {
    ostride[d] = red[d] ? 0 : s;
    if (!red[d]) s *= size[d];
  }
  const std::int64_t inner = size[m - 1];
  const std::int64_t total = x.numel();
  for (std::int64_t base = 0; base < total; base += inner) {
    std::int64_t o = 0;
    for (int d = 0; d < m - 1; ++d) o += idx[d] * ostride[d];
    const T* row = px + base;
    if (red[m - 1]) {
      T acc = 0;
      for (std::int64_t j = 0; j < inner; ++j) acc += row[j];
      po[o] += acc;
    } else {
      T* dst = po + o;
      for (std::int64_t j = 0; j < inner; ++j) dst[j] += row[j];
    }
    for (int d = m - 2; d >= 0; --d) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

Tensor sum_to(const Tensor& x, const Shape& shape) {
  detail::check_floating("sum_to", x);
  const Shape& xs = x.shape();
  if (xs == shape) return x;
  if (shape.size() > xs.size() || broadcast_shapes("sum_to", xs, shape) != xs) {
    throw ShapeError(fmt::format("sum_to: {} does not broadcast to {}", shape.str(), xs.str()));
  }
  Tensor y = zeros(shape, x.dtype());
  if (x.numel() > 0) {
    dispatch_float("sum_to", x.dtype(), [&](auto tag) {
      sum_to_kernel<decltype(tag)>(x, shape, y);
      return 0;
    });
  }
  if (needs_record({&x})) {
    // d sum_to(x) = broadcast of g back to x's shape
    record("sum_to", y, {&x}, [xs](const Tensor& g, GradSlots& dx) { dx[0] = broadcast_to(g, xs); });
  }
  return y;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  // A data move: every dtype (bool masks and int64 ids too, as PyTorch's expand).
  detail::check_defined("broadcast_to", x);
  if (broadcast_shapes("broadcast_to", x.shape(), shape) != shape) {
    throw ShapeError(fmt::format("broadcast_to: {} does not broadcast to {}", x.shape().str(), shape.str()));
  }
  if (x.shape() == shape) return x;
  Tensor y = Tensor::empty(shape, x.dtype());
  // x's values repeated whole (a scalar, or x's shape a suffix of the target after leading
  // 1s: mean's and a bias's backward) are copies of one block, not an xtensor broadcast.
  if (detail::repeats_into(x.shape(), shape) && x.numel() > 0) {
    const std::size_t es = dtype_size(x.dtype());
    const std::int64_t block = x.numel(), reps = y.numel() / block;
    const auto* src = static_cast<const unsigned char*>(x.data_ptr());
    auto* dst = static_cast<unsigned char*>(y.data_ptr());
    if (block == 1 && es == 4) {
      std::fill_n(reinterpret_cast<float*>(dst), reps, *reinterpret_cast<const float*>(src));
    } else if (block == 1 && es == 8 && x.dtype() == Dtype::f64) {
      std::fill_n(reinterpret_cast<double*>(dst), reps, *reinterpret_cast<const double*>(src));
    } else {
      for (std::int64_t r = 0; r < reps; ++r) std::memcpy(dst + r * block * es, src, block * es);
    }
  } else {
    detail::dispatch_mask(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      auto xx = detail::nd<T>(x);
      auto o = detail::nd<T>(y);
      xt::noalias(o) = xt::broadcast(xx, o.shape());
      return 0;
    });
  }
  if (needs_record({&x})) {
    // d broadcast_to(x) = g summed back to x's shape
    record("broadcast_to", y, {&x}, [xs = x.shape()](const Tensor& g, GradSlots& dx) { dx[0] = sum_to(g, xs); });
  }
  return y;
}

}  // namespace xg
