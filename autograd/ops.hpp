#pragma once
// Differentiable ops. Each is a free function: it computes its value, and when an input
// requires grad it records a node whose backward lives right below it in the .cpp.
// Binary elementwise ops broadcast like numpy; their backward sums back to each input's
// shape. Dims may be negative (counted from the end). Floating ops take f32 or f64
// (both inputs the same dtype, else DtypeError); index arguments are int64 tensors.
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "random.hpp"
#include "tensor.hpp"

namespace xg {

// ---- elementwise arithmetic -------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor rsub(double a, const Tensor& b);  // a - b
Tensor rdiv(double a, const Tensor& b);  // a / b
Tensor neg(const Tensor& x);
// Elementwise max/min of two tensors (gradient to the larger / smaller; ties split evenly).
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return div(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return add(b, a); }
inline Tensor operator-(double a, const Tensor& b) { return rsub(a, b); }
inline Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
inline Tensor operator/(double a, const Tensor& b) { return rdiv(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }

// ---- elementwise functions ----------------------------------------------------------
Tensor pow(const Tensor& x, double exponent);
Tensor sqrt(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
// Values outside [lo, hi] are clipped; the gradient is zero there.
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor clamp_min(const Tensor& x, double lo);
Tensor clamp_max(const Tensor& x, double hi);

// ---- comparisons (not differentiable; a bool tensor, as PyTorch) -----------------------
// Both tensors of one dtype (any: int64 compares as int64, so accuracy is
// sum(eq(argmax(..), target)), an int64 count). Against a number, floating tensors
// compare in their own precision, int64 and bool tensors as double. NaN: eq false, ne true.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor ne(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor ge(const Tensor& a, double b);
Tensor le(const Tensor& a, double b);
// On the truth values (nonzero, NaN included, is true) of any dtypes, broadcast -> bool.
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);

// ---- selection ---------------------------------------------------------------------
// cond ? a : b, elementwise with broadcasting of all three; cond is bool (or, as before
// bool existed, a number tensor read as nonzero-is-true).
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// x with `value` where mask is true (bool; a number mask: nonzero) (mask broadcasts to x).
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// ---- linear algebra -----------------------------------------------------------------
// [M,K] x [K,N] -> [M,N]; [B,M,K] x [B,K,N] -> [B,M,N]; [B,M,K] x [K,N] -> [B,M,N];
// [K] x [K,N] -> [N]; [M,K] x [K] -> [M].
Tensor matmul(const Tensor& a, const Tensor& b);
// The affine map of Linear and of every projection in every model, one node:
// y = x · weightᵀ + bias.
//   x [*, in] (any number of leading dims, or 1-D [in]), weight [out, in] (PyTorch's
//   layout), bias [out] or undefined (no bias) -> y [*, out] ([out] for 1-D x).
// One GEMM with the transpose passed to BLAS (weight is never copied), the bias written
// into the output first and accumulated by the same GEMM. Backward: dx = g · W,
// dW = gᵀ · x, db = g summed over rows (one GEMM each). A wrong feature size, a weight
// that is not 2-D or a bias that is not [out] is a ShapeError; int64 or mixed dtypes a
// DtypeError. Empty batches work ([0, in] -> [0, out], zero weight gradients).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- shape --------------------------------------------------------------------------
// One dim of the new shape may be -1 (inferred). Shares storage with x (a view).
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x, int start_dim = 0, int end_dim = -1);
Tensor transpose(const Tensor& x, int dim0, int dim1);
Tensor permute(const Tensor& x, const std::vector<int>& dims);
// Removes the given dim if its size is 1 (otherwise x's shape is kept, like PyTorch) / all
// size-1 dims.
Tensor squeeze(const Tensor& x, int dim);
Tensor squeeze(const Tensor& x);
Tensor unsqueeze(const Tensor& x, int dim);
// Elements [start, end) along dim (negative start/end count from the end, clamped
// like Python slicing).
Tensor slice(const Tensor& x, int dim, std::int64_t start, std::int64_t end);
// Elements [start, start + length) along dim; out of range is an IndexError.
Tensor narrow(const Tensor& x, int dim, std::int64_t start, std::int64_t length);
// Rows [start, start + length) of x along dim 0 as a view: shares x's storage (no copy,
// unlike narrow); its backward places g in those rows of a zero gradient. The q / k / v
// blocks of a packed projection weight. Out of range is an IndexError.
Tensor row_block(const Tensor& x, std::int64_t start, std::int64_t length);
// Index `index` along dim, which is removed.
Tensor select(const Tensor& x, int dim, std::int64_t index);
// Rows of x along dim picked by an int64 index tensor (any shape when dim is 0 and x is
// 2-D: the embedding lookup [*] -> [*, D]); otherwise index is 1-D. Off the embedding path
// a 0-d index acts like a 1-element index (the dim stays, size 1). Shape ops and
// index_select also take int64 tensors (no gradient).
Tensor index_select(const Tensor& x, int dim, const Tensor& index);
// The embedding lookup y[*, :] = weight[ids[*], :]: ids int64 of any shape [*], weight
// [V, D] -> [*, D]. Backward scatter-adds the rows of g at ids (repeats accumulate) and
// gives the padding_idx row (negative counts from the end) exactly zero gradient. An id
// outside [0, V) is an IndexError.
Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<std::int64_t> padding_idx = std::nullopt);
// out[i][j] = x[i][index[i][j]] (dim 1), index int64 with x's ndim.
Tensor gather(const Tensor& x, int dim, const Tensor& index);
Tensor concat(const std::vector<Tensor>& xs, int dim);
Tensor stack(const std::vector<Tensor>& xs, int dim);
// Pieces of `size` along dim (the last may be smaller) / `chunks` nearly equal pieces.
std::vector<Tensor> split(const Tensor& x, std::int64_t size, int dim);
std::vector<Tensor> chunk(const Tensor& x, std::int64_t chunks, int dim);
// Broadcast x to `shape` (a copy); its backward sums back.
Tensor broadcast_to(const Tensor& x, const Shape& shape);
// Sums x down to `shape`, which x broadcasts from (the backward of every broadcast).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- reductions ---------------------------------------------------------------------
Tensor sum(const Tensor& x);
// An empty dims list reduces over every dim (PyTorch's dim=[]).
Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);
// Max over all elements / along one dim. The gradient goes to the first maximum.
Tensor max(const Tensor& x);
Tensor max(const Tensor& x, int dim, bool keepdim = false);
// Index of the first maximum along dim, as int64 (not differentiable).
Tensor argmax(const Tensor& x, int dim, bool keepdim = false);
// log(sum(exp(x))) along dims, computed stably (max subtracted).
Tensor logsumexp(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);

// ---- softmax and losses -------------------------------------------------------------
Tensor softmax(const Tensor& x, int dim);
// Fused: x - logsumexp(x, dim), finite for logits of any size.
Tensor log_softmax(const Tensor& x, int dim);

enum class Reduction { none, mean, sum };

struct CrossEntropyOptions {
  // Targets equal to this contribute nothing and are not counted in the mean.
  std::int64_t ignore_index = -100;
  Reduction reduction = Reduction::mean;
  // Per-class weights [C] in the logits' dtype, or undefined (every class 1). A constant:
  // it gets no gradient. Entries must be finite and >= 0 (PyTorch takes negative ones,
  // which reward the model for being wrong on that class; xgrad refuses them).
  Tensor weight{};
  // In [0, 1]: the target becomes (1 - eps) onehot + eps / C, PyTorch's label_smoothing.
  double label_smoothing = 0.0;
};
// logits [N, C] (or [C]), target int64 [N] (or 0-d) of class indices. Fused
// log_softmax + nll: one node. mean divides by the number of non-ignored targets (with a
// weight: by the sum of weight[target] over them); with none (all ignored, or N == 0) it
// is NaN, like PyTorch. With weight w and label_smoothing eps, row i's loss is PyTorch's
//   (1 - eps) w[t] (-log p[t]) + eps / C * sum_c w[c] (-log p[c]),
// and the mean's denominator stays sum of w[t] (smoothing does not change it). A weight
// of the wrong shape or dtype is a ShapeError / DtypeError, a negative or non-finite
// weight and a label_smoothing outside [0, 1] (or NaN) an Error naming the value. none gives [N] (0-d for [C]
// logits), 0 on ignored rows. A target outside [0, C) other than ignore_index is an
// IndexError; [B,T,V] logits are a ShapeError (reshape to [B*T,V]; see temporal losses
// in nn for the masked [B,T,V] form).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts = {});
// log_probs [N, C] (or [C]), target int64 [N]: -log_probs[n, target[n]] (times
// weight[target[n]], and mean over the sum of those weights, with a weight). nll_loss
// has no label_smoothing (PyTorch's neither): a nonzero one is an Error.
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, const CrossEntropyOptions& opts = {});
// (a - b)^2, reduced; a and b must have the same shape. The mean of an empty tensor is NaN.
Tensor mse_loss(const Tensor& a, const Tensor& b, Reduction reduction = Reduction::mean);

// ---- regularisation -----------------------------------------------------------------
// Zeroes each element with probability p and scales the rest by 1/(1-p) when training;
// identity otherwise. p outside [0, 1] is an Error (checked in eval mode too); p == 1
// gives zeros.
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);

}  // namespace xg
