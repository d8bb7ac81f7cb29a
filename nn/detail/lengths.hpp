#pragma once
// Checks lengths and builds masks from them for the losses and attention modules. Not in
// `detail`: nn code calls xg::detail's helpers as `detail::`, which a second
// xg::nn::detail in scope would hide.
#include <cstdint>
#include <vector>

#include "../../autograd/tensor.hpp"

namespace xg::nn::lengths_internal {

// The lengths as a vector, checked: defined, int64, shape [B], every value in
// [min_length, T]. Errors name `op`, the lengths' shape and the offending entry.
std::vector<std::int64_t> check_lengths(const char* op, const Tensor& lengths, std::int64_t B, std::int64_t T,
                                        std::int64_t min_length);

// int64 [B, T] with 1 where t < lengths[b] (keep), 0 after: the mask every module accepts
// (a constant, no gradient).
Tensor keep_mask(const std::vector<std::int64_t>& lengths, std::int64_t T);

}  // namespace xg::nn::lengths_internal
