#pragma once
// Loss modules (thin wrappers over the fused ops in ops.hpp, for code that holds its loss
// as a member like PyTorch's nn.CrossEntropyLoss) and the masked temporal cross-entropy
// of sequence models: CS231n's temporal softmax loss over [B, T, V] logits.
#include <cstdint>

#include "../autograd/ops.hpp"
#include "../autograd/tensor.hpp"
#include "lengths.hpp"
#include "module.hpp"

namespace xg::nn {

// logits [N, C] (or [C]), target int64 [N] (or 0-d) -> loss (0-d, or [N] with none).
// Options: ignore_index, reduction, weight, label_smoothing (see xg::cross_entropy).
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
//   mean_sequences: each sequence's own mean_tokens (its sum / its counted tokens), then
//                the mean of those over the sequences that have a counted token: every
//                sequence weighs the same however long it is. A sequence with no counted
//                token (length 0, fully masked or ignored) is left out of the batch mean;
//                with none left the result is NaN (0/0), like mean_tokens.
// With class weights, "counted tokens" is the sum of mask * weight[target] over them, as
// in PyTorch's weighted mean (so mean_tokens equals cross_entropy's mean with weight on
// the [B*T, V] view, padding ignored).
enum class TemporalReduction { mean_tokens, sum, mean_batch, mean_sequences };

struct TemporalCrossEntropyOptions {
  // Targets equal to this are not counted (loss 0, no gradient), mask or no mask.
  std::int64_t ignore_index = -100;
  TemporalReduction reduction = TemporalReduction::mean_tokens;
  // Passed to cross_entropy: per-class weights [V] (logits' dtype, undefined = none) and
  // label smoothing in [0, 1], with PyTorch's semantics (see xg::cross_entropy).
  Tensor weight{};
  double label_smoothing = 0.0;
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
// The same with lengths instead of a mask: lengths int64 [B], token (b, t) counts when
// t < lengths[b]. Tokens past a sequence's length are ignored as ignore_index targets
// are: never read (their targets may hold anything, e.g. a padding id), no softmax is
// computed for them, and their logits get exactly zero gradient even if they hold NaN.
// A length of 0 is allowed (the sequence adds nothing; see mean_sequences); a length
// below 0 or above T, or lengths of the wrong shape or dtype, is an error naming the
// function, the shapes and the entry.
Tensor temporal_cross_entropy(const Tensor& logits, const Tensor& targets, const Lengths& lengths,
                              const TemporalCrossEntropyOptions& options = {});

class TemporalCrossEntropyLoss : public Module {
 public:
  explicit TemporalCrossEntropyLoss(const TemporalCrossEntropyOptions& options = {}) : options(options) {}
  // logits [B, T, V], targets int64 [B, T], optional mask [B, T] -> 0-d
  Tensor forward(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor()) const;
  Tensor operator()(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor()) const {
    return forward(logits, targets, mask);
  }
  // lengths int64 [B]: see temporal_cross_entropy.
  Tensor forward(const Tensor& logits, const Tensor& targets, const Lengths& lengths) const;
  Tensor operator()(const Tensor& logits, const Tensor& targets, const Lengths& lengths) const {
    return forward(logits, targets, lengths);
  }

  TemporalCrossEntropyOptions options;
};

}  // namespace xg::nn
