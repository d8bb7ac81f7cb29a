// The tape engine. The essay in tape.hpp says what it does; this file says how.
#include "tape.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "detail/tape_internal.hpp"
#include "detail/tensor_impl.hpp"

namespace xg {

namespace {

// Generations are unique across threads, so a tensor from another thread's (or a
// cleared) graph can never be mistaken for a node of this tape.
std::atomic<std::uint64_t> g_next_gen{1};

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
  const char* name = nullptr;
  BackwardFn fn;
  EdgeList inputs;
  Tensor grad;                  // accumulated d(loss)/d(output) during a walk
  bool grad_owned = false;      // grad is ours alone: later contributions add in place
  TensorImpl* out = nullptr;    // the output handle while it lives (for retain_grad)
  Shape out_shape;
  Dtype out_dtype = Dtype::f32;
  std::int32_t refs = 0;        // output handle + pending nodes that read this one
  NodeState state = NodeState::pending;
  bool mark = false;            // reachable from the current backward root
};

struct Tape {
  std::vector<Node> nodes;
  std::uint64_t gen = g_next_gen.fetch_add(1);
  std::size_t pending = 0;
  bool in_backward = false;
  bool killing = false;
  std::vector<std::uint32_t> kill_queue;
  // Nodes whose last reference went away during a backward walk: killing them then could
  // free a node the walk has yet to reach, so they wait until the walk ends.
  std::vector<std::uint32_t> deferred;
  ~Tape();
};

thread_local bool t_grad_enabled = true;
thread_local bool t_anomaly = false;
thread_local bool t_tape_alive = false;

Tape& tape() {
  thread_local Tape t;
  t_tape_alive = true;
  return t;
}

Tape::~Tape() {
  t_tape_alive = false;  // tensors destroyed after this must not touch the tape
  gen = 0;
}

// Frees everything once nothing on the tape is pending, and starts a new generation:
// tensors that still name old nodes are recognised as "from a freed graph" by gen.
void maybe_clear(Tape& t) {
  if (t.pending != 0 || t.in_backward || t.killing || t.nodes.empty()) return;
  t.gen = g_next_gen.fetch_add(1);
  std::vector<Node> old;
  old.swap(t.nodes);
  old.clear();          // closures die here; their tensors' handles see a stale gen
  old.swap(t.nodes);    // keep the capacity for the next graph
}

// The one way a pending node is freed, by the backward walk (`state` freed) or because
// nobody can reach it any more (dead): drops its backward function, inputs and gradient,
// and calls orphaned(k) for each input node k that has just lost its last reader.
template <class F>
void free_node(Tape& t, std::uint32_t i, NodeState state, F&& orphaned) {
  Node& n = t.nodes[i];
  n.state = state;
  --t.pending;
  // Moved out so their destructors (which may release more handles, and so reach
  // release_output) run after the node's bookkeeping is consistent.
  BackwardFn fn = std::move(n.fn);
  n.fn = nullptr;
  EdgeList inputs = std::move(n.inputs);
  n.inputs = EdgeList();
  n.grad = Tensor();
  for (std::size_t j = 0; j < inputs.size(); ++j) {
    const std::uint32_t k = inputs[j].node;
    if (k != kNoNode && --t.nodes[k].refs == 0) orphaned(k);
  }
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

bool exclusively_held(const Tensor& g) {
  return g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1;
}

Tensor copy_of(const Tensor& g) {
  Tensor c = Tensor::empty(g.shape(), g.dtype());
  std::memcpy(c.data_ptr(), g.data_ptr(), static_cast<std::size_t>(g.numel()) * dtype_size(g.dtype()));
  return c;
}

// Adds g into a leaf's grad. The leaf owns what it stores: a gradient aliased elsewhere
// (add's backward hands one tensor to both inputs) is copied before it is kept, so
// in-place accumulation, clipping or scaling of one grad never shows in another.
void accumulate_leaf(Tensor& acc, Tensor&& g) {
  if (!acc.defined()) {
    acc = exclusively_held(g) ? std::move(g) : copy_of(g);
  } else {
    detail::add_into(acc, g);
  }
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
  const std::uint64_t gen = t.gen;
  for (std::uint32_t k : deferred) {
    if (t.gen != gen) break;  // a kill emptied the tape: nothing left to do
    Node& n = t.nodes[k];
    if (n.refs == 0 && n.state == NodeState::pending) kill(t, k);
  }
  maybe_clear(t);
}

template <class Inputs>
void record_impl(const char* name, Tensor& out, const Inputs& inputs, std::size_t n, BackwardFn fn) {
  Tape& t = tape();
  TensorImpl& o = *out.impl();
  if (o.node != kNoNode) {
    throw StateError(fmt::format("record '{}': the output already has a history (produced by '{}')", name, o.op));
  }
  if (t.nodes.size() >= kNoNode - 1) {
    throw StateError(fmt::format("record '{}': the tape holds {} nodes; call backward() or use NoGradGuard", name,
                                 t.nodes.size()));
  }
  const auto idx = static_cast<std::uint32_t>(t.nodes.size());
  Node& node = t.nodes.emplace_back();
  node.name = name;
  node.fn = std::move(fn);
  node.out = &o;
  node.out_shape = o.shape;
  node.out_dtype = o.dtype;
  node.refs = 1;
  node.inputs.resize(n);
  for (std::size_t j = 0; j < n; ++j) {
    const Tensor& x = inputs(j);
    if (!x.defined() || !x.impl()->requires_grad) continue;
    const TensorImpl& xi = *x.impl();
    Edge& e = node.inputs[j];
    if (xi.node == kNoNode) {
      e.leaf = x.impl_ptr();
    } else if (xi.gen == t.gen && t.nodes[xi.node].state == NodeState::pending) {
      e.node = xi.node;
      ++t.nodes[xi.node].refs;
    } else {
      // Allowed (sampling after training forgets NoGradGuard), but a backward
      // through it is the classic truncated-BPTT bug and says so.
      e.stale_op = xi.op ? xi.op : "?";
    }
  }
  ++t.pending;
  o.gen = t.gen;
  o.node = idx;
  o.op = name;
  o.requires_grad = true;
}

}  // namespace

bool is_grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }
bool is_anomaly_enabled() { return t_anomaly; }
void set_anomaly_enabled(bool on) { t_anomaly = on; }

bool needs_record(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* x : inputs) {
    if (x->defined() && x->impl()->requires_grad) return true;
  }
  return false;
}

bool needs_record(std::span<const Tensor> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& x : inputs) {
    if (x.defined() && x.impl()->requires_grad) return true;
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

std::size_t tape_size() { return tape().nodes.size(); }
std::size_t tape_pending() { return tape().pending; }

std::string tape_dump() {
  Tape& t = tape();
  std::string s = fmt::format("tape gen {}: {} nodes, {} pending\n", t.gen, t.nodes.size(), t.pending);
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

void release_output(std::uint64_t gen, std::uint32_t node) {
  if (!t_tape_alive) return;
  Tape& t = tape();
  if (gen != t.gen || node >= t.nodes.size()) return;
  Node& n = t.nodes[node];
  n.out = nullptr;
  if (--n.refs == 0 && n.state == NodeState::pending) {
    if (t.in_backward) {
      t.deferred.push_back(node);
    } else {
      kill(t, node);
    }
  }
}

void run_backward(const Tensor& root, const Tensor& seed_in, bool retain_graph) {
  Tape& t = tape();
  TensorImpl& r = *root.impl();
  if (!r.requires_grad) {
    throw StateError(fmt::format(
        "backward: the tensor {} does not require grad: none of the inputs of the ops that made it "
        "requires grad (call requires_grad_() on the parameters), or it was computed under NoGradGuard",
        r.shape.str()));
  }
  Tensor seed = seed_in;
  if (seed.defined()) {
    if (seed.shape() != r.shape || seed.dtype() != r.dtype) {
      throw ShapeError(fmt::format("backward: seed {} {} does not match the output {} {}", dtype_name(seed.dtype()),
                                   seed.shape().str(), dtype_name(r.dtype), r.shape.str()));
    }
  } else {
    if (r.shape.numel() != 1) {
      throw StateError(fmt::format(
          "backward: the output has shape {} ({} elements); backward() without a seed needs a scalar. "
          "Reduce it (sum, mean) or pass the seed gradient d(loss)/d(output) of shape {}",
          r.shape.str(), r.shape.numel(), r.shape.str()));
    }
    seed = Tensor::empty(r.shape, r.dtype);
    if (r.dtype == Dtype::f32) {
      *seed.data<float>() = 1.0f;
    } else {
      *seed.data<double>() = 1.0;
    }
  }

  if (r.node == kNoNode) {  // a leaf: d(leaf)/d(leaf) = seed
    accumulate_leaf(r.grad, copy_of(seed));
    return;
  }
  if (r.gen != t.gen || t.nodes[r.node].state != NodeState::pending) {
    throw StateError(fmt::format(
        "backward: the graph that produced this tensor (op '{}') was already freed by a previous backward(); "
        "pass retain_graph=true to the first backward() to walk a graph twice",
        r.op ? r.op : "?"));
  }
  if (t.in_backward) throw StateError("backward: called from inside another backward (not supported)");

  const std::uint32_t L = r.node;
  auto clear_marks = [&t, L] {
    for (std::uint32_t i = 0; i <= L; ++i) t.nodes[i].mark = false;
  };

  // Phase 1: mark what the root reaches, and refuse before touching anything if that
  // includes a node (or an input) from a freed graph.
  t.nodes[L].mark = true;
  for (std::uint32_t i = L + 1; i-- > 0;) {
    Node& n = t.nodes[i];
    if (!n.mark) continue;
    for (std::size_t j = 0; j < n.inputs.size(); ++j) {
      Edge& e = n.inputs[j];
      const char* freed_op = e.stale_op;
      if (e.node != kNoNode) {
        if (t.nodes[e.node].state != NodeState::pending) freed_op = t.nodes[e.node].name;
        t.nodes[e.node].mark = true;
      }
      if (freed_op) {
        clear_marks();
        throw StateError(fmt::format(
            "backward: '{}' (tape node #{}) uses a tensor produced by '{}' in a graph already freed by "
            "backward(); detach() the carried state for truncated BPTT, or pass retain_graph=true to the "
            "earlier backward()",
            n.name, i, freed_op));
      }
    }
  }

  // Phase 2: the reverse walk.
  NoGradGuard no_grad;  // backward functions call ops; those must not record
  t.in_backward = true;
  t.nodes[L].grad = seed;
  std::vector<Tensor> slots;
  std::unique_ptr<bool[]> needs;  // not vector<bool>: GradSlots wants a bool*
  std::size_t needs_cap = 0;
  std::vector<const Shape*> shapes;
  std::uint32_t i = L + 1;
  try {
    while (i-- > 0) {
      Node& n = t.nodes[i];
      if (!n.mark) continue;
      n.mark = false;
      if (n.grad.defined() && n.fn) {
        const std::size_t k = n.inputs.size();
        slots.assign(k, Tensor());
        if (k > needs_cap) {
          needs = std::make_unique<bool[]>(k);
          needs_cap = k;
        }
        shapes.assign(k, nullptr);
        for (std::size_t j = 0; j < k; ++j) {
          const Edge& e = n.inputs[j];
          needs[j] = e.needs();
          if (e.node != kNoNode) shapes[j] = &t.nodes[e.node].out_shape;
          if (e.leaf) shapes[j] = &e.leaf->shape;
        }
        GradSlots gs(slots.data(), needs.get(), shapes.data(), k);
        n.fn(n.grad, gs);
        for (std::size_t j = 0; j < k; ++j) {
          if (!needs[j] || !slots[j].defined()) continue;
          Edge& e = n.inputs[j];
          const Shape& want = e.node != kNoNode ? t.nodes[e.node].out_shape : e.leaf->shape;
          const Dtype want_dt = e.node != kNoNode ? t.nodes[e.node].out_dtype : e.leaf->dtype;
          if (slots[j].shape() != want || slots[j].dtype() != want_dt) {
            throw StateError(fmt::format(
                "backward of '{}' (tape node #{}): the gradient for input {} is {} {} but the input is {} {}",
                n.name, i, j, dtype_name(slots[j].dtype()), slots[j].shape().str(), dtype_name(want_dt),
                want.str()));
          }
          if (t_anomaly && !all_finite(slots[j])) {
            throw AnomalyError(fmt::format(
                "anomaly: the backward of '{}' (tape node #{}, output {} {}) produced NaN or Inf in the "
                "gradient for input {} {}",
                n.name, i, dtype_name(n.out_dtype), n.out_shape.str(), j, want.str()));
          }
          if (e.node != kNoNode) {
            accumulate_node(t.nodes[e.node], std::move(slots[j]));
          } else {
            accumulate_leaf(e.leaf->grad, std::move(slots[j]));
          }
        }
      }
      if (n.out && n.out->retain_grad && n.grad.defined()) accumulate_leaf(n.out->grad, copy_of(n.grad));
      if (retain_graph) {
        n.grad = Tensor();
      } else {
        slots.clear();
        // The inputs lose this reader. Normally the walk frees them too; if it stops
        // early (an exception), end_walk kills the ones nobody else holds.
        free_node(t, i, NodeState::freed, [&t](std::uint32_t k) { t.deferred.push_back(k); });
      }
    }
  } catch (...) {
    for (std::uint32_t j = 0; j <= i && j <= L; ++j) {
      t.nodes[j].mark = false;
      t.nodes[j].grad = Tensor();
    }
    end_walk(t);
    throw;
  }
  end_walk(t);
}

}  // namespace detail
}  // namespace xg
