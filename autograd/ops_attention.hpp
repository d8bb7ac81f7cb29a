#pragma once
// Attention ops: the tape nodes behind nn::AdditiveAttention, nn::DotAttention and
// nn::MultiheadAttention, each one node with a hand-written backward.
//
//   masked_softmax   y = softmax(scale * x) over the last dim, masked positions exactly 0
//   additive_scores  s[b, l] = v · tanh(keys_proj[b, l] + query_proj[b])
//   attention_probs  P[b,h] = masked_softmax(scale * Q[b,h] K[b,h]ᵀ + masks)
//   attention_apply  O[b,h] = P[b,h] V[b,h]
//
// attention_probs and attention_apply read Q, K, V and write O in place: head h of batch
// entry b of a [T, B, E] (or [B, T, E]) tensor is the [T, E/H] matrix starting at
// b * sb + h * w with row stride st, which BLAS takes as a leading dimension. So no head
// is ever copied out, and the context is written straight in the layout the output
// projection reads. One GEMM per (batch entry, head), like PyTorch's bmm.
//
// Masks are constants (no gradient) of any dtype. A masked position gets a weight of
// exactly 0 (not exp(-1e9)) and no gradient. A row with every position masked (or -inf)
// is an xg::Error naming the row: its softmax is undefined (PyTorch returns NaN, which
// then poisons every gradient silently). A NaN score gives a NaN row, like softmax.
#include <cstdint>

#include "shape.hpp"
#include "tensor.hpp"

namespace xg {

// softmax(scale * scores) over the last dim, with positions where keep == 0 set to
// exactly 0. scores [B, ..., S] (or [S]); keep [B, S] (or [S] for 1-D scores), nonzero =
// keep, any dtype, or undefined for a plain scaled softmax. Backward:
// dscores = scale * y * (g - sum(g * y)), which is 0 at masked positions. A row with
// every position masked is an Error; a keep of the wrong shape a ShapeError. `name` is
// what errors call the op (a module passes its own name).
Tensor masked_softmax(const Tensor& scores, const Tensor& keep = Tensor(), double scale = 1.0,
                      const char* name = "masked_softmax");

// Bahdanau's scores s[b, l] = v · tanh(keys_proj[b, l] + query_proj[b]).
//   keys_proj [B, L, A], query_proj [B, A], v [A] -> [B, L].
// One node (the tanh values are kept for backward, nothing else is materialised):
//   with t = tanh(...), d = g[b, l] * v * (1 - t^2):
//   dkeys_proj = d, dquery_proj = sum_l d, dv = sum_{b,l} g[b, l] * t[b, l].
Tensor additive_scores(const Tensor& keys_proj, const Tensor& query_proj, const Tensor& v);

// Where the heads of one tensor live: element (b, h, t, d) of a tensor holding H heads of
// width w side by side is at b * sb + t * st + h * w + d.
struct HeadStrides {
  std::int64_t sb = 0;  // batch stride
  std::int64_t st = 0;  // row (time step) stride
};

// [T, B, W] (batch_first false, PyTorch's default) or [B, T, W] with heads along W.
HeadStrides head_strides(bool batch_first, std::int64_t B, std::int64_t T, std::int64_t W);

// The sizes of one attention call and where q, k, v and the output o keep their heads.
// Each layout must cover its tensor exactly, every element once (ShapeError otherwise).
struct AttentionHeads {
  std::int64_t B = 0;   // batch entries
  std::int64_t H = 1;   // heads
  std::int64_t Lq = 0;  // queries per batch entry and head
  std::int64_t S = 0;   // keys (and values)
  std::int64_t dk = 0;  // per-head width of queries and keys
  std::int64_t dv = 0;  // per-head width of values and the context
  HeadStrides q, k, v, o;
};

struct AttentionMasks {
  // [B, S]: one flag per batch entry and key, any dtype, or undefined.
  Tensor key_mask;
  // true: nonzero = keep (a lengths mask); false: nonzero = ignore (PyTorch's key_padding_mask).
  bool key_mask_keeps = true;
  // [Lq, S] (shared by every batch entry and head) or [B*H, Lq, S] (b major), or
  // undefined. float32 / float64: ADDED to the scaled scores (-inf forbids a pair);
  // bool (or int64): true / nonzero = this pair may not attend (PyTorch's
  // nn.MultiheadAttention convention).
  Tensor attn_mask;
};

// P[b,h] = masked_softmax(scale * Q[b,h] K[b,h]ᵀ + masks) -> `shape`, any shape of
// B*H*Lq*S elements (the memory is [B, H, Lq, S]). q, k: f32 or f64, the same dtype.
// Backward: dS = scale * P ⊙ (g - rowsum(g ⊙ P)); dQ[b,h] = dS[b,h] K[b,h],
// dK[b,h] = dS[b,h]ᵀ Q[b,h]. `name` is what errors call the op (a module passes its own).
Tensor attention_probs(const Tensor& q, const Tensor& k, const AttentionHeads& heads, double scale,
                       const Shape& shape, const AttentionMasks& masks = {}, const char* name = "attention_probs");

// O[b,h] = P[b,h] V[b,h]: p holds [B, H, Lq, S] (any shape of that size), v the values,
// -> `shape`, laid out by heads.o. Backward: dP[b,h] = g[b,h] V[b,h]ᵀ, dV[b,h] = P[b,h]ᵀ g[b,h].
Tensor attention_apply(const Tensor& p, const Tensor& v, const AttentionHeads& heads, const Shape& shape);

}  // namespace xg
