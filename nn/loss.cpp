#include "loss.hpp"

#include <fmt/format.h>

#include "../autograd/factory.hpp"
#include "detail/lengths.hpp"

namespace xg::nn {

Tensor CrossEntropyLoss::forward(const Tensor& logits, const Tensor& target) const {
  return cross_entropy(logits, target, options);
}

Tensor NLLLoss::forward(const Tensor& log_probs, const Tensor& target) const {
  return nll_loss(log_probs, target, options);
}

Tensor MSELoss::forward(const Tensor& input, const Tensor& target) const { return mse_loss(input, target, reduction); }

namespace {

// Both forms: `mask` (undefined or [B, T]) or `lengths` (null, or int64 [B] still to check).
Tensor temporal_ce(const Tensor& logits, const Tensor& targets, const Tensor& mask, const Tensor* lengths,
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
  const std::int64_t ig = options.ignore_index;
  std::vector<std::int64_t> len;
  if (lengths) len = lengths_internal::check_lengths(op, *lengths, B, T, 0);
  auto real = [&](std::int64_t i) { return !lengths || i % T < len[static_cast<std::size_t>(i / T)]; };
  // Check target ids here so the message gives the (b, t) position, not a flat row.
  // Targets past a sequence's length are padding: never read.
  const std::int64_t* tp = targets.data<std::int64_t>();
  for (std::int64_t i = 0; i < B * T; ++i) {
    if (real(i) && tp[i] != ig && (tp[i] < 0 || tp[i] >= V)) {
      throw IndexError(fmt::format("{}: target {} at (b={}, t={}) is out of range for V = {} classes (valid 0..{}, "
                                   "or ignore_index {})",
                                   op, tp[i], i / T, i % T, V, V - 1, ig));
    }
  }
  Tensor flat_targets = reshape(targets, Shape{B * T});
  if (lengths) {
    // Padding becomes ignore_index: cross_entropy skips those rows (no softmax, zero gradient).
    std::vector<std::int64_t> tv(tp, tp + B * T);
    for (std::int64_t i = 0; i < B * T; ++i) {
      if (!real(i)) tv[static_cast<std::size_t>(i)] = ig;
    }
    flat_targets = from_vector(tv, Shape{B * T});
  }
  const std::vector<std::int64_t> tv = flat_targets.to_vector<std::int64_t>();

  // Per-token losses [B*T], 0 (and no gradient) on ignored tokens.
  const Tensor rows = cross_entropy(reshape(logits, Shape{B * T, V}), flat_targets,
                                    {.ignore_index = ig,
                                     .reduction = Reduction::none,
                                     .weight = options.weight,
                                     .label_smoothing = options.label_smoothing});
  Tensor w;  // the mask as data in the logits' dtype (never differentiated)
  std::vector<double> mv;
  if (mask.defined()) {
    w = reshape(mask.detach().to(logits.dtype()), Shape{B * T});
    mv = w.to_vector<double>();
  }
  const std::vector<double> cw = options.weight.defined() ? options.weight.to_vector<double>() : std::vector<double>();
  // Each token's share of the denominators: mask * weight[target], 0 when ignored. Only
  // counted[i] says whether it counts at all (a class weight of 0 still counts as present).
  std::vector<double> share(static_cast<std::size_t>(B * T), 0.0);
  std::vector<char> counted(static_cast<std::size_t>(B * T), 0);
  double count = 0.0;
  for (std::int64_t i = 0; i < B * T; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (tv[u] == ig) continue;
    const double m = mv.empty() ? 1.0 : mv[u];
    share[u] = m * (cw.empty() ? 1.0 : cw[static_cast<std::size_t>(tv[u])]);
    counted[u] = m != 0.0;
    count += share[u];
  }
  if (options.reduction == TemporalReduction::mean_sequences) {
    // loss = 1/B' sum_b (sum_t mask l) / (sum_t share): one constant scale per token.
    std::vector<double> scale(static_cast<std::size_t>(B * T), 0.0);
    std::int64_t nonempty = 0;
    std::vector<double> denom(static_cast<std::size_t>(B), 0.0);
    std::vector<char> any(static_cast<std::size_t>(B), 0);
    for (std::int64_t i = 0; i < B * T; ++i) {
      denom[static_cast<std::size_t>(i / T)] += share[static_cast<std::size_t>(i)];
      any[static_cast<std::size_t>(i / T)] |= counted[static_cast<std::size_t>(i)];
    }
    for (std::int64_t b = 0; b < B; ++b) nonempty += any[static_cast<std::size_t>(b)] != 0;
    if (nonempty == 0) return div(sum(w.defined() ? mul(rows, w) : rows), 0.0);  // 0/0 = NaN, like mean_tokens
    for (std::int64_t i = 0; i < B * T; ++i) {
      const auto b = static_cast<std::size_t>(i / T);
      if (!any[b] || tv[static_cast<std::size_t>(i)] == ig) continue;
      const double m = mv.empty() ? 1.0 : mv[static_cast<std::size_t>(i)];
      scale[static_cast<std::size_t>(i)] = m / (denom[b] * static_cast<double>(nonempty));
    }
    return sum(mul(rows, from_vector(scale, Shape{B * T}).to(logits.dtype())));
  }
  const Tensor total = sum(w.defined() ? mul(rows, w) : rows);
  switch (options.reduction) {
    case TemporalReduction::sum: return total;
    case TemporalReduction::mean_batch: return div(total, static_cast<double>(B));
    case TemporalReduction::mean_tokens:
    case TemporalReduction::mean_sequences: break;
  }
  return div(total, count);  // 0 counted tokens: 0/0 = NaN, like PyTorch
}

}  // namespace

Tensor temporal_cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                              const TemporalCrossEntropyOptions& options) {
  return temporal_ce(logits, targets, mask, nullptr, options);
}

Tensor temporal_cross_entropy(const Tensor& logits, const Tensor& targets, const Lengths& lengths,
                              const TemporalCrossEntropyOptions& options) {
  return temporal_ce(logits, targets, Tensor(), &lengths.tensor, options);
}

Tensor TemporalCrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets, const Tensor& mask) const {
  return temporal_cross_entropy(logits, targets, mask, options);
}

Tensor TemporalCrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets, const Lengths& lengths) const {
  return temporal_cross_entropy(logits, targets, lengths, options);
}

}  // namespace xg::nn
