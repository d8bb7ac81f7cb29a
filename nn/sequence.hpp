#pragma once
// Padded batches of variable-length sequences, as PyTorch's torch.nn.utils.rnn:
// pad_sequence stacks sequences of different lengths into one zero-padded tensor, and
// lengths_to_mask turns their lengths into the bool mask that attention (DotAttention,
// AdditiveAttention: true = keep) and temporal_cross_entropy (true = counts) take.
#include <cstdint>
#include <vector>

#include "../autograd/tensor.hpp"

namespace xg::nn::utils {

// lengths int64 [B] -> bool [B, T] with mask[b, t] = t < lengths[b]; T = max(lengths)
// (0 for B = 0) when max_len < 0, else max_len. A lengths tensor that is not int64
// (DtypeError: convert with .to(xg::i64)) or not 1-D, a negative length, or a length
// above max_len (ShapeError) is refused, naming the function, the entry and the shapes.
Tensor lengths_to_mask(const Tensor& lengths, std::int64_t max_len = -1);
Tensor lengths_to_mask(const std::vector<std::int64_t>& lengths, std::int64_t max_len = -1);

// seqs[i] [L_i, *] (every * the same, every dtype the same) -> [T, B, *] (batch_first
// false, PyTorch's default) or [B, T, *], T = max L_i, positions t >= L_i holding
// padding_value. Differentiable: each sequence gets its slice of the gradient (the
// padding's gradient is dropped). An empty list or a 0-d sequence is a ShapeError,
// mismatched trailing shapes a ShapeError and mismatched dtypes a DtypeError, each
// naming the sequence and both shapes.
Tensor pad_sequence(const std::vector<Tensor>& seqs, bool batch_first = false, double padding_value = 0.0);

}  // namespace xg::nn::utils
