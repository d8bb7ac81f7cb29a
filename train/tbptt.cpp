#include "tbptt.hpp"

#include <algorithm>

#include <fmt/core.h>

#include "../autograd/ops.hpp"

namespace xg::training {

std::int64_t tbptt_num_chunks(const Tensor& tokens, std::int64_t k) {
  if (!tokens.defined()) throw StateError("train_tbptt: tokens is an undefined tensor");
  if (tokens.dtype() != i64)
    throw DtypeError(fmt::format("train_tbptt: tokens {} must be int64 token ids", tokens.shape().str()));
  if (tokens.ndim() != 1 && tokens.ndim() != 2)
    throw ShapeError(fmt::format("train_tbptt: tokens {} must be [N] or [B, N]", tokens.shape().str()));
  if (k < 1) throw Error(fmt::format("train_tbptt: window k must be >= 1, got {}", k));
  const std::int64_t n = tokens.size(-1);
  if (n < 2)
    throw ShapeError(fmt::format("train_tbptt: tokens {}: need at least 2 time steps (an input and its target)",
                                 tokens.shape().str()));
  return (n - 1 + k - 1) / k;
}

TBPTTChunk tbptt_chunk(const Tensor& tokens, std::int64_t k, std::int64_t c) {
  const std::int64_t num_chunks = tbptt_num_chunks(tokens, k);
  if (c < 0 || c >= num_chunks)
    throw IndexError(fmt::format("train_tbptt: chunk {} out of range: tokens {} with k = {} make {} chunks", c,
                                 tokens.shape().str(), k, num_chunks));
  const int dim = tokens.ndim() - 1;
  const std::int64_t b = c * k;
  const std::int64_t e = std::min(b + k, tokens.size(dim) - 1);
  return {slice(tokens, dim, b, e), slice(tokens, dim, b + 1, e + 1), b, e};
}

std::vector<TBPTTChunk> tbptt_chunks(const Tensor& tokens, std::int64_t k) {
  const std::int64_t num_chunks = tbptt_num_chunks(tokens, k);
  std::vector<TBPTTChunk> chunks;
  chunks.reserve(static_cast<std::size_t>(num_chunks));
  for (std::int64_t c = 0; c < num_chunks; ++c) chunks.push_back(tbptt_chunk(tokens, k, c));
  return chunks;
}

}  // namespace xg::training
