#pragma once
// Private: what the recurrent modules (rnn.cpp) and cells (rnn_cell.cpp) share: parameter
// fills written in place (handles held elsewhere stay valid) and argument checks. Not
// installed.
#include <cstdint>

#include <fmt/format.h>

#include "../../autograd/random.hpp"
#include "../../autograd/tensor.hpp"

namespace xg::nn::detail {

template <class F>
void fill(Tensor& t, F&& value_at) {
  if (t.dtype() == Dtype::f32) {
    float* p = t.data<float>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(value_at(i));
  } else {
    double* p = t.data<double>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = value_at(i);
  }
}

inline void fill_uniform(Tensor& t, double bound) {
  Generator& gen = default_generator();
  fill(t, [&](std::int64_t) { return -bound + 2.0 * bound * gen.uniform(); });
}

inline void fill_value(Tensor& t, double v) {
  fill(t, [v](std::int64_t) { return v; });
}

// Adds v to elements [start, start + len) of a 1-D tensor.
inline void add_to_range(Tensor& t, std::int64_t start, std::int64_t len, double v) {
  if (t.dtype() == Dtype::f32) {
    float* p = t.data<float>();
    for (std::int64_t i = start; i < start + len; ++i) p[i] += static_cast<float>(v);
  } else {
    double* p = t.data<double>();
    for (std::int64_t i = start; i < start + len; ++i) p[i] += v;
  }
}

inline void check_size(const char* name, const char* what, std::int64_t v) {
  if (v <= 0) throw Error(fmt::format("{}: {} must be positive, got {}", name, what, v));
}

inline void check_dtype(const char* name, const char* what, const Tensor& t, Dtype params) {
  if (!is_floating(t.dtype()) || t.dtype() != params) {
    throw DtypeError(fmt::format("{}: {} is {} {} but the parameters are {} (convert with .to(), or module.to())",
                                 name, what, dtype_name(t.dtype()), t.shape().str(), dtype_name(params)));
  }
}

}  // namespace xg::nn::detail
