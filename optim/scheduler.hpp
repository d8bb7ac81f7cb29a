#pragma once
// Learning-rate schedulers with PyTorch's (torch 1.13) semantics and lr sequences.
//
// A scheduler drives an Optimizer through num_groups() / get_lr(g) / set_lr(g, lr) only.
// At construction it captures each group's current lr as its base lr and applies the
// schedule's epoch-0 value (like PyTorch's initial step: last_epoch() == 0 afterwards).
// Call step() once per epoch, after optimizer.step():
//
//     xg::optim::StepLR sched(opt, /*step_size=*/30, /*gamma=*/0.1);
//     for (epoch ...) { train(...); opt.step(); sched.step(); }
//
// The epoch schedulers (StepLR, ExponentialLR, CosineAnnealingLR, LinearWarmup) use
// PyTorch's recursive ("chainable") form: each step() reads the group's current lr and
// multiplies it by the schedule's factor for this epoch. That is what lets two schedulers
// act on one optimizer (ChainedScheduler), and it reproduces PyTorch's sequences to the
// last bit, rounding included. It also means an lr set by hand between steps is kept and
// scaled from there, as in PyTorch.
//
// Warmup composes through ChainedScheduler (PyTorch's ChainedScheduler: every step() steps
// each scheduler in order): the lr is base * warmup factor * inner schedule's factor.
//
//     auto sched = xg::optim::chain(xg::optim::LinearWarmup(opt, 5, 0.1),
//                                   xg::optim::CosineAnnealingLR(opt, 100));
//
// reproduces torch's ChainedScheduler([LinearLR(opt, 0.1, 1.0, total_iters=5),
// CosineAnnealingLR(opt, 100)]) exactly (tested against PyTorch fixtures).
//
// State: state_dict() is an nn::StateDict of 0-d tensors (int64 counters, float64 values),
// so it goes into a checkpoint .npz next to the optimizer's. load_state_dict() validates
// every entry (names, 0-d, dtype, values, the number of groups) before it changes anything
// and throws StateError otherwise; like PyTorch it restores the scheduler only, not the
// optimizer's current lr (load the optimizer's state too: it holds the lr).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../nn/module.hpp"
#include "optimizer.hpp"

namespace xg::optim {

namespace detail {
class StateReader;  // checked access to a state dict's 0-d entries (scheduler.cpp)
}

class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  LRScheduler(LRScheduler&&) = default;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;
  LRScheduler& operator=(LRScheduler&&) = delete;

  // Advances one epoch and writes the new lrs into the optimizer.
  virtual void step();
  // The lrs this scheduler last wrote (or found, for ReduceLROnPlateau), one per group.
  const std::vector<double>& get_last_lr() const { return last_lr_; }
  // Epochs stepped since construction.
  std::int64_t last_epoch() const { return last_epoch_; }
  // Each group's lr when the scheduler was built.
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  Optimizer& optimizer() const { return *opt_; }

  virtual nn::StateDict state_dict() const;
  void load_state_dict(const nn::StateDict& state);
  // Validates `state` completely and returns the function that applies it (ChainedScheduler
  // validates all its members before applying any). Throws StateError.
  virtual std::function<void()> prepare_load(const nn::StateDict& state);

 protected:
  // Captures the base lrs; derived constructors validate their options, then call
  // initial_step().
  LRScheduler(Optimizer& opt, const char* name);
  void initial_step();
  // The new lr of group g at epoch last_epoch_ (already incremented), from the current one.
  virtual double next_lr(std::size_t g, double current) const = 0;
  // Derived state beyond last_epoch / base lrs / last lrs.
  virtual void save_extra(nn::StateDict& out) const { (void)out; }
  // Reads and validates derived state from `in`; returns what applies it.
  virtual std::function<void()> prepare_extra(detail::StateReader& in);

  Optimizer* opt_;
  const char* name_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lr_;
  std::int64_t last_epoch_ = -1;
};

// lr = base * gamma^(epoch / step_size) (integer division): decays by gamma every step_size
// epochs. Errors: step_size <= 0, gamma <= 0 (or not finite).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& opt, std::int64_t step_size, double gamma = 0.1);
  std::int64_t step_size() const { return step_size_; }
  double gamma() const { return gamma_; }

 protected:
  double next_lr(std::size_t g, double current) const override;
  void save_extra(nn::StateDict& out) const override;
  std::function<void()> prepare_extra(detail::StateReader& in) override;

 private:
  std::int64_t step_size_;
  double gamma_;
};

// lr = base * gamma^epoch. Errors: gamma <= 0 (or not finite).
class ExponentialLR : public LRScheduler {
 public:
  ExponentialLR(Optimizer& opt, double gamma);
  double gamma() const { return gamma_; }

 protected:
  double next_lr(std::size_t g, double current) const override;
  void save_extra(nn::StateDict& out) const override;
  std::function<void()> prepare_extra(detail::StateReader& in) override;

 private:
  double gamma_;
};

// lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, computed with PyTorch's
// recursive form so the sequence (including past T_max, where the cosine rises back to
// base, periodically with period 2 T_max) is PyTorch's to the bit.
// Errors: T_max <= 0, eta_min < 0 (or not finite).
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& opt, std::int64_t T_max, double eta_min = 0.0);  // NOLINT: PyTorch's name
  std::int64_t T_max() const { return T_max_; }
  double eta_min() const { return eta_min_; }

 protected:
  double next_lr(std::size_t g, double current) const override;
  void save_extra(nn::StateDict& out) const override;
  std::function<void()> prepare_extra(detail::StateReader& in) override;

 private:
  std::int64_t T_max_;
  double eta_min_;
};

// Linear warmup: the lr factor goes linearly from start_factor at epoch 0 to 1 at epoch
// warmup_steps and stays 1 afterwards. This is PyTorch's LinearLR(start_factor,
// end_factor=1.0, total_iters=warmup_steps), recursive form; on its own lr = base * factor,
// chained (see chain()) it scales the other scheduler's lr.
// warmup_steps == 0 means no warmup (factor 1 throughout; PyTorch's LinearLR with
// total_iters=0 would instead keep start_factor forever).
// Errors: warmup_steps < 0, start_factor not in (0, 1].
class LinearWarmup : public LRScheduler {
 public:
  LinearWarmup(Optimizer& opt, std::int64_t warmup_steps, double start_factor);
  std::int64_t warmup_steps() const { return warmup_steps_; }
  double start_factor() const { return start_factor_; }

 protected:
  double next_lr(std::size_t g, double current) const override;
  void save_extra(nn::StateDict& out) const override;
  std::function<void()> prepare_extra(detail::StateReader& in) override;

 private:
  std::int64_t warmup_steps_;
  double start_factor_;
};

// PyTorch's ChainedScheduler: owns several epoch schedulers of ONE optimizer and steps each,
// in order, on every step(). get_last_lr() is the optimizer's lr after the last of them.
// state_dict(): each member's entries prefixed "<i>." plus "num_schedulers".
// Errors: no scheduler, a null one, or schedulers of different optimizers.
class ChainedScheduler : public LRScheduler {
 public:
  explicit ChainedScheduler(std::vector<std::unique_ptr<LRScheduler>> schedulers);
  void step() override;
  std::size_t size() const { return schedulers_.size(); }
  LRScheduler& operator[](std::size_t i) const { return *schedulers_.at(i); }
  nn::StateDict state_dict() const override;
  std::function<void()> prepare_load(const nn::StateDict& state) override;

 protected:
  double next_lr(std::size_t g, double current) const override;

 private:
  std::vector<std::unique_ptr<LRScheduler>> schedulers_;
};

// chain(LinearWarmup(opt, 5, 0.1), CosineAnnealingLR(opt, 100)): a ChainedScheduler that owns
// the given schedulers (moved in, in this order).
template <class... S>
ChainedScheduler chain(S&&... schedulers) {
  static_assert((std::is_base_of_v<LRScheduler, std::decay_t<S>> && ...));
  std::vector<std::unique_ptr<LRScheduler>> v;
  (v.push_back(std::make_unique<std::decay_t<S>>(std::move(schedulers))), ...);
  return ChainedScheduler(std::move(v));
}

// PyTorch's ReduceLROnPlateau. step(metric) once per epoch: when the metric has not improved
// (by `threshold`, relative or absolute) for more than `patience` epochs, every group's lr
// becomes max(lr * factor, min_lr[g]) (unless that changes it by eps or less), then
// `cooldown` epochs pass during which bad epochs are not counted.
//   mode "min": better means metric < best * (1 - threshold)  (rel) / best - threshold (abs)
//   mode "max": better means metric > best * (1 + threshold)  (rel) / best + threshold (abs)
// A NaN metric is never better (it counts as a bad epoch), as in PyTorch.
struct PlateauOptions {
  std::string mode = "min";             // "min" or "max"
  double factor = 0.1;                  // in (0, 1)
  std::int64_t patience = 10;           // >= 0
  double threshold = 1e-4;              // >= 0
  std::string threshold_mode = "rel";   // "rel" or "abs"
  std::int64_t cooldown = 0;            // >= 0
  double min_lr = 0.0;                  // >= 0, every group
  std::vector<double> min_lrs = {};     // if not empty: one per group (overrides min_lr)
  double eps = 1e-8;                    // >= 0
};

class ReduceLROnPlateau : public LRScheduler {
 public:
  explicit ReduceLROnPlateau(Optimizer& opt, PlateauOptions options = {});
  // Plateau scheduling needs a metric: step() without one is a StateError.
  void step() override;
  void step(double metric);

  double best() const { return best_; }
  std::int64_t num_bad_epochs() const { return num_bad_epochs_; }
  std::int64_t cooldown_counter() const { return cooldown_counter_; }
  bool in_cooldown() const { return cooldown_counter_ > 0; }
  const std::vector<double>& min_lrs() const { return min_lrs_; }

 protected:
  double next_lr(std::size_t g, double current) const override;
  void save_extra(nn::StateDict& out) const override;
  std::function<void()> prepare_extra(detail::StateReader& in) override;

 private:
  bool is_better(double a, double best) const;

  bool max_mode_;
  bool abs_threshold_;
  double factor_;
  std::int64_t patience_;
  double threshold_;
  std::int64_t cooldown_;
  std::vector<double> min_lrs_;
  double eps_;
  double best_;
  std::int64_t num_bad_epochs_ = 0;
  std::int64_t cooldown_counter_ = 0;
};

}  // namespace xg::optim
