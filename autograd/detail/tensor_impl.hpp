#pragma once
// Private helpers shared by the library's .cpp files. Not installed.
#include <cstdint>
#include <memory>
#include <utility>

#include "../tensor.hpp"
#include "storage.hpp"

namespace xg {

// Private helpers shared by the library's .cpp files.
namespace detail {
// A new TensorImpl, with its reference counts in the same block from the calling thread's
// free lists (see memory.hpp): every tensor, view and detach() is made through this.
template <class... A>
std::shared_ptr<TensorImpl> make_impl(A&&... args) {
  return std::allocate_shared<TensorImpl>(ObjectAllocator<TensorImpl>{}, std::forward<A>(args)...);
}
// Throws StateError when t is undefined; `op` names the caller.
void check_defined(const char* op, const Tensor& t);
// Throws DtypeError unless t is f32/f64.
void check_floating(const char* op, const Tensor& t);
// Throws DtypeError unless a and b have the same dtype (and are floating).
void check_same_float(const char* op, const Tensor& a, const Tensor& b);
// reshape, with `op` naming the caller in errors (Tensor::view says "view").
Tensor reshape_as(const char* op, const Tensor& x, const Shape& shape);
// Tensor sharing x's storage with a new shape (same numel). No history.
Tensor alias(const Tensor& x, const Shape& shape);
// Makes dst hold src's storage, dtype and values (same shape; dst must be a leaf):
// Module::to changes a parameter's dtype while every handle to it stays valid.
void replace_value(Tensor& dst, const Tensor& src);
// dst += src elementwise (same shape and dtype), in place, unrecorded.
void add_into(Tensor& dst, const Tensor& src);
// dst[..., start:start + len, ...] += src along dim d, src holding the range's elements
// in order (same dtype); in place, unrecorded. The caller checked that the range fits.
void add_range_into(Tensor& dst, const Tensor& src, int d, std::int64_t start);
// dst's rows index[j] along dim d += src's rows j (repeats add up, in order).
void add_index_into(Tensor& dst, const Tensor& src, int d, const Tensor& index);
// A tensor of shape xs, zero except g inside [start, start + len) along dim d: what a
// ranged gradient (GradSlots::set_range) stands for.
Tensor embed_range(const Tensor& g, const Shape& xs, int d, std::int64_t start);
}  // namespace detail

}  // namespace xg
