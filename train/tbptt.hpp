#pragma once
// Truncated backpropagation through time over one long token stream.
//
// The stream tokens (int64 [N], or [B, N] for B parallel streams) is cut into chunks of k
// positions: chunk c has inputs tokens[.., c*k : c*k + k] and targets the same positions
// shifted by one (tokens[.., c*k + 1 : c*k + k + 1]), so the N - 1 prediction positions
// make ceil((N - 1) / k) chunks, the last one possibly shorter. For each chunk:
//
//   auto [loss, next] = step_fn(inputs, targets, state);  // forward over the chunk
//   loss.backward();                                     // frees the chunk's graph
//   update_fn(loss);                                     // clip + optimizer step + zero_grad
//   state = next.detach();                               // the cut: no history crosses it
//
// Because each chunk's graph is freed by its backward and the carried state has no
// history, memory stays flat however long the stream is (xg::tape_size() is 0 between
// chunks). Without the detach, the next chunk's backward would reach into the freed graph
// of the previous one: the engine's StateError, which says to detach().
//
// update_fn is where the optimizer lives (a callback, so this header depends on no
// optimizer); it must leave the gradients zeroed for the next chunk, e.g.
//   [&](const Tensor&) { xg::optim::clip_grad_norm(params, 5.0); opt.step(); opt.zero_grad(); }
// State is anything with `State detach() const` (xg::nn::RNNState, LSTMState, or your own).
#include <concepts>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../autograd/tensor.hpp"

#include "namespace.hpp"

namespace xg::training {

// What can be carried between chunks: anything with `State detach() const`
// (nn::RNNState, nn::LSTMState, a plain Tensor, or a struct of your own).
template <class State>
concept Detachable = requires(const State& s) {
  { s.detach() } -> std::convertible_to<State>;
};

// One chunk of the stream: positions [begin, end) as inputs, [begin + 1, end + 1) as targets.
struct TBPTTChunk {
  Tensor inputs;   // int64 [len] or [B, len]
  Tensor targets;  // same shape
  std::int64_t begin = 0;
  std::int64_t end = 0;
};

// How many chunks `tokens` makes for window k: ceil((N - 1) / k). tokens not int64, not
// 1-D / 2-D, or shorter than 2 along the time dim; k < 1: Error naming train_tbptt and
// the shape.
std::int64_t tbptt_num_chunks(const Tensor& tokens, std::int64_t k);
// Chunk c (sliced when asked, so a long stream is never copied whole); c out of range:
// IndexError. Same checks as tbptt_num_chunks.
TBPTTChunk tbptt_chunk(const Tensor& tokens, std::int64_t k, std::int64_t c);
// Every chunk, in order (for inspection and tests).
std::vector<TBPTTChunk> tbptt_chunks(const Tensor& tokens, std::int64_t k);

// The model over one chunk: (inputs, targets, state) -> (loss, state after the chunk).
template <class State>
using TBPTTStepFn = std::function<std::pair<Tensor, State>(const Tensor& inputs, const Tensor& targets,
                                                           const State& state)>;
// Called after each chunk's backward: clip, optimizer step, zero_grad.
using TBPTTUpdateFn = std::function<void(const Tensor& loss)>;

template <class State>
struct TBPTTResult {
  std::vector<double> losses;  // loss.item() of every chunk, in order
  State state;                 // the (detached) state after the last chunk
};

// Runs the loop above over every chunk of `tokens`. step_fn must return a one-element loss
// (its backward needs no seed). Returns the per-chunk losses and the final state, to carry
// into the next epoch or a generation run.
template <Detachable State>
TBPTTResult<State> train_tbptt(
    const Tensor& tokens, std::int64_t k, State state,
    // type_identity: State is deduced from `state` alone, so lambdas convert here.
    const std::type_identity_t<TBPTTStepFn<State>>& step_fn, const TBPTTUpdateFn& update_fn) {
  TBPTTResult<State> result;
  const std::int64_t num_chunks = tbptt_num_chunks(tokens, k);
  result.losses.reserve(static_cast<std::size_t>(num_chunks));
  for (std::int64_t c = 0; c < num_chunks; ++c) {
    const TBPTTChunk chunk = tbptt_chunk(tokens, k, c);
    auto [loss, next] = step_fn(chunk.inputs, chunk.targets, state);
    loss.backward();
    if (update_fn) update_fn(loss);
    result.losses.push_back(loss.item());
    state = next.detach();
  }
  result.state = std::move(state);
  return result;
}

}  // namespace xg::training
