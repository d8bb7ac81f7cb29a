#pragma once
// Private: xtensor glue for op kernels. Only the library's .cpp files include this.
#include <array>
#include <cstdint>

#include <xtensor/xadapt.hpp>
#include <xtensor/xnoalias.hpp>

#include "dispatch.hpp"
#include "tensor_impl.hpp"

namespace xg::detail {

using xshape = xt::svector<std::size_t, 4>;

inline xshape to_xshape(const Shape& s) {
  xshape r(static_cast<std::size_t>(s.size()));
  for (int i = 0; i < s.size(); ++i) r[i] = static_cast<std::size_t>(s[i]);
  return r;
}

// A flat 1-D xtensor view of all elements (fast path: no broadcasting logic).
template <class T>
inline auto flat(const Tensor& t) {
  return xt::adapt(const_cast<T*>(static_cast<const T*>(t.data_ptr())),
                   static_cast<std::size_t>(t.numel()), xt::no_ownership(),
                   std::array<std::size_t, 1>{static_cast<std::size_t>(t.numel())});
}

// An N-D xtensor view with t's shape (for broadcasting and axis reductions).
template <class T>
inline auto nd(const Tensor& t) {
  return xt::adapt(const_cast<T*>(static_cast<const T*>(t.data_ptr())),
                   static_cast<std::size_t>(t.numel()), xt::no_ownership(), to_xshape(t.shape()));
}

}  // namespace xg::detail

namespace xg::detail {

// out = f(a, b) elementwise with numpy broadcasting; out already has the broadcast shape.
// f takes xtensor expressions by const& (it must not outlive this call).
template <class T, class F>
void binary_kernel(const Tensor& a, const Tensor& b, Tensor& out, F&& f) {
  if (a.shape() == b.shape()) {
    auto xa = flat<T>(a);
    auto xb = flat<T>(b);
    auto o = flat<T>(out);
    xt::noalias(o) = f(xa, xb);
  } else {
    auto xa = nd<T>(a);
    auto xb = nd<T>(b);
    auto o = nd<T>(out);
    xt::noalias(o) = f(xa, xb);
  }
}

// True when x's values, repeated whole, make a tensor of shape `to` in row-major order:
// x's shape without its leading 1s is a suffix of `to` (a scalar, a bias row [N] or [1, N]).
inline bool repeats_into(const Shape& x, const Shape& to) {
  int lead = 0;
  while (lead < x.size() && x[lead] == 1) ++lead;
  const int rest = x.size() - lead;
  if (rest > to.size()) return false;
  for (int i = 0; i < rest; ++i) {
    if (x[lead + i] != to[to.size() - rest + i]) return false;
  }
  return true;
}

// As binary_kernel, for f built from arithmetic operators only: with equal shapes f is
// called on scalars in a plain loop (gcc vectorises + - * /, and a small tensor skips
// xtensor's per-assignment shape logic, most of the cost of a 1x1 op).
template <class T, class F>
void arith_kernel(const Tensor& a, const Tensor& b, Tensor& out, F&& f) {
  if (a.shape() == b.shape()) {
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    const std::int64_t n = out.numel();
    for (std::int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
    return;
  }
  // One operand full-shape, the other a block repeated along the leading dims (a bias
  // row, a scalar): a loop per repeat, no xtensor broadcast.
  const std::int64_t n = out.numel(), na = a.numel(), nb = b.numel();
  const bool a_full = a.shape() == out.shape(), b_full = b.shape() == out.shape();
  if (n > 0 && ((a_full && repeats_into(b.shape(), out.shape())) || (b_full && repeats_into(a.shape(), out.shape())))) {
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    const std::int64_t block = a_full ? nb : na;
    for (std::int64_t r = 0; r < n; r += block) {
      if (a_full) {
        for (std::int64_t i = 0; i < block; ++i) po[r + i] = f(pa[r + i], pb[i]);
      } else {
        for (std::int64_t i = 0; i < block; ++i) po[r + i] = f(pa[i], pb[r + i]);
      }
    }
    return;
  }
  binary_kernel<T>(a, b, out, f);
}

// A new tensor shaped like a with out[i] = f(a[i], b[i]) (a, b same shape and dtype).
// For backward rules: one pass and one allocation instead of a chain of ops.
template <class F>
inline Tensor zip_new(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_float(op, a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    const std::int64_t n = out.numel();
    for (std::int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
    return 0;
  });
  return out;
}

// out = f(x) elementwise over all elements.
template <class T, class F>
void unary_kernel(const Tensor& x, Tensor& out, F&& f) {
  auto xx = flat<T>(x);
  auto o = flat<T>(out);
  xt::noalias(o) = f(xx);
}

// A new tensor y = f(x) elementwise, f an xtensor expression of the flat x (x floating).
template <class F>
Tensor unary_new(const char* op, const Tensor& x, F&& f) {
  check_floating(op, x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(op, x.dtype(), [&](auto tag) {
    unary_kernel<decltype(tag)>(x, y, f);
    return 0;
  });
  return y;
}

}  // namespace xg::detail
