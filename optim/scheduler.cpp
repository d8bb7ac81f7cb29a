#include "scheduler.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>

#include "../autograd/factory.hpp"

namespace xg::optim {

namespace detail {

// Reads 0-d entries of a scheduler state dict, checking presence, rank and dtype, and
// remembers what it read so that finish() can reject entries nobody asked for.
class StateReader {
 public:
  StateReader(const nn::StateDict& state, std::string who) : state_(state), who_(std::move(who)) {}

  double f64(const std::string& name) { return entry(name, Dtype::f64).item(); }
  std::int64_t i64(const std::string& name) {
    const Tensor t = entry(name, Dtype::i64);  // const: a read, not a write
    return t.data<std::int64_t>()[0];
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw StateError(fmt::format("{}.load_state_dict: {}", who_, what));
  }
  void finish() const {
    std::vector<std::string> extra;
    for (const auto& [name, t] : state_)
      if (!used_.count(name)) extra.push_back("'" + name + "'");
    if (!extra.empty()) fail(fmt::format("unexpected entries {}", fmt::join(extra, ", ")));
  }

 private:
  Tensor entry(const std::string& name, Dtype dtype) {
    for (const auto& [n, t] : state_) {
      if (n != name) continue;
      if (!t.defined()) fail(fmt::format("entry '{}' is an undefined tensor", name));
      if (t.ndim() != 0 || t.dtype() != dtype)
        fail(fmt::format("entry '{}' must be a 0-d {} tensor, got {} {}", name, dtype_name(dtype),
                         t.shape().str(), dtype_name(t.dtype())));
      used_.insert(name);
      return t;
    }
    fail(fmt::format("missing entry '{}'", name));
  }

  const nn::StateDict& state_;
  std::string who_;
  std::set<std::string> used_;
};

}  // namespace detail

namespace {

Tensor f64_entry(double v) { return scalar(v, Dtype::f64); }
Tensor i64_entry(std::int64_t v) {
  Tensor t = Tensor::empty(Shape{}, Dtype::i64);
  t.data<std::int64_t>()[0] = v;
  return t;
}

// Option checks shared by the constructors (Error) and load_state_dict (StateError).
void check_positive(const char* who, const char* what, double v) {
  if (!(v > 0) || !std::isfinite(v)) throw Error(fmt::format("{}: {} must be > 0, got {}", who, what, v));
}
void check_positive(const char* who, const char* what, std::int64_t v) {
  if (v <= 0) throw Error(fmt::format("{}: {} must be > 0, got {}", who, what, v));
}
void check_nonnegative(const char* who, const char* what, double v) {
  if (!(v >= 0) || !std::isfinite(v)) throw Error(fmt::format("{}: {} must be >= 0, got {}", who, what, v));
}
void check_nonnegative(const char* who, const char* what, std::int64_t v) {
  if (v < 0) throw Error(fmt::format("{}: {} must be >= 0, got {}", who, what, v));
}

// Runs a constructor-style check while loading, reporting it as a StateError.
template <class F>
void check_loaded(detail::StateReader& in, F&& check) {
  try {
    check();
  } catch (const StateError&) {
    throw;
  } catch (const Error& e) {
    in.fail(fmt::format("invalid option: {}", e.what()));
  }
}

std::vector<double> current_lrs(const Optimizer& opt) {
  std::vector<double> lrs(opt.num_groups());
  for (std::size_t g = 0; g < lrs.size(); ++g) lrs[g] = opt.get_lr(g);
  return lrs;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// LRScheduler

LRScheduler::LRScheduler(Optimizer& opt, const char* name)
    : opt_(&opt), name_(name), base_lrs_(current_lrs(opt)), last_lr_(base_lrs_) {
  if (base_lrs_.empty()) throw Error(fmt::format("{}: the optimizer has no parameter groups", name_));
}

void LRScheduler::initial_step() {
  last_epoch_ = -1;
  step();
}

void LRScheduler::step() {
  ++last_epoch_;
  const std::size_t n = opt_->num_groups();
  if (n != base_lrs_.size())
    throw StateError(fmt::format("{}.step: the optimizer has {} parameter groups, the scheduler was built for {}",
                                 name_, n, base_lrs_.size()));
  for (std::size_t g = 0; g < n; ++g) {
    const double lr = next_lr(g, opt_->get_lr(g));
    opt_->set_lr(g, lr);
    last_lr_[g] = lr;
  }
}

nn::StateDict LRScheduler::state_dict() const {
  nn::StateDict out;
  out.emplace_back("num_groups", i64_entry(static_cast<std::int64_t>(base_lrs_.size())));
  out.emplace_back("last_epoch", i64_entry(last_epoch_));
  for (std::size_t g = 0; g < base_lrs_.size(); ++g)
    out.emplace_back(fmt::format("base_lr.{}", g), f64_entry(base_lrs_[g]));
  for (std::size_t g = 0; g < last_lr_.size(); ++g)
    out.emplace_back(fmt::format("last_lr.{}", g), f64_entry(last_lr_[g]));
  save_extra(out);
  return out;
}

void LRScheduler::load_state_dict(const nn::StateDict& state) { prepare_load(state)(); }

std::function<void()> LRScheduler::prepare_load(const nn::StateDict& state) {
  detail::StateReader in(state, name_);
  const std::int64_t groups = in.i64("num_groups");
  if (groups != static_cast<std::int64_t>(opt_->num_groups()))
    in.fail(fmt::format("the state has {} parameter groups, the optimizer has {}", groups, opt_->num_groups()));
  const std::int64_t last_epoch = in.i64("last_epoch");
  if (last_epoch < 0) in.fail(fmt::format("last_epoch must be >= 0, got {}", last_epoch));
  std::vector<double> base(static_cast<std::size_t>(groups)), last(base.size());
  for (std::size_t g = 0; g < base.size(); ++g) {
    base[g] = in.f64(fmt::format("base_lr.{}", g));
    last[g] = in.f64(fmt::format("last_lr.{}", g));
    if (!(base[g] >= 0) || !std::isfinite(base[g]) || !(last[g] >= 0) || !std::isfinite(last[g]))
      in.fail(fmt::format("group {}: base_lr {} and last_lr {} must be finite and >= 0", g, base[g], last[g]));
  }
  std::function<void()> extra = prepare_extra(in);
  in.finish();
  return [this, last_epoch, base = std::move(base), last = std::move(last), extra = std::move(extra)] {
    last_epoch_ = last_epoch;
    base_lrs_ = base;
    last_lr_ = last;
    extra();
  };
}

std::function<void()> LRScheduler::prepare_extra(detail::StateReader& in) {
  (void)in;
  return [] {};
}

// ---------------------------------------------------------------------------------------------
// StepLR

StepLR::StepLR(Optimizer& opt, std::int64_t step_size, double gamma)
    : LRScheduler(opt, "StepLR"), step_size_(step_size), gamma_(gamma) {
  check_positive(name_, "step_size", step_size_);
  check_positive(name_, "gamma", gamma_);
  initial_step();
}

double StepLR::next_lr(std::size_t, double current) const {
  if (last_epoch_ == 0 || last_epoch_ % step_size_ != 0) return current;
  return current * gamma_;
}

void StepLR::save_extra(nn::StateDict& out) const {
  out.emplace_back("step_size", i64_entry(step_size_));
  out.emplace_back("gamma", f64_entry(gamma_));
}

std::function<void()> StepLR::prepare_extra(detail::StateReader& in) {
  const std::int64_t step_size = in.i64("step_size");
  const double gamma = in.f64("gamma");
  check_loaded(in, [&] {
    check_positive(name_, "step_size", step_size);
    check_positive(name_, "gamma", gamma);
  });
  return [this, step_size, gamma] {
    step_size_ = step_size;
    gamma_ = gamma;
  };
}

// ---------------------------------------------------------------------------------------------
// ExponentialLR

ExponentialLR::ExponentialLR(Optimizer& opt, double gamma) : LRScheduler(opt, "ExponentialLR"), gamma_(gamma) {
  check_positive(name_, "gamma", gamma_);
  initial_step();
}

double ExponentialLR::next_lr(std::size_t, double current) const {
  return last_epoch_ == 0 ? current : current * gamma_;
}

void ExponentialLR::save_extra(nn::StateDict& out) const { out.emplace_back("gamma", f64_entry(gamma_)); }

std::function<void()> ExponentialLR::prepare_extra(detail::StateReader& in) {
  const double gamma = in.f64("gamma");
  check_loaded(in, [&] { check_positive(name_, "gamma", gamma); });
  return [this, gamma] { gamma_ = gamma; };
}

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR

CosineAnnealingLR::CosineAnnealingLR(Optimizer& opt, std::int64_t T_max, double eta_min)
    : LRScheduler(opt, "CosineAnnealingLR"), T_max_(T_max), eta_min_(eta_min) {
  check_positive(name_, "T_max", T_max_);
  check_nonnegative(name_, "eta_min", eta_min_);
  initial_step();
}

double CosineAnnealingLR::next_lr(std::size_t g, double current) const {
  // PyTorch's recursive form, operation for operation (its sequence is our reference).
  constexpr double pi = std::numbers::pi;
  const std::int64_t e = last_epoch_, T = T_max_;
  if (e == 0) return current;
  // Python's modulo (non-negative): at these epochs the ratio form below would divide by 0.
  const std::int64_t r = ((e - 1 - T) % (2 * T) + 2 * T) % (2 * T);
  if (r == 0) return current + (base_lrs_[g] - eta_min_) * (1 - std::cos(pi / static_cast<double>(T))) / 2;
  return (1 + std::cos(pi * static_cast<double>(e) / static_cast<double>(T))) /
             (1 + std::cos(pi * static_cast<double>(e - 1) / static_cast<double>(T))) * (current - eta_min_) +
         eta_min_;
}

void CosineAnnealingLR::save_extra(nn::StateDict& out) const {
  out.emplace_back("T_max", i64_entry(T_max_));
  out.emplace_back("eta_min", f64_entry(eta_min_));
}

std::function<void()> CosineAnnealingLR::prepare_extra(detail::StateReader& in) {
  const std::int64_t T_max = in.i64("T_max");
  const double eta_min = in.f64("eta_min");
  check_loaded(in, [&] {
    check_positive(name_, "T_max", T_max);
    check_nonnegative(name_, "eta_min", eta_min);
  });
  return [this, T_max, eta_min] {
    T_max_ = T_max;
    eta_min_ = eta_min;
  };
}

// ---------------------------------------------------------------------------------------------
// LinearWarmup

namespace {
void check_warmup(const char* who, std::int64_t warmup_steps, double start_factor) {
  check_nonnegative(who, "warmup_steps", warmup_steps);
  if (!(start_factor > 0 && start_factor <= 1))
    throw Error(fmt::format("{}: start_factor must be in (0, 1], got {}", who, start_factor));
}
}  // namespace

LinearWarmup::LinearWarmup(Optimizer& opt, std::int64_t warmup_steps, double start_factor)
    : LRScheduler(opt, "LinearWarmup"), warmup_steps_(warmup_steps), start_factor_(start_factor) {
  check_warmup(name_, warmup_steps_, start_factor_);
  initial_step();
}

double LinearWarmup::next_lr(std::size_t, double current) const {
  // PyTorch's LinearLR recursive form with end_factor = 1.
  constexpr double end = 1.0;
  const std::int64_t e = last_epoch_;
  if (warmup_steps_ == 0 || e > warmup_steps_) return current;
  if (e == 0) return current * start_factor_;
  return current * (1. + (end - start_factor_) / (static_cast<double>(warmup_steps_) * start_factor_ +
                                                   static_cast<double>(e - 1) * (end - start_factor_)));
}

void LinearWarmup::save_extra(nn::StateDict& out) const {
  out.emplace_back("warmup_steps", i64_entry(warmup_steps_));
  out.emplace_back("start_factor", f64_entry(start_factor_));
}

std::function<void()> LinearWarmup::prepare_extra(detail::StateReader& in) {
  const std::int64_t warmup_steps = in.i64("warmup_steps");
  const double start_factor = in.f64("start_factor");
  check_loaded(in, [&] { check_warmup(name_, warmup_steps, start_factor); });
  return [this, warmup_steps, start_factor] {
    warmup_steps_ = warmup_steps;
    start_factor_ = start_factor;
  };
}

// ---------------------------------------------------------------------------------------------
// ChainedScheduler

namespace {
Optimizer& first_optimizer(const std::vector<std::unique_ptr<LRScheduler>>& s) {
  if (s.empty()) throw Error("ChainedScheduler: needs at least one scheduler");
  for (std::size_t i = 0; i < s.size(); ++i)
    if (!s[i]) throw Error(fmt::format("ChainedScheduler: scheduler {} is null", i));
  for (std::size_t i = 1; i < s.size(); ++i)
    if (&s[i]->optimizer() != &s[0]->optimizer())
      throw Error(fmt::format("ChainedScheduler: scheduler {} drives a different optimizer than scheduler 0", i));
  return s[0]->optimizer();
}
}  // namespace

ChainedScheduler::ChainedScheduler(std::vector<std::unique_ptr<LRScheduler>> schedulers)
    : LRScheduler(first_optimizer(schedulers), "ChainedScheduler"), schedulers_(std::move(schedulers)) {
  // The members already applied their epoch-0 values when they were built.
  base_lrs_ = schedulers_.front()->base_lrs();
  last_lr_ = current_lrs(*opt_);
  last_epoch_ = 0;
}

void ChainedScheduler::step() {
  for (auto& s : schedulers_) s->step();
  ++last_epoch_;
  last_lr_ = current_lrs(*opt_);
}

double ChainedScheduler::next_lr(std::size_t, double current) const { return current; }

nn::StateDict ChainedScheduler::state_dict() const {
  nn::StateDict out;
  out.emplace_back("num_schedulers", i64_entry(static_cast<std::int64_t>(schedulers_.size())));
  out.emplace_back("last_epoch", i64_entry(last_epoch_));
  for (std::size_t i = 0; i < schedulers_.size(); ++i)
    for (auto& [name, t] : schedulers_[i]->state_dict()) out.emplace_back(fmt::format("{}.{}", i, name), t);
  return out;
}

std::function<void()> ChainedScheduler::prepare_load(const nn::StateDict& state) {
  detail::StateReader in(state, name_);
  const std::int64_t n = in.i64("num_schedulers");
  if (n != static_cast<std::int64_t>(schedulers_.size()))
    in.fail(fmt::format("the state has {} schedulers, this chain has {}", n, schedulers_.size()));
  const std::int64_t last_epoch = in.i64("last_epoch");
  if (last_epoch < 0) in.fail(fmt::format("last_epoch must be >= 0, got {}", last_epoch));
  std::vector<nn::StateDict> parts(schedulers_.size());
  for (const auto& [name, t] : state) {
    if (name == "num_schedulers" || name == "last_epoch") continue;
    const auto dot = name.find('.');
    std::size_t i = parts.size();
    if (dot != std::string::npos && dot > 0 &&
        name.find_first_not_of("0123456789") == dot && dot <= 6)
      i = std::stoul(name.substr(0, dot));
    if (i >= parts.size()) in.fail(fmt::format("unexpected entry '{}'", name));
    parts[i].emplace_back(name.substr(dot + 1), t);
  }
  std::vector<std::function<void()>> commits;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    try {
      commits.push_back(schedulers_[i]->prepare_load(parts[i]));
    } catch (const StateError& e) {
      in.fail(fmt::format("scheduler {}: {}", i, e.what()));
    }
  }
  return [this, last_epoch, commits = std::move(commits)] {
    for (const auto& c : commits) c();
    last_epoch_ = last_epoch;
    base_lrs_ = schedulers_.front()->base_lrs();
    last_lr_ = schedulers_.back()->get_last_lr();
  };
}

// ---------------------------------------------------------------------------------------------
// ReduceLROnPlateau

namespace {
struct PlateauChecked {
  bool max_mode;
  bool abs_threshold;
  std::vector<double> min_lrs;
};

PlateauChecked check_plateau(const PlateauOptions& o, std::size_t groups) {
  constexpr const char* who = "ReduceLROnPlateau";
  PlateauChecked c{};
  if (o.mode != "min" && o.mode != "max")
    throw Error(fmt::format("{}: mode must be \"min\" or \"max\", got \"{}\"", who, o.mode));
  if (o.threshold_mode != "rel" && o.threshold_mode != "abs")
    throw Error(fmt::format("{}: threshold_mode must be \"rel\" or \"abs\", got \"{}\"", who, o.threshold_mode));
  if (!(o.factor > 0 && o.factor < 1))
    throw Error(fmt::format("{}: factor must be in (0, 1), got {}", who, o.factor));
  check_nonnegative(who, "patience", o.patience);
  check_nonnegative(who, "threshold", o.threshold);
  check_nonnegative(who, "cooldown", o.cooldown);
  check_nonnegative(who, "eps", o.eps);
  if (o.min_lrs.empty()) {
    check_nonnegative(who, "min_lr", o.min_lr);
    c.min_lrs.assign(groups, o.min_lr);
  } else {
    if (o.min_lrs.size() != groups)
      throw Error(fmt::format("{}: min_lrs has {} values, the optimizer has {} parameter groups", who,
                              o.min_lrs.size(), groups));
    for (double v : o.min_lrs) check_nonnegative(who, "min_lr", v);
    c.min_lrs = o.min_lrs;
  }
  c.max_mode = o.mode == "max";
  c.abs_threshold = o.threshold_mode == "abs";
  return c;
}
}  // namespace

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& opt, PlateauOptions o) : LRScheduler(opt, "ReduceLROnPlateau") {
  PlateauChecked c = check_plateau(o, base_lrs_.size());
  max_mode_ = c.max_mode;
  abs_threshold_ = c.abs_threshold;
  min_lrs_ = std::move(c.min_lrs);
  factor_ = o.factor;
  patience_ = o.patience;
  threshold_ = o.threshold;
  cooldown_ = o.cooldown;
  eps_ = o.eps;
  best_ = max_mode_ ? -INFINITY : INFINITY;
  // PyTorch's plateau scheduler changes nothing at construction.
  last_epoch_ = 0;
}

void ReduceLROnPlateau::step() {
  throw StateError("ReduceLROnPlateau.step: needs the metric, call step(metric)");
}

bool ReduceLROnPlateau::is_better(double a, double best) const {
  if (!max_mode_) return abs_threshold_ ? a < best - threshold_ : a < best * (1. - threshold_);
  return abs_threshold_ ? a > best + threshold_ : a > best * (threshold_ + 1.);
}

void ReduceLROnPlateau::step(double metric) {
  const std::size_t n = opt_->num_groups();
  if (n != min_lrs_.size())
    throw StateError(fmt::format("ReduceLROnPlateau.step: the optimizer has {} parameter groups, the scheduler "
                                 "was built for {}",
                                 n, min_lrs_.size()));
  ++last_epoch_;
  if (is_better(metric, best_)) {
    best_ = metric;
    num_bad_epochs_ = 0;
  } else {
    ++num_bad_epochs_;
  }
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    num_bad_epochs_ = 0;  // bad epochs in cooldown are ignored
  }
  if (num_bad_epochs_ > patience_) {
    for (std::size_t g = 0; g < n; ++g) {
      const double old_lr = opt_->get_lr(g);
      const double new_lr = next_lr(g, old_lr);
      if (old_lr - new_lr > eps_) opt_->set_lr(g, new_lr);
    }
    cooldown_counter_ = cooldown_;
    num_bad_epochs_ = 0;
  }
  last_lr_ = current_lrs(*opt_);
}

double ReduceLROnPlateau::next_lr(std::size_t g, double current) const {
  return std::max(current * factor_, min_lrs_[g]);
}

// Modes are saved as 0-d int64 flags: mode_max (0 = "min", 1 = "max"), threshold_abs
// (0 = "rel", 1 = "abs").
void ReduceLROnPlateau::save_extra(nn::StateDict& out) const {
  out.emplace_back("mode_max", i64_entry(max_mode_ ? 1 : 0));
  out.emplace_back("threshold_abs", i64_entry(abs_threshold_ ? 1 : 0));
  out.emplace_back("factor", f64_entry(factor_));
  out.emplace_back("patience", i64_entry(patience_));
  out.emplace_back("threshold", f64_entry(threshold_));
  out.emplace_back("cooldown", i64_entry(cooldown_));
  for (std::size_t g = 0; g < min_lrs_.size(); ++g) out.emplace_back(fmt::format("min_lr.{}", g), f64_entry(min_lrs_[g]));
  out.emplace_back("eps", f64_entry(eps_));
  out.emplace_back("best", f64_entry(best_));
  out.emplace_back("num_bad_epochs", i64_entry(num_bad_epochs_));
  out.emplace_back("cooldown_counter", i64_entry(cooldown_counter_));
}

std::function<void()> ReduceLROnPlateau::prepare_extra(detail::StateReader& in) {
  PlateauOptions o;
  const std::int64_t mode_max = in.i64("mode_max"), threshold_abs = in.i64("threshold_abs");
  if ((mode_max != 0 && mode_max != 1) || (threshold_abs != 0 && threshold_abs != 1))
    in.fail(fmt::format("mode_max ({}) and threshold_abs ({}) must be 0 or 1", mode_max, threshold_abs));
  o.mode = mode_max ? "max" : "min";
  o.threshold_mode = threshold_abs ? "abs" : "rel";
  o.factor = in.f64("factor");
  o.patience = in.i64("patience");
  o.threshold = in.f64("threshold");
  o.cooldown = in.i64("cooldown");
  for (std::size_t g = 0; g < base_lrs_.size(); ++g) o.min_lrs.push_back(in.f64(fmt::format("min_lr.{}", g)));
  o.eps = in.f64("eps");
  const double best = in.f64("best");
  const std::int64_t bad = in.i64("num_bad_epochs"), cool = in.i64("cooldown_counter");
  PlateauChecked c;
  check_loaded(in, [&] { c = check_plateau(o, base_lrs_.size()); });
  if (std::isnan(best)) in.fail("best is NaN");
  if (bad < 0 || cool < 0 || cool > o.cooldown)
    in.fail(fmt::format("num_bad_epochs {} must be >= 0 and cooldown_counter {} in [0, cooldown = {}]", bad, cool,
                        o.cooldown));
  return [this, o, c, best, bad, cool] {
    max_mode_ = c.max_mode;
    abs_threshold_ = c.abs_threshold;
    min_lrs_ = c.min_lrs;
    factor_ = o.factor;
    patience_ = o.patience;
    threshold_ = o.threshold;
    cooldown_ = o.cooldown;
    eps_ = o.eps;
    best_ = best;
    num_bad_epochs_ = bad;
    cooldown_counter_ = cool;
  };
}

}  // namespace xg::optim
