// matmul: every supported rank pair is one batched row-major product
//   y[nb, M, N] = a[nb, M, K] . b[nb, K, N]
// (nb = 1 except for [B,M,K] x [B,K,N]), so forward and backward are one gemm per batch
// entry with the transposes passed as flags, never materialised.
//
// linear (x · Wᵀ + b) runs once per time step in hand-written RNN loops, so its fixed
// cost matters as much as its GEMM: one output allocation, the bias copied into the output
// rows and accumulated by the GEMM (beta = 1), the weight's transpose passed to BLAS as a
// flag, and a closure small enough to live inline in the tape node.
#include <algorithm>

#include <fmt/format.h>

#include "../backend/detail/blas.hpp"
#include "detail/kernels.hpp"
#include "detail/matmul_t.hpp"
#include "detail/packed_cache.hpp"
#include "factory.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::gemm;
using detail::prod;

namespace {

// The canonical product sizes of one matmul call.
struct Mm {
  std::int64_t nb, M, K, N;
};

[[noreturn]] void unsupported(const Tensor& a, const Tensor& b) {
  throw ShapeError(fmt::format(
      "matmul: {} x {}: unsupported ranks {}-d x {}-d (supported: [M,K]x[K,N], [B,M,K]x[B,K,N], "
      "[B,M,K]x[K,N], [K]x[K,N], [M,K]x[K])",
      a.shape().str(), b.shape().str(), a.ndim(), b.ndim()));
}

// Maps the rank pair to (nb, M, K, N) and the output shape; throws on anything else.
Mm plan(const Tensor& a, const Tensor& b, Shape& out) {
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  const int ra = sa.size(), rb = sb.size();
  Mm p{};
  std::int64_t kb = 0;
  if (ra == 2 && rb == 2) {
    p = {1, sa[0], sa[1], sb[1]};
    kb = sb[0];
    out = Shape{sa[0], sb[1]};
  } else if (ra == 3 && rb == 3) {
    if (sa[0] != sb[0]) {
      throw ShapeError(fmt::format("matmul: {} x {}: batch sizes differ ({} vs {})", sa.str(), sb.str(), sa[0], sb[0]));
    }
    p = {sa[0], sa[1], sa[2], sb[2]};
    kb = sb[1];
    out = Shape{sa[0], sa[1], sb[2]};
  } else if (ra == 3 && rb == 2) {
    // [B,M,K] is contiguous, so it is the [B*M,K] matrix: one gemm instead of B.
    p = {1, sa[0] * sa[1], sa[2], sb[1]};
    kb = sb[0];
    out = Shape{sa[0], sa[1], sb[1]};
  } else if (ra == 1 && rb == 2) {
    p = {1, 1, sa[0], sb[1]};  // [K] is the row [1,K]
    kb = sb[0];
    out = Shape{sb[1]};
  } else if (ra == 2 && rb == 1) {
    p = {1, sa[0], sa[1], 1};  // [K] is the column [K,1]
    kb = sb[0];
    out = Shape{sa[0]};
  } else {
    unsupported(a, b);
  }
  if (p.K != kb) {
    throw ShapeError(fmt::format("matmul: {} x {}: inner dimensions differ ({} vs {})", sa.str(), sb.str(), p.K, kb));
  }
  if (!numel_fits("matmul", out)) throw_numel_error(fmt::format("matmul: {} x {}: the result", sa.str(), sb.str()), out);
  return p;
}

// C[i] = op(A[i]) . op(B[i]) for i < nb; stride 0 reuses one operand for every i.
template <class T>
void batched(bool ta, bool tb, std::int64_t nb, std::int64_t M, std::int64_t N, std::int64_t K, const T* A,
             std::int64_t lda, std::int64_t sa, const T* B, std::int64_t ldb, std::int64_t sb, T* C) {
  for (std::int64_t i = 0; i < nb; ++i) {
    gemm<T>(ta, tb, M, N, K, T(1), A + i * sa, lda, B + i * sb, ldb, T(0), C + i * M * N, N);
  }
}

// C[M, N] = A[M, K] . op(w), op(w) [K, N], on w's cached panels when w is a parameter
// (detail/packed_cache.hpp); false when the plain GEMM should run instead.
template <class T>
bool by_packed(const Tensor& w, bool trans, std::int64_t M, std::int64_t K, std::int64_t N, const T* A, T* C,
               bool accumulate) {
  const detail::PackedB<T>* pw = detail::packed_parameter<T>(w, trans, M, K, N);
  if (pw == nullptr) return false;
  if (!accumulate) std::fill_n(C, M * N, T(0));
  pw->gemm_acc(M, A, K, C, N);
  return true;
}

// matmul's backward as recorded products on views (create_graph): every rank pair is
// [nb, M, K] x [nb, K, N] after a reshape, as in the forward; the transposes are flags of
// matmul_t, so the gradients are differentiable again without transposed copies.
void matmul_backward_recorded(const Tensor& a, const Tensor& b, const Tensor& g, const Mm& p, GradSlots& dx) {
  const bool batched = p.nb > 1;
  auto as3 = [&](const Tensor& t, std::int64_t r, std::int64_t c) {
    return batched ? reshape(t, Shape{p.nb, r, c}) : reshape(t, Shape{r, c});
  };
  const Tensor g3 = as3(g, p.M, p.N);
  if (dx.needs(0)) dx[0] = reshape(detail::matmul_t(g3, false, as3(b, p.K, p.N), true), dx.shape(0));  // g . bᵀ
  if (dx.needs(1)) dx[1] = reshape(detail::matmul_t(as3(a, p.M, p.K), true, g3, false), dx.shape(1));  // aᵀ . g
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_same_float("matmul", a, b);
  Shape out;
  const Mm p = plan(a, b, out);
  Tensor y = Tensor::empty(out, a.dtype());
  dispatch_float("matmul", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (b.ndim() == 2 && by_packed<T>(b, false, p.M, p.K, p.N, a.data<T>(), y.data<T>(), false)) return 0;
    batched<T>(false, false, p.nb, p.M, p.N, p.K, a.data<T>(), p.K, p.M * p.K, b.data<T>(), p.N, p.K * p.N,
               y.data<T>());
    return 0;
  });
  if (needs_record({&a, &b})) {
    // d(a . b) = g . bᵀ, aᵀ . g   (per batch entry; [B,M,K]x[K,N] is one [B*M,K] product)
    record("matmul", y, {&a, &b}, [a = save(a, 0), b = save(b, 1), p](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        matmul_backward_recorded(a.get(), b.get(), g, p, dx);
        return;
      }
      const std::int64_t nb = p.nb, M = p.M, K = p.K, N = p.N;  // not a structured binding: clang 14 cannot capture those
      dispatch_float("matmul backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        if (dx.needs(0)) {
          Tensor da = Tensor::empty(dx.shape(0), g.dtype());
          // da[M,K] = g[M,N] . bᵀ[N,K]
          const Tensor& bt = b.get();
          if (bt.ndim() != 2 || !by_packed<T>(bt, true, M, N, K, g.data<T>(), da.data<T>(), false)) {
            batched<T>(false, true, nb, M, K, N, g.data<T>(), N, M * N, bt.data<T>(), N, K * N, da.data<T>());
          }
          dx[0] = da;
        }
        if (dx.needs(1) && nb == 1 && dx.shape(1).size() == 2) {
          // db[K,N] = aᵀ[K,M] . g[M,N], stacked with the other steps' when b is a leaf
          dx.set_product(1, detail::alias(a.get(), Shape{M, K}), detail::alias(g, Shape{M, N}));
        } else if (dx.needs(1)) {
          Tensor db = Tensor::empty(dx.shape(1), g.dtype());
          // db[K,N] = aᵀ[K,M] . g[M,N]
          batched<T>(true, false, nb, K, N, M, a.get().data<T>(), K, M * K, g.data<T>(), N, M * N, db.data<T>());
          dx[1] = db;
        }
        return 0;
      });
    });
  }
  return y;
}

// ---------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_same_float("linear", x, weight);
  const Shape& xs = x.shape();
  const Shape& ws = weight.shape();
  if (ws.size() != 2) {
    throw ShapeError(fmt::format("linear: input {}, weight {}: the weight must be 2-D [out_features, in_features]",
                                 xs.str(), ws.str()));
  }
  const std::int64_t out = ws[0], in = ws[1];
  if (xs.size() == 0 || xs.back() != in) {
    throw ShapeError(fmt::format("linear: input {}, weight {}: expected input feature size (last dim) {}, got {}",
                                 xs.str(), ws.str(), in, xs.size() == 0 ? std::string("a 0-d input") : std::to_string(xs.back())));
  }
  if (bias.defined()) {
    detail::check_same_float("linear", x, bias);
    if (bias.ndim() != 1 || bias.shape()[0] != out) {
      throw ShapeError(fmt::format("linear: weight {}, bias {}: the bias must be [out_features] = [{}]", ws.str(),
                                   bias.shape().str(), out));
    }
  }
  const std::int64_t n = prod(xs, 0, xs.size() - 1);  // rows of the [n, in] view
  Shape ys = xs;
  ys[ys.size() - 1] = out;
  if (!numel_fits("linear", ys)) throw_numel_error(fmt::format("linear: input {}, weight {}: the result", xs.str(), ws.str()), ys);
  Tensor y = Tensor::empty(ys, x.dtype());
  dispatch_float("linear", x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    if (bias.defined()) {
      const T* bp = bias.data<T>();
      for (std::int64_t i = 0; i < n; ++i) std::copy_n(bp, out, yp + i * out);
    }
    // y[n,out] = x[n,in] . Wᵀ[in,out] (+ the bias rows already in y)
    if (!by_packed<T>(weight, true, n, in, out, x.data<T>(), yp, bias.defined())) {
      gemm<T>(false, true, n, out, in, T(1), x.data<T>(), in, weight.data<T>(), in, bias.defined() ? T(1) : T(0), yp,
              out);
    }
    return 0;
  });
  if (needs_record({&x, &weight, &bias})) {
    // d(x Wᵀ + b) = g W, gᵀ x, Σ_rows g
    record("linear", y, {&x, &weight, &bias}, [x = save(x, 0), weight = save(weight, 1), n, in, out](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        // create_graph: the same three products as recorded ops on [n, *] views
        const Tensor g2 = reshape(g, Shape{n, out});
        if (dx.needs(0)) dx[0] = reshape(matmul(g2, weight.get()), dx.shape(0));
        if (dx.needs(1)) dx[1] = detail::matmul_t(g2, true, reshape(x.get(), Shape{n, in}), false);
        if (dx.needs(2)) dx[2] = sum(g2, {0});
        return;
      }
      dispatch_float("linear backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* gp = g.data<T>();
        if (dx.needs(0)) {
          Tensor d = Tensor::empty(dx.shape(0), g.dtype());
          // dx[n,in] = g[n,out] . W[out,in]
          const Tensor& w = weight.get();
          if (!by_packed<T>(w, false, n, out, in, gp, d.data<T>(), false)) {
            gemm<T>(false, false, n, in, out, T(1), gp, out, w.data<T>(), in, T(0), d.data<T>(), in);
          }
          dx[0] = d;
        }
        if (dx.needs(1)) {
          // dW[out,in] = gᵀ[out,n] . x[n,in], stacked with the other steps' when W is a leaf
          dx.set_product(1, detail::alias(g, Shape{n, out}), detail::alias(x.get(), Shape{n, in}));
        }
        if (dx.needs(2)) {
          Tensor d = zeros(Shape{out}, g.dtype());
          T* dp = d.data<T>();
          for (std::int64_t i = 0; i < n; ++i) {
            const T* gr = gp + i * out;
            for (std::int64_t j = 0; j < out; ++j) dp[j] += gr[j];
          }
          dx[2] = d;
        }
        return 0;
      });
    });
  }
  return y;
}

// ---------------------------------------------------------------------------
// matmul_t
// ---------------------------------------------------------------------------

Tensor detail::matmul_t(const Tensor& a, bool ta, const Tensor& b, bool tb) {
  detail::check_same_float("matmul_t", a, b);
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  const char* ops[2] = {"", "ᵀ"};
  if (sa.size() != sb.size() || (sa.size() != 2 && sa.size() != 3)) {
    throw ShapeError(fmt::format("matmul_t: {}{} x {}{}: both operands must be 2-D or both 3-D (batched)", sa.str(),
                                 ops[ta], sb.str(), ops[tb]));
  }
  const bool batched = sa.size() == 3;
  const int r = batched ? 1 : 0;
  if (batched && sa[0] != sb[0]) {
    throw ShapeError(fmt::format("matmul_t: {} x {}: batch sizes differ ({} vs {})", sa.str(), sb.str(), sa[0], sb[0]));
  }
  const std::int64_t nb = batched ? sa[0] : 1;
  const std::int64_t M = ta ? sa[r + 1] : sa[r], K = ta ? sa[r] : sa[r + 1];
  const std::int64_t Kb = tb ? sb[r + 1] : sb[r], N = tb ? sb[r] : sb[r + 1];
  if (K != Kb) {
    throw ShapeError(fmt::format("matmul_t: {}{} x {}{}: inner dimensions differ ({} vs {})", sa.str(), ops[ta],
                                 sb.str(), ops[tb], K, Kb));
  }
  const Shape out = batched ? Shape{nb, M, N} : Shape{M, N};
  if (!numel_fits("matmul_t", out)) throw_numel_error(fmt::format("matmul_t: {} x {}: the result", sa.str(), sb.str()), out);
  Tensor y = Tensor::empty(out, a.dtype());
  dispatch_float("matmul_t", a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // A parameter's cached panels serve it here as in matmul (a create_graph backward's
    // per-step g · W_hhᵀ): no re-packing of W by the BLAS at every step.
    if (!batched && !ta && by_packed<T>(b, tb, M, K, N, a.data<T>(), y.data<T>(), false)) return 0;
    const std::int64_t lda = sa[r + 1], ldb = sb[r + 1];
    for (std::int64_t i = 0; i < nb; ++i) {
      gemm<T>(ta, tb, M, N, K, T(1), a.data<T>() + i * sa[r] * lda, lda, b.data<T>() + i * sb[r] * ldb, ldb, T(0),
              y.data<T>() + i * M * N, N);
    }
    return 0;
  });
  if (needs_record({&a, &b})) {
    // d(op(A) op(B)) = G op(B)ᵀ, op(A)ᵀ G, each written as matmul_t of the stored operands
    record("matmul_t", y, {&a, &b}, [a = save(a, 0), b = save(b, 1), ta, tb](const Tensor& g, GradSlots& dx) {
      if (dx.needs(0)) dx[0] = ta ? matmul_t(b.get(), tb, g, true) : matmul_t(g, false, b.get(), !tb);
      if (dx.needs(1)) dx[1] = tb ? matmul_t(g, true, a.get(), ta) : matmul_t(a.get(), !ta, g, false);
    });
  }
  return y;
}

}  // namespace xg
