// Reductions: sum, mean, max, argmax, logsumexp.
#include <fmt/format.h>

#include <xtensor/xmath.hpp>
#include <xtensor/xreducer.hpp>

#include "xgrad/autograd/detail/kernels.hpp"
#include "xgrad/autograd/factory.hpp"
#include "xgrad/autograd/ops.hpp"
#include "xgrad/autograd/tape.hpp"

namespace xg {

using detail::dispatch_float;

Tensor sum(const Tensor& x) {
  detail::check_floating("sum", x);
  Tensor y = Tensor::empty(Shape{}, x.dtype());
  dispatch_float("sum", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* p = x.data<T>();
    const std::int64_t n = x.numel();
    // Accumulate in double for f32 too: a sum over B*T*V logits must not drift.
    double s = 0.0;
    for (std::int64_t i = 0; i < n; ++i) s += p[i];
    *y.data<T>() = static_cast<T>(s);
    return 0;
  });
  if (needs_record({&x})) {
    // d sum(x) = g broadcast to x's shape
    record("sum", y, {&x}, [xs = x.shape()](const Tensor& g, GradSlots& dx) { dx[0] = broadcast_to(g, xs); });
  }
  return y;
}

}  // namespace xg
