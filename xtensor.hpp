#pragma once
// Opt-in interop: xg::Tensor <-> xtensor. Including this pulls in xtensor (slow to
// compile), which is why xgrad/xgrad.hpp does not.
//
//   xt::xarray<float> a = xg::to_xarray<float>(t);      // copy
//   auto v = xg::as_xtensor<float>(t);                   // view: aliases t's storage
//   xg::Tensor u = xg::from_xtensor(xt::arange(6.0));    // copy of an evaluated expression
//
// Scalar types: float <-> float32, double <-> float64, std::int64_t <-> int64.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <fmt/format.h>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xnoalias.hpp>

#include "xgrad.hpp"

namespace xg {

namespace interop_detail {

template <class T>
inline constexpr bool is_tensor_scalar =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>;

using xshape = xt::xarray<double>::shape_type;

inline xshape to_xshape(const Shape& s) {
  xshape r(static_cast<std::size_t>(s.size()));
  for (int i = 0; i < s.size(); ++i) r[static_cast<std::size_t>(i)] = static_cast<std::size_t>(s[i]);
  return r;
}

template <class T>
void check_dtype(const char* op, const Tensor& t) {
  if (!t.defined()) throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", op));
  if (t.dtype() != dtype_of<T>()) {
    throw DtypeError(fmt::format("{}<{}>: the tensor is {} {}; convert it with .to({}) first", op,
                                 dtype_name(dtype_of<T>()), dtype_name(t.dtype()), t.shape().str(),
                                 dtype_name(dtype_of<T>())));
  }
}

}  // namespace interop_detail

// A copy of t's values as a row-major xarray. T must match t.dtype() (DtypeError).
template <class T>
xt::xarray<T> to_xarray(const Tensor& t) {
  static_assert(interop_detail::is_tensor_scalar<T>, "to_xarray<T>: T must be float, double or std::int64_t");
  interop_detail::check_dtype<T>("to_xarray", t);
  xt::xarray<T> out = xt::xarray<T>::from_shape(interop_detail::to_xshape(t.shape()));
  const T* src = t.data<T>();
  std::copy(src, src + t.numel(), out.data());
  return out;
}

// A row-major xtensor view of t's values: no copy, it ALIASES the storage. Writing
// through it changes t (and every tensor sharing t's storage: detach(), views) and is
// not recorded by autograd, like writing through data<T>(). The view holds a reference
// to t's storage, so it stays valid even if t goes away. T must match t.dtype().
template <class T>
auto as_xtensor(Tensor& t) {
  static_assert(interop_detail::is_tensor_scalar<T>, "as_xtensor<T>: T must be float, double or std::int64_t");
  interop_detail::check_dtype<T>("as_xtensor", t);
  return xt::adapt_smart_ptr(t.data<T>(), interop_detail::to_xshape(t.shape()), t.impl_ptr());
}

// Read-only variant of the view above (const T elements).
template <class T>
auto as_xtensor(const Tensor& t) {
  static_assert(interop_detail::is_tensor_scalar<T>, "as_xtensor<T>: T must be float, double or std::int64_t");
  interop_detail::check_dtype<T>("as_xtensor", t);
  return xt::adapt_smart_ptr(t.data<T>(), interop_detail::to_xshape(t.shape()), t.impl_ptr());
}

// A new tensor (no history) holding the evaluated expression. The dtype follows the
// expression's value_type: float -> float32, double -> float64, std::int64_t -> int64.
// More than 8 dimensions is a ShapeError.
template <class E>
Tensor from_xtensor(const xt::xexpression<E>& e) {
  using T = std::decay_t<typename E::value_type>;
  static_assert(interop_detail::is_tensor_scalar<T>,
                "from_xtensor: the expression's value_type must be float, double or std::int64_t "
                "(cast it first, e.g. xt::cast<double>(expr))");
  const E& x = e.derived_cast();
  const auto& xs = x.shape();
  if (xs.size() > static_cast<std::size_t>(Shape::kMaxDims)) {
    throw ShapeError(fmt::format("from_xtensor: the expression has {} dimensions; xgrad supports at most {}",
                                 xs.size(), Shape::kMaxDims));
  }
  Shape shape;
  for (std::size_t d : xs) shape.push_back(static_cast<std::int64_t>(d));
  Tensor t = Tensor::empty(shape, dtype_of<T>());
  // Evaluate straight into the new storage: no intermediate xarray.
  auto out = xt::adapt(t.data<T>(), static_cast<std::size_t>(t.numel()), xt::no_ownership(),
                       interop_detail::to_xshape(shape));
  xt::noalias(out) = x;
  return t;
}

}  // namespace xg
