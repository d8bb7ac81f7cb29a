#pragma once
// The composite forms of the fused ops: the same function written with recorded public
// ops only. A fused op's backward runs its composite under create_graph (through
// composite_backward), so the gradient it returns is itself differentiable; the first-order
// backward stays the fused kernel. Each composite returns exactly the fused node's output
// tensor (same shape and layout: the packed [T+1, B, H] of lstm_sequence, for one), so the
// gradient the engine hands the node seeds it unchanged. Not installed: the tests read it.
#include <cstdint>

#include "../ops.hpp"
#include "../ops_conv.hpp"
#include "../ops_rnn.hpp"
#include "../shape.hpp"
#include "../tensor.hpp"

namespace xg::detail {

// lstm_cell_fused's node output hc [2, B, H] (hc[0] = h, hc[1] = c).
Tensor lstm_cell_composite(const Tensor& gates, const Tensor& c_prev);
// lstm_sequence's node output [T+1, B, H] (rows 0..T-1 = y, row T = c_n); c0 defined.
Tensor lstm_sequence_composite(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0, bool reverse);
// lstm_sequence_packed's node output [N + 2B, H] (rows: y, h_n, c_n); c0 defined.
Tensor lstm_packed_composite(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                             const PackedLayout& p, bool reverse);
// gru_cell_fused's output h [B, H].
Tensor gru_cell_composite(const Tensor& gi, const Tensor& gh, const Tensor& h_prev);
// additive_scores' output [B, L].
Tensor additive_scores_composite(const Tensor& keys_proj, const Tensor& query_proj, const Tensor& v);
// layer_norm's output.
Tensor layer_norm_composite(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                            double eps);
// cross_entropy's output (ignored rows give exactly 0, as in the fused op).
Tensor cross_entropy_composite(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts);
// The receptive fields of conv2d: x [B, C, H, W] -> cols [B, C·kh·kw, Ho·Wo], one recorded node
// whose backward is conv_fold (and conv_fold's is conv_unfold: a pair of adjoint linear maps).
Tensor conv_unfold(const Tensor& x, std::int64_t kh, std::int64_t kw, Size2 stride, Size2 padding);
Tensor conv_fold(const Tensor& cols, const Shape& x_shape, std::int64_t kh, std::int64_t kw, Size2 stride,
                 Size2 padding);
// conv2d's output from conv_unfold and a matrix product.
Tensor conv2d_composite(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding);

}  // namespace xg::detail
