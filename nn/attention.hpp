#pragma once
// Attention: AdditiveAttention (Bahdanau), DotAttention (Luong dot / general, and scaled
// dot product), MultiheadAttention (PyTorch's parameters and layout). Each forward
// returns {context, weights}.
//
// Masks. AdditiveAttention and DotAttention take `mask` [B, L] with nonzero = KEEP (the
// usual "lengths" mask of a padded batch, e.g. nn::utils::lengths_to_mask); MultiheadAttention
// follows PyTorch, whose key_padding_mask [B, S] has true = IGNORE. Either way a masked
// position gets a weight of exactly 0 (not exp(-1e9)) and no gradient. Masks are bool
// (true / false), or float32, float64 or int64 read as nonzero = true, and are constants
// (they get no gradient).
//
// Lengths. Each module also takes the key lengths of a padded batch instead of a mask
// (nn::Lengths, int64 [B]: key l of entry b is kept when l < lengths[b]), so an
// encoder-decoder passes the source lengths it gave the encoder: AdditiveAttention and
// DotAttention through a forward overload, MultiheadAttention through
// MultiheadAttentionForwardOptions::key_lengths. The result equals passing the mask built
// from them. A length of 0 (nothing to attend to) or above L, and lengths of the wrong
// shape or dtype, are errors naming the module, the shapes and the entry.
//
// A row whose every position is masked is an xg::Error naming the row. PyTorch returns
// NaN weights there, which then poison the loss and every gradient silently; an empty
// softmax has no meaning, so we say so at the call that made it. The same holds for a
// zero-length key sequence (S = 0): a ShapeError.
//
// Cost. Scores and contexts are batched GEMMs over (batch, head) that read the heads
// in place through leading dimensions: no transposed or head-split copies are made,
// and scaling, masking and softmax happen in one pass over the scores.
#include <cstdint>
#include <memory>

#include "../autograd/ops_attention.hpp"
#include "../autograd/tensor.hpp"
#include "layers.hpp"
#include "lengths.hpp"
#include "module.hpp"

namespace xg::nn {

// What every attention module returns. weights rows sum to 1 over the attended positions.
struct AttentionOutput {
  Tensor context;
  Tensor weights;
};

// The ops behind these modules (masked_softmax, additive_scores, attention_probs,
// attention_apply) are in autograd/ops_attention.hpp; these names stay for code that
// called them through nn.
using xg::additive_scores;
using xg::masked_softmax;

// ---- AdditiveAttention (Bahdanau) ---------------------------------------------------

struct AdditiveAttentionOptions {
  std::int64_t query_size = 0;   // Dq
  std::int64_t key_size = 0;     // Dk
  std::int64_t hidden_size = 0;  // A, the width of the tanh layer
  bool bias = false;             // a bias [A] added with the query projection
};

// score(q, k) = vᵀ tanh(w_query q + w_key k [+ bias]); weights = softmax over L;
// context = Σ_l weights[l] · values[l].
//   w_query [A, Dq], w_key [A, Dk], v [A], bias [A] (with options.bias).
//   Init: PyTorch's Linear default for the Linear each parameter belongs to: w_query ~
//   U(±1/sqrt(Dq)), w_key ~ U(±1/sqrt(Dk)), v ~ U(±1/sqrt(A)) (a Linear(A, 1)), bias ~
//   U(±1/sqrt(Dq)) (the query Linear's bias).
// In a decoder loop the keys (encoder outputs) do not change between steps: project
// them once with precompute_keys and pass the result to forward at every step.
class AdditiveAttention : public Module {
 public:
  explicit AdditiveAttention(const AdditiveAttentionOptions& options);
  AdditiveAttention(std::int64_t query_size, std::int64_t key_size, std::int64_t hidden_size);

  // The keys with their projection w_key · k: [B, L, Dk] -> projected [B, L, A].
  struct Keys {
    Tensor keys;       // [B, L, Dk] (the default values)
    Tensor projected;  // [B, L, A]
  };
  Keys precompute_keys(const Tensor& keys) const;

  // query [B, Dq], keys [B, L, Dk], values [B, L, Dv] (undefined = keys), mask [B, L]
  // (nonzero = keep, or undefined) -> context [B, Dv], weights [B, L].
  // Wrong sizes (query or key features, batch, L of values vs keys, mask shape) are
  // ShapeErrors naming the module and the shapes; dtypes other than the parameters'
  // a DtypeError; L = 0 or a fully masked row an Error.
  AttentionOutput forward(const Tensor& query, const Tensor& keys, const Tensor& values = Tensor(),
                          const Tensor& mask = Tensor()) const;
  AttentionOutput forward(const Tensor& query, const Keys& keys, const Tensor& values = Tensor(),
                          const Tensor& mask = Tensor()) const;
  AttentionOutput operator()(const Tensor& query, const Tensor& keys, const Tensor& values = Tensor(),
                             const Tensor& mask = Tensor()) const {
    return forward(query, keys, values, mask);
  }
  AttentionOutput operator()(const Tensor& query, const Keys& keys, const Tensor& values = Tensor(),
                             const Tensor& mask = Tensor()) const {
    return forward(query, keys, values, mask);
  }
  // The same with key lengths (int64 [B], each in [1, L]) in place of the mask.
  AttentionOutput forward(const Tensor& query, const Tensor& keys, const Tensor& values, const Lengths& lengths) const;
  AttentionOutput forward(const Tensor& query, const Keys& keys, const Tensor& values, const Lengths& lengths) const;
  AttentionOutput operator()(const Tensor& query, const Tensor& keys, const Tensor& values,
                             const Lengths& lengths) const {
    return forward(query, keys, values, lengths);
  }
  AttentionOutput operator()(const Tensor& query, const Keys& keys, const Tensor& values,
                             const Lengths& lengths) const {
    return forward(query, keys, values, lengths);
  }

  void reset_parameters();

  AdditiveAttentionOptions options;
  Tensor w_query;
  Tensor w_key;
  Tensor bias;  // undefined unless options.bias
  Tensor v;
};

// ---- DotAttention (Luong; scaled dot product) ---------------------------------------

enum class DotScore {
  dot,      // qᵀ k
  general,  // qᵀ W k   (W = weight [Dk, Dq], applied to the query: (W q)ᵀ k)
  scaled,   // qᵀ k / sqrt(Dk)
};

struct DotAttentionOptions {
  DotScore mode = DotScore::dot;
  // general: the sizes of the weight (required). dot / scaled: if nonzero, the feature
  // size queries and keys must have (checked at forward); 0 accepts any equal sizes.
  std::int64_t query_size = 0;
  std::int64_t key_size = 0;
};

// weights = softmax over L of score(q, k); context = Σ_l weights[l] · values[l].
// general: weight [Dk, Dq] with PyTorch's Linear init U(-1/sqrt(Dq), 1/sqrt(Dq)); dot and
// scaled have no parameters.
class DotAttention : public Module {
 public:
  explicit DotAttention(const DotAttentionOptions& options = {});
  explicit DotAttention(DotScore mode, std::int64_t query_size = 0, std::int64_t key_size = 0);

  // query [B, Dq] or [B, Tq, Dq]; keys [B, L, Dk]; values [B, L, Dv] (undefined = keys);
  // mask [B, L] (nonzero = keep; the same for every query of a batch entry) ->
  //   [B, Dq] query:      context [B, Dv],     weights [B, L]
  //   [B, Tq, Dq] query:  context [B, Tq, Dv], weights [B, Tq, L]
  // dot / scaled need Dq == Dk. Errors as for AdditiveAttention.
  AttentionOutput forward(const Tensor& query, const Tensor& keys, const Tensor& values = Tensor(),
                          const Tensor& mask = Tensor()) const;
  AttentionOutput operator()(const Tensor& query, const Tensor& keys, const Tensor& values = Tensor(),
                             const Tensor& mask = Tensor()) const {
    return forward(query, keys, values, mask);
  }
  // The same with key lengths (int64 [B], each in [1, L]) in place of the mask.
  AttentionOutput forward(const Tensor& query, const Tensor& keys, const Tensor& values, const Lengths& lengths) const;
  AttentionOutput operator()(const Tensor& query, const Tensor& keys, const Tensor& values,
                             const Lengths& lengths) const {
    return forward(query, keys, values, lengths);
  }

  void reset_parameters();

  DotAttentionOptions options;
  Tensor weight;  // general only: [Dk, Dq]
};

// ---- MultiheadAttention -------------------------------------------------------------

struct MultiheadAttentionOptions {
  std::int64_t embed_dim = 0;  // E
  std::int64_t num_heads = 1;  // H; E must be divisible by H
  double dropout = 0.0;        // on the attention weights, in training mode
  bool bias = true;            // in_proj_bias and out_proj.bias
  std::int64_t kdim = 0;       // key feature size (0 = E)
  std::int64_t vdim = 0;       // value feature size (0 = E)
  bool batch_first = false;    // [B, L, E] instead of PyTorch's default [L, B, E]
};

struct MultiheadAttentionForwardOptions {
  // [B, S]: true (bool; nonzero for other dtypes) = ignore this key, as PyTorch.
  Tensor key_padding_mask{};
  // [L, S], or [B*H, L, S] (one per batch entry and head, b major, like PyTorch).
  // float32 / float64: ADDED to the scaled scores (-inf forbids a pair); bool (or int64,
  // nonzero = true): true = this pair may not attend, as PyTorch. No gradient flows into it.
  Tensor attn_mask{};
  bool need_weights = true;          // false: weights is undefined
  bool average_attn_weights = true;  // weights [B, L, S] averaged over heads, else [B, H, L, S]
  // int64 [B], each in [1, S]: key s of entry b is ignored when s >= key_lengths[b]. The
  // same as the key_padding_mask built from them; giving both is an Error (pass one).
  Tensor key_lengths{};
};

// PyTorch's torch.nn.MultiheadAttention (without add_bias_kv / add_zero_attn):
//   q = query W_qᵀ + b_q, k = key W_kᵀ + b_k, v = value W_vᵀ + b_v   (per head h of width
//   E/H) weights_h = softmax(q_h k_hᵀ / sqrt(E/H) + masks), ctx_h = dropout(weights_h) v_h,
//   output = concat_h(ctx_h) out_projᵀ + out_proj.bias.
// Parameters (names, shapes and order as PyTorch's named_parameters):
//   in_proj_weight [3E, E] (rows: W_q, W_k, W_v) when kdim == vdim == E, otherwise
//   q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim];
//   in_proj_bias [3E] (with bias); out_proj.weight [E, E], out_proj.bias [E] (a Linear).
// Init (PyTorch's _reset_parameters): xavier_uniform on in_proj_weight (or each of
// q/k/v_proj_weight), zeros for in_proj_bias and out_proj.bias, Linear's default
// U(-1/sqrt(E), 1/sqrt(E)) for out_proj.weight.
// E <= 0, H <= 0 or E not divisible by H is a ShapeError, dropout outside [0, 1] an
// Error, at construction.
class MultiheadAttention : public Module {
 public:
  explicit MultiheadAttention(const MultiheadAttentionOptions& options);
  MultiheadAttention(std::int64_t embed_dim, std::int64_t num_heads);

  // query [L, B, E], key [S, B, kdim], value [S, B, vdim] ([B, L, E] etc. with
  // batch_first) -> context [L, B, E] ([B, L, E]), weights [B, L, S] (average_attn_weights)
  // or [B, H, L, S]; the weights are the ones applied, i.e. after dropout, like PyTorch.
  // Inputs must be 3-D. Wrong feature sizes, batch sizes that differ, key and value of
  // different lengths or masks of the wrong shape are ShapeErrors; dtypes other than the
  // parameters' a DtypeError; S = 0 or a fully masked row an Error.
  AttentionOutput forward(const Tensor& query, const Tensor& key, const Tensor& value,
                          const MultiheadAttentionForwardOptions& opts = {}) const;
  AttentionOutput operator()(const Tensor& query, const Tensor& key, const Tensor& value,
                             const MultiheadAttentionForwardOptions& opts = {}) const {
    return forward(query, key, value, opts);
  }

  void reset_parameters();

  MultiheadAttentionOptions options;  // kdim / vdim filled in (never 0)
  Tensor in_proj_weight;              // undefined when kdim or vdim differ from E
  Tensor q_proj_weight, k_proj_weight, v_proj_weight;  // defined only then
  Tensor in_proj_bias;                // undefined without bias
  std::shared_ptr<Linear> out_proj;

 private:
  std::int64_t head_dim_;
};

}  // namespace xg::nn
