// Attention modules: each checks its inputs (errors name the module), projects them with
// linear and calls the attention ops of autograd/ops_attention.hpp, which read the heads
// in place.
#include "attention.hpp"

#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "../autograd/ops.hpp"
#include "../autograd/ops_attention.hpp"
#include "../autograd/ops_norm.hpp"
#include "../autograd/detail/tensor_impl.hpp"
#include "detail/lengths.hpp"
#include "init.hpp"

namespace xg::nn {

namespace {

// ---------------------------------------------------------------------------
// Input checks shared by the modules
// ---------------------------------------------------------------------------

void check_input(const char* op, const char* name, const Tensor& t, Dtype want) {
  if (!t.defined()) throw StateError(fmt::format("{}: {} is undefined (default-constructed Tensor)", op, name));
  if (t.dtype() != want) {
    throw DtypeError(fmt::format("{}: {} is {} {} but the module computes in {} (convert the input with .to(), or the "
                                 "module with .to())",
                                 op, name, dtype_name(t.dtype()), t.shape().str(), dtype_name(want)));
  }
}

void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout) {
  if (t.ndim() != rank) {
    throw ShapeError(fmt::format("{}: {} {} must be {}-d {}", op, name, t.shape().str(), rank, layout));
  }
}

// A [B, L] mask of any dtype (the op checks too; checking here names the module).
void check_key_mask(const char* op, const char* name, const Tensor& mask, std::int64_t B, std::int64_t L) {
  if (mask.shape() != Shape{B, L}) {
    throw ShapeError(fmt::format("{}: {} {}: expected [{},{}] ([B, L]: one flag per batch entry and key)", op, name,
                                 mask.shape().str(), B, L));
  }
}

// The keep mask [B, L] built from key lengths, after checking the keys the lengths
// describe (B along batch_dim, L along time_dim).
Tensor lengths_mask(const char* op, const Lengths& lengths, const Tensor& keys, int batch_dim, int time_dim) {
  if (!keys.defined()) throw StateError(fmt::format("{}: keys are undefined (default-constructed Tensor)", op));
  check_rank(op, "keys", keys, 3, batch_dim == 0 ? "[B, L, Dk]" : "[S, B, kdim]");
  const std::int64_t L = keys.shape()[time_dim];
  return lengths_internal::keep_mask(lengths_internal::check_lengths(op, lengths.tensor, keys.shape()[batch_dim], L, 1),
                                   L);
}

void check_positive(const char* op, const char* name, std::int64_t v) {
  if (v <= 0) throw ShapeError(fmt::format("{}: {} must be positive, got {}", op, name, v));
}

}  // namespace

// ---------------------------------------------------------------------------
// AdditiveAttention
// ---------------------------------------------------------------------------

AdditiveAttention::AdditiveAttention(std::int64_t query_size, std::int64_t key_size, std::int64_t hidden_size)
    : AdditiveAttention(
          AdditiveAttentionOptions{.query_size = query_size, .key_size = key_size, .hidden_size = hidden_size}) {}

AdditiveAttention::AdditiveAttention(const AdditiveAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "AdditiveAttention";
  check_positive(op, "query_size", opts.query_size);
  check_positive(op, "key_size", opts.key_size);
  check_positive(op, "hidden_size", opts.hidden_size);
  const Dtype dt = default_dtype();
  w_query = register_parameter("w_query", Tensor::empty(Shape{opts.hidden_size, opts.query_size}, dt));
  w_key = register_parameter("w_key", Tensor::empty(Shape{opts.hidden_size, opts.key_size}, dt));
  v = register_parameter("v", Tensor::empty(Shape{opts.hidden_size}, dt));
  if (opts.bias) bias = register_parameter("bias", Tensor::empty(Shape{opts.hidden_size}, dt));
  reset_parameters();
}

void AdditiveAttention::reset_parameters() {
  // The matrices are Linear layers without bias, so they get Linear's default init; v
  // is the weight of a Linear(A, 1), the bias the query Linear's bias.
  init::kaiming_uniform_(w_query, std::sqrt(5.0));
  init::kaiming_uniform_(w_key, std::sqrt(5.0));
  const double bv = 1.0 / std::sqrt(static_cast<double>(options.hidden_size));
  init::uniform_(v, -bv, bv);
  if (bias.defined()) {
    const double bb = 1.0 / std::sqrt(static_cast<double>(options.query_size));
    init::uniform_(bias, -bb, bb);
  }
}

AdditiveAttention::Keys AdditiveAttention::precompute_keys(const Tensor& keys) const {
  constexpr const char* op = "AdditiveAttention";
  check_input(op, "keys", keys, w_key.dtype());
  check_rank(op, "keys", keys, 3, "[B, L, key_size]");
  if (keys.shape()[2] != options.key_size) {
    throw ShapeError(fmt::format("{}: keys {}: expected key feature size (last dim) {}", op, keys.shape().str(),
                                 options.key_size));
  }
  return Keys{keys, linear(keys, w_key)};
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                           const Tensor& mask) const {
  return forward(query, precompute_keys(keys), values, mask);
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Keys& keys, const Tensor& values,
                                           const Tensor& mask) const {
  constexpr const char* op = "AdditiveAttention";
  const Dtype dt = w_query.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "keys", keys.keys, dt);
  check_input(op, "projected keys", keys.projected, dt);
  check_rank(op, "query", query, 2, "[B, query_size]");
  check_rank(op, "keys", keys.keys, 3, "[B, L, key_size]");
  const std::int64_t B = query.shape()[0], L = keys.keys.shape()[1], A = options.hidden_size;
  if (query.shape()[1] != options.query_size) {
    throw ShapeError(fmt::format("{}: query {}: expected query feature size (last dim) {}", op, query.shape().str(),
                                 options.query_size));
  }
  if (keys.keys.shape()[0] != B) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: batch sizes differ ({} vs {})", op, query.shape().str(),
                                 keys.keys.shape().str(), B, keys.keys.shape()[0]));
  }
  if (keys.projected.shape() != Shape{B, L, A}) {
    throw ShapeError(fmt::format("{}: projected keys {} do not match keys {}: expected [{},{},{}] (use precompute_keys "
                                 "of this module)",
                                 op, keys.projected.shape().str(), keys.keys.shape().str(), B, L, A));
  }
  const Tensor& vals = values.defined() ? values : keys.keys;
  check_input(op, "values", vals, dt);
  check_rank(op, "values", vals, 3, "[B, L, Dv]");
  if (vals.shape()[0] != B || vals.shape()[1] != L) {
    throw ShapeError(fmt::format("{}: keys {}, values {}: values must be [B, L, Dv] with the keys' B = {} and L = {}",
                                 op, keys.keys.shape().str(), vals.shape().str(), B, L));
  }
  if (L == 0) throw ShapeError(fmt::format("{}: keys {}: no keys to attend to (L = 0)", op, keys.keys.shape().str()));
  const std::int64_t Dv = vals.shape()[2];

  if (mask.defined()) check_key_mask(op, "mask", mask, B, L);

  const Tensor qp = linear(query, w_query, bias);                 // [B, A]
  const Tensor scores = additive_scores(keys.projected, qp, v);  // [B, L]
  Tensor w = masked_softmax(scores, mask, 1.0, op);               // [B, L]
  // One query per batch entry: [B,1,L] x [B,L,Dv].
  const AttentionHeads hd{
      .B = B, .H = 1, .Lq = 1, .S = L, .dk = 0, .dv = Dv, .q = {}, .k = {}, .v = {L * Dv, Dv}, .o = {Dv, Dv}};
  Tensor context = attention_apply(w, vals, hd, Shape{B, Dv});
  return {context, w};
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                           const Lengths& lengths) const {
  return forward(query, keys, values, lengths_mask("AdditiveAttention", lengths, keys, 0, 1));
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Keys& keys, const Tensor& values,
                                           const Lengths& lengths) const {
  return forward(query, keys, values, lengths_mask("AdditiveAttention", lengths, keys.keys, 0, 1));
}

// ---------------------------------------------------------------------------
// DotAttention
// ---------------------------------------------------------------------------

DotAttention::DotAttention(DotScore mode, std::int64_t query_size, std::int64_t key_size)
    : DotAttention(DotAttentionOptions{.mode = mode, .query_size = query_size, .key_size = key_size}) {}

DotAttention::DotAttention(const DotAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "DotAttention";
  if (opts.mode == DotScore::general) {
    check_positive(op, "query_size (general needs the weight's sizes)", opts.query_size);
    check_positive(op, "key_size (general needs the weight's sizes)", opts.key_size);
    weight = register_parameter("weight", Tensor::empty(Shape{opts.key_size, opts.query_size}, default_dtype()));
  } else {
    if (opts.query_size < 0 || opts.key_size < 0) {
      throw ShapeError(fmt::format("{}: sizes must be >= 0 (0 = any), got query_size {}, key_size {}", op,
                                   opts.query_size, opts.key_size));
    }
    if (opts.query_size > 0 && opts.key_size > 0 && opts.query_size != opts.key_size) {
      throw ShapeError(fmt::format("{}: dot and scaled scores need query_size == key_size, got {} and {}", op,
                                   opts.query_size, opts.key_size));
    }
  }
  reset_parameters();
}

void DotAttention::reset_parameters() {
  if (weight.defined()) init::kaiming_uniform_(weight, std::sqrt(5.0));
}

AttentionOutput DotAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                      const Tensor& mask) const {
  constexpr const char* op = "DotAttention";
  if (!query.defined()) throw StateError("DotAttention: query is undefined (default-constructed Tensor)");
  detail::check_floating(op, query);
  const Dtype dt = weight.defined() ? weight.dtype() : query.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "keys", keys, dt);
  if (query.ndim() != 2 && query.ndim() != 3) {
    throw ShapeError(fmt::format("{}: query {} must be [B, Dq] or [B, Tq, Dq]", op, query.shape().str()));
  }
  check_rank(op, "keys", keys, 3, "[B, L, Dk]");
  const bool one = query.ndim() == 2;
  const std::int64_t B = query.shape()[0], Tq = one ? 1 : query.shape()[1], Dq = query.shape().back();
  const std::int64_t L = keys.shape()[1], Dk = keys.shape()[2];
  if (keys.shape()[0] != B) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: batch sizes differ ({} vs {})", op, query.shape().str(),
                                 keys.shape().str(), B, keys.shape()[0]));
  }
  const bool general = options.mode == DotScore::general;
  if ((general || options.query_size > 0) && Dq != options.query_size) {
    throw ShapeError(fmt::format("{}: query {}: expected query feature size (last dim) {}", op, query.shape().str(),
                                 options.query_size));
  }
  if ((general || options.key_size > 0) && Dk != options.key_size) {
    throw ShapeError(fmt::format("{}: keys {}: expected key feature size (last dim) {}", op, keys.shape().str(),
                                 options.key_size));
  }
  if (!general && Dq != Dk) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: {} scores need equal feature sizes ({} vs {}); use general "
                                 "for different sizes",
                                 op, query.shape().str(), keys.shape().str(),
                                 options.mode == DotScore::dot ? "dot" : "scaled", Dq, Dk));
  }
  const Tensor& vals = values.defined() ? values : keys;
  check_input(op, "values", vals, dt);
  check_rank(op, "values", vals, 3, "[B, L, Dv]");
  if (vals.shape()[0] != B || vals.shape()[1] != L) {
    throw ShapeError(fmt::format("{}: keys {}, values {}: values must be [B, L, Dv] with the keys' B = {} and L = {}",
                                 op, keys.shape().str(), vals.shape().str(), B, L));
  }
  if (L == 0) throw ShapeError(fmt::format("{}: keys {}: no keys to attend to (L = 0)", op, keys.shape().str()));
  const std::int64_t Dv = vals.shape()[2];

  AttentionMasks masks;
  if (mask.defined()) {
    check_key_mask(op, "mask", mask, B, L);
    masks.key_mask = mask;
  }

  const Tensor q = general ? linear(query, weight) : query;  // [B, (Tq,) Dk]
  // Batch-first, one head: [B, Tq, Dk] queries, [B, L, Dk] keys, [B, L, Dv] values.
  const AttentionHeads hd{.B = B, .H = 1, .Lq = Tq, .S = L, .dk = Dk, .dv = Dv, .q = {Tq * Dk, Dk},
                          .k = {L * Dk, Dk}, .v = {L * Dv, Dv}, .o = {Tq * Dv, Dv}};
  const double scale = options.mode == DotScore::scaled ? 1.0 / std::sqrt(static_cast<double>(Dk)) : 1.0;
  Tensor w = attention_probs(q, keys, hd, scale, one ? Shape{B, L} : Shape{B, Tq, L}, masks, op);
  Tensor context = attention_apply(w, vals, hd, one ? Shape{B, Dv} : Shape{B, Tq, Dv});
  return {context, w};
}

AttentionOutput DotAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                      const Lengths& lengths) const {
  return forward(query, keys, values, lengths_mask("DotAttention", lengths, keys, 0, 1));
}

// ---------------------------------------------------------------------------
// MultiheadAttention
// ---------------------------------------------------------------------------

MultiheadAttention::MultiheadAttention(std::int64_t embed_dim, std::int64_t num_heads)
    : MultiheadAttention(MultiheadAttentionOptions{.embed_dim = embed_dim, .num_heads = num_heads}) {}

MultiheadAttention::MultiheadAttention(const MultiheadAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "MultiheadAttention";
  const std::int64_t E = opts.embed_dim, H = opts.num_heads;
  check_positive(op, "embed_dim", E);
  check_positive(op, "num_heads", H);
  if (E % H != 0) {
    throw ShapeError(fmt::format("{}: embed_dim {} is not divisible by num_heads {}", op, E, H));
  }
  if (!(opts.dropout >= 0.0 && opts.dropout <= 1.0)) {
    throw Error(fmt::format("{}: dropout must be in [0, 1], got {}", op, opts.dropout));
  }
  if (opts.kdim < 0 || opts.vdim < 0) {
    throw ShapeError(fmt::format("{}: kdim and vdim must be >= 0 (0 = embed_dim), got {} and {}", op, opts.kdim,
                                 opts.vdim));
  }
  options.kdim = opts.kdim > 0 ? opts.kdim : E;
  options.vdim = opts.vdim > 0 ? opts.vdim : E;
  head_dim_ = E / H;
  const Dtype dt = default_dtype();
  // PyTorch's registration order, so named_parameters() and state_dict() line up.
  if (options.kdim == E && options.vdim == E) {
    in_proj_weight = register_parameter("in_proj_weight", Tensor::empty(Shape{3 * E, E}, dt));
  } else {
    q_proj_weight = register_parameter("q_proj_weight", Tensor::empty(Shape{E, E}, dt));
    k_proj_weight = register_parameter("k_proj_weight", Tensor::empty(Shape{E, options.kdim}, dt));
    v_proj_weight = register_parameter("v_proj_weight", Tensor::empty(Shape{E, options.vdim}, dt));
  }
  if (opts.bias) in_proj_bias = register_parameter("in_proj_bias", Tensor::empty(Shape{3 * E}, dt));
  out_proj = register_module("out_proj", std::make_shared<Linear>(E, E, opts.bias));
  reset_parameters();
}

void MultiheadAttention::reset_parameters() {
  if (in_proj_weight.defined()) {
    init::xavier_uniform_(in_proj_weight);
  } else {
    init::xavier_uniform_(q_proj_weight);
    init::xavier_uniform_(k_proj_weight);
    init::xavier_uniform_(v_proj_weight);
  }
  out_proj->reset_parameters();
  if (in_proj_bias.defined()) init::zeros_(in_proj_bias);
  if (out_proj->bias.defined()) init::zeros_(out_proj->bias);
}

AttentionOutput MultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                            const MultiheadAttentionForwardOptions& opts) const {
  constexpr const char* op = "MultiheadAttention";
  const bool bf = options.batch_first;
  const char* lay_q = bf ? "([B, L, E] with batch_first)" : "([L, B, E]; [B, L, E] needs batch_first)";
  const char* lay_kv = bf ? "([B, S, kdim or vdim] with batch_first)" : "([S, B, kdim or vdim])";
  const Dtype dt = out_proj->weight.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "key", key, dt);
  check_input(op, "value", value, dt);
  check_rank(op, "query", query, 3, lay_q);
  check_rank(op, "key", key, 3, lay_kv);
  check_rank(op, "value", value, 3, lay_kv);
  const int bdim = bf ? 0 : 1, tdim = bf ? 1 : 0;
  const std::int64_t E = options.embed_dim, H = options.num_heads, dh = head_dim_;
  const std::int64_t B = query.shape()[bdim], L = query.shape()[tdim], S = key.shape()[tdim];
  auto feature = [&](const char* name, const Tensor& t, const char* what, std::int64_t want) {
    if (t.shape()[2] != want) {
      throw ShapeError(fmt::format("{}: {} {}: expected feature size (last dim) {} = {}", op, name, t.shape().str(),
                                   what, want));
    }
  };
  feature("query", query, "embed_dim", E);
  feature("key", key, "kdim", options.kdim);
  feature("value", value, "vdim", options.vdim);
  if (key.shape()[bdim] != B || value.shape()[bdim] != B) {
    throw ShapeError(fmt::format("{}: query {}, key {}, value {}: batch sizes differ (dim {})", op,
                                 query.shape().str(), key.shape().str(), value.shape().str(), bdim));
  }
  if (value.shape()[tdim] != S) {
    throw ShapeError(fmt::format("{}: key {}, value {}: key and value sequence lengths differ ({} vs {})", op,
                                 key.shape().str(), value.shape().str(), S, value.shape()[tdim]));
  }
  if (S == 0) throw ShapeError(fmt::format("{}: key {}: no keys to attend to (S = 0)", op, key.shape().str()));

  AttentionMasks masks;
  if (opts.key_padding_mask.defined()) {
    check_key_mask(op, "key_padding_mask", opts.key_padding_mask, B, S);
    masks.key_mask = opts.key_padding_mask;
    masks.key_mask_keeps = false;
  }
  if (opts.key_lengths.defined()) {
    if (opts.key_padding_mask.defined()) {
      throw Error(fmt::format("{}: key_padding_mask {} and key_lengths {} both given: pass one of them", op,
                              opts.key_padding_mask.shape().str(), opts.key_lengths.shape().str()));
    }
    masks.key_mask = lengths_internal::keep_mask(lengths_internal::check_lengths(op, opts.key_lengths, B, S, 1), S);
    masks.key_mask_keeps = true;
  }
  if (opts.attn_mask.defined()) {
    const Tensor& am = opts.attn_mask;
    if (am.shape() != Shape{L, S} && am.shape() != Shape{B * H, L, S}) {
      throw ShapeError(fmt::format("{}: attn_mask {}: expected [{},{}] ([L, S]) or [{},{},{}] ([B*num_heads, L, S])",
                                   op, am.shape().str(), L, S, B * H, L, S));
    }
    masks.attn_mask = am;
  }

  // The q / k / v blocks of the packed weight and bias are views: nothing is copied.
  Tensor wq = q_proj_weight, wk = k_proj_weight, wv = v_proj_weight;
  if (in_proj_weight.defined()) {
    wq = row_block(in_proj_weight, 0, E);
    wk = row_block(in_proj_weight, E, E);
    wv = row_block(in_proj_weight, 2 * E, E);
  }
  Tensor bq, bk, bv;
  if (in_proj_bias.defined()) {
    bq = row_block(in_proj_bias, 0, E);
    bk = row_block(in_proj_bias, E, E);
    bv = row_block(in_proj_bias, 2 * E, E);
  }
  const Tensor q = linear(query, wq, bq);  // [L, B, E] (or [B, L, E])
  const Tensor k = linear(key, wk, bk);    // [S, B, E]
  const Tensor v = linear(value, wv, bv);  // [S, B, E]

  const HeadStrides qs = head_strides(bf, B, L, E), ks = head_strides(bf, B, S, E);
  const AttentionHeads hd{.B = B, .H = H, .Lq = L, .S = S, .dk = dh, .dv = dh, .q = qs, .k = ks, .v = ks, .o = qs};
  Tensor p = attention_probs(q, k, hd, 1.0 / std::sqrt(static_cast<double>(dh)), Shape{B, H, L, S}, masks, op);
  if (options.dropout > 0.0 && is_training()) p = dropout(p, options.dropout, true);
  const Tensor ctx = attention_apply(p, v, hd, q.shape());  // heads written side by side, in query's layout
  AttentionOutput out{out_proj->forward(ctx), Tensor()};
  if (opts.need_weights) out.weights = opts.average_attn_weights ? mean(p, {1}) : p;
  return out;
}

}  // namespace xg::nn
