#include "optimizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <utility>

#include "../autograd/factory.hpp"

namespace xg::optim {

OptimizerBase::OptimizerBase(const char* name, std::vector<std::vector<Tensor>> groups) : name_(name) {
  group_begin_.push_back(0);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (std::size_t k = 0; k < groups[g].size(); ++k) {
      const Tensor& p = groups[g][k];
      const std::string where = fmt::format("{}: parameter {} (group {}, index {})", name, params_.size(), g, k);
      if (!p.defined()) throw StateError(where + " is undefined");
      if (!is_floating(p.dtype())) {
        throw DtypeError(fmt::format("{} is {} {}: only float32/float64 parameters can be optimized", where,
                                     dtype_name(p.dtype()), p.shape().str()));
      }
      if (!p.is_leaf()) {
        throw StateError(fmt::format("{} {} is not a leaf (produced by '{}'): optimize the leaf tensor, "
                                     "not a result computed from it",
                                     where, p.shape().str(), p.op_name()));
      }
      for (std::size_t j = 0; j < params_.size(); ++j) {
        // Aliases (detach() of a parameter) share storage: updating both would apply the step twice.
        // (as_const: data_ptr() on a non-const tensor counts as a write and bumps its version)
        const bool alias =
            p.is_same(params_[j]) || (p.numel() > 0 && p.data_ptr() == std::as_const(params_[j]).data_ptr());
        if (alias) {
          throw Error(fmt::format("{} {} is the same tensor as parameter {}: a parameter may appear only once "
                                  "(across all groups)",
                                  where, p.shape().str(), j));
        }
      }
      params_.push_back(p);
    }
    group_begin_.push_back(params_.size());
  }
  if (params_.empty()) throw Error(fmt::format("{}: got an empty parameter list", name));
  state_.resize(params_.size());
}

void OptimizerBase::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

std::int64_t OptimizerBase::step_count(std::size_t param) const {
  if (param >= params_.size()) {
    throw IndexError(fmt::format("{}: step_count: parameter {} does not exist ({} parameters)", name_, param,
                                 params_.size()));
  }
  return state_[param].step;
}

void OptimizerBase::check_group(const char* what, std::size_t g) const {
  if (g >= num_groups()) {
    throw IndexError(fmt::format("{}: {}: parameter group {} does not exist ({} group{})", name_, what, g,
                                 num_groups(), num_groups() == 1 ? "" : "s"));
  }
}

OptimizerBase::ParamState& OptimizerBase::state_for(std::size_t i, const std::vector<std::string>& buffer_names,
                                                    const std::vector<double>& fill) {
  ParamState& s = state_[i];
  if (s.step == 0 && s.buffers.size() != buffer_names.size()) {
    s.buffers.clear();
    for (std::size_t k = 0; k < buffer_names.size(); ++k) {
      s.buffers.push_back(full(params_[i].shape(), k < fill.size() ? fill[k] : 0.0, params_[i].dtype()));
    }
  }
  return s;
}

void OptimizerBase::check_grad(std::size_t i, const Tensor& grad) const {
  const Tensor& p = params_[i];
  if (grad.shape() != p.shape() || grad.dtype() != p.dtype()) {
    const std::string msg = fmt::format("{}: step: parameter {} is {} {} but its gradient is {} {}", name_, i,
                                        dtype_name(p.dtype()), p.shape().str(), dtype_name(grad.dtype()),
                                        grad.shape().str());
    if (grad.shape() != p.shape()) throw ShapeError(msg);
    throw DtypeError(msg);
  }
}

namespace {

Tensor scalar_i64(std::int64_t v) {
  Tensor t = Tensor::empty(Shape(), i64);
  t.data<std::int64_t>()[0] = v;
  return t;
}

bool parse_index(std::string_view s, std::size_t* out) {
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// Splits "<prefix>.<index>.<rest>"; false if the key does not have that form.
bool split_key(const std::string& key, std::string_view prefix, std::size_t* index, std::string* rest) {
  if (key.size() <= prefix.size() + 1 || key.compare(0, prefix.size(), prefix) != 0 || key[prefix.size()] != '.') {
    return false;
  }
  const std::size_t start = prefix.size() + 1;
  const std::size_t dot = key.find('.', start);
  if (dot == std::string::npos || dot + 1 >= key.size()) return false;
  if (!parse_index(std::string_view(key).substr(start, dot - start), index)) return false;
  *rest = key.substr(dot + 1);
  return true;
}

// The integer value of a 0-d int64 (or integral float64) tensor, or an error text.
bool integral_scalar(const Tensor& t, std::int64_t* out) {
  if (t.ndim() != 0) return false;
  if (t.dtype() == i64) {
    *out = t.data<std::int64_t>()[0];
    return true;
  }
  if (t.dtype() == f64) {
    const double v = t.data<double>()[0];
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15) {
      *out = static_cast<std::int64_t>(v);
      return true;
    }
  }
  return false;
}

std::string describe(const Tensor& t) { return fmt::format("{} {}", dtype_name(t.dtype()), t.shape().str()); }

// The value of the type.<Name> entry; another value is a state format this xgrad predates.
constexpr std::int64_t kStateFormat = 1;

// Buffers that are averages or sums of squares: a negative value has no square root, and
// the next step writes NaN into the parameter.
bool nonnegative_buffer(const std::string& name) {
  return name == "exp_avg_sq" || name == "max_exp_avg_sq" || name == "square_avg" || name == "sum";
}

// Describes the first value of a float buffer that no training run can produce (NaN, an
// infinity, or a negative one where `nonnegative`), or returns "" if there is none.
template <class T>
std::string bad_value(const T* v, std::int64_t n, bool nonnegative) {
  std::int64_t bad = 0, first = -1;
  for (std::int64_t k = 0; k < n; ++k) {
    if (!std::isfinite(v[k]) || (nonnegative && v[k] < 0)) {
      if (first < 0) first = k;
      ++bad;
    }
  }
  if (bad == 0) return "";
  return fmt::format("element {} is {}{} ({} of {} elements bad)", first, v[first],
                     std::isfinite(v[first]) ? " (must be >= 0)" : "", bad, n);
}

std::string bad_value(const Tensor& t, bool nonnegative) {
  if (t.dtype() == f32) return bad_value(t.data<float>(), t.numel(), nonnegative);
  if (t.dtype() == f64) return bad_value(t.data<double>(), t.numel(), nonnegative);
  return "";
}

}  // namespace

nn::StateDict OptimizerBase::write_state(const std::vector<OptionValues>& group_options,
                                         const std::vector<std::vector<std::string>>& group_buffers) const {
  nn::StateDict out;
  out.emplace_back(fmt::format("type.{}", name_), scalar_i64(kStateFormat));
  for (std::size_t g = 0; g < num_groups(); ++g) {
    out.emplace_back(fmt::format("group.{}.params", g),
                     scalar_i64(static_cast<std::int64_t>(group_end(g) - group_begin(g))));
    for (const auto& [name, value] : group_options[g]) out.emplace_back(fmt::format("group.{}.{}", g, name), scalar(value, f64));
  }
  for (std::size_t g = 0; g < num_groups(); ++g) {
    for (std::size_t i = group_begin(g); i < group_end(g); ++i) {
      const ParamState& s = state_[i];
      if (s.step == 0) continue;
      out.emplace_back(fmt::format("state.{}.step", i), scalar_i64(s.step));
      // A snapshot, not an alias: later steps must not change a saved checkpoint.
      for (std::size_t k = 0; k < s.buffers.size(); ++k) {
        out.emplace_back(fmt::format("state.{}.{}", i, group_buffers[g][k]), s.buffers[k].clone());
      }
    }
  }
  return out;
}

OptimizerBase::Parsed OptimizerBase::parse_options(const nn::StateDict& state,
                                                   const std::vector<std::string>& option_names,
                                                   std::vector<std::string>& errors) const {
  Parsed out;
  const std::size_t G = num_groups();
  out.options.assign(G, std::vector<double>(option_names.size(), 0.0));
  std::vector<std::vector<bool>> seen(G, std::vector<bool>(option_names.size() + 1, false));
  std::size_t max_group_in_state = 0;
  bool any_group = false;
  for (const auto& [key, t] : state) {
    std::size_t g = 0;
    std::string rest;
    if (!split_key(key, "group", &g, &rest)) {
      if (key.rfind("state.", 0) != 0 && key.rfind("type.", 0) != 0) {
        errors.push_back(fmt::format("unexpected entry '{}'", key));
      }
      continue;
    }
    if (!t.defined()) {
      errors.push_back(fmt::format("'{}' is undefined", key));
      continue;
    }
    any_group = true;
    max_group_in_state = std::max(max_group_in_state, g + 1);
    if (g >= G) continue;  // reported once below, as a group count mismatch
    if (rest == "params") {
      seen[g][option_names.size()] = true;
      std::int64_t n = 0;
      if (!integral_scalar(t, &n)) {
        errors.push_back(fmt::format("'{}' must be a 0-d int64, got {}", key, describe(t)));
      } else if (n != static_cast<std::int64_t>(group_end(g) - group_begin(g))) {
        errors.push_back(fmt::format("group {} has {} parameters in the state but {} in this optimizer", g, n,
                                     group_end(g) - group_begin(g)));
      }
      continue;
    }
    std::size_t k = 0;
    while (k < option_names.size() && option_names[k] != rest) ++k;
    if (k == option_names.size()) {
      errors.push_back(fmt::format("unknown option '{}' ({})", rest, key));
      continue;
    }
    seen[g][k] = true;
    if (t.ndim() != 0 || t.dtype() != f64) {
      errors.push_back(fmt::format("'{}' must be a 0-d float64, got {}", key, describe(t)));
      continue;
    }
    const double v = t.data<double>()[0];
    if (!std::isfinite(v)) {
      // validate() would let an infinite lr or weight_decay through, and the first step
      // would turn every parameter into NaN.
      errors.push_back(fmt::format("'{}' is {}: options must be finite", key, v));
      continue;
    }
    out.options[g][k] = v;
  }
  if (!any_group) {
    errors.push_back("no 'group.<g>.*' entries (not an optimizer state dict?)");
    return out;
  }
  if (max_group_in_state != G) {
    errors.push_back(fmt::format("the state has {} parameter groups, this optimizer {}", max_group_in_state, G));
  }
  for (std::size_t g = 0; g < std::min(G, max_group_in_state); ++g) {
    if (!seen[g][option_names.size()]) errors.push_back(fmt::format("missing 'group.{}.params'", g));
    for (std::size_t k = 0; k < option_names.size(); ++k) {
      if (!seen[g][k]) errors.push_back(fmt::format("missing 'group.{}.{}'", g, option_names[k]));
    }
  }
  return out;
}

void OptimizerBase::parse_buffers(const nn::StateDict& state, Parsed& out,
                                  const std::vector<std::vector<std::string>>& group_buffers,
                                  std::vector<std::string>& errors) const {
  const std::size_t n = params_.size();
  std::vector<std::size_t> group_of(n);
  for (std::size_t g = 0; g < num_groups(); ++g) {
    for (std::size_t i = group_begin(g); i < group_end(g); ++i) group_of[i] = g;
  }
  out.states.assign(n, ParamState{});
  // Per parameter: which of "step" and its buffers the state holds.
  std::vector<std::map<std::string, Tensor>> found(n);
  for (const auto& [key, t] : state) {
    std::size_t i = 0;
    std::string rest;
    if (key.rfind("state.", 0) != 0) continue;
    if (!split_key(key, "state", &i, &rest)) {
      errors.push_back(fmt::format("malformed entry '{}' (want state.<param index>.<buffer>)", key));
      continue;
    }
    if (i >= n) {
      errors.push_back(fmt::format("'{}' is for parameter {} but this optimizer has {} parameters", key, i, n));
      continue;
    }
    if (!t.defined()) {
      errors.push_back(fmt::format("'{}' is undefined", key));
      continue;
    }
    const auto& names = group_buffers[group_of[i]];
    if (rest == "step") {
      std::int64_t s = 0;
      if (!integral_scalar(t, &s) || s < 1) {
        errors.push_back(fmt::format("'{}' must be a 0-d int64 (or integral float64) >= 1, got {}", key, describe(t)));
      }
    } else if (std::find(names.begin(), names.end(), rest) == names.end()) {
      errors.push_back(fmt::format("unexpected buffer '{}' for parameter {} (group {} has: {})", key, i,
                                   group_of[i], names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "))));
      continue;
    } else if (t.shape() != params_[i].shape() || t.dtype() != params_[i].dtype()) {
      errors.push_back(fmt::format("'{}' is {} but parameter {} is {}", key, describe(t), i, describe(params_[i])));
    } else if (const std::string bad = bad_value(t, nonnegative_buffer(rest)); !bad.empty()) {
      // Loaded, it would poison parameter i at the next step, silently.
      errors.push_back(fmt::format("'{}' (parameter {}): {}", key, i, bad));
    }
    found[i][rest] = t;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (found[i].empty()) continue;
    if (!found[i].count("step")) errors.push_back(fmt::format("missing 'state.{}.step'", i));
    for (const std::string& b : group_buffers[group_of[i]]) {
      if (!found[i].count(b)) errors.push_back(fmt::format("missing 'state.{}.{}'", i, b));
    }
  }
  if (!errors.empty()) return;
  for (std::size_t i = 0; i < n; ++i) {
    if (found[i].empty()) continue;
    ParamState& s = out.states[i];
    integral_scalar(found[i]["step"], &s.step);
    // Own copies: the caller's dict must not alias the optimizer's moments.
    for (const std::string& b : group_buffers[group_of[i]]) s.buffers.push_back(found[i][b].detach().clone());
  }
}

void OptimizerBase::throw_state_errors(const std::vector<std::string>& errors) const {
  throw StateError(fmt::format("{}: load_state_dict: the state does not match this optimizer ({} problem{}): {}",
                               name_, errors.size(), errors.size() == 1 ? "" : "s", fmt::join(errors, "; ")));
}

bool OptimizerBase::check_type(const nn::StateDict& state) const {
  std::vector<std::string> types;
  for (const auto& [key, t] : state) {
    if (key.rfind("type.", 0) != 0) continue;
    const std::string type = key.substr(5);
    types.push_back(type);
    if (!t.defined() || t.ndim() != 0 || t.dtype() != i64) {
      throw StateError(fmt::format("{}: load_state_dict: '{}' must be a 0-d int64, got {}", name_, key,
                                   t.defined() ? describe(t) : "an undefined tensor"));
    }
    if (const std::int64_t v = t.data<std::int64_t>()[0]; v != kStateFormat) {
      throw StateError(fmt::format("{}: load_state_dict: '{}' is {}: a state format this xgrad does not know "
                                   "(it writes {}); load it with the xgrad that saved it",
                                   name_, key, v, kStateFormat));
    }
  }
  if (types.size() > 1) {
    throw StateError(fmt::format("{}: load_state_dict: the state names {} optimizer types ({}): one state per "
                                 "optimizer",
                                 name_, types.size(), fmt::join(types, ", ")));
  }
  if (!types.empty() && types[0] != name_) {
    throw StateError(fmt::format("{0}: load_state_dict: the state was saved by {1}, this optimizer is {0}: load "
                                 "it into a {1}, or start the {0} without it",
                                 name_, types[0]));
  }
  return !types.empty();
}

void OptimizerBase::throw_untagged() const {
  throw StateError(fmt::format(
      "{0}: load_state_dict: the state records no optimizer type (saved before xgrad recorded it), and {0} and "
      "{1} states have the same entries, so it could be either: if {0} saved it, add the entry 'type.{0}' (a 0-d "
      "int64 1) and load again; state_dict() then saves it with its type",
      name_, look_alike()));
}

}  // namespace xg::optim
