#pragma once
// 2-D convolution and max pooling over NCHW images, each one tape node with a
// hand-written backward.
#include <cstdint>

#include "tensor.hpp"

namespace xg {

// A (height, width) pair. One integer n means (n, n), like PyTorch's `kernel_size=3`;
// `{3, 2}` gives height 3, width 2.
struct Size2 {
  std::int64_t h;
  std::int64_t w;
  constexpr Size2(std::int64_t n) : h(n), w(n) {}  // NOLINT: implicit, so `stride = 2` reads naturally
  constexpr Size2(std::int64_t height, std::int64_t width) : h(height), w(width) {}
  friend constexpr bool operator==(const Size2&, const Size2&) = default;
};

// Cross-correlation (what every framework calls convolution), PyTorch's conv2d:
//   y[b, o, i, j] = bias[o] + Σ_{c, u, v} weight[o, c, u, v] · xpad[b, c, i·sh + u, j·sw + v]
// with xpad = x zero-padded by padding.h rows and padding.w columns on each side.
//   x [B, C, H, W], weight [O, C, kh, kw], bias [O] or undefined (no bias)
//   -> y [B, O, Ho, Wo], Ho = (H + 2·ph - kh) / sh + 1, Wo = (W + 2·pw - kw) / sw + 1 (floor).
// im2col + one GEMM per image: cols [C·kh·kw, Ho·Wo] holds the receptive fields, and
// y_b [O, Ho·Wo] = weight [O, C·kh·kw] · cols (a 1x1 kernel with stride 1 and no padding
// skips im2col: x_b already is cols). The columns are rebuilt in backward rather than
// kept, so the node saves only x and weight. Backward per image: dW += g_b · colsᵀ
// (accumulated by the GEMM), dcols = Wᵀ · g_b scattered back by col2im, db = Σ g.
// Errors: x or weight not 4-D, channel mismatch, bias not [O], stride < 1, padding < 0,
// an empty kernel, or a kernel larger than the padded input: ShapeError naming the
// shapes; int64 or mixed dtypes: DtypeError. Empty batches give [0, O, Ho, Wo].
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), Size2 stride = 1,
              Size2 padding = 0);

// Max over kernel windows placed every `stride` (default: the kernel size), no padding:
//   x [B, C, H, W] -> y [B, C, Ho, Wo], Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1.
// The position of each window's maximum is saved for backward, which routes g there
// (summing where overlapping windows share a maximum). Ties go to the first maximum
// in row-major window order and a NaN counts as the maximum, like PyTorch.
// Errors: x not 4-D, kernel or stride < 1, kernel larger than the input: ShapeError;
// int64 input: DtypeError.
Tensor max_pool2d(const Tensor& x, Size2 kernel);
Tensor max_pool2d(const Tensor& x, Size2 kernel, Size2 stride);

}  // namespace xg
