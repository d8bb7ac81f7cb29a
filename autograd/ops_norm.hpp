#pragma once
// Fused layer ops: linear (the affine map of Linear, every projection in every model)
// and layer_norm. Each is one tape node with a hand-written backward, so a model's hot
// path costs one allocation and one GEMM per call instead of a chain of small ops.
#include "shape.hpp"
#include "tensor.hpp"

namespace xg {

// y = x · weightᵀ + bias.
//   x [*, in] (any number of leading dims, or 1-D [in]), weight [out, in] (PyTorch's
//   layout), bias [out] or undefined (no bias) -> y [*, out] ([out] for 1-D x).
// One GEMM with the transpose passed to BLAS (weight is never copied), the bias written
// into the output first and accumulated by the same GEMM. Backward: dx = g · W,
// dW = gᵀ · x, db = g summed over rows (one GEMM each). A wrong feature size, a weight
// that is not 2-D or a bias that is not [out] is a ShapeError; int64 or mixed dtypes a
// DtypeError. Empty batches work ([0, in] -> [0, out], zero weight gradients).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// Layer normalisation over the trailing dims given by normalized_shape:
//   y = (x - mean) / sqrt(var + eps) * weight + bias
// with mean and the biased variance taken over those dims for each leading index.
//   x [*, normalized_shape...], weight / bias: normalized_shape, or undefined (no
//   affine part; they are independent) -> y with x's shape.
// One node; backward: with xhat = (x - mean) * rstd, gh = g * weight,
//   dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), dweight = Σ g * xhat, dbias = Σ g.
// normalized_shape must be non-empty and equal x's trailing dims (ShapeError otherwise);
// eps must be >= 0 (Error). Statistics are accumulated in double.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);

}  // namespace xg
