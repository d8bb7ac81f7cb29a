#pragma once
// Higher-order gradients: the functional form of backward, and the products built on it.
#include <functional>
#include <optional>
#include <vector>

#include "tensor.hpp"

namespace xg {

struct GradOptions {
  // Record the backward, so the results carry history and can be differentiated again.
  bool create_graph = false;
  // Keep the walked graph for another walk; defaults to create_graph (as PyTorch).
  std::optional<bool> retain_graph = std::nullopt;
  // An input the outputs do not depend on gets an undefined Tensor instead of a StateError.
  bool allow_unused = false;
};

// d(sum_k <grad_outputs[k], outputs[k]>)/d(inputs[j]) for each j, returned in input order;
// .grad() of the inputs is left alone. grad_outputs may be empty (every output a scalar)
// or hold one tensor per output (undefined for a scalar: 1). Inputs may be leaves or
// intermediate tensors of the graph; only what leads to them is walked. Without
// create_graph the results are constants: using them in a loss that is differentiated
// again is a StateError (use create_graph, or .detach() to mean a constant).
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, const GradOptions& opts = {});

struct HvpResult {
  Tensor value;               // f(), detached
  std::vector<Tensor> grad;   // d f / d params, detached
  std::vector<Tensor> hvp;    // (d^2 f / d params^2) v, one per param
};

// Hessian-vector product of a scalar f() in the tensors it reads (a model's parameters):
// the gradient of <grad f, v>, by double backward. v: one tensor per param, same shapes.
HvpResult hvp(const std::function<Tensor()>& f, const std::vector<Tensor>& params, const std::vector<Tensor>& v);

struct JvpResult {
  Tensor value;  // f(inputs), detached
  Tensor jvp;    // J v: d f(inputs + s v)/ds at s = 0, f's shape
};

// Jacobian-vector product of f at inputs along v (one tensor per input), by the
// double-backward trick: J v = d/du <J^T u, v> for a dummy u, so it costs two reverse walks.
JvpResult jvp(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
              const std::vector<Tensor>& v);

}  // namespace xg
