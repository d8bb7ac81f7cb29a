#pragma once
// Private: the hooks TensorImpl and Tensor::backward use to reach the tape.
#include <cstdint>
#include <mutex>
#include <vector>

#include "../tensor.hpp"

namespace xg::detail {
// The output handle of the node with this stamp (at index `node` when recorded) died,
// on whichever thread.
void release_output(std::uint64_t stamp, std::uint32_t node);
// retain_grad() of a non-leaf: its node keeps a weak handle to put the gradient in.
void retain_output(const Tensor& x);
// Guards a leaf's grad field: backward on several threads may accumulate into one leaf.
std::mutex& grad_lock(const TensorImpl* leaf);
void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph, bool create_graph);
// xg::grad's walk: the gradients of `roots` (seeded by `seeds`, one per root, defined)
// with respect to `targets`, returned in target order (undefined where unreachable)
// instead of accumulated into .grad().
std::vector<Tensor> run_grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds,
                             const std::vector<Tensor>& targets, bool retain_graph, bool create_graph);
}  // namespace xg::detail
