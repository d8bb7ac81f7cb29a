// The tape engine. The essay in tape.hpp says what it does; this file says how.
#include "tape.hpp"

#include "factory.hpp"
#include "ops.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "detail/grad_products.hpp"
#include "detail/tape_internal.hpp"
#include "detail/tensor_impl.hpp"

namespace xg {

namespace {

// A node's stamp is (tape id << kSerialBits) | serial: unique across threads and over
// time, so a tensor whose node was freed, compacted away or recorded by another thread
// can never be mistaken for the node that now sits at its index.
constexpr int kSerialBits = 40;
std::atomic<std::uint32_t> g_next_tape_id{1};

std::uint32_t owner_of(std::uint64_t stamp) { return static_cast<std::uint32_t>(stamp >> kSerialBits); }

// Marks an edge to a .grad() used as a value (see kGradValue below).
constexpr const char* kGradValue = "(a .grad() used as a value)";

// Where an input's gradient goes.
struct Edge {
  std::uint32_t node = kNoNode;       // a node of this tape, or
  std::shared_ptr<TensorImpl> leaf;   // a leaf whose grad() accumulates, or neither (constant)
  const char* stale_op = nullptr;     // set: the input came from a graph already freed
  bool needs() const { return node != kNoNode || leaf || stale_op; }
};

// Most ops have at most three inputs: keep those inline, spill the rest (concat, stack).
class EdgeList {
 public:
  void resize(std::size_t n) {
    n_ = n;
    if (n > kInline) more_ = std::make_unique<Edge[]>(n);
  }
  std::size_t size() const { return n_; }
  Edge& operator[](std::size_t i) { return n_ > kInline ? more_[i] : inline_[i]; }

 private:
  static constexpr std::size_t kInline = 3;
  Edge inline_[kInline];
  std::unique_ptr<Edge[]> more_;
  std::size_t n_ = 0;
};

enum class NodeState : std::uint8_t { pending, freed, dead };

struct Node {
  std::uint64_t stamp = 0;
  const char* name = nullptr;
  BackwardFn fn;
  EdgeList inputs;
  Tensor grad;                  // accumulated d(loss)/d(output) during a walk
  Shape out_shape;
  std::int32_t refs = 0;        // output handle + pending nodes that read this one
  Dtype out_dtype = Dtype::f32;
  NodeState state = NodeState::pending;
  bool grad_owned = false;      // grad is ours alone: later contributions add in place
  bool mark = false;            // reachable from the current backward root
  bool retain = false;          // retain_grad(): the output is in Tape::retained
};

// Releases of output handles destroyed on other threads, applied by the owner (see
// release_output). `mu` guards only the vector: nobody holds it while doing anything
// else, so it cannot take part in a deadlock.
struct RemoteQueue {
  std::mutex mu;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> releases;
  std::atomic<bool> any{false};
};

struct Tape {
  Tape();
  std::vector<Node> nodes;
  std::uint32_t id = g_next_tape_id.fetch_add(1);
  std::uint64_t next_serial = 0;
  std::size_t pending = 0;
  // Compaction runs when the tape reaches this size (see compact()).
  std::size_t compact_at = kCompactMin;
  static constexpr std::size_t kCompactMin = 1024;
  RemoteQueue remote;
  // Outputs that asked for retain_grad(), by node stamp: weak, so that the walk never
  // touches a TensorImpl that another thread may be destroying. Rare, so a side list
  // rather than 16 bytes in every node.
  std::vector<std::pair<std::uint64_t, std::weak_ptr<TensorImpl>>> retained;
  bool in_backward = false;
  bool killing = false;
  std::vector<std::uint32_t> kill_queue;
  // Nodes whose last reference went away during a backward walk: killing them then could
  // free a node the walk has yet to reach, so they wait until the walk ends.
  std::vector<std::uint32_t> deferred;
  ~Tape();
};

// The node whose backward function is running (for SavedTensor's message).
thread_local const char* t_running_op = nullptr;
thread_local std::uint32_t t_running_node = kNoNode;

thread_local bool t_grad_enabled = true;
// The innermost walk runs backward functions under create_graph.
thread_local bool t_create_graph = false;
// A walk nested in a create_graph backward may reach only nodes from this index up
// (what was recorded during the outer walk).
thread_local std::uint32_t t_walk_floor = 0;
// Saved outputs handed out attached while a backward function runs (SavedTensor::get
// returns a reference): dropped when it returns. A deque: references stay valid.
thread_local std::deque<Tensor> t_attached;
// The running backward function read a saved value with history (under create_graph).
thread_local bool t_read_history = false;
thread_local bool t_anomaly = false;
// The weight-gradient products (GradSlots::set_product) of the running walk without
// create_graph.
thread_local detail::ProductStacks t_products;
thread_local bool t_tape_alive = false;
thread_local std::uint32_t t_tape_id = 0;  // this thread's tape, 0 before it exists

// Every live tape by id, so that a tensor destroyed on another thread can reach its
// owner's RemoteQueue, or learn that the owner (and its whole tape) is gone.
std::mutex g_tapes_mu;
std::unordered_map<std::uint32_t, Tape*>& tapes() {
  static auto* m = new std::unordered_map<std::uint32_t, Tape*>();  // outlives every thread
  return *m;
}

Tape& tape() {
  thread_local Tape t;
  return t;
}

Tape::Tape() {
  std::lock_guard lock(g_tapes_mu);
  tapes()[id] = this;
  t_tape_id = id;
  t_tape_alive = true;
}

Tape::~Tape() {
  t_tape_alive = false;  // tensors destroyed after this must not touch the tape
  std::lock_guard lock(g_tapes_mu);
  tapes().erase(id);
  // A remote destructor that found this tape holds g_tapes_mu until it has queued its
  // release, so after the erase nobody can reach `remote` any more.
}

std::uint64_t new_stamp(Tape& t) { return (std::uint64_t{t.id} << kSerialBits) | ++t.next_serial; }

// The index of the node with this stamp on this tape, or kNoNode (a leaf, another
// thread's tensor, or a node freed and compacted away). `hint` is the index the node had
// when it was recorded: compaction only moves nodes down and keeps them in stamp order,
// so a miss there is a binary search below it. Tensors are never renumbered, so the
// tape never writes into a TensorImpl that another thread may be destroying.
std::uint32_t find_node(const Tape& t, std::uint64_t stamp, std::uint32_t hint) {
  if (owner_of(stamp) != t.id || hint == kNoNode) return kNoNode;
  const std::size_t n = t.nodes.size();
  if (hint < n && t.nodes[hint].stamp == stamp) return hint;
  std::size_t lo = 0, hi = std::min<std::size_t>(hint, n);
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (t.nodes[mid].stamp < stamp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < n && t.nodes[lo].stamp == stamp ? static_cast<std::uint32_t>(lo) : kNoNode;
}
Node* node_of(Tape& t, std::uint64_t stamp, std::uint32_t hint) {
  const std::uint32_t i = find_node(t, stamp, hint);
  return i == kNoNode ? nullptr : &t.nodes[i];
}

// Frees everything once nothing on the tape is pending. Tensors that still name old
// nodes are recognised as "from a freed graph" by their stamps.
void maybe_clear(Tape& t) {
  if (t.pending != 0 || t.in_backward || t.killing || t.nodes.empty()) return;
  std::vector<Node> old;
  old.swap(t.nodes);
  old.clear();          // closures die here
  old.swap(t.nodes);    // keep the capacity for the next graph
  t.retained.clear();
  t.compact_at = Tape::kCompactMin;
}

// The one way a pending node is freed, by the backward walk (`state` freed) or because
// nobody can reach it any more (dead): drops its backward function, inputs and gradient,
// and calls orphaned(k) for each input node k that has just lost its last reader.
template <class F>
void free_node(Tape& t, std::uint32_t i, NodeState state, F&& orphaned) {
  Node& n = t.nodes[i];
  n.state = state;
  --t.pending;
  if (n.retain) {
    n.retain = false;
    std::erase_if(t.retained, [&n](const auto& r) { return r.first == n.stamp; });
  }
  for (std::size_t j = 0; j < n.inputs.size(); ++j) {
    const std::uint32_t k = n.inputs[j].node;
    if (k != kNoNode && --t.nodes[k].refs == 0) orphaned(k);
  }
  // Destroyed in place, after the bookkeeping above: what they release may reach
  // release_output, which only queues (the walk and kill() run with in_backward or
  // killing set) and never frees this node twice (it is no longer pending), and no node
  // is added meanwhile, so `n` stays valid.
  n.fn = nullptr;
  n.inputs = EdgeList();
  n.grad = Tensor();
}

// A node nobody can reach any more: free it, and cascade to its inputs. Iterative
// (a worklist), so dropping the end of a 10,000-op chain costs no stack.
void kill(Tape& t, std::uint32_t idx) {
  t.kill_queue.push_back(idx);
  if (t.killing) return;
  t.killing = true;
  while (!t.kill_queue.empty()) {
    const std::uint32_t i = t.kill_queue.back();
    t.kill_queue.pop_back();
    free_node(t, i, NodeState::dead, [&t](std::uint32_t k) {
      if (t.nodes[k].state == NodeState::pending) t.kill_queue.push_back(k);
    });
  }
  t.killing = false;
  maybe_clear(t);
}

// Drops the output handle's reference to its node (on the owner's thread).
void release_local(Tape& t, std::uint64_t stamp, std::uint32_t hint) {
  const std::uint32_t idx = find_node(t, stamp, hint);
  if (idx == kNoNode) return;
  Node* n = &t.nodes[idx];
  if (--n->refs == 0 && n->state == NodeState::pending) {
    if (t.in_backward) {
      t.deferred.push_back(idx);
    } else {
      kill(t, idx);
    }
  }
}

// Applies the releases queued by other threads (not during a walk or a kill: they are
// applied at their end).
void drain(Tape& t) {
  if (t.in_backward || t.killing) return;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> todo;
  {
    std::lock_guard lock(t.remote.mu);
    todo.swap(t.remote.releases);
    t.remote.any.store(false, std::memory_order_relaxed);
  }
  for (auto [stamp, idx] : todo) release_local(t, stamp, idx);
}

// Removes every node that is no longer pending, keeping the order (still topological)
// of the rest, and renumbers their outputs and edges. Dead and freed nodes are what a
// live tensor with history would otherwise pin for as long as it lives (a sampling loop
// that forgot NoGradGuard, a prediction kept across training steps): compaction makes
// the tape's size follow what is pending, not what was ever recorded. It runs when the
// tape has doubled since the last one (amortised O(1) per node).
void compact(Tape& t) {
  if (t.in_backward || t.killing || !t.deferred.empty()) return;
  drain(t);
  const std::size_t n = t.nodes.size();
  if (t.pending == n) {  // a growing graph: nothing to reclaim yet
    t.compact_at = std::max<std::size_t>(Tape::kCompactMin, 2 * n);
    return;
  }
  std::vector<std::uint32_t> remap(n, kNoNode);
  std::uint32_t j = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (t.nodes[i].state == NodeState::pending) remap[i] = j++;
  }
  j = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    Node& src = t.nodes[i];
    if (src.state != NodeState::pending) continue;
    for (std::size_t e = 0; e < src.inputs.size(); ++e) {
      Edge& edge = src.inputs[e];
      if (edge.node == kNoNode) continue;
      if (remap[edge.node] == kNoNode) {  // its producer was freed by an earlier backward
        edge.stale_op = t.nodes[edge.node].name;
        edge.node = kNoNode;
      } else {
        edge.node = remap[edge.node];
      }
    }
    if (j != i) t.nodes[j] = std::move(src);
    ++j;
  }
  t.nodes.resize(j);  // the capacity stays: no allocation for the next steps
  t.compact_at = std::max<std::size_t>(Tape::kCompactMin, 2 * t.nodes.size());
}

bool exclusively_held(const Tensor& g) {
  return g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1;
}

// exclusively_held for a leaf's grad, which other threads may have read through grad()
// and dropped since: use_count() is a relaxed load, so seeing 1 does not order our write
// after their reads. Taking a reference does: the increment is an acquire-release
// read-modify-write, which reads the count's latest value and synchronizes with the
// release of every handle dropped before it. Called under the leaf's grad lock, so no
// new handle can appear meanwhile.
bool leaf_grad_exclusive(const Tensor& acc) {
  const std::shared_ptr<TensorImpl> impl = acc.impl_ptr();
  const std::shared_ptr<void> storage = acc.impl()->storage;
  return impl.use_count() == 2 && storage.use_count() == 2;
}

Tensor copy_of(const Tensor& g) {
  Tensor c = Tensor::empty(g.shape(), g.dtype());
  std::memcpy(c.data_ptr(), g.data_ptr(), static_cast<std::size_t>(g.numel()) * dtype_size(g.dtype()));
  return c;
}

// Adds g into a leaf's grad. The leaf owns what it stores: a gradient aliased elsewhere
// (add's backward hands one tensor to both inputs) is copied before it is kept, so
// in-place accumulation, clipping or scaling of one grad never shows in another.
// Leaves can be shared by graphs on several threads (Hogwild), so this holds the leaf's
// grad lock, and adds in place only into a grad nobody else holds: a grad() handed out
// earlier (an optimizer step reading it) keeps its values, and the sum goes to a copy.
//
// Under create_graph the grad carries history: the sum is a recorded add, never an
// in-place write, and a constant result is a true constant (not marked as a grad value).
void accumulate_leaf(TensorImpl& leaf, Tensor&& g, bool create_graph = false) {
  std::lock_guard lock(detail::grad_lock(&leaf));
  Tensor& acc = leaf.grad;
  if (create_graph) {
    if (!acc.defined()) {
      acc = exclusively_held(g) ? std::move(g) : g.clone();
    } else {
      Tensor s = add(acc, g);
      acc = std::move(s);
    }
    return;
  }
  if (!acc.defined()) {
    acc = exclusively_held(g) ? std::move(g) : copy_of(g);
  } else if (!acc.requires_grad() && leaf_grad_exclusive(acc)) {  // never into a grad with history
    detail::add_into(acc, g);
  } else {
    Tensor sum = copy_of(acc);
    detail::add_into(sum, g);
    acc = std::move(sum);
  }
  acc.impl()->grad_value = true;
}

// Adds g into a node's pending gradient. Nobody else sees it, so an aliased first
// contribution is kept as is (no copy: a chain of adds copies nothing); only a second
// contribution needs a tensor of our own to add into.
void accumulate_node(Node& n, Tensor&& g) {
  if (!n.grad.defined()) {
    n.grad_owned = exclusively_held(g);
    n.grad = std::move(g);
  } else if (n.grad_owned) {
    detail::add_into(n.grad, g);
  } else {
    Tensor sum = copy_of(n.grad);
    detail::add_into(sum, g);
    n.grad = std::move(sum);
    n.grad_owned = true;
  }
}

void add_ranged(Tensor& acc, const Tensor& g, const GradRange& r) {
  if (r.index.defined()) {
    detail::add_index_into(acc, g, r.dim, r.index);
  } else {
    detail::add_range_into(acc, g, r.dim, r.start);
  }
}

// The ranged forms (GradSlots::set_range, set_index_add): g added into its range of the accumulated
// gradient, which starts as zeros of the full shape once per walk instead of once per use.
void accumulate_leaf_range(TensorImpl& leaf, const Tensor& g, const GradRange& r) {
  std::lock_guard lock(detail::grad_lock(&leaf));
  Tensor& acc = leaf.grad;
  if (!acc.defined()) {
    acc = zeros(leaf.shape, g.dtype());
  } else if (acc.requires_grad() || !leaf_grad_exclusive(acc)) {
    acc = copy_of(acc);
  }
  add_ranged(acc, g, r);
  acc.impl()->grad_value = true;
}

void accumulate_node_range(Node& n, const Tensor& g, const GradRange& r) {
  if (!n.grad.defined()) {
    n.grad = zeros(n.out_shape, g.dtype());
    n.grad_owned = true;
  } else if (!n.grad_owned) {
    n.grad = copy_of(n.grad);
    n.grad_owned = true;
  }
  add_ranged(n.grad, g, r);
}

// A ranged gradient must have the input's dtype, and its elements must be a whole
// number of runs of [start, start + len) along its dim that stays inside the input.
void check_range_grad(const std::string& name, std::uint32_t node, std::size_t j, const Tensor& g, const Shape& want,
                      Dtype want_dt, const GradRange& r) {
  std::int64_t outer = 1, inner = 1;
  const bool dim_ok = r.dim < want.size();
  if (dim_ok) {
    for (int a = 0; a < r.dim; ++a) outer *= want[a];
    for (int a = r.dim + 1; a < want.size(); ++a) inner *= want[a];
  }
  const std::int64_t per = outer * inner;
  const bool fits =
      dim_ok && g.dtype() == want_dt && r.start >= 0 &&
      (r.index.defined() ? g.numel() == per * r.index.numel()
                         : per == 0 ? g.numel() == 0 : g.numel() % per == 0 && r.start + g.numel() / per <= want[r.dim]);
  if (!fits) {
    throw StateError(fmt::format(
        "backward of '{}' (tape node #{}): the ranged gradient for input {} ({} {}, at {} along dim {}) does not fit "
        "the input {} {}",
        name, node, j, dtype_name(g.dtype()), g.shape().str(), r.start, r.dim, dtype_name(want_dt), want.str()));
  }
}

bool all_finite(const Tensor& g) {
  const std::int64_t n = g.numel();
  if (g.dtype() == Dtype::f32) {
    const float* p = g.data<float>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(p[i])) return false;
    }
  } else if (g.dtype() == Dtype::f64) {
    const double* p = g.data<double>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(p[i])) return false;
    }
  }
  return true;
}

// After a backward walk: kill what lost its last reference during it, then clear the
// tape if nothing is pending.
void end_walk(Tape& t) {
  t.in_backward = false;
  std::vector<std::uint32_t> deferred;
  deferred.swap(t.deferred);
  for (std::uint32_t k : deferred) {
    if (k >= t.nodes.size()) continue;  // dropped with the freed end of the tape, or a kill emptied it
    Node& n = t.nodes[k];
    if (n.refs == 0 && n.state == NodeState::pending) kill(t, k);
  }
  drain(t);
  maybe_clear(t);
  if (t.nodes.size() >= t.compact_at) compact(t);
}

// "input 1 [2,3] (made by 'tanh')" for messages.
std::string describe_input(std::size_t j, const TensorImpl& x) {
  return fmt::format("input {} {} (made by '{}')", j, x.shape.str(), x.op ? x.op : "?");
}

[[noreturn]] void throw_foreign(const char* where, const std::string& what, std::uint64_t stamp) {
  throw StateError(fmt::format(
      "{}: {} has autograd history recorded on another thread (tape #{}; this thread's is #{}). A tensor "
      "with history belongs to the thread that recorded it: detach() it before handing it to another "
      "thread (its gradient then stops there), or compute it on this thread",
      where, what, owner_of(stamp), t_tape_id));
}

template <class Inputs>
void record_impl(const char* name, Tensor& out, const Inputs& inputs, std::size_t n, BackwardFn&& fn) {
  if (!t_grad_enabled) return;  // NoGradGuard: nothing is recorded, out stays a constant
  Tape& t = tape();
  if (t.in_backward && !t_create_graph) {
    throw StateError(fmt::format(
        "record '{}': called from inside a backward function (while '{}' runs); backward functions "
        "compute with recording off unless the backward was asked to create_graph",
        name, t_running_op ? t_running_op : "?"));
  }
  if (!out.defined()) throw StateError(fmt::format("record '{}': the output tensor is undefined", name));
  TensorImpl& o = *out.impl();
  if (o.node != kNoNode) {
    throw StateError(fmt::format("record '{}': the output already has a history (produced by '{}')", name, o.op));
  }
  if (t.remote.any.load(std::memory_order_relaxed)) [[unlikely]] drain(t);
  if (t.nodes.size() >= t.compact_at) [[unlikely]] compact(t);
  // Inputs with history from another thread are refused before anything is appended.
  for (std::size_t j = 0; j < n; ++j) {
    const Tensor& x = inputs(j);
    if (x.defined() && x.impl()->node != kNoNode && owner_of(x.impl()->stamp) != t.id) {
      throw_foreign(fmt::format("'{}'", name).c_str(), describe_input(j, *x.impl()), x.impl()->stamp);
    }
  }
  if (t.nodes.size() >= kNoNode - 1) {
    throw StateError(fmt::format("record '{}': the tape holds {} nodes; call backward() or use NoGradGuard", name,
                                 t.nodes.size()));
  }
  const auto idx = static_cast<std::uint32_t>(t.nodes.size());
  Node& node = t.nodes.emplace_back();
  node.name = name;
  node.fn = std::move(fn);
  node.out_shape = o.shape;
  node.out_dtype = o.dtype;
  node.refs = 1;
  node.inputs.resize(n);
  node.stamp = new_stamp(t);
  for (std::size_t j = 0; j < n; ++j) {
    const Tensor& x = inputs(j);
    if (!x.defined()) continue;
    const TensorImpl& xi = *x.impl();
    if (!xi.requires_grad) {
      // A gradient made by backward, used as a value: its own history is missing (they are
      // constants without create_graph), so a backward that reaches it refuses.
      if (xi.grad_value) node.inputs[j].stale_op = kGradValue;
      continue;
    }
    Edge& e = node.inputs[j];
    if (xi.node == kNoNode) {
      e.leaf = x.impl_ptr();
    } else if (const std::uint32_t k = find_node(t, xi.stamp, xi.node);
               k != kNoNode && t.nodes[k].state == NodeState::pending) {
      e.node = k;  // not xi.node: that is where it was recorded, before any compaction
      ++t.nodes[k].refs;
    } else {
      // Allowed (sampling after training forgets NoGradGuard), but a backward
      // through it is the classic truncated-BPTT bug and says so.
      e.stale_op = xi.op ? xi.op : "?";
    }
  }
  ++t.pending;
  o.stamp = node.stamp;
  o.node = idx;
  o.op = name;
  o.requires_grad = true;
}

}  // namespace

SavedTensor::SavedTensor(const Tensor& t, int input)
    : t_(t), version_(t.defined() ? t.version() : 0), input_(input) {}

namespace detail {
thread_local bool t_reattach_outputs = false;
}  // namespace detail

// The saved output, attached to the node whose backward is running (it is that node's
// output): a new handle that holds a reference to the node like any output handle.
const Tensor& SavedTensor::get_create_graph() const {
  if (input_ != kOutput || t_running_node == kNoNode) {
    if (t_.requires_grad()) t_read_history = true;
    return t_;
  }
  t_read_history = true;
  Tape& t = tape();
  Node& n = t.nodes[t_running_node];
  if (n.out_shape != t_.shape() || n.out_dtype != t_.dtype()) {
    throw StateError(fmt::format(
        "'{}' (tape node #{}) saved as its output a {} {} but its output is {} {}: under create_graph a saved "
        "output is attached to its node, so it must be that output",
        n.name, t_running_node, dtype_name(t_.dtype()), t_.shape().str(), dtype_name(n.out_dtype),
        n.out_shape.str()));
  }
  Tensor a = t_.detach();
  TensorImpl& ai = *a.impl();
  ai.requires_grad = true;
  ai.stamp = n.stamp;
  ai.node = t_running_node;
  ai.op = n.name;
  ++n.refs;
  t_attached.push_back(std::move(a));
  return t_attached.back();
}

void SavedTensor::throw_modified() const {
  const std::string what = input_ == kOutput ? fmt::format("its output {}", t_.shape().str())
                                             : fmt::format("input {} {}", input_, t_.shape().str());
  const std::string where = t_running_op ? fmt::format("'{}' (tape node #{})", t_running_op, t_running_node)
                                         : std::string("a backward function");
  throw StateError(fmt::format(
      "{} saved {} at version {}; it is now at version {}: it was modified in place after it was used "
      "(a write through data<T>(), an optimizer step, load_state_dict, init or an in-place op). Write "
      "into a clone(), or change it only after backward()",
      where, what, version_, t_.version()));
}

bool is_grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }
bool is_anomaly_enabled() { return t_anomaly; }
void set_anomaly_enabled(bool on) { t_anomaly = on; }

// A .grad() counts as needing a record (grad_value): not to differentiate it, but so that
// what is computed from it carries the mark to a backward that must refuse it.
bool needs_record(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* x : inputs) {
    if (x->defined() && (x->impl()->requires_grad | x->impl()->grad_value)) return true;
  }
  return false;
}

bool needs_record(std::span<const Tensor> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& x : inputs) {
    if (x.defined() && (x.impl()->requires_grad | x.impl()->grad_value)) return true;
  }
  return false;
}

void record(const char* name, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn fn) {
  const Tensor* const* p = inputs.begin();
  record_impl(name, out, [p](std::size_t j) -> const Tensor& { return *p[j]; }, inputs.size(), std::move(fn));
}

void record(const char* name, Tensor& out, std::span<const Tensor> inputs, BackwardFn fn) {
  record_impl(name, out, [inputs](std::size_t j) -> const Tensor& { return inputs[j]; }, inputs.size(),
              std::move(fn));
}

namespace {
// Applies other threads' releases before a query looks at the tape.
Tape& drained_tape() {
  Tape& t = tape();
  if (t.remote.any.load(std::memory_order_relaxed)) drain(t);
  maybe_clear(t);
  return t;
}
}  // namespace

std::size_t tape_size() { return drained_tape().nodes.size(); }
std::size_t tape_pending() { return drained_tape().pending; }

std::string tape_dump() {
  Tape& t = drained_tape();
  std::string s = fmt::format("tape #{}: {} nodes, {} pending\n", t.id, t.nodes.size(), t.pending);
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    Node& n = t.nodes[i];
    const char* st = n.state == NodeState::pending ? "pending" : n.state == NodeState::freed ? "freed" : "dead";
    std::string ins;
    for (std::size_t j = 0; j < n.inputs.size(); ++j) {
      const Edge& e = n.inputs[j];
      if (!ins.empty()) ins += ", ";
      if (e.node != kNoNode) {
        ins += fmt::format("#{}", e.node);
      } else if (e.leaf) {
        ins += fmt::format("leaf{}", e.leaf->shape.str());
      } else if (e.stale_op == kGradValue) {
        ins += "grad value";
      } else if (e.stale_op) {
        ins += fmt::format("freed '{}'", e.stale_op);
      } else {
        ins += "const";
      }
    }
    s += fmt::format("#{} {} -> {} {} ({}) [{}, refs {}]\n", i, n.name, dtype_name(n.out_dtype), n.out_shape.str(),
                     ins, st, n.refs);
  }
  return s;
}

namespace detail {

void retain_output(const Tensor& x) {
  const TensorImpl& xi = *x.impl();
  if (xi.node == kNoNode) return;  // a leaf keeps its grad anyway
  Tape& t = tape();
  if (owner_of(xi.stamp) != t.id) {
    throw_foreign("retain_grad", fmt::format("the tensor {} (made by '{}')", xi.shape.str(), xi.op ? xi.op : "?"),
                  xi.stamp);
  }
  if (Node* n = node_of(t, xi.stamp, xi.node); n && !n->retain) {
    n->retain = true;
    t.retained.emplace_back(n->stamp, x.impl_ptr());
  }
}

std::mutex& grad_lock(const TensorImpl* leaf) {
  // Striped: a mutex per leaf would cost 40 bytes per tensor for a rare contention.
  static std::mutex locks[64];
  return locks[(reinterpret_cast<std::uintptr_t>(leaf) >> 6) % 64];
}

void release_output(std::uint64_t stamp, std::uint32_t node) {
  const std::uint32_t owner = owner_of(stamp);
  if (owner == t_tape_id) {
    if (t_tape_alive) release_local(tape(), stamp, node);
    return;
  }
  // Destroyed on another thread than the one that recorded it: the owner's tape is not
  // ours to touch. Queue the release for the owner (who applies it at its next record,
  // backward or query); if the owner has exited, its tape and this node are gone already.
  std::lock_guard reg(g_tapes_mu);
  auto it = tapes().find(owner);
  if (it == tapes().end()) return;
  RemoteQueue& q = it->second->remote;
  std::lock_guard lock(q.mu);
  q.releases.emplace_back(stamp, node);
  q.any.store(true, std::memory_order_relaxed);
}

namespace {

// The seed of a root: the given one (checked), or 1 for a scalar.
Tensor root_seed(const TensorImpl& r, const Tensor& seed_in, const char* where) {
  if (seed_in.defined()) {
    if (seed_in.shape() != r.shape || seed_in.dtype() != r.dtype) {
      throw ShapeError(fmt::format("{}: seed {} {} does not match the output {} {}", where, dtype_name(seed_in.dtype()),
                                   seed_in.shape().str(), dtype_name(r.dtype), r.shape.str()));
    }
    return seed_in;
  }
  if (r.shape.numel() != 1) {
    throw StateError(fmt::format(
        "{}: the output has shape {} ({} elements); without a seed it must be a scalar. "
        "Reduce it (sum, mean) or pass the seed gradient d(loss)/d(output) of shape {}",
        where, r.shape.str(), r.shape.numel(), r.shape.str()));
  }
  Tensor seed = Tensor::empty(r.shape, r.dtype);
  if (r.dtype == Dtype::f32) {
    *seed.data<float>() = 1.0f;
  } else {
    *seed.data<double>() = 1.0;
  }
  return seed;
}

// Under create_graph a backward's result must carry history when the gradient it was
// given does: every gradient is linear in g, so a nonzero result without history is a
// raw kernel's constant, and its second derivative would be silently missing.
bool nonzero(const Tensor& x) {
  const std::int64_t n = x.numel();
  if (x.dtype() == Dtype::f32) {
    const float* p = x.data<float>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (p[i] != 0.0f) return true;
    }
  } else if (x.dtype() == Dtype::f64) {
    const double* p = x.data<double>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (p[i] != 0.0) return true;
    }
  }
  return false;
}

struct RangedPiece {
  Tensor g;
  GradRange r;
};

// The sum of ranged gradients into a zero tensor of shape s, as one recorded op: its
// backward reads each piece's range back out (narrow, or index_select), so it is linear
// and differentiable again. One pass over the pieces, whatever their number.
Tensor ranged_sum(const std::vector<RangedPiece>& ps, const Shape& s) {
  Tensor y = zeros(s, ps.front().g.dtype());
  std::vector<Tensor> ins;
  ins.reserve(ps.size());
  for (const RangedPiece& p : ps) {
    add_ranged(y, p.g, p.r);
    ins.push_back(p.g);
  }
  if (needs_record(std::span<const Tensor>(ins))) {
    std::vector<GradRange> rs;
    std::vector<Shape> shapes;
    for (const RangedPiece& p : ps) {
      rs.push_back(p.r);
      shapes.push_back(p.g.shape());
    }
    // d sum_j embed_j(g_j) = (range_j of gg)_j
    record("ranged_sum", y, std::span<const Tensor>(ins),
           [rs = std::move(rs), shapes = std::move(shapes), s](const Tensor& gg, GradSlots& dx) {
             for (std::size_t j = 0; j < rs.size(); ++j) {
               if (!dx.needs(j)) continue;
               const GradRange& r = rs[j];
               if (r.index.defined()) {
                 dx[j] = reshape(index_select(gg, r.dim, r.index), shapes[j]);
               } else {
                 std::int64_t per = 1;
                 for (int a = 0; a < s.size(); ++a) {
                   if (a != r.dim) per *= s[a];
                 }
                 dx[j] = reshape(narrow(gg, r.dim, r.start, per == 0 ? 0 : shapes[j].numel() / per), shapes[j]);
               }
             }
           });
  }
  return y;
}

[[noreturn]] void throw_not_twice(const char* op, std::uint32_t i, std::size_t j, const char* why) {
  throw StateError(fmt::format(
      "backward of '{}' (tape node #{}) under create_graph: {} is a constant although {}, so a second "
      "derivative through it would be silently missing: this op's backward is not twice differentiable "
      "(a custom op: build its backward from recorded ops, or call composite_backward when is_grad_enabled())",
      op, i, j < 1000 ? fmt::format("the gradient for input {}", j) : std::string("every gradient it returned"), why));
}

// The state a walk replaces and restores: walks nest (composite_backward differentiates
// a recomputation from inside a create_graph backward).
struct WalkScope {
  bool in_backward, create_graph, reattach, grad_enabled;
  std::uint32_t floor;
  const char* running_op;
  std::uint32_t running_node;
};

// One backward walk from `roots`. Without targets: gradients go into the leaves' grad()
// (Tensor::backward). With targets (xg::grad): only what leads to a target runs, and
// the targets' gradients are returned in order instead.
std::vector<Tensor> walk(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds_in,
                         const std::vector<Tensor>* targets, bool retain_graph, bool create_graph, const char* where) {
  Tape& t = tape();
  const bool nested = t.in_backward;
  if (nested && !t_create_graph) {
    throw StateError(fmt::format(
        "{}: called from inside a backward function; only a create_graph backward may differentiate "
        "what it records itself (composite_backward)",
        where));
  }
  const bool capture = targets != nullptr;
  const std::size_t nt = capture ? targets->size() : 0;
  std::vector<Tensor> out(nt);
  std::vector<char> owned(nt, 0);
  // The first target with the same tensor: duplicates get its result at the end.
  std::vector<std::size_t> first(nt);
  std::vector<std::uint32_t> tnode(nt, kNoNode);
  for (std::size_t k = 0; k < nt; ++k) {
    const Tensor& x = (*targets)[k];
    first[k] = k;
    for (std::size_t q = 0; q < k; ++q) {
      if ((*targets)[q].is_same(x)) {
        first[k] = q;
        break;
      }
    }
    const TensorImpl& xi = *x.impl();
    if (xi.node == kNoNode) continue;
    if (owner_of(xi.stamp) != t.id) throw_foreign(where, fmt::format("input {} {}", k, xi.shape.str()), xi.stamp);
    const std::uint32_t idx = find_node(t, xi.stamp, xi.node);
    if (idx == kNoNode || t.nodes[idx].state != NodeState::pending) {
      throw StateError(fmt::format(
          "{}: input {} {} (made by '{}') belongs to a graph already freed by a previous backward; keep the "
          "graph with retain_graph=true, or differentiate with respect to tensors of the current graph",
          where, k, xi.shape.str(), xi.op ? xi.op : "?"));
    }
    tnode[k] = idx;
  }
  auto leaf_target = [&](const TensorImpl* leaf) -> std::size_t {
    for (std::size_t k = 0; k < nt; ++k) {
      if (first[k] == k && tnode[k] == kNoNode && (*targets)[k].impl() == leaf) return k;
    }
    return nt;
  };

  // Accumulation: under create_graph sums are recorded adds (no in-place write into a
  // tensor with history); otherwise the in-place forms that copy an aliased first term.
  auto add_value = [create_graph](Tensor& acc, char& own, Tensor&& g) {
    if (create_graph) {
      if (!acc.defined()) {
        acc = std::move(g);
      } else {
        Tensor s = add(acc, g);
        acc = std::move(s);
      }
      return;
    }
    if (!acc.defined()) {
      own = exclusively_held(g);
      acc = std::move(g);
    } else {
      if (!own) {
        acc = copy_of(acc);
        own = 1;
      }
      detail::add_into(acc, g);
    }
  };
  auto add_value_range = [](Tensor& acc, char& own, const Tensor& g, const GradRange& r, const Shape& s) {
    if (!acc.defined()) {
      acc = zeros(s, g.dtype());
      own = 1;
    } else if (!own) {
      acc = copy_of(acc);
      own = 1;
    }
    add_ranged(acc, g, r);
  };
  auto add_node = [&t, create_graph](std::uint32_t k, Tensor&& g) {
    if (!create_graph) {
      accumulate_node(t.nodes[k], std::move(g));
    } else if (!t.nodes[k].grad.defined()) {
      t.nodes[k].grad = std::move(g);
    } else {
      // add records, and t.nodes may reallocate under it: pass it a copy, not a reference
      // into the vector.
      const Tensor acc = t.nodes[k].grad;
      Tensor s = add(acc, g);
      t.nodes[k].grad = std::move(s);
    }
  };

  // create_graph: ranged gradients (select/narrow/index_select per step) are kept as
  // pieces and summed by one recorded op when their destination is reached, so a T-step
  // loop costs O(T) there too, not T full-size adds.
  std::unordered_map<std::uint32_t, std::vector<RangedPiece>> node_pieces;
  std::vector<std::pair<std::shared_ptr<TensorImpl>, std::vector<RangedPiece>>> leaf_pieces;
  std::vector<std::vector<RangedPiece>> target_pieces(nt);
  auto flush_node = [&](std::uint32_t k) {
    auto it = node_pieces.find(k);
    if (it == node_pieces.end()) return;
    std::vector<RangedPiece> ps = std::move(it->second);
    node_pieces.erase(it);
    const Shape s = t.nodes[k].out_shape;
    add_node(k, ranged_sum(ps, s));
  };

  // Roots: leaves take their seed at once; nodes are checked before anything changes.
  std::vector<Tensor> seeds(roots.size());
  std::vector<std::uint32_t> ridx(roots.size(), kNoNode);
  for (std::size_t q = 0; q < roots.size(); ++q) {
    const TensorImpl& r = *roots[q].impl();
    seeds[q] = root_seed(r, seeds_in.size() > q ? seeds_in[q] : Tensor(), where);
    if (r.node == kNoNode) continue;
    if (owner_of(r.stamp) != t.id) {
      throw_foreign(where, fmt::format("the tensor {} (made by '{}')", r.shape.str(), r.op ? r.op : "?"), r.stamp);
    }
    if (!nested) drain(t);
    const std::uint32_t idx = find_node(t, r.stamp, r.node);
    if (idx == kNoNode || t.nodes[idx].state != NodeState::pending) {
      throw StateError(fmt::format(
          "{}: the graph that produced this tensor (op '{}') was already freed by a previous backward(); "
          "pass retain_graph=true to the first backward() to walk a graph twice",
          where, r.op ? r.op : "?"));
    }
    ridx[q] = idx;
  }
  const std::uint32_t floor = nested ? t_walk_floor : 0;
  std::uint32_t L = 0;
  bool any_node = false;
  for (std::uint32_t idx : ridx) {
    if (idx == kNoNode) continue;
    if (idx < floor) {
      throw StateError(fmt::format(
          "{}: inside a backward function, only what that backward recorded can be differentiated "
          "(the output reaches tape node #{}, recorded before the walk)",
          where, idx));
    }
    L = any_node ? std::max(L, idx) : idx;
    any_node = true;
  }
  // The lowest node the walk may need: everything below the lowest target node leads
  // nowhere useful, unless a target is a leaf (a leaf can hang off any node).
  std::uint32_t lo = floor;
  bool all_nodes = capture && nt > 0;
  if (capture) {
    std::uint32_t m = L;
    for (std::size_t k = 0; k < nt; ++k) {
      if (tnode[k] == kNoNode) {
        all_nodes = false;
      } else {
        m = std::min(m, tnode[k]);
      }
    }
    if (all_nodes) lo = std::max(lo, m);
  }

  for (std::size_t q = 0; q < roots.size(); ++q) {
    if (ridx[q] != kNoNode) continue;
    TensorImpl& r = *roots[q].impl();
    if (!capture) {
      accumulate_leaf(r, copy_of(seeds[q]), create_graph);
    } else if (const std::size_t k = leaf_target(&r); k < nt) {
      add_value(out[k], owned[k], copy_of(seeds[q]));
    }
  }
  if (!any_node || (capture && L < lo)) {
    for (std::size_t k = 0; k < nt; ++k) out[k] = out[first[k]];
    return out;
  }

  auto clear_marks = [&t, lo, L] {
    for (std::uint32_t i = lo; i <= L; ++i) t.nodes[i].mark = false;
  };

  // Phase 1: mark what the roots reach, and refuse before touching anything if that
  // includes a node (or an input) from a freed graph.
  for (std::uint32_t idx : ridx) {
    if (idx != kNoNode) t.nodes[idx].mark = true;
  }
  for (std::uint32_t i = L + 1; i-- > lo;) {
    Node& n = t.nodes[i];
    if (!n.mark) continue;
    for (std::size_t j = 0; j < n.inputs.size(); ++j) {
      Edge& e = n.inputs[j];
      const char* freed_op = e.stale_op;
      if (e.node != kNoNode) {
        if (e.node < lo) {
          // Below every target, all of them nodes: it leads nowhere this walk needs (and
          // a nested walk's targets, composite_backward's aliases, read the outer graph).
          if (all_nodes) continue;
          clear_marks();
          throw StateError(fmt::format(
              "{}: inside a backward function, only what that backward recorded can be differentiated "
              "('{}', tape node #{}, reads tape node #{}, recorded before the walk)",
              where, n.name, i, e.node));
        }
        if (t.nodes[e.node].state != NodeState::pending) freed_op = t.nodes[e.node].name;
        t.nodes[e.node].mark = true;
      }
      if (freed_op == kGradValue) {
        clear_marks();
        throw StateError(fmt::format(
            "{}: '{}' (tape node #{}) uses, as input {}, a value computed from a gradient made without "
            "create_graph: that gradient is a constant (its backward recorded no history), so the derivative "
            "of that term would be silently missing. Compute the gradient with create_graph "
            "(loss.backward({{.create_graph = true}}) or xg::grad(..., {{.create_graph = true}})); to use it as a "
            "constant on purpose, take .detach() of it",
            where, n.name, i, j));
      }
      if (freed_op) {
        clear_marks();
        throw StateError(fmt::format(
            "{}: '{}' (tape node #{}) uses a tensor produced by '{}' in a graph already freed by an "
            "earlier backward(). A state carried from one chunk to the next (truncated BPTT) must be "
            "detach()ed after each backward(): retain_graph=true would keep every earlier chunk alive and "
            "walk it again, so memory and time would grow with each chunk. retain_graph=true on the earlier "
            "backward() is only for walking one graph twice (two losses over one forward)",
            where, n.name, i, freed_op));
      }
    }
  }

  // xg::grad: which marked nodes lead to a target (ascending: inputs come first).
  std::vector<char> reach;
  std::vector<char> is_tnode;
  if (capture) {
    reach.assign(L - lo + 1, 0);
    is_tnode.assign(L - lo + 1, 0);
    for (std::size_t k = 0; k < nt; ++k) {
      if (tnode[k] != kNoNode && tnode[k] >= lo && tnode[k] <= L) is_tnode[tnode[k] - lo] = 1;
    }
    for (std::uint32_t i = lo; i <= L; ++i) {
      Node& n = t.nodes[i];
      if (!n.mark) continue;
      char r = is_tnode[i - lo];
      for (std::size_t j = 0; j < n.inputs.size() && !r; ++j) {
        const Edge& e = n.inputs[j];
        if (e.node != kNoNode) {
          r = e.node >= lo && reach[e.node - lo];
        } else if (e.leaf) {
          r = leaf_target(e.leaf.get()) < nt;
        }
      }
      reach[i - lo] = r;
    }
  }
  auto edge_wanted = [&](const Edge& e) -> bool {
    if (!capture) return e.needs();
    if (e.node != kNoNode) return e.node >= lo && reach[e.node - lo];
    return e.leaf && leaf_target(e.leaf.get()) < nt;
  };

  // Phase 2: the reverse walk.
  const WalkScope prev{t.in_backward, t_create_graph, detail::t_reattach_outputs, t_grad_enabled,
                       t_walk_floor,  t_running_op,   t_running_node};
  auto restore = [&prev, &t] {
    t.in_backward = prev.in_backward;
    t_create_graph = prev.create_graph;
    detail::t_reattach_outputs = prev.reattach;
    t_grad_enabled = prev.grad_enabled;
    t_walk_floor = prev.floor;
    t_running_op = prev.running_op;
    t_running_node = prev.running_node;
  };
  // Backward functions call ops: without create_graph those must not record; with it,
  // they must (that is the second-order graph).
  t_grad_enabled = create_graph;
  t_create_graph = create_graph;
  detail::t_reattach_outputs = create_graph;
  t.in_backward = true;
  // What a backward records lands past L; a walk nested in it may touch only that.
  t_walk_floor = L + 1;
  std::vector<Tensor> slots;
  std::unique_ptr<bool[]> needs;  // not vector<bool>: GradSlots wants a bool*
  std::size_t needs_cap = 0;
  std::vector<const Shape*> shapes;
  std::vector<Shape> shape_copies;  // create_graph: node shapes may move while fn runs
  std::vector<GradRange> ranges;
  // A walk without create_graph stacks the products bound for each leaf (or leaf target of
  // xg::grad) and multiplies them out at its end (or when a stack is large): those
  // gradients are read by nobody before the walk returns.
  const bool stack_products = !create_graph && !nested && !t_anomaly;
  std::uint32_t i = L + 1;
  try {
    for (std::size_t q = 0; q < roots.size(); ++q) {
      if (ridx[q] != kNoNode) add_node(ridx[q], Tensor(seeds[q]));
    }
    while (i-- > lo) {
      // Past the end: a node already freed, dropped below with the tape's freed end.
      if (i >= t.nodes.size() || !t.nodes[i].mark) continue;
      t.nodes[i].mark = false;
      if (capture && !reach[i - lo]) {
        t.nodes[i].grad = Tensor();
        continue;
      }
      if (create_graph) flush_node(i);
      if (capture && is_tnode[i - lo]) {
        for (std::size_t k = 0; k < nt; ++k) {
          if (tnode[k] == i && first[k] == k) {
            out[k] = t.nodes[i].grad;
            owned[k] = 0;
          }
        }
      }
      Node& n = t.nodes[i];
      const std::size_t k = n.inputs.size();
      bool wanted = false;
      if (n.grad.defined() && n.fn) {
        if (k > needs_cap) {
          needs = std::make_unique<bool[]>(k);
          needs_cap = k;
        }
        for (std::size_t j = 0; j < k; ++j) {
          needs[j] = edge_wanted(n.inputs[j]);
          wanted |= needs[j];
        }
      }
      if (wanted) {
        slots.assign(k, Tensor());
        shapes.assign(k, nullptr);
        ranges.assign(k, GradRange{});
        if (create_graph) shape_copies.assign(k, Shape());
        for (std::size_t j = 0; j < k; ++j) {
          const Edge& e = n.inputs[j];
          const Shape* s = e.node != kNoNode ? &t.nodes[e.node].out_shape : e.leaf ? &e.leaf->shape : nullptr;
          if (create_graph && s) {
            shape_copies[j] = *s;
            s = &shape_copies[j];
          }
          shapes[j] = s;
        }
        // create_graph: ranged gradients come full size, through the recorded embedding.
        GradSlots gs(slots.data(), needs.get(), shapes.data(), k, ranges.data());
        t_running_op = n.name;
        t_running_node = i;
        if (!create_graph) {
          n.fn(n.grad, gs);
        } else {
          // The function records, so the node vector may reallocate under it: call it from
          // here, with its own copy of the gradient, and put it back (even on a throw).
          const Tensor g = n.grad;
          struct PutBack {
            Tape& t;
            std::uint32_t i;
            BackwardFn fn;
            std::size_t attached;
            ~PutBack() {
              t.nodes[i].fn = std::move(fn);
              t_attached.resize(attached);
            }
          } call{t, i, std::move(n.fn), t_attached.size()};
          const bool read_before = t_read_history;
          t_read_history = false;
          call.fn(g, gs);
          const bool read = t_read_history;
          t_read_history = read_before;
          // A gradient is linear in g, and depends on the saved values it was computed
          // from: a constant result when g has history, or only constant (nonzero)
          // results after reading a saved value with history, is a raw kernel's value (a fused op
          // without a create_graph path), and its second derivative would be silently
          // missing.
          bool any_history = false, any_nonzero_const = false;
          for (std::size_t j = 0; j < k; ++j) {
            if (!needs[j] || !slots[j].defined()) continue;
            if (slots[j].requires_grad()) {
              any_history = true;
            } else {
              // Even a zero result: J^T g = 0 at this g says nothing of d/dg = J^T.
              if (g.requires_grad()) throw_not_twice(t.nodes[i].name, i, j, "the incoming gradient has history");
              any_nonzero_const |= nonzero(slots[j]);
            }
          }
          if (read && !any_history && any_nonzero_const) {
            throw_not_twice(t.nodes[i].name, i, 1000, "it read a saved value that has history");
          }
        }
        t_running_op = prev.running_op;
        t_running_node = prev.running_node;
        for (std::size_t j = 0; j < k; ++j) {
          if (!needs[j] || !slots[j].defined()) continue;
          // By index, not by reference: under create_graph the adds below record.
          const Edge& e = t.nodes[i].inputs[j];
          const std::uint32_t en = e.node;
          TensorImpl* leaf = e.leaf.get();
          // shapes[j]: the node's shape, or under create_graph (where the adds below record
          // and the node vector may move) a copy of it.
          const Shape& want = *shapes[j];
          const Dtype want_dt = en != kNoNode ? t.nodes[en].out_dtype : leaf->dtype;
          const GradRange& r = ranges[j];
          if (r.rhs.defined()) {
            const Tensor& lhs = slots[j];
            const bool fits = lhs.ndim() == 2 && r.rhs.ndim() == 2 && want.size() == 2 &&
                              lhs.shape()[0] == r.rhs.shape()[0] && lhs.shape()[1] == want[0] &&
                              r.rhs.shape()[1] == want[1] && lhs.dtype() == want_dt && r.rhs.dtype() == want_dt;
            if (!fits) {
              throw StateError(fmt::format(
                  "backward of '{}' (tape node #{}): the gradient for input {} is the product lhsᵀ · rhs of {} {} "
                  "and {} but the input is {} {}",
                  t.nodes[i].name, i, j, dtype_name(lhs.dtype()), lhs.shape().str(), r.rhs.shape().str(),
                  dtype_name(want_dt), want.str()));
            }
            if (stack_products && en == kNoNode && leaf != nullptr && (!capture || leaf_target(leaf) < nt)) {
              Tensor full = t_products.add(t.nodes[i].inputs[j].leaf, lhs, r.rhs);
              if (!full.defined()) continue;
              if (capture) {
                const std::size_t q = leaf_target(leaf);
                add_value(out[q], owned[q], std::move(full));
              } else {
                accumulate_leaf(*leaf, std::move(full));
              }
              continue;
            }
            slots[j] = detail::product_now(lhs, r.rhs);
          }
          if (r.dim >= 0) {
            check_range_grad(t.nodes[i].name, i, j, slots[j], want, want_dt, r);
          } else if (slots[j].shape() != want || slots[j].dtype() != want_dt) {
            throw StateError(fmt::format(
                "backward of '{}' (tape node #{}): the gradient for input {} is {} {} but the input is {} {}",
                t.nodes[i].name, i, j, dtype_name(slots[j].dtype()), slots[j].shape().str(), dtype_name(want_dt),
                want.str()));
          }
          if (t_anomaly && !all_finite(slots[j])) {
            throw AnomalyError(fmt::format(
                "anomaly: the backward of '{}' (tape node #{}, output {} {}) produced NaN or Inf in the "
                "gradient for input {} {}",
                t.nodes[i].name, i, dtype_name(t.nodes[i].out_dtype), t.nodes[i].out_shape.str(), j, want.str()));
          }
          const std::size_t tk = capture && leaf ? leaf_target(leaf) : nt;
          if (r.dim >= 0 && create_graph) {
            RangedPiece piece{std::move(slots[j]), r};
            if (en != kNoNode) {
              node_pieces[en].push_back(std::move(piece));
            } else if (capture) {
              target_pieces[tk].push_back(std::move(piece));
            } else {
              auto lp = std::find_if(leaf_pieces.begin(), leaf_pieces.end(),
                                     [leaf](const auto& e) { return e.first.get() == leaf; });
              if (lp == leaf_pieces.end()) {
                leaf_pieces.emplace_back(t.nodes[i].inputs[j].leaf, std::vector<RangedPiece>{});
                lp = leaf_pieces.end() - 1;
              }
              lp->second.push_back(std::move(piece));
            }
          } else if (r.dim >= 0) {
            if (en != kNoNode) {
              accumulate_node_range(t.nodes[en], slots[j], r);
            } else if (capture) {
              add_value_range(out[tk], owned[tk], slots[j], r, want);
            } else {
              accumulate_leaf_range(*leaf, slots[j], r);
            }
          } else if (en != kNoNode) {
            add_node(en, std::move(slots[j]));
          } else if (capture) {
            add_value(out[tk], owned[tk], std::move(slots[j]));
          } else {
            accumulate_leaf(*leaf, std::move(slots[j]), create_graph);
          }
        }
      }
      if (!capture && t.nodes[i].retain && t.nodes[i].grad.defined()) {
        const std::uint64_t stamp = t.nodes[i].stamp;
        const Tensor g = t.nodes[i].grad;
        for (std::size_t q = 0; q < t.retained.size(); ++q) {
          if (t.retained[q].first != stamp) continue;
          if (std::shared_ptr<TensorImpl> o = t.retained[q].second.lock()) {
            accumulate_leaf(*o, create_graph ? Tensor(g) : copy_of(g), create_graph);
          }
        }
      }
      if (retain_graph || (capture && !wanted)) {
        t.nodes[i].grad = Tensor();
      } else {
        slots.clear();
        // The inputs lose this reader. Normally the walk frees them too; if it stops
        // early (an exception), end_walk kills the ones nobody else holds.
        free_node(t, i, NodeState::freed, [&t](std::uint32_t q) { t.deferred.push_back(q); });
        // Freed nodes at the end of the tape go now, while they are in cache, rather than
        // in one pass over the whole tape when it is cleared. (A tensor still naming one
        // finds no node with its stamp: a freed graph, as after the clear. Only a plain
        // walk: one that records appends pending nodes past L.)
        if (!create_graph && !capture && !nested) {
          while (!t.nodes.empty() && t.nodes.back().state != NodeState::pending) t.nodes.pop_back();
        }
      }
    }
    if (stack_products) {
      for (auto& [leaf, g] : t_products.take_all()) {
        if (capture) {
          const std::size_t q = leaf_target(leaf.get());
          add_value(out[q], owned[q], std::move(g));
        } else {
          accumulate_leaf(*leaf, std::move(g));
        }
      }
    }
    // The leaves' (and xg::grad's leaf targets') ranged pieces, while still recording.
    for (auto& [leaf, ps] : leaf_pieces) accumulate_leaf(*leaf, ranged_sum(ps, leaf->shape), true);
    for (std::size_t q = 0; q < nt; ++q) {
      if (!target_pieces[q].empty()) {
        add_value(out[q], owned[q], ranged_sum(target_pieces[q], (*targets)[q].shape()));
      }
    }
  } catch (...) {
    if (stack_products) t_products.clear();
    for (std::uint32_t j = lo; j <= i && j <= L && j < t.nodes.size(); ++j) {
      t.nodes[j].mark = false;
      t.nodes[j].grad = Tensor();
    }
    restore();
    if (!nested) end_walk(t);
    throw;
  }
  restore();
  if (!nested) end_walk(t);
  for (std::size_t q = 0; q < nt; ++q) {
    if (first[q] != q) {
      out[q] = out[first[q]];
      continue;
    }
    // Ours to keep: a result still aliased elsewhere (a seed passed straight through)
    // is copied, so that marking it below never marks the caller's tensor.
    if (!create_graph && out[q].defined() && !exclusively_held(out[q])) out[q] = copy_of(out[q]);
  }
  return out;
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph, bool create_graph) {
  const TensorImpl& r = *root.impl();
  if (!r.requires_grad) {
    throw StateError(fmt::format(
        "backward: the tensor {} does not require grad: none of the inputs of the ops that made it "
        "requires grad (call requires_grad_() on the parameters), or it was computed under NoGradGuard",
        r.shape.str()));
  }
  if (tape().in_backward && !t_create_graph) {
    throw StateError("backward: called from inside another backward (not supported)");
  }
  walk({root}, {seed}, nullptr, retain_graph, create_graph, "backward");
}

std::vector<Tensor> run_grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds,
                             const std::vector<Tensor>& targets, bool retain_graph, bool create_graph) {
  return walk(roots, seeds, &targets, retain_graph, create_graph, "grad");
}

}  // namespace detail

namespace {
// The full-size forms of the ranged gradients, recorded under create_graph (both are
// linear: their backward reads the range back out).
Tensor embed_range_op(const Tensor& g, const Shape& xs, int d, std::int64_t start) {
  Tensor y = detail::embed_range(g, xs, d, start);
  if (needs_record({&g})) {
    // d embed(g) = the range of gg, in g's shape
    const std::int64_t len = xs.numel() == 0 ? 0 : g.numel() * xs[d] / xs.numel();
    record("embed_range", y, {&g}, [d, start, len, gs = g.shape()](const Tensor& gg, GradSlots& dx) {
      dx[0] = reshape(narrow(gg, d, start, len), gs);
    });
  }
  return y;
}

Tensor index_add_op(const Tensor& g, const Shape& xs, int d, const Tensor& index) {
  Tensor y = zeros(xs, g.dtype());
  detail::add_index_into(y, g, d, index);
  if (needs_record({&g})) {
    // d index_add(g) = rows index of gg
    record("index_add", y, {&g}, [d, index, gs = g.shape()](const Tensor& gg, GradSlots& dx) {
      dx[0] = reshape(index_select(gg, d, index), gs);
    });
  }
  return y;
}
}  // namespace

void GradSlots::set_range(std::size_t i, Tensor g, int d, std::int64_t start) {
  if (ranges_ == nullptr) {  // a caller that cannot take a range: the full-size form
    s_[i] = embed_range_op(g, *shapes_[i], d, start);
    return;
  }
  s_[i] = std::move(g);
  ranges_[i] = GradRange{d, start, Tensor(), Tensor()};
}

void GradSlots::set_index_add(std::size_t i, Tensor g, int d, Tensor index) {
  if (ranges_ == nullptr) {
    s_[i] = index_add_op(g, *shapes_[i], d, index);
    return;
  }
  s_[i] = std::move(g);
  ranges_[i] = GradRange{d, 0, std::move(index), Tensor()};
}

void GradSlots::set_product(std::size_t i, Tensor lhs, Tensor rhs) {
  if (ranges_ == nullptr || is_grad_enabled()) {  // a caller that cannot take one, or create_graph
    s_[i] = detail::product_now(lhs, rhs);
    return;
  }
  s_[i] = std::move(lhs);
  ranges_[i] = GradRange{-1, 0, Tensor(), std::move(rhs)};
}

}  // namespace xg
