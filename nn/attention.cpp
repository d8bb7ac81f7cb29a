// Attention modules, on three private tape nodes that every module shares:
//
//   attention_probs  P[b,h] = masked_softmax(scale * Q[b,h] K[b,h]ᵀ + mask)   [B, H, Lq, S]
//   attention_apply  O[b,h] = P[b,h] V[b,h]
//   row_block        rows [r0, r0+n) of a packed parameter, as a view (in_proj_weight)
//
// Q, K, V and O are read and written in place: head h of batch entry b of a [T, B, E]
// (or [B, T, E]) tensor is the [T, E/H] matrix starting at b * sb + h * dh with row
// stride st, which BLAS takes as a leading dimension. So no head is ever copied out,
// and the context is written straight in the layout out_proj reads. One GEMM per
// (batch entry, head), like PyTorch's bmm.
//
// GCC 12's AVX-512 intrinsics headers initialise their `undefined` vectors from themselves,
// which -Wmaybe-uninitialized reports wherever xsimd's exp or tanh are inlined (GCC bug
// 105593, the same false positive ops_loss.cpp and ops_unary.cpp silence).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/format.h>

#if defined(XTENSOR_USE_XSIMD)
#include <xsimd/xsimd.hpp>
#endif
#include <xtensor/xmath.hpp>

#include "../backend/detail/blas.hpp"
#include "../autograd/detail/kernels.hpp"
#include "../autograd/factory.hpp"
#include "../autograd/ops.hpp"
#include "../autograd/ops_norm.hpp"
#include "../autograd/tape.hpp"
#include "init.hpp"

namespace xg::nn {

using detail::dispatch_float;
using detail::gemm;

namespace {

// ---------------------------------------------------------------------------
// Row kernels
// ---------------------------------------------------------------------------

// z[j] = exp(z[j] - m) in place; returns the sum. xsimd batches, then a scalar tail
// (GCC does not vectorise std::exp without -fno-math-errno).
template <class T>
T exp_sub_sum(T* z, std::int64_t n, T m) {
  T s = 0;
  std::int64_t i = 0;
#if defined(XTENSOR_USE_XSIMD)
  using Batch = xsimd::batch<T>;
  constexpr std::int64_t W = static_cast<std::int64_t>(Batch::size);
  if (n >= W) {
    const Batch mb(m);
    Batch acc(T(0));
    for (; i + W <= n; i += W) {
      const Batch v = xsimd::exp(Batch::load_unaligned(z + i) - mb);
      v.store_unaligned(z + i);
      acc += v;
    }
    s = xsimd::hadd(acc);
  }
#endif
  for (; i < n; ++i) {
    z[i] = std::exp(z[i] - m);
    s += z[i];
  }
  return s;
}

// What masks one row of scores: a keep flag per key from the batch entry's key mask
// and/or from the attention mask's row, and an additive attention-mask row.
template <class T>
struct RowMask {
  const std::uint8_t* keep1 = nullptr;
  const std::uint8_t* keep2 = nullptr;
  const T* add = nullptr;
};

// z (one row of S scores) -> softmax(z + add) over the kept positions, exactly 0 at the
// others. Returns false when nothing is left to normalise over (every position masked
// or -inf, or S == 0); a NaN anywhere gives a NaN row, like softmax.
template <class T>
bool softmax_row(T* z, std::int64_t S, const RowMask<T>& mk) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  if (mk.add) {
    for (std::int64_t j = 0; j < S; ++j) z[j] += mk.add[j];
  }
  const bool masked = mk.keep1 || mk.keep2;
  auto dropped = [&](std::int64_t j) { return (mk.keep1 && !mk.keep1[j]) || (mk.keep2 && !mk.keep2[j]); };
  if (masked) {
    for (std::int64_t j = 0; j < S; ++j) {
      if (dropped(j)) z[j] = -kInf;
    }
  }
  T m = -kInf;
  bool nan = false;
  for (std::int64_t j = 0; j < S; ++j) {
    m = std::max(m, z[j]);
    nan |= std::isnan(z[j]);
  }
  if (nan) {
    std::fill(z, z + S, std::numeric_limits<T>::quiet_NaN());
    return true;
  }
  if (m == -kInf) return false;
  const T inv = T(1) / exp_sub_sum(z, S, m);
  for (std::int64_t j = 0; j < S; ++j) z[j] *= inv;
  if (masked) {  // exp(-inf) is 0 already; this makes "exactly 0" independent of libm
    for (std::int64_t j = 0; j < S; ++j) {
      if (dropped(j)) z[j] = T(0);
    }
  }
  return true;
}

// d = scale * y * (g - sum(g * y)) for one row.
template <class T>
void softmax_row_backward(const T* y, const T* g, T* d, std::int64_t S, T scale) {
  T s = 0;
  for (std::int64_t j = 0; j < S; ++j) s += g[j] * y[j];
  for (std::int64_t j = 0; j < S; ++j) d[j] = scale * y[j] * (g[j] - s);
}

// ---------------------------------------------------------------------------
// Masks
// ---------------------------------------------------------------------------

// Flags of a mask of any dtype: 1 where (mask != 0) == nonzero_keeps.
std::vector<std::uint8_t> mask_flags(const Tensor& mask, bool nonzero_keeps) {
  const std::int64_t n = mask.numel();
  std::vector<std::uint8_t> f(static_cast<std::size_t>(n));
  auto fill = [&](const auto* p) {
    for (std::int64_t i = 0; i < n; ++i) f[i] = static_cast<std::uint8_t>((p[i] != 0) == nonzero_keeps);
  };
  switch (mask.dtype()) {
    case Dtype::f32: fill(mask.data<float>()); break;
    case Dtype::f64: fill(mask.data<double>()); break;
    case Dtype::i64: fill(mask.data<std::int64_t>()); break;
  }
  return f;
}

// All the masks of one attention call, in the row order of the scores: row r belongs
// to batch entry r / rows_per_batch and reads attention-mask row r % attn_rows.
struct Masks {
  std::vector<std::uint8_t> key_keep;   // [B, S] or empty
  std::vector<std::uint8_t> attn_keep;  // [attn_rows, S] or empty
  Tensor attn_add;                      // [attn_rows, S] in the scores' dtype, or undefined
  std::int64_t rows_per_batch = 1;
  std::int64_t attn_rows = 1;
};

template <class T>
RowMask<T> row_mask(const Masks& m, std::int64_t r, std::int64_t S) {
  RowMask<T> rm;
  if (!m.key_keep.empty()) rm.keep1 = m.key_keep.data() + (r / m.rows_per_batch) * S;
  const std::int64_t ar = (r % m.attn_rows) * S;
  if (!m.attn_keep.empty()) rm.keep2 = m.attn_keep.data() + ar;
  if (m.attn_add.defined()) rm.add = m.attn_add.data<T>() + ar;
  return rm;
}

// The error for a row with nothing to attend to; `where` says which row in the caller's terms.
[[noreturn]] void throw_fully_masked(const char* op, const std::string& where, std::int64_t S) {
  if (S == 0) throw ShapeError(fmt::format("{}: softmax over 0 positions ({})", op, where));
  throw Error(fmt::format(
      "{}: every position is masked for {} (all {} keys masked out or -inf): the softmax of such a row is "
      "undefined (PyTorch returns NaN); leave at least one key unmasked per row",
      op, where, S));
}

// ---------------------------------------------------------------------------
// Heads: where each (batch entry, head) matrix lives inside a tensor
// ---------------------------------------------------------------------------

// Element (b, h, t, d) of a tensor holding H heads of width w is at b * sb + t * st + h * w + d.
struct Strides {
  std::int64_t sb = 0;
  std::int64_t st = 0;
};

// [T, B, W] (seq-first) or [B, T, W] (batch-first), heads side by side along W.
Strides layout(bool batch_first, std::int64_t B, std::int64_t T, std::int64_t W) {
  return batch_first ? Strides{T * W, W} : Strides{W, B * W};
}

// Unpacked into plain locals, not structured bindings: clang 14 cannot capture those in lambdas.
struct Heads {
  std::int64_t B = 0, H = 1, Lq = 0, S = 0;
  std::int64_t dk = 0;  // per-head width of queries and keys
  std::int64_t dv = 0;  // per-head width of values and the context
  Strides q, k, v, o;
};

// ---------------------------------------------------------------------------
// attention_probs: P = masked_softmax(scale * Q Kᵀ + masks), [B, H, Lq, S] in memory
// ---------------------------------------------------------------------------

Tensor attention_probs(const char* op, const Tensor& q, const Tensor& k, const Heads& hd, double scale,
                       const Masks& masks, const Shape& out_shape) {
  [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
  [[maybe_unused]] const Strides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
  Tensor p = Tensor::empty(out_shape, q.dtype());
  dispatch_float(op, q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* Q = q.data<T>();
    const T* K = k.data<T>();
    T* P = p.data<T>();
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t h = 0; h < H; ++h) {
        gemm<T>(false, true, Lq, S, dk, T(scale), Q + b * qs.sb + h * dk, qs.st, K + b * ks.sb + h * dk, ks.st, T(0),
                P + (b * H + h) * Lq * S, S);
      }
    }
    const std::int64_t rows = B * H * Lq;
    for (std::int64_t r = 0; r < rows; ++r) {
      if (!softmax_row(P + r * S, S, row_mask<T>(masks, r, S))) {
        const std::string where = H > 1 ? fmt::format("batch {}, head {}, query {}", r / (H * Lq), (r / Lq) % H, r % Lq)
                                        : fmt::format("batch {}, query {}", r / Lq, r % Lq);
        throw_fully_masked(op, where, S);
      }
    }
    return 0;
  });
  if (needs_record({&q, &k})) {
    // dS = scale * P ⊙ (g - rowsum(g ⊙ P)); dQ[b,h] = dS[b,h] K[b,h], dK[b,h] = dS[b,h]ᵀ Q[b,h]
    record("attention_probs", p, {&q, &k}, [q, k, p = p.detach(), hd, scale](const Tensor& g, GradSlots& dx) {
      [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
      [[maybe_unused]] const Strides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
      Tensor ds = Tensor::empty(p.shape(), p.dtype());
      dispatch_float("attention_probs backward", p.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* P = p.data<T>();
        const T* G = g.data<T>();
        T* D = ds.data<T>();
        const std::int64_t rows = B * H * Lq;
        for (std::int64_t r = 0; r < rows; ++r) softmax_row_backward(P + r * S, G + r * S, D + r * S, S, T(scale));
        if (dx.needs(0)) {
          Tensor dq = Tensor::empty(q.shape(), q.dtype());
          T* DQ = dq.data<T>();
          const T* K = k.data<T>();
          for (std::int64_t b = 0; b < B; ++b) {
            for (std::int64_t h = 0; h < H; ++h) {
              // dQ[Lq, dk] = dS[Lq, S] . K[S, dk]
              gemm<T>(false, false, Lq, dk, S, T(1), D + (b * H + h) * Lq * S, S, K + b * ks.sb + h * dk, ks.st, T(0),
                      DQ + b * qs.sb + h * dk, qs.st);
            }
          }
          dx[0] = dq;
        }
        if (dx.needs(1)) {
          Tensor dkt = Tensor::empty(k.shape(), k.dtype());
          T* DK = dkt.data<T>();
          const T* Q = q.data<T>();
          for (std::int64_t b = 0; b < B; ++b) {
            for (std::int64_t h = 0; h < H; ++h) {
              // dK[S, dk] = dSᵀ[S, Lq] . Q[Lq, dk]
              gemm<T>(true, false, S, dk, Lq, T(1), D + (b * H + h) * Lq * S, S, Q + b * qs.sb + h * dk, qs.st, T(0),
                      DK + b * ks.sb + h * dk, ks.st);
            }
          }
          dx[1] = dkt;
        }
        return 0;
      });
    });
  }
  return p;
}

// ---------------------------------------------------------------------------
// attention_apply: O[b,h] = P[b,h] V[b,h], O laid out by hd.o with shape out_shape
// ---------------------------------------------------------------------------

Tensor attention_apply(const Tensor& p, const Tensor& v, const Heads& hd, const Shape& out_shape) {
  [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
  [[maybe_unused]] const Strides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
  Tensor o = Tensor::empty(out_shape, p.dtype());
  dispatch_float("attention_apply", p.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* P = p.data<T>();
    const T* V = v.data<T>();
    T* O = o.data<T>();
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t h = 0; h < H; ++h) {
        gemm<T>(false, false, Lq, dv, S, T(1), P + (b * H + h) * Lq * S, S, V + b * vs.sb + h * dv, vs.st, T(0),
                O + b * os.sb + h * dv, os.st);
      }
    }
    return 0;
  });
  if (needs_record({&p, &v})) {
    // dP[b,h] = g[b,h] V[b,h]ᵀ, dV[b,h] = P[b,h]ᵀ g[b,h]
    record("attention_apply", o, {&p, &v}, [p, v, hd](const Tensor& g, GradSlots& dx) {
      [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
      [[maybe_unused]] const Strides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
      dispatch_float("attention_apply backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* G = g.data<T>();
        if (dx.needs(0)) {
          Tensor dp = Tensor::empty(p.shape(), p.dtype());
          T* DP = dp.data<T>();
          const T* V = v.data<T>();
          for (std::int64_t b = 0; b < B; ++b) {
            for (std::int64_t h = 0; h < H; ++h) {
              // dP[Lq, S] = g[Lq, dv] . Vᵀ[dv, S]
              gemm<T>(false, true, Lq, S, dv, T(1), G + b * os.sb + h * dv, os.st, V + b * vs.sb + h * dv, vs.st, T(0),
                      DP + (b * H + h) * Lq * S, S);
            }
          }
          dx[0] = dp;
        }
        if (dx.needs(1)) {
          Tensor dvt = Tensor::empty(v.shape(), v.dtype());
          T* DV = dvt.data<T>();
          const T* P = p.data<T>();
          for (std::int64_t b = 0; b < B; ++b) {
            for (std::int64_t h = 0; h < H; ++h) {
              // dV[S, dv] = Pᵀ[S, Lq] . g[Lq, dv]
              gemm<T>(true, false, S, dv, Lq, T(1), P + (b * H + h) * Lq * S, S, G + b * os.sb + h * dv, os.st, T(0),
                      DV + b * vs.sb + h * dv, vs.st);
            }
          }
          dx[1] = dvt;
        }
        return 0;
      });
    });
  }
  return o;
}

// ---------------------------------------------------------------------------
// row_block: rows [r0, r0 + n) of w along dim 0, sharing w's storage
// ---------------------------------------------------------------------------

Tensor row_block(const Tensor& w, std::int64_t r0, std::int64_t n) {
  const Shape& ws = w.shape();
  const std::int64_t row = ws[0] > 0 ? w.numel() / ws[0] : 0;
  Shape s = ws;
  s[0] = n;
  TensorImpl* impl = w.impl();
  void* first = static_cast<char*>(impl->data) + r0 * row * static_cast<std::int64_t>(dtype_size(w.dtype()));
  Tensor y(std::make_shared<TensorImpl>(s, w.dtype(), impl->storage, first));
  if (needs_record({&w})) {
    // d w = g in rows [r0, r0 + n), zeros elsewhere
    record("row_block", y, {&w}, [r0, row](const Tensor& g, GradSlots& dx) {
      Tensor d = zeros(dx.shape(0), g.dtype());
      const std::size_t bytes = dtype_size(g.dtype());
      std::memcpy(static_cast<char*>(d.data_ptr()) + r0 * row * static_cast<std::int64_t>(bytes), g.data_ptr(),
                  static_cast<std::size_t>(g.numel()) * bytes);
      dx[0] = d;
    });
  }
  return y;
}

// ---------------------------------------------------------------------------
// Input checks shared by the modules
// ---------------------------------------------------------------------------

void check_input(const char* op, const char* name, const Tensor& t, Dtype want) {
  if (!t.defined()) throw StateError(fmt::format("{}: {} is undefined (default-constructed Tensor)", op, name));
  if (t.dtype() != want) {
    throw DtypeError(fmt::format("{}: {} is {} {} but the module computes in {} (convert the input with .to(), or the "
                                 "module with .to())",
                                 op, name, dtype_name(t.dtype()), t.shape().str(), dtype_name(want)));
  }
}

void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout) {
  if (t.ndim() != rank) {
    throw ShapeError(fmt::format("{}: {} {} must be {}-d {}", op, name, t.shape().str(), rank, layout));
  }
}

// A [B, L] mask of any dtype: shape checked, returned as keep flags.
std::vector<std::uint8_t> key_mask(const char* op, const char* name, const Tensor& mask, std::int64_t B,
                                   std::int64_t L, bool nonzero_keeps) {
  if (mask.shape() != Shape{B, L}) {
    throw ShapeError(fmt::format("{}: {} {}: expected [{},{}] ([B, L]: one flag per batch entry and key)", op, name,
                                 mask.shape().str(), B, L));
  }
  return mask_flags(mask, nonzero_keeps);
}

void check_positive(const char* op, const char* name, std::int64_t v) {
  if (v <= 0) throw ShapeError(fmt::format("{}: {} must be positive, got {}", op, name, v));
}

// y = softmax(scale * x) over the last dim of x, rows masked by `masks`: the one node
// behind masked_softmax() and AdditiveAttention (which names itself in the errors).
Tensor softmax_node(const char* op, const Tensor& x, const Masks& masks, double scale) {
  const std::int64_t S = x.shape().back();
  const std::int64_t rows = S > 0 ? x.numel() / S : 0;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(op, x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* X = x.data<T>();
    T* Y = y.data<T>();
    const T a = static_cast<T>(scale);
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t j = 0; j < S; ++j) Y[r * S + j] = a * X[r * S + j];
      if (!softmax_row(Y + r * S, S, row_mask<T>(masks, r, S))) {
        const std::int64_t rpb = masks.rows_per_batch;
        throw_fully_masked(op, rpb == 1 ? fmt::format("batch {}", r) : fmt::format("batch {}, row {}", r / rpb, r % rpb),
                           S);
      }
    }
    return 0;
  });
  if (needs_record({&x})) {
    // d x = scale * y ⊙ (g - rowsum(g ⊙ y))
    record("masked_softmax", y, {&x}, [y = y.detach(), S, scale](const Tensor& g, GradSlots& dx) {
      Tensor d = Tensor::empty(y.shape(), y.dtype());
      dispatch_float("masked_softmax backward", y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const std::int64_t rows = S > 0 ? y.numel() / S : 0;
        for (std::int64_t r = 0; r < rows; ++r) {
          softmax_row_backward(y.data<T>() + r * S, g.data<T>() + r * S, d.data<T>() + r * S, S, T(scale));
        }
        return 0;
      });
      dx[0] = d;
    });
  }
  return y;
}

}  // namespace

// ---------------------------------------------------------------------------
// masked_softmax, additive_scores
// ---------------------------------------------------------------------------

Tensor masked_softmax(const Tensor& scores, const Tensor& keep, double scale) {
  detail::check_floating("masked_softmax", scores);
  const Shape& xs = scores.shape();
  if (xs.size() == 0) throw ShapeError("masked_softmax: scores must have at least one dim, got a 0-d tensor");
  const std::int64_t S = xs.back();
  const std::int64_t B = xs.size() == 1 ? 1 : xs[0];
  Masks masks;
  masks.rows_per_batch = B > 0 && S > 0 ? std::max<std::int64_t>(scores.numel() / S / B, 1) : 1;
  if (keep.defined()) {
    const Shape want = xs.size() == 1 ? Shape{S} : Shape{B, S};
    if (keep.shape() != want) {
      throw ShapeError(fmt::format("masked_softmax: scores {}, keep {}: expected keep {} ([B, S]: first and last dims "
                                   "of the scores)",
                                   xs.str(), keep.shape().str(), want.str()));
    }
    masks.key_keep = mask_flags(keep, true);
  }
  return softmax_node("masked_softmax", scores, masks, scale);
}

Tensor additive_scores(const Tensor& keys_proj, const Tensor& query_proj, const Tensor& v) {
  constexpr const char* op = "additive_scores";
  detail::check_same_float(op, keys_proj, query_proj);
  detail::check_same_float(op, keys_proj, v);
  const Shape& ks = keys_proj.shape();
  const Shape& qs = query_proj.shape();
  const Shape& vs = v.shape();
  if (ks.size() != 3 || qs.size() != 2 || vs.size() != 1 || qs[0] != ks[0] || qs[1] != ks[2] || vs[0] != ks[2]) {
    throw ShapeError(fmt::format("additive_scores: keys_proj {}, query_proj {}, v {}: expected [B,L,A], [B,A], [A]",
                                 ks.str(), qs.str(), vs.str()));
  }
  const std::int64_t B = ks[0], L = ks[1], A = ks[2];
  Tensor t = Tensor::empty(ks, keys_proj.dtype());
  Tensor s = Tensor::empty(Shape{B, L}, keys_proj.dtype());
  dispatch_float(op, keys_proj.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* KP = keys_proj.data<T>();
    const T* QP = query_proj.data<T>();
    T* TT = t.data<T>();
    for (std::int64_t b = 0; b < B; ++b) {
      const T* qp = QP + b * A;
      for (std::int64_t l = 0; l < L; ++l) {
        const T* kp = KP + (b * L + l) * A;
        T* tr = TT + (b * L + l) * A;
        for (std::int64_t a = 0; a < A; ++a) tr[a] = kp[a] + qp[a];
      }
    }
    auto tf = detail::flat<T>(t);
    xt::noalias(tf) = xt::tanh(tf);  // elementwise in place: xsimd's tanh over the whole block
    // s[B*L] = t[B*L, A] . v[A]
    gemm<T>(false, false, B * L, 1, A, T(1), TT, A, v.data<T>(), 1, T(0), s.data<T>(), 1);
    return 0;
  });
  if (needs_record({&keys_proj, &query_proj, &v})) {
    // with d = g ⊙ v ⊙ (1 - t²): dkeys_proj = d, dquery_proj = Σ_l d, dv = tᵀ g
    record(op, s, {&keys_proj, &query_proj, &v}, [t, v, B, L, A](const Tensor& g, GradSlots& dx) {
      dispatch_float("additive_scores backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* TT = t.data<T>();
        const T* G = g.data<T>();
        const T* V = v.data<T>();
        if (dx.needs(0) || dx.needs(1)) {
          Tensor d = Tensor::empty(t.shape(), t.dtype());
          T* D = d.data<T>();
          for (std::int64_t r = 0; r < B * L; ++r) {
            const T gr = G[r];
            const T* tr = TT + r * A;
            T* dr = D + r * A;
            for (std::int64_t a = 0; a < A; ++a) dr[a] = gr * V[a] * (T(1) - tr[a] * tr[a]);
          }
          if (dx.needs(1)) {
            Tensor dq = zeros(Shape{B, A}, t.dtype());
            T* DQ = dq.data<T>();
            for (std::int64_t b = 0; b < B; ++b) {
              for (std::int64_t l = 0; l < L; ++l) {
                const T* dr = D + (b * L + l) * A;
                for (std::int64_t a = 0; a < A; ++a) DQ[b * A + a] += dr[a];
              }
            }
            dx[1] = dq;
          }
          if (dx.needs(0)) dx[0] = d;
        }
        if (dx.needs(2)) {
          Tensor dv = Tensor::empty(Shape{A}, t.dtype());
          // dv[A] = tᵀ[A, B*L] . g[B*L]
          gemm<T>(true, false, A, 1, B * L, T(1), TT, A, G, 1, T(0), dv.data<T>(), 1);
          dx[2] = dv;
        }
        return 0;
      });
    });
  }
  return s;
}

// ---------------------------------------------------------------------------
// AdditiveAttention
// ---------------------------------------------------------------------------

AdditiveAttention::AdditiveAttention(std::int64_t query_size, std::int64_t key_size, std::int64_t hidden_size)
    : AdditiveAttention(
          AdditiveAttentionOptions{.query_size = query_size, .key_size = key_size, .hidden_size = hidden_size}) {}

AdditiveAttention::AdditiveAttention(const AdditiveAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "AdditiveAttention";
  check_positive(op, "query_size", opts.query_size);
  check_positive(op, "key_size", opts.key_size);
  check_positive(op, "hidden_size", opts.hidden_size);
  const Dtype dt = default_dtype();
  w_query = register_parameter("w_query", Tensor::empty(Shape{opts.hidden_size, opts.query_size}, dt));
  w_key = register_parameter("w_key", Tensor::empty(Shape{opts.hidden_size, opts.key_size}, dt));
  v = register_parameter("v", Tensor::empty(Shape{opts.hidden_size}, dt));
  if (opts.bias) bias = register_parameter("bias", Tensor::empty(Shape{opts.hidden_size}, dt));
  reset_parameters();
}

void AdditiveAttention::reset_parameters() {
  // The matrices are Linear layers without bias, so they get Linear's default init; v
  // is the weight of a Linear(A, 1), the bias the query Linear's bias.
  init::kaiming_uniform_(w_query, std::sqrt(5.0));
  init::kaiming_uniform_(w_key, std::sqrt(5.0));
  const double bv = 1.0 / std::sqrt(static_cast<double>(options.hidden_size));
  init::uniform_(v, -bv, bv);
  if (bias.defined()) {
    const double bb = 1.0 / std::sqrt(static_cast<double>(options.query_size));
    init::uniform_(bias, -bb, bb);
  }
}

AdditiveAttention::Keys AdditiveAttention::precompute_keys(const Tensor& keys) const {
  constexpr const char* op = "AdditiveAttention";
  check_input(op, "keys", keys, w_key.dtype());
  check_rank(op, "keys", keys, 3, "[B, L, key_size]");
  if (keys.shape()[2] != options.key_size) {
    throw ShapeError(fmt::format("{}: keys {}: expected key feature size (last dim) {}", op, keys.shape().str(),
                                 options.key_size));
  }
  return Keys{keys, linear(keys, w_key)};
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                           const Tensor& mask) const {
  return forward(query, precompute_keys(keys), values, mask);
}

AttentionOutput AdditiveAttention::forward(const Tensor& query, const Keys& keys, const Tensor& values,
                                           const Tensor& mask) const {
  constexpr const char* op = "AdditiveAttention";
  const Dtype dt = w_query.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "keys", keys.keys, dt);
  check_input(op, "projected keys", keys.projected, dt);
  check_rank(op, "query", query, 2, "[B, query_size]");
  check_rank(op, "keys", keys.keys, 3, "[B, L, key_size]");
  const std::int64_t B = query.shape()[0], L = keys.keys.shape()[1], A = options.hidden_size;
  if (query.shape()[1] != options.query_size) {
    throw ShapeError(fmt::format("{}: query {}: expected query feature size (last dim) {}", op, query.shape().str(),
                                 options.query_size));
  }
  if (keys.keys.shape()[0] != B) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: batch sizes differ ({} vs {})", op, query.shape().str(),
                                 keys.keys.shape().str(), B, keys.keys.shape()[0]));
  }
  if (keys.projected.shape() != Shape{B, L, A}) {
    throw ShapeError(fmt::format("{}: projected keys {} do not match keys {}: expected [{},{},{}] (use precompute_keys "
                                 "of this module)",
                                 op, keys.projected.shape().str(), keys.keys.shape().str(), B, L, A));
  }
  const Tensor& vals = values.defined() ? values : keys.keys;
  check_input(op, "values", vals, dt);
  check_rank(op, "values", vals, 3, "[B, L, Dv]");
  if (vals.shape()[0] != B || vals.shape()[1] != L) {
    throw ShapeError(fmt::format("{}: keys {}, values {}: values must be [B, L, Dv] with the keys' B = {} and L = {}",
                                 op, keys.keys.shape().str(), vals.shape().str(), B, L));
  }
  if (L == 0) throw ShapeError(fmt::format("{}: keys {}: no keys to attend to (L = 0)", op, keys.keys.shape().str()));
  const std::int64_t Dv = vals.shape()[2];

  Masks masks;
  if (mask.defined()) masks.key_keep = key_mask(op, "mask", mask, B, L, true);

  const Tensor qp = linear(query, w_query, bias);                 // [B, A]
  const Tensor scores = additive_scores(keys.projected, qp, v);  // [B, L]
  Tensor w = softmax_node(op, scores, masks, 1.0);                // [B, L]
  Heads hd;
  hd.B = B;
  hd.Lq = 1;
  hd.S = L;
  hd.dv = Dv;
  hd.v = Strides{L * Dv, Dv};
  hd.o = Strides{Dv, Dv};
  Tensor context = attention_apply(w, vals, hd, Shape{B, Dv});  // [B,1,L] x [B,L,Dv]
  return {context, w};
}

// ---------------------------------------------------------------------------
// DotAttention
// ---------------------------------------------------------------------------

DotAttention::DotAttention(DotScore mode, std::int64_t query_size, std::int64_t key_size)
    : DotAttention(DotAttentionOptions{.mode = mode, .query_size = query_size, .key_size = key_size}) {}

DotAttention::DotAttention(const DotAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "DotAttention";
  if (opts.mode == DotScore::general) {
    check_positive(op, "query_size (general needs the weight's sizes)", opts.query_size);
    check_positive(op, "key_size (general needs the weight's sizes)", opts.key_size);
    weight = register_parameter("weight", Tensor::empty(Shape{opts.key_size, opts.query_size}, default_dtype()));
  } else {
    if (opts.query_size < 0 || opts.key_size < 0) {
      throw ShapeError(fmt::format("{}: sizes must be >= 0 (0 = any), got query_size {}, key_size {}", op,
                                   opts.query_size, opts.key_size));
    }
    if (opts.query_size > 0 && opts.key_size > 0 && opts.query_size != opts.key_size) {
      throw ShapeError(fmt::format("{}: dot and scaled scores need query_size == key_size, got {} and {}", op,
                                   opts.query_size, opts.key_size));
    }
  }
  reset_parameters();
}

void DotAttention::reset_parameters() {
  if (weight.defined()) init::kaiming_uniform_(weight, std::sqrt(5.0));
}

AttentionOutput DotAttention::forward(const Tensor& query, const Tensor& keys, const Tensor& values,
                                      const Tensor& mask) const {
  constexpr const char* op = "DotAttention";
  if (!query.defined()) throw StateError("DotAttention: query is undefined (default-constructed Tensor)");
  detail::check_floating(op, query);
  const Dtype dt = weight.defined() ? weight.dtype() : query.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "keys", keys, dt);
  if (query.ndim() != 2 && query.ndim() != 3) {
    throw ShapeError(fmt::format("{}: query {} must be [B, Dq] or [B, Tq, Dq]", op, query.shape().str()));
  }
  check_rank(op, "keys", keys, 3, "[B, L, Dk]");
  const bool one = query.ndim() == 2;
  const std::int64_t B = query.shape()[0], Tq = one ? 1 : query.shape()[1], Dq = query.shape().back();
  const std::int64_t L = keys.shape()[1], Dk = keys.shape()[2];
  if (keys.shape()[0] != B) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: batch sizes differ ({} vs {})", op, query.shape().str(),
                                 keys.shape().str(), B, keys.shape()[0]));
  }
  const bool general = options.mode == DotScore::general;
  if ((general || options.query_size > 0) && Dq != options.query_size) {
    throw ShapeError(fmt::format("{}: query {}: expected query feature size (last dim) {}", op, query.shape().str(),
                                 options.query_size));
  }
  if ((general || options.key_size > 0) && Dk != options.key_size) {
    throw ShapeError(fmt::format("{}: keys {}: expected key feature size (last dim) {}", op, keys.shape().str(),
                                 options.key_size));
  }
  if (!general && Dq != Dk) {
    throw ShapeError(fmt::format("{}: query {}, keys {}: {} scores need equal feature sizes ({} vs {}); use general "
                                 "for different sizes",
                                 op, query.shape().str(), keys.shape().str(),
                                 options.mode == DotScore::dot ? "dot" : "scaled", Dq, Dk));
  }
  const Tensor& vals = values.defined() ? values : keys;
  check_input(op, "values", vals, dt);
  check_rank(op, "values", vals, 3, "[B, L, Dv]");
  if (vals.shape()[0] != B || vals.shape()[1] != L) {
    throw ShapeError(fmt::format("{}: keys {}, values {}: values must be [B, L, Dv] with the keys' B = {} and L = {}",
                                 op, keys.shape().str(), vals.shape().str(), B, L));
  }
  if (L == 0) throw ShapeError(fmt::format("{}: keys {}: no keys to attend to (L = 0)", op, keys.shape().str()));
  const std::int64_t Dv = vals.shape()[2];

  Masks masks;
  masks.rows_per_batch = Tq;
  if (mask.defined()) masks.key_keep = key_mask(op, "mask", mask, B, L, true);

  const Tensor q = general ? linear(query, weight) : query;  // [B, (Tq,) Dk]
  Heads hd;
  hd.B = B;
  hd.Lq = Tq;
  hd.S = L;
  hd.dk = Dk;
  hd.dv = Dv;
  hd.q = Strides{Tq * Dk, Dk};
  hd.k = Strides{L * Dk, Dk};
  hd.v = Strides{L * Dv, Dv};
  hd.o = Strides{Tq * Dv, Dv};
  const double scale = options.mode == DotScore::scaled ? 1.0 / std::sqrt(static_cast<double>(Dk)) : 1.0;
  Tensor w = attention_probs(op, q, keys, hd, scale, masks, one ? Shape{B, L} : Shape{B, Tq, L});
  Tensor context = attention_apply(w, vals, hd, one ? Shape{B, Dv} : Shape{B, Tq, Dv});
  return {context, w};
}

// ---------------------------------------------------------------------------
// MultiheadAttention
// ---------------------------------------------------------------------------

MultiheadAttention::MultiheadAttention(std::int64_t embed_dim, std::int64_t num_heads)
    : MultiheadAttention(MultiheadAttentionOptions{.embed_dim = embed_dim, .num_heads = num_heads}) {}

MultiheadAttention::MultiheadAttention(const MultiheadAttentionOptions& opts) : options(opts) {
  constexpr const char* op = "MultiheadAttention";
  const std::int64_t E = opts.embed_dim, H = opts.num_heads;
  check_positive(op, "embed_dim", E);
  check_positive(op, "num_heads", H);
  if (E % H != 0) {
    throw ShapeError(fmt::format("{}: embed_dim {} is not divisible by num_heads {}", op, E, H));
  }
  if (!(opts.dropout >= 0.0 && opts.dropout <= 1.0)) {
    throw Error(fmt::format("{}: dropout must be in [0, 1], got {}", op, opts.dropout));
  }
  if (opts.kdim < 0 || opts.vdim < 0) {
    throw ShapeError(fmt::format("{}: kdim and vdim must be >= 0 (0 = embed_dim), got {} and {}", op, opts.kdim,
                                 opts.vdim));
  }
  options.kdim = opts.kdim > 0 ? opts.kdim : E;
  options.vdim = opts.vdim > 0 ? opts.vdim : E;
  head_dim_ = E / H;
  const Dtype dt = default_dtype();
  // PyTorch's registration order, so named_parameters() and state_dict() line up.
  if (options.kdim == E && options.vdim == E) {
    in_proj_weight = register_parameter("in_proj_weight", Tensor::empty(Shape{3 * E, E}, dt));
  } else {
    q_proj_weight = register_parameter("q_proj_weight", Tensor::empty(Shape{E, E}, dt));
    k_proj_weight = register_parameter("k_proj_weight", Tensor::empty(Shape{E, options.kdim}, dt));
    v_proj_weight = register_parameter("v_proj_weight", Tensor::empty(Shape{E, options.vdim}, dt));
  }
  if (opts.bias) in_proj_bias = register_parameter("in_proj_bias", Tensor::empty(Shape{3 * E}, dt));
  out_proj = register_module("out_proj", std::make_shared<Linear>(E, E, opts.bias));
  reset_parameters();
}

void MultiheadAttention::reset_parameters() {
  if (in_proj_weight.defined()) {
    init::xavier_uniform_(in_proj_weight);
  } else {
    init::xavier_uniform_(q_proj_weight);
    init::xavier_uniform_(k_proj_weight);
    init::xavier_uniform_(v_proj_weight);
  }
  out_proj->reset_parameters();
  if (in_proj_bias.defined()) init::zeros_(in_proj_bias);
  if (out_proj->bias.defined()) init::zeros_(out_proj->bias);
}

AttentionOutput MultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                            const MultiheadAttentionForwardOptions& opts) const {
  constexpr const char* op = "MultiheadAttention";
  const bool bf = options.batch_first;
  const char* lay_q = bf ? "([B, L, E] with batch_first)" : "([L, B, E]; [B, L, E] needs batch_first)";
  const char* lay_kv = bf ? "([B, S, kdim or vdim] with batch_first)" : "([S, B, kdim or vdim])";
  const Dtype dt = out_proj->weight.dtype();
  check_input(op, "query", query, dt);
  check_input(op, "key", key, dt);
  check_input(op, "value", value, dt);
  check_rank(op, "query", query, 3, lay_q);
  check_rank(op, "key", key, 3, lay_kv);
  check_rank(op, "value", value, 3, lay_kv);
  const int bdim = bf ? 0 : 1, tdim = bf ? 1 : 0;
  const std::int64_t E = options.embed_dim, H = options.num_heads, dh = head_dim_;
  const std::int64_t B = query.shape()[bdim], L = query.shape()[tdim], S = key.shape()[tdim];
  auto feature = [&](const char* name, const Tensor& t, const char* what, std::int64_t want) {
    if (t.shape()[2] != want) {
      throw ShapeError(fmt::format("{}: {} {}: expected feature size (last dim) {} = {}", op, name, t.shape().str(),
                                   what, want));
    }
  };
  feature("query", query, "embed_dim", E);
  feature("key", key, "kdim", options.kdim);
  feature("value", value, "vdim", options.vdim);
  if (key.shape()[bdim] != B || value.shape()[bdim] != B) {
    throw ShapeError(fmt::format("{}: query {}, key {}, value {}: batch sizes differ (dim {})", op,
                                 query.shape().str(), key.shape().str(), value.shape().str(), bdim));
  }
  if (value.shape()[tdim] != S) {
    throw ShapeError(fmt::format("{}: key {}, value {}: key and value sequence lengths differ ({} vs {})", op,
                                 key.shape().str(), value.shape().str(), S, value.shape()[tdim]));
  }
  if (S == 0) throw ShapeError(fmt::format("{}: key {}: no keys to attend to (S = 0)", op, key.shape().str()));

  Masks masks;
  masks.rows_per_batch = H * L;
  if (opts.key_padding_mask.defined()) {
    masks.key_keep = key_mask(op, "key_padding_mask", opts.key_padding_mask, B, S, false);
  }
  if (opts.attn_mask.defined()) {
    const Tensor& am = opts.attn_mask;
    if (am.shape() == Shape{L, S}) {
      masks.attn_rows = L;
    } else if (am.shape() == Shape{B * H, L, S}) {
      masks.attn_rows = B * H * L;
    } else {
      throw ShapeError(fmt::format("{}: attn_mask {}: expected [{},{}] ([L, S]) or [{},{},{}] ([B*num_heads, L, S])",
                                   op, am.shape().str(), L, S, B * H, L, S));
    }
    if (am.dtype() == Dtype::i64) {
      masks.attn_keep = mask_flags(am, false);
    } else {
      masks.attn_add = am.detach().to(dt);
    }
  }

  // The q / k / v blocks of the packed weight and bias are views: nothing is copied.
  Tensor wq = q_proj_weight, wk = k_proj_weight, wv = v_proj_weight;
  if (in_proj_weight.defined()) {
    wq = row_block(in_proj_weight, 0, E);
    wk = row_block(in_proj_weight, E, E);
    wv = row_block(in_proj_weight, 2 * E, E);
  }
  Tensor bq, bk, bv;
  if (in_proj_bias.defined()) {
    bq = row_block(in_proj_bias, 0, E);
    bk = row_block(in_proj_bias, E, E);
    bv = row_block(in_proj_bias, 2 * E, E);
  }
  const Tensor q = linear(query, wq, bq);  // [L, B, E] (or [B, L, E])
  const Tensor k = linear(key, wk, bk);    // [S, B, E]
  const Tensor v = linear(value, wv, bv);  // [S, B, E]

  Heads hd;
  hd.B = B;
  hd.H = H;
  hd.Lq = L;
  hd.S = S;
  hd.dk = dh;
  hd.dv = dh;
  hd.q = hd.o = layout(bf, B, L, E);
  hd.k = hd.v = layout(bf, B, S, E);
  Tensor p = attention_probs(op, q, k, hd, 1.0 / std::sqrt(static_cast<double>(dh)), masks, Shape{B, H, L, S});
  if (options.dropout > 0.0 && is_training()) p = dropout(p, options.dropout, true);
  const Tensor ctx = attention_apply(p, v, hd, q.shape());  // heads written side by side, in query's layout
  AttentionOutput out{out_proj->forward(ctx), Tensor()};
  if (opts.need_weights) out.weights = opts.average_attn_weights ? mean(p, {1}) : p;
  return out;
}

}  // namespace xg::nn
