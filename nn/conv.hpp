#pragma once
// Convolution and pooling layers over NCHW images (the CNN encoder of an image-captioning
// model). Conv2d follows PyTorch's parameter names, shapes and default initialisation, so
// a PyTorch state_dict loads unchanged.
#include <cstdint>
#include <optional>

#include "../autograd/ops_conv.hpp"
#include "../autograd/tensor.hpp"
#include "module.hpp"

namespace xg::nn {

struct Conv2dOptions {
  std::int64_t in_channels = 0;   // must be set (>= 1)
  std::int64_t out_channels = 0;  // must be set (>= 1)
  Size2 kernel_size = 0;          // must be set: 3 or {3, 2} (height, width)
  Size2 stride = 1;
  Size2 padding = 0;              // zeros added on each side
  bool bias = true;
};

// y = conv2d(x, weight, bias, stride, padding): see xg::conv2d for the exact formula.
// Parameters (PyTorch's names, registration order): weight [out, in, kh, kw], bias [out]
// (absent when options.bias is false), both drawn from U(-1/√fan_in, 1/√fan_in) with
// fan_in = in·kh·kw — PyTorch's kaiming_uniform(a=√5) for the weight and its bias rule —
// in default_dtype() from default_generator().
class Conv2d : public Module {
 public:
  explicit Conv2d(const Conv2dOptions& options);
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, Size2 kernel_size, Size2 stride = 1, Size2 padding = 0,
         bool bias = true);

  // x [B, in, H, W] -> [B, out, (H + 2·ph - kh) / sh + 1, (W + 2·pw - kw) / sw + 1]
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const Conv2dOptions& options() const { return options_; }

  Tensor weight;
  Tensor bias;  // undefined without bias

 private:
  Conv2dOptions options_;
};

struct MaxPool2dOptions {
  Size2 kernel_size = 0;             // must be set: 2 or {2, 3}
  std::optional<Size2> stride = {};  // default: kernel_size (non-overlapping windows)
};

// Max over kernel_size windows every stride, no padding (xg::max_pool2d). No parameters.
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const MaxPool2dOptions& options);
  explicit MaxPool2d(Size2 kernel_size);
  MaxPool2d(Size2 kernel_size, Size2 stride);

  // x [B, C, H, W] -> [B, C, (H - kh) / sh + 1, (W - kw) / sw + 1]
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const MaxPool2dOptions& options() const { return options_; }

 private:
  MaxPool2dOptions options_;
};

}  // namespace xg::nn
