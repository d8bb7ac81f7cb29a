#pragma once
// The tape: how xgrad computes gradients.
//
// Every thread owns one tape, a vector of nodes in the order ops ran. An op that takes
// at least one input requiring grad appends a node holding: its name, its backward
// function, an edge per input (to the node that produced it, or to the leaf tensor
// whose .grad() it feeds), and whatever values its backward needs, captured by the
// closure and nothing more. The output Tensor remembers (graph generation, node index).
//
// Creation order is a topological order, so `loss.backward()` is one reverse loop over
// indices: mark the nodes reachable from the loss, then walk down from the loss, call
// each reached node's backward with the gradient accumulated for it, and add the
// results (`+=`, so a value used twice is right) into the nodes or leaves its edges
// name. No recursion: a 10,000-step unroll costs no stack. No sort, no visited set:
// the order is deterministic.
//
// The walk frees what it passes (closures, saved values, intermediate gradients), so
// peak memory is the forward's saved values, not twice that; retain_graph keeps them.
// A node whose output tensor died before any backward used it is freed at once (a
// reference count per node: the output handle plus the live nodes that read it), so a
// forgotten NoGradGuard in an evaluation loop costs time, not memory. When nothing on
// the tape is pending, the tape is cleared and its generation number moves on.
//
// A tensor that outlives its graph (the hidden state carried to the next chunk of
// truncated BPTT) still names its old node. Recording an op on it is allowed; a
// backward that reaches it throws StateError explaining detach(). NoGradGuard records
// nothing. Backward runs with recording off (no higher-order gradients yet, but the
// backward functions take and return Tensors, so they can come later).
//
// Threads: the tape is thread_local. Two threads may train two models at once; a
// tensor with history belongs to the thread that made it (detach() to hand it over).
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>

#include "xgrad/autograd/tensor.hpp"

namespace xg {

// What a backward function fills in: dx[i] = d(loss)/d(input i), same shape and dtype
// as input i, or left undefined (contributes nothing). needs(i) says whether anybody
// wants input i's gradient, so work for constants can be skipped.
class GradSlots {
 public:
  GradSlots(Tensor* slots, const bool* needs, std::size_t n) : s_(slots), needs_(needs), n_(n) {}
  std::size_t size() const { return n_; }
  bool needs(std::size_t i) const { return needs_[i]; }
  Tensor& operator[](std::size_t i) { return s_[i]; }

 private:
  Tensor* s_;
  const bool* needs_;
  std::size_t n_;
};

using BackwardFn = std::function<void(const Tensor& grad_out, GradSlots& dx)>;

// True when an op on these inputs must be recorded (grad mode on and one requires grad).
bool needs_record(std::initializer_list<const Tensor*> inputs);
bool needs_record(std::span<const Tensor> inputs);

// Appends a node producing `out` from `inputs` (`name` must be a string literal).
// Marks `out` as requiring grad. Public so users can write their own differentiable ops.
void record(const char* name, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn fn);
void record(const char* name, Tensor& out, std::span<const Tensor> inputs, BackwardFn fn);

bool is_grad_enabled();
void set_grad_enabled(bool on);

// Scoped: ops record nothing (sampling, evaluation: constant memory).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(is_grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

bool is_anomaly_enabled();
void set_anomaly_enabled(bool on);

// Scoped: every gradient computed by backward is checked for NaN/Inf; the first one
// found throws AnomalyError naming the op (and its tape index and shapes) whose
// backward produced it.
class DetectAnomalyGuard {
 public:
  DetectAnomalyGuard() : prev_(is_anomaly_enabled()) { set_anomaly_enabled(true); }
  ~DetectAnomalyGuard() { set_anomaly_enabled(prev_); }
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;

 private:
  bool prev_;
};

// This thread's tape, one line per node: index, op, output shape, inputs, state.
std::string tape_dump();
// Nodes on this thread's tape (pending or not yet cleared).
std::size_t tape_size();
// Nodes still pending (neither freed by backward nor dead).
std::size_t tape_pending();

}  // namespace xg
