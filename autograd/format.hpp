#pragma once
// fmt::format("{}", tensor) prints values, dtype and shape (abbreviated when large):
//   tensor([[1.0000, 2.0000],
//           [3.0000, 4.0000]], dtype=float32, shape=[2,2], requires_grad=True)
#include <iosfwd>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "gradcheck.hpp"
#include "shape.hpp"
#include "tensor.hpp"

namespace xg {
// Up to `edge` values are shown at each end of every dimension past 2*edge values;
// edge <= 0 prints every value.
std::string to_string(const Tensor& t, int edge = 3);

// `std::cout << t` prints what fmt::format("{}", t) does; Dtype prints as "float32",
// Shape as "[2,3]".
std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::ostream& operator<<(std::ostream& os, Dtype d);
std::ostream& operator<<(std::ostream& os, const Shape& s);
}  // namespace xg

// fmt::format("{}", t.dtype()) == "float32" (PyTorch's names: float32, float64, int64).
template <>
struct fmt::formatter<xg::Dtype> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(xg::Dtype d, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(xg::dtype_name(d), ctx);
  }
};

template <>
struct fmt::formatter<xg::Tensor> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const xg::Tensor& t, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(xg::to_string(t), ctx);
  }
};

template <>
struct fmt::formatter<xg::Shape> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const xg::Shape& s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(s.str(), ctx);
  }
};

template <>
struct fmt::formatter<xg::GradcheckReport> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const xg::GradcheckReport& r, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(r.str(), ctx);
  }
};
