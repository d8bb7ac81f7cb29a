#pragma once
// xg::nn::Module: the base of every layer and of users' own models.
//
// A module owns named parameters (trainable leaves), buffers (saved, not trained) and
// child modules, all in registration order. Names nest with dots: "encoder.weight_ih_l0".
// There is no virtual forward: each module has its own typed forward() and operator(),
// so an LSTM can return (output, state) and an attention module (context, weights).
//
//   struct Gate : xg::nn::Module {
//     xg::Tensor w, b;
//     Gate(int64_t n) { w = register_parameter("w", xg::zeros({n, n}));
//                       b = register_parameter("b", xg::zeros({n})); }
//     xg::Tensor forward(const xg::Tensor& x) { return xg::sigmoid(xg::matmul(x, w) + b); }
//   };
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../autograd/tensor.hpp"

namespace xg::nn {

// Ordered (name, tensor) pairs: what state_dict() returns and load_state_dict() takes.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Registers `t` as a trainable parameter (a leaf with requires_grad) and returns the
  // handle; keep it in a member. Names are unique within a module and contain no dots.
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  // Registers a tensor saved in state_dict but not trained (e.g. running statistics).
  Tensor register_buffer(const std::string& name, Tensor t);
  // Registers a child; its parameters appear as "name.<param>".
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    add_child(name, child);
    return child;
  }

  // Recursive, in registration order (own parameters first, then each child's). A tensor
  // reachable under two names (tied weights) is listed once, under its first name.
  std::vector<Tensor> parameters() const;
  StateDict named_parameters() const;
  StateDict named_buffers() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  std::int64_t num_parameters() const;
  // Lookup by dotted path, like PyTorch's get_parameter / get_buffer / get_submodule:
  // get_parameter("encoder.weight"). IndexError naming the path and the part not found.
  Tensor get_parameter(const std::string& path) const;
  Tensor get_buffer(const std::string& path) const;
  std::shared_ptr<Module> get_submodule(const std::string& path) const;

  // Training mode (dropout active) for this module and every child.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's gradient.
  void zero_grad();
  // Converts every parameter and buffer to `dtype` in place: handles kept in members
  // (and by optimizers) see the new values. Gradients are dropped.
  void to(Dtype dtype);

  // Per module: its parameters, then its buffers, then its children's (PyTorch's order);
  // dotted names; the tensors share storage with the module.
  StateDict state_dict() const;
  // Copies values in. Every name, shape and dtype is checked first; all missing and
  // unexpected (both only when strict, like PyTorch) and mismatched entries are reported
  // in one StateError and the module is left unchanged. Call to() before building a graph
  // through the parameters, not while one is pending.
  void load_state_dict(const StateDict& state, bool strict = true);
  // state_dict to / from a .npz file (numpy.load opens it). Saving is atomic.
  void save(const std::string& path) const;
  void load(const std::string& path, bool strict = true);

 protected:
  // Called by train(); a module with mode-dependent children state can react.
  virtual void on_train(bool on) { (void)on; }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> child);
  void collect(const std::string& prefix, StateDict* params, StateDict* buffers) const;
  void check_name(const char* what, const std::string& name) const;
  enum class Slot : std::uint8_t { parameter, buffer, child };
  struct Where {
    Slot slot;
    std::size_t pos;  // in params_, buffers_ or children_
  };
  // Where this module's own `name` is registered, or nullptr.
  const Where* find(const std::string& name) const;
  // The module holding the last part of a dotted path; *last receives that part.
  const Module& owner_of(const char* what, const std::string& path, std::string* last) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  // Every own name -> where it is: registering and lookup stay O(1) with 100,000 children
  // (a scan of the lists made building such a module quadratic); the lists keep the order.
  std::unordered_map<std::string, Where> names_;
  bool training_ = true;
};

}  // namespace xg::nn
