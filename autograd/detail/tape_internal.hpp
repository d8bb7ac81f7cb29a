#pragma once
// Private: the hooks TensorImpl and Tensor::backward use to reach the tape.
#include <cstdint>

#include "../tensor.hpp"

namespace xg::detail {
// The output handle of node `node` of graph `gen` died.
void release_output(std::uint64_t gen, std::uint32_t node);
void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph);
}  // namespace xg::detail
