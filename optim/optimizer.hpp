#pragma once
// xg::optim::Optimizer: the base of SGD, Adagrad, RMSprop, Adam and AdamW.
// (Skeleton fixed here so schedulers and checkpoints can be written against it; the
// optimizer implementation fills in the rest.)
//
// Below the fixed interface sit two helpers the concrete optimizers derive from:
// - OptimizerBase (non-template, optimizer.cpp): the flat parameter list, the parameter
//   range of each group, and per-parameter state beside it (Flashlight style: state[i]
//   belongs to params()[i]); state dict writing and all load-time validation.
// - GroupedOptimizer<Options>: per-group options of one concrete type.
// State is created lazily on a parameter's first step with a gradient, so a parameter that
// never gets a gradient has no state (like PyTorch).
//
// state_dict() names (all 0-d unless a buffer):
//   type.<Name>               int64 1: the optimizer that saved the state ("type.Adam"), so
//                             that Adam's state cannot load into AdamW (their entries are
//                             the same); loading another type's state is a StateError
//   group.<g>.params          int64 number of parameters in group g (groups are consecutive
//                             ranges of the flat list, in construction order)
//   group.<g>.<option>        float64 option value (bools as 0/1; Adam's betas as beta1, beta2)
//   state.<i>.step            int64 number of updates parameter i received
//   state.<i>.<buffer>        the buffer, with parameter i's shape and dtype
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../autograd/tensor.hpp"
#include "../nn/module.hpp"

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

// A parameter group: its parameters and, optionally, its own options (otherwise the
// optimizer's defaults). E.g. SGD({{{w1, b1}}, {{w2}, SGDOptions{.lr = 0.1}}}, defaults).
template <class Options>
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<Options> options = std::nullopt;
};

class OptimizerBase : public Optimizer {
 public:
  void zero_grad() override;
  std::size_t num_groups() const override { return group_begin_.size() - 1; }
  // Every parameter, groups concatenated in order.
  const std::vector<Tensor>& params() const { return params_; }
  // Updates parameter i has received (0 = no state yet).
  std::int64_t step_count(std::size_t param) const;

 protected:
  struct ParamState {
    std::int64_t step = 0;        // 0: not created yet
    std::vector<Tensor> buffers;  // in the order of the group's buffer_names()
  };
  using OptionValues = std::vector<std::pair<std::string, double>>;

  // Validates the parameter lists (non-empty, float leaves, no parameter twice).
  OptimizerBase(const char* name, std::vector<std::vector<Tensor>> groups);

  // Throws IndexError naming `what` when g is not a group.
  void check_group(const char* what, std::size_t g) const;
  std::size_t group_begin(std::size_t g) const { return group_begin_[g]; }
  std::size_t group_end(std::size_t g) const { return group_begin_[g + 1]; }
  // The state of parameter i, its buffers created (zero-filled, or `fill[k]` when given)
  // on the first call for a parameter.
  ParamState& state_for(std::size_t i, const std::vector<std::string>& buffer_names,
                        const std::vector<double>& fill = {});
  // Checks grad against the parameter (same shape and dtype).
  void check_grad(std::size_t i, const Tensor& grad) const;

  nn::StateDict write_state(const std::vector<OptionValues>& group_options,
                            const std::vector<std::vector<std::string>>& group_buffers) const;
  // Parses and validates `state` completely (StateError on any mismatch, naming every
  // difference found). option_names: the expected option names of every group;
  // buffers_for(values of one group) -> that group's buffer names.
  struct Parsed {
    std::vector<std::vector<double>> options;  // [group][option]
    std::vector<ParamState> states;
  };
  template <class F>
  Parsed parse_state(const nn::StateDict& state, const std::vector<std::string>& option_names,
                     F&& buffers_for) const;
  Parsed parse_options(const nn::StateDict& state, const std::vector<std::string>& option_names,
                       std::vector<std::string>& errors) const;
  void parse_buffers(const nn::StateDict& state, Parsed& out,
                     const std::vector<std::vector<std::string>>& group_buffers,
                     std::vector<std::string>& errors) const;
  [[noreturn]] void throw_state_errors(const std::vector<std::string>& errors) const;
  // Checks the state's type.<Name> entry against this optimizer (StateError naming both
  // types); returns whether the state has one.
  bool check_type(const nn::StateDict& state) const;
  // The optimizer whose states have the same entries as this one's, if any: a state
  // without a type entry (saved before types were recorded) is then refused, since it
  // cannot be told apart.
  virtual const char* look_alike() const { return nullptr; }
  [[noreturn]] void throw_untagged() const;

  const char* name_;
  std::vector<Tensor> params_;
  std::vector<std::size_t> group_begin_;  // group g owns [group_begin_[g], group_begin_[g+1])
  std::vector<ParamState> state_;
};

template <class F>
OptimizerBase::Parsed OptimizerBase::parse_state(const nn::StateDict& state,
                                                 const std::vector<std::string>& option_names,
                                                 F&& buffers_for) const {
  // Another optimizer's state fails many checks below; its type is the one worth naming.
  const bool tagged = check_type(state);
  std::vector<std::string> errors;
  Parsed out = parse_options(state, option_names, errors);
  if (!errors.empty()) throw_state_errors(errors);
  if (!tagged && look_alike()) {
    throw_untagged();
  }
  std::vector<std::vector<std::string>> group_buffers;
  for (const auto& values : out.options) group_buffers.push_back(buffers_for(values));
  parse_buffers(state, out, group_buffers, errors);
  if (!errors.empty()) throw_state_errors(errors);
  return out;
}

// Per-group options of one type. Options provides:
//   template <class F> void visit(F&& f)  calling f(name, field) for every option (double&
//                                          or bool&), in a fixed order;
//   void validate(const char* optimizer) const  throwing xg::Error on a bad value.
// The concrete optimizer provides buffer_names(options).
template <class Options>
class GroupedOptimizer : public OptimizerBase {
 public:
  double get_lr(std::size_t g) const override {
    check_group("get_lr", g);
    return options_[g].lr;
  }
  void set_lr(std::size_t g, double lr) override {
    check_group("set_lr", g);
    Options o = options_[g];
    o.lr = lr;
    o.validate(name_);
    options_[g] = o;
  }
  const Options& options(std::size_t g) const {
    check_group("options", g);
    return options_[g];
  }

  nn::StateDict state_dict() const override {
    std::vector<OptionValues> values;
    std::vector<std::vector<std::string>> buffers;
    for (const Options& o : options_) {
      values.push_back(to_values(o));
      buffers.push_back(buffer_names(o));
    }
    return write_state(values, buffers);
  }

  void load_state_dict(const nn::StateDict& state) override {
    std::vector<std::string> names;
    for (const auto& kv : to_values(Options{})) names.push_back(kv.first);
    std::vector<Options> loaded;
    Parsed parsed = parse_state(state, names, [&](const std::vector<double>& v) {
      Options o = from_values(v);
      try {
        o.validate(name_);
      } catch (const Error& e) {
        throw StateError(std::string(name_) + ": load_state_dict: invalid options: " + e.what());
      }
      loaded.push_back(o);
      return buffer_names(o);
    });
    // Everything validated: commit.
    options_ = std::move(loaded);
    state_ = std::move(parsed.states);
  }

 protected:
  GroupedOptimizer(const char* name, std::vector<ParamGroup<Options>> groups, const Options& defaults)
      : OptimizerBase(name, take_params(groups)) {
    defaults.validate(name);
    for (auto& g : groups) {
      options_.push_back(g.options ? *g.options : defaults);
      options_.back().validate(name);
    }
  }
  virtual std::vector<std::string> buffer_names(const Options& o) const = 0;

  // The per-parameter loop of every step(): for each parameter with a gradient, checks the
  // gradient, creates the state on the parameter's first step (buffers filled with
  // fill(options), zeros by default), counts the step, then calls
  // update(param, grad, state, options) with state.step already counting this step.
  template <class Update, class Fill = std::nullptr_t>
  void update_each(Update&& update, Fill&& fill = nullptr) {
    for (std::size_t gi = 0; gi < num_groups(); ++gi) {
      const Options& o = options_[gi];
      const std::vector<std::string> names = buffer_names(o);
      std::vector<double> fills;
      if constexpr (!std::is_same_v<std::decay_t<Fill>, std::nullptr_t>) fills = fill(o);
      for (std::size_t i = group_begin(gi); i < group_end(gi); ++i) {
        Tensor p = params_[i];
        const Tensor g = p.grad();
        if (!g.defined()) continue;
        check_grad(i, g);
        ParamState& s = state_for(i, names, fills);
        ++s.step;
        update(p, g, s, o);
      }
    }
  }

  std::vector<Options> options_;

 private:
  static std::vector<std::vector<Tensor>> take_params(std::vector<ParamGroup<Options>>& groups) {
    std::vector<std::vector<Tensor>> out;
    for (auto& g : groups) out.push_back(g.params);
    return out;
  }
  static OptionValues to_values(Options o) {
    OptionValues out;
    o.visit([&](const char* n, auto& field) { out.emplace_back(n, static_cast<double>(field)); });
    return out;
  }
  static Options from_values(const std::vector<double>& v) {
    Options o;
    std::size_t k = 0;
    o.visit([&](const char*, auto& field) {
      using F = std::remove_reference_t<decltype(field)>;
      if constexpr (std::is_same_v<F, bool>) {
        field = v[k++] != 0.0;
      } else {
        field = static_cast<F>(v[k++]);
      }
    });
    return o;
  }
};

}  // namespace xg::optim
