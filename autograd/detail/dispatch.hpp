#pragma once
// Private: the dtype dispatch and shape arithmetic every op file uses. No xtensor, so
// files with plain row loops (linear, layer_norm, the index ops) stay quick to compile.
#include <cstdint>
#include <string>

#include "../tensor.hpp"

namespace xg::detail {

// Calls f(T{}) with T = float or double per dtype; DtypeError for int64 and bool.
template <class F>
inline decltype(auto) dispatch_float(const char* op, Dtype d, F&& f) {
  if (d == Dtype::f32) return f(float{});
  if (d == Dtype::f64) return f(double{});
  if (d == Dtype::b8) {
    throw DtypeError(std::string(op) +
                     ": expected a float32 or float64 tensor, got bool: arithmetic on bool is not defined; convert "
                     "with .to(xg::f32), or pick values with where/masked_fill");
  }
  throw DtypeError(std::string(op) + ": expected a float32 or float64 tensor, got " + std::string(dtype_name(d)));
}

// Calls f(T{}) with the element type of d: ops that move values (shape and index ops)
// work for every dtype, int64 index tensors and bool masks included.
template <class F>
inline decltype(auto) dispatch_any(Dtype d, F&& f) {
  if (d == Dtype::f32) return f(float{});
  if (d == Dtype::f64) return f(double{});
  if (d == Dtype::b8) return f(bool{});
  return f(std::int64_t{});
}

// Calls f(M{}) with the element type that xtensor kernels read a mask or condition of
// dtype d as: bool masks as their bytes (std::uint8_t, 0 or 1), since xsimd's batches of
// bool are a different type from batches of numbers.
template <class F>
inline decltype(auto) dispatch_mask(Dtype d, F&& f) {
  if (d == Dtype::f32) return f(float{});
  if (d == Dtype::f64) return f(double{});
  if (d == Dtype::b8) return f(std::uint8_t{});
  return f(std::int64_t{});
}

// The number of elements in dims [from, to) of s (1 for an empty range).
inline std::int64_t prod(const Shape& s, int from, int to) {
  std::int64_t n = 1;
  for (int i = from; i < to; ++i) n *= s[i];
  return n;
}

}  // namespace xg::detail
