#pragma once
// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay,
// PyTorch 1.13's update (torch.optim.SGD), per parameter p with gradient g:
//   g <- g + weight_decay * p
//   if momentum != 0:  b <- g on the first step, else  b <- momentum * b + (1 - dampening) * g
//                      g <- g + momentum * b  (nesterov)   or   g <- b
//   p <- p - lr * g
// State: momentum_buffer (only when momentum != 0).
#include <string>
#include <vector>

#include "optimizer.hpp"

namespace xg::optim {

struct SGDOptions {
  double lr = 1e-2;  // PyTorch has no default here; pass one (SGDOptions{.lr = 0.1}).
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;

  template <class F> void visit(F&& f) {
    f("lr", lr);
    f("momentum", momentum);
    f("dampening", dampening);
    f("weight_decay", weight_decay);
    f("nesterov", nesterov);
  }
  // lr, momentum, weight_decay >= 0; nesterov needs momentum > 0 and dampening == 0.
  void validate(const char* optimizer) const;
};

// A group: SGDGroup{{w1, b1}} (the optimizer's defaults) or SGDGroup{{w2}, SGDOptions{.lr = 0.1}}.
using SGDGroup = ParamGroup<SGDOptions>;

class SGD : public GroupedOptimizer<SGDOptions> {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options);
  SGD(std::vector<ParamGroup<SGDOptions>> groups, SGDOptions defaults);
  void step() override;

 protected:
  std::vector<std::string> buffer_names(const SGDOptions& o) const override;
};

}  // namespace xg::optim
