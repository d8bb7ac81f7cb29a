// dropout: one node whose saved mask makes forward and backward one multiply each.
#include <cstdint>

#include <fmt/format.h>

#include "detail/dispatch.hpp"
#include "detail/tensor_impl.hpp"
#include "ops.hpp"
#include "random.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  if (!(p >= 0.0 && p <= 1.0)) {  // also rejects NaN
    throw Error(fmt::format("dropout: probability p must be in [0, 1], got {}", p));
  }
  detail::check_floating("dropout", x);
  if (!training || p == 0.0) return x;
  Generator& rng = gen ? *gen : default_generator();
  const bool rec = needs_record({&x});
  // The mask holds 0 or 1/(1-p), so forward and backward are both one multiply.
  // p == 1 drops everything (PyTorch's convention): scale 0 instead of 1/0.
  const double scale = p == 1.0 ? 0.0 : 1.0 / (1.0 - p);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mask = rec ? Tensor::empty(x.shape(), x.dtype()) : Tensor();
  dispatch_float("dropout", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    T* mp = rec ? mask.data<T>() : nullptr;
    const T s = static_cast<T>(scale);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const T m = rng.uniform() >= p ? s : T(0);
      yp[i] = m == T(0) ? T(0) : xp[i] * m;
      if (mp) mp[i] = m;
    }
    return 0;
  });
  if (rec) {
    // d dropout(x) = g * mask / (1 - p)
    record("dropout", y, {&x}, [mask](const Tensor& g, GradSlots& dx) { dx[0] = mul(g, mask); });
  }
  return y;
}

}  // namespace xg
