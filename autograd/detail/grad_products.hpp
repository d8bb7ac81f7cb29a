#pragma once
// Private: the weight gradients of products, stacked per leaf during one plain backward
// walk and summed by one GEMM (GradSlots::set_product).
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "../tensor.hpp"

namespace xg::detail {

// lhsᵀ · rhs for 2-D lhs [K, M], rhs [K, N] of one dtype: a new [M, N] tensor, unrecorded.
Tensor product_now(const Tensor& lhs, const Tensor& rhs);

// Why: a loop over T steps of x_t · W hands the engine T products x_tᵀ g_t for W's
// gradient. Each is a thin GEMM (K = the batch size), and each result is then added into
// W.grad: T passes over a weight-sized tensor. Stacking the rows of every x_t and g_t and
// multiplying once, Σ_t x_tᵀ g_t = Xᵀ G, is one GEMM with K = T * B, the product a fused
// recurrent module computes. A stack is multiplied out early when it would pass
// kFlushBytes, or when all stacks together would pass kTotalBytes (a model with many
// weights), so memory stays bounded whatever T and the number of weights are.
class ProductStacks {
 public:
  static constexpr std::int64_t kFlushBytes = std::int64_t{4} << 20;
  static constexpr std::int64_t kTotalBytes = std::int64_t{16} << 20;
  // Appends lhs's rows and rhs's rows to leaf's stack. Returns a product for the caller to
  // add into the leaf's gradient: the stack's sum when these rows would pass kFlushBytes
  // (multiplied out first, the stack emptied), or lhsᵀ · rhs itself when it is taller than
  // half a stack (stacking gains nothing there, and its copy would add to the peak); else
  // an undefined tensor.
  Tensor add(const std::shared_ptr<TensorImpl>& leaf, const Tensor& lhs, const Tensor& rhs);
  // Every stack's summed product, by leaf, in the order the leaves were first reached;
  // the stacks are emptied.
  std::vector<std::pair<std::shared_ptr<TensorImpl>, Tensor>> take_all();
  // Drops every stack (a walk that threw).
  void clear() {
    stacks_.clear();
    bytes_ = 0;
  }
  bool empty() const { return stacks_.empty(); }

 private:
  struct Stack {
    std::shared_ptr<TensorImpl> leaf;
    Tensor lhs, rhs;  // [capacity, M], [capacity, N]
    std::int64_t rows = 0;
    bool flushed = false;  // multiplied out early at least once
  };
  Tensor multiply(Stack& s);
  std::vector<Stack> stacks_;
  std::int64_t bytes_ = 0;  // rows held by all stacks
};

}  // namespace xg::detail
