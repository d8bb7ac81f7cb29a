#include "module.hpp"

#include <cstring>
#include <map>
#include <unordered_set>

#include <fmt/format.h>

#include "../autograd/detail/tensor_impl.hpp"
#include "../autograd/io.hpp"

namespace xg::nn {

void Module::check_name(const char* what, const std::string& name) const {
  if (name.empty() || name.find_first_of("./") != std::string::npos) {
    throw Error(fmt::format("{}: invalid name '{}' (non-empty, no '.' or '/')", what, name));
  }
  if (names_.count(name)) {
    throw Error(fmt::format("{}: the name '{}' is already registered in this module", what, name));
  }
}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_name("register_parameter", name);
  if (!t.defined()) throw StateError(fmt::format("register_parameter '{}': undefined tensor", name));
  if (requires_grad && !is_floating(t.dtype())) {
    throw DtypeError(fmt::format("register_parameter '{}': a trainable parameter must be float32 or float64, got {} {}",
                                 name, dtype_name(t.dtype()), t.shape().str()));
  }
  if (!t.is_leaf()) t = t.detach();  // a parameter is a leaf, whatever computed its value
  if (requires_grad) t.requires_grad_(true);
  names_.emplace(name, Where{Slot::parameter, params_.size()});
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_name("register_buffer", name);
  if (!t.defined()) throw StateError(fmt::format("register_buffer '{}': undefined tensor", name));
  names_.emplace(name, Where{Slot::buffer, buffers_.size()});
  buffers_.emplace_back(name, t.is_leaf() ? t : t.detach());
  return buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_name("register_module", name);
  if (!child) throw StateError(fmt::format("register_module '{}': null module", name));
  names_.emplace(name, Where{Slot::child, children_.size()});
  children_.emplace_back(name, std::move(child));
}

void Module::collect(const std::string& prefix, StateDict* params, StateDict* buffers) const {
  if (params) {
    for (const auto& [n, t] : params_) params->emplace_back(prefix + n, t);
  }
  if (buffers) {
    for (const auto& [n, t] : buffers_) buffers->emplace_back(prefix + n, t);
  }
  for (const auto& [n, c] : children_) c->collect(prefix + n + ".", params, buffers);
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [_, t] : named_parameters()) out.push_back(t);
  return out;
}

StateDict Module::named_parameters() const {
  StateDict all;
  collect("", &all, nullptr);
  // A tensor reachable under two names (tied weights) is listed once, under its first
  // name, as in PyTorch: an optimizer must not step it twice. state_dict() keeps both.
  StateDict out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [n, t] : all) {
    if (seen.insert(t.impl()).second) out.emplace_back(std::move(n), std::move(t));
  }
  return out;
}

StateDict Module::named_buffers() const {
  StateDict out;
  collect("", nullptr, &out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const { return children_; }

const Module::Where* Module::find(const std::string& name) const {
  const auto it = names_.find(name);
  return it == names_.end() ? nullptr : &it->second;
}

namespace {
const char* kind_name(int slot) { return slot == 0 ? "a parameter" : slot == 1 ? "a buffer" : "a sub-module"; }
}  // namespace

const Module& Module::owner_of(const char* what, const std::string& path, std::string* last) const {
  if (path.empty()) throw IndexError(fmt::format("{}: the path is empty", what));
  const Module* m = this;
  std::size_t start = 0;
  for (std::size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', start)) {
    const std::string part = path.substr(start, dot - start);
    const Where* w = m->find(part);
    if (!w || w->slot != Slot::child) {
      throw IndexError(fmt::format("{}: '{}': no sub-module '{}'{}; named_parameters() and named_children() list "
                                   "the registered names",
                                   what, path, path.substr(0, dot),
                                   w ? fmt::format(" ('{}' is {})", part, kind_name(static_cast<int>(w->slot))) : ""));
    }
    m = m->children_[w->pos].second.get();
    start = dot + 1;
  }
  *last = path.substr(start);
  return *m;
}

Tensor Module::get_parameter(const std::string& path) const {
  std::string last;
  const Module& m = owner_of("get_parameter", path, &last);
  const Where* w = m.find(last);
  if (!w || w->slot != Slot::parameter) {
    throw IndexError(fmt::format("get_parameter: no parameter '{}'{}; named_parameters() lists them", path,
                                 w ? fmt::format(" (it is {})", kind_name(static_cast<int>(w->slot))) : ""));
  }
  return m.params_[w->pos].second;
}

Tensor Module::get_buffer(const std::string& path) const {
  std::string last;
  const Module& m = owner_of("get_buffer", path, &last);
  const Where* w = m.find(last);
  if (!w || w->slot != Slot::buffer) {
    throw IndexError(fmt::format("get_buffer: no buffer '{}'{}; named_buffers() lists them", path,
                                 w ? fmt::format(" (it is {})", kind_name(static_cast<int>(w->slot))) : ""));
  }
  return m.buffers_[w->pos].second;
}

std::shared_ptr<Module> Module::get_submodule(const std::string& path) const {
  std::string last;
  const Module& m = owner_of("get_submodule", path, &last);
  const Where* w = m.find(last);
  if (!w || w->slot != Slot::child) {
    throw IndexError(fmt::format("get_submodule: no sub-module '{}'{}; named_children() lists them", path,
                                 w ? fmt::format(" (it is {})", kind_name(static_cast<int>(w->slot))) : ""));
  }
  return m.children_[w->pos].second;
}

std::int64_t Module::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& [_, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  on_train(on);
  for (auto& [_, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (auto& [_, t] : named_parameters()) t.zero_grad();
}

void Module::to(Dtype dtype) {
  if (!is_floating(dtype)) {
    throw DtypeError(fmt::format("Module::to: modules hold float32 or float64 tensors, not {}", dtype_name(dtype)));
  }
  StateDict all = named_parameters();
  StateDict bufs = named_buffers();
  all.insert(all.end(), bufs.begin(), bufs.end());
  for (auto& [_, t] : all) {
    if (!is_floating(t.dtype()) || t.dtype() == dtype) continue;
    t.zero_grad();
    detail::replace_value(t, t.detach().to(dtype));
  }
}

StateDict Module::state_dict() const {
  StateDict out;
  collect("", &out, &out);
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  const StateDict mine = state_dict();
  std::map<std::string, const Tensor*> given;
  std::vector<std::string> problems;
  for (const auto& [n, t] : state) {
    if (!given.emplace(n, &t).second) problems.push_back(fmt::format("duplicate entry '{}'", n));
  }
  std::map<std::string, bool> known;
  for (const auto& [n, t] : mine) {
    known[n] = true;
    auto it = given.find(n);
    if (it == given.end()) {
      if (strict) problems.push_back(fmt::format("missing '{}' {} {}", n, dtype_name(t.dtype()), t.shape().str()));
      continue;
    }
    const Tensor& src = *it->second;
    if (!src.defined()) {
      problems.push_back(fmt::format("'{}' is undefined", n));
    } else if (src.shape() != t.shape() || src.dtype() != t.dtype()) {
      problems.push_back(fmt::format("'{}': expected {} {}, got {} {}", n, dtype_name(t.dtype()), t.shape().str(),
                                     dtype_name(src.dtype()), src.shape().str()));
    }
  }
  if (strict) {
    for (const auto& [n, t] : state) {
      if (!known.count(n)) {
        problems.push_back(fmt::format("unexpected '{}' {} {}", n, t.defined() ? dtype_name(t.dtype()) : "undefined",
                                       t.defined() ? t.shape().str() : ""));
      }
    }
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("load_state_dict: {} problem(s), nothing loaded:", problems.size());
    for (const auto& p : problems) msg += "\n  " + p;
    throw StateError(msg);
  }
  for (const auto& [n, t] : mine) {
    auto it = given.find(n);
    if (it == given.end()) continue;
    Tensor dst = t;
    std::memmove(dst.data_ptr(), it->second->data_ptr(),
                 static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype()));
  }
}

void Module::save(const std::string& path) const { save_npz(path, state_dict()); }

void Module::load(const std::string& path, bool strict) { load_state_dict(load_npz(path), strict); }

}  // namespace xg::nn
