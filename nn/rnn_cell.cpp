// The single-step cells RNNCell, LSTMCell and GRUCell: x·W_ihᵀ + h·W_hhᵀ by linear, the
// gates by the fused autograd ops (lstm_cell_fused, gru_cell_fused).
#include <cmath>

#include <fmt/format.h>

#include "../autograd/factory.hpp"
#include "../autograd/ops.hpp"
#include "../autograd/ops_rnn.hpp"
#include "detail/rnn_init.hpp"
#include "rnn.hpp"

namespace xg::nn {

using detail::add_to_range;
using detail::check_dtype;
using detail::check_size;
using detail::fill_uniform;

// ---------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------

namespace {

// The dims of a cell's input: batched or not, B. Throws for bad ranks / feature sizes.
bool check_cell_input(const char* name, const Tensor& x, std::int64_t input_size, Dtype params) {
  if (!x.defined()) throw StateError(fmt::format("{}: the input is undefined", name));
  check_dtype(name, "input", x, params);
  if (x.ndim() != 1 && x.ndim() != 2) {
    throw ShapeError(fmt::format("{}: input {}: expected [B, {}] or unbatched [{}]", name, x.shape().str(),
                                 input_size, input_size));
  }
  if (x.shape().back() != input_size) {
    throw ShapeError(fmt::format("{}: input {}: expected feature size {}", name, x.shape().str(), input_size));
  }
  return x.ndim() == 2;
}

// A cell state must be [B, H] for batched input, [H] for unbatched input.
void check_cell_state(const char* name, const char* what, const Tensor& s, const Tensor& x, bool batched,
                      std::int64_t hidden, Dtype params) {
  if (!s.defined()) return;
  check_dtype(name, what, s, params);
  const Shape want = batched ? Shape{x.shape()[0], hidden} : Shape{hidden};
  if (s.shape() == want) return;
  if (batched && s.ndim() == 2 && s.shape()[1] == hidden) {
    throw ShapeError(fmt::format("{}: batch sizes differ: input {} has {} rows but {} {} has {}", name,
                                 x.shape().str(), x.shape()[0], what, s.shape().str(), s.shape()[0]));
  }
  throw ShapeError(fmt::format("{}: {} {}: expected {} (input {}, hidden_size {})", name, what, s.shape().str(),
                               want.str(), x.shape().str(), hidden));
}

void init_cell(const char* name, std::int64_t input, std::int64_t hidden, double forget_bias, bool bias) {
  check_size(name, "input_size", input);
  check_size(name, "hidden_size", hidden);
  if (forget_bias != 0.0 && !bias) throw Error(fmt::format("{}: forget_bias needs bias = true", name));
}

// Registers weight_ih [G*H, I], weight_hh [G*H, H], bias_ih, bias_hh (PyTorch's order).
template <class Cell>
void register_cell(Cell& m, std::int64_t G, std::int64_t I, std::int64_t H, bool bias) {
  const Dtype dt = default_dtype();
  m.weight_ih = m.register_parameter("weight_ih", Tensor::empty(Shape{G * H, I}, dt));
  m.weight_hh = m.register_parameter("weight_hh", Tensor::empty(Shape{G * H, H}, dt));
  if (bias) {
    m.bias_ih = m.register_parameter("bias_ih", Tensor::empty(Shape{G * H}, dt));
    m.bias_hh = m.register_parameter("bias_hh", Tensor::empty(Shape{G * H}, dt));
  }
}

template <class Cell>
void reset_cell(Cell& m, std::int64_t H) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(H));
  for (Tensor* t : {&m.weight_ih, &m.weight_hh, &m.bias_ih, &m.bias_hh}) {
    if (t->defined()) fill_uniform(*t, bound);
  }
}

// x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh for batched x [B, I] and h [B, H] (undefined: zeros).
Tensor cell_preactivation(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                          const Tensor& b_ih, const Tensor& b_hh) {
  Tensor pre = linear(x, w_ih, b_ih);
  if (h.defined()) return add(pre, linear(h, w_hh, b_hh));
  return b_hh.defined() ? add(pre, b_hh) : pre;
}

}  // namespace

RNNCell::RNNCell(const RNNCellOptions& o) : options(o) {
  init_cell("RNNCell", o.input_size, o.hidden_size, 0.0, o.bias);
  register_cell(*this, 1, o.input_size, o.hidden_size, o.bias);
  reset_parameters();
}

RNNCell::RNNCell(std::int64_t input_size, std::int64_t hidden_size)
    : RNNCell(RNNCellOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

void RNNCell::reset_parameters() { reset_cell(*this, options.hidden_size); }

Tensor RNNCell::forward(const Tensor& x, const Tensor& h) const {
  const Dtype params = weight_ih.dtype();
  const bool batched = check_cell_input("RNNCell", x, options.input_size, params);
  check_cell_state("RNNCell", "h", h, x, batched, options.hidden_size, params);
  const Tensor xb = batched ? x : unsqueeze(x, 0);
  const Tensor hb = h.defined() && !batched ? unsqueeze(h, 0) : h;
  const Tensor pre = cell_preactivation(xb, hb, weight_ih, weight_hh, bias_ih, bias_hh);
  const Tensor y = options.nonlinearity == RNNNonlinearity::relu ? relu(pre) : tanh(pre);
  return batched ? y : squeeze(y, 0);
}

LSTMCell::LSTMCell(const LSTMCellOptions& o) : options(o) {
  init_cell("LSTMCell", o.input_size, o.hidden_size, o.forget_bias, o.bias);
  register_cell(*this, 4, o.input_size, o.hidden_size, o.bias);
  reset_parameters();
}

LSTMCell::LSTMCell(std::int64_t input_size, std::int64_t hidden_size)
    : LSTMCell(LSTMCellOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

void LSTMCell::reset_parameters() {
  reset_cell(*this, options.hidden_size);
  if (bias_ih.defined() && options.forget_bias != 0.0) {
    add_to_range(bias_ih, options.hidden_size, options.hidden_size, options.forget_bias);
  }
}

LSTMState LSTMCell::forward(const Tensor& x, const LSTMState& state) const {
  const Dtype params = weight_ih.dtype();
  const std::int64_t H = options.hidden_size;
  const bool batched = check_cell_input("LSTMCell", x, options.input_size, params);
  check_cell_state("LSTMCell", "h", state.h, x, batched, H, params);
  check_cell_state("LSTMCell", "c", state.c, x, batched, H, params);
  if (state.h.defined() != state.c.defined()) {
    throw ShapeError(fmt::format("LSTMCell: the state has {} but not {}: give both h and c, or neither (zeros)",
                                 state.h.defined() ? "h" : "c", state.h.defined() ? "c" : "h"));
  }
  const Tensor xb = batched ? x : unsqueeze(x, 0);
  const std::int64_t B = xb.shape()[0];
  const Tensor hb = state.h.defined() && !batched ? unsqueeze(state.h, 0) : state.h;
  const Tensor cb = !state.c.defined() ? zeros(Shape{B, H}, params) : batched ? state.c : unsqueeze(state.c, 0);
  const LSTMGatesOut o = lstm_cell_fused(cell_preactivation(xb, hb, weight_ih, weight_hh, bias_ih, bias_hh), cb);
  if (batched) return {o.h, o.c};
  return {squeeze(o.h, 0), squeeze(o.c, 0)};
}

GRUCell::GRUCell(const GRUCellOptions& o) : options(o) {
  init_cell("GRUCell", o.input_size, o.hidden_size, 0.0, o.bias);
  register_cell(*this, 3, o.input_size, o.hidden_size, o.bias);
  reset_parameters();
}

GRUCell::GRUCell(std::int64_t input_size, std::int64_t hidden_size)
    : GRUCell(GRUCellOptions{.input_size = input_size, .hidden_size = hidden_size}) {}

void GRUCell::reset_parameters() { reset_cell(*this, options.hidden_size); }

Tensor GRUCell::forward(const Tensor& x, const Tensor& h) const {
  const Dtype params = weight_ih.dtype();
  const std::int64_t H = options.hidden_size;
  const bool batched = check_cell_input("GRUCell", x, options.input_size, params);
  check_cell_state("GRUCell", "h", h, x, batched, H, params);
  const Tensor xb = batched ? x : unsqueeze(x, 0);
  const Tensor hb = !h.defined() ? zeros(Shape{xb.shape()[0], H}, params) : batched ? h : unsqueeze(h, 0);
  const Tensor y = gru_cell_fused(linear(xb, weight_ih, bias_ih), linear(hb, weight_hh, bias_hh), hb);
  return batched ? y : squeeze(y, 0);
}

}  // namespace xg::nn
