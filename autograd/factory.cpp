#include "factory.hpp"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "detail/tensor_impl.hpp"

namespace xg {

namespace {

template <class F>
Tensor fill_with(const char* op, const Shape& shape, Dtype dtype, F&& value_at) {
  checked_numel(op, shape);
  Tensor t = Tensor::empty(shape, dtype);
  const std::int64_t n = t.numel();
  switch (dtype) {
    case Dtype::f32: {
      float* p = t.data<float>();
      for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value_at(i));
      break;
    }
    case Dtype::f64: {
      double* p = t.data<double>();
      for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(value_at(i));
      break;
    }
    case Dtype::i64: {
      std::int64_t* p = t.data<std::int64_t>();
      for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<std::int64_t>(value_at(i));
      break;
    }
    case Dtype::b8: {
      // full(shape, v, b8) holds v != 0, as .to(b8) would make it.
      bool* p = t.data<bool>();
      for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<bool>(value_at(i));
      break;
    }
  }
  return t;
}

void check_float_dtype(const char* op, Dtype d) {
  if (!is_floating(d)) throw DtypeError(fmt::format("{}: needs a float32 or float64 dtype, got {}", op, dtype_name(d)));
}

template <class T>
Tensor from_values(const std::vector<T>& values, const Shape& shape) {
  checked_numel("from_vector", shape);
  if (shape.numel() != static_cast<std::int64_t>(values.size())) {
    throw ShapeError(fmt::format("from_vector: {} values do not fill shape {} ({} elements)", values.size(),
                                 shape.str(), shape.numel()));
  }
  Tensor t = Tensor::empty(shape, dtype_of<T>());
  if (!values.empty()) std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(T));
  return t;
}

Tensor full_impl(const char* op, const Shape& shape, double value, Dtype dtype) {
  return fill_with(op, shape, dtype, [value](std::int64_t) { return value; });
}

Tensor uniform_impl(const char* op, const Shape& shape, double low, double high, Dtype dtype, Generator* gen) {
  check_float_dtype(op, dtype);
  if (!(low <= high)) throw Error(fmt::format("{}: low {} > high {}", op, low, high));
  Generator& g = gen ? *gen : default_generator();
  return fill_with(op, shape, dtype, [&g, low, high](std::int64_t) { return low + (high - low) * g.uniform(); });
}

Tensor normal_impl(const char* op, const Shape& shape, double mean, double std, Dtype dtype, Generator* gen) {
  check_float_dtype(op, dtype);
  if (!(std >= 0.0)) throw Error(fmt::format("{}: std must be >= 0, got {}", op, std));
  Generator& g = gen ? *gen : default_generator();
  return fill_with(op, shape, dtype, [&g, mean, std](std::int64_t) { return mean + std * g.normal(); });
}

}  // namespace

Tensor zeros(const Shape& shape, Dtype dtype) { return full_impl("zeros", shape, 0.0, dtype); }
Tensor ones(const Shape& shape, Dtype dtype) { return full_impl("ones", shape, 1.0, dtype); }
Tensor full(const Shape& shape, double value, Dtype dtype) { return full_impl("full", shape, value, dtype); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype()); }
Tensor full_like(const Tensor& t, double value) { return full(t.shape(), value, t.dtype()); }
Tensor scalar(double value, Dtype dtype) { return full(Shape{}, value, dtype); }

Tensor arange(double end, Dtype dtype) { return arange(0.0, end, 1.0, dtype); }
Tensor arange(double start, double end, double step, Dtype dtype) {
  if (step == 0.0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step)) {
    throw Error(fmt::format("arange: invalid range start={} end={} step={}", start, end, step));
  }
  const double count = std::ceil((end - start) / step);
  // Checked as a double: converting a count past int64 to an integer is undefined.
  if (!(count <= static_cast<double>(kMaxNumel))) {
    throw ShapeError(fmt::format("arange: start={} end={} step={} gives {} elements, more than 2^60 (xgrad's limit "
                                 "per tensor)",
                                 start, end, step, count));
  }
  const auto n = static_cast<std::int64_t>(std::max(0.0, count));
  return fill_with("arange", Shape{n}, dtype, [start, step](std::int64_t i) { return start + step * static_cast<double>(i); });
}

Tensor eye(std::int64_t n, Dtype dtype) {
  if (n < 0) throw ShapeError(fmt::format("eye: negative size {}", n));
  return fill_with("eye", Shape{n, n}, dtype, [n](std::int64_t i) { return i / n == i % n ? 1.0 : 0.0; });
}

Tensor from_vector(const std::vector<float>& v, const Shape& shape) { return from_values(v, shape); }
Tensor from_vector(const std::vector<double>& v, const Shape& shape) { return from_values(v, shape); }
Tensor from_vector(const std::vector<std::int64_t>& v, const Shape& shape) { return from_values(v, shape); }
Tensor from_vector(const std::vector<float>& v) { return from_values(v, Shape{static_cast<std::int64_t>(v.size())}); }
Tensor from_vector(const std::vector<double>& v) { return from_values(v, Shape{static_cast<std::int64_t>(v.size())}); }
Tensor from_vector(const std::vector<std::int64_t>& v) {
  return from_values(v, Shape{static_cast<std::int64_t>(v.size())});
}
Tensor from_vector(const std::vector<double>& v, const Shape& shape, Dtype dtype) {
  return from_values(v, shape).to(dtype);
}

Tensor from_vector(const std::vector<bool>& v, const Shape& shape) {
  checked_numel("from_vector", shape);
  if (shape.numel() != static_cast<std::int64_t>(v.size())) {
    throw ShapeError(fmt::format("from_vector: {} values do not fill shape {} ({} elements)", v.size(), shape.str(),
                                 shape.numel()));
  }
  Tensor t = Tensor::empty(shape, Dtype::b8);
  bool* p = t.data<bool>();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = v[i];
  return t;
}
Tensor from_vector(const std::vector<bool>& v) { return from_vector(v, Shape{static_cast<std::int64_t>(v.size())}); }
Tensor from_vector(std::initializer_list<bool> v, const Shape& shape) { return from_vector(std::vector<bool>(v), shape); }
Tensor from_vector(std::initializer_list<bool> v) { return from_vector(std::vector<bool>(v)); }

Tensor from_blob(void* data, const Shape& shape, Dtype dtype) {
  const std::int64_t n = checked_numel("from_blob", shape);
  if (data == nullptr && n > 0) {
    throw Error(fmt::format("from_blob: null pointer for {} {} ({} elements)", dtype_name(dtype), shape.str(), n));
  }
  if (reinterpret_cast<std::uintptr_t>(data) % dtype_size(dtype) != 0) {
    throw Error(fmt::format("from_blob: address {} is not aligned to {} bytes, as {} needs", data,
                            dtype_size(dtype), dtype_name(dtype)));
  }
  // An owner that frees nothing: the caller keeps the buffer alive (see factory.hpp).
  // (The storage owns only the version counter; see StorageHeader.)
  auto header = std::make_shared<StorageHeader>();
  header->external = true;
  std::shared_ptr<void> storage = std::move(header);
  return Tensor(detail::make_impl(shape, dtype, std::move(storage), data));
}

Tensor rand(const Shape& shape, Dtype dtype, Generator* gen) { return uniform_impl("rand", shape, 0.0, 1.0, dtype, gen); }

Tensor uniform(const Shape& shape, double low, double high, Dtype dtype, Generator* gen) {
  return uniform_impl("uniform", shape, low, high, dtype, gen);
}

Tensor randn(const Shape& shape, Dtype dtype, Generator* gen) { return normal_impl("randn", shape, 0.0, 1.0, dtype, gen); }

Tensor normal(const Shape& shape, double mean, double std, Dtype dtype, Generator* gen) {
  return normal_impl("normal", shape, mean, std, dtype, gen);
}

Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, Generator* gen) {
  if (low >= high) throw Error(fmt::format("randint: empty range [{}, {})", low, high));
  Generator& g = gen ? *gen : default_generator();
  return fill_with("randint", shape, Dtype::i64, [&g, low, high](std::int64_t) { return g.randint(low, high); });
}

}  // namespace xg
