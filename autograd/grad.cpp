// xg::grad and the products built on it; composite_backward (declared in tape.hpp).
#include "grad.hpp"

#include <fmt/format.h>

#include "detail/tape_internal.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

namespace {

std::string describe(const Tensor& x) {
  return fmt::format("{} {}{}", dtype_name(x.dtype()), x.shape().str(),
                     x.is_leaf() ? std::string(" (a leaf)") : fmt::format(" (made by '{}')", x.op_name()));
}

}  // namespace

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, const GradOptions& opts) {
  if (outputs.empty()) throw StateError("grad: no outputs to differentiate");
  if (inputs.empty()) throw StateError("grad: no inputs to differentiate with respect to");
  if (!grad_outputs.empty() && grad_outputs.size() != outputs.size()) {
    throw ShapeError(fmt::format("grad: {} grad_outputs for {} outputs; pass one per output (or none when every "
                                 "output is a scalar)",
                                 grad_outputs.size(), outputs.size()));
  }
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    if (!outputs[k].defined()) throw StateError(fmt::format("grad: output {} is undefined", k));
    if (!outputs[k].requires_grad()) {
      throw StateError(fmt::format(
          "grad: output {} {} does not require grad: none of the tensors it was computed from requires grad, "
          "or it was computed under NoGradGuard",
          k, describe(outputs[k])));
    }
  }
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].defined()) throw StateError(fmt::format("grad: input {} is undefined", k));
    if (!inputs[k].requires_grad()) {
      throw StateError(fmt::format("grad: input {} {} does not require grad (call requires_grad_() on it before "
                                   "computing the outputs)",
                                   k, describe(inputs[k])));
    }
  }
  const bool retain = opts.retain_graph.value_or(opts.create_graph);
  std::vector<Tensor> res = detail::run_grad(outputs, grad_outputs, inputs, retain, opts.create_graph);
  for (std::size_t k = 0; k < res.size(); ++k) {
    if (!res[k].defined()) {
      if (!opts.allow_unused) {
        throw StateError(fmt::format(
            "grad: input {} {} is not used to compute the outputs (no path leads from them to it); pass "
            "allow_unused = true to get an undefined tensor for it",
            k, describe(inputs[k])));
      }
      continue;
    }
    // A constant gradient: marked, so a later backward through it refuses instead of
    // silently dropping its derivative.
    if (!opts.create_graph) res[k].impl()->grad_value = true;
  }
  return res;
}

HvpResult hvp(const std::function<Tensor()>& f, const std::vector<Tensor>& params, const std::vector<Tensor>& v) {
  if (params.size() != v.size()) {
    throw ShapeError(fmt::format("hvp: {} params but {} vectors; pass one v per param", params.size(), v.size()));
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (!v[k].defined() || !params[k].defined() || v[k].shape() != params[k].shape() ||
        v[k].dtype() != params[k].dtype()) {
      throw ShapeError(fmt::format("hvp: v[{}] is {} but param {} is {}", k,
                                   v[k].defined() ? describe(v[k]) : std::string("undefined"), k,
                                   params[k].defined() ? describe(params[k]) : std::string("undefined")));
    }
  }
  HvpResult r;
  Tensor y = f();
  if (!y.defined() || y.numel() != 1) {
    throw ShapeError(fmt::format("hvp: f() must return a scalar, got {}",
                                 y.defined() ? y.shape().str() : std::string("an undefined tensor")));
  }
  r.value = y.detach();
  std::vector<Tensor> g = grad({y}, params, {}, {.create_graph = true, .allow_unused = true});
  // <grad f, v>: its gradient is H v.
  Tensor dot;
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (!g[k].defined()) continue;
    Tensor term = sum(mul(g[k], v[k].detach()));
    dot = dot.defined() ? add(dot, term) : term;
  }
  std::vector<Tensor> hv(params.size());
  if (dot.defined() && dot.requires_grad()) {
    hv = grad({dot}, params, {}, {.allow_unused = true});
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    r.grad.push_back(g[k].defined() ? g[k].detach() : zeros_like(params[k]));
    r.hvp.push_back(hv[k].defined() ? hv[k].detach() : zeros_like(params[k]));
  }
  return r;
}

JvpResult jvp(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
              const std::vector<Tensor>& v) {
  if (inputs.size() != v.size()) {
    throw ShapeError(fmt::format("jvp: {} inputs but {} vectors; pass one v per input", inputs.size(), v.size()));
  }
  std::vector<Tensor> xs;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].defined() || !v[k].defined() || v[k].shape() != inputs[k].shape() ||
        v[k].dtype() != inputs[k].dtype() || !is_floating(inputs[k].dtype())) {
      throw ShapeError(fmt::format("jvp: v[{}] is {} but input {} is {} (both floating, same shape and dtype)", k,
                                   v[k].defined() ? describe(v[k]) : std::string("undefined"), k,
                                   inputs[k].defined() ? describe(inputs[k]) : std::string("undefined")));
    }
    xs.push_back(inputs[k].detach().requires_grad_());
  }
  Tensor y = f(xs);
  if (!y.defined()) throw StateError("jvp: f returned an undefined tensor");
  JvpResult r;
  r.value = y.detach();
  if (!y.requires_grad() || !is_floating(y.dtype())) {
    r.jvp = zeros(y.shape(), y.dtype());
    return r;
  }
  // J^T u is linear in u; its gradient in u along v is J v (u's value does not matter).
  Tensor u = zeros(y.shape(), y.dtype()).requires_grad_();
  std::vector<Tensor> g = grad({y}, xs, {u}, {.create_graph = true, .allow_unused = true});
  Tensor dot;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    if (!g[k].defined()) continue;
    Tensor term = sum(mul(g[k], v[k].detach()));
    dot = dot.defined() ? add(dot, term) : term;
  }
  if (dot.defined() && dot.requires_grad()) {
    std::vector<Tensor> jv = grad({dot}, {u}, {}, {.allow_unused = true});
    if (jv[0].defined()) r.jvp = jv[0].detach();
  }
  if (!r.jvp.defined()) r.jvp = zeros(y.shape(), y.dtype());
  return r;
}

namespace {
// An identity recorded over x: the point where composite_backward's inner walk stops, so
// that it never walks into the graph the outer backward is walking.
Tensor alias(const Tensor& x) {
  Tensor y = x.detach();
  if (!x.requires_grad()) return y.requires_grad_();
  // d alias(x) = g
  record("alias", y, {&x}, [](const Tensor& g, GradSlots& dx) { dx[0] = g; });
  return y;
}
}  // namespace

void composite_backward(const std::vector<Tensor>& inputs, const Tensor& g, GradSlots& dx,
                        const std::function<Tensor(const std::vector<Tensor>&)>& forward) {
  if (!is_grad_enabled()) {
    throw StateError(
        "composite_backward: only for a backward running under create_graph (is_grad_enabled() inside a "
        "backward); the first-order path keeps its own kernel");
  }
  if (inputs.size() != dx.size()) {
    throw StateError(fmt::format("composite_backward: {} inputs for an op with {} inputs", inputs.size(), dx.size()));
  }
  std::vector<Tensor> xs(inputs.size());
  std::vector<Tensor> targets;
  std::vector<std::size_t> which;
  for (std::size_t j = 0; j < inputs.size(); ++j) {
    if (dx.needs(j) && inputs[j].defined() && is_floating(inputs[j].dtype())) {
      xs[j] = alias(inputs[j]);
      targets.push_back(xs[j]);
      which.push_back(j);
    } else {
      xs[j] = inputs[j];
    }
  }
  if (targets.empty()) return;
  Tensor out = forward(xs);
  if (!out.defined() || out.shape() != g.shape() || out.dtype() != g.dtype()) {
    throw StateError(fmt::format("composite_backward: the composite forward returned {} but the op's output is {} {}",
                                 out.defined() ? describe(out) : std::string("an undefined tensor"),
                                 dtype_name(g.dtype()), g.shape().str()));
  }
  std::vector<Tensor> gr;
  if (out.requires_grad()) gr = detail::run_grad({out}, {g}, targets, true, true);
  for (std::size_t q = 0; q < which.size(); ++q) {
    const std::size_t j = which[q];
    dx[j] = q < gr.size() && gr[q].defined() ? gr[q] : zeros(dx.shape(j), inputs[j].dtype());
  }
}

}  // namespace xg
