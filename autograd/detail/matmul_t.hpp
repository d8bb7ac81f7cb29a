#pragma once
// Private: a product with its transposes as flags, for the create_graph backwards of
// matmul and linear.
#include "../tensor.hpp"

namespace xg::detail {

// op(a) · op(b), where op(x) is x or, with its flag, x with its last two dims swapped;
// both 2-D, or both 3-D with the same batch size (one product per batch entry). The
// transposes go to the GEMM as flags, never into memory. Recorded as 'matmul_t'; its
// backward is matmul_t again (dA = G op(B)ᵀ, dB = op(A)ᵀ G, arranged by the flags), so it
// is differentiable to any order. ShapeError / DtypeError name 'matmul_t' and the shapes.
Tensor matmul_t(const Tensor& a, bool ta, const Tensor& b, bool tb);

}  // namespace xg::detail
