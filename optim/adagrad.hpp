#pragma once
// Adagrad, PyTorch 1.13's update (torch.optim.Adagrad), per parameter p with gradient g,
// t = this parameter's step count after increment:
//   g <- g + weight_decay * p
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum <- sum + g * g              (sum starts at initial_accumulator_value)
//   p <- p - clr * g / (sqrt(sum) + eps)
// State: step, sum.
// A group's own initial_accumulator_value is honoured (PyTorch 1.13 fills every group's sum
// from the constructor's value instead; with no per-group override the two agree).
#include <string>
#include <vector>

#include "optimizer.hpp"

namespace xg::optim {

struct AdagradOptions {
  double lr = 1e-2;
  double lr_decay = 0.0;
  double weight_decay = 0.0;
  double initial_accumulator_value = 0.0;
  double eps = 1e-10;

  template <class F> void visit(F&& f) {
    f("lr", lr);
    f("lr_decay", lr_decay);
    f("weight_decay", weight_decay);
    f("initial_accumulator_value", initial_accumulator_value);
    f("eps", eps);
  }
  // Every option >= 0.
  void validate(const char* optimizer) const;
};

// A group: AdagradGroup{{w1, b1}} (the optimizer's defaults) or AdagradGroup{{w2}, AdagradOptions{.lr = 0.1}}.
using AdagradGroup = ParamGroup<AdagradOptions>;

class Adagrad : public GroupedOptimizer<AdagradOptions> {
 public:
  Adagrad(std::vector<Tensor> params, AdagradOptions options = {});
  Adagrad(std::vector<ParamGroup<AdagradOptions>> groups, AdagradOptions defaults = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names(const AdagradOptions& o) const override;
};

}  // namespace xg::optim
