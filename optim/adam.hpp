#pragma once
// Adam and AdamW, PyTorch 1.13's updates (torch.optim.Adam / AdamW), per parameter p with
// gradient g, t = this parameter's step count after increment:
//   Adam:   g <- g + weight_decay * p                 (L2 penalty in the gradient)
//   AdamW:  p <- p * (1 - lr * weight_decay)          (decoupled decay, before the update)
//   m <- beta1 * m + (1 - beta1) * g                  (exp_avg)
//   v <- beta2 * v + (1 - beta2) * g * g              (exp_avg_sq)
//   amsgrad: vmax <- max(vmax, v), use vmax for v     (max_exp_avg_sq)
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// State: step, exp_avg, exp_avg_sq, [max_exp_avg_sq]. Adam's and AdamW's states have the
// same entries, so only their type.<Name> entry tells them apart: one without it is refused.
#include <string>
#include <utility>
#include <vector>

#include "optimizer.hpp"

namespace xg::optim {

struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;

  template <class F> void visit(F&& f) {
    f("lr", lr);
    f("beta1", betas.first);
    f("beta2", betas.second);
    f("eps", eps);
    f("weight_decay", weight_decay);
    f("amsgrad", amsgrad);
  }
  // lr, eps, weight_decay >= 0; betas in [0, 1).
  void validate(const char* optimizer) const;
};

// Adam's options with PyTorch's AdamW default weight_decay (a separate aggregate so
// designated initialisers work: AdamWOptions{.lr = 3e-4}).
struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;

  template <class F> void visit(F&& f) {
    f("lr", lr);
    f("beta1", betas.first);
    f("beta2", betas.second);
    f("eps", eps);
    f("weight_decay", weight_decay);
    f("amsgrad", amsgrad);
  }
  void validate(const char* optimizer) const;
};

// A group: AdamGroup{{w1, b1}} (the optimizer's defaults) or AdamGroup{{w2}, AdamOptions{.lr = 0.1}}.
using AdamGroup = ParamGroup<AdamOptions>;
using AdamWGroup = ParamGroup<AdamWOptions>;

class Adam : public GroupedOptimizer<AdamOptions> {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options = {});
  Adam(std::vector<ParamGroup<AdamOptions>> groups, AdamOptions defaults = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names(const AdamOptions& o) const override;
  const char* look_alike() const override { return "AdamW"; }
};

class AdamW : public GroupedOptimizer<AdamWOptions> {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions options = {});
  AdamW(std::vector<ParamGroup<AdamWOptions>> groups, AdamWOptions defaults = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names(const AdamWOptions& o) const override;
  const char* look_alike() const override { return "Adam"; }
};

}  // namespace xg::optim
