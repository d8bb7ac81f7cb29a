// RNN / LSTM / GRU cells and sequence modules. The hot loop is run_direction(): one
// GEMM for the input projections of a whole layer, then per step one GEMM, one add and
// one fused gate node; a plain LSTM layer (no layer norm, no variational dropout, not
// recording) runs its whole recurrence as one node instead (xg::lstm_sequence).
#include "rnn.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "../autograd/factory.hpp"
#include "../autograd/ops.hpp"
#include "../autograd/ops_norm.hpp"
#include "../autograd/ops_rnn.hpp"
#include "../autograd/random.hpp"
#include "../autograd/tape.hpp"
#include "detail/rnn_init.hpp"

namespace xg::nn {

using detail::add_to_range;
using detail::check_dtype;
using detail::check_size;
using detail::fill;
using detail::fill_uniform;
using detail::fill_value;

namespace {

using Mode = RecurrentBase::Mode;

constexpr double kLayerNormEps = 1e-5;

// 0 with probability p, else 1/(1-p): the variational dropout mask (a constant).
Tensor keep_mask(const Shape& s, double p, Dtype dt) {
  Tensor m = Tensor::empty(s, dt);
  Generator& gen = default_generator();
  const double scale = 1.0 / (1.0 - p);
  fill(m, [&](std::int64_t) { return gen.uniform() >= p ? scale : 0.0; });
  return m;
}

void check_probability(const char* name, const char* what, double p, bool allow_one) {
  if (!(p >= 0.0 && (allow_one ? p <= 1.0 : p < 1.0))) {
    throw Error(fmt::format("{}: {} must be in [0, 1{}, got {}", name, what, allow_one ? "]" : ")", p));
  }
}

// ---------------------------------------------------------------------------
// One direction of one layer
// ---------------------------------------------------------------------------

struct DirectionArgs {
  Mode mode;
  bool layer_norm;
  const RecurrentWeights* w;
  Tensor input;  // [T*B, I]
  std::int64_t T, B, H;
  bool reverse;
  Tensor h0, c0;  // [B, H] or undefined (zeros)
  Tensor h_mask;  // variational dropout on the recurrent h, [B, H] or undefined
  std::vector<StepRecord>* records;  // null unless recording
  const RecordOptions* record_options;
};

struct DirectionResult {
  std::vector<Tensor> hs;  // [B, H] per step, in time order (or empty when seq is set)
  Tensor seq;              // [T, B, H], every step's h in time order, when one op made them all
  Tensor h, c;             // after the last processed step
};

void record_step(const DirectionArgs& a, StepRecord& s, const Tensor& gates, const Tensor& gi, const Tensor& gh,
                 const Tensor& h, const Tensor& c) {
  const RecordOptions& o = *a.record_options;
  {
    NoGradGuard no_grad;
    const std::int64_t H = a.H;
    auto part = [H](const Tensor& t, std::int64_t k) { return narrow(t, 1, k * H, H); };
    if (o.gates && a.mode == Mode::lstm) {
      s.gates = {sigmoid(part(gates, 0)), sigmoid(part(gates, 1)), tanh(part(gates, 2)), sigmoid(part(gates, 3))};
    } else if (o.gates && a.mode == Mode::gru) {
      Tensor r = sigmoid(add(part(gi, 0), part(gh, 0)));
      s.gates = {r, sigmoid(add(part(gi, 1), part(gh, 1))), tanh(add(part(gi, 2), mul(r, part(gh, 2))))};
    }
    if (o.states) {
      s.h = h.detach().clone();
      if (c.defined()) s.c = c.detach().clone();
    }
  }
  if (o.grad_norms && h.requires_grad()) {
    s.h_graph = h;
    s.h_graph.retain_grad();
  }
}

// One step of one direction over `rows` running rows: x_t the step's input projection
// [rows, G*H], h and c the state (h undefined: zeros), h_mask [rows, H] or undefined.
struct StepOut {
  Tensor h, c, gates, gh;
};

StepOut cell_step(const DirectionArgs& a, const Tensor& x_t, const Tensor& h, const Tensor& c, const Tensor& h_mask,
                  std::int64_t rows) {
  const RecurrentWeights& w = *a.w;
  const std::int64_t H = a.H;
  const Dtype dt = x_t.dtype();
  const Tensor h_in = h.defined() && h_mask.defined() ? mul(h, h_mask) : h;
  StepOut s;
  if (a.mode == Mode::lstm) {
    s.gates = x_t;
    if (h_in.defined()) {
      Tensor hw = linear(h_in, w.weight_hh);
      if (a.layer_norm) hw = layer_norm(hw, Shape{4 * H}, w.ln_hh_weight, w.ln_hh_bias, kLayerNormEps);
      s.gates = add(x_t, hw);
    }
    LSTMGatesOut o = lstm_cell_fused(s.gates, c);
    s.c = o.c;
    if (a.layer_norm) {
      // h = o ⊙ tanh(LN_c(c)): the fused node's own h (o ⊙ tanh(c)) goes unused.
      s.h = mul(sigmoid(narrow(s.gates, 1, 3 * H, H)),
                tanh(layer_norm(s.c, Shape{H}, w.ln_c_weight, w.ln_c_bias, kLayerNormEps)));
    } else {
      s.h = o.h;
    }
  } else if (a.mode == Mode::gru) {
    if (h_in.defined()) {
      s.gh = linear(h_in, w.weight_hh, w.bias_hh);
    } else {
      s.gh = w.bias_hh.defined() ? broadcast_to(w.bias_hh, Shape{rows, 3 * H}) : zeros(Shape{rows, 3 * H}, dt);
    }
    s.h = gru_cell_fused(x_t, s.gh, h.defined() ? h : zeros(Shape{rows, H}, dt));
  } else {
    const Tensor pre = h_in.defined() ? add(x_t, linear(h_in, w.weight_hh)) : x_t;
    s.h = a.mode == Mode::rnn_relu ? relu(pre) : tanh(pre);
  }
  return s;
}

// The input projections of every step in one GEMM (dense [T*B] or packed [N] rows). RNN and
// LSTM fold b_hh in as well (it is added at every step); GRU cannot: b_hn sits inside
// r ⊙ (W_hn h + b_hn).
// proj (plain LSTM only): how the result was made, for lstm_sequence(_packed) to keep
// instead of the result itself.
Tensor input_projection(const DirectionArgs& a, xg::detail::GxProjection* proj = nullptr) {
  const RecurrentWeights& w = *a.w;
  const std::int64_t H = a.H;
  if (a.mode == Mode::lstm && a.layer_norm) {
    Tensor gi = layer_norm(linear(a.input, w.weight_ih), Shape{4 * H}, w.ln_ih_weight, w.ln_ih_bias, kLayerNormEps);
    return w.bias_ih.defined() ? add(gi, add(w.bias_ih, w.bias_hh)) : gi;
  }
  if (a.mode == Mode::gru) return linear(a.input, w.weight_ih, w.bias_ih);
  const Tensor b = w.bias_ih.defined() ? add(w.bias_ih, w.bias_hh) : Tensor();
  if (proj) *proj = xg::detail::GxProjection{a.input, w.weight_ih, b};
  return linear(a.input, w.weight_ih, b);
}

DirectionResult run_direction(const DirectionArgs& a) {
  const RecurrentWeights& w = *a.w;
  const std::int64_t T = a.T, B = a.B, H = a.H;
  const bool lstm = a.mode == Mode::lstm;
  const Dtype dt = a.input.dtype();

  xg::detail::GxProjection proj;
  Tensor gi_all = input_projection(a, &proj);
  DirectionResult r;
  if (lstm && !a.layer_norm && !a.h_mask.defined() && !a.records) {
    // The whole recurrence as one node: dW_hh becomes one GEMM over all steps in backward.
    const LSTMSequenceOut o =
        xg::detail::lstm_sequence(reshape(gi_all, Shape{T, B, 4 * H}), w.weight_hh, a.h0, a.c0, a.reverse, &proj);
    r.seq = o.y;
    r.h = o.h_n;
    r.c = o.c_n;
    return r;
  }
  const std::vector<Tensor> gi = step_views(gi_all, T, a.reverse);

  r.hs.resize(static_cast<std::size_t>(T));
  // An undefined h means zeros: the first step then skips h·W_hhᵀ. Layer norm of a zero
  // row is its bias, not zero, so the LN-LSTM starts from real zeros.
  Tensor h = a.h0, c = a.c0;
  if (lstm && !c.defined()) c = zeros(Shape{B, H}, dt);
  if (lstm && a.layer_norm && !h.defined()) h = zeros(Shape{B, H}, dt);

  for (std::int64_t k = 0; k < T; ++k) {
    const std::int64_t t = a.reverse ? T - 1 - k : k;
    const Tensor& x_t = gi[static_cast<std::size_t>(k)];
    StepOut s = cell_step(a, x_t, h, c, a.h_mask, B);
    h = s.h;
    c = s.c;
    r.hs[static_cast<std::size_t>(t)] = h;
    if (a.records) [[unlikely]] {
      record_step(a, (*a.records)[static_cast<std::size_t>(t)], s.gates, x_t, s.gh, h, lstm ? c : Tensor());
    }
  }
  r.h = h;
  r.c = c;
  return r;
}

// Pads a step's [b, H] rows (length-sorted) to [B, H] in the caller's batch order, zeros
// for the sequences that are over: what a record shows with lengths.
Tensor caller_rows(const Tensor& x, const PackedLayout& p) {
  if (!x.defined()) return x;
  const std::int64_t b = x.shape()[0], H = x.shape()[1];
  Tensor out = zeros(Shape{p.B, H}, x.dtype());
  const std::size_t row = static_cast<std::size_t>(H) * dtype_size(x.dtype());
  for (std::int64_t i = 0; i < b; ++i) {
    std::memcpy(static_cast<char*>(out.data_ptr()) + static_cast<std::size_t>(p.order[static_cast<std::size_t>(i)]) * row,
                static_cast<const char*>(x.data_ptr()) + static_cast<std::size_t>(i) * row, row);
  }
  return out;
}

// run_direction over a packed batch (lengths given): a.input is packed [N, I], a.h0 / a.c0 /
// a.h_mask are in sorted order [B, H]. Step t runs its b_t rows only. Returns seq = the
// packed output [N, H] and h, c [B, H] (sorted): every sequence's state after its last step.
DirectionResult run_direction_packed(const DirectionArgs& a, const PackedLayout& p) {
  const RecurrentWeights& w = *a.w;
  const std::int64_t B = a.B, H = a.H, S = p.steps;
  const bool lstm = a.mode == Mode::lstm;
  const Dtype dt = a.input.dtype();

  xg::detail::GxProjection proj;
  Tensor gi_all = input_projection(a, &proj);
  DirectionResult r;
  if (lstm && !a.layer_norm && !a.h_mask.defined() && !a.records) {
    const LSTMSequenceOut o = xg::detail::lstm_sequence_packed(gi_all, w.weight_hh, a.h0, a.c0, p, a.reverse, &proj);
    r.seq = o.y;
    r.h = o.h_n;
    r.c = o.c_n;
    return r;
  }
  const std::vector<Tensor> gi = packed_step_views(gi_all, p, a.reverse);
  std::vector<Tensor> hs(static_cast<std::size_t>(S));
  Tensor h_init = a.h0, c_init = a.c0;
  if (lstm && !c_init.defined()) c_init = zeros(Shape{B, H}, dt);
  if (lstm && a.layer_norm && !h_init.defined()) h_init = zeros(Shape{B, H}, dt);
  // The rows [lo, hi) of the initial state (undefined h stays undefined: zeros).
  auto init_rows = [&](const Tensor& s, std::int64_t lo, std::int64_t hi) {
    return !s.defined() ? Tensor() : lo == 0 && hi == B ? s : narrow(s, 0, lo, hi - lo);
  };
  // Forward: sequences end as t grows; their final rows are cut off the running state
  // (highest rows first) and concatenated back in row order at the end.
  std::vector<Tensor> h_done, c_done;
  Tensor h, c;
  std::int64_t b_prev = 0;
  for (std::int64_t k = 0; k < S; ++k) {
    const std::int64_t t = a.reverse ? S - 1 - k : k;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)];
    if (k == 0) {
      h = init_rows(h_init, 0, b);
      c = init_rows(c_init, 0, b);
    } else if (b < b_prev) {
      h_done.push_back(narrow(h, 0, b, b_prev - b));
      h = narrow(h, 0, 0, b);
      if (lstm) {
        c_done.push_back(narrow(c, 0, b, b_prev - b));
        c = narrow(c, 0, 0, b);
      }
    } else if (b > b_prev) {
      // Reverse: the sequences whose last element is t start here, from their h0 / c0.
      const Tensor h_new = h_init.defined() ? init_rows(h_init, b_prev, b) : zeros(Shape{b - b_prev, H}, dt);
      h = concat({h, h_new}, 0);
      if (lstm) c = concat({c, init_rows(c_init, b_prev, b)}, 0);
    }
    b_prev = b;
    const Tensor& x_t = gi[static_cast<std::size_t>(k)];
    const Tensor mask = !a.h_mask.defined() ? Tensor() : b == B ? a.h_mask : narrow(a.h_mask, 0, 0, b);
    StepOut s = cell_step(a, x_t, h, c, mask, b);
    h = s.h;
    if (lstm) c = s.c;
    hs[static_cast<std::size_t>(t)] = h;
    if (a.records) [[unlikely]] {
      StepRecord& rec = (*a.records)[static_cast<std::size_t>(t)];
      record_step(a, rec, s.gates, x_t, s.gh, h, lstm ? c : Tensor());
      NoGradGuard no_grad;
      for (Tensor& g : rec.gates) g = caller_rows(g, p);
      rec.h = caller_rows(rec.h, p);
      rec.c = caller_rows(rec.c, p);
    }
  }
  h_done.push_back(h);
  if (lstm) c_done.push_back(c);
  std::reverse(h_done.begin(), h_done.end());
  std::reverse(c_done.begin(), c_done.end());
  r.seq = S == 1 ? hs[0] : concat(hs, 0);
  r.h = h_done.size() == 1 ? h_done[0] : concat(h_done, 0);
  if (lstm) r.c = c_done.size() == 1 ? c_done[0] : concat(c_done, 0);
  return r;
}

int gate_count(Mode m) { return m == Mode::lstm ? 4 : m == Mode::gru ? 3 : 1; }

}  // namespace

// ---------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------

double StepRecord::grad_norm() const {
  if (!h_graph.defined()) return std::numeric_limits<double>::quiet_NaN();
  const Tensor g = h_graph.grad();
  if (!g.defined()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0.0;
  for (double v : g.to_vector<double>()) s += v * v;
  return std::sqrt(s);
}

const StepRecord& Introspection::at(std::int64_t layer, std::int64_t t, std::int64_t direction) const {
  if (layer < 0 || layer >= num_layers || direction < 0 || direction >= num_directions || t < 0 || t >= seq_len()) {
    throw IndexError(fmt::format(
        "Introspection::at: layer {}, t {}, direction {} is out of range ({} layers, {} directions, {} steps)", layer,
        t, direction, num_layers, num_directions, seq_len()));
  }
  return steps[static_cast<std::size_t>(layer * num_directions + direction)][static_cast<std::size_t>(t)];
}

std::vector<double> Introspection::grad_norms(std::int64_t layer, std::int64_t direction) const {
  std::vector<double> out;
  for (std::int64_t t = 0; t < seq_len(); ++t) out.push_back(at(layer, t, direction).grad_norm());
  return out;
}

// ---------------------------------------------------------------------------
// RecurrentBase
// ---------------------------------------------------------------------------

struct RecurrentBase::Layout {
  bool batched;
  std::int64_t T, B;
};

RecurrentBase::RecurrentBase(const Config& cfg) : cfg_(cfg) {
  const char* name = cfg.name;
  check_size(name, "input_size", cfg.input_size);
  check_size(name, "hidden_size", cfg.hidden_size);
  check_size(name, "num_layers", cfg.num_layers);
  check_probability(name, "dropout", cfg.dropout, true);
  check_probability(name, "variational_dropout", cfg.variational_dropout, false);
  if (cfg.forget_bias != 0.0 && !cfg.bias) throw Error(fmt::format("{}: forget_bias needs bias = true", name));
  const std::int64_t G = gate_count(cfg.mode), H = cfg.hidden_size, D = num_directions();
  const Dtype dt = default_dtype();
  for (std::int64_t l = 0; l < cfg.num_layers; ++l) {
    for (std::int64_t d = 0; d < D; ++d) {
      const std::string sfx = fmt::format("_l{}{}", l, d == 1 ? "_reverse" : "");
      const std::int64_t in = l == 0 ? cfg.input_size : H * D;
      RecurrentWeights w;
      w.weight_ih = register_parameter("weight_ih" + sfx, Tensor::empty(Shape{G * H, in}, dt));
      w.weight_hh = register_parameter("weight_hh" + sfx, Tensor::empty(Shape{G * H, H}, dt));
      if (cfg.bias) {
        w.bias_ih = register_parameter("bias_ih" + sfx, Tensor::empty(Shape{G * H}, dt));
        w.bias_hh = register_parameter("bias_hh" + sfx, Tensor::empty(Shape{G * H}, dt));
      }
      if (cfg.layer_norm) {
        w.ln_ih_weight = register_parameter("ln_ih_weight" + sfx, Tensor::empty(Shape{4 * H}, dt));
        w.ln_ih_bias = register_parameter("ln_ih_bias" + sfx, Tensor::empty(Shape{4 * H}, dt));
        w.ln_hh_weight = register_parameter("ln_hh_weight" + sfx, Tensor::empty(Shape{4 * H}, dt));
        w.ln_hh_bias = register_parameter("ln_hh_bias" + sfx, Tensor::empty(Shape{4 * H}, dt));
        w.ln_c_weight = register_parameter("ln_c_weight" + sfx, Tensor::empty(Shape{H}, dt));
        w.ln_c_bias = register_parameter("ln_c_bias" + sfx, Tensor::empty(Shape{H}, dt));
      }
      weights_.push_back(w);
    }
  }
  reset_parameters();
}

void RecurrentBase::reset_parameters() {
  const double bound = 1.0 / std::sqrt(static_cast<double>(cfg_.hidden_size));
  for (RecurrentWeights& w : weights_) {
    for (Tensor* t : {&w.weight_ih, &w.weight_hh, &w.bias_ih, &w.bias_hh}) {
      if (t->defined()) fill_uniform(*t, bound);
    }
    if (w.bias_ih.defined() && cfg_.forget_bias != 0.0) {
      add_to_range(w.bias_ih, cfg_.hidden_size, cfg_.hidden_size, cfg_.forget_bias);
    }
    if (cfg_.layer_norm) {
      for (Tensor* t : {&w.ln_ih_weight, &w.ln_hh_weight, &w.ln_c_weight}) fill_value(*t, 1.0);
      for (Tensor* t : {&w.ln_ih_bias, &w.ln_hh_bias, &w.ln_c_bias}) fill_value(*t, 0.0);
    }
  }
}

const RecurrentWeights& RecurrentBase::weights(std::int64_t layer, bool reverse) const {
  if (layer < 0 || layer >= cfg_.num_layers || (reverse && !cfg_.bidirectional)) {
    throw IndexError(fmt::format("{}: weights(layer {}, reverse {}): the module has {} layer(s){}", cfg_.name, layer,
                                 reverse, cfg_.num_layers, cfg_.bidirectional ? "" : " and one direction"));
  }
  return weights_[static_cast<std::size_t>(layer * num_directions() + (reverse ? 1 : 0))];
}

void RecurrentBase::set_record(bool on, const RecordOptions& options) {
  record_ = on;
  record_opts_ = options;
}

RecurrentBase::Layout RecurrentBase::check_inputs(const Tensor& x, const Tensor& h0, const Tensor& c0) const {
  const char* name = cfg_.name;
  if (!x.defined()) throw StateError(fmt::format("{}: the input is undefined", name));
  const Dtype params = weights_[0].weight_ih.dtype();
  check_dtype(name, "input", x, params);
  const Shape& xs = x.shape();
  if (xs.size() != 2 && xs.size() != 3) {
    throw ShapeError(fmt::format("{}: input {}: expected 3-D {} or unbatched 2-D [T, I]", name, xs.str(),
                                 cfg_.batch_first ? "[B, T, I] (batch_first)" : "[T, B, I]"));
  }
  Layout lay{};
  lay.batched = xs.size() == 3;
  lay.T = lay.batched && cfg_.batch_first ? xs[1] : xs[0];
  lay.B = !lay.batched ? 1 : cfg_.batch_first ? xs[0] : xs[1];
  if (xs.back() != cfg_.input_size) {
    throw ShapeError(fmt::format("{}: input {}: expected feature size {}", name, xs.str(), cfg_.input_size));
  }
  if (lay.T == 0) {
    throw ShapeError(fmt::format("{}: input {}: zero-length sequence (T = 0); a recurrent layer needs at least one "
                                 "time step",
                                 name, xs.str()));
  }
  const std::int64_t LD = cfg_.num_layers * num_directions(), H = cfg_.hidden_size;
  const Shape want = lay.batched ? Shape{LD, lay.B, H} : Shape{LD, H};
  auto check_state = [&](const char* what, const Tensor& s) {
    if (!s.defined()) return;
    check_dtype(name, what, s, params);
    const Shape& ss = s.shape();
    if (ss == want) return;
    if (lay.batched && ss.size() == 3 && ss[0] == LD && ss[2] == H) {
      throw ShapeError(fmt::format("{}: batch sizes differ: input {} has batch {} but {} {} has {}", name, xs.str(),
                                   lay.B, what, ss.str(), ss[1]));
    }
    throw ShapeError(fmt::format("{}: {} {}: expected {} (num_layers * num_directions, {}hidden_size) for input {}",
                                 name, what, ss.str(), want.str(), lay.batched ? "batch, " : "", xs.str()));
  };
  check_state("h0", h0);
  check_state("c0", c0);
  if (cfg_.mode == Mode::lstm && h0.defined() != c0.defined()) {
    throw ShapeError(fmt::format("{}: the initial state has {} but not {}: give both h and c {}, or neither (zeros)",
                                 name, h0.defined() ? "h" : "c", h0.defined() ? "c" : "h", want.str()));
  }
  return lay;
}

RecurrentBase::Output RecurrentBase::run(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                         const Tensor& lengths) const {
  const Layout lay = check_inputs(x, h0, c0);
  if (lengths.defined()) return run_packed(x, h0, c0, lengths, lay);
  const std::int64_t T = lay.T, B = lay.B, H = cfg_.hidden_size, D = num_directions(), L = cfg_.num_layers;
  const bool lstm = cfg_.mode == Mode::lstm;
  const Dtype dt = x.dtype();
  const bool training = is_training();
  const double vdrop = training ? cfg_.variational_dropout : 0.0;

  if (record_) {
    intro_ = Introspection();
    intro_.num_layers = L;
    intro_.num_directions = D;
    if (lstm) intro_.gate_names = {"i", "f", "g", "o"};
    if (cfg_.mode == Mode::gru) intro_.gate_names = {"r", "z", "n"};
    intro_.steps.assign(static_cast<std::size_t>(L * D), std::vector<StepRecord>(static_cast<std::size_t>(T)));
  }

  // Everything below runs time-major [T, B, *].
  const Tensor seq = !lay.batched ? unsqueeze(x, 1) : cfg_.batch_first ? transpose(x, 0, 1) : x;
  const Tensor h0b = h0.defined() && !lay.batched ? unsqueeze(h0, 1) : h0;
  const Tensor c0b = c0.defined() && !lay.batched ? unsqueeze(c0, 1) : c0;

  // Variational dropout: every mask of this sequence is drawn now (per layer: the input
  // mask, then one recurrent mask per direction) and reused at every step.
  std::vector<Tensor> input_masks, h_masks;
  if (vdrop > 0.0) {
    for (std::int64_t l = 0; l < L; ++l) {
      input_masks.push_back(keep_mask(Shape{B, l == 0 ? cfg_.input_size : D * H}, vdrop, dt));
      for (std::int64_t d = 0; d < D; ++d) h_masks.push_back(keep_mask(Shape{B, H}, vdrop, dt));
    }
  }

  std::vector<Tensor> h_n(static_cast<std::size_t>(L * D)), c_n(static_cast<std::size_t>(L * D));
  Tensor layer_in = seq;
  for (std::int64_t l = 0; l < L; ++l) {
    const std::int64_t in = layer_in.shape()[2];
    // [T, B, I] * [B, I]: the same mask rows at every step.
    if (vdrop > 0.0) layer_in = mul(layer_in, input_masks[static_cast<std::size_t>(l)]);
    const Tensor flat = reshape(layer_in, Shape{T * B, in});
    std::vector<Tensor> outs(static_cast<std::size_t>(D));
    for (std::int64_t d = 0; d < D; ++d) {
      const std::size_t idx = static_cast<std::size_t>(l * D + d);
      DirectionArgs a{cfg_.mode,
                      cfg_.layer_norm,
                      &weights_[idx],
                      flat,
                      T,
                      B,
                      H,
                      d == 1,
                      h0b.defined() ? select(h0b, 0, static_cast<std::int64_t>(idx)) : Tensor(),
                      c0b.defined() ? select(c0b, 0, static_cast<std::int64_t>(idx)) : Tensor(),
                      vdrop > 0.0 ? h_masks[idx] : Tensor(),
                      record_ ? &intro_.steps[idx] : nullptr,
                      &record_opts_};
      DirectionResult r = run_direction(a);
      outs[static_cast<std::size_t>(d)] = r.seq.defined() ? r.seq : stack(r.hs, 0);
      h_n[idx] = r.h;
      c_n[idx] = r.c;
    }
    Tensor out = D == 1 ? outs[0] : concat(outs, 2);
    if (l + 1 < L && training && cfg_.dropout > 0.0) out = dropout(out, cfg_.dropout, true);
    layer_in = out;
  }

  Output o;
  o.output = layer_in;
  o.h_n = stack(h_n, 0);
  if (lstm) o.c_n = stack(c_n, 0);
  if (!lay.batched) {
    o.output = squeeze(o.output, 1);
    o.h_n = squeeze(o.h_n, 1);
    if (lstm) o.c_n = squeeze(o.c_n, 1);
  } else if (cfg_.batch_first) {
    o.output = transpose(o.output, 0, 1);
  }
  return o;
}

// ---------------------------------------------------------------------------
// Variable-length batches (lengths)
// ---------------------------------------------------------------------------

std::vector<std::int64_t> RecurrentBase::check_lengths(const Tensor& lengths, const Tensor& x,
                                                        const Layout& lay) const {
  const char* name = cfg_.name;
  const Shape& xs = x.shape();
  const Shape& ls = lengths.shape();
  const char* read_as = !lay.batched ? "[T, I] (unbatched, B = 1)" : cfg_.batch_first ? "[B, T, I] (batch_first)"
                                                                                     : "[T, B, I]";
  if (lengths.dtype() != i64) {
    throw DtypeError(fmt::format("{}: lengths is {} {}: expected int64 [{}], one length per sequence (convert "
                                 "with .to(i64))",
                                 name, dtype_name(lengths.dtype()), ls.str(), lay.B));
  }
  if (ls.size() != 1 || ls[0] != lay.B) {
    std::string hint;
    if (lay.batched && ls.size() == 1 && ls[0] == lay.T && lay.T != lay.B) {
      hint = fmt::format(" (it has T = {} entries: is batch_first = {} right?)", lay.T, cfg_.batch_first);
    }
    throw ShapeError(fmt::format("{}: lengths {} for input {} read as {}: expected [{}], one length per sequence{}",
                                 name, ls.str(), xs.str(), read_as, lay.B, hint));
  }
  std::vector<std::int64_t> v = lengths.to_vector<std::int64_t>();
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 1 || v[i] > lay.T) {
      throw ShapeError(fmt::format("{}: lengths[{}] = {} for input {} read as {}: every length must be in [1, T = "
                                   "{}]{}",
                                   name, i, v[i], xs.str(), read_as, lay.T,
                                   v[i] < 1 ? " (drop empty sequences from the batch)" : ""));
    }
  }
  return v;
}

RecurrentBase::Output RecurrentBase::run_packed(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                const Tensor& lengths, const Layout& lay) const {
  const std::vector<std::int64_t> lens = check_lengths(lengths, x, lay);
  if (lay.B == 0) return run(x, h0, c0);  // no sequences: nothing to pack
  const std::int64_t T = lay.T, B = lay.B, H = cfg_.hidden_size, D = num_directions(), L = cfg_.num_layers;
  const bool lstm = cfg_.mode == Mode::lstm;
  const Dtype dt = x.dtype();
  const bool training = is_training();
  const double vdrop = training ? cfg_.variational_dropout : 0.0;
  const PackedLayout p = packed_layout(lens, T);
  const bool batch_first = lay.batched && cfg_.batch_first;

  if (record_) {
    intro_ = Introspection();
    intro_.num_layers = L;
    intro_.num_directions = D;
    if (lstm) intro_.gate_names = {"i", "f", "g", "o"};
    if (cfg_.mode == Mode::gru) intro_.gate_names = {"r", "z", "n"};
    intro_.steps.assign(static_cast<std::size_t>(L * D), std::vector<StepRecord>(static_cast<std::size_t>(T)));
  }

  // The recurrence runs on sequences sorted by decreasing length: the initial state is
  // put in that order here, and the final state put back in the caller's at the end.
  Tensor h0b = h0.defined() && !lay.batched ? unsqueeze(h0, 1) : h0;
  Tensor c0b = c0.defined() && !lay.batched ? unsqueeze(c0, 1) : c0;
  const bool sorted = p.sorted();
  const Tensor order = sorted ? Tensor() : from_vector(p.order);
  if (!sorted && h0b.defined()) h0b = index_select(h0b, 1, order);
  if (!sorted && c0b.defined()) c0b = index_select(c0b, 1, order);

  // Variational dropout: drawn as without lengths (caller's order); the input mask goes
  // to every packed row of its sequence, the recurrent masks into sorted order.
  std::vector<Tensor> input_masks, h_masks;
  Tensor row_seq;  // [N]: the caller's sequence of every packed row
  if (vdrop > 0.0) {
    std::vector<std::int64_t> rs;
    rs.reserve(static_cast<std::size_t>(p.rows()));
    for (std::int64_t t = 0; t < p.steps; ++t) {
      for (std::int64_t i = 0; i < p.batch_sizes[static_cast<std::size_t>(t)]; ++i) {
        rs.push_back(p.order[static_cast<std::size_t>(i)]);
      }
    }
    row_seq = from_vector(rs);
    for (std::int64_t l = 0; l < L; ++l) {
      input_masks.push_back(index_select(keep_mask(Shape{B, l == 0 ? cfg_.input_size : D * H}, vdrop, dt), 0, row_seq));
      for (std::int64_t d = 0; d < D; ++d) {
        const Tensor m = keep_mask(Shape{B, H}, vdrop, dt);
        h_masks.push_back(sorted ? m : index_select(m, 0, order));
      }
    }
  }

  std::vector<Tensor> h_n(static_cast<std::size_t>(L * D)), c_n(static_cast<std::size_t>(L * D));
  Tensor layer_in = pack_padded(lay.batched ? x : unsqueeze(x, 1), p, batch_first);  // [N, I]
  for (std::int64_t l = 0; l < L; ++l) {
    if (vdrop > 0.0) layer_in = mul(layer_in, input_masks[static_cast<std::size_t>(l)]);
    std::vector<Tensor> outs(static_cast<std::size_t>(D));
    for (std::int64_t d = 0; d < D; ++d) {
      const std::size_t idx = static_cast<std::size_t>(l * D + d);
      DirectionArgs a{cfg_.mode,
                      cfg_.layer_norm,
                      &weights_[idx],
                      layer_in,
                      T,
                      B,
                      H,
                      d == 1,
                      h0b.defined() ? select(h0b, 0, static_cast<std::int64_t>(idx)) : Tensor(),
                      c0b.defined() ? select(c0b, 0, static_cast<std::int64_t>(idx)) : Tensor(),
                      vdrop > 0.0 ? h_masks[idx] : Tensor(),
                      record_ ? &intro_.steps[idx] : nullptr,
                      &record_opts_};
      DirectionResult r = run_direction_packed(a, p);
      outs[static_cast<std::size_t>(d)] = r.seq;
      h_n[idx] = r.h;
      c_n[idx] = r.c;
    }
    Tensor out = D == 1 ? outs[0] : concat(outs, 1);  // [N, D*H]
    if (l + 1 < L && training && cfg_.dropout > 0.0) out = dropout(out, cfg_.dropout, true);
    layer_in = out;
  }

  Output o;
  o.output = pad_packed(layer_in, p, batch_first);
  o.h_n = stack(h_n, 0);
  if (lstm) o.c_n = stack(c_n, 0);
  if (!sorted) {
    std::vector<std::int64_t> inv(static_cast<std::size_t>(B));
    for (std::int64_t i = 0; i < B; ++i) inv[static_cast<std::size_t>(p.order[static_cast<std::size_t>(i)])] = i;
    const Tensor inverse = from_vector(inv);
    o.h_n = index_select(o.h_n, 1, inverse);
    if (lstm) o.c_n = index_select(o.c_n, 1, inverse);
  }
  if (!lay.batched) {
    o.output = squeeze(o.output, 1);
    o.h_n = squeeze(o.h_n, 1);
    if (lstm) o.c_n = squeeze(o.c_n, 1);
  }
  return o;
}

// ---------------------------------------------------------------------------
// RNN, LSTM, GRU
// ---------------------------------------------------------------------------

RNN::RNN(const RNNOptions& o)
    : RecurrentBase(Config{"RNN", o.nonlinearity == RNNNonlinearity::relu ? Mode::rnn_relu : Mode::rnn_tanh,
                           o.input_size, o.hidden_size, o.num_layers, o.bias, o.batch_first, o.bidirectional,
                           o.dropout, 0.0, 0.0, false}),
      options(o) {}

RNN::RNN(std::int64_t input_size, std::int64_t hidden_size)
    : RNN(RNNOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

RNNResult RNN::forward(const Tensor& x, const RNNState& state, const Tensor& lengths) const {
  Output o = run(x, state.h, Tensor(), lengths);
  return {o.output, {o.h_n}};
}

LSTM::LSTM(const LSTMOptions& o)
    : RecurrentBase(Config{"LSTM", Mode::lstm, o.input_size, o.hidden_size, o.num_layers, o.bias, o.batch_first,
                           o.bidirectional, o.dropout, o.forget_bias, o.variational_dropout, o.layer_norm}),
      options(o) {}

LSTM::LSTM(std::int64_t input_size, std::int64_t hidden_size)
    : LSTM(LSTMOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

LSTMResult LSTM::forward(const Tensor& x, const LSTMState& state, const Tensor& lengths) const {
  Output o = run(x, state.h, state.c, lengths);
  return {o.output, {o.h_n, o.c_n}};
}

GRU::GRU(const GRUOptions& o)
    : RecurrentBase(Config{"GRU", Mode::gru, o.input_size, o.hidden_size, o.num_layers, o.bias, o.batch_first,
                           o.bidirectional, o.dropout, 0.0, 0.0, false}),
      options(o) {}

GRU::GRU(std::int64_t input_size, std::int64_t hidden_size)
    : GRU(GRUOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

RNNResult GRU::forward(const Tensor& x, const RNNState& state, const Tensor& lengths) const {
  Output o = run(x, state.h, Tensor(), lengths);
  return {o.output, {o.h_n}};
}

}  // namespace xg::nn
