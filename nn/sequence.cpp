#include "sequence.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../autograd/factory.hpp"
#include "../autograd/ops.hpp"

namespace xg::nn::utils {

namespace {

Tensor mask_from(const std::int64_t* len, std::int64_t B, std::int64_t max_len, const std::string& shape) {
  constexpr const char* op = "lengths_to_mask";
  std::int64_t T = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    if (len[b] < 0) {
      throw ShapeError(fmt::format("{}: lengths {}: entry {} is {}; a length must be >= 0", op, shape, b, len[b]));
    }
    if (max_len >= 0 && len[b] > max_len) {
      throw ShapeError(fmt::format("{}: lengths {}: entry {} is {}, above max_len = {} (raise max_len, or pass -1 "
                                   "for the longest length)",
                                   op, shape, b, len[b], max_len));
    }
    T = std::max(T, len[b]);
  }
  if (max_len >= 0) T = max_len;
  Tensor m = Tensor::empty(Shape{B, T}, Dtype::b8);
  bool* p = m.data<bool>();
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t t = 0; t < T; ++t) p[b * T + t] = t < len[b];
  }
  return m;
}

}  // namespace

Tensor lengths_to_mask(const Tensor& lengths, std::int64_t max_len) {
  constexpr const char* op = "lengths_to_mask";
  if (!lengths.defined()) throw StateError(fmt::format("{}: lengths is undefined (default-constructed Tensor)", op));
  if (lengths.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("{}: lengths must be int64, got {} {} (convert with .to(xg::i64))", op,
                                 dtype_name(lengths.dtype()), lengths.shape().str()));
  }
  if (lengths.ndim() != 1) {
    throw ShapeError(fmt::format("{}: lengths {} must be 1-D [B]", op, lengths.shape().str()));
  }
  return mask_from(std::as_const(lengths).data<std::int64_t>(), lengths.numel(), max_len, lengths.shape().str());
}

Tensor lengths_to_mask(const std::vector<std::int64_t>& lengths, std::int64_t max_len) {
  const auto B = static_cast<std::int64_t>(lengths.size());
  return mask_from(lengths.data(), B, max_len, Shape{B}.str());
}

Tensor pad_sequence(const std::vector<Tensor>& seqs, bool batch_first, double padding_value) {
  constexpr const char* op = "pad_sequence";
  if (seqs.empty()) throw ShapeError(fmt::format("{}: expected at least one sequence, got an empty list", op));
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    if (!seqs[i].defined()) {
      throw StateError(fmt::format("{}: sequence {} is undefined (default-constructed Tensor)", op, i));
    }
    if (seqs[i].ndim() == 0) {
      throw ShapeError(fmt::format("{}: sequence {} is 0-d; each sequence must be [L, *]", op, i));
    }
  }
  const Shape& s0 = seqs[0].shape();
  std::int64_t T = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Shape& si = seqs[i].shape();
    bool same = si.size() == s0.size();
    for (int d = 1; same && d < si.size(); ++d) same = si[d] == s0[d];
    if (!same) {
      throw ShapeError(fmt::format("{}: sequence {} is {} but sequence 0 is {}: every sequence must be [L_i, *] with "
                                   "the same * (only the first dim may differ)",
                                   op, i, si.str(), s0.str()));
    }
    if (seqs[i].dtype() != seqs[0].dtype()) {
      throw DtypeError(fmt::format("{}: sequence {} is {} {} but sequence 0 is {} {}: convert with .to()", op, i,
                                   dtype_name(seqs[i].dtype()), si.str(), dtype_name(seqs[0].dtype()), s0.str()));
    }
    T = std::max(T, si[0]);
  }
  // Each sequence padded to [T, *] by concat (backward: its rows of the gradient), then
  // stacked: both record, so the result is differentiable for any mix of sequences that
  // require grad.
  std::vector<Tensor> rows;
  rows.reserve(seqs.size());
  for (const Tensor& x : seqs) {
    const std::int64_t L = x.shape()[0];
    if (L == T) {
      rows.push_back(x);
      continue;
    }
    Shape ps = x.shape();
    ps[0] = T - L;
    rows.push_back(concat({x, full(ps, padding_value, x.dtype())}, 0));
  }
  return stack(rows, batch_first ? 0 : 1);
}

}  // namespace xg::nn::utils
