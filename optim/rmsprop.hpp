#pragma once
// RMSprop, PyTorch 1.13's update (torch.optim.RMSprop), per parameter p with gradient g:
//   g <- g + weight_decay * p
//   v <- alpha * v + (1 - alpha) * g * g                          (square_avg)
//   centered:  m <- alpha * m + (1 - alpha) * g   (grad_avg);  d = sqrt(v - m * m) + eps
//   else:      d = sqrt(v) + eps
//   momentum > 0:  b <- momentum * b + g / d;  p <- p - lr * b     (momentum_buffer)
//   else:          p <- p - lr * g / d
// Every buffer starts at 0. State: step, square_avg, [momentum_buffer], [grad_avg].
#include <string>
#include <vector>

#include "optimizer.hpp"

namespace xg::optim {

struct RMSpropOptions {
  double lr = 1e-2;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
  bool centered = false;

  template <class F> void visit(F&& f) {
    f("lr", lr);
    f("alpha", alpha);
    f("eps", eps);
    f("weight_decay", weight_decay);
    f("momentum", momentum);
    f("centered", centered);
  }
  // Every option >= 0.
  void validate(const char* optimizer) const;
};

// A group: RMSpropGroup{{w1, b1}} (the optimizer's defaults) or RMSpropGroup{{w2}, RMSpropOptions{.lr = 0.1}}.
using RMSpropGroup = ParamGroup<RMSpropOptions>;

class RMSprop : public GroupedOptimizer<RMSpropOptions> {
 public:
  RMSprop(std::vector<Tensor> params, RMSpropOptions options = {});
  RMSprop(std::vector<ParamGroup<RMSpropOptions>> groups, RMSpropOptions defaults = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names(const RMSpropOptions& o) const override;
};

}  // namespace xg::optim
