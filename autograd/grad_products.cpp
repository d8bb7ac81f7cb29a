// Weight gradients of products, stacked per leaf and summed by one GEMM
// (detail/grad_products.hpp says why).
#include "detail/grad_products.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "../backend/detail/blas.hpp"
#include "detail/dispatch.hpp"
#include "factory.hpp"

namespace xg::detail {

namespace {

void check_pair(const Tensor& lhs, const Tensor& rhs) {
  if (lhs.ndim() != 2 || rhs.ndim() != 2 || lhs.shape()[0] != rhs.shape()[0] || lhs.dtype() != rhs.dtype()) {
    throw StateError(fmt::format("set_product: lhs {} {} and rhs {} {} must be 2-D [K, *] of one dtype",
                                 dtype_name(lhs.dtype()), lhs.shape().str(), dtype_name(rhs.dtype()),
                                 rhs.shape().str()));
  }
}

// c = aᵀ · b over the first `rows` rows of a [*, M] and b [*, N].
void product_into(const Tensor& a, const Tensor& b, std::int64_t rows, Tensor& c) {
  const std::int64_t M = a.shape()[1], N = b.shape()[1];
  dispatch_float("set_product", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gemm<T>(true, false, M, N, rows, T(1), a.data<T>(), M, b.data<T>(), N, T(0), c.data<T>(), N);
    return 0;
  });
}

// Copies t's rows to row `at` of the stack s, growing it (doubling, up to `limit` rows)
// when full. The caller keeps at + rows(t) <= limit.
void append_rows(Tensor& s, std::int64_t at, const Tensor& t, std::int64_t limit) {
  const std::int64_t n = t.shape()[0], w = t.shape()[1];
  const std::size_t esize = dtype_size(t.dtype());
  if (!s.defined() || at + n > s.shape()[0]) {
    const std::int64_t grown = s.defined() ? 2 * s.shape()[0] : 4 * n;
    const std::int64_t cap = std::max(at + n, std::min(grown, limit));
    Tensor bigger = Tensor::empty(Shape{cap, w}, t.dtype());
    if (at > 0) std::memcpy(bigger.data_ptr(), s.data_ptr(), static_cast<std::size_t>(at * w) * esize);
    s = std::move(bigger);
  }
  std::memcpy(static_cast<unsigned char*>(s.data_ptr()) + static_cast<std::size_t>(at * w) * esize, t.data_ptr(),
              static_cast<std::size_t>(n * w) * esize);
}

}  // namespace

Tensor product_now(const Tensor& lhs, const Tensor& rhs) {
  check_pair(lhs, rhs);
  Tensor c = Tensor::empty(Shape{lhs.shape()[1], rhs.shape()[1]}, lhs.dtype());
  product_into(lhs, rhs, lhs.shape()[0], c);
  return c;
}

Tensor ProductStacks::multiply(Stack& s) {
  Tensor c = Tensor::empty(Shape{s.lhs.shape()[1], s.rhs.shape()[1]}, s.lhs.dtype());
  product_into(s.lhs, s.rhs, s.rows, c);
  bytes_ -= s.rows * (s.lhs.shape()[1] + s.rhs.shape()[1]) * static_cast<std::int64_t>(dtype_size(s.lhs.dtype()));
  s.rows = 0;
  return c;
}

Tensor ProductStacks::add(const std::shared_ptr<TensorImpl>& leaf, const Tensor& lhs, const Tensor& rhs) {
  check_pair(lhs, rhs);
  const std::int64_t n = lhs.shape()[0];
  const std::int64_t row_bytes = (lhs.shape()[1] + rhs.shape()[1]) * static_cast<std::int64_t>(dtype_size(lhs.dtype()));
  const std::int64_t limit = std::max<std::int64_t>(1, kFlushBytes / std::max<std::int64_t>(1, row_bytes));
  auto it = std::find_if(stacks_.begin(), stacks_.end(), [&](const Stack& s) { return s.leaf == leaf; });
  // A product already as tall as half a stack gains nothing from stacking (its K is large)
  // and copying it would only add its size to the peak: it is multiplied at once.
  if (2 * n > limit) return product_now(lhs, rhs);
  if (it == stacks_.end()) {
    stacks_.push_back(Stack{leaf, Tensor(), Tensor(), 0, false});
    it = stacks_.end() - 1;
  }
  Stack& s = *it;
  Tensor full;
  const bool stack_full = s.rows + n > limit;
  const bool all_full = s.rows > 0 && bytes_ + n * row_bytes > kTotalBytes;
  if (stack_full || all_full) {  // multiplied out before these rows go in
    s.flushed = true;
    full = multiply(s);
    // All stacks together are full: this one also gives its room back, so that what the
    // stacks hold stays near kTotalBytes however many weights there are.
    if (!stack_full) s.lhs = s.rhs = Tensor();
  }
  append_rows(s.lhs, s.rows, lhs, limit);
  append_rows(s.rhs, s.rows, rhs, limit);
  s.rows += n;
  bytes_ += n * row_bytes;
  return full;
}

std::vector<std::pair<std::shared_ptr<TensorImpl>, Tensor>> ProductStacks::take_all() {
  std::vector<std::pair<std::shared_ptr<TensorImpl>, Tensor>> out;
  out.reserve(stacks_.size());
  // Every stack reached gives its product, an empty sum (K = 0) included: zeros, as the
  // product computed at once would be.
  for (Stack& s : stacks_) {
    if (s.rows > 0 || !s.flushed) out.emplace_back(s.leaf, multiply(s));
  }
  stacks_.clear();
  bytes_ = 0;
  return out;
}

}  // namespace xg::detail
