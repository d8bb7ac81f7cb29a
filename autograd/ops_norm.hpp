#pragma once
// layer_norm: one tape node with a hand-written backward, so a model's hot path costs
// one allocation per call instead of a chain of small ops.
#include "ops.hpp"  // linear, which this header declared before it moved beside matmul
#include "shape.hpp"
#include "tensor.hpp"

namespace xg {

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
