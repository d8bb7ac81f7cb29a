#pragma once
// The tape: how xgrad computes gradients.
//
// Every thread owns one tape, a vector of nodes in the order ops ran. An op that takes
// at least one input requiring grad appends a node holding: its name, its backward
// function, an edge per input (to the node that produced it, or to the leaf tensor
// whose .grad() it feeds), and whatever values its backward needs, captured by the
// closure as SavedTensors and nothing more. The output Tensor remembers its node's
// stamp (unique across threads and time; it names the owning tape) and index.
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
// reference count per node: the output handle plus the live nodes that read it). Freed
// and dead nodes are then compacted away, keeping the order, whenever the tape has
// doubled, so one live tensor with history does not pin what was recorded after it: a
// forgotten NoGradGuard costs time, not memory. Tensors are looked up by stamp (at their
// recorded index, or by binary search below it), so compaction never writes into them.
//
// A value saved for backward carries the version its storage had; every write (data<T>()
// on a non-const tensor, in-place ops, optimizer steps, load_state_dict) bumps it, and a
// backward that finds a saved value changed throws StateError instead of computing a
// wrong gradient. A tensor that outlives its graph (the hidden state carried to the next
// chunk of truncated BPTT) still names its old node: recording on it is allowed; a
// backward that reaches it throws StateError explaining detach().
//
// Higher order: backward normally runs with recording off, so a .grad() is a constant:
// values computed from one are marked, and a backward that reaches the mark refuses
// rather than silently dropping that term. With create_graph the walk runs every backward
// function with recording on: the ops they call append nodes past the walked ones (the
// walk holds no reference into the node vector across a call), sums of contributions are
// recorded adds (ranged ones kept as pieces and summed by one recorded op, so a per-step
// select loop stays O(T)), and a saved output is handed back attached to its own node, so each
// gradient carries history and a second walk differentiates it. A fused op whose backward
// is a raw kernel takes a recorded path then (composite_backward). xg::grad is the same
// walk with the results returned instead of accumulated, pruned to what reaches them.
//
// Threads: the tape is thread_local. A tensor with history belongs to the thread that
// recorded it; using it on another thread is a StateError (detach() hands it over), and
// destroying it there queues the release to its owner. Leaves may be shared: gradient
// accumulation into a leaf takes a per-leaf lock (Hogwild loses nothing).
#include <cstddef>
#include <functional>
#include <new>
#include <type_traits>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace xg {

// Where a view-like op's gradient lands in its input: [start, start + len) along dim
// `dim`, zero elsewhere (len follows from the gradient's size); or, with an index, the
// gradient's rows j go to rows index[j] along `dim` (repeats add up). dim < 0: the
// whole input.
struct GradRange {
  int dim = -1;
  std::int64_t start = 0;
  Tensor index;  // int64, values already checked against the dim
  // Or (dim < 0, rhs defined): the gradient is lhsᵀ · rhs, lhs being the slot, both 2-D
  // [K, *] (GradSlots::set_product).
  Tensor rhs;
};

// What a backward function fills in: dx[i] = d(loss)/d(input i), same shape and dtype
// as input i, or left undefined (contributes nothing). needs(i) says whether anybody
// wants input i's gradient, so work for constants can be skipped.
class GradSlots {
 public:
  GradSlots(Tensor* slots, const bool* needs, const Shape* const* shapes, std::size_t n, GradRange* ranges = nullptr)
      : s_(slots), needs_(needs), shapes_(shapes), ranges_(ranges), n_(n) {}
  std::size_t size() const { return n_; }
  bool needs(std::size_t i) const { return needs_[i]; }
  // Shape of input i (valid when needs(i)): what dx[i] must have. Lets a backward
  // sum back over broadcast dims without capturing (and keeping alive) the input.
  const Shape& shape(std::size_t i) const { return *shapes_[i]; }
  Tensor& operator[](std::size_t i) { return s_[i]; }
  // The gradient of input i is g inside [start, start + len) along dim d and zero
  // elsewhere; g holds the range's elements in order (select's g may lack the dim).
  // The engine adds g into that range of the input's accumulated gradient instead of
  // a zero tensor of the input's size, so a T-step loop over select(x, 0, t) costs O(T)
  // in backward, not O(T^2).
  void set_range(std::size_t i, Tensor g, int d, std::int64_t start);
  // The gradient of input i is g's rows scatter-added into rows index[j] along dim d
  // (index_select's backward), added by the engine into the accumulated gradient.
  void set_index_add(std::size_t i, Tensor g, int d, Tensor index);
  // The gradient of input i is lhsᵀ · rhs (lhs [K, M], rhs [K, N], contiguous: [M, N]), the
  // weight gradient of a product. When input i is a leaf, a backward (or xg::grad) without
  // create_graph stacks the rows of every such product it reaches for that leaf and
  // computes their sum as one GEMM over all of them: a T-step loop's x_tᵀ g_t become one
  // product with K = T * B, as efficient as a fused recurrent module's, instead of T thin
  // GEMMs and T full-size additions.
  void set_product(std::size_t i, Tensor lhs, Tensor rhs);
  const GradRange* range(std::size_t i) const { return ranges_ != nullptr ? &ranges_[i] : nullptr; }

 private:
  Tensor* s_;
  const bool* needs_;
  const Shape* const* shapes_;
  GradRange* ranges_;
  std::size_t n_;
};

// A node's backward: void(const Tensor& grad_out, GradSlots& dx). Like std::function
// but move-only with room for 96 bytes of captures inline (four SavedTensors), so
// recording an op does not allocate for its closure.
class BackwardFn {
 public:
  BackwardFn() = default;
  BackwardFn(std::nullptr_t) {}  // NOLINT
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, BackwardFn> &&
                                              std::is_invocable_v<F&, const Tensor&, GradSlots&>>>
  BackwardFn(F&& f) {  // NOLINT: implicit, like std::function
    using Fn = std::decay_t<F>;
    if constexpr (sizeof(Fn) <= kInline && alignof(Fn) <= alignof(std::max_align_t) &&
                  std::is_nothrow_move_constructible_v<Fn>) {
      ::new (static_cast<void*>(buf_)) Fn(std::forward<F>(f));
      ops_ = &inline_ops<Fn>;
    } else {
      *reinterpret_cast<Fn**>(buf_) = new Fn(std::forward<F>(f));
      ops_ = &heap_ops<Fn>;
    }
  }
  BackwardFn(BackwardFn&& o) noexcept : ops_(o.ops_) {
    if (ops_) ops_->move(o.buf_, buf_);
    o.ops_ = nullptr;
  }
  BackwardFn& operator=(BackwardFn&& o) noexcept {
    if (this != &o) {
      reset();
      ops_ = o.ops_;
      if (ops_) ops_->move(o.buf_, buf_);
      o.ops_ = nullptr;
    }
    return *this;
  }
  BackwardFn& operator=(std::nullptr_t) {
    reset();
    return *this;
  }
  BackwardFn(const BackwardFn&) = delete;
  BackwardFn& operator=(const BackwardFn&) = delete;
  ~BackwardFn() { reset(); }

  explicit operator bool() const { return ops_ != nullptr; }
  void operator()(const Tensor& g, GradSlots& dx) { ops_->call(buf_, g, dx); }

 private:
  static constexpr std::size_t kInline = 96;
  struct Ops {
    void (*call)(void*, const Tensor&, GradSlots&);
    void (*move)(void* from, void* to);  // move-construct into `to`, destroy `from`
    void (*destroy)(void*);
  };
  template <class Fn>
  static constexpr Ops inline_ops{
      [](void* p, const Tensor& g, GradSlots& dx) { (*static_cast<Fn*>(p))(g, dx); },
      [](void* from, void* to) {
        ::new (to) Fn(std::move(*static_cast<Fn*>(from)));
        static_cast<Fn*>(from)->~Fn();
      },
      [](void* p) { static_cast<Fn*>(p)->~Fn(); }};
  template <class Fn>
  static constexpr Ops heap_ops{
      [](void* p, const Tensor& g, GradSlots& dx) { (**static_cast<Fn**>(p))(g, dx); },
      [](void* from, void* to) { *static_cast<Fn**>(to) = *static_cast<Fn**>(from); },
      [](void* p) { delete *static_cast<Fn**>(p); }};

  void reset() {
    if (ops_) ops_->destroy(buf_);
    ops_ = nullptr;
  }

  alignas(std::max_align_t) unsigned char buf_[kInline];
  const Ops* ops_ = nullptr;
};

// A tensor a backward function keeps (an input, or the op's output), with its version
// at the time it was saved. get() refuses it if its values were written in place since
// (a reused input buffer, an optimizer step, load_state_dict, init): the gradient would
// be computed from values the forward never saw. Capture SavedTensors, not Tensors,
// for everything a user can reach (inputs, outputs and views of them); intermediates
// only the closure holds need no check.
namespace detail {
// True while a create_graph walk runs a backward function: saved outputs come back
// attached to their node, and reading a saved value with history is noted (a backward
// that read one and still returned only constants is refused: see tape.cpp).
extern thread_local bool t_reattach_outputs;
}  // namespace detail

class SavedTensor {
 public:
  static constexpr int kOutput = -1;
  SavedTensor() = default;
  // `input`: which input of the op this is (for the message), or kOutput.
  SavedTensor(const Tensor& t, int input);
  // The saved tensor; StateError naming the op, its tape node and the input if the
  // version moved. Cheap (one load and compare): call it where the value is used.
  const Tensor& get() const {
    if (t_.defined() && t_.version() != version_) [[unlikely]] throw_modified();
    // Under create_graph an output must carry its own history (a backward written with
    // y, like tanh's g * (1 - y^2), is then differentiable again); the closure keeps it
    // detached so that it does not pin its own node.
    if (detail::t_reattach_outputs && t_.defined()) [[unlikely]] return get_create_graph();
    return t_;
  }
  operator const Tensor&() const { return get(); }  // NOLINT: use it where a Tensor goes
  bool defined() const { return t_.defined(); }

 private:
  [[noreturn]] void throw_modified() const;
  const Tensor& get_create_graph() const;
  Tensor t_;
  std::uint32_t version_ = 0;
  std::int32_t input_ = kOutput;
};

// save(x, i): input i of the op. save_output(y): the op's output, detached, so the closure
// does not keep the output's node alive through its own handle.
inline SavedTensor save(const Tensor& x, int input) { return SavedTensor(x, input); }
inline SavedTensor save_output(const Tensor& y) { return SavedTensor(y.detach(), SavedTensor::kOutput); }

// True when an op on these inputs must be recorded (grad mode on, and one requires grad
// or is a gradient used as a value).
bool needs_record(std::initializer_list<const Tensor*> inputs);
bool needs_record(std::span<const Tensor> inputs);

// Appends a node producing `out` from `inputs` (`name` must be a string literal).
// Marks `out` as requiring grad. Public so users can write their own differentiable ops:
// guard it with needs_record() as the built-in ops do. Under NoGradGuard it records
// nothing; inside a backward function it records only under create_graph (elsewhere it
// throws StateError). A user's op whose backward is built from recorded ops is twice
// differentiable as it stands; one whose backward is a raw kernel should branch on
// is_grad_enabled() (true inside a backward exactly under create_graph) to
// composite_backward or to recorded ops.
void record(const char* name, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn fn);
void record(const char* name, Tensor& out, std::span<const Tensor> inputs, BackwardFn fn);

// For a fused op's backward under create_graph: fills dx[j], for every j with
// dx.needs(j), with d(forward(inputs))/d(inputs[j]) seeded by g, by running `forward`
// (built from recorded ops; it must compute the op's output exactly) on inputs and
// differentiating that with create_graph. The result is differentiable again, in the
// inputs and in g: the fast kernel serves first order, the composite second.
void composite_backward(const std::vector<Tensor>& inputs, const Tensor& g, GradSlots& dx,
                        const std::function<Tensor(const std::vector<Tensor>&)>& forward);

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
