#include "layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "../autograd/factory.hpp"
#include "../autograd/ops.hpp"
#include "../autograd/ops_norm.hpp"
#include "init.hpp"

namespace xg::nn {

namespace {

void check_size(const char* module, const char* what, std::int64_t v) {
  if (v < 0) throw ShapeError(fmt::format("{}: {} must be >= 0, got {}", module, what, v));
}

}  // namespace

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias)
    : Linear(LinearOptions{.in_features = in_features, .out_features = out_features, .bias = bias}) {}

Linear::Linear(const LinearOptions& opts) : options(opts) {
  check_size("Linear", "in_features", opts.in_features);
  check_size("Linear", "out_features", opts.out_features);
  weight = register_parameter("weight", Tensor::empty(Shape{opts.out_features, opts.in_features}, default_dtype()));
  if (opts.bias) bias = register_parameter("bias", Tensor::empty(Shape{opts.out_features}, default_dtype()));
  reset_parameters();
}

void Linear::reset_parameters() {
  // PyTorch: kaiming_uniform_(a = sqrt(5)) gives bound gain * sqrt(3 / fan_in) with
  // gain = sqrt(2 / (1 + 5)), i.e. 1 / sqrt(fan_in); the bias uses the same bound.
  // With in_features == 0 both are empty or zero-bound, as in PyTorch.
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = options.in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(options.in_features)) : 0.0;
    init::uniform_(bias, -bound, bound);
  }
}

Tensor Linear::forward(const Tensor& x) const {
  // The op checks too; checking here names the module the user built.
  if (x.defined() && (x.ndim() == 0 || x.shape().back() != options.in_features)) {
    throw ShapeError(fmt::format("Linear({}, {}): input {}: expected feature size (last dim) {}", options.in_features,
                                 options.out_features, x.shape().str(), options.in_features));
  }
  return linear(x, weight, bias);
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

Embedding::Embedding(std::int64_t num_embeddings, std::int64_t embedding_dim, std::optional<std::int64_t> padding_idx)
    : Embedding(EmbeddingOptions{
          .num_embeddings = num_embeddings, .embedding_dim = embedding_dim, .padding_idx = padding_idx}) {}

Embedding::Embedding(const EmbeddingOptions& opts) : options(opts) {
  check_size("Embedding", "num_embeddings", opts.num_embeddings);
  check_size("Embedding", "embedding_dim", opts.embedding_dim);
  if (opts.padding_idx) {
    const std::int64_t p = *opts.padding_idx, n = opts.num_embeddings;
    if (p < -n || p >= n) {
      throw IndexError(fmt::format("Embedding: padding_idx {} is out of range for num_embeddings = {} (valid {}..{})",
                                   p, n, -n, n - 1));
    }
    options.padding_idx = p < 0 ? p + n : p;
  }
  weight = register_parameter("weight",
                              Tensor::empty(Shape{opts.num_embeddings, opts.embedding_dim}, default_dtype()));
  reset_parameters();
}

void Embedding::reset_parameters() {
  init::normal_(weight, 0.0, 1.0);
  if (options.padding_idx) {
    // All-zero bytes are 0.0 in float32 and float64.
    const std::size_t row = static_cast<std::size_t>(options.embedding_dim) * dtype_size(weight.dtype());
    std::memset(static_cast<char*>(weight.data_ptr()) + static_cast<std::size_t>(*options.padding_idx) * row, 0, row);
  }
}

Tensor Embedding::forward(const Tensor& ids) const {
  if (!ids.defined()) throw StateError("Embedding: the ids tensor is undefined (default-constructed Tensor)");
  if (ids.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("Embedding: ids must be int64 token ids, got {} {} (convert with .to(xg::i64))",
                                 dtype_name(ids.dtype()), ids.shape().str()));
  }
  if (ids.ndim() >= Shape::kMaxDims) {
    throw ShapeError(fmt::format("Embedding: ids {} have too many dims for the result {} + [{}] (at most {} dims)",
                                 ids.shape().str(), ids.shape().str(), options.embedding_dim, Shape::kMaxDims));
  }
  // The op checks too; checking here names the module the user built.
  const std::int64_t V = options.num_embeddings;
  const std::int64_t* ip = ids.data<std::int64_t>();
  for (std::int64_t j = 0; j < ids.numel(); ++j) {
    if (ip[j] < 0 || ip[j] >= V) {
      throw IndexError(fmt::format("Embedding: token id {} (at flat position {} of ids {}) is out of range for "
                                   "num_embeddings = {} (valid ids 0..{})",
                                   ip[j], j, ids.shape().str(), V, V - 1));
    }
  }
  return embedding(ids, weight, options.padding_idx);
}

// ---------------------------------------------------------------------------
// Dropout, Flatten, activations
// ---------------------------------------------------------------------------

Dropout::Dropout(double p) : p(p) {
  if (!(p >= 0.0 && p <= 1.0)) throw Error(fmt::format("Dropout: probability p must be in [0, 1], got {}", p));
}

Tensor Dropout::forward(const Tensor& x) const { return dropout(x, p, is_training()); }

Tensor Flatten::forward(const Tensor& x) const { return flatten(x, start_dim, end_dim); }

Tensor ReLU::forward(const Tensor& x) const { return relu(x); }
Tensor Tanh::forward(const Tensor& x) const { return tanh(x); }
Tensor Sigmoid::forward(const Tensor& x) const { return sigmoid(x); }

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

LayerNorm::LayerNorm(const Shape& normalized_shape, double eps, bool elementwise_affine)
    : LayerNorm(LayerNormOptions{
          .normalized_shape = normalized_shape, .eps = eps, .elementwise_affine = elementwise_affine}) {}

LayerNorm::LayerNorm(const LayerNormOptions& opts) : options(opts) {
  if (opts.normalized_shape.empty()) throw ShapeError("LayerNorm: normalized_shape must have at least one dim");
  for (std::int64_t d : opts.normalized_shape) {
    if (d < 0) throw ShapeError(fmt::format("LayerNorm: normalized_shape {} has a negative dim", opts.normalized_shape.str()));
  }
  if (!(opts.eps >= 0.0)) throw Error(fmt::format("LayerNorm: eps must be >= 0, got {}", opts.eps));
  if (opts.elementwise_affine) {
    weight = register_parameter("weight", Tensor::empty(opts.normalized_shape, default_dtype()));
    bias = register_parameter("bias", Tensor::empty(opts.normalized_shape, default_dtype()));
  }
  reset_parameters();
}

void LayerNorm::reset_parameters() {
  if (weight.defined()) init::ones_(weight);
  if (bias.defined()) init::zeros_(bias);
}

Tensor LayerNorm::forward(const Tensor& x) const {
  if (x.defined()) {
    const Shape& xs = x.shape();
    const Shape& ns = options.normalized_shape;
    const int k = ns.size(), nd = xs.size();
    bool ok = k <= nd;
    for (int i = 0; ok && i < k; ++i) ok = xs[nd - k + i] == ns[i];
    if (!ok) {
      throw ShapeError(fmt::format("LayerNorm({}): input {}: the trailing dims must be {}", ns.str(), xs.str(), ns.str()));
    }
  }
  return layer_norm(x, options.normalized_shape, weight, bias, options.eps);
}

// ---------------------------------------------------------------------------
// Sequential
// ---------------------------------------------------------------------------

Tensor Sequential::forward(const Tensor& x) const {
  Tensor h = x;
  for (const Step& s : steps_) h = s.call(h);
  return h;
}

std::shared_ptr<Module> Sequential::operator[](std::size_t i) const {
  if (i >= steps_.size()) {
    throw IndexError(fmt::format("Sequential: index {} is out of range for {} modules", i, steps_.size()));
  }
  return steps_[i].module;
}

void Sequential::throw_wrong_type(std::size_t i) const {
  throw Error(fmt::format("Sequential: module {} is not of the requested type", i));
}

}  // namespace xg::nn
