#pragma once
// Fused recurrent-cell ops: the gate math of one LSTM or GRU time step as ONE tape node
// each, with a hand-written backward. The matrix products (x·W_ihᵀ, h·W_hhᵀ) stay
// outside (xg::linear), so a sequence computes its input projections for all steps in
// one GEMM and each step costs one GEMM plus one of these kernels.
//
// Gate order and equations are PyTorch's, so weights move between the two unchanged.
#include <cstdint>
#include <vector>

#include "tensor.hpp"

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

// A whole LSTM layer (one direction) over a sequence as ONE tape node: the recurrence
// runs inside, forward and backward, so the engine sees one node per layer instead of
// several per step, and backward computes d W_hh as one GEMM over all steps
// ([4H, T*B] x [T*B, H]) instead of T small ones.
//   gx [T, B, 4H]: the input projections of every step with both biases,
//                  x_t·W_ihᵀ + b_ih + b_hh (one GEMM for the whole sequence, outside);
//   w_hh [4H, H]; h0, c0 [B, H] (undefined: zeros; give both or neither).
//   for each step t (T-1 down to 0 when reverse):
//     gates = gx[t] + h_prev·W_hhᵀ,  c_t, h_t = lstm_cell_fused(gates, c_prev)
// -> y [T, B, H] (h_t for every t, in time order), h_n [B, H] (h of the last processed
// step), c_n [B, H]. As with lstm_cell_fused the node's output is one packed tensor,
// `packed` [T+1, B, H] (rows 0..T-1 = y, row T = c_n); y and c_n are views of it (tiny
// nodes), h_n = select(y, 0, last). Backward saves the activated gates [T, B, 4H] and the
// cell states [T, B, H]. Under create_graph, backward runs the same kernel and records it as
// one node ("lstm_sequence_backward": the four gradients in one buffer, handed out as views)
// whose own backward is a fused kernel too: two more sweeps over the recurrence (a forward
// tangent and the backward's tangent), not the recurrence re-recorded op by op.
// Shapes: ShapeError naming the op and every shape; dtypes must all
// be f32 or all f64 (DtypeError); T = 0 is a ShapeError; B = 0 or H = 0 give empty results.
struct LSTMSequenceOut {
  Tensor y;       // [T, B, H]
  Tensor h_n;     // [B, H]
  Tensor c_n;     // [B, H]
  Tensor packed;  // [T+1, B, H]
};
LSTMSequenceOut lstm_sequence(const Tensor& gx, const Tensor& w_hh, const Tensor& h0 = Tensor(),
                              const Tensor& c0 = Tensor(), bool reverse = false);

namespace detail {
// How gx was made, when it is linear(x, w_ih, b) (reshaped), as nn::LSTM makes it. Given to
// lstm_sequence(_packed), the node keeps x, w_ih and b (linear's backward keeps them anyway)
// instead of gx for a create_graph backward, which recomputes gx from them: first order
// holds no T·B·4H input projection beyond what it always held.
struct GxProjection {
  Tensor x, w_ih, b;
};
LSTMSequenceOut lstm_sequence(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0, bool reverse,
                              const GxProjection* proj);
}  // namespace detail

// One GRU step (PyTorch's GRU, with the reset gate applied after the hidden product):
//   gi [B, 3H] = x·W_ihᵀ + b_ih,  gh [B, 3H] = h_prev·W_hhᵀ + b_hh  (order r, z, n),
//   h_prev [B, H].
//   r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n)
//   h = (1 - z) ⊙ n + z ⊙ h_prev
// -> h [B, H]. One node; backward saves r, z, n and reads gh_n and h_prev back from the
// inputs. Shapes as for lstm_cell_fused (gi and gh equal, columns divisible by 3).
Tensor gru_cell_fused(const Tensor& gi, const Tensor& gh, const Tensor& h_prev);

// The T steps of a layer's input projection x [T*B, G] (rows t*B .. t*B+B-1 are step t)
// as [B, G] views on x's storage (no copy), in processing order: views[k] is step
// t = k, or T-1-k when reverse. Backward gathers the steps' gradients in one [T*B, G]
// buffer that the view processed first (k = 0) hands to x, so it costs O(T) rather
// than a zero-padded gradient per step. Contract: whenever backward reaches any view it
// must also reach views[0] -- true of a recurrence, where every step depends on the one
// processed before it. (A view used on its own would give x no gradient: use narrow.)
// x must be 2-D with T > 0 dividing its rows (ShapeError).
std::vector<Tensor> step_views(const Tensor& x, std::int64_t T, bool reverse = false);

// ---- variable-length batches ----------------------------------------------------------
//
// A batch of sequences of different lengths runs in cuDNN's packed layout: sequences
// sorted by decreasing length, time-major, step t holding only the b_t sequences still
// running (rows 0 .. b_t-1 of the sorted batch). Padding is never stored nor computed on.

// The packed layout of one batch. Build it with packed_layout().
struct PackedLayout {
  std::int64_t T = 0, B = 0;
  std::int64_t steps = 0;                 // the longest length: b_t = 0 from t = steps on
  std::vector<std::int64_t> batch_sizes;  // [T]: b_t = how many lengths exceed t (non-increasing)
  std::vector<std::int64_t> offsets;      // [T+1]: first packed row of step t; offsets[T] = N
  std::vector<std::int64_t> order;        // [B]: the caller's batch row of sorted row i
  std::int64_t rows() const { return offsets.back(); }
  bool sorted() const;  // order is the identity
};

// lengths (each in [1, T], unchecked here: the modules check them with their names) ->
// the layout; the sort is stable, so equal lengths keep the caller's order.
PackedLayout packed_layout(const std::vector<std::int64_t>& lengths, std::int64_t T);

// x [T, B, F] ([B, T, F] with batch_first) -> packed [N, F]: row offsets[t] + i is step t of
// the caller's sequence order[i]. Backward scatters into zeros, so padding gets exactly 0.
Tensor pack_padded(const Tensor& x, const PackedLayout& p, bool batch_first = false);
// The inverse: packed [N, F] -> [T, B, F] ([B, T, F] with batch_first), zeros past each length.
Tensor pad_packed(const Tensor& packed, const PackedLayout& p, bool batch_first = false);

// lstm_sequence over a packed batch: step t updates rows [0, b_t) only (one GEMM of b_t
// rows), so the cost follows the real tokens.
//   gx [N, 4H] packed input projections with both biases; w_hh [4H, H];
//   h0, c0 [B, H] in sorted order (undefined: zeros; both or neither).
// The forward direction starts every sequence at t = 0 and stops it after its last step;
// reverse starts each at its own last step (t = length - 1, from h0 / c0) and ends at t = 0.
// -> y [N, H] packed, h_n / c_n [B, H] (sorted order): each sequence's state after its last
// processed step. packed [N + 2B, H] is the node's output (rows: y, h_n, c_n). Its
// create_graph backward is lstm_sequence's, per step over the running rows.
LSTMSequenceOut lstm_sequence_packed(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                     const PackedLayout& p, bool reverse = false);
namespace detail {
LSTMSequenceOut lstm_sequence_packed(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                     const PackedLayout& p, bool reverse, const GxProjection* proj);
}  // namespace detail

// step_views over a packed projection x [N, G]: p.steps views, views[k] the [b_t, G] block
// of step t = k (t = steps-1-k when reverse). Same backward contract as step_views.
std::vector<Tensor> packed_step_views(const Tensor& x, const PackedLayout& p, bool reverse = false);

}  // namespace xg
