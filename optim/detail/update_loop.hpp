#pragma once
// Private to the optimizers' .cpp files.

#include <type_traits>

namespace xg::optim::detail {

// with_flags(f, a, b, ...) calls f(std::bool_constant<a>{}, std::bool_constant<b>{}, ...),
// so an update loop can test its options with `if constexpr` and each option combination
// gets a loop of its own. With run-time branches and possibly aliasing pointers in one
// loop, GCC kept the vector registers in stack slots and Adam's update ran ~10x slower.
template <class F>
void with_flags(F&& f) {
  f();
}

template <class F, class... B>
void with_flags(F&& f, bool first, B... rest) {
  if (first) {
    with_flags([&](auto... c) { f(std::true_type{}, c...); }, rest...);
  } else {
    with_flags([&](auto... c) { f(std::false_type{}, c...); }, rest...);
  }
}

}  // namespace xg::optim::detail
