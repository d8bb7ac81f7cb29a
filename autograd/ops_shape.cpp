// Shape ops. reshape, flatten, squeeze and unsqueeze are views (same storage, new
// shape); everything else copies into a fresh contiguous tensor. Copies move contiguous
// runs (std::copy_n, i.e. memmove) wherever the layout has them, and work for every
// dtype (int64 index tensors get reshaped and concatenated too); gradients flow only
// through float tensors.
#include <algorithm>
#include <array>
#include <cstring>

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

// y shares x's storage with shape s; its backward reshapes g back to x's shape.
Tensor view(const char* op, const Tensor& x, const Shape& s) {
  Tensor y = detail::alias(x, s);
  if (needs_record({&x})) {
    // d view(x) = g viewed with x's shape
    record(op, y, {&x}, [xs = x.shape()](const Tensor& g, GradSlots& dx) { dx[0] = reshape(g, xs); });
  }
  return y;
}

// A 2-D transpose y[i * ldy + j] = x[j * ldx + i] (i < R, j < C), in 16x16 tiles. A
// full tile goes through a buffer with compile-time bounds, so both sides are read and
// written in contiguous runs and the compiler vectorises it. (Reading x column-wise
// directly revisits each cache line 16-32 times, and with power-of-two strides those
// lines evict each other: a 1024x1024 float transpose ran ~3x slower.)
template <class T>
void transpose_2d(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, std::int64_t R, std::int64_t C) {
  constexpr std::int64_t kTile = 16;
  for (std::int64_t i0 = 0; i0 < R; i0 += kTile) {
    const std::int64_t ni = std::min(kTile, R - i0);
    for (std::int64_t j0 = 0; j0 < C; j0 += kTile) {
      const std::int64_t nj = std::min(kTile, C - j0);
      if (ni == kTile && nj == kTile) {
        T buf[kTile][kTile];
        for (std::int64_t j = 0; j < kTile; ++j) std::copy_n(x + (j0 + j) * ldx + i0, kTile, buf[j]);
        for (std::int64_t i = 0; i < kTile; ++i) {
          T* yr = y + (i0 + i) * ldy + j0;
          for (std::int64_t j = 0; j < kTile; ++j) yr[j] = buf[j][i];
        }
      } else {
        for (std::int64_t i = 0; i < ni; ++i) {
          T* yr = y + (i0 + i) * ldy + j0;
          for (std::int64_t j = 0; j < nj; ++j) yr[j] = x[(j0 + j) * ldx + i0 + i];
        }
      }
    }
  }
}

// y = x with y's dim i being x's dim p[i], copied contiguous. Size-1 dims are dropped and
// dims that stay adjacent in x are merged, so only dims that really move are looped
// over. If x's innermost dim stays innermost, y is a sequence of contiguous runs of x
// (row copies). Otherwise the dim contiguous in x and the dim contiguous in y form a
// batch of 2-D transposes.
template <class T>
void permute_copy(const T* x, T* y, const Shape& xs, const int* p) {
  const int n = xs.size();
  std::int64_t xstride[Shape::kMaxDims];
  std::int64_t total = 1;
  for (int i = n - 1; i >= 0; --i) {
    xstride[i] = total;
    total *= xs[i];
  }
  if (total == 0) return;
  // The moving dims in y's order: their sizes and x strides.
  std::int64_t size[Shape::kMaxDims];
  std::int64_t stride[Shape::kMaxDims];
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const std::int64_t sz = xs[p[i]];
    if (sz == 1) continue;
    if (m > 0 && stride[m - 1] == xstride[p[i]] * sz) {  // still adjacent in x: merge
      size[m - 1] *= sz;
      stride[m - 1] = xstride[p[i]];
      continue;
    }
    size[m] = sz;
    stride[m] = xstride[p[i]];
    ++m;
  }
  if (m == 0 || (m == 1 && stride[0] == 1)) {
    std::copy_n(x, total, y);
    return;
  }
  std::int64_t ystride[Shape::kMaxDims];
  for (std::int64_t i = m - 1, s = 1; i >= 0; --i) {
    ystride[i] = s;
    s *= size[i];
  }
  const int last = m - 1;
  int q = last;  // the dim contiguous in x (the merged dims keep x's last dim at stride 1)
  while (stride[q] != 1) --q;
  // Odometer over the dims that are neither q nor last.
  int od[Shape::kMaxDims];
  int no = 0;
  for (int i = 0; i < last; ++i) {
    if (i != q) od[no++] = i;
  }
  const std::int64_t block = q == last ? size[last] : size[q] * size[last];
  std::int64_t idx[Shape::kMaxDims] = {};
  std::int64_t xo = 0, yo = 0;
  for (std::int64_t done = 0; done < total; done += block) {
    if (q == last) {
      std::copy_n(x + xo, size[last], y + yo);
    } else {
      transpose_2d(x + xo, stride[last], y + yo, ystride[q], size[q], size[last]);
    }
    for (int k = no - 1; k >= 0; --k) {
      const int d = od[k];
      if (++idx[d] < size[d]) {
        xo += stride[d];
        yo += ystride[d];
        break;
      }
      xo -= stride[d] * (size[d] - 1);
      yo -= ystride[d] * (size[d] - 1);
      idx[d] = 0;
    }
  }
}

Tensor permute_impl(const char* op, const Tensor& x, const std::array<int, Shape::kMaxDims>& p) {
  const Shape& xs = x.shape();
  const int n = xs.size();
  Shape ys;
  for (int i = 0; i < n; ++i) ys.push_back(xs[p[i]]);
  Tensor y = Tensor::empty(ys, x.dtype());
  dispatch_any(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    permute_copy<T>(x.data<T>(), y.data<T>(), xs, p.data());
    return 0;
  });
  if (needs_record({&x})) {
    std::array<int, Shape::kMaxDims> inv{};
    for (int i = 0; i < n; ++i) inv[p[i]] = i;
    // d permute(x, p) = permute(g, p⁻¹)
    record(op, y, {&x}, [inv, n](const Tensor& g, GradSlots& dx) {
      dx[0] = permute(g, std::vector<int>(inv.begin(), inv.begin() + n));
    });
  }
  return y;
}

// Elements [start, start + len) along dim d of x (already validated), copied; the dim
// is removed when drop_dim (select). One contiguous run per outer index.
Tensor take_range(const char* op, const Tensor& x, int d, std::int64_t start, std::int64_t len, bool drop_dim) {
  const Shape& xs = x.shape();
  Shape ys = xs;
  if (drop_dim) {
    ys.erase(d);
  } else {
    ys[d] = len;
  }
  Tensor y = Tensor::empty(ys, x.dtype());
  const std::int64_t outer = prod(xs, 0, d), inner = prod(xs, d + 1, xs.size());
  const std::int64_t n = xs[d] * inner, run = len * inner;
  dispatch_any(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>() + start * inner;
    T* yp = y.data<T>();
    for (std::int64_t o = 0; o < outer; ++o) std::copy_n(xp + o * n, run, yp + o * run);
    return 0;
  });
  if (needs_record({&x})) {
    // d x[start:start+len] = g placed at [start, start+len) in zeros of x's shape (added
    // into that range by the engine: no zeros of x's size per use)
    record(op, y, {&x}, [d, start](const Tensor& g, GradSlots& dx) { dx.set_range(0, g, d, start); });
  }
  return y;
}

void check_not_0d(const char* op, const Tensor& x) {
  if (x.ndim() == 0) throw IndexError(fmt::format("{}: cannot index a 0-d tensor (it has no dims)", op));
}

}  // namespace

namespace detail {
Tensor reshape_as(const char* op, const Tensor& x, const Shape& shape) {
  check_defined(op, x);
  Shape s = shape;
  int infer = -1;
  // The product of the dims other than -1, 0 counted as 1 (as numel_fits counts), and
  // whether one of them is 0. Checked: a product that wraps around could match x.numel().
  std::int64_t known = 1;
  bool zero = false;
  for (int i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0) {
        throw ShapeError(fmt::format("{}: {} -> {}: only one dimension can be -1", op, x.shape().str(), shape.str()));
      }
      infer = i;
    } else if (s[i] < 0) {
      throw ShapeError(fmt::format("{}: {} -> {}: negative dimension {}", op, x.shape().str(), shape.str(), s[i]));
    } else if (s[i] == 0) {
      zero = true;
    } else if (__builtin_mul_overflow(known, s[i], &known) || known > kMaxNumel) {
      throw ShapeError(fmt::format("{}: {} -> {}: the target's dims multiply past 2^60 (xgrad's limit on elements "
                                   "per tensor; a 0 dim counts as 1)",
                                   op, x.shape().str(), shape.str()));
    }
  }
  const std::int64_t n = x.numel();
  if (infer >= 0) {
    if (zero || n % known != 0) {
      throw ShapeError(fmt::format("{}: cannot reshape {} ({} elements) into {}: the -1 dimension {}", op,
                                   x.shape().str(), n, shape.str(),
                                   zero ? "is ambiguous next to a 0 dimension" : "has no integer size"));
    }
    s[infer] = n / known;
  } else if ((zero ? 0 : known) != n) {
    throw ShapeError(fmt::format("{}: cannot reshape {} ({} elements) into {} ({} elements)", op, x.shape().str(), n,
                                 shape.str(), zero ? 0 : known));
  }
  return view(op, x, s);
}
}  // namespace detail

Tensor reshape(const Tensor& x, const Shape& shape) { return detail::reshape_as("reshape", x, shape); }

Tensor flatten(const Tensor& x, int start_dim, int end_dim) {
  detail::check_defined("flatten", x);
  const Shape& xs = x.shape();
  const int n = xs.size();
  const int s = wrap_dim("flatten", start_dim, n);
  const int e = wrap_dim("flatten", end_dim, n);
  if (n == 0) return view("flatten", x, Shape{1});  // like PyTorch: a 0-d tensor flattens to [1]
  if (s > e) {
    throw ShapeError(fmt::format("flatten: start_dim {} comes after end_dim {} for shape {}", start_dim, end_dim,
                                 xs.str()));
  }
  Shape ys;
  for (int i = 0; i < s; ++i) ys.push_back(xs[i]);
  ys.push_back(prod(xs, s, e + 1));
  for (int i = e + 1; i < n; ++i) ys.push_back(xs[i]);
  return view("flatten", x, ys);
}

Tensor transpose(const Tensor& x, int dim0, int dim1) {
  detail::check_defined("transpose", x);
  const int n = x.ndim();
  const int d0 = wrap_dim("transpose", dim0, n);
  const int d1 = wrap_dim("transpose", dim1, n);
  std::array<int, Shape::kMaxDims> p{};
  for (int i = 0; i < n; ++i) p[i] = i;
  std::swap(p[d0], p[d1]);
  return permute_impl("transpose", x, p);
}

Tensor permute(const Tensor& x, const std::vector<int>& dims) {
  detail::check_defined("permute", x);
  const Shape& xs = x.shape();
  const int n = xs.size();
  if (static_cast<int>(dims.size()) != n) {
    throw ShapeError(fmt::format("permute: {} dims given for a {}-d tensor {}", dims.size(), n, xs.str()));
  }
  std::array<int, Shape::kMaxDims> p{};
  std::array<bool, Shape::kMaxDims> seen{};
  for (int i = 0; i < n; ++i) {
    p[i] = wrap_dim("permute", dims[i], n);
    if (seen[p[i]]) {
      throw ShapeError(fmt::format("permute: [{}] is not a permutation of the dims of {} (dim {} repeats)",
                                   fmt::join(dims, ","), xs.str(), p[i]));
    }
    seen[p[i]] = true;
  }
  return permute_impl("permute", x, p);
}

Tensor squeeze(const Tensor& x, int dim) {
  detail::check_defined("squeeze", x);
  Shape s = x.shape();
  const int d = wrap_dim("squeeze", dim, s.size());
  // Like PyTorch, squeezing a dim whose size is not 1 leaves the shape unchanged.
  if (s.size() > 0 && s[d] == 1) s.erase(d);
  return view("squeeze", x, s);
}

Tensor squeeze(const Tensor& x) {
  detail::check_defined("squeeze", x);
  Shape s;
  for (std::int64_t v : x.shape()) {
    if (v != 1) s.push_back(v);
  }
  return view("squeeze", x, s);
}

Tensor unsqueeze(const Tensor& x, int dim) {
  detail::check_defined("unsqueeze", x);
  Shape s = x.shape();
  if (s.size() == Shape::kMaxDims) {
    throw ShapeError(fmt::format("unsqueeze: {} already has the maximum of {} dims", s.str(), Shape::kMaxDims));
  }
  s.insert(wrap_dim("unsqueeze", dim, s.size() + 1), 1);
  return view("unsqueeze", x, s);
}

Tensor slice(const Tensor& x, int dim, std::int64_t start, std::int64_t end) {
  detail::check_defined("slice", x);
  check_not_0d("slice", x);
  const int d = wrap_dim("slice", dim, x.ndim());
  const std::int64_t n = x.shape()[d];
  // Python slicing: negative counts from the end, then clamp into [0, n].
  auto clamp = [n](std::int64_t i) { return i < 0 ? std::max<std::int64_t>(i + n, 0) : std::min(i, n); };
  const std::int64_t s = clamp(start);
  const std::int64_t e = std::max(clamp(end), s);
  return take_range("slice", x, d, s, e - s, false);
}

Tensor narrow(const Tensor& x, int dim, std::int64_t start, std::int64_t length) {
  detail::check_defined("narrow", x);
  check_not_0d("narrow", x);
  const int d = wrap_dim("narrow", dim, x.ndim());
  const std::int64_t n = x.shape()[d];
  if (start < -n || start > n || length < 0 || (start < 0 ? start + n : start) + length > n) {
    throw IndexError(fmt::format("narrow: start {}, length {} is out of range for dim {} of size {} (shape {})",
                                 start, length, dim, n, x.shape().str()));
  }
  return take_range("narrow", x, d, start < 0 ? start + n : start, length, false);
}

Tensor select(const Tensor& x, int dim, std::int64_t index) {
  detail::check_defined("select", x);
  check_not_0d("select", x);
  const int d = wrap_dim("select", dim, x.ndim());
  const std::int64_t n = x.shape()[d];
  if (index < -n || index >= n) {
    throw IndexError(fmt::format("select: index {} is out of range for dim {} of size {} (shape {}; valid {}..{})",
                                 index, dim, n, x.shape().str(), -n, n - 1));
  }
  return take_range("select", x, d, index < 0 ? index + n : index, 1, true);
}

Tensor concat(const std::vector<Tensor>& xs, int dim) {
  if (xs.empty()) throw ShapeError("concat: expected at least one tensor, got an empty list");
  for (const Tensor& x : xs) detail::check_defined("concat", x);
  const Shape& s0 = xs[0].shape();
  const int nd = s0.size();
  if (nd == 0) throw ShapeError("concat: cannot concatenate 0-d tensors (use stack, or unsqueeze them first)");
  const int d = wrap_dim("concat", dim, nd);
  Shape ys = s0;
  ys[d] = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& si = xs[i].shape();
    if (xs[i].dtype() != xs[0].dtype()) {
      throw DtypeError(fmt::format("concat: tensor {} is {} {} but tensor 0 is {} {}", i, dtype_name(xs[i].dtype()),
                                   si.str(), dtype_name(xs[0].dtype()), s0.str()));
    }
    bool ok = si.size() == nd;
    for (int k = 0; ok && k < nd; ++k) ok = k == d || si[k] == s0[k];
    if (!ok) {
      throw ShapeError(fmt::format("concat: tensor {} has shape {} but tensor 0 has {}: sizes must match except in dim {}",
                                   i, si.str(), s0.str(), dim));
    }
    if (__builtin_add_overflow(ys[d], si[d], &ys[d])) {
      throw ShapeError(fmt::format("concat: {} tensors along dim {} (tensor 0 is {}): the joined dim overflows int64",
                                   xs.size(), dim, s0.str()));
    }
  }
  if (!numel_fits("concat", ys)) {
    throw_numel_error(fmt::format("concat: {} tensors along dim {} (tensor 0 is {}) give", xs.size(), dim, s0.str()), ys);
  }
  Tensor y = Tensor::empty(ys, xs[0].dtype());
  const std::int64_t outer = prod(s0, 0, d), inner = prod(s0, d + 1, nd);
  dispatch_any(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    for (std::int64_t o = 0; o < outer; ++o) {
      for (const Tensor& x : xs) {
        const std::int64_t run = x.shape()[d] * inner;
        std::copy_n(x.data<T>() + o * run, run, yp);
        yp += run;
      }
    }
    return 0;
  });
  if (needs_record(std::span<const Tensor>(xs))) {
    std::vector<std::int64_t> offsets;
    std::int64_t off = 0;
    for (const Tensor& x : xs) {
      offsets.push_back(off);
      off += x.shape()[d];
    }
    offsets.push_back(off);
    // d concat(x_0, x_1, ...) = g[off_i : off_i + len_i] along dim, for each x_i
    record("concat", y, std::span<const Tensor>(xs), [offsets, d](const Tensor& g, GradSlots& dx) {
      for (std::size_t i = 0; i < dx.size(); ++i) {
        if (dx.needs(i)) dx[i] = narrow(g, d, offsets[i], offsets[i + 1] - offsets[i]);
      }
    });
  }
  return y;
}

Tensor stack(const std::vector<Tensor>& xs, int dim) {
  if (xs.empty()) throw ShapeError("stack: expected at least one tensor, got an empty list");
  for (const Tensor& x : xs) detail::check_defined("stack", x);
  const Shape& s0 = xs[0].shape();
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (xs[i].dtype() != xs[0].dtype()) {
      throw DtypeError(fmt::format("stack: tensor {} is {} {} but tensor 0 is {} {}", i, dtype_name(xs[i].dtype()),
                                   xs[i].shape().str(), dtype_name(xs[0].dtype()), s0.str()));
    }
    if (xs[i].shape() != s0) {
      throw ShapeError(fmt::format("stack: tensor {} has shape {} but tensor 0 has {}: all shapes must be equal", i,
                                   xs[i].shape().str(), s0.str()));
    }
  }
  if (s0.size() == Shape::kMaxDims) {
    throw ShapeError(fmt::format("stack: {} already has the maximum of {} dims", s0.str(), Shape::kMaxDims));
  }
  const int d = wrap_dim("stack", dim, s0.size() + 1);
  Shape ys = s0;
  ys.insert(d, static_cast<std::int64_t>(xs.size()));
  if (!numel_fits("stack", ys)) {
    throw_numel_error(fmt::format("stack: {} tensors of {} along dim {} give", xs.size(), s0.str(), dim), ys);
  }
  Tensor y = Tensor::empty(ys, xs[0].dtype());
  const std::int64_t outer = prod(s0, 0, d), inner = prod(s0, d, s0.size());
  dispatch_any(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    for (std::int64_t o = 0; o < outer; ++o) {
      for (const Tensor& x : xs) {
        std::copy_n(x.data<T>() + o * inner, inner, yp);
        yp += inner;
      }
    }
    return 0;
  });
  if (needs_record(std::span<const Tensor>(xs))) {
    // d stack(x_0, x_1, ...) = g selected at i along dim, for each x_i
    record("stack", y, std::span<const Tensor>(xs), [d](const Tensor& g, GradSlots& dx) {
      for (std::size_t i = 0; i < dx.size(); ++i) {
        if (dx.needs(i)) dx[i] = select(g, d, static_cast<std::int64_t>(i));
      }
    });
  }
  return y;
}

std::vector<Tensor> split(const Tensor& x, std::int64_t size, int dim) {
  detail::check_defined("split", x);
  if (x.ndim() == 0) throw ShapeError("split: cannot split a 0-d tensor");
  const int d = wrap_dim("split", dim, x.ndim());
  const std::int64_t n = x.shape()[d];
  if (size < 0 || (size == 0 && n > 0)) {
    throw ShapeError(fmt::format("split: size must be positive, got {} (dim {} of {} has size {})", size, dim,
                                 x.shape().str(), n));
  }
  // Like PyTorch, an empty dim splits into one empty piece.
  if (n == 0) return {narrow(x, d, 0, 0)};
  std::vector<Tensor> out;
  out.reserve(static_cast<std::size_t>((n + size - 1) / size));
  for (std::int64_t off = 0; off < n; off += size) out.push_back(narrow(x, d, off, std::min(size, n - off)));
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, std::int64_t chunks, int dim) {
  detail::check_defined("chunk", x);
  if (x.ndim() == 0) throw ShapeError("chunk: cannot chunk a 0-d tensor");
  const int d = wrap_dim("chunk", dim, x.ndim());
  if (chunks <= 0) throw ShapeError(fmt::format("chunk: chunks must be positive, got {}", chunks));
  const std::int64_t n = x.shape()[d];
  // torch.chunk: pieces of ceil(n / chunks), so there may be fewer than `chunks`; an
  // empty dim gives `chunks` empty pieces.
  if (n == 0) {
    std::vector<Tensor> out;
    for (std::int64_t i = 0; i < chunks; ++i) out.push_back(narrow(x, d, 0, 0));
    return out;
  }
  return split(x, (n + chunks - 1) / chunks, d);
}

// ---------------------------------------------------------------------------
// row_block: rows [r0, r0 + n) of w along dim 0, sharing w's storage
// ---------------------------------------------------------------------------

Tensor row_block(const Tensor& w, std::int64_t r0, std::int64_t n) {
  detail::check_defined("row_block", w);
  const Shape& ws = w.shape();
  if (ws.size() == 0 || r0 < 0 || n < 0 || r0 + n > ws[0]) {
    throw IndexError(fmt::format("row_block: rows [{}, {}) of {}: out of range (or a 0-d tensor)", r0, r0 + n,
                                 ws.str()));
  }
  const std::int64_t row = ws[0] > 0 ? w.numel() / ws[0] : 0;
  Shape s = ws;
  s[0] = n;
  TensorImpl* impl = w.impl();
  void* first = static_cast<char*>(impl->data) + r0 * row * static_cast<std::int64_t>(dtype_size(w.dtype()));
  Tensor y(detail::make_impl(s, w.dtype(), impl->storage, first));
  if (needs_record({&w})) {
    // d w = g in rows [r0, r0 + n), zeros elsewhere
    record("row_block", y, {&w}, [r0, row](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: the engine's range add is recorded, the memcpy is not
        dx.set_range(0, g, 0, r0);
        return;
      }
      Tensor d = zeros(dx.shape(0), g.dtype());
      const std::size_t bytes = dtype_size(g.dtype());
      std::memcpy(static_cast<char*>(d.data_ptr()) + r0 * row * static_cast<std::int64_t>(bytes), g.data_ptr(),
                  static_cast<std::size_t>(g.numel()) * bytes);
      dx[0] = d;
    });
  }
  return y;
}

}  // namespace xg
