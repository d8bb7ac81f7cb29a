#include "conv.hpp"

#include <cmath>
#include <string>

#include <fmt/format.h>

#include "../backend/error.hpp"
#include "../autograd/factory.hpp"

namespace xg::nn {

namespace {

std::string pair_str(Size2 s) { return fmt::format("({}, {})", s.h, s.w); }

void check_options(const Conv2dOptions& o) {
  if (o.in_channels < 1 || o.out_channels < 1) {
    throw Error(fmt::format("Conv2d: in_channels ({}) and out_channels ({}) must be positive", o.in_channels,
                            o.out_channels));
  }
  if (o.kernel_size.h < 1 || o.kernel_size.w < 1) {
    throw Error(fmt::format("Conv2d: kernel_size {} must be positive", pair_str(o.kernel_size)));
  }
  if (o.stride.h < 1 || o.stride.w < 1) {
    throw Error(fmt::format("Conv2d: stride {} must be positive", pair_str(o.stride)));
  }
  if (o.padding.h < 0 || o.padding.w < 0) {
    throw Error(fmt::format("Conv2d: padding {} must be non-negative", pair_str(o.padding)));
  }
}

const MaxPool2dOptions& check_options(const MaxPool2dOptions& o) {
  if (o.kernel_size.h < 1 || o.kernel_size.w < 1) {
    throw Error(fmt::format("MaxPool2d: kernel_size {} must be positive", pair_str(o.kernel_size)));
  }
  if (o.stride && (o.stride->h < 1 || o.stride->w < 1)) {
    throw Error(fmt::format("MaxPool2d: stride {} must be positive", pair_str(*o.stride)));
  }
  return o;
}

}  // namespace

Conv2d::Conv2d(const Conv2dOptions& options) : options_(options) {
  check_options(options_);
  const auto [kh, kw] = options_.kernel_size;
  const std::int64_t fan_in = options_.in_channels * kh * kw;
  // kaiming_uniform(a=√5): gain √(2/(1+5)) times √(3/fan_in) is exactly 1/√fan_in, the
  // same bound PyTorch uses for the bias.
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight = register_parameter(
      "weight", uniform(Shape{options_.out_channels, options_.in_channels, kh, kw}, -bound, bound));
  if (options_.bias) bias = register_parameter("bias", uniform(Shape{options_.out_channels}, -bound, bound));
}

Conv2d::Conv2d(std::int64_t in_channels, std::int64_t out_channels, Size2 kernel_size, Size2 stride, Size2 padding,
               bool bias)
    : Conv2d(Conv2dOptions{.in_channels = in_channels,
                           .out_channels = out_channels,
                           .kernel_size = kernel_size,
                           .stride = stride,
                           .padding = padding,
                           .bias = bias}) {}

Tensor Conv2d::forward(const Tensor& x) const {
  if (!x.defined()) throw StateError("Conv2d: the input is an undefined tensor");
  if (x.ndim() != 4 || x.shape()[1] != options_.in_channels) {
    throw ShapeError(fmt::format("Conv2d: input {}: expected [B, {}, H, W] ({} input channels)", x.shape().str(),
                                 options_.in_channels, options_.in_channels));
  }
  return conv2d(x, weight, bias, options_.stride, options_.padding);
}

MaxPool2d::MaxPool2d(const MaxPool2dOptions& options) : options_(check_options(options)) {}

MaxPool2d::MaxPool2d(Size2 kernel_size) : MaxPool2d(MaxPool2dOptions{.kernel_size = kernel_size}) {}

MaxPool2d::MaxPool2d(Size2 kernel_size, Size2 stride)
    : MaxPool2d(MaxPool2dOptions{.kernel_size = kernel_size, .stride = stride}) {}

Tensor MaxPool2d::forward(const Tensor& x) const {
  if (!x.defined()) throw StateError("MaxPool2d: the input is an undefined tensor");
  return max_pool2d(x, options_.kernel_size, options_.stride.value_or(options_.kernel_size));
}

}  // namespace xg::nn
