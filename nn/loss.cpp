#include "loss.hpp"

#include <fmt/format.h>

#include "../autograd/factory.hpp"

namespace xg::nn {

Tensor CrossEntropyLoss::forward(const Tensor& logits, const Tensor& target) const {
  return cross_entropy(logits, target, options);
}

Tensor NLLLoss::forward(const Tensor& log_probs, const Tensor& target) const {
  return nll_loss(log_probs, target, options);
}

Tensor MSELoss::forward(const Tensor& input, const Tensor& target) const { return mse_loss(input, target, reduction); }

Tensor temporal_cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                              const TemporalCrossEntropyOptions& options) {
  constexpr const char* op = "temporal_cross_entropy";
  if (!logits.defined() || !targets.defined()) {
    throw StateError(fmt::format("{}: logits and targets must be defined tensors", op));
  }
  if (!is_floating(logits.dtype())) {
    throw DtypeError(fmt::format("{}: logits must be float32 or float64, got {} {}", op, dtype_name(logits.dtype()),
                                 logits.shape().str()));
  }
  if (targets.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("{}: targets must be int64 class ids, got {} {}", op, dtype_name(targets.dtype()),
                                 targets.shape().str()));
  }
  const Shape& ls = logits.shape();
  if (ls.size() != 3) throw ShapeError(fmt::format("{}: logits {} must be [B, T, V]", op, ls.str()));
  const std::int64_t B = ls[0], T = ls[1], V = ls[2];
  if (targets.shape() != Shape{B, T}) {
    throw ShapeError(
        fmt::format("{}: logits {} and targets {}: targets must be [B, T] = [{},{}]", op, ls.str(), targets.shape().str(), B, T));
  }
  if (mask.defined() && mask.shape() != Shape{B, T}) {
    throw ShapeError(
        fmt::format("{}: logits {} and mask {}: the mask must be [B, T] = [{},{}]", op, ls.str(), mask.shape().str(), B, T));
  }
  // Check target ids here so the message gives the (b, t) position, not a flat row.
  const std::int64_t* tp = targets.data<std::int64_t>();
  for (std::int64_t i = 0; i < B * T; ++i) {
    if (tp[i] != options.ignore_index && (tp[i] < 0 || tp[i] >= V)) {
      throw IndexError(fmt::format("{}: target {} at (b={}, t={}) is out of range for V = {} classes (valid 0..{}, "
                                   "or ignore_index {})",
                                   op, tp[i], i / T, i % T, V, V - 1, options.ignore_index));
    }
  }

  // Per-token losses [B*T], 0 (and no gradient) on ignored tokens.
  const Tensor rows = cross_entropy(reshape(logits, Shape{B * T, V}), reshape(targets, Shape{B * T}),
                                    {.ignore_index = options.ignore_index, .reduction = Reduction::none});
  Tensor w;  // the mask as data in the logits' dtype (never differentiated)
  double count = 0.0;  // counted tokens (sum of mask weights over non-ignored tokens)
  if (mask.defined()) {
    w = reshape(mask.detach().to(logits.dtype()), Shape{B * T});
    const std::vector<double> mv = w.to_vector<double>();
    for (std::int64_t i = 0; i < B * T; ++i) {
      if (tp[i] != options.ignore_index) count += mv[static_cast<std::size_t>(i)];
    }
  } else {
    for (std::int64_t i = 0; i < B * T; ++i) count += tp[i] != options.ignore_index;
  }
  const Tensor total = sum(w.defined() ? mul(rows, w) : rows);
  switch (options.reduction) {
    case TemporalReduction::sum: return total;
    case TemporalReduction::mean_batch: return div(total, static_cast<double>(B));
    case TemporalReduction::mean_tokens: break;
  }
  return div(total, count);  // 0 counted tokens: 0/0 = NaN, like PyTorch
}

Tensor TemporalCrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets, const Tensor& mask) const {
  return temporal_cross_entropy(logits, targets, mask, options);
}

}  // namespace xg::nn
