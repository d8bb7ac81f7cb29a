// Integer indexing: index_select, gather and the embedding lookup.
// Every index is validated before anything is written, so a bad token id throws
// instead of reading outside the tensor. Backwards scatter-add: repeated indices sum.
#include <algorithm>
#include <array>
#include <optional>

#include <fmt/format.h>

#include "detail/dispatch.hpp"
#include "detail/tensor_impl.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_any;
using detail::prod;

namespace {

void check_index_dtype(const char* op, const Tensor& index) {
  detail::check_defined(op, index);
  if (index.dtype() != Dtype::i64) {
    throw DtypeError(fmt::format("{}: the index must be int64, got {} {}", op, dtype_name(index.dtype()),
                                 index.shape().str()));
  }
}

// Every index in [0, n); names the first bad one.
void check_range(const char* op, const Tensor& index, std::int64_t n, int dim, const Shape& xs) {
  const std::int64_t* ip = index.data<std::int64_t>();
  const std::int64_t k = index.numel();
  for (std::int64_t j = 0; j < k; ++j) {
    if (ip[j] < 0 || ip[j] >= n) {
      throw IndexError(fmt::format("{}: index {} (at position {}) is out of range for dim {} of size {} of {}; {}",
                                   op, ip[j], j, dim, n, xs.str(),
                                   n > 0 ? fmt::format("valid 0..{}", n - 1) : std::string("the dim is empty")));
    }
  }
}

// Walks every position of `index` (shape is) in row-major order and calls
// f(pos, xoff) with the flat offset into x (strides xst) that gather reads.
template <class F>
void gather_walk(const Shape& is, const std::int64_t* xst, int dim, const std::int64_t* idx, F&& f) {
  const int n = is.size();
  const std::int64_t total = is.numel();
  if (total == 0) return;
  const std::int64_t last = n > 0 ? is[n - 1] : 1;
  const std::int64_t step = (n > 0 && dim != n - 1) ? 1 : 0;  // x stride along the last dim, unless it is dim
  const std::int64_t sd = xst[dim];
  std::int64_t pos_idx[Shape::kMaxDims] = {};
  std::int64_t base = 0;  // x offset of the current row, without the dim term
  for (std::int64_t pos = 0; pos < total; pos += last) {
    for (std::int64_t c = 0; c < last; ++c) f(pos + c, base + c * step + idx[pos + c] * sd);
    for (int d = n - 2; d >= 0; --d) {
      const std::int64_t s = d == dim ? 0 : xst[d];
      if (++pos_idx[d] < is[d]) {
        base += s;
        break;
      }
      base -= s * (is[d] - 1);
      pos_idx[d] = 0;
    }
  }
}

using Strides = std::array<std::int64_t, Shape::kMaxDims>;

// Zeros of shape xs with g scatter-added at the positions gather(x, d, index) read
// (repeats accumulate): gather's backward. When g has history (create_graph) it is
// recorded, its own backward being gather again, so it is differentiable to any order.
Tensor gather_backward(const Tensor& g, const Shape& xs, int d, const SavedTensor& si, const Strides& strides) {
  const Tensor& index = si.get();
  Tensor z = zeros(xs, g.dtype());
  dispatch_any(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<T>();
    T* zp = z.data<T>();
    gather_walk(index.shape(), strides.data(), d, index.data<std::int64_t>(),
                [&](std::int64_t pos, std::int64_t off) { zp[off] += gp[pos]; });
    return 0;
  });
  if (needs_record({&g})) {
    // d scatter_add(g) = gather of the incoming gradient at the same positions
    record("gather_backward", z, {&g}, [d, si](const Tensor& gg, GradSlots& dx) { dx[0] = gather(gg, d, si.get()); });
  }
  return z;
}

}  // namespace

Tensor index_select(const Tensor& x, int dim, const Tensor& index) {
  detail::check_defined("index_select", x);
  check_index_dtype("index_select", index);
  const Shape& xs = x.shape();
  if (xs.size() == 0) {
    throw IndexError(fmt::format("index_select: cannot index a 0-d tensor (index {})", index.shape().str()));
  }
  const int d = wrap_dim("index_select", dim, xs.size());
  const bool embedding = d == 0 && xs.size() == 2;
  // out[o, j, :] = x[o, index[j], :]; the embedding lookup is outer = 1 with any index shape.
  Shape ys;
  if (embedding) {
    ys = index.shape();
    if (ys.size() == Shape::kMaxDims) {
      throw ShapeError(fmt::format("index_select: index {} has too many dims for the result {} + [{}]",
                                   index.shape().str(), index.shape().str(), xs[1]));
    }
    ys.push_back(xs[1]);
  } else {
    if (index.ndim() > 1) {
      throw ShapeError(fmt::format("index_select: index must be 1-D for dim {} of {} (only dim 0 of a 2-D tensor "
                                   "takes any index shape), got {}",
                                   dim, xs.str(), index.shape().str()));
    }
    ys = xs;
    ys[d] = index.numel();
  }
  const std::int64_t n = xs[d];
  check_range("index_select", index, n, dim, xs);
  if (!numel_fits("index_select", ys)) {
    throw_numel_error(fmt::format("index_select: {}, index {}: the result", xs.str(), index.shape().str()), ys);
  }
  const std::int64_t outer = prod(xs, 0, d), inner = prod(xs, d + 1, xs.size()), k = index.numel();
  Tensor y = Tensor::empty(ys, x.dtype());
  dispatch_any(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const std::int64_t* ip = index.data<std::int64_t>();
    T* yp = y.data<T>();
    for (std::int64_t o = 0; o < outer; ++o) {
      const T* xb = xp + o * n * inner;
      if (inner == 1) {
        for (std::int64_t j = 0; j < k; ++j) yp[j] = xb[ip[j]];
      } else {
        for (std::int64_t j = 0; j < k; ++j) std::copy_n(xb + ip[j] * inner, inner, yp + j * inner);
      }
      yp += k * inner;
    }
    return 0;
  });
  if (needs_record({&x})) {
    // d x[index] = g's rows scatter-added into zeros of x's shape (repeats accumulate;
    // the engine adds them into x's accumulated gradient: no zeros of x's size per use)
    record("index_select", y, {&x}, [si = save(index, 1), d](const Tensor& g, GradSlots& dx) {
      // The index is not differentiated but its values route g: saved as the op's second
      // tensor argument (input 1), so writing into it is caught.
      if (!dx.needs(0)) return;
      dx.set_index_add(0, g, d, si.get());
    });
  }
  return y;
}

Tensor gather(const Tensor& x, int dim, const Tensor& index) {
  detail::check_defined("gather", x);
  check_index_dtype("gather", index);
  const Shape& xs = x.shape();
  const Shape& is = index.shape();
  const int nd = xs.size();
  const int d = wrap_dim("gather", dim, nd);
  if (is.size() != nd) {
    throw ShapeError(fmt::format("gather: index {} must have as many dims as x {} ({} vs {})", is.str(), xs.str(),
                                 is.size(), nd));
  }
  for (int i = 0; i < nd; ++i) {
    if (i != d && is[i] > xs[i]) {
      throw ShapeError(fmt::format("gather: index {} is larger than x {} in dim {} ({} > {})", is.str(), xs.str(), i,
                                   is[i], xs[i]));
    }
  }
  // A 0-d x is a 1-element vector for the offset arithmetic.
  const std::int64_t n = nd == 0 ? 1 : xs[d];
  check_range("gather", index, n, dim, xs);
  std::int64_t xst[Shape::kMaxDims] = {1};
  std::int64_t st = 1;
  for (int i = nd - 1; i >= 0; --i) {
    xst[i] = st;
    st *= xs[i];
  }
  Tensor y = Tensor::empty(is, x.dtype());
  dispatch_any(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    gather_walk(is, xst, d, index.data<std::int64_t>(), [&](std::int64_t pos, std::int64_t off) { yp[pos] = xp[off]; });
    return 0;
  });
  if (needs_record({&x})) {
    Strides strides{};
    std::copy_n(xst, Shape::kMaxDims, strides.begin());
    // d gather(x, index) = g scatter-added at the gathered positions of zeros of x's shape
    // (the index is gather's second tensor argument: its values route g)
    record("gather", y, {&x}, [d, si = save(index, 1), strides](const Tensor& g, GradSlots& dx) {
      if (!dx.needs(0)) return;
      dx[0] = gather_backward(g, dx.shape(0), d, si, strides);
    });
  }
  return y;
}

// ---------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------

// One node rather than index_select, so that the padding row's gradient is exactly zero
// while the forward still returns that row as it is.
Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<std::int64_t> padding_idx) {
  constexpr const char* op = "embedding";
  detail::check_floating(op, weight);
  check_index_dtype(op, ids);
  if (weight.ndim() != 2) {
    throw ShapeError(fmt::format("embedding: ids {}, weight {}: the weight must be 2-D [num_embeddings, embedding_dim]",
                                 ids.shape().str(), weight.shape().str()));
  }
  if (ids.ndim() >= Shape::kMaxDims) {
    throw ShapeError(fmt::format("embedding: ids {} have too many dims for the result (at most {} dims)",
                                 ids.shape().str(), Shape::kMaxDims));
  }
  const std::int64_t V = weight.shape()[0], D = weight.shape()[1];
  std::int64_t pad = -1;  // none
  if (padding_idx) {
    pad = *padding_idx < 0 ? *padding_idx + V : *padding_idx;
    if (pad < 0 || pad >= V) {
      throw IndexError(fmt::format("embedding: padding_idx {} is out of range for weight {} (valid {}..{})",
                                   *padding_idx, weight.shape().str(), -V, V - 1));
    }
  }
  const std::int64_t k = ids.numel();
  const std::int64_t* ip = ids.data<std::int64_t>();
  for (std::int64_t j = 0; j < k; ++j) {
    if (ip[j] < 0 || ip[j] >= V) {
      throw IndexError(fmt::format("embedding: token id {} (at flat position {} of ids {}) is out of range for "
                                   "weight {} (valid ids 0..{})",
                                   ip[j], j, ids.shape().str(), weight.shape().str(), V - 1));
    }
  }
  Shape ys = ids.shape();
  ys.push_back(D);
  if (!numel_fits("embedding", ys)) {
    throw_numel_error(fmt::format("embedding: ids {}, weight {}: the result", ids.shape().str(), weight.shape().str()),
                      ys);
  }
  Tensor y = Tensor::empty(ys, weight.dtype());
  auto gather = [&](auto tag) {
    using T = decltype(tag);
    const T* wp = weight.data<T>();
    T* yp = y.data<T>();
    for (std::int64_t j = 0; j < k; ++j) std::copy_n(wp + ip[j] * D, D, yp + j * D);
  };
  if (weight.dtype() == Dtype::f64) {
    gather(double{});
  } else {
    gather(float{});
  }
  if (needs_record({&weight})) {
    // d weight[ids] = rows of g scatter-added at ids (repeats accumulate), none at padding_idx
    record("embedding", y, {&weight, &ids}, [sid = save(ids, 1), pad, V, D](const Tensor& g, GradSlots& dx) {
      const Tensor& ids = sid.get();  // input 1 of the node: its values pick the rows
      if (is_grad_enabled()) {
        // create_graph: the same scatter-add as the engine's recorded row add, g's rows at
        // padding_idx zeroed by a recorded masked_fill (its backward zeroes them again).
        const std::int64_t k = ids.numel();
        Tensor gk = reshape(g, Shape{k, D});
        const Tensor flat_ids = reshape(ids, Shape{k});
        if (pad >= 0) gk = masked_fill(gk, unsqueeze(eq(flat_ids, static_cast<double>(pad)), 1), 0.0);
        dx.set_index_add(0, gk, 0, flat_ids);
        return;
      }
      Tensor d = zeros(Shape{V, D}, g.dtype());
      auto scatter = [&](auto tag) {
        using T = decltype(tag);
        const T* gp = g.data<T>();
        T* dp = d.data<T>();
        const std::int64_t* idx = ids.data<std::int64_t>();
        for (std::int64_t j = 0; j < ids.numel(); ++j) {
          if (idx[j] == pad) continue;
          T* row = dp + idx[j] * D;
          const T* gr = gp + j * D;
          for (std::int64_t c = 0; c < D; ++c) row[c] += gr[c];
        }
      };
      if (g.dtype() == Dtype::f64) {
        scatter(double{});
      } else {
        scatter(float{});
      }
      dx[0] = d;
    });
  }
  return y;
}

}  // namespace xg
