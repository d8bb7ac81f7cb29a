// Tensor's LibTorch-style methods and its compound assignments. The methods forward to
// the free functions of ops.hpp (qualified: inside Tensor, `exp` names the method).
#include <cstring>

#include <fmt/format.h>

#include "detail/tensor_impl.hpp"
#include "ops.hpp"
#include "tape.hpp"
#include "tensor.hpp"

namespace xg {

Tensor Tensor::sum() const { return xg::sum(*this); }
Tensor Tensor::sum(int dim, bool keepdim) const { return xg::sum(*this, {dim}, keepdim); }
Tensor Tensor::sum(const std::vector<int>& dims, bool keepdim) const { return xg::sum(*this, dims, keepdim); }
Tensor Tensor::sum(std::initializer_list<int> dims, bool keepdim) const {
  return xg::sum(*this, std::vector<int>(dims), keepdim);
}
Tensor Tensor::mean() const { return xg::mean(*this); }
Tensor Tensor::mean(int dim, bool keepdim) const { return xg::mean(*this, {dim}, keepdim); }
Tensor Tensor::mean(const std::vector<int>& dims, bool keepdim) const { return xg::mean(*this, dims, keepdim); }
Tensor Tensor::mean(std::initializer_list<int> dims, bool keepdim) const {
  return xg::mean(*this, std::vector<int>(dims), keepdim);
}
Tensor Tensor::reshape(const Shape& shape) const { return xg::reshape(*this, shape); }
Tensor Tensor::view(const Shape& shape) const { return detail::reshape_as("view", *this, shape); }
Tensor Tensor::transpose(int dim0, int dim1) const { return xg::transpose(*this, dim0, dim1); }

Tensor Tensor::t() const {
  const int nd = ndim();
  if (nd < 2) return *this;
  if (nd > 2) {
    throw ShapeError(fmt::format("t: expects a tensor of at most 2 dims, got {} (use transpose(dim0, dim1))",
                                 shape().str()));
  }
  return xg::transpose(*this, 0, 1);
}

Tensor Tensor::matmul(const Tensor& other) const { return xg::matmul(*this, other); }
Tensor Tensor::exp() const { return xg::exp(*this); }
Tensor Tensor::tanh() const { return xg::tanh(*this); }
Tensor Tensor::sigmoid() const { return xg::sigmoid(*this); }
Tensor Tensor::relu() const { return xg::relu(*this); }
Tensor Tensor::pow(double exponent) const { return xg::pow(*this, exponent); }
Tensor Tensor::select(int dim, std::int64_t index) const { return xg::select(*this, dim, index); }
Tensor Tensor::operator[](std::int64_t index) const { return xg::select(*this, 0, index); }
std::vector<Tensor> Tensor::chunk(std::int64_t chunks, int dim) const { return xg::chunk(*this, chunks, dim); }

// ---- in place ---------------------------------------------------------------------------

namespace {

// `a op= rhs`, where compute() is the out-of-place op and `rhs` its tensor operand (null
// for a number). The semantics are described at the declarations in tensor.hpp.
template <class F>
Tensor& assign_op(const char* name, Tensor& a, const Tensor* rhs, F&& compute) {
  if (!a.defined()) {
    throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", name));
  }
  if (rhs && !rhs->defined()) {
    throw StateError(fmt::format("{}: the right-hand side is undefined (default-constructed Tensor)", name));
  }
  TensorImpl& self = *a.impl();
  // Checked before anything is computed, so a refused op records nothing.
  if (rhs && broadcast_shapes(name, self.shape, rhs->shape()) != self.shape) {
    throw ShapeError(fmt::format("{}: the result of {} with {} would have shape {}, not the tensor's {} "
                                 "(an in-place op cannot change a tensor's shape; write a = a op b)",
                                 name, self.shape.str(), rhs->shape().str(),
                                 broadcast_shapes(name, self.shape, rhs->shape()).str(), self.shape.str()));
  }
  const bool recorded = rhs ? needs_record({&a, rhs}) : needs_record({&a});
  if (recorded) {
    if (self.requires_grad && self.node == kNoNode) {
      throw StateError(fmt::format(
          "{}: in-place op on a leaf that requires grad ({} {}); use NoGradGuard to update parameters "
          "or out-of-place ops",
          name, dtype_name(self.dtype), self.shape.str()));
    }
    a = compute();
    return a;
  }
  if (self.node != kNoNode) {
    throw StateError(fmt::format(
        "{}: in-place write under NoGradGuard to a tensor produced by '{}' ({} {}): its graph may have "
        "saved these values for backward; detach() it first, or write a = a op b",
        name, self.op ? self.op : "?", dtype_name(self.dtype), self.shape.str()));
  }
  const Tensor r = compute();
  if (r.dtype() != self.dtype) {
    throw DtypeError(fmt::format("{}: the result is {} but the tensor is {} {}", name, dtype_name(r.dtype()),
                                 dtype_name(self.dtype), self.shape.str()));
  }
  // Contiguous both (every tensor is); r is a fresh buffer, so a += a reads no written value.
  std::memcpy(self.data, r.impl()->data, static_cast<std::size_t>(r.numel()) * dtype_size(self.dtype));
  self.header().bump();  // a graph that saved these values will refuse them
  return a;
}

}  // namespace

Tensor& Tensor::operator+=(const Tensor& b) & {
  return assign_op("add_ (+=)", *this, &b, [&] { return xg::add(*this, b); });
}
Tensor& Tensor::operator-=(const Tensor& b) & {
  return assign_op("sub_ (-=)", *this, &b, [&] { return xg::sub(*this, b); });
}
Tensor& Tensor::operator*=(const Tensor& b) & {
  return assign_op("mul_ (*=)", *this, &b, [&] { return xg::mul(*this, b); });
}
Tensor& Tensor::operator/=(const Tensor& b) & {
  return assign_op("div_ (/=)", *this, &b, [&] { return xg::div(*this, b); });
}
Tensor& Tensor::operator+=(double b) & {
  return assign_op("add_ (+=)", *this, nullptr, [&] { return xg::add(*this, b); });
}
Tensor& Tensor::operator-=(double b) & {
  return assign_op("sub_ (-=)", *this, nullptr, [&] { return xg::sub(*this, b); });
}
Tensor& Tensor::operator*=(double b) & {
  return assign_op("mul_ (*=)", *this, nullptr, [&] { return xg::mul(*this, b); });
}
Tensor& Tensor::operator/=(double b) & {
  return assign_op("div_ (/=)", *this, nullptr, [&] { return xg::div(*this, b); });
}

}  // namespace xg
