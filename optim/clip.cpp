#include "clip.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_set>

namespace xg::optim {
namespace {

struct Grad {
  Tensor g;
  std::size_t index;  // position in the parameter list (for error messages)
};

// Gradients of `params` that exist, after checking the list itself.
std::vector<Grad> collect_grads(const char* op, const std::vector<Tensor>& params) {
  std::vector<Grad> grads;
  grads.reserve(params.size());
  std::unordered_set<const TensorImpl*> seen;
  seen.reserve(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (!p.defined()) throw Error(fmt::format("{}: parameter {} is an undefined tensor", op, i));
    if (!seen.insert(p.impl()).second)
      throw Error(fmt::format("{}: parameter {} (shape {}) is listed twice; its gradient would be "
                              "counted and scaled twice",
                              op, i, p.shape().str()));
    Tensor g = p.grad();
    if (!g.defined()) continue;
    // set_grad already refuses these; the guard keeps the raw loops below well-typed.
    if (!is_floating(g.dtype()))
      throw DtypeError(fmt::format("{}: gradient of parameter {} has dtype {}", op, i, dtype_name(g.dtype())));
    grads.push_back({std::move(g), i});
  }
  return grads;
}

template <class T>
double sum_squares(const T* x, std::int64_t n) {
  // Four independent sums: lets the compiler vectorise without reassociating one chain.
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < n; ++i) s0 += static_cast<double>(x[i]) * x[i];
  return (s0 + s1) + (s2 + s3);
}

// max |x|, NaN if any element is NaN (like torch.max).
template <class T>
double max_abs(const T* x, std::int64_t n) {
  T m = 0;
  bool nan = false;
  for (std::int64_t i = 0; i < n; ++i) {
    const T a = std::fabs(x[i]);
    nan |= a != a;
    m = a > m ? a : m;
  }
  return nan ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(m);
}

template <class T>
bool all_finite(const T* x, std::int64_t n) {
  // x - x is 0 for finite x and NaN for Inf or NaN.
  T acc = 0;
  for (std::int64_t i = 0; i < n; ++i) acc += x[i] - x[i];
  return acc == 0;
}

// f(const T*, n) on a gradient's elements, read only (does not bump its version).
template <class F>
auto read_grad(const Tensor& g, F&& f) {
  if (g.dtype() == Dtype::f32) return f(g.data<float>(), g.numel());
  return f(g.data<double>(), g.numel());
}

// f(T*, n) on a gradient's elements, to write them.
template <class F>
auto on_grad(const Tensor& g, F&& f) {
  Tensor t = g;
  if (t.dtype() == Dtype::f32) return f(t.data<float>(), t.numel());
  return f(t.data<double>(), t.numel());
}

double clip_norm_impl(const std::vector<Tensor>& params, const std::vector<std::string>* names,
                      double max_norm, double norm_type, bool error_if_nonfinite) {
  constexpr const char* op = "clip_grad_norm";
  if (!(max_norm >= 0))
    throw Error(fmt::format("{}: max_norm must be >= 0, got {}", op, max_norm));
  const bool inf_norm = norm_type == INFINITY;
  if (norm_type != 2.0 && !inf_norm)
    throw Error(fmt::format("{}: norm_type must be 2 or INFINITY, got {}", op, norm_type));
  const std::vector<Grad> grads = collect_grads(op, params);
  if (grads.empty()) return 0.0;

  double total = 0;
  if (inf_norm) {
    for (const Grad& g : grads) {
      const double m = read_grad(g.g, [](auto* x, std::int64_t n) { return max_abs(x, n); });
      total = (std::isnan(m) || m > total) ? m : total;
      if (std::isnan(total)) break;
    }
  } else {
    for (const Grad& g : grads)
      total += read_grad(g.g, [](auto* x, std::int64_t n) { return sum_squares(x, n); });
    total = std::sqrt(total);
  }

  if (!std::isfinite(total)) {
    const Grad* bad = nullptr;
    for (const Grad& g : grads) {
      if (!read_grad(g.g, [](auto* x, std::int64_t n) { return all_finite(x, n); })) {
        bad = &g;
        break;
      }
    }
    if (bad == nullptr) {
      // Only a float64 sum of squares can overflow with finite elements: rescale by the
      // largest magnitude so every squared term is <= 1.
      double scale = 0;
      for (const Grad& g : grads)
        scale = std::max(scale, read_grad(g.g, [](auto* x, std::int64_t n) { return max_abs(x, n); }));
      double s = 0;
      for (const Grad& g : grads) {
        s += read_grad(g.g, [scale](auto* x, std::int64_t n) {
          double acc = 0;
          for (std::int64_t i = 0; i < n; ++i) {
            const double v = static_cast<double>(x[i]) / scale;
            acc += v * v;
          }
          return acc;
        });
      }
      total = scale * std::sqrt(s);
    } else if (error_if_nonfinite) {
      const std::string who = names != nullptr
                                  ? fmt::format("parameter '{}'", (*names)[bad->index])
                                  : fmt::format("parameter {}", bad->index);
      throw NonFiniteNormError(fmt::format(
          "{}: the total {}-norm of {} gradients is {} ({} has a non-finite gradient, shape {}); "
          "no gradient was changed (pass error_if_nonfinite=false to get the norm back instead)",
          op, inf_norm ? "inf" : "2", grads.size(), total, who, bad->g.shape().str()));
    }
    if (!std::isfinite(total)) return total;  // reported to the caller, never written
  }

  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    for (const Grad& g : grads) {
      on_grad(g.g, [coef](auto* x, std::int64_t n) {
        using T = std::remove_pointer_t<decltype(x)>;
        const T c = static_cast<T>(coef);
        for (std::int64_t i = 0; i < n; ++i) x[i] *= c;
        return 0;
      });
    }
  }
  return total;
}

void clip_value_impl(const std::vector<Tensor>& params, double clip) {
  constexpr const char* op = "clip_grad_value";
  if (!(clip >= 0)) throw Error(fmt::format("{}: clip must be >= 0, got {}", op, clip));
  for (const Grad& g : collect_grads(op, params)) {
    on_grad(g.g, [clip](auto* x, std::int64_t n) {
      using T = std::remove_pointer_t<decltype(x)>;
      const T hi = static_cast<T>(clip), lo = -hi;
      // Written so that NaN stays NaN, as torch.clamp does.
      for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] > hi ? hi : (x[i] < lo ? lo : x[i]);
      return 0;
    });
  }
}

}  // namespace

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type,
                      bool error_if_nonfinite) {
  return clip_norm_impl(params, nullptr, max_norm, norm_type, error_if_nonfinite);
}

double clip_grad_norm(const nn::Module& module, double max_norm, double norm_type, bool error_if_nonfinite) {
  const nn::StateDict named = module.named_parameters();
  std::vector<Tensor> params;
  std::vector<std::string> names;
  params.reserve(named.size());
  names.reserve(named.size());
  for (const auto& [name, t] : named) {
    names.push_back(name);
    params.push_back(t);
  }
  return clip_norm_impl(params, &names, max_norm, norm_type, error_if_nonfinite);
}

void clip_grad_value(const std::vector<Tensor>& params, double clip) { clip_value_impl(params, clip); }

void clip_grad_value(const nn::Module& module, double clip) { clip_value_impl(module.parameters(), clip); }

}  // namespace xg::optim
