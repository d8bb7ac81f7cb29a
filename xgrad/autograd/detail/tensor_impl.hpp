#pragma once
// Private: the object a Tensor handle points to. Not installed.
#include <cstdint>
#include <memory>

#include "xgrad/autograd/tensor.hpp"

namespace xg {

inline constexpr std::uint32_t kNoNode = 0xffffffffu;

class TensorImpl {
 public:
  TensorImpl(const Shape& s, Dtype d, std::shared_ptr<void> storage, void* data)
      : shape(s), dtype(d), storage(std::move(storage)), data(data) {}
  ~TensorImpl();
  TensorImpl(const TensorImpl&) = delete;
  TensorImpl& operator=(const TensorImpl&) = delete;

  Shape shape;
  Dtype dtype;
  std::shared_ptr<void> storage;  // owns the bytes; shared by views and detach()
  void* data;                     // first element
  Tensor grad;
  bool requires_grad = false;     // leaves: user-set; outputs: set by record()
  bool retain_grad = false;
  // History: the node that produced this tensor on the tape of graph `gen`.
  std::uint64_t gen = 0;
  std::uint32_t node = kNoNode;
  const char* op = nullptr;  // name of that node's op (kept after the tape is cleared)
};

// Private helpers shared by the library's .cpp files.
namespace detail {
// Throws StateError when t is undefined; `op` names the caller.
void check_defined(const char* op, const Tensor& t);
// Throws DtypeError unless t is f32/f64.
void check_floating(const char* op, const Tensor& t);
// Throws DtypeError unless a and b have the same dtype (and are floating).
void check_same_float(const char* op, const Tensor& a, const Tensor& b);
// Tensor sharing x's storage with a new shape (same numel). No history.
Tensor alias(const Tensor& x, const Shape& shape);
// dst += src elementwise (same shape and dtype), in place, unrecorded.
void add_into(Tensor& dst, const Tensor& src);
}  // namespace detail

}  // namespace xg
