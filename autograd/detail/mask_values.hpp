#pragma once
// Reading a saved tensor only for a mask, a sign or a winner (relu, abs, clamp, maximum,
// minimum, where, masked_fill): their gradient is g times a piecewise-constant function
// of it.
#include "../tape.hpp"

namespace xg::detail {

// s's values, without the create_graph bookkeeping of SavedTensor::get(): a saved output
// is not re-attached, and the read is not noted. The mask built from them has zero
// derivative, so it adds no dependence; noted, a backward whose incoming gradient is a
// constant (a seed of ones) would return a constant after reading a value with history
// and be refused as a raw kernel without a create_graph path. The version check stays.
inline const Tensor& mask_values(const SavedTensor& s) {
  const bool prev = t_reattach_outputs;
  t_reattach_outputs = false;
  const Tensor& t = s.get();
  t_reattach_outputs = prev;
  return t;
}

}  // namespace xg::detail
