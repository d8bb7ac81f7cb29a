#pragma once
// Fused recurrent-cell ops: the gate math of one LSTM or GRU time step as ONE tape node
// each, with a hand-written backward. The matrix products (x·W_ihᵀ, h·W_hhᵀ) stay
// outside (xg::linear), so a sequence computes its input projections for all steps in
// one GEMM and each step costs one GEMM plus one of these kernels.
//
// Gate order and equations are PyTorch's, so weights move between the two unchanged.
#include "xgrad/autograd/tensor.hpp"

namespace xg {

// The two results of one LSTM step. The tape has single-output nodes, so the fused node
// produces one packed tensor `hc` [2, B, H] (hc[0] = h, hc[1] = c), and h and c are
// views of its two halves: they share its storage (no copy) and each is a tiny node whose
// backward places its gradient into the matching half of hc's. Use h and c; hc is there
// for code that wants both in one tensor (it is the node the gradient flows through).
struct LSTMGatesOut {
  Tensor h;   // [B, H]
  Tensor c;   // [B, H]
  Tensor hc;  // [2, B, H]
};

// One LSTM step from its gate pre-activations.
//   gates [B, 4H] = x·W_ihᵀ + b_ih + h_prev·W_hhᵀ + b_hh, in PyTorch's order i, f, g, o;
//   c_prev [B, H].
//   i = σ(gates_i), f = σ(gates_f), g = tanh(gates_g), o = σ(gates_o)
//   c = f ⊙ c_prev + i ⊙ g,   h = o ⊙ tanh(c)
// Backward saves only the activated gates (not the pre-activations) and reads c back from
// the output; tanh(c) is recomputed. gates must be 2-D with a column count divisible by
// 4, c_prev [B, gates.cols / 4] (ShapeError naming both shapes otherwise); both f32 or
// both f64 (DtypeError). B = 0 or H = 0 gives empty results.
LSTMGatesOut lstm_cell_fused(const Tensor& gates, const Tensor& c_prev);

// One GRU step (PyTorch's GRU, with the reset gate applied after the hidden product):
//   gi [B, 3H] = x·W_ihᵀ + b_ih,  gh [B, 3H] = h_prev·W_hhᵀ + b_hh  (order r, z, n),
//   h_prev [B, H].
//   r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n)
//   h = (1 - z) ⊙ n + z ⊙ h_prev
// -> h [B, H]. One node; backward saves r, z, n and reads gh_n and h_prev back from the
// inputs. Shapes as for lstm_cell_fused (gi and gh equal, columns divisible by 3).
Tensor gru_cell_fused(const Tensor& gi, const Tensor& gh, const Tensor& h_prev);

}  // namespace xg
