#pragma once
// xg::Tensor: a cheap shared handle to a value, its dtype and shape, an optional .grad(),
// and the link to the tape node that produced it (see tape.hpp for how that link is used).
// Copying a Tensor aliases it, like torch::Tensor. Values are row-major and contiguous.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xgrad/autograd/dtype.hpp"
#include "xgrad/autograd/error.hpp"
#include "xgrad/autograd/shape.hpp"

namespace xg {

class TensorImpl;

class Tensor {
 public:
  // An undefined tensor (defined() == false); most calls on it throw StateError.
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialised storage of the given shape; the building block of every op.
  static Tensor empty(const Shape& shape, Dtype dtype);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int ndim() const;
  std::int64_t numel() const;
  // Size of one dimension; negative dims count from the end.
  std::int64_t size(int dim) const;
  Dtype dtype() const;

  // The value of a one-element tensor, converted to double.
  double item() const;
  template <class T> T item() const { return static_cast<T>(item()); }

  // Raw element access (row-major). T must match dtype() (DtypeError otherwise).
  // Writing through data() is not recorded: it is how optimizers update parameters.
  template <class T> T* data();
  template <class T> const T* data() const;
  void* data_ptr();
  const void* data_ptr() const;
  // Copy of the values, converted to T.
  template <class T> std::vector<T> to_vector() const;

  // A copy with its own storage and no history (clone of a tensor that requires grad
  // is recorded: its gradient flows back).
  Tensor clone() const;
  // Same storage, no history: the cut for truncated BPTT.
  Tensor detach() const;
  // Converted copy, recorded (the gradient is converted back). Same dtype: returns *this.
  Tensor to(Dtype dtype) const;

  // Autograd.
  bool requires_grad() const;
  // Marks a leaf as a parameter whose gradient accumulates into grad().
  Tensor& requires_grad_(bool on = true);
  // A leaf is a tensor not produced by a recorded op.
  bool is_leaf() const;
  // Accumulated gradient (undefined until a backward reaches this tensor).
  Tensor grad() const;
  void set_grad(const Tensor& g);
  // Drops the gradient (like PyTorch's set_to_none=true).
  void zero_grad();
  // Keep this non-leaf's gradient in grad() after backward (PyTorch's retain_grad).
  Tensor& retain_grad();
  // Backpropagates from this tensor. A tensor of more than one element needs `seed`
  // (d(loss)/d(this), same shape). The walked graph is freed unless retain_graph.
  void backward(const Tensor& seed = Tensor(), bool retain_graph = false) const;

  // Name of the op that produced this tensor ("leaf" otherwise).
  std::string op_name() const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  // Same underlying storage and node (aliases).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

}  // namespace xg
