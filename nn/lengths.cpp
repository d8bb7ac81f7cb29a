#include "detail/lengths.hpp"

#include <fmt/format.h>

#include "../autograd/factory.hpp"

namespace xg::nn::lengths_internal {

std::vector<std::int64_t> check_lengths(const char* op, const Tensor& lengths, std::int64_t B, std::int64_t T,
                                        std::int64_t min_length) {
  if (!lengths.defined()) {
    throw StateError(fmt::format("{}: lengths is undefined (default-constructed Tensor); pass an int64 [B] tensor", op));
  }
  if (lengths.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("{}: lengths must be int64 [B] = [{}], got {} {} (convert with .to(xg::i64))", op, B,
                                 dtype_name(lengths.dtype()), lengths.shape().str()));
  }
  if (lengths.shape() != Shape{B}) {
    throw ShapeError(fmt::format("{}: lengths {}: expected [B] = [{}], one length per sequence of the batch", op,
                                 lengths.shape().str(), B));
  }
  std::vector<std::int64_t> v = lengths.to_vector<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t n = v[static_cast<std::size_t>(b)];
    if (n < min_length || n > T) {
      throw IndexError(fmt::format("{}: lengths[{}] = {} is out of range: lengths {} must be in [{}, T = {}]{}", op, b,
                                   n, lengths.shape().str(), min_length, T,
                                   n == 0 && min_length > 0 ? " (a sequence with no keys has nothing to attend to)"
                                                            : ""));
    }
  }
  return v;
}

Tensor keep_mask(const std::vector<std::int64_t>& lengths, std::int64_t T) {
  const auto B = static_cast<std::int64_t>(lengths.size());
  Tensor m = zeros(Shape{B, T}, Dtype::i64);
  std::int64_t* p = m.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t t = 0; t < lengths[static_cast<std::size_t>(b)]; ++t) p[b * T + t] = 1;
  }
  return m;
}

}  // namespace xg::nn::lengths_internal
