#pragma once
// The lengths of a padded batch of sequences, as the losses and attention modules take
// them: one int64 [B] tensor, element b = how many leading steps of sequence b are real.
// Wrapped in its own type so that `attn(q, keys, values, nn::Lengths(len))` cannot be
// mistaken for a mask (both are tensors).
#include <utility>

#include "../autograd/tensor.hpp"

namespace xg::nn {

struct Lengths {
  explicit Lengths(Tensor lengths) : tensor(std::move(lengths)) {}
  Tensor tensor;  // int64 [B]
};

}  // namespace xg::nn
