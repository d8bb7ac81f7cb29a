#pragma once
// Basic layers: Linear, Embedding, Dropout, LayerNorm, Flatten, the activation modules
// ReLU / Tanh / Sigmoid, and Sequential (a chain of one-tensor-in, one-tensor-out modules).
//
// Parameter names, shapes, registration order and default initialisations follow
// PyTorch, so state dicts move between the two through .npz unchanged. Parameters are
// created in default_dtype() and initialised from default_generator().
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../autograd/shape.hpp"
#include "../autograd/tensor.hpp"
#include "module.hpp"

namespace xg::nn {

// ---- Linear -------------------------------------------------------------------------

struct LinearOptions {
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;
  bool bias = true;
};

// y = x · weightᵀ + bias, through the fused op xg::linear (one GEMM, no transposed copy).
//   weight [out_features, in_features], bias [out_features] (absent when bias = false).
//   Default init (PyTorch's): weight ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
//   bias ~ U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true);
  explicit Linear(const LinearOptions& options);

  // x [*, in_features] (any leading dims, or 1-D [in_features]) -> [*, out_features].
  // Wrong feature size: ShapeError; int64 or a dtype other than the weight's: DtypeError.
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  // Redraws weight and bias with the default initialisation.
  void reset_parameters();

  LinearOptions options;
  Tensor weight;
  Tensor bias;  // undefined when options.bias is false
};

// ---- Embedding ----------------------------------------------------------------------

struct EmbeddingOptions {
  std::int64_t num_embeddings = 0;
  std::int64_t embedding_dim = 0;
  // This row is initialised to zeros and never receives a gradient (it stays whatever
  // it is, e.g. zeros for a <pad> token). Negative values count from the end, like PyTorch.
  std::optional<std::int64_t> padding_idx = std::nullopt;
};

// A lookup table: weight [num_embeddings, embedding_dim] ~ N(0, 1) (PyTorch's init).
class Embedding : public Module {
 public:
  Embedding(std::int64_t num_embeddings, std::int64_t embedding_dim,
            std::optional<std::int64_t> padding_idx = std::nullopt);
  explicit Embedding(const EmbeddingOptions& options);

  // ids int64 of any shape [*] -> [*, embedding_dim] (a 0-d id gives [embedding_dim]).
  // One node; backward scatter-adds into a dense gradient (repeated ids accumulate, the
  // padding row gets zero). An id outside [0, num_embeddings) is an IndexError naming it;
  // non-int64 ids are a DtypeError.
  Tensor forward(const Tensor& ids) const;
  Tensor operator()(const Tensor& ids) const { return forward(ids); }

  void reset_parameters();

  EmbeddingOptions options;  // padding_idx stored non-negative
  Tensor weight;
};

// ---- Dropout ------------------------------------------------------------------------

// Zeroes each element with probability p and scales the rest by 1/(1-p) in training
// mode; the identity in eval mode. p outside [0, 1] is an Error at construction.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  // x [*] -> [*]
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  double p;
};

// ---- LayerNorm ----------------------------------------------------------------------

struct LayerNormOptions {
  Shape normalized_shape;  // the trailing dims normalised over, e.g. {H} or {C, W}
  double eps = 1e-5;
  bool elementwise_affine = true;
};

// y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape
// dims (biased variance, like PyTorch), through the fused op xg::layer_norm.
//   weight = ones(normalized_shape), bias = zeros(normalized_shape), both absent when
//   elementwise_affine is false.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(const Shape& normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  explicit LayerNorm(const LayerNormOptions& options);

  // x [*, normalized_shape...] -> same shape. Trailing dims other than
  // normalized_shape: ShapeError.
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  void reset_parameters();

  LayerNormOptions options;
  Tensor weight;  // undefined without elementwise_affine
  Tensor bias;
};

// ---- Shape and activation modules ---------------------------------------------------

// Flattens dims start_dim..end_dim into one (a view): [B, C, H, W] -> [B, C*H*W] by default.
class Flatten : public Module {
 public:
  explicit Flatten(int start_dim = 1, int end_dim = -1) : start_dim(start_dim), end_dim(end_dim) {}
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  int start_dim;
  int end_dim;
};

// Parameter-free activations, for Sequential.
class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }
};
class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }
};
class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }
};

// ---- Sequential ---------------------------------------------------------------------

// A module whose forward takes one Tensor and returns a Tensor: what Sequential chains.
template <class M>
concept TensorModule = std::derived_from<M, Module> && requires(M& m, const Tensor& x) {
  { m.forward(x) } -> std::convertible_to<Tensor>;
};

// Runs its modules in order, each one's output the next one's input. Children are
// registered as "0", "1", ... (PyTorch's names), so
//   Sequential net(std::make_shared<Linear>(4, 8), std::make_shared<Tanh>(), std::make_shared<Linear>(8, 2));
// has parameters 0.weight, 0.bias, 2.weight, 2.bias. Type-erased: each step stores a
// call to the module's own (non-virtual) forward.
class Sequential : public Module {
 public:
  Sequential() = default;
  template <TensorModule... M>
  explicit Sequential(std::shared_ptr<M>... modules) {
    (push_back(std::move(modules)), ...);
  }

  // Appends a module, registered under its position ("0", "1", ...) or a given name.
  template <TensorModule M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    return push_back(std::to_string(steps_.size()), std::move(module));
  }
  template <TensorModule M>
  std::shared_ptr<M> push_back(const std::string& name, std::shared_ptr<M> module) {
    register_module(name, module);  // validates the name and the pointer
    M* raw = module.get();          // kept alive by the registration
    steps_.push_back({module, [raw](const Tensor& x) -> Tensor { return raw->forward(x); }});
    return module;
  }

  // x -> modules[n-1](... modules[0](x)); an empty Sequential is the identity.
  Tensor forward(const Tensor& x) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

  std::size_t size() const { return steps_.size(); }
  bool empty() const { return steps_.empty(); }
  // The i-th module (IndexError when out of range).
  std::shared_ptr<Module> operator[](std::size_t i) const;
  // The i-th module as M (Error when it is another type).
  template <class M>
  std::shared_ptr<M> at(std::size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    if (!m) throw_wrong_type(i);
    return m;
  }

 private:
  struct Step {
    std::shared_ptr<Module> module;
    std::function<Tensor(const Tensor&)> call;
  };
  [[noreturn]] void throw_wrong_type(std::size_t i) const;
  std::vector<Step> steps_;
};

}  // namespace xg::nn
