#pragma once
// xtensor 0.24.3 under C++20: a C++17-only guard in xexpression_traits.hpp makes
// svector<size_t, 4> shapes pick xtensor<T, 4> as their temporary type, so immediate
// reductions and xt::eval of dynamic-rank expressions crash (bad_alloc or segfault).
// Force-included into every library translation unit so all of them agree.
#include <xtensor/xexpression_traits.hpp>
#include <xtensor/xstorage.hpp>

namespace xt::detail {
template <>
struct xtype_for_shape<xt::svector<std::size_t, 4, std::allocator<std::size_t>, true>> {
  template <class T, layout_type L>
  using type = xarray<T, L>;
};
}  // namespace xt::detail
