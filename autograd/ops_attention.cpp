// The attention ops: masked_softmax, additive_scores, attention_probs, attention_apply.
// The row softmax they share is in detail/softmax_kernels.hpp; the layout of the heads
// (read in place through BLAS leading dimensions) is described in ops_attention.hpp.
#include "ops_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <xtensor/xmath.hpp>

#include "../backend/detail/blas.hpp"
#include "detail/composite.hpp"
#include "detail/kernels.hpp"
#include "detail/softmax_kernels.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::gemm;
using detail::RowMask;
using detail::softmax_row;
using detail::softmax_row_backward;

namespace {

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
    case Dtype::b8: fill(mask.data<bool>()); break;
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

// The masks of one attention call as flags per row of the [B, H, Lq, S] scores; the
// modules check the shapes first with their own names, this is the op's own check.
Masks gather_masks(const char* op, const AttentionMasks& am, const AttentionHeads& hd, Dtype dt) {
  Masks m;
  m.rows_per_batch = hd.H * hd.Lq;
  if (am.key_mask.defined()) {
    if (am.key_mask.shape() != Shape{hd.B, hd.S}) {
      throw ShapeError(fmt::format("{}: key mask {}: expected [{},{}] ([B, S]: one flag per batch entry and key)", op,
                                   am.key_mask.shape().str(), hd.B, hd.S));
    }
    m.key_keep = mask_flags(am.key_mask, am.key_mask_keeps);
  }
  if (am.attn_mask.defined()) {
    const Shape& s = am.attn_mask.shape();
    if (s == Shape{hd.Lq, hd.S}) {
      m.attn_rows = hd.Lq;
    } else if (s == Shape{hd.B * hd.H, hd.Lq, hd.S}) {
      m.attn_rows = hd.B * hd.H * hd.Lq;
    } else {
      throw ShapeError(fmt::format("{}: attn_mask {}: expected [{},{}] ([Lq, S]) or [{},{},{}] ([B*H, Lq, S])", op,
                                   s.str(), hd.Lq, hd.S, hd.B * hd.H, hd.Lq, hd.S));
    }
    if (am.attn_mask.dtype() == Dtype::i64 || am.attn_mask.dtype() == Dtype::b8) {
      m.attn_keep = mask_flags(am.attn_mask, false);
    } else {
      m.attn_add = am.attn_mask.detach().to(dt);
    }
  }
  return m;
}

// ---------------------------------------------------------------------------
// Input checks: the kernels index raw memory through the layouts, so every layout must
// stay inside its tensor and cover it exactly (an element seen twice would get a wrong
// gradient, one never seen an uninitialised one).
// ---------------------------------------------------------------------------

// T rows of W = H * w columns for each of B batch entries, laid out by s over t.
void check_layout(const char* op, const char* what, const Shape& shape, std::int64_t B, std::int64_t T,
                  std::int64_t W, HeadStrides s) {
  const std::int64_t n = shape.numel();
  bool ok = numel_fits(Shape{B, T, W}) && s.sb >= 0 && s.st >= 0 && B * T * W == n;
  if (ok && n > 0) {
    // In 128 bits: the strides come from the caller, and a product that wrapped around
    // int64 could pass as a small offset.
    using I = __int128;
    const I b = B, t = T, w = W, sb = s.sb, st = s.st;
    const bool batch_major = (T == 1 || st >= w) && (B == 1 || sb >= (t - 1) * st + w);
    const bool time_major = (B == 1 || sb >= w) && (T == 1 || st >= (b - 1) * sb + w);
    ok = (batch_major || time_major) && (b - 1) * sb + (t - 1) * st + w <= n;
  }
  if (!ok) {
    throw ShapeError(fmt::format("{}: {} {}: the layout (batch stride {}, row stride {}) of {} x {} rows of {} "
                                 "does not cover it exactly",
                                 op, what, shape.str(), s.sb, s.st, B, T, W));
  }
}

void check_sizes(const char* op, const AttentionHeads& hd) {
  if (hd.B < 0 || hd.H < 1 || hd.Lq < 0 || hd.S < 0 || hd.dk < 0 || hd.dv < 0) {
    throw ShapeError(fmt::format("{}: sizes B {}, H {}, Lq {}, S {}, dk {}, dv {}: H must be >= 1, the rest >= 0", op,
                                 hd.B, hd.H, hd.Lq, hd.S, hd.dk, hd.dv));
  }
  // Every product the kernels form: P [B, H, Lq, S], and q, k, v, o [B, L, H * d].
  for (const Shape& s : {Shape{hd.B, hd.H, hd.Lq, hd.S}, Shape{hd.B, hd.Lq, hd.H, hd.dk}, Shape{hd.B, hd.S, hd.H, hd.dk},
                         Shape{hd.B, hd.S, hd.H, hd.dv}, Shape{hd.B, hd.Lq, hd.H, hd.dv}}) {
    if (!numel_fits(s)) {
      throw_numel_error(fmt::format("{}: sizes B {}, H {}, Lq {}, S {}, dk {}, dv {}: the product", op, hd.B, hd.H,
                                    hd.Lq, hd.S, hd.dk, hd.dv),
                        s);
    }
  }
}

void check_probs_inputs(const char* op, const Tensor& q, const Tensor& k, const AttentionHeads& hd,
                        const Shape& shape) {
  detail::check_same_float(op, q, k);
  check_sizes(op, hd);
  check_layout(op, "q", q.shape(), hd.B, hd.Lq, hd.H * hd.dk, hd.q);
  check_layout(op, "k", k.shape(), hd.B, hd.S, hd.H * hd.dk, hd.k);
  if (shape.numel() != hd.B * hd.H * hd.Lq * hd.S) {
    throw ShapeError(fmt::format("{}: q {}, k {}: result shape {} does not hold B*H*Lq*S = {}*{}*{}*{} elements", op,
                                 q.shape().str(), k.shape().str(), shape.str(), hd.B, hd.H, hd.Lq, hd.S));
  }
}

void check_apply_inputs(const Tensor& p, const Tensor& v, const AttentionHeads& hd, const Shape& shape) {
  constexpr const char* op = "attention_apply";
  detail::check_same_float(op, p, v);
  check_sizes(op, hd);
  if (p.numel() != hd.B * hd.H * hd.Lq * hd.S) {
    throw ShapeError(fmt::format("{}: p {}: expected B*H*Lq*S = {}*{}*{}*{} elements", op, p.shape().str(), hd.B, hd.H,
                                 hd.Lq, hd.S));
  }
  check_layout(op, "v", v.shape(), hd.B, hd.S, hd.H * hd.dv, hd.v);
  check_layout(op, "result", shape, hd.B, hd.Lq, hd.H * hd.dv, hd.o);
}

// The create_graph paths below are the backward formulas written in recorded ops: the
// probabilities P come from save_output, which the engine re-attaches to this node under
// create_graph, so P is a differentiable function of the inputs there, not a constant.

// x laid out by `s` (L rows of H heads of width d per batch entry) as [B*H, L, d], in
// recorded ops. check_layout admits exactly two layouts: batch-major [B, L, H*d] and
// time-major [L, B, H*d] (identical in memory when B or L is 1).
bool time_major(std::int64_t B, std::int64_t L, std::int64_t W, HeadStrides s) {
  return B > 1 && L > 1 && s.sb == W;
}

Tensor to_heads(const Tensor& x, std::int64_t B, std::int64_t L, std::int64_t H, std::int64_t d, HeadStrides s) {
  if (time_major(B, L, H * d, s)) return reshape(permute(reshape(x, Shape{L, B, H, d}), {1, 2, 0, 3}), Shape{B * H, L, d});
  return reshape(permute(reshape(x, Shape{B, L, H, d}), {0, 2, 1, 3}), Shape{B * H, L, d});
}

// The inverse of to_heads: y [B*H, L, d] -> `shape`, laid out by s.
Tensor from_heads(const Tensor& y, std::int64_t B, std::int64_t L, std::int64_t H, std::int64_t d, HeadStrides s,
                  const Shape& shape) {
  const Tensor y4 = reshape(y, Shape{B, H, L, d});
  if (time_major(B, L, H * d, s)) return reshape(permute(y4, {2, 0, 1, 3}), shape);
  return reshape(permute(y4, {0, 2, 1, 3}), shape);
}

// d softmax: scale * y ⊙ (g - rowsum(g ⊙ y)) over the last dim, in recorded ops.
Tensor softmax_backward_ops(const Tensor& y, const Tensor& g, double scale) {
  return mul(mul(y, sub(g, sum(mul(g, y), {-1}, true))), scale);
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
    record("masked_softmax", y, {&x}, [sy = save_output(y), S, scale](const Tensor& g, GradSlots& dx) {
      const Tensor& y = sy.get();
      if (is_grad_enabled()) {
        // create_graph: the formula above in recorded ops (y re-attached; masked entries are 0 in y).
        dx[0] = softmax_backward_ops(y, g, scale);
        return;
      }
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

HeadStrides head_strides(bool batch_first, std::int64_t B, std::int64_t T, std::int64_t W) {
  // A stride past int64 saturates (the layout check then refuses it) instead of wrapping.
  auto mul = [](std::int64_t a, std::int64_t b) {
    std::int64_t r = 0;
    return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<std::int64_t>::max() : r;
  };
  return batch_first ? HeadStrides{mul(T, W), W} : HeadStrides{W, mul(B, W)};
}

// ---------------------------------------------------------------------------
// masked_softmax, additive_scores
// ---------------------------------------------------------------------------

Tensor masked_softmax(const Tensor& scores, const Tensor& keep, double scale, const char* name) {
  detail::check_floating(name, scores);
  const Shape& xs = scores.shape();
  if (xs.size() == 0) throw ShapeError(fmt::format("{}: scores must have at least one dim, got a 0-d tensor", name));
  const std::int64_t S = xs.back();
  const std::int64_t B = xs.size() == 1 ? 1 : xs[0];
  Masks masks;
  masks.rows_per_batch = B > 0 && S > 0 ? std::max<std::int64_t>(scores.numel() / S / B, 1) : 1;
  if (keep.defined()) {
    const Shape want = xs.size() == 1 ? Shape{S} : Shape{B, S};
    if (keep.shape() != want) {
      throw ShapeError(fmt::format("{}: scores {}, keep {}: expected keep {} ([B, S]: first and last dims of the "
                                   "scores)",
                                   name, xs.str(), keep.shape().str(), want.str()));
    }
    masks.key_keep = mask_flags(keep, true);
  }
  return softmax_node(name, scores, masks, scale);
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
    // keys_proj and query_proj are kept for create_graph only: t is a constant.
    record(op, s, {&keys_proj, &query_proj, &v},
           [t, kp = save(keys_proj, 0), qp = save(query_proj, 1), v = save(v, 2)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        // create_graph: composite_backward through additive_scores_composite (add, tanh, matmul).
        composite_backward({kp.get(), qp.get(), v.get()}, g, dx, [](const std::vector<Tensor>& in) {
          return detail::additive_scores_composite(in[0], in[1], in[2]);
        });
        return;
      }
      const std::int64_t B = t.shape()[0], L = t.shape()[1], A = t.shape()[2];
      dispatch_float("additive_scores backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* TT = t.data<T>();
        const T* G = g.data<T>();
        if (dx.needs(0) || dx.needs(1)) {
          const T* V = v.get().data<T>();  // only dkeys_proj and dquery_proj read v
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
// attention_probs: P = masked_softmax(scale * Q Kᵀ + masks), [B, H, Lq, S] in memory
// ---------------------------------------------------------------------------

Tensor attention_probs(const Tensor& q, const Tensor& k, const AttentionHeads& hd, double scale, const Shape& shape,
                       const AttentionMasks& mask_tensors, const char* name) {
  const char* op = name;
  check_probs_inputs(op, q, k, hd, shape);
  const Masks masks = gather_masks(op, mask_tensors, hd, q.dtype());
  const Shape& out_shape = shape;
  [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
  [[maybe_unused]] const HeadStrides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
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
    record("attention_probs", p, {&q, &k}, [q = save(q, 0), k = save(k, 1), sp = save_output(p), hd, scale](const Tensor& g, GradSlots& dx) {
      const Tensor& p = sp.get();
      [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
      [[maybe_unused]] const HeadStrides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
      if (is_grad_enabled()) {
        // create_graph: the formulas above in recorded ops over [B*H, L, d] heads (P re-attached).
        const Tensor dS = softmax_backward_ops(reshape(p, Shape{B * H, Lq, S}), reshape(g, Shape{B * H, Lq, S}), scale);
        if (dx.needs(0)) {
          dx[0] = from_heads(matmul(dS, to_heads(k.get(), B, S, H, dk, ks)), B, Lq, H, dk, qs, dx.shape(0));
        }
        if (dx.needs(1)) {
          dx[1] = from_heads(matmul(transpose(dS, 1, 2), to_heads(q.get(), B, Lq, H, dk, qs)), B, S, H, dk, ks,
                             dx.shape(1));
        }
        return;
      }
      Tensor ds = Tensor::empty(p.shape(), p.dtype());
      dispatch_float("attention_probs backward", p.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* P = p.data<T>();
        const T* G = g.data<T>();
        T* D = ds.data<T>();
        const std::int64_t rows = B * H * Lq;
        for (std::int64_t r = 0; r < rows; ++r) softmax_row_backward(P + r * S, G + r * S, D + r * S, S, T(scale));
        if (dx.needs(0)) {
          Tensor dq = Tensor::empty(dx.shape(0), g.dtype());
          T* DQ = dq.data<T>();
          const T* K = k.get().data<T>();
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
          Tensor dkt = Tensor::empty(dx.shape(1), g.dtype());
          T* DK = dkt.data<T>();
          const T* Q = q.get().data<T>();
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
// attention_apply: O[b,h] = P[b,h] V[b,h], O laid out by hd.o with shape `shape`
// ---------------------------------------------------------------------------

Tensor attention_apply(const Tensor& p, const Tensor& v, const AttentionHeads& hd, const Shape& shape) {
  check_apply_inputs(p, v, hd, shape);
  const Shape& out_shape = shape;
  [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
  [[maybe_unused]] const HeadStrides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
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
    record("attention_apply", o, {&p, &v}, [p = save(p, 0), v = save(v, 1), hd](const Tensor& g, GradSlots& dx) {
      [[maybe_unused]] const std::int64_t B = hd.B, H = hd.H, Lq = hd.Lq, S = hd.S, dk = hd.dk, dv = hd.dv;
      [[maybe_unused]] const HeadStrides qs = hd.q, ks = hd.k, vs = hd.v, os = hd.o;
      if (is_grad_enabled()) {
        // create_graph: the formulas above in recorded ops over [B*H, L, d] heads.
        const Tensor g3 = to_heads(g, B, Lq, H, dv, os);
        if (dx.needs(0)) dx[0] = reshape(matmul(g3, transpose(to_heads(v.get(), B, S, H, dv, vs), 1, 2)), dx.shape(0));
        if (dx.needs(1)) {
          dx[1] = from_heads(matmul(transpose(reshape(p.get(), Shape{B * H, Lq, S}), 1, 2), g3), B, S, H, dv, vs,
                             dx.shape(1));
        }
        return;
      }
      dispatch_float("attention_apply backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* G = g.data<T>();
        if (dx.needs(0)) {
          Tensor dp = Tensor::empty(dx.shape(0), g.dtype());
          T* DP = dp.data<T>();
          const T* V = v.get().data<T>();
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
          Tensor dvt = Tensor::empty(dx.shape(1), g.dtype());
          T* DV = dvt.data<T>();
          const T* P = p.get().data<T>();
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

}  // namespace xg

namespace xg::detail {

Tensor additive_scores_composite(const Tensor& keys_proj, const Tensor& query_proj, const Tensor& v) {
  const std::int64_t B = keys_proj.shape()[0], L = keys_proj.shape()[1], A = keys_proj.shape()[2];
  const Tensor t = tanh(add(keys_proj, unsqueeze(query_proj, 1)));
  return reshape(matmul(reshape(t, Shape{B * L, A}), v), Shape{B, L});
}

}  // namespace xg::detail
