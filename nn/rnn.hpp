#pragma once
// Recurrent layers: the cells RNNCell, LSTMCell, GRUCell (one time step) and the
// sequence modules RNN, LSTM, GRU (num_layers, bidirectional, dropout between layers,
// batch_first, optional initial state). Parameter names, shapes, gate order, h_n layout
// and default initialisation are PyTorch's, so weights move between the two through .npz
// unchanged.
//
// Per layer l (suffix _l<l>, and _l<l>_reverse for the backward direction), with
// G = 1 (RNN), 4 (LSTM), 3 (GRU), I_0 = input_size, I_l = num_directions * H above:
//   weight_ih_l<l> [G*H, I_l], weight_hh_l<l> [G*H, H], bias_ih_l<l> [G*H], bias_hh_l<l> [G*H]
// registered in PyTorch's order (layer by layer; per layer forward then reverse; per
// direction w_ih, w_hh, b_ih, b_hh). All drawn from U(-1/sqrt(H), 1/sqrt(H)).
//
//   RNN:   h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu
//   LSTM:  i, f, g, o = σ, σ, tanh, σ of the four H-slices of W_ih x + b_ih + W_hh h + b_hh
//          c' = f ⊙ c + i ⊙ g,   h' = o ⊙ tanh(c')
//   GRU:   r = σ(W_ir x + b_ir + W_hr h + b_hr),   z = σ(W_iz x + b_iz + W_hz h + b_hz)
//          n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),   h' = (1 - z) ⊙ n + z ⊙ h
//
// How a sequence runs (the speed design): per layer and direction, the input projections
// of all T steps are ONE GEMM ([T*B, I] · W_ihᵀ, both biases folded in for RNN/LSTM).
// Each step is then one GEMM (h · W_hhᵀ), one add, and one fused gate kernel
// (xg::lstm_cell_fused / gru_cell_fused, a single tape node). The steps read their rows
// of the projection in place; in backward the per-step gradients are gathered into one
// buffer, so dx and dW_ih are again one GEMM each per layer.
// A plain LSTM layer (no layer_norm, no variational_dropout, introspection off) goes
// further: its whole recurrence is ONE tape node (xg::lstm_sequence), whose backward
// also computes dW_hh as one GEMM over all steps. Introspection keeps the per-step path
// (it needs each step's h in the graph); both paths give the same values and gradients.
//
// With lengths (forward's third argument) a batch runs packed: sorted by decreasing
// length, one input GEMM over the real tokens only, and each step on the rows of the
// sequences still running (xg::lstm_sequence_packed / packed_step_views), as cuDNN does.
//
// Truncated BPTT is one line: carry `state = result.state.detach()` into the next chunk.
// Carrying the state without detach() after a backward() is the engine's StateError.
#include <cstdint>
#include <string>
#include <vector>

#include "../autograd/tensor.hpp"
#include "module.hpp"

namespace xg::nn {

// ---- states and results ---------------------------------------------------------------

// RNN / GRU state: h [num_layers * num_directions, B, H] for the sequence modules.
struct RNNState {
  Tensor h;
  // The same values with no history: the cut between chunks of truncated BPTT.
  RNNState detach() const { return {h.defined() ? h.detach() : Tensor()}; }
};

// LSTM state: h and c, each [num_layers * num_directions, B, H] for LSTM, [B, H] for LSTMCell.
struct LSTMState {
  Tensor h;
  Tensor c;
  LSTMState detach() const { return {h.defined() ? h.detach() : Tensor(), c.defined() ? c.detach() : Tensor()}; }
};

// What RNN / GRU forward return: `auto [output, state] = gru(x);`
struct RNNResult {
  Tensor output;
  RNNState state;
};

// What LSTM forward returns: `auto [output, state] = lstm(x, state0);`
struct LSTMResult {
  Tensor output;
  LSTMState state;
};

// ---- introspection ------------------------------------------------------------------

// What set_record() keeps. Each part costs memory per step only when on.
struct RecordOptions {
  bool gates = true;       // gate activations
  bool states = true;      // h (and c) values
  bool grad_norms = true;  // keep each step's h in the graph with retain_grad()
};

// One time step of one layer and direction, recorded during forward.
struct StepRecord {
  // Activations [B, H] (B = 1 for unbatched input): LSTM i, f, g, o; GRU r, z, n; RNN none.
  std::vector<Tensor> gates;
  Tensor c;  // LSTM cell state [B, H]; undefined otherwise (detached copy)
  Tensor h;  // hidden state [B, H] (detached copy)
  // The graph's h of this step (retain_grad was set on it): after a backward through the
  // recorded forward, d loss / d h is h_graph.grad().
  Tensor h_graph;
  // ‖d loss / d h_t‖₂ (the total gradient reaching this step's hidden state, through the
  // output and through later steps). NaN until a backward has reached it.
  double grad_norm() const;
};

// Everything one forward recorded. steps[layer * num_directions + direction][t], with t in
// time order for both directions (the reverse direction visits them T-1 ... 0).
struct Introspection {
  std::int64_t num_layers = 0;
  std::int64_t num_directions = 0;
  std::vector<std::string> gate_names;  // {"i","f","g","o"}, {"r","z","n"} or {}
  std::vector<std::vector<StepRecord>> steps;

  bool empty() const { return steps.empty(); }
  std::int64_t seq_len() const { return steps.empty() ? 0 : static_cast<std::int64_t>(steps[0].size()); }
  // IndexError when out of range.
  const StepRecord& at(std::int64_t layer, std::int64_t t, std::int64_t direction = 0) const;
  // grad_norm() of every step of a layer / direction, in time order.
  std::vector<double> grad_norms(std::int64_t layer, std::int64_t direction = 0) const;
};

// ---- options ------------------------------------------------------------------------

enum class RNNNonlinearity { tanh, relu };

struct RNNOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 1;
  RNNNonlinearity nonlinearity = RNNNonlinearity::tanh;
  bool bias = true;
  bool batch_first = false;  // input / output [B, T, *] instead of [T, B, *] (not h0 / h_n)
  double dropout = 0.0;      // on the outputs of every layer but the last, in training mode
  bool bidirectional = false;
};

struct GRUOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 1;
  bool bias = true;
  bool batch_first = false;
  double dropout = 0.0;
  bool bidirectional = false;
};

struct LSTMOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 1;
  bool bias = true;
  bool batch_first = false;
  double dropout = 0.0;
  bool bidirectional = false;
  // Extras PyTorch lacks (DyNet has them). All off by default, so the defaults are PyTorch's.
  //
  // Added to the forget-gate slice [H, 2H) of every bias_ih at initialisation (Jozefowicz
  // et al. 2015 recommend 1): the cell starts out remembering. Needs bias = true.
  double forget_bias = 0.0;
  // Variational (Gal & Ghahramani) dropout probability, in [0, 1): in training mode one
  // mask per sequence and layer is drawn at the start of forward and applied at every step
  // to the layer input ([B, I_l], the same mask for all t and both directions) and to the
  // recurrent h before W_hh ([B, H] per direction). Kept values are scaled by 1/(1-p).
  // Drawn from default_generator(), per layer: the input mask, then the recurrent masks
  // (forward, reverse), each in row-major order. Identity in eval mode.
  double variational_dropout = 0.0;
  // Layer-normalised LSTM (Ba et al. 2016): per layer and direction
  //   gates = LN_ih(W_ih x) + LN_hh(W_hh h) + b_ih + b_hh,   h' = o ⊙ tanh(LN_c(c'))
  // with parameters ln_ih_weight_l<l> / ln_ih_bias_l<l> [4H], ln_hh_weight / ln_hh_bias
  // [4H], ln_c_weight / ln_c_bias [H] (init 1 and 0), registered after bias_hh of the same
  // layer and direction (with the same _reverse suffix). LN eps = 1e-5.
  bool layer_norm = false;
};

// One layer and direction's parameters (handles to the registered tensors).
struct RecurrentWeights {
  Tensor weight_ih, weight_hh;
  Tensor bias_ih, bias_hh;  // undefined when bias = false
  // Layer-normalised LSTM only.
  Tensor ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias;
};

// ---- the sequence modules ---------------------------------------------------------------

// What RNN, LSTM and GRU share: parameters, the layer / direction loop, validation and
// introspection. Use the three derived classes.
class RecurrentBase : public Module {
 public:
  enum class Mode { rnn_tanh, rnn_relu, lstm, gru };

  std::int64_t input_size() const { return cfg_.input_size; }
  std::int64_t hidden_size() const { return cfg_.hidden_size; }
  std::int64_t num_layers() const { return cfg_.num_layers; }
  std::int64_t num_directions() const { return cfg_.bidirectional ? 2 : 1; }
  Mode mode() const { return cfg_.mode; }

  // The parameters of one layer and direction (IndexError when out of range).
  const RecurrentWeights& weights(std::int64_t layer, bool reverse = false) const;

  // Redraws every parameter with the default initialisation (plus forget_bias / LN init).
  void reset_parameters();

  // Introspection, opt-in: while on, every forward replaces introspection() with its
  // per-step records (see StepRecord); off costs one branch per step. With grad_norms the
  // records hold the graph's h of every step, which keeps the last forward's graph alive
  // until a backward, the next recorded forward, or clear_record().
  void set_record(bool on, const RecordOptions& options = {});
  bool is_recording() const { return record_; }
  const Introspection& introspection() const { return intro_; }
  void clear_record() { intro_ = Introspection(); }

 protected:
  struct Config {
    const char* name = "";
    Mode mode = Mode::lstm;
    std::int64_t input_size = 0, hidden_size = 0, num_layers = 1;
    bool bias = true, batch_first = false, bidirectional = false;
    double dropout = 0.0;
    double forget_bias = 0.0, variational_dropout = 0.0;
    bool layer_norm = false;
  };
  explicit RecurrentBase(const Config& cfg);

  struct Output {
    Tensor output, h_n, c_n;
  };
  // x as documented on forward; h0 / c0 undefined = zeros (c0 only for LSTM); lengths
  // undefined = every sequence runs all T steps.
  Output run(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& lengths = Tensor()) const;

 private:
  struct Layout;
  Layout check_inputs(const Tensor& x, const Tensor& h0, const Tensor& c0) const;
  std::vector<std::int64_t> check_lengths(const Tensor& lengths, const Tensor& x, const Layout& lay) const;
  Output run_packed(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& lengths,
                    const Layout& lay) const;

  Config cfg_;
  std::vector<RecurrentWeights> weights_;  // [layer * num_directions + direction]
  bool record_ = false;
  RecordOptions record_opts_;
  mutable Introspection intro_;
};

// Elman RNN with tanh or relu.
class RNN : public RecurrentBase {
 public:
  explicit RNN(const RNNOptions& options);
  RNN(std::int64_t input_size, std::int64_t hidden_size);

  //   x [T, B, I]  ([B, T, I] with batch_first; unbatched [T, I])
  //   state.h [L*D, B, H] ([L*D, H] unbatched), or undefined for zeros
  // -> output [T, B, D*H] ([B, T, D*H] batch_first; [T, D*H] unbatched): the last layer's
  //    h at every step, both directions concatenated (forward first);
  //    state.h [L*D, B, H]: every layer's and direction's final h (the reverse direction's
  //    is its h after t = 0). L = num_layers, D = num_directions.
  // Wrong rank or feature size, T = 0, a state of the wrong shape or a batch that differs
  // from the input's: ShapeError naming the module and the shapes; dtype other than the
  // parameters': DtypeError.
  //
  // lengths (optional): int64 [B] ([1] unbatched), each in [1, T], in any order: sequence b
  // is x's first lengths[b] steps, the rest padding. As PyTorch's pack_padded_sequence
  // (enforce_sorted = false) then pad_packed_sequence: output is exactly zero past each
  // length (the output keeps T steps); state holds each sequence's state after its own last
  // step; the reverse direction starts at each sequence's last real element; padding gets
  // exactly zero gradient. No compute on padding: step t runs only the sequences still
  // going. Wrong rank or size (B read with batch_first as set): ShapeError; a length of 0 or
  // > T: ShapeError naming it; not int64: DtypeError. With record on, a step's records are
  // [B, H] in the caller's batch order, zeros for sequences that are over; h_graph holds the
  // running rows only, sorted by decreasing length; steps past the longest length have no
  // record (h undefined, grad_norm() NaN).
  RNNResult forward(const Tensor& x, const RNNState& state = {}, const Tensor& lengths = Tensor()) const;
  RNNResult operator()(const Tensor& x, const RNNState& state = {}, const Tensor& lengths = Tensor()) const {
    return forward(x, state, lengths);
  }

  RNNOptions options;
};

class LSTM : public RecurrentBase {
 public:
  explicit LSTM(const LSTMOptions& options);
  LSTM(std::int64_t input_size, std::int64_t hidden_size);

  // As RNN::forward (lengths too), with state {h, c}, each [L*D, B, H] ([L*D, H]
  // unbatched); give both or neither (zeros).
  LSTMResult forward(const Tensor& x, const LSTMState& state = {}, const Tensor& lengths = Tensor()) const;
  LSTMResult operator()(const Tensor& x, const LSTMState& state = {}, const Tensor& lengths = Tensor()) const {
    return forward(x, state, lengths);
  }

  LSTMOptions options;
};

class GRU : public RecurrentBase {
 public:
  explicit GRU(const GRUOptions& options);
  GRU(std::int64_t input_size, std::int64_t hidden_size);

  // As RNN::forward (lengths too).
  RNNResult forward(const Tensor& x, const RNNState& state = {}, const Tensor& lengths = Tensor()) const;
  RNNResult operator()(const Tensor& x, const RNNState& state = {}, const Tensor& lengths = Tensor()) const {
    return forward(x, state, lengths);
  }

  GRUOptions options;
};

// ---- cells --------------------------------------------------------------------------

struct RNNCellOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  bool bias = true;
  RNNNonlinearity nonlinearity = RNNNonlinearity::tanh;
};

struct LSTMCellOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  bool bias = true;
  double forget_bias = 0.0;  // added to bias_ih[H:2H] at initialisation (needs bias)
};

struct GRUCellOptions {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  bool bias = true;
};

// Parameters of a cell: weight_ih [G*H, I], weight_hh [G*H, H], bias_ih [G*H],
// bias_hh [G*H] (PyTorch's names), U(-1/sqrt(H), 1/sqrt(H)).
//
// Every cell's forward takes x [B, I] (or unbatched [I]) and a state of [B, H] tensors
// ([H] unbatched), undefined for zeros, and returns the new state. A wrong rank or
// feature size, or a state whose shape is not [B, H]: ShapeError naming the cell and the
// shapes; a dtype other than the parameters': DtypeError.
class RNNCell : public Module {
 public:
  explicit RNNCell(const RNNCellOptions& options);
  RNNCell(std::int64_t input_size, std::int64_t hidden_size);

  // h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh)
  Tensor forward(const Tensor& x, const Tensor& h = Tensor()) const;
  Tensor operator()(const Tensor& x, const Tensor& h = Tensor()) const { return forward(x, h); }
  void reset_parameters();

  RNNCellOptions options;
  Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};

class LSTMCell : public Module {
 public:
  explicit LSTMCell(const LSTMCellOptions& options);
  LSTMCell(std::int64_t input_size, std::int64_t hidden_size);

  // {h', c'} from the gates x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh (one fused gate node).
  LSTMState forward(const Tensor& x, const LSTMState& state = {}) const;
  LSTMState operator()(const Tensor& x, const LSTMState& state = {}) const { return forward(x, state); }
  void reset_parameters();

  LSTMCellOptions options;
  Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};

class GRUCell : public Module {
 public:
  explicit GRUCell(const GRUCellOptions& options);
  GRUCell(std::int64_t input_size, std::int64_t hidden_size);

  // h' (one fused gate node).
  Tensor forward(const Tensor& x, const Tensor& h = Tensor()) const;
  Tensor operator()(const Tensor& x, const Tensor& h = Tensor()) const { return forward(x, h); }
  void reset_parameters();

  GRUCellOptions options;
  Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};

}  // namespace xg::nn
