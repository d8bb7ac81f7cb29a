// Second derivatives against PyTorch (tests/fixtures/gen_hvp.py): Hessian-vector products
// Hv = d/dθ <∂L/∂θ, v> of an LSTM language model, MultiheadAttention with masks,
// cross_entropy with ignore_index and conv2d + max_pool2d, and the gradient of a gradient
// penalty d/dθ ||∂L/∂x||² through an LSTM; float64, within 1e-10 of the largest magnitude of
// each reference tensor. Every Hv is computed twice: by xg::grad with create_graph then
// xg::grad of <g, v>, and by xg::hvp. The LSTM cases run nn::LSTM's fused sequence op, its
// per-step cell path, and the same LSTM written from public ops.
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using xgtest::check_values;

namespace {

constexpr double kTol = 1e-10;

class Fixture {
 public:
  explicit Fixture(const std::string& name) : name_(name) {
    for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/hvp/" + name + ".npz")) f_[k] = v;
  }

  bool has(const std::string& key) const { return f_.count(key) == 1; }

  Tensor entry(const std::string& key) const {
    INFO(name_ << ": entry " << key);
    REQUIRE(has(key));
    return f_.at(key).detach().clone();
  }

  // A float64 leaf that L is differentiated by (an in.<name> entry of the wrt set).
  Tensor leaf(const std::string& key) const { return entry(key).requires_grad_(); }

  // Every param.<prefix>* entry into m (strict: the names must be exactly m's).
  void load(nn::Module& m, const std::string& prefix = "") const {
    nn::StateDict sd;
    const std::string head = "param." + prefix;
    for (const auto& [k, v] : f_) {
      if (k.rfind(head, 0) == 0) sd.emplace_back(k.substr(head.size()), v);
    }
    m.load_state_dict(sd);
  }

  // Within kTol * (largest magnitude of the reference) + kTol * |reference| elementwise. A
  // reference that is all zeros (the H v of a bias that enters L linearly) is held to the
  // largest magnitude among the file's entries of the same kind.
  void close(const Tensor& got, const std::string& key) const {
    INFO(name_ << ": " << key);
    REQUIRE(got.defined());
    CHECK(got.dtype() == f64);
    const Tensor& want = f_.at(key);
    REQUIRE(got.shape() == want.shape());
    double scale = max_abs(want);
    if (scale == 0.0) {
      const std::string kind = key.substr(0, key.find('.') + 1);
      for (const auto& [k, v] : f_) {
        if (k.rfind(kind, 0) == 0) scale = std::max(scale, max_abs(v));
      }
    }
    check_values(got, want.to_vector<double>(), kTol * scale, kTol);
  }

  // The names of the wrt set (the v.* entries, without "v.").
  std::set<std::string> wrt_names() const {
    std::set<std::string> s;
    for (const auto& [k, v] : f_) {
      if (k.rfind("v.", 0) == 0) s.insert(k.substr(2));
    }
    return s;
  }

  const std::string& name() const { return name_; }

 private:
  static double max_abs(const Tensor& t) {
    double m = 0.0;
    for (double v : t.to_vector<double>()) m = std::max(m, std::fabs(v));
    return m;
  }

  std::string name_;
  std::map<std::string, Tensor> f_;
};

// The tensors L is differentiated by, each with its fixture name (param.<n> or in.<n>).
struct Wrt {
  std::vector<std::string> names;
  std::vector<Tensor> tensors;

  void add(const std::string& name, const Tensor& t) {
    names.push_back(name);
    tensors.push_back(t);
  }
  void add_module(const nn::Module& m, const std::string& prefix = "") {
    for (const auto& [n, p] : m.named_parameters()) add("param." + prefix + n, p);
  }
};

// The set must be the file's exactly, or a tensor would silently go unchecked.
void require_same_set(const Fixture& f, const Wrt& w) {
  const std::set<std::string> mine(w.names.begin(), w.names.end());
  INFO(f.name() << ": the test differentiates by exactly the fixture's tensors");
  REQUIRE(mine.size() == w.names.size());
  REQUIRE(mine == f.wrt_names());
}

std::vector<Tensor> directions(const Fixture& f, const Wrt& w) {
  std::vector<Tensor> v;
  for (const std::string& n : w.names) v.push_back(f.entry("v." + n));
  return v;
}

// An input's H v may be undefined when L's gradient does not depend on anything (allow_unused).
Tensor or_zeros(const Tensor& t, const Tensor& like) { return t.defined() ? t : zeros_like(like); }

// L, ∂L/∂wrt and H v, by xg::grad twice and by xg::hvp, against the file.
void check_hvp(const Fixture& f, const Wrt& w, const std::function<Tensor()>& loss_fn) {
  require_same_set(f, w);
  const std::vector<Tensor> v = directions(f, w);
  {
    INFO("xg::grad(create_graph), then xg::grad of <g, v>");
    const Tensor loss = loss_fn();
    f.close(loss, "out.loss");
    const std::vector<Tensor> g = grad({loss}, w.tensors, {}, {.create_graph = true});
    REQUIRE(g.size() == w.tensors.size());
    Tensor dot;
    for (std::size_t i = 0; i < g.size(); ++i) {
      f.close(g[i], "grad." + w.names[i]);
      const Tensor d = sum(mul(g[i], v[i]));
      dot = dot.defined() ? add(dot, d) : d;
    }
    REQUIRE(dot.requires_grad());
    const std::vector<Tensor> hv = grad({dot}, w.tensors, {}, {.allow_unused = true});
    REQUIRE(hv.size() == w.tensors.size());
    for (std::size_t i = 0; i < hv.size(); ++i) f.close(or_zeros(hv[i], w.tensors[i]), "hvp." + w.names[i]);
  }
  {
    INFO("xg::hvp");
    const HvpResult r = hvp(loss_fn, w.tensors, v);
    f.close(r.value, "out.loss");
    REQUIRE(r.grad.size() == w.tensors.size());
    REQUIRE(r.hvp.size() == w.tensors.size());
    for (std::size_t i = 0; i < r.hvp.size(); ++i) {
      f.close(r.grad[i], "grad." + w.names[i]);
      f.close(or_zeros(r.hvp[i], w.tensors[i]), "hvp." + w.names[i]);
    }
  }
}

// A multi-layer LSTM from public ops with PyTorch's parameters and names (weight_ih_l<k>
// [4H, in], weight_hh_l<k> [4H, H], bias_ih_l<k>, bias_hh_l<k>; gates i, f, g, o): its second
// derivatives are those of matmul, sigmoid, tanh, mul, add, chunk and stack alone, which tells
// a wrong fused LSTM double backward apart from a wrong elementary one.
class OpsLSTM : public nn::Module {
 public:
  OpsLSTM(std::int64_t input, std::int64_t hidden, std::int64_t layers) : H_(hidden) {
    for (std::int64_t l = 0; l < layers; ++l) {
      const std::string s = std::to_string(l);
      const std::int64_t in = l == 0 ? input : hidden;
      w_ih_.push_back(register_parameter("weight_ih_l" + s, zeros({4 * hidden, in})));
      w_hh_.push_back(register_parameter("weight_hh_l" + s, zeros({4 * hidden, hidden})));
      b_ih_.push_back(register_parameter("bias_ih_l" + s, zeros({4 * hidden})));
      b_hh_.push_back(register_parameter("bias_hh_l" + s, zeros({4 * hidden})));
    }
  }

  // x [T, B, in], h0 / c0 [layers, B, H] or undefined (zeros) -> y [T, B, H].
  Tensor forward(const Tensor& x, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor()) const {
    const std::int64_t L = static_cast<std::int64_t>(w_ih_.size()), B = x.shape()[1];
    std::vector<Tensor> h, c;
    for (std::int64_t l = 0; l < L; ++l) {
      h.push_back(h0.defined() ? select(h0, 0, l) : zeros({B, H_}));
      c.push_back(c0.defined() ? select(c0, 0, l) : zeros({B, H_}));
    }
    std::vector<Tensor> ys;
    for (std::int64_t t = 0; t < x.shape()[0]; ++t) {
      Tensor inp = select(x, 0, t);
      for (std::size_t l = 0; l < w_ih_.size(); ++l) {
        const Tensor gates = add(add(matmul(inp, transpose(w_ih_[l], 0, 1)), b_ih_[l]),
                                 add(matmul(h[l], transpose(w_hh_[l], 0, 1)), b_hh_[l]));
        const std::vector<Tensor> g = chunk(gates, 4, 1);
        c[l] = add(mul(sigmoid(g[1]), c[l]), mul(sigmoid(g[0]), tanh(g[2])));
        h[l] = mul(sigmoid(g[3]), tanh(c[l]));
        inp = h[l];
      }
      ys.push_back(inp);
    }
    return stack(ys, 0);
  }

 private:
  std::int64_t H_;
  std::vector<Tensor> w_ih_, w_hh_, b_ih_, b_hh_;
};

// nn::LSTM over its fused sequence op, over its per-step cell op (what it runs while
// recording introspection), or OpsLSTM: the three ways an LSTM is built in xgrad.
enum class LstmPath { sequence, per_step, ops };

// The recurrent part of the fixtures' models (parameters under "rnn.").
struct Recurrent {
  std::shared_ptr<nn::LSTM> fused;
  std::shared_ptr<OpsLSTM> ops;

  Recurrent(LstmPath p, std::int64_t input, std::int64_t hidden, std::int64_t layers) {
    if (p == LstmPath::ops) {
      ops = std::make_shared<OpsLSTM>(input, hidden, layers);
    } else {
      fused = std::make_shared<nn::LSTM>(
          nn::LSTMOptions{.input_size = input, .hidden_size = hidden, .num_layers = layers});
      if (p == LstmPath::per_step) fused->set_record(true, nn::RecordOptions{false, false, false});
    }
  }
  nn::Module& module() { return ops ? static_cast<nn::Module&>(*ops) : *fused; }
  Tensor operator()(const Tensor& x, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor()) const {
    if (ops) return ops->forward(x, h0, c0);
    if (h0.defined()) return (*fused)(x, {h0, c0}).output;
    return (*fused)(x).output;
  }
};

}  // namespace

namespace {

// Embedding(7, 4) -> LSTM(4, 5, 2 layers) from h0 / c0 -> Linear(5, 7) -> cross_entropy (mean),
// T=4, B=3; H v over every parameter.
void lstm_lm_case(LstmPath p) {
  DefaultDtypeGuard dg(f64);
  const Fixture f("lstm_lm");
  nn::Embedding emb(7, 4);
  Recurrent rnn(p, 4, 5, 2);
  nn::Linear fc(5, 7);
  f.load(emb, "emb.");
  f.load(rnn.module(), "rnn.");
  f.load(fc, "fc.");
  const Tensor ids = f.entry("in.ids"), target = f.entry("in.target");
  const Tensor h0 = f.entry("in.h0"), c0 = f.entry("in.c0");
  Wrt w;
  w.add_module(emb, "emb.");
  w.add_module(rnn.module(), "rnn.");
  w.add_module(fc, "fc.");
  check_hvp(f, w, [&] {
    const Tensor out = rnn(emb(ids), h0, c0);                      // [4, 3, 5]
    return cross_entropy(fc(reshape(out, Shape{12, 5})), target);  // [12, 7] logits
  });
}

}  // namespace

// A test case per way of building the LSTM, so that one which throws does not hide the others.
TEST_CASE("PyTorch second derivatives: H v of a 2-layer LSTM language model, nn::LSTM's sequence op (hvp/lstm_lm.npz)") {
  lstm_lm_case(LstmPath::sequence);
}
TEST_CASE("PyTorch second derivatives: H v of a 2-layer LSTM language model, nn::LSTM's per-step op (hvp/lstm_lm.npz)") {
  lstm_lm_case(LstmPath::per_step);
}
TEST_CASE("PyTorch second derivatives: H v of a 2-layer LSTM language model, LSTM from ops (hvp/lstm_lm.npz)") {
  lstm_lm_case(LstmPath::ops);
}

namespace {
// H v over the module's parameters and q, k, v of sum(context * w_y) + sum(weights * w_a).
void check_mha_hvp(const Fixture& f, nn::MultiheadAttention& m, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& kpm, const Tensor& am, const Tensor& w_y, const Tensor& w_a) {
  Wrt w;
  w.add_module(m);
  w.add("in.query", q);
  w.add("in.key", k);
  w.add("in.value", v);
  check_hvp(f, w, [&] {
    const nn::AttentionOutput o = m(q, k, v, {.key_padding_mask = kpm, .attn_mask = am});
    return add(sum(mul(o.context, w_y)), sum(mul(o.weights, w_a)));
  });
}
}  // namespace

TEST_CASE("PyTorch second derivatives: H v of MultiheadAttention with a key_padding_mask and a bool attn_mask "
          "(hvp/mha_masks.npz)") {
  // MultiheadAttention(8, 2), query [3, 2, 8], key / value [4, 2, 8]; L = sum(y * w_y) +
  // sum(attn_weights * w_attn); H v over the parameters and query, key, value.
  DefaultDtypeGuard dg(f64);
  const Fixture f("mha_masks");
  nn::MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 8, .num_heads = 2});
  f.load(m);
  const Tensor q = f.leaf("in.query"), k = f.leaf("in.key"), v = f.leaf("in.value");
  // Stored as float 0/1; a float attn_mask would be added to the scores, so make it int64
  // (nonzero = may not attend, as PyTorch's bool mask).
  const Tensor kpm = f.entry("in.key_padding_mask").to(i64), am = f.entry("in.attn_mask").to(i64);
  const Tensor w_y = f.entry("in.w_y"), w_a = f.entry("in.w_attn_weights");
  check_mha_hvp(f, m, q, k, v, kpm, am, w_y, w_a);
}

TEST_CASE("PyTorch second derivatives: H v of batch_first MultiheadAttention with a key_padding_mask and a "
          "float [B*H, L, S] attn_mask (hvp/mha_float_mask.npz)") {
  DefaultDtypeGuard dg(f64);
  const Fixture f("mha_float_mask");
  nn::MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 8, .num_heads = 2, .batch_first = true});
  f.load(m);
  const Tensor q = f.leaf("in.query"), k = f.leaf("in.key"), v = f.leaf("in.value");
  const Tensor kpm = f.entry("in.key_padding_mask").to(i64), am = f.entry("in.attn_mask");  // am: added
  const Tensor w_y = f.entry("in.w_y"), w_a = f.entry("in.w_attn_weights");
  check_mha_hvp(f, m, q, k, v, kpm, am, w_y, w_a);
}

TEST_CASE("PyTorch second derivatives: H v of cross_entropy with ignore_index w.r.t. the logits "
          "(hvp/ce_ignore_mean.npz, hvp/ce_wls_ignore_sum.npz)") {
  DefaultDtypeGuard dg(f64);
  SUBCASE("mean, two targets ignore_index = -100") {
    const Fixture f("ce_ignore_mean");
    const Tensor logits = f.leaf("in.logits"), target = f.entry("in.target");
    Wrt w;
    w.add("in.logits", logits);
    check_hvp(f, w, [&] { return cross_entropy(logits, target, {.ignore_index = -100}); });
  }
  SUBCASE("sum, class weights (one 0), label_smoothing 0.2, ignore_index = 1 (a real class)") {
    const Fixture f("ce_wls_ignore_sum");
    const Tensor logits = f.leaf("in.logits"), target = f.entry("in.target");
    const Tensor weight = f.entry("in.weight");
    const double ls = f.entry("in.label_smoothing").item();
    const std::int64_t ignore = f.entry("in.ignore_index").to_vector<std::int64_t>().at(0);
    REQUIRE(ignore == 1);
    Wrt w;
    w.add("in.logits", logits);
    check_hvp(f, w, [&] {
      return cross_entropy(logits, target,
                           {.ignore_index = ignore, .reduction = Reduction::sum, .weight = weight, .label_smoothing = ls});
    });
  }
}

TEST_CASE("PyTorch second derivatives: H v of conv2d + max_pool2d (hvp/conv_pool.npz, hvp/conv_pool_overlap.npz)") {
  // y = max_pool2d(conv2d(x, weight, bias)), L = sum(y * w_y) + 0.5 sum(y * y); H v over
  // weight, bias and x (conv2d is bilinear in x and weight: the cross terms are its own).
  DefaultDtypeGuard dg(f64);
  struct Case {
    const char* file;
    Size2 stride, padding, pool_kernel, pool_stride;
  };
  const Case cases[] = {
      {"conv_pool", 1, 1, 2, 2},                      // x [2,3,6,6], 3x3 kernel, pool 2
      {"conv_pool_overlap", 2, Size2{1, 0}, 2, 1},   // x [2,3,7,6], 3x2 kernel, overlapping pool windows
  };
  for (const Case& c : cases) {
    INFO(std::string(c.file));
    const Fixture f(c.file);
    const Tensor x = f.leaf("in.x"), weight = f.leaf("param.conv.weight"), bias = f.leaf("param.conv.bias");
    const Tensor w_y = f.entry("in.w_y");
    Wrt w;
    w.add("param.conv.weight", weight);
    w.add("param.conv.bias", bias);
    w.add("in.x", x);
    check_hvp(f, w, [&] {
      const Tensor y = max_pool2d(conv2d(x, weight, bias, c.stride, c.padding), c.pool_kernel, c.pool_stride);
      return add(sum(mul(y, w_y)), mul(sum(mul(y, y)), 0.5));
    });
  }
}

namespace {

// x [4, 2, 3] -> LSTM(3, 4, 2 layers) -> Linear(4, 5) -> cross_entropy (mean) = L;
// P = ||∂L/∂x||²; ∂P/∂θ over every parameter and x. A fresh model and x in each SUBCASE
// (backward accumulates into .grad()).
struct PenaltyModel {
  Recurrent rnn;
  nn::Linear fc{4, 5};
  Tensor x, target;
  Wrt w;
  PenaltyModel(const Fixture& f, LstmPath p) : rnn(p, 3, 4, 2) {
    f.load(rnn.module(), "rnn.");
    f.load(fc, "fc.");
    x = f.leaf("in.x");
    target = f.entry("in.target");
    w.add_module(rnn.module(), "rnn.");
    w.add_module(fc, "fc.");
    w.add("in.x", x);
    require_same_set(f, w);
  }
  Tensor loss() const { return cross_entropy(fc(reshape(rnn(x), Shape{8, 4})), target); }
};

void penalty_case(LstmPath p) {
  DefaultDtypeGuard dg(f64);
  const Fixture f("lstm_gradient_penalty");
  SUBCASE("xg::grad(create_graph) for ∂L/∂x, xg::grad of the penalty") {
    const PenaltyModel m(f, p);
    const Tensor gx = grad({m.loss()}, {m.x}, {}, {.create_graph = true}).at(0);
    f.close(gx, "grad.in.x");
    const Tensor penalty = sum(mul(gx, gx));
    f.close(penalty, "out.penalty");
    const std::vector<Tensor> gp = grad({penalty}, m.w.tensors, {}, {.allow_unused = true});
    REQUIRE(gp.size() == m.w.tensors.size());
    for (std::size_t i = 0; i < gp.size(); ++i) f.close(or_zeros(gp[i], m.w.tensors[i]), "gp." + m.w.names[i]);
  }
  SUBCASE("backward(create_graph), then the penalty's backward: each .grad() is ∂L/∂θ + ∂P/∂θ") {
    const PenaltyModel m(f, p);
    m.loss().backward({.create_graph = true});
    const Tensor penalty = sum(mul(m.x.grad(), m.x.grad()));
    f.close(penalty, "out.penalty");
    penalty.backward();
    for (std::size_t i = 0; i < m.w.tensors.size(); ++i) {
      const std::string& n = m.w.names[i];
      INFO(n);
      const Tensor want = add(f.entry("grad." + n), f.entry("gp." + n));
      const Tensor got = m.w.tensors[i].grad();
      REQUIRE(got.defined());
      double scale = 0.0;
      for (double e : want.to_vector<double>()) scale = std::max(scale, std::fabs(e));
      check_values(got, want.to_vector<double>(), kTol * scale, kTol);
    }
    // A .grad() made with create_graph reaches its own leaf through its history: dropping it
    // breaks that cycle (PyTorch gives the same advice), or the model would never be freed.
    for (Tensor t : m.w.tensors) t.zero_grad();
  }
  SUBCASE("H v of L") {
    const PenaltyModel m(f, p);
    check_hvp(f, m.w, [&] { return m.loss(); });
  }
}

}  // namespace

TEST_CASE("PyTorch second derivatives: gradient penalty d/dθ ||∂L/∂x||² and H v, 2-layer nn::LSTM's sequence op "
          "(hvp/lstm_gradient_penalty.npz)") {
  penalty_case(LstmPath::sequence);
}
TEST_CASE("PyTorch second derivatives: gradient penalty d/dθ ||∂L/∂x||² and H v, 2-layer nn::LSTM's per-step op "
          "(hvp/lstm_gradient_penalty.npz)") {
  penalty_case(LstmPath::per_step);
}
TEST_CASE("PyTorch second derivatives: gradient penalty d/dθ ||∂L/∂x||² and H v, 2-layer LSTM from ops "
          "(hvp/lstm_gradient_penalty.npz)") {
  penalty_case(LstmPath::ops);
}

// ---------------------------------------------------------------------------------------
// Two engine faults the fixtures above ran into, each pinned by a case of its own.
// ---------------------------------------------------------------------------------------

namespace {

// y = x³ as a fused op: a constant value and a raw backward, composite_backward under
// create_graph, as the built-in fused ops (cross_entropy, the LSTM nodes) are written.
Tensor fused_cube(const Tensor& x) {
  const Tensor xd = x.detach();
  Tensor y = mul(xd, mul(xd, xd));
  if (needs_record({&x})) {
    record("fused_cube", y, {&x}, [sx = save(x, 0)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        composite_backward({sx.get()}, g, dx, [](const std::vector<Tensor>& in) { return mul(in[0], mul(in[0], in[0])); });
      } else {
        const Tensor& xv = sx.get();
        dx[0] = mul(mul(g, mul(xv, xv)), 3.0);  // d x³ = 3x² g
      }
    });
  }
  return y;
}

}  // namespace

TEST_CASE("create_graph: composite_backward over an input that has history (a fused op after another op)") {
  // Every fused op of a model sits on other ops' outputs: cross_entropy on a Linear's logits,
  // the LSTM on an embedding. L = Σ (a²)³: ∂L/∂a = 6a⁵, H v = 30a⁴ v.
  DefaultDtypeGuard dg(f64);
  const Tensor a = from_vector(std::vector<double>{-1.3, -0.4, 0.1, 0.7, 1.9}).requires_grad_();
  const Tensor v = from_vector(std::vector<double>{0.5, -1.0, 2.0, 0.25, -0.75});
  const std::vector<Tensor> g = grad({sum(fused_cube(mul(a, a)))}, {a}, {}, {.create_graph = true});
  const std::vector<Tensor> hv = grad({sum(mul(g[0], v))}, {a});
  const std::vector<double> av = a.to_vector<double>(), vv = v.to_vector<double>();
  std::vector<double> want_g, want_hv;
  for (std::size_t i = 0; i < av.size(); ++i) {
    want_g.push_back(6 * std::pow(av[i], 5));
    want_hv.push_back(30 * std::pow(av[i], 4) * vv[i]);
  }
  check_values(g[0], want_g, 1e-14, 1e-12);
  check_values(hv[0], want_hv, 1e-14, 1e-12);
}

TEST_CASE("create_graph: a node whose gradient is summed from many consumers (the sums record new nodes)") {
  // y = a² read by K ops: under create_graph each of the K - 1 sums into y's gradient is a
  // recorded add, which may move the tape's nodes (it outgrows its capacity) while the sum
  // reads y's gradient. L = Σ_k sum(c_k y), C = Σ_k c_k: ∂L/∂a = 2C a, H v = 2C v.
  // Each K on a thread of its own: a fresh tape, whose capacity doubles from nothing, so over
  // the K the moves fall on one of the sums (the fault read a moved-from node there: a crash,
  // or with AddressSanitizer a use after free).
  const std::vector<double> av{-0.9, 0.2, 1.1}, vv{1.0, -2.0, 0.5};
  for (int K = 2; K <= 200; ++K) {
    INFO("K = " << K);
    std::vector<double> got_g, got_hv;
    std::string error;
    double C = 0;
    std::thread worker([&] {
      try {
        DefaultDtypeGuard dg(f64);
        const Tensor a = from_vector(av).requires_grad_();
        const Tensor y = mul(a, a);
        Tensor loss;
        for (int k = 1; k <= K; ++k) {
          const Tensor term = sum(mul(y, 0.001 * k));
          C += 0.001 * k;
          loss = loss.defined() ? add(loss, term) : term;
        }
        const std::vector<Tensor> g = grad({loss}, {a}, {}, {.create_graph = true});
        const std::vector<Tensor> hv = grad({sum(mul(g[0], from_vector(vv)))}, {a});
        got_g = g[0].to_vector<double>();
        got_hv = hv[0].to_vector<double>();
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
    worker.join();
    REQUIRE(error.empty());
    REQUIRE(got_g.size() == av.size());
    REQUIRE(got_hv.size() == av.size());
    for (std::size_t i = 0; i < av.size(); ++i) {
      CHECK(std::fabs(got_g[i] - 2 * C * av[i]) <= 1e-12 * (1 + std::fabs(2 * C * av[i])));
      CHECK(std::fabs(got_hv[i] - 2 * C * vv[i]) <= 1e-12 * (1 + std::fabs(2 * C * vv[i])));
    }
  }
}
