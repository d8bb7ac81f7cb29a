#include "shape.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "../backend/error.hpp"

namespace xg {

namespace detail {
constinit thread_local AllocSite alloc_site{};
}  // namespace detail

namespace {
void check_rank(std::size_t n) {
  if (n > static_cast<std::size_t>(Shape::kMaxDims)) {
    throw ShapeError(fmt::format("Shape: {} dimensions; xgrad supports at most {}", n, Shape::kMaxDims));
  }
}
}  // namespace

Shape::Shape(std::initializer_list<std::int64_t> dims) : Shape(dims.begin(), dims.end()) {}
Shape::Shape(const std::vector<std::int64_t>& dims) : Shape(dims.data(), dims.data() + dims.size()) {}
Shape::Shape(const std::int64_t* first, const std::int64_t* last) {
  check_rank(static_cast<std::size_t>(last - first));
  n_ = static_cast<int>(last - first);
  for (int i = 0; i < n_; ++i) d_[i] = first[i];
}

void Shape::push_back(std::int64_t v) {
  check_rank(static_cast<std::size_t>(n_ + 1));
  d_[n_++] = v;
}

void Shape::insert(int pos, std::int64_t v) {
  check_rank(static_cast<std::size_t>(n_ + 1));
  for (int i = n_; i > pos; --i) d_[i] = d_[i - 1];
  d_[pos] = v;
  ++n_;
}

void Shape::erase(int pos) {
  for (int i = pos; i + 1 < n_; ++i) d_[i] = d_[i + 1];
  --n_;
}

void Shape::throw_numel_overflow() const {
  throw ShapeError(fmt::format("numel: shape {} has more elements than int64 can count", str()));
}

void throw_numel_error(std::string_view what, const Shape& s) {
  std::int64_t n = 1;
  for (std::int64_t d : s) {
    if (d < 0) throw ShapeError(fmt::format("{} {} has a negative dimension ({})", what, s.str(), d));
  }
  bool overflow = false;
  for (std::int64_t d : s) overflow = overflow || __builtin_mul_overflow(n, d, &n);
  if (overflow || n > kMaxNumel) {
    throw ShapeError(fmt::format("{} {} has more than 2^60 elements (xgrad's limit per tensor)", what, s.str()));
  }
  throw ShapeError(fmt::format("{} {} has no elements, but its nonzero dims multiply past 2^60 (xgrad's limit per "
                               "tensor, which holds for the strides of empty tensors too)",
                               what, s.str()));
}

std::string Shape::str() const { return fmt::format("[{}]", fmt::join(begin(), end(), ",")); }

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  if (a == b) return a;
  const int n = std::max(a.size(), b.size());
  Shape out;
  for (int i = 0; i < n; ++i) {
    const int ia = i - (n - a.size());
    const int ib = i - (n - b.size());
    const std::int64_t da = ia >= 0 ? a[ia] : 1;
    const std::int64_t db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) {
      throw ShapeError(fmt::format("{}: shapes {} and {} do not broadcast (dim {}: {} vs {})", op, a.str(),
                                   b.str(), i, da, db));
    }
    out.push_back(da == 1 ? db : da);
  }
  if (!numel_fits(op, out)) throw_numel_error(fmt::format("{}: {} and {} broadcast to", op, a.str(), b.str()), out);
  return out;
}

int wrap_dim(const char* op, int dim, int ndim) {
  const int lo = ndim == 0 ? -1 : -ndim;
  const int hi = ndim == 0 ? 0 : ndim - 1;
  if (dim < lo || dim > hi) {
    throw IndexError(fmt::format("{}: dim {} out of range for a {}-d tensor (expected {}..{})", op, dim, ndim, lo, hi));
  }
  return dim < 0 ? dim + std::max(ndim, 1) : dim;
}

}  // namespace xg
