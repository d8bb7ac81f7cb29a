#pragma once
// xg::optim::Optimizer: the base of SGD, Adagrad, RMSprop, Adam and AdamW.
// (Skeleton fixed here so schedulers and checkpoints can be written against it; the
// optimizer implementation fills in the rest.)
#include <cstddef>
#include <vector>

#include "xgrad/autograd/tensor.hpp"
#include "xgrad/nn/module.hpp"

namespace xg::optim {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Applies one update to every parameter that has a gradient.
  virtual void step() = 0;
  // Drops every parameter's gradient.
  virtual void zero_grad() = 0;
  // Learning rate of each parameter group: what schedulers read and write.
  virtual std::size_t num_groups() const = 0;
  virtual double get_lr(std::size_t group) const = 0;
  virtual void set_lr(std::size_t group, double lr) = 0;
  // Every moment, step count and option, as named tensors (a checkpoint saves these).
  virtual nn::StateDict state_dict() const = 0;
  // Validates everything first; a mismatch is a StateError and changes nothing.
  virtual void load_state_dict(const nn::StateDict& state) = 0;
};

}  // namespace xg::optim
