#pragma once
// Loss modules (thin wrappers over the fused ops in ops.hpp, for code that holds its loss
// as a member like PyTorch's nn.CrossEntropyLoss) and the masked temporal cross-entropy
// of sequence models: CS231n's temporal softmax loss over [B, T, V] logits.
#include <cstdint>

#include "../autograd/ops.hpp"
#include "../autograd/tensor.hpp"
#include "module.hpp"

namespace xg::nn {

// logits [N, C] (or [C]), target int64 [N] (or 0-d) -> loss (0-d, or [N] with none).
// Options: ignore_index, reduction (see xg::cross_entropy).
class CrossEntropyLoss : public Module {
 public:
  explicit CrossEntropyLoss(const CrossEntropyOptions& options = {}) : options(options) {}
  Tensor forward(const Tensor& logits, const Tensor& target) const;
  Tensor operator()(const Tensor& logits, const Tensor& target) const { return forward(logits, target); }

  CrossEntropyOptions options;
};

// log_probs [N, C] (or [C]), target int64 [N] (or 0-d): -log_probs[n, target[n]], reduced.
class NLLLoss : public Module {
 public:
  explicit NLLLoss(const CrossEntropyOptions& options = {}) : options(options) {}
  Tensor forward(const Tensor& log_probs, const Tensor& target) const;
  Tensor operator()(const Tensor& log_probs, const Tensor& target) const { return forward(log_probs, target); }

  CrossEntropyOptions options;
};

// (input - target)^2 reduced; both the same shape.
class MSELoss : public Module {
 public:
  explicit MSELoss(Reduction reduction = Reduction::mean) : reduction(reduction) {}
  Tensor forward(const Tensor& input, const Tensor& target) const;
  Tensor operator()(const Tensor& input, const Tensor& target) const { return forward(input, target); }

  Reduction reduction;
};

// ---- temporal (sequence) cross-entropy ------------------------------------------------

// How the per-token losses l[b, t] (already multiplied by the mask) become one number:
//   mean_tokens: sum / (number of counted tokens), PyTorch's mean with ignore_index; with
//                a fractional mask, sum / (sum of the mask over non-ignored tokens).
//                No counted token at all gives NaN (0/0), like PyTorch.
//   sum:         sum over b and t.
//   mean_batch:  sum / B: summed over time, averaged over the batch. This is CS231n's
//                temporal_softmax_loss (and min-char-rnn's per-sequence loss); its
//                gradient does not shrink as sequences get longer.
enum class TemporalReduction { mean_tokens, sum, mean_batch };

struct TemporalCrossEntropyOptions {
  // Targets equal to this are not counted (loss 0, no gradient), mask or no mask.
  std::int64_t ignore_index = -100;
  TemporalReduction reduction = TemporalReduction::mean_tokens;
};

// Masked cross-entropy over a batch of sequences.
//   logits [B, T, V], targets int64 [B, T] of class ids in [0, V) (or ignore_index),
//   mask: undefined (every non-ignored token counts) or [B, T], 1 = counts, 0 = padding
//   (float of any dtype, or int64 0/1; fractional values weight the token).
//   -> 0-d loss.
// Computed as cross_entropy on the [B*T, V] view with reduction none (one fused node),
// times the flattened mask, summed and scaled: gradients are exact and masked tokens get
// exactly zero. A wrong rank or mismatched shapes are ShapeErrors naming the shapes; a
// target outside [0, V) is an IndexError naming it and its (b, t) position.
// T == 0 (empty sequences) gives 0 for sum / mean_batch and NaN for mean_tokens; B == 0
// gives 0 for sum and NaN (0/0) for both means.
Tensor temporal_cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor(),
                              const TemporalCrossEntropyOptions& options = {});

class TemporalCrossEntropyLoss : public Module {
 public:
  explicit TemporalCrossEntropyLoss(const TemporalCrossEntropyOptions& options = {}) : options(options) {}
  // logits [B, T, V], targets int64 [B, T], optional mask [B, T] -> 0-d
  Tensor forward(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor()) const;
  Tensor operator()(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor()) const {
    return forward(logits, targets, mask);
  }

  TemporalCrossEntropyOptions options;
};

}  // namespace xg::nn
