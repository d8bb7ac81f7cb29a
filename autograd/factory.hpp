#pragma once
// Tensor factories. The floating ones use default_dtype() unless a dtype is given;
// the random ones draw from default_generator() unless a Generator is given.
#include <cstdint>
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

// Uniform [low, high), normal(mean, std), integers [low, high) as int64.
Tensor rand(const Shape& shape, Dtype dtype = default_dtype(), Generator* gen = nullptr);
Tensor uniform(const Shape& shape, double low, double high, Dtype dtype = default_dtype(),
               Generator* gen = nullptr);
Tensor randn(const Shape& shape, Dtype dtype = default_dtype(), Generator* gen = nullptr);
Tensor normal(const Shape& shape, double mean, double std, Dtype dtype = default_dtype(),
              Generator* gen = nullptr);
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator* gen = nullptr);

}  // namespace xg
