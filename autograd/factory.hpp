#pragma once
// Tensor factories. The floating ones use default_dtype() unless a dtype is given;
// the random ones draw from default_generator() unless a Generator is given.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "random.hpp"
#include "tensor.hpp"

namespace xg {

Tensor zeros(const Shape& shape, Dtype dtype = default_dtype());
Tensor ones(const Shape& shape, Dtype dtype = default_dtype());
Tensor full(const Shape& shape, double value, Dtype dtype = default_dtype());
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
// A 0-d tensor.
Tensor scalar(double value, Dtype dtype = default_dtype());

// [0, 1, ..., n-1] and [start, start+step, ...) below end; float dtype unless given.
Tensor arange(double end, Dtype dtype = default_dtype());
Tensor arange(double start, double end, double step = 1.0, Dtype dtype = default_dtype());
// n x n identity.
Tensor eye(std::int64_t n, Dtype dtype = default_dtype());

// Copies the values; numel of `shape` must equal values.size() (ShapeError otherwise).
// An empty shape {} with one value makes a 0-d tensor; omit shape for a 1-D tensor.
Tensor from_vector(const std::vector<float>& values, const Shape& shape);
Tensor from_vector(const std::vector<double>& values, const Shape& shape);
Tensor from_vector(const std::vector<std::int64_t>& values, const Shape& shape);
Tensor from_vector(const std::vector<float>& values);
Tensor from_vector(const std::vector<double>& values);
Tensor from_vector(const std::vector<std::int64_t>& values);
// Converting copy into the given dtype.
Tensor from_vector(const std::vector<double>& values, const Shape& shape, Dtype dtype);
// Bool masks: from_vector({true, false, true}) is a bool [3] tensor (dtype b8).
Tensor from_vector(const std::vector<bool>& values, const Shape& shape);
Tensor from_vector(const std::vector<bool>& values);
Tensor from_vector(std::initializer_list<bool> values, const Shape& shape);
Tensor from_vector(std::initializer_list<bool> values);

// Any element type, from a braced list or a vector, with an optional shape and dtype:
//   from_vector({1.0, 2.0, 3.0})              float64 [3]
//   from_vector({1, 2, 3, 4}, {2, 2})         int64 [2,2]
//   from_vector(std::vector<int>{1, 2}, f32)  float32 [2]
// Without a dtype it follows the elements: float -> float32, double -> float64, every
// integer type -> int64 (the three dtypes there are; torch::tensor would give double
// literals the default dtype instead). An unsigned value above the int64 range is an Error.
template <class T>
concept FromVectorElement =
    std::is_same_v<T, float> || std::is_same_v<T, double> || (std::is_integral_v<T> && !std::is_same_v<T, bool>);

namespace detail {
template <class T>
using from_vector_canonical_t = std::conditional_t<std::is_integral_v<T>, std::int64_t, T>;

template <FromVectorElement T>
Tensor from_elements(const T* p, std::size_t n, const Shape* shape, const Dtype* dtype) {
  using C = from_vector_canonical_t<T>;
  std::vector<C> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(std::int64_t)) {
      if (p[i] > static_cast<T>(std::numeric_limits<std::int64_t>::max())) {
        throw Error("from_vector: value " + std::to_string(p[i]) + " at index " + std::to_string(i) +
                    " does not fit in int64");
      }
    }
    v[i] = static_cast<C>(p[i]);
  }
  Tensor t = shape ? from_vector(v, *shape) : from_vector(v);
  return dtype ? t.to(*dtype) : t;
}
}  // namespace detail

template <FromVectorElement T>
Tensor from_vector(std::initializer_list<T> values) {
  return detail::from_elements(values.begin(), values.size(), nullptr, nullptr);
}
template <FromVectorElement T>
Tensor from_vector(std::initializer_list<T> values, const Shape& shape) {
  return detail::from_elements(values.begin(), values.size(), &shape, nullptr);
}
// The dtype-only forms deduce their second parameter, so `from_vector(v, {})` can only mean
// the shape {} (a 0-d tensor) and never silently becomes Dtype{} (float32).
template <FromVectorElement T, std::same_as<Dtype> D>
Tensor from_vector(std::initializer_list<T> values, D dtype) {
  return detail::from_elements(values.begin(), values.size(), nullptr, &dtype);
}
template <FromVectorElement T>
Tensor from_vector(std::initializer_list<T> values, const Shape& shape, Dtype dtype) {
  return detail::from_elements(values.begin(), values.size(), &shape, &dtype);
}
template <FromVectorElement T>
Tensor from_vector(const std::vector<T>& values) {
  return detail::from_elements(values.data(), values.size(), nullptr, nullptr);
}
template <FromVectorElement T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
  return detail::from_elements(values.data(), values.size(), &shape, nullptr);
}
template <FromVectorElement T, std::same_as<Dtype> D>
Tensor from_vector(const std::vector<T>& values, D dtype) {
  return detail::from_elements(values.data(), values.size(), nullptr, &dtype);
}
template <FromVectorElement T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Dtype dtype) {
  return detail::from_elements(values.data(), values.size(), &shape, &dtype);
}

// A tensor over memory the caller owns, without copying: the tensor never frees `data`.
// The buffer must stay alive and in place as long as any tensor sharing it exists
// (views, detach(), and values an autograd graph saved all share it). Writes into the
// buffer by the caller show in those tensors and are not tracked: changing it while a
// graph that saved it is pending gives that graph's backward the new values. `data`
// must be aligned for the dtype and hold shape.numel() elements; it may be null only for
// an empty shape. (Tensors made by xgrad start on a 64-byte line; a less aligned buffer
// may round reductions differently, never wrongly.)
Tensor from_blob(void* data, const Shape& shape, Dtype dtype);

// Uniform [low, high), normal(mean, std), integers [low, high) as int64.
Tensor rand(const Shape& shape, Dtype dtype = default_dtype(), Generator* gen = nullptr);
Tensor uniform(const Shape& shape, double low, double high, Dtype dtype = default_dtype(),
               Generator* gen = nullptr);
Tensor randn(const Shape& shape, Dtype dtype = default_dtype(), Generator* gen = nullptr);
Tensor normal(const Shape& shape, double mean, double std, Dtype dtype = default_dtype(),
              Generator* gen = nullptr);
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator* gen = nullptr);

}  // namespace xg
