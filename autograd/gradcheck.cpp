#include "gradcheck.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "factory.hpp"
#include "grad.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

std::string GradcheckReport::str() const {
  if (checked == 0) return kind + ": nothing to check (no float64 input)";
  return fmt::format(
      "{} {}: {} comparisons, max abs error {:.3e}, max rel error {:.3e}; worst: input {} {} "
      "(analytic {:.9g}, numeric {:.9g})",
      kind, passed ? "PASSED" : "FAILED", checked, max_abs_err, max_rel_err, worst_input,
      worst_element >= 0 ? fmt::format("element {}", worst_element) : std::string("random direction"), analytic,
      numeric);
}

namespace {

// records: the objective itself differentiates (gradgradcheck), so it runs with grad
// mode on, and its graph is dropped with it.
GradcheckReport check_core(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                           const GradcheckOptions& opts, bool records = false) {
  for (std::size_t k = 0; k < wrt.size(); ++k) {
    const Tensor& p = wrt[k];
    if (!p.defined() || p.dtype() != Dtype::f64 || !p.is_leaf()) {
      throw DtypeError(fmt::format("gradcheck: tensor {} to check must be a float64 leaf{}", k,
                                   p.defined() ? fmt::format(" (got {} {})", dtype_name(p.dtype()), p.shape().str())
                                               : std::string(" (got an undefined tensor)")));
    }
  }
  if (!(opts.eps > 0.0) || opts.atol < 0.0 || opts.rtol < 0.0 || opts.projections < 1) {
    throw Error(fmt::format("gradcheck: invalid options eps={} atol={} rtol={} projections={}", opts.eps, opts.atol,
                            opts.rtol, opts.projections));
  }
  DefaultDtypeGuard dtype_guard(Dtype::f64);

  // Keep the callers' gradients and flags; check with fresh ones.
  std::vector<Tensor> saved_grads;
  std::vector<bool> saved_flags;
  std::vector<Tensor> params = wrt;
  for (Tensor& p : params) {
    saved_grads.push_back(p.grad());
    saved_flags.push_back(p.requires_grad());
    p.zero_grad();
    p.requires_grad_(true);
  }
  struct Restore {
    std::vector<Tensor>& ps;
    std::vector<Tensor>& gs;
    std::vector<bool>& fs;
    ~Restore() {
      for (std::size_t k = 0; k < ps.size(); ++k) {
        ps[k].set_grad(gs[k]);
        ps[k].requires_grad_(fs[k]);
      }
    }
  } restore{params, saved_grads, saved_flags};

  Generator gen(opts.seed);
  Tensor w;
  {
    Tensor y = fn();
    if (!y.defined() || y.dtype() != Dtype::f64) {
      throw DtypeError(fmt::format(
          "gradcheck: fn returned {}; gradcheck runs in float64 (build the model inside fn, or call "
          "model.to(f64))",
          y.defined() ? std::string(dtype_name(y.dtype())) + " " + y.shape().str() : std::string("undefined")));
    }
    // Asymmetric weights with random signs: a backward that swaps or mirrors elements
    // cannot pass by cancellation.
    w = uniform(y.shape(), 0.5, 1.5, Dtype::f64, &gen);
    double* wp = w.data<double>();
    for (std::int64_t i = 0; i < w.numel(); ++i) {
      if (gen.uniform() < 0.5) wp[i] = -wp[i];
    }
    if (!y.requires_grad()) {
      // fn ignores every checked tensor: all gradients are zero.
    } else {
      sum(mul(y, w)).backward();
    }
  }
  auto objective = [&]() {
    if (records) return sum(mul(fn(), w)).item();
    NoGradGuard no_grad;
    return sum(mul(fn(), w)).item();
  };

  GradcheckReport rep;
  double worst_score = -1.0;
  auto compare = [&](int input, std::int64_t element, double a, double n) {
    const double abs_err = std::fabs(a - n);
    // Relative error is only meaningful where the gradient itself is above the noise floor.
    const double scale = std::max(std::fabs(a), std::fabs(n));
    const double rel_err = scale > opts.atol ? abs_err / scale : 0.0;
    const double allowed = opts.atol + opts.rtol * std::fabs(n);
    rep.checked++;
    rep.max_abs_err = std::max(rep.max_abs_err, abs_err);
    rep.max_rel_err = std::max(rep.max_rel_err, rel_err);
    const double score = abs_err / allowed;
    if (!(abs_err <= allowed)) rep.passed = false;
    if (score > worst_score || std::isnan(score)) {
      worst_score = std::isnan(score) ? INFINITY : score;
      rep.worst_input = input;
      rep.worst_element = element;
      rep.analytic = a;
      rep.numeric = n;
    }
  };

  for (std::size_t k = 0; k < params.size(); ++k) {
    Tensor& p = params[k];
    double* x = p.data<double>();
    const std::int64_t n = p.numel();
    const Tensor g = p.grad();
    std::vector<double> ana(static_cast<std::size_t>(n), 0.0);
    if (g.defined()) ana = g.to_vector<double>();
    if (!opts.random_projection) {
      for (std::int64_t i = 0; i < n; ++i) {
        const double old = x[i];
        // A write through a kept pointer: bump the version each time, or a product that
        // kept p packed (a parameter) would go on reading the unperturbed panels.
        x[i] = old + opts.eps;
        p.bump_version();
        const double fp = objective();
        x[i] = old - opts.eps;
        p.bump_version();
        const double fm = objective();
        x[i] = old;
        p.bump_version();
        compare(static_cast<int>(k), i, ana[static_cast<std::size_t>(i)], (fp - fm) / (2.0 * opts.eps));
      }
    } else {
      std::vector<double> base(x, x + n);
      for (int r = 0; r < opts.projections; ++r) {
        std::vector<double> v(static_cast<std::size_t>(n));
        double a = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          v[static_cast<std::size_t>(i)] = gen.normal();
          a += v[static_cast<std::size_t>(i)] * ana[static_cast<std::size_t>(i)];
        }
        for (std::int64_t i = 0; i < n; ++i) x[i] = base[static_cast<std::size_t>(i)] + opts.eps * v[static_cast<std::size_t>(i)];
        p.bump_version();
        const double fp = objective();
        for (std::int64_t i = 0; i < n; ++i) x[i] = base[static_cast<std::size_t>(i)] - opts.eps * v[static_cast<std::size_t>(i)];
        p.bump_version();
        const double fm = objective();
        for (std::int64_t i = 0; i < n; ++i) x[i] = base[static_cast<std::size_t>(i)];
        p.bump_version();
        compare(static_cast<int>(k), -1, a, (fp - fm) / (2.0 * opts.eps));
      }
    }
  }
  return rep;
}

}  // namespace

namespace {
// gradcheck's inputs: float ones become float64 leaves of their own (wrt), the rest pass.
void f64_leaves(const char* what, const std::vector<Tensor>& inputs, std::vector<Tensor>& xs, std::vector<Tensor>& wrt) {
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& in = inputs[k];
    if (!in.defined()) throw StateError(fmt::format("{}: input {} is undefined", what, k));
    if (is_floating(in.dtype())) {
      Tensor x = in.detach().to(Dtype::f64);
      if (x.is_same(in) || in.dtype() == Dtype::f64) x = in.detach().clone();
      xs.push_back(x);
      wrt.push_back(x);
    } else {
      xs.push_back(in);
    }
  }
}

// The second-order check: the first derivative grad(fn(), wrt, gy) (with create_graph),
// flattened into one vector, is checked as a function of wrt and of gy, a random seed
// that is itself a checked input (the backward's dependence on g is what a double
// backward differentiates too).
GradcheckReport second_order(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                             const GradcheckOptions& opts) {
  DefaultDtypeGuard dtype_guard(Dtype::f64);
  Shape ys;
  {
    // With recording on: fn may itself differentiate (a third-order check).
    const Tensor y = fn();
    if (!y.defined() || y.dtype() != Dtype::f64) {
      throw DtypeError(fmt::format("gradgradcheck: fn returned {}; it runs in float64",
                                   y.defined() ? std::string(dtype_name(y.dtype())) + " " + y.shape().str()
                                               : std::string("undefined")));
    }
    ys = y.shape();
  }
  Generator gen(opts.seed ^ 0x5eedULL);
  Tensor gy = uniform(ys, -1.0, 1.0, Dtype::f64, &gen);
  std::vector<Tensor> all = wrt;
  all.push_back(gy);
  auto first = [&]() -> Tensor {
    Tensor y = fn();
    std::vector<Tensor> parts;
    std::vector<Tensor> g;
    if (y.requires_grad()) g = grad({y}, wrt, {gy}, {.create_graph = true, .allow_unused = true});
    for (std::size_t k = 0; k < wrt.size(); ++k) {
      parts.push_back(k < g.size() && g[k].defined() ? reshape(g[k], Shape{wrt[k].numel()})
                                                      : zeros(Shape{wrt[k].numel()}, Dtype::f64));
    }
    return parts.empty() ? zeros(Shape{0}, Dtype::f64) : concat(parts, 0);
  };
  GradcheckReport rep = check_core(first, all, opts, true);
  rep.kind = "gradgradcheck";
  return rep;
}
}  // namespace

GradcheckReport gradgradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                              const std::vector<Tensor>& inputs, const GradcheckOptions& opts) {
  std::vector<Tensor> xs;
  std::vector<Tensor> wrt;
  f64_leaves("gradgradcheck", inputs, xs, wrt);
  for (Tensor& x : wrt) x.requires_grad_(true);
  return second_order([&] { return fn(xs); }, wrt, opts);
}

GradcheckReport gradgradcheck(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                              const GradcheckOptions& opts) {
  for (std::size_t k = 0; k < wrt.size(); ++k) {
    const Tensor& p = wrt[k];
    if (!p.defined() || p.dtype() != Dtype::f64 || !p.is_leaf()) {
      throw DtypeError(fmt::format("gradgradcheck: tensor {} to check must be a float64 leaf", k));
    }
  }
  std::vector<bool> flags;
  std::vector<Tensor> ps = wrt;
  for (Tensor& p : ps) {
    flags.push_back(p.requires_grad());
    p.requires_grad_(true);
  }
  struct Restore {
    std::vector<Tensor>& ps;
    std::vector<bool>& fs;
    ~Restore() {
      for (std::size_t k = 0; k < ps.size(); ++k) ps[k].requires_grad_(fs[k]);
    }
  } restore{ps, flags};
  return second_order(fn, ps, opts);
}

GradcheckReport gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opts) {
  std::vector<Tensor> xs;
  std::vector<Tensor> wrt;
  f64_leaves("gradcheck", inputs, xs, wrt);
  return check_core([&] { return fn(xs); }, wrt, opts);
}

GradcheckReport gradcheck(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                          const GradcheckOptions& opts) {
  return check_core(fn, wrt, opts);
}

}  // namespace xg
