// Elementwise functions of one tensor.
#include <xtensor/xmath.hpp>

#include "xgrad/autograd/detail/kernels.hpp"
#include "xgrad/autograd/factory.hpp"
#include "xgrad/autograd/ops.hpp"
#include "xgrad/autograd/tape.hpp"

namespace xg {

using detail::dispatch_float;

namespace {
template <class F>
Tensor unary(const char* op, const Tensor& x, F&& f) {
  detail::check_floating(op, x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(op, x.dtype(), [&](auto tag) {
    detail::unary_kernel<decltype(tag)>(x, y, f);
    return 0;
  });
  return y;
}
}  // namespace

Tensor tanh(const Tensor& x) {
  Tensor y = unary("tanh", x, [](const auto& v) { return xt::tanh(v); });
  if (needs_record({&x})) {
    // d tanh(x) = g * (1 - y^2)
    record("tanh", y, {&x}, [y = y.detach()](const Tensor& g, GradSlots& dx) {
      dx[0] = mul(g, rsub(1.0, mul(y, y)));
    });
  }
  return y;
}

}  // namespace xg
