#include "checkpoint.hpp"

#include <bit>
#include <cstring>
#include <functional>
#include <map>

#include <fmt/format.h>

#include "../backend/error.hpp"
#include "../autograd/factory.hpp"
#include "../autograd/io.hpp"

namespace xg::training {

namespace {

constexpr std::int64_t kVersion = 1;

// The archive split by the first dotted component of each name.
struct Sections {
  std::map<std::string, nn::StateDict> parts;  // "model", "optimizer", "scheduler", "extra"
  std::map<std::string, Tensor> top;           // "xgrad.checkpoint", "step", "generator.state"
};

bool take_prefix(const std::string& name, const std::string& prefix, std::string* rest) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  *rest = name.substr(prefix.size());
  return true;
}

std::int64_t int_scalar(const Tensor& t, const std::string& path, const char* what) {
  if (t.dtype() != i64 || t.numel() != 1 || t.ndim() != 0) {
    throw StateError(fmt::format("load_checkpoint: '{}': '{}' must be a 0-d int64, got {} {}", path, what,
                                 dtype_name(t.dtype()), t.shape().str()));
  }
  return t.data<std::int64_t>()[0];
}

Sections read_sections(const std::string& path) {
  Sections s;
  for (auto& [name, t] : load_npz(path)) {
    std::string rest;
    bool placed = false;
    for (const char* part : {"model", "optimizer", "scheduler", "extra"}) {
      if (take_prefix(name, std::string(part) + ".", &rest)) {
        s.parts[part].emplace_back(rest, t);
        placed = true;
        break;
      }
    }
    if (!placed) s.top[name] = t;
  }
  auto version = s.top.find("xgrad.checkpoint");
  if (version == s.top.end()) {
    throw StateError(fmt::format("load_checkpoint: '{}' is not an xgrad checkpoint (no 'xgrad.checkpoint' entry)", path));
  }
  const std::int64_t v = int_scalar(version->second, path, "xgrad.checkpoint");
  if (v != kVersion) {
    throw StateError(fmt::format("load_checkpoint: '{}' has checkpoint format {}, this xgrad reads {}", path, v, kVersion));
  }
  if (!s.top.count("step")) throw StateError(fmt::format("load_checkpoint: '{}' has no 'step' entry", path));
  return s;
}

LoadedCheckpoint info_of(const Sections& s, const std::string& path) {
  LoadedCheckpoint out;
  out.step = int_scalar(s.top.at("step"), path, "step");
  auto it = s.parts.find("extra");
  if (it != s.parts.end()) {
    for (const auto& [name, t] : it->second) out.extras.set_tensor(name, t);
  }
  return out;
}

// Copies of every tensor, so a snapshot survives the in-place loads it guards against.
nn::StateDict clone_all(const nn::StateDict& d) {
  nn::StateDict out;
  out.reserve(d.size());
  for (const auto& [n, t] : d) out.emplace_back(n, t.defined() ? t.detach().clone() : t);
  return out;
}

Generator::State generator_state(const Tensor& t, const std::string& path) {
  if (t.dtype() != i64 || t.shape() != Shape{6}) {
    throw StateError(fmt::format("load_checkpoint: '{}': 'generator.state' must be int64 [6], got {} {}", path,
                                 dtype_name(t.dtype()), t.shape().str()));
  }
  Generator::State st{};
  const std::int64_t* p = t.data<std::int64_t>();
  for (std::size_t i = 0; i < st.size(); ++i) st[i] = std::bit_cast<std::uint64_t>(p[i]);
  // Checked here, with the rest: set_state runs last, after the model and optimizer are loaded.
  if (const std::string problem = Generator::state_problem(st); !problem.empty()) {
    throw StateError(fmt::format("load_checkpoint: '{}': 'generator.state': {}; nothing loaded", path, problem));
  }
  return st;
}

}  // namespace

// ---- Extras -----------------------------------------------------------------------------

void Extras::put(const std::string& name, Tensor t) {
  if (name.empty()) throw Error("Extras: the name is empty");
  for (auto& [n, v] : entries_) {
    if (n == name) {
      v = std::move(t);
      return;
    }
  }
  entries_.emplace_back(name, std::move(t));
}

const Tensor& Extras::find(const std::string& name, const char* what) const {
  for (const auto& [n, v] : entries_) {
    if (n == name) return v;
  }
  throw StateError(fmt::format("Extras::{}: no entry '{}'", what, name));
}

void Extras::set_int(const std::string& name, std::int64_t v) {
  Tensor t = Tensor::empty(Shape{}, i64);
  t.data<std::int64_t>()[0] = v;
  put(name, t);
}

void Extras::set_double(const std::string& name, double v) { put(name, scalar(v, f64)); }

void Extras::set_string(const std::string& name, const std::string& v) {
  Tensor t = Tensor::empty(Shape{static_cast<std::int64_t>(v.size())}, i64);
  std::int64_t* p = t.data<std::int64_t>();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = static_cast<unsigned char>(v[i]);
  put(name, t);
}

void Extras::set_tensor(const std::string& name, const Tensor& t) {
  if (!t.defined()) throw StateError(fmt::format("Extras::set_tensor: '{}' is undefined", name));
  put(name, t.detach().clone());
}

bool Extras::has(const std::string& name) const {
  for (const auto& [n, v] : entries_) {
    if (n == name) return true;
  }
  return false;
}

std::int64_t Extras::get_int(const std::string& name) const {
  const Tensor& t = find(name, "get_int");
  if (t.dtype() != i64 || t.ndim() != 0) {
    throw StateError(fmt::format("Extras::get_int: '{}' is {} {}, not a 0-d int64", name, dtype_name(t.dtype()),
                                 t.shape().str()));
  }
  return t.data<std::int64_t>()[0];
}

double Extras::get_double(const std::string& name) const {
  const Tensor& t = find(name, "get_double");
  if (t.ndim() != 0 || !is_floating(t.dtype())) {
    throw StateError(fmt::format("Extras::get_double: '{}' is {} {}, not a 0-d float", name, dtype_name(t.dtype()),
                                 t.shape().str()));
  }
  return t.item();
}

std::string Extras::get_string(const std::string& name) const {
  const Tensor& t = find(name, "get_string");
  if (t.dtype() != i64 || t.ndim() != 1) {
    throw StateError(fmt::format("Extras::get_string: '{}' is {} {}, not a string (int64 bytes)", name,
                                 dtype_name(t.dtype()), t.shape().str()));
  }
  const std::int64_t* p = t.data<std::int64_t>();
  std::string out(static_cast<std::size_t>(t.numel()), '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (p[i] < 0 || p[i] > 255) {
      throw StateError(fmt::format("Extras::get_string: '{}' holds {} at {}, not a byte", name, p[i], i));
    }
    out[i] = static_cast<char>(static_cast<unsigned char>(p[i]));
  }
  return out;
}

Tensor Extras::get_tensor(const std::string& name) const { return find(name, "get_tensor").clone(); }

// ---- save / load ------------------------------------------------------------------------

void save_checkpoint(const std::string& path, const CheckpointParts& parts, std::int64_t step, const Extras& extras) {
  if (!parts.model && !parts.optimizer && !parts.scheduler && !parts.generator && extras.entries().empty()) {
    throw Error(fmt::format("save_checkpoint: '{}': nothing to save (no model, optimizer, scheduler, generator "
                            "or extras)", path));
  }
  nn::StateDict entries;
  Tensor version = Tensor::empty(Shape{}, i64);
  version.data<std::int64_t>()[0] = kVersion;
  entries.emplace_back("xgrad.checkpoint", version);
  Tensor st = Tensor::empty(Shape{}, i64);
  st.data<std::int64_t>()[0] = step;
  entries.emplace_back("step", st);
  auto add = [&](const char* prefix, const nn::StateDict& d) {
    for (const auto& [n, t] : d) entries.emplace_back(fmt::format("{}.{}", prefix, n), t);
  };
  if (parts.model) add("model", parts.model->state_dict());
  if (parts.optimizer) add("optimizer", parts.optimizer->state_dict());
  if (parts.scheduler) add("scheduler", parts.scheduler->state_dict());
  if (parts.generator) {
    const Generator::State s = parts.generator->state();
    Tensor g = Tensor::empty(Shape{6}, i64);
    for (std::size_t i = 0; i < s.size(); ++i) g.data<std::int64_t>()[i] = std::bit_cast<std::int64_t>(s[i]);
    entries.emplace_back("generator.state", g);
  }
  add("extra", extras.entries());
  save_npz(path, entries);
}

LoadedCheckpoint read_checkpoint_info(const std::string& path) {
  const Sections s = read_sections(path);
  return info_of(s, path);
}

LoadedCheckpoint load_checkpoint(const std::string& path, const CheckpointParts& parts) {
  Sections s = read_sections(path);
  LoadedCheckpoint out = info_of(s, path);

  // Everything that can be checked without touching the parts, first.
  std::vector<std::string> missing;
  auto section = [&](const char* name) -> const nn::StateDict* {
    auto it = s.parts.find(name);
    if (it == s.parts.end()) {
      missing.push_back(name);
      return nullptr;
    }
    return &it->second;
  };
  const nn::StateDict* model_state = parts.model ? section("model") : nullptr;
  const nn::StateDict* opt_state = parts.optimizer ? section("optimizer") : nullptr;
  const nn::StateDict* sched_state = parts.scheduler ? section("scheduler") : nullptr;
  Generator::State gen_state{};
  if (parts.generator) {
    auto it = s.top.find("generator.state");
    if (it == s.top.end()) {
      missing.push_back("generator");
    } else {
      gen_state = generator_state(it->second, path);
    }
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    throw StateError(fmt::format("load_checkpoint: '{}' has no {} state; nothing loaded", path, list));
  }

  // The scheduler validates without applying; the model and optimizer apply as they
  // validate, so the model is snapshotted and restored if the optimizer then refuses.
  std::function<void()> commit_scheduler;
  try {
    if (parts.scheduler) commit_scheduler = parts.scheduler->prepare_load(*sched_state);
  } catch (const Error& e) {
    throw StateError(fmt::format("load_checkpoint: '{}': scheduler: {}; nothing loaded", path, e.what()));
  }
  nn::StateDict model_backup;
  if (parts.model) {
    model_backup = clone_all(parts.model->state_dict());
    try {
      parts.model->load_state_dict(*model_state);
    } catch (const Error& e) {
      throw StateError(fmt::format("load_checkpoint: '{}': model: {}", path, e.what()));
    }
  }
  if (parts.optimizer) {
    try {
      parts.optimizer->load_state_dict(*opt_state);
    } catch (const Error& e) {
      if (parts.model) parts.model->load_state_dict(model_backup);
      throw StateError(fmt::format("load_checkpoint: '{}': optimizer: {}; nothing loaded", path, e.what()));
    }
  }
  if (commit_scheduler) commit_scheduler();
  if (parts.generator) parts.generator->set_state(gen_state);
  return out;
}

}  // namespace xg::training
