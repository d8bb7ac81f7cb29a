// The fused LSTM / GRU gate kernels: one pass over the [B, G*H] gate rows per step,
// forward and backward, with the transcendental functions on xsimd batches (GCC does not
// vectorise std::exp / std::tanh). The same step body runs on a batch of W lanes for the
// bulk of each row and on scalars for the tail, so both paths compute the same formulas.

#include "ops_rnn.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "../backend/detail/blas.hpp"
#include "detail/composite.hpp"
#include "detail/kernels.hpp"
#include "detail/lanes.hpp"
#include "../backend/detail/packed_gemm.hpp"
#include "factory.hpp"
#include "grad.hpp"
#include "ops.hpp"
#include "tape.hpp"

namespace xg {

using detail::dispatch_float;
using detail::for_lanes;
using detail::gemm;

namespace {

// ---------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------

// One row: gates g[4H], c_prev cp[H] -> h[H], c[H]; the activations i, f, g, o go to a[4H]
// when a is not null (only when backward will need them).
template <class T>
void lstm_row_forward(const T* gr, const T* cp, T* h, T* c, T* a, std::int64_t H) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V i = L::sigmoid(L::load(gr + j));
    const V f = L::sigmoid(L::load(gr + H + j));
    const V g = L::tanh(L::load(gr + 2 * H + j));
    const V o = L::sigmoid(L::load(gr + 3 * H + j));
    const V cc = f * L::load(cp + j) + i * g;
    L::store(c + j, cc);
    L::store(h + j, o * L::tanh(cc));
    if (a) {
      L::store(a + j, i);
      L::store(a + H + j, f);
      L::store(a + 2 * H + j, g);
      L::store(a + 3 * H + j, o);
    }
  });
}

// One row of the backward. gh, gc: d loss / d h, d c of this step; a: activations; c: the
// step's cell state. Writes d gates (dg, when not null) and d c_prev (dcp, when not null),
// and the step's total d c (dct, when not null: a second-order backward reads it).
template <class T>
void lstm_row_backward(const T* gh, const T* gc, const T* a, const T* cp, const T* c, T* dg, T* dcp,
                       std::int64_t H, T* dct = nullptr) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V one(T(1));
    const V i = L::load(a + j), f = L::load(a + H + j), g = L::load(a + 2 * H + j), o = L::load(a + 3 * H + j);
    const V dh = L::load(gh + j);
    const V tc = L::tanh(L::load(c + j));
    // Total d c: directly, and through h = o ⊙ tanh(c).
    const V dc = L::load(gc + j) + dh * o * (one - tc * tc);
    if (dct) L::store(dct + j, dc);
    if (dg) {
      L::store(dg + j, dc * g * i * (one - i));
      L::store(dg + H + j, dc * L::load(cp + j) * f * (one - f));
      L::store(dg + 2 * H + j, dc * i * (one - g * g));
      L::store(dg + 3 * H + j, dh * tc * o * (one - o));
    }
    if (dcp) L::store(dcp + j, dc * f);
  });
}

void check_lstm_shapes(const Tensor& gates, const Tensor& c_prev) {
  detail::check_same_float("lstm_cell_fused", gates, c_prev);
  const Shape& gs = gates.shape();
  const Shape& cs = c_prev.shape();
  if (gs.size() != 2 || gs[1] % 4 != 0) {
    throw ShapeError(fmt::format("lstm_cell_fused: gates {}: expected [B, 4H] (2-D, columns divisible by 4)",
                                 gs.str()));
  }
  const Shape want{gs[0], gs[1] / 4};
  if (cs != want) {
    throw ShapeError(fmt::format("lstm_cell_fused: gates {} and c_prev {}: expected c_prev {}", gs.str(), cs.str(),
                                 want.str()));
  }
}

// Half k (0: h, 1: c) of the packed hc [2, B, H], as a [B, H] tensor on the same storage.
Tensor half_of(const Tensor& hc, int k) {
  const TensorImpl& t = *hc.impl();
  const Shape s{t.shape[1], t.shape[2]};
  void* first = static_cast<char*>(t.data) + k * s.numel() * static_cast<std::int64_t>(dtype_size(t.dtype));
  Tensor v(detail::make_impl(s, t.dtype, t.storage, first));
  if (needs_record({&hc})) {
    // d hc[k] = g in half k of [2, B, H], zeros in the other half
    record(k == 0 ? "lstm_h" : "lstm_c", v, {&hc}, [k](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: a recorded range, so the gradient keeps g's history
        dx.set_range(0, g, 0, k);
        return;
      }
      const std::int64_t n = g.numel();
      Tensor d = Tensor::empty(Shape{2, g.shape()[0], g.shape()[1]}, g.dtype());
      const std::size_t bytes = static_cast<std::size_t>(n) * dtype_size(g.dtype());
      char* p = static_cast<char*>(d.data_ptr());
      std::memcpy(p + k * bytes, g.data_ptr(), bytes);
      std::memset(p + (1 - k) * bytes, 0, bytes);  // IEEE +0.0 is all-zero bits
      dx[0] = d;
    });
  }
  return v;
}

// ---------------------------------------------------------------------------
// LSTM over a whole sequence
// ---------------------------------------------------------------------------

void check_lstm_sequence_shapes(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0) {
  constexpr const char* op = "lstm_sequence";
  detail::check_defined(op, gx);
  detail::check_defined(op, w_hh);
  detail::check_same_float(op, gx, w_hh);
  if (h0.defined()) detail::check_same_float(op, gx, h0);
  if (c0.defined()) detail::check_same_float(op, gx, c0);
  const Shape& gs = gx.shape();
  auto shapes = [&] {
    return fmt::format("gx {}, w_hh {}, h0 {}, c0 {}", gs.str(), w_hh.shape().str(),
                       h0.defined() ? h0.shape().str() : "(zeros)", c0.defined() ? c0.shape().str() : "(zeros)");
  };
  if (gs.size() != 3 || gs[2] % 4 != 0 || gs[0] == 0) {
    throw ShapeError(fmt::format("{}: {}: expected gx [T, B, 4H] with T > 0", op, shapes()));
  }
  const std::int64_t B = gs[1], H = gs[2] / 4;
  if (w_hh.shape() != Shape{4 * H, H}) {
    throw ShapeError(fmt::format("{}: {}: expected w_hh {}", op, shapes(), Shape{4 * H, H}.str()));
  }
  if (h0.defined() != c0.defined()) {
    throw ShapeError(fmt::format("{}: {}: give both h0 and c0, or neither (zeros)", op, shapes()));
  }
  if (h0.defined() && (h0.shape() != Shape{B, H} || c0.shape() != Shape{B, H})) {
    throw ShapeError(fmt::format("{}: {}: expected h0 and c0 {}", op, shapes(), Shape{B, H}.str()));
  }
}

struct SeqDims {
  std::int64_t T, B, H;
  bool reverse;
  // Time index of the k-th processed step, and of the step processed before it.
  std::int64_t t(std::int64_t k) const { return reverse ? T - 1 - k : k; }
  std::int64_t prev(std::int64_t k) const { return reverse ? T - k : k - 1; }
};

// y [T+1, B, H] (row T: c_n). With C (recording): acts [T, B, 4H] and C [T, B, H] keep
// every step; without: acts is one step's scratch [B, 4H] and c runs in y's row T.
template <class T>
void lstm_sequence_forward(const SeqDims& d, const T* gx, const T* W, const T* h0, const T* c0, T* y, T* acts,
                           T* C) {
  const std::int64_t B = d.B, H = d.H, G = 4 * H, BH = B * H;
  T* cn = y + d.T * BH;
  if (!C) std::memcpy(cn, c0, static_cast<std::size_t>(BH) * sizeof(T));
  // W_hhᵀ packed once for all the steps (BLAS would re-pack it at every step).
  std::optional<detail::PackedB<T>> wt;
  if (d.T > 1 && detail::packed_gemm_pays(B, G, H)) wt.emplace(true, H, G, W, H);
  for (std::int64_t k = 0; k < d.T; ++k) {
    const std::int64_t t = d.t(k), prev = d.prev(k);
    T* a = C ? acts + t * B * G : acts;
    std::memcpy(a, gx + t * B * G, static_cast<std::size_t>(B * G) * sizeof(T));
    const T* hp = k == 0 ? h0 : y + prev * BH;
    // gates[B, 4H] += h_prev[B, H] . W_hhᵀ[H, 4H]
    if (hp && wt) {
      wt->gemm_acc(B, hp, H, a, G);
    } else if (hp) {
      gemm<T>(false, true, B, G, H, T(1), hp, H, W, H, T(1), a, G);
    }
    const T* cp = !C ? cn : k == 0 ? c0 : C + prev * BH;
    T* c = C ? C + t * BH : cn;
    for (std::int64_t b = 0; b < B; ++b) {
      // In place: the row kernel reads a lane's four pre-activations before it stores them activated.
      lstm_row_forward<T>(a + b * G, cp + b * H, y + t * BH + b * H, c + b * H, C ? a + b * G : nullptr, H);
    }
  }
  if (C) std::memcpy(cn, C + d.t(d.T - 1) * BH, static_cast<std::size_t>(BH) * sizeof(T));
}

// g [T+1, B, H] (row T: d c_n) -> dgx [T, B, 4H]; dw, dh0, dc0 when not null. DH, DC
// [T, B, H] (when not null) keep every step's total d h and d c for a second-order backward.
template <class T>
void lstm_sequence_backward(const SeqDims& d, const T* g, const T* acts, const T* C, const T* y, const T* W,
                            const T* h0, const T* c0, T* dgx, T* dw, T* dh0, T* dc0, T* DH = nullptr,
                            T* DC = nullptr) {
  const std::int64_t B = d.B, H = d.H, G = 4 * H, BH = B * H;
  std::vector<T> dh_buf(static_cast<std::size_t>(BH)), dc_buf(static_cast<std::size_t>(BH));
  T* dh = dh_buf.data();
  T* dc = dc_buf.data();
  std::memcpy(dc, g + d.T * BH, static_cast<std::size_t>(BH) * sizeof(T));
  std::memcpy(dh, g + d.t(d.T - 1) * BH, static_cast<std::size_t>(BH) * sizeof(T));
  std::optional<detail::PackedB<T>> wp;  // W_hh packed once, as in the forward
  if (d.T > 1 && detail::packed_gemm_pays(B, H, G)) wp.emplace(false, G, H, W, H);
  for (std::int64_t k = d.T - 1; k >= 0; --k) {
    const std::int64_t t = d.t(k);
    const T* cp = k == 0 ? c0 : C + d.prev(k) * BH;
    T* dg = dgx + t * B * G;
    if (DH) std::memcpy(DH + t * BH, dh, static_cast<std::size_t>(BH) * sizeof(T));
    for (std::int64_t b = 0; b < B; ++b) {
      // dc in place: the kernel reads a lane's d c before it stores d c_prev there.
      lstm_row_backward<T>(dh + b * H, dc + b * H, acts + t * B * G + b * G, cp + b * H, C + t * BH + b * H,
                           dg + b * G, dc + b * H, H, DC ? DC + t * BH + b * H : nullptr);
    }
    // d h_prev[B, H] = dy(prev) + dgates[B, 4H] . W_hh[4H, H]
    if (k > 0) {
      std::memcpy(dh, g + d.prev(k) * BH, static_cast<std::size_t>(BH) * sizeof(T));
      if (wp) {
        wp->gemm_acc(B, dg, G, dh, H);
      } else {
        gemm<T>(false, false, B, H, G, T(1), dg, G, W, H, T(1), dh, H);
      }
    } else if (dh0 && wp) {
      std::fill(dh0, dh0 + BH, T(0));
      wp->gemm_acc(B, dg, G, dh0, H);
    } else if (dh0) {
      gemm<T>(false, false, B, H, G, T(1), dg, G, W, H, T(0), dh0, H);
    }
  }
  if (dw) {
    // Steps after the first read h_prev from y: rows 0..T-2 (forward) or 1..T-1 (reverse).
    const T* dg_rest = d.reverse ? dgx : dgx + B * G;
    const T* h_rest = d.reverse ? y + BH : y;
    gemm<T>(true, false, G, H, (d.T - 1) * B, T(1), dg_rest, G, h_rest, H, T(0), dw, H);
    if (h0) gemm<T>(true, false, G, H, B, T(1), dgx + d.t(0) * B * G, G, h0, H, T(1), dw, H);
  }
  if (dc0) std::memcpy(dc0, dc, static_cast<std::size_t>(BH) * sizeof(T));
}

// ---------------------------------------------------------------------------
// LSTM over a whole sequence: second order
// ---------------------------------------------------------------------------
//
// The first-order backward B(θ, g) = J_F(θ)ᵀ g of F: (gx, W_hh, h0, c0) -> [y; c_n] is
// linear in g, so its derivative in g along a cotangent u is J_F u (the forward-mode
// tangent of the LSTM); its derivative in θ is d/dε B(θ + εu, g) (forward over reverse),
// which the symmetry of the Hessian of <g, F(θ)> makes equal to reverse over reverse.
// Primes below are tangents along u = (u_gx, u_W, u_h0, u_c0).

// Uninitialised scratch from the tensor allocator's cache: a std::vector would zero it and,
// at T·B·4H elements, fault in fresh pages on every call.
template <class T>
struct Scratch {
  Tensor t;
  T* p;
  explicit Scratch(std::int64_t n) : t(Tensor::empty(Shape{n}, dtype_of<T>())), p(t.data<T>()) {}
};

// One row of the forward tangent. p: pre' [4H] on entry, the activated gates' tangents
// (i', f', g', o') on exit; a: activations; cp, cpt: c_prev and its tangent; c: c_t.
// Writes c'_t (ct) and h'_t (ht).
template <class T>
void lstm_row_tangent(T* p, const T* a, const T* cp, const T* cpt, const T* c, T* ct, T* ht, std::int64_t H) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V one(T(1));
    const V i = L::load(a + j), f = L::load(a + H + j), g = L::load(a + 2 * H + j), o = L::load(a + 3 * H + j);
    // i' = σ'(pre_i) pre_i' with σ' = i (1 - i); tanh' = 1 - g²
    const V it = i * (one - i) * L::load(p + j);
    const V ft = f * (one - f) * L::load(p + H + j);
    const V gt = (one - g * g) * L::load(p + 2 * H + j);
    const V ot = o * (one - o) * L::load(p + 3 * H + j);
    // c' = f' c_prev + f c'_prev + i' g + i g';  h' = o' tanh c + o (1 - tanh²c) c'
    const V cct = ft * L::load(cp + j) + f * L::load(cpt + j) + it * g + i * gt;
    const V tc = L::tanh(L::load(c + j));
    L::store(ct + j, cct);
    L::store(ht + j, ot * tc + o * (one - tc * tc) * cct);
    L::store(p + j, it);
    L::store(p + H + j, ft);
    L::store(p + 2 * H + j, gt);
    L::store(p + 3 * H + j, ot);
  });
}

// One row of the backward's tangent. dh, dc: the step's total first-order d h and d c;
// dht: d h'; dct: d c' carried from the next step on entry, d c_prev' on exit; a, at: the
// activations and their tangents; cp, cpt: c_prev and c'_prev; c, ct: c_t and c'_t.
// Writes dpre' [4H] (dpt).
template <class T>
void lstm_row_backward_tangent(const T* dh_, const T* dc_, const T* dht_, T* dct_, const T* a, const T* at,
                               const T* cp_, const T* cpt_, const T* c_, const T* ct_, T* dpt, std::int64_t H) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V one(T(1)), two(T(2));
    const V i = L::load(a + j), f = L::load(a + H + j), g = L::load(a + 2 * H + j), o = L::load(a + 3 * H + j);
    const V it = L::load(at + j), ft = L::load(at + H + j), gt = L::load(at + 2 * H + j), ot = L::load(at + 3 * H + j);
    const V dh = L::load(dh_ + j), dc = L::load(dc_ + j), dht = L::load(dht_ + j);
    const V cp = L::load(cp_ + j), cpt = L::load(cpt_ + j);
    const V tc = L::tanh(L::load(c_ + j));
    const V s = one - tc * tc;
    const V tct = s * L::load(ct_ + j);  // (tanh c)' = (1 - tanh²c) c'
    // dc = dc_next + dh o (1 - tc²)  ->  dc' = dc_next' + (dh' o + dh o') (1 - tc²) - 2 dh o tc tc'
    const V dct = L::load(dct_ + j) + (dht * o + dh * ot) * s - two * dh * o * tc * tct;
    // do = dh tc, di = dc g, df = dc c_prev, dg = dc i, dc_prev = dc f: product rule on each
    const V dot = dht * tc + dh * tct;
    const V dit = dct * g + dc * gt;
    const V dft = dct * cp + dc * cpt;
    const V dgt = dct * i + dc * it;
    L::store(dct_ + j, dct * f + dc * ft);
    // dpre = (di i(1-i), df f(1-f), dg (1-g²), do o(1-o)); (σ(1-σ))' = σ'(1-2σ), (1-g²)' = -2 g g'
    L::store(dpt + j, dit * i * (one - i) + dc * g * it * (one - two * i));
    L::store(dpt + H + j, dft * f * (one - f) + dc * cp * ft * (one - two * f));
    L::store(dpt + 2 * H + j, dgt * (one - g * g) - two * dc * i * g * gt);
    L::store(dpt + 3 * H + j, dot * o * (one - o) + dh * tc * ot * (one - two * o));
  });
}

// The second-order backward of lstm_sequence. Saved: acts, C, y (packed [T+1, B, H]), W,
// h0 (null: zeros), c0; dgx (= dpre), DH, DC from lstm_sequence_backward. Cotangent u:
// ugx [T, B, 4H], uW [4H, H], uh0, uc0 [B, H] (null: zero). Writes rgx [T, B, 4H] (d gx =
// dpre'), rg [T+1, B, H] (d g = [h'; c'_n]), and rw, rh0, rc0 when not null.
template <class T>
void lstm_sequence_backward_tangent(const SeqDims& d, const T* acts, const T* C, const T* y, const T* W, const T* h0,
                                    const T* c0, const T* dgx, const T* DH, const T* DC, const T* ugx, const T* uW,
                                    const T* uh0, const T* uc0, T* rgx, T* rw, T* rh0, T* rc0, T* rg) {
  const std::int64_t B = d.B, H = d.H, G = 4 * H, BH = B * H, BG = B * G;
  const std::size_t nbh = static_cast<std::size_t>(BH);
  Scratch<T> at_buf(d.T * BG), ct_buf(d.T * BH), dht_buf(d.T * BH);
  std::vector<T> dct_buf(nbh, T(0)), zero_buf;
  T* AT = at_buf.p;
  T* CT = ct_buf.p;
  T* DHT = dht_buf.p;
  T* dct = dct_buf.data();
  if (!uc0) {
    zero_buf.assign(nbh, T(0));
    uc0 = zero_buf.data();
  }
  // Steps after the first: their h_prev rows of y (and of h') and their rows of the [T, ...] buffers.
  const std::int64_t rest = (d.T - 1) * B;
  const std::int64_t k1 = d.reverse ? 0 : 1;  // first time row of the steps after the first
  const std::int64_t hp1 = d.reverse ? 1 : 0;  // first time row of their h_prev
  const std::int64_t t0 = d.t(0);

  // Forward tangent. pre'_t = u_gx[t] + h_prev u_Wᵀ + h'_prev W_hhᵀ; the u_W term for every
  // step is one GEMM before the sweep.
  std::memcpy(AT, ugx, static_cast<std::size_t>(d.T * BG) * sizeof(T));
  if (rest > 0) gemm<T>(false, true, rest, G, H, T(1), y + hp1 * BH, H, uW, H, T(1), AT + k1 * BG, G);
  if (h0) gemm<T>(false, true, B, G, H, T(1), h0, H, uW, H, T(1), AT + t0 * BG, G);
  std::optional<detail::PackedB<T>> wt;
  if (d.T > 1 && detail::packed_gemm_pays(B, G, H)) wt.emplace(true, H, G, W, H);
  for (std::int64_t k = 0; k < d.T; ++k) {
    const std::int64_t t = d.t(k), prev = d.prev(k);
    T* a = AT + t * BG;
    const T* hpt = k == 0 ? uh0 : rg + prev * BH;
    if (hpt && wt) {
      wt->gemm_acc(B, hpt, H, a, G);
    } else if (hpt) {
      gemm<T>(false, true, B, G, H, T(1), hpt, H, W, H, T(1), a, G);
    }
    const T* cp = k == 0 ? c0 : C + prev * BH;
    const T* cpt = k == 0 ? uc0 : CT + prev * BH;
    for (std::int64_t b = 0; b < B; ++b) {
      lstm_row_tangent<T>(a + b * G, acts + t * BG + b * G, cp + b * H, cpt + b * H, C + t * BH + b * H,
                          CT + t * BH + b * H, rg + t * BH + b * H, H);
    }
  }
  std::memcpy(rg + d.T * BH, CT + d.t(d.T - 1) * BH, nbh * sizeof(T));

  // Backward tangent, latest first. dh'_t = dpre'_next W_hh + dpre_next u_W (dy' = 0: g is
  // held fixed); the u_W term for every step is one GEMM before the sweep.
  std::fill(DHT + d.t(d.T - 1) * BH, DHT + d.t(d.T - 1) * BH + BH, T(0));
  if (rest > 0) gemm<T>(false, false, rest, H, G, T(1), dgx + k1 * BG, G, uW, H, T(0), DHT + hp1 * BH, H);
  std::optional<detail::PackedB<T>> wp;
  if (d.T > 1 && detail::packed_gemm_pays(B, H, G)) wp.emplace(false, G, H, W, H);
  for (std::int64_t k = d.T - 1; k >= 0; --k) {
    const std::int64_t t = d.t(k);
    const T* cp = k == 0 ? c0 : C + d.prev(k) * BH;
    const T* cpt = k == 0 ? uc0 : CT + d.prev(k) * BH;
    T* dpt = rgx + t * BG;
    for (std::int64_t b = 0; b < B; ++b) {
      lstm_row_backward_tangent<T>(DH + t * BH + b * H, DC + t * BH + b * H, DHT + t * BH + b * H, dct + b * H,
                                   acts + t * BG + b * G, AT + t * BG + b * G, cp + b * H, cpt + b * H,
                                   C + t * BH + b * H, CT + t * BH + b * H, dpt + b * G, H);
    }
    T* next = k > 0 ? DHT + d.prev(k) * BH : rh0;
    if (!next) continue;
    if (k == 0) gemm<T>(false, false, B, H, G, T(1), dgx + t * BG, G, uW, H, T(0), rh0, H);
    if (wp) {
      wp->gemm_acc(B, dpt, G, next, H);
    } else {
      gemm<T>(false, false, B, H, G, T(1), dpt, G, W, H, T(1), next, H);
    }
  }
  if (rc0) std::memcpy(rc0, dct, nbh * sizeof(T));
  if (rw) {
    // dW_hh = Σ dpreᵀ h_prev  ->  dW_hh' = Σ dpre'ᵀ h_prev + dpreᵀ h'_prev
    std::fill(rw, rw + G * H, T(0));
    if (rest > 0) {
      gemm<T>(true, false, G, H, rest, T(1), rgx + k1 * BG, G, y + hp1 * BH, H, T(1), rw, H);
      gemm<T>(true, false, G, H, rest, T(1), dgx + k1 * BG, G, rg + hp1 * BH, H, T(1), rw, H);
    }
    if (h0) gemm<T>(true, false, G, H, B, T(1), rgx + t0 * BG, G, h0, H, T(1), rw, H);
    if (uh0) gemm<T>(true, false, G, H, B, T(1), dgx + t0 * BG, G, uh0, H, T(1), rw, H);
  }
}

// Rows [first, first + shape[0]) of the packed [T+1, B, H] output as a tensor of `shape`
// on the same storage; its backward places the gradient into those rows of a zero
// [T+1, B, H] gradient.
Tensor packed_rows(const Tensor& packed, std::int64_t first, const Shape& shape, const char* name) {
  const TensorImpl& t = *packed.impl();
  const std::int64_t row = t.shape[1] * t.shape[2];
  const std::int64_t esz = static_cast<std::int64_t>(dtype_size(t.dtype));
  Tensor v(detail::make_impl(shape, t.dtype, t.storage, static_cast<char*>(t.data) + first * row * esz));
  if (needs_record({&packed})) {
    // d packed = g in rows [first, first + n), zeros elsewhere
    record(name, v, {&packed}, [first, row, esz](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: a recorded range, so the gradient keeps g's history
        dx.set_range(0, g, 0, first);
        return;
      }
      const Shape& ps = dx.shape(0);
      Tensor d = Tensor::empty(ps, g.dtype());
      char* p = static_cast<char*>(d.data_ptr());
      const std::int64_t total = ps.numel() * esz, lo = first * row * esz, n = g.numel() * esz;
      std::memset(p, 0, static_cast<std::size_t>(lo));  // IEEE +0.0 is all-zero bits
      std::memcpy(p + lo, g.data_ptr(), static_cast<std::size_t>(n));
      std::memset(p + lo + n, 0, static_cast<std::size_t>(total - lo - n));
      dx[0] = d;
    });
  }
  return v;
}

// ---------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------

template <class T>
void gru_row_forward(const T* gi, const T* gh, const T* hp, T* h, T* a, std::int64_t H) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V r = L::sigmoid(L::load(gi + j) + L::load(gh + j));
    const V z = L::sigmoid(L::load(gi + H + j) + L::load(gh + H + j));
    const V n = L::tanh(L::load(gi + 2 * H + j) + r * L::load(gh + 2 * H + j));
    // (1 - z) n + z h_prev, written as PyTorch's kernel does.
    L::store(h + j, n + z * (L::load(hp + j) - n));
    if (a) {
      L::store(a + j, r);
      L::store(a + H + j, z);
      L::store(a + 2 * H + j, n);
    }
  });
}

template <class T>
void gru_row_backward(const T* g, const T* a, const T* gh, const T* hp, T* dgi, T* dgh, T* dhp, std::int64_t H) {
  for_lanes<T>(H, [&]<class L>(std::int64_t j) {
    using V = typename L::V;
    const V one(T(1));
    const V r = L::load(a + j), z = L::load(a + H + j), n = L::load(a + 2 * H + j);
    const V dh = L::load(g + j);
    const V dz = dh * (L::load(hp + j) - n) * z * (one - z);
    const V dn = dh * (one - z) * (one - n * n);
    const V dr = dn * L::load(gh + 2 * H + j) * r * (one - r);
    if (dgi) {
      L::store(dgi + j, dr);
      L::store(dgi + H + j, dz);
      L::store(dgi + 2 * H + j, dn);
    }
    if (dgh) {
      L::store(dgh + j, dr);
      L::store(dgh + H + j, dz);
      L::store(dgh + 2 * H + j, dn * r);
    }
    if (dhp) L::store(dhp + j, dh * z);
  });
}

void check_gru_shapes(const Tensor& gi, const Tensor& gh, const Tensor& h_prev) {
  detail::check_same_float("gru_cell_fused", gi, gh);
  detail::check_same_float("gru_cell_fused", gi, h_prev);
  const Shape& is = gi.shape();
  if (is.size() != 2 || is[1] % 3 != 0) {
    throw ShapeError(fmt::format("gru_cell_fused: gi {}: expected [B, 3H] (2-D, columns divisible by 3)", is.str()));
  }
  if (gh.shape() != is) {
    throw ShapeError(fmt::format("gru_cell_fused: gi {} and gh {}: expected equal shapes", is.str(),
                                 gh.shape().str()));
  }
  const Shape want{is[0], is[1] / 3};
  if (h_prev.shape() != want) {
    throw ShapeError(fmt::format("gru_cell_fused: gi {} and h_prev {}: expected h_prev {}", is.str(),
                                 h_prev.shape().str(), want.str()));
  }
}

}  // namespace

LSTMGatesOut lstm_cell_fused(const Tensor& gates, const Tensor& c_prev) {
  check_lstm_shapes(gates, c_prev);
  const std::int64_t B = gates.shape()[0], H = gates.shape()[1] / 4;
  const bool rec = needs_record({&gates, &c_prev});
  Tensor hc = Tensor::empty(Shape{2, B, H}, gates.dtype());
  // The activations are what backward needs; without a backward they are never stored.
  Tensor acts = rec ? Tensor::empty(gates.shape(), gates.dtype()) : Tensor();
  dispatch_float("lstm_cell_fused", gates.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = gates.data<T>();
    const T* cp = c_prev.data<T>();
    T* h = hc.data<T>();
    T* c = h + B * H;
    T* a = rec ? acts.data<T>() : nullptr;
    for (std::int64_t b = 0; b < B; ++b) {
      lstm_row_forward<T>(g + b * 4 * H, cp + b * H, h + b * H, c + b * H, a ? a + b * 4 * H : nullptr, H);
    }
    return 0;
  });
  if (rec) {
    // d c = g_c + g_h ⊙ o ⊙ (1 - tanh²c);  d gates = [dc ⊙ g ⊙ σ'i, dc ⊙ c_prev ⊙ σ'f, dc ⊙ i ⊙ tanh'g,
    // g_h ⊙ tanh c ⊙ σ'o];  d c_prev = dc ⊙ f
    record("lstm_cell_fused", hc, {&gates, &c_prev},
           // gates is kept for create_graph only: the activations are constants, so that path
           // recomputes them from gates with recorded ops.
           [acts, gates = save(gates, 0), c_prev = save(c_prev, 1), out = save_output(hc)](const Tensor& g, GradSlots& dx) {
             if (is_grad_enabled()) {
               // create_graph: composite_backward through lstm_cell_composite (sigmoid, tanh, mul, add).
               composite_backward({gates.get(), c_prev.get()}, g, dx, [](const std::vector<Tensor>& in) {
                 return detail::lstm_cell_composite(in[0], in[1]);
               });
               return;
             }
             const std::int64_t B = acts.shape()[0], H = acts.shape()[1] / 4;
             Tensor dg = dx.needs(0) ? Tensor::empty(acts.shape(), acts.dtype()) : Tensor();
             Tensor dcp = dx.needs(1) ? Tensor::empty(dx.shape(1), g.dtype()) : Tensor();
             dispatch_float("lstm_cell_fused backward", g.dtype(), [&](auto tag) {
               using T = decltype(tag);
               const T* gh = g.data<T>();
               const T* gc = gh + B * H;
               const T* a = acts.data<T>();
               const T* cp = c_prev.get().data<T>();
               const T* c = out.get().data<T>() + B * H;
               T* pdg = dg.defined() ? dg.data<T>() : nullptr;
               T* pdc = dcp.defined() ? dcp.data<T>() : nullptr;
               for (std::int64_t b = 0; b < B; ++b) {
                 lstm_row_backward<T>(gh + b * H, gc + b * H, a + b * 4 * H, cp + b * H, c + b * H,
                                      pdg ? pdg + b * 4 * H : nullptr, pdc ? pdc + b * H : nullptr, H);
               }
               return 0;
             });
             dx[0] = dg;
             dx[1] = dcp;
           });
  }
  LSTMGatesOut out;
  out.h = half_of(hc, 0);
  out.c = half_of(hc, 1);
  out.hc = std::move(hc);
  return out;
}

namespace {
// gx for a create_graph backward: kept itself, or recomputed from its projection (recorded,
// so its history reaches x, w_ih and b exactly as gx's did).
struct SavedGx {
  SavedTensor gx, x, w, b;
  Shape shape;
  bool projected = false;
  SavedGx(const Tensor& g, const detail::GxProjection* proj) : shape(g.shape()), projected(proj != nullptr) {
    if (proj) {
      x = save(proj->x, 0);
      w = save(proj->w_ih, 0);
      b = save(proj->b, 0);
    } else {
      gx = save(g, 0);
    }
  }
  Tensor get() const { return projected ? reshape(linear(x.get(), w.get(), b.get()), shape) : gx.get(); }
};

// Elements [first, first + shape.numel()) of the flat buffer `flat` as a tensor of `shape`
// on the same storage; its backward adds the gradient into that range of flat's.
Tensor flat_part(const Tensor& flat, std::int64_t first, const Shape& shape, const char* name) {
  const TensorImpl& t = *flat.impl();
  const std::int64_t esz = static_cast<std::int64_t>(dtype_size(t.dtype));
  Tensor v(std::make_shared<TensorImpl>(shape, t.dtype, t.storage, static_cast<char*>(t.data) + first * esz));
  if (needs_record({&flat})) {
    // d flat = g in [first, first + n), zeros elsewhere
    record(name, v, {&flat}, [first](const Tensor& g, GradSlots& dx) { dx.set_range(0, g, 0, first); });
  }
  return v;
}

// The packed kernels, defined with the rest of the packed layout below.
template <class T>
void lstm_packed_backward(const PackedLayout& p, std::int64_t H, bool reverse, const T* g, const T* acts, const T* C,
                          const T* y, const T* W, const T* h0, const T* c0, T* dgx, T* dw, T* dh0, T* dc0, T* DH,
                          T* DC);
template <class T>
void lstm_packed_backward_tangent(const PackedLayout& p, std::int64_t H, bool reverse, const T* acts, const T* C,
                                  const T* y, const T* W, const T* h0, const T* c0, const T* dgx, const T* DH,
                                  const T* DC, const T* ugx, const T* uW, const T* uh0, const T* uc0, T* rgx, T* rw,
                                  T* rh0, T* rc0, T* rg);

// The first-order gradients of lstm_sequence (lay null) or lstm_sequence_packed as recorded
// ops (the composite recurrence differentiated with create_graph), packed as the
// second-order node's output [d gx, d W_hh, d h0, d c0] (d h0, d c0: zeros without h0, c0).
// in: gx, w_hh, h0, c0, g. want[j]: input j is differentiated by the caller
// (composite_backward aliased it).
Tensor lstm_grads_composite(const std::vector<Tensor>& in, const std::array<bool, 5>& want, bool has_h0, bool has_c0,
                            const PackedLayout* lay, bool reverse) {
  const std::int64_t H = in[1].shape()[1], BH = (lay ? lay->B : in[0].shape()[1]) * H;
  std::vector<Tensor> xs(in.begin(), in.begin() + 4);
  for (std::size_t j = 0; j < 4; ++j) {
    // An input the caller does not differentiate still has a gradient here (its part of
    // the output depends on the others): a recorded identity over a fresh leaf, so that
    // this walk neither reaches the outer graph nor mixes leaves with recorded targets.
    if (!want[j] && xs[j].defined()) xs[j] = mul(xs[j].detach().requires_grad_(), 1.0);
  }
  const Tensor gy = want[4] ? in[4] : in[4].detach();
  const Tensor out = lay ? detail::lstm_packed_composite(xs[0], xs[1], xs[2], xs[3], *lay, reverse)
                         : detail::lstm_sequence_composite(xs[0], xs[1], xs[2], xs[3], reverse);
  std::vector<Tensor> targets{xs[0], xs[1]};
  if (has_h0) targets.push_back(xs[2]);
  if (has_c0) targets.push_back(xs[3]);
  const std::vector<Tensor> gr = grad({out}, targets, {gy}, {.create_graph = true, .allow_unused = true});
  const Dtype dt = in[0].dtype();
  auto part = [&](std::size_t q, std::int64_t n) {
    return q < gr.size() && gr[q].defined() ? flatten(gr[q]) : zeros(Shape{n}, dt);
  };
  return concat({part(0, in[0].numel()), part(1, in[1].numel()), has_h0 ? part(2, BH) : zeros(Shape{BH}, dt),
                 has_c0 ? part(has_h0 ? 3 : 2, BH) : zeros(Shape{BH}, dt)},
                0);
}

// The backward of lstm_sequence (lay null) or lstm_sequence_packed under create_graph: the
// first-order gradients by the fused kernel, recorded as ONE node (inputs gx -- or x, w_ih,
// b when gx was projected: the node needs no gx values, only the edges, so gx is not
// recomputed -- then w_hh, h0, c_init, g; output the flat [d gx, d W_hh, d h0, d c0]) whose
// own backward is the fused second-order kernel. Fills the op's dx with views of that output.
void lstm_grad_graph(const Tensor& acts, const Tensor& cs, const SavedTensor& so,
                     const std::shared_ptr<const SavedGx>& sgx, const Tensor& w_hh, const Tensor& h0,
                     const Tensor& c_init, bool has_c0, const Tensor& g, const std::shared_ptr<const PackedLayout>& lay,
                     bool reverse, GradSlots& dx) {
  const std::int64_t G = acts.shape()[acts.ndim() - 1], H = G / 4, B = lay ? lay->B : acts.shape()[1];
  const std::int64_t n_gx = acts.numel(), n_w = G * H, n_s = B * H;
  const Dtype dt = acts.dtype();
  const bool has_h0 = h0.defined();
  Tensor flat = Tensor::empty(Shape{n_gx + n_w + 2 * n_s}, dt);
  // Every step's total d h and d c: the second order differentiates the recurrence through them.
  Tensor dh_all = Tensor::empty(cs.shape(), dt), dc_all = Tensor::empty(cs.shape(), dt);
  dispatch_float("lstm_sequence backward", dt, [&](auto tag) {
    using T_ = decltype(tag);
    T_* f = flat.data<T_>();
    const Tensor& out = so.get();
    const T_* ph0 = has_h0 ? h0.data<T_>() : nullptr;
    T_* dh0 = has_h0 ? f + n_gx + n_w : nullptr;
    T_* dc0 = has_c0 ? f + n_gx + n_w + n_s : nullptr;
    if (lay) {
      lstm_packed_backward<T_>(*lay, H, reverse, g.data<T_>(), acts.data<T_>(), cs.data<T_>(), out.data<T_>(),
                               w_hh.data<T_>(), ph0, c_init.data<T_>(), f, f + n_gx, dh0, dc0, dh_all.data<T_>(),
                               dc_all.data<T_>());
    } else {
      lstm_sequence_backward<T_>(SeqDims{acts.shape()[0], B, H, reverse}, g.data<T_>(), acts.data<T_>(),
                                 cs.data<T_>(), out.data<T_>(), w_hh.data<T_>(), ph0, c_init.data<T_>(), f, f + n_gx,
                                 dh0, dc0, dh_all.data<T_>(), dc_all.data<T_>());
    }
    if (!has_h0) std::fill(f + n_gx + n_w, f + n_gx + n_w + n_s, T_(0));
    if (!has_c0) std::fill(f + n_gx + n_w + n_s, f + n_gx + n_w + 2 * n_s, T_(0));
    return 0;
  });
  // The node's inputs: gx's (gx, or x, w_ih, b), then w_hh, h0, c_init, g from index o.
  std::vector<Tensor> ins;
  if (sgx->projected) {
    ins = {sgx->x.get(), sgx->w.get(), sgx->b.get()};
  } else {
    ins = {sgx->gx.get()};
  }
  ins.insert(ins.end(), {w_hh, h0, c_init, g});
  if (needs_record(std::span<const Tensor>(ins))) {
    // d g = J_F u (the LSTM's forward tangent along u); d (gx, W_hh, h0, c0) = d/dε J_F(θ+εu)ᵀ g;
    // projected: d x = d gx · W_ih, d W_ih = d gxᵀ · x, d b = Σ_rows d gx
    record(lay ? "lstm_sequence_packed_backward" : "lstm_sequence_backward", flat, std::span<const Tensor>(ins),
           [acts, cs, so, dh_all, dc_all, sflat = save_output(flat), sgx, sw = save(w_hh, 1), sh = save(h0, 2),
            sc = save(c_init, 3), sg = save(g, 4), gshape = g.shape(), has_c0, lay,
            reverse](const Tensor& u, GradSlots& dx) {
             const bool has_h0 = sh.defined();
             const std::size_t o = sgx->projected ? 3 : 1;
             if (is_grad_enabled()) {
               // create_graph (third order): the first-order gradients rebuilt from recorded ops.
               std::vector<Tensor> inputs;
               if (sgx->projected) {
                 inputs = {sgx->x.get(), sgx->w.get(), sgx->b.get()};
               } else {
                 inputs = {sgx->gx.get()};
               }
               inputs.insert(inputs.end(), {sw.get(), sh.get(), sc.get(), sg.get()});
               bool want_gx = false;
               for (std::size_t j = 0; j < o; ++j) want_gx |= dx.needs(j);
               const std::array<bool, 5> want{want_gx, dx.needs(o), dx.needs(o + 1), dx.needs(o + 2), dx.needs(o + 3)};
               composite_backward(inputs, u, dx,
                                  [want, has_h0, has_c0, lay, reverse, o, shape = sgx->shape](const std::vector<Tensor>& in) {
                                    const Tensor gx = o == 3 ? reshape(linear(in[0], in[1], in[2]), shape) : in[0];
                                    return lstm_grads_composite({gx, in[o], in[o + 1], in[o + 2], in[o + 3]}, want,
                                                                has_h0, has_c0, lay.get(), reverse);
                                  });
               return;
             }
             const std::int64_t G = acts.shape()[acts.ndim() - 1], H = G / 4, B = lay ? lay->B : acts.shape()[1];
             const std::int64_t n_gx = acts.numel(), n_w = G * H, n_s = B * H;
             const Dtype dt = acts.dtype();
             const Tensor& w_hh = sw.get();
             const Tensor& h0 = sh.get();
             const Tensor& c_init = sc.get();
             const Tensor& out = so.get();
             const Tensor& first = sflat.get();
             Tensor rgx = Tensor::empty(acts.shape(), dt);
             Tensor rg = Tensor::empty(gshape, dt);
             Tensor rw = dx.needs(o) ? Tensor::empty(Shape{G, H}, dt) : Tensor();
             Tensor rh0 = dx.needs(o + 1) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             Tensor rc0 = dx.needs(o + 2) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             Tensor rx = sgx->projected && dx.needs(0) ? Tensor::empty(dx.shape(0), dt) : Tensor();
             Tensor rwih = sgx->projected && dx.needs(1) ? Tensor::empty(dx.shape(1), dt) : Tensor();
             Tensor rb = sgx->projected && dx.needs(2) ? Tensor::empty(dx.shape(2), dt) : Tensor();
             dispatch_float("lstm_sequence backward backward", dt, [&](auto tag) {
               using T_ = decltype(tag);
               auto ptr = [](Tensor& t) { return t.defined() ? t.data<T_>() : nullptr; };
               const T_* pu = u.data<T_>();
               const T_* uh0 = has_h0 ? pu + n_gx + n_w : nullptr;
               const T_* uc0 = has_c0 ? pu + n_gx + n_w + n_s : nullptr;
               if (lay) {
                 lstm_packed_backward_tangent<T_>(*lay, H, reverse, acts.data<T_>(), cs.data<T_>(), out.data<T_>(),
                                                  w_hh.data<T_>(), has_h0 ? h0.data<T_>() : nullptr,
                                                  c_init.data<T_>(), first.data<T_>(), dh_all.data<T_>(),
                                                  dc_all.data<T_>(), pu, pu + n_gx, uh0, uc0, rgx.data<T_>(),
                                                  ptr(rw), ptr(rh0), ptr(rc0), rg.data<T_>());
               } else {
                 lstm_sequence_backward_tangent<T_>(
                     SeqDims{acts.shape()[0], B, H, reverse}, acts.data<T_>(), cs.data<T_>(), out.data<T_>(),
                     w_hh.data<T_>(), has_h0 ? h0.data<T_>() : nullptr, c_init.data<T_>(), first.data<T_>(),
                     dh_all.data<T_>(), dc_all.data<T_>(), pu, pu + n_gx, uh0, uc0, rgx.data<T_>(), ptr(rw),
                     ptr(rh0), ptr(rc0), rg.data<T_>());
               }
               if (!sgx->projected) return 0;
               // d gx [rows, 4H] through gx = x · W_ihᵀ + b: the linear's backward
               const std::int64_t rows = n_gx / G;
               const T_* pg = rgx.data<T_>();
               if (rx.defined()) {
                 const Tensor& w_ih = sgx->w.get();
                 const std::int64_t I = w_ih.shape()[1];
                 gemm<T_>(false, false, rows, I, G, T_(1), pg, G, w_ih.data<T_>(), I, T_(0), rx.data<T_>(), I);
               }
               if (rwih.defined()) {
                 const Tensor& x = sgx->x.get();
                 const std::int64_t I = x.numel() / rows;
                 gemm<T_>(true, false, G, I, rows, T_(1), pg, G, x.data<T_>(), I, T_(0), rwih.data<T_>(), I);
               }
               if (rb.defined()) {
                 T_* pb = rb.data<T_>();
                 std::fill(pb, pb + G, T_(0));
                 for (std::int64_t r = 0; r < rows; ++r) {
                   for (std::int64_t j = 0; j < G; ++j) pb[j] += pg[r * G + j];
                 }
               }
               return 0;
             });
             if (sgx->projected) {
               dx[0] = rx;
               dx[1] = rwih;
               dx[2] = rb;
             } else if (dx.needs(0)) {
               dx[0] = rgx;
             }
             dx[o] = rw;
             dx[o + 1] = rh0;
             dx[o + 2] = rc0;
             if (dx.needs(o + 3)) dx[o + 3] = rg;
           });
  }
  if (dx.needs(0)) {
    dx[0] = flat_part(flat, 0, acts.shape(), lay ? "lstm_sequence_packed_backward_gx" : "lstm_sequence_backward_gx");
  }
  if (dx.needs(1)) {
    dx[1] = flat_part(flat, n_gx, Shape{G, H}, lay ? "lstm_sequence_packed_backward_w" : "lstm_sequence_backward_w");
  }
  if (dx.needs(2)) {
    dx[2] = flat_part(flat, n_gx + n_w, Shape{B, H},
                      lay ? "lstm_sequence_packed_backward_h0" : "lstm_sequence_backward_h0");
  }
  if (dx.needs(3)) {
    dx[3] = flat_part(flat, n_gx + n_w + n_s, Shape{B, H},
                      lay ? "lstm_sequence_packed_backward_c0" : "lstm_sequence_backward_c0");
  }
}
}  // namespace

LSTMSequenceOut lstm_sequence(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0, bool reverse) {
  return detail::lstm_sequence(gx, w_hh, h0, c0, reverse, nullptr);
}

LSTMSequenceOut detail::lstm_sequence(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                      bool reverse, const GxProjection* proj) {
  check_lstm_sequence_shapes(gx, w_hh, h0, c0);
  const std::int64_t T = gx.shape()[0], B = gx.shape()[1], G = gx.shape()[2], H = G / 4;
  const Dtype dt = gx.dtype();
  const bool rec = needs_record({&gx, &w_hh, &h0, &c0});
  Tensor packed = Tensor::empty(Shape{T + 1, B, H}, dt);
  // Recording keeps every step's activated gates and cell state for backward; otherwise
  // one step's gates are scratch and the running c lives in packed's last row.
  Tensor acts = Tensor::empty(rec ? Shape{T, B, G} : Shape{B, G}, dt);
  Tensor cs = rec ? Tensor::empty(Shape{T, B, H}, dt) : Tensor();
  const Tensor c_init = c0.defined() ? c0 : zeros(Shape{B, H}, dt);
  if (B * H > 0) {
    dispatch_float("lstm_sequence", dt, [&](auto tag) {
      using T_ = decltype(tag);
      lstm_sequence_forward<T_>(SeqDims{T, B, H, reverse}, gx.data<T_>(), w_hh.data<T_>(),
                                h0.defined() ? h0.data<T_>() : nullptr, c_init.data<T_>(), packed.data<T_>(),
                                acts.data<T_>(), rec ? cs.data<T_>() : nullptr);
      return 0;
    });
  }
  if (rec) {
    // Per step, latest first, with dh = dy_t + dgates_{t+1}·W_hh and dc carried:
    //   dgates_t, dc = lstm_cell_fused's backward;  d gx[t] = dgates_t
    //   d W_hh = Σ_t dgates_tᵀ · h_prev(t)  (one GEMM over the steps after the first),
    //   d h0 = dgates_first · W_hh,  d c0 = dc after the first step
    record("lstm_sequence", packed, {&gx, &w_hh, &h0, &c0},
           // Four SavedTensors and two buffers: over BackwardFn's inline room, so this closure
           // is allocated, once per sequence.
           // gx (or how it was made) is kept for create_graph only: the saved gates are activated
           // constants.
           [acts, cs, sg = std::make_shared<const SavedGx>(gx, proj), sw = save(w_hh, 1), sh = save(h0, 2), sc = save(c_init, 3),
            so = save_output(packed), has_c0 = c0.defined(), reverse](const Tensor& g, GradSlots& dx) {
             if (is_grad_enabled() && acts.shape()[1] * acts.shape()[2] > 0) {
               // create_graph: the fused kernel, recorded as one node with a fused second order.
               lstm_grad_graph(acts, cs, so, sg, sw.get(), sh.get(), sc.get(), has_c0, g, nullptr, reverse, dx);
               return;
             }
             if (is_grad_enabled()) {
               // create_graph, no rows or no units: composite_backward through lstm_sequence_composite.
               composite_backward({sg->get(), sw.get(), sh.get(), sc.get()}, g, dx,
                                  [reverse](const std::vector<Tensor>& in) {
                                    return detail::lstm_sequence_composite(in[0], in[1], in[2], in[3], reverse);
                                  });
               return;
             }
             const std::int64_t T = acts.shape()[0], B = acts.shape()[1], H = acts.shape()[2] / 4;
             const Dtype dt = acts.dtype();
             Tensor dgx = Tensor::empty(acts.shape(), dt);
             Tensor dw = dx.needs(1) ? Tensor::empty(dx.shape(1), dt) : Tensor();
             Tensor dh0 = dx.needs(2) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             Tensor dc0 = dx.needs(3) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             if (B * H == 0) {
               // No rows or no units: nothing flows; W_hh (non-empty when B = 0) gets zeros.
               if (dw.defined()) dw = zeros(dx.shape(1), dt);
             } else {
               // c_init is c0 (input 3) or zeros made by the forward; the output rows y, c_n
               // and h_n are views of packed, so writing into them is caught as well.
               const Tensor& w_hh = sw.get();
               const Tensor& h0 = sh.get();
               const Tensor& c_init = sc.get();
               const Tensor& out = so.get();
               dispatch_float("lstm_sequence backward", dt, [&](auto tag) {
                 using T_ = decltype(tag);
                 auto ptr = [](Tensor& t) { return t.defined() ? t.data<T_>() : nullptr; };
                 lstm_sequence_backward<T_>(SeqDims{T, B, H, reverse}, g.data<T_>(), acts.data<T_>(), cs.data<T_>(),
                                            out.data<T_>(), w_hh.data<T_>(), h0.defined() ? h0.data<T_>() : nullptr,
                                            c_init.data<T_>(), dgx.data<T_>(), ptr(dw), ptr(dh0), ptr(dc0), nullptr,
                                          nullptr);
                 return 0;
               });
             }
             if (dx.needs(0)) dx[0] = dgx;
             dx[1] = dw;
             dx[2] = dh0;
             dx[3] = dc0;
           });
  }
  LSTMSequenceOut o;
  o.y = packed_rows(packed, 0, Shape{T, B, H}, "lstm_sequence_y");
  o.c_n = packed_rows(packed, T, Shape{B, H}, "lstm_sequence_c");
  o.h_n = select(o.y, 0, reverse ? 0 : T - 1);
  o.packed = std::move(packed);
  return o;
}

Tensor gru_cell_fused(const Tensor& gi, const Tensor& gh, const Tensor& h_prev) {
  check_gru_shapes(gi, gh, h_prev);
  const std::int64_t B = gi.shape()[0], H = gi.shape()[1] / 3;
  const bool rec = needs_record({&gi, &gh, &h_prev});
  Tensor h = Tensor::empty(h_prev.shape(), gi.dtype());
  Tensor acts = rec ? Tensor::empty(gi.shape(), gi.dtype()) : Tensor();
  dispatch_float("gru_cell_fused", gi.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pi = gi.data<T>();
    const T* ph = gh.data<T>();
    const T* hp = h_prev.data<T>();
    T* y = h.data<T>();
    T* a = rec ? acts.data<T>() : nullptr;
    for (std::int64_t b = 0; b < B; ++b) {
      gru_row_forward<T>(pi + b * 3 * H, ph + b * 3 * H, hp + b * H, y + b * H, a ? a + b * 3 * H : nullptr, H);
    }
    return 0;
  });
  if (rec) {
    // dz = g ⊙ (h_prev - n) ⊙ σ'z,  dn = g ⊙ (1 - z) ⊙ tanh'n,  dr = dn ⊙ gh_n ⊙ σ'r;
    // d gi = [dr, dz, dn],  d gh = [dr, dz, dn ⊙ r],  d h_prev = g ⊙ z
    // gi is kept for create_graph only: r, z, n are saved as constants.
    record("gru_cell_fused", h, {&gi, &gh, &h_prev}, [acts, gi = save(gi, 0), gh = save(gh, 1), h_prev = save(h_prev, 2)](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {
        // create_graph: composite_backward through gru_cell_composite.
        composite_backward({gi.get(), gh.get(), h_prev.get()}, g, dx, [](const std::vector<Tensor>& in) {
          return detail::gru_cell_composite(in[0], in[1], in[2]);
        });
        return;
      }
      const std::int64_t B = acts.shape()[0], H = acts.shape()[1] / 3;
      Tensor dgi = dx.needs(0) ? Tensor::empty(acts.shape(), acts.dtype()) : Tensor();
      Tensor dgh = dx.needs(1) ? Tensor::empty(acts.shape(), acts.dtype()) : Tensor();
      Tensor dhp = dx.needs(2) ? Tensor::empty(dx.shape(2), g.dtype()) : Tensor();
      dispatch_float("gru_cell_fused backward", g.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* pg = g.data<T>();
        const T* a = acts.data<T>();
        const T* ph = gh.get().data<T>();
        const T* hp = h_prev.get().data<T>();
        T* pi = dgi.defined() ? dgi.data<T>() : nullptr;
        T* pgh = dgh.defined() ? dgh.data<T>() : nullptr;
        T* php = dhp.defined() ? dhp.data<T>() : nullptr;
        for (std::int64_t b = 0; b < B; ++b) {
          gru_row_backward<T>(pg + b * H, a + b * 3 * H, ph + b * 3 * H, hp + b * H, pi ? pi + b * 3 * H : nullptr,
                              pgh ? pgh + b * 3 * H : nullptr, php ? php + b * H : nullptr, H);
        }
        return 0;
      });
      dx[0] = dgi;
      dx[1] = dgh;
      dx[2] = dhp;
    });
  }
  return h;
}

// ---------------------------------------------------------------------------
// step_views: the per-step views of a layer's input projection
// ---------------------------------------------------------------------------

namespace {

// Where the per-step gradients of one projection are gathered during a backward pass.
struct StepGrads {
  Tensor buf;  // [T*B, G]
  std::int64_t last = std::numeric_limits<std::int64_t>::max();  // order index of the last step written
  // Under create_graph: each step's gradient (with history) by time index, and each step's
  // row count (packed_step_views; empty: every step has g's rows).
  std::vector<Tensor> parts;
  std::vector<std::int64_t> rows;
};

// The create_graph form of the shared buffer: step t's g is kept as it is (a range write
// would be a constant), and the view processed first (k = 0) hands x the steps joined in
// time order by one recorded concat, zeros for steps the backward did not reach. A
// recorded range per step instead would cost a full-size [T*B, G] tensor per step: O(T²).
void keep_step_grad(StepGrads& s, std::int64_t k, std::int64_t t, std::size_t steps, const Tensor& g,
                    GradSlots& dx) {
  if (s.parts.empty() || k >= s.last) s.parts.assign(steps, Tensor());
  s.last = k;
  s.parts[static_cast<std::size_t>(t)] = g;
  if (k != 0) return;
  for (std::size_t j = 0; j < steps; ++j) {
    if (s.parts[j].defined()) continue;
    const std::int64_t n = s.rows.empty() ? g.shape()[0] : s.rows[j];
    s.parts[j] = zeros(Shape{n, g.shape()[1]}, g.dtype());
  }
  dx[0] = steps == 1 ? s.parts[0] : concat(s.parts, 0);
  s.parts.clear();
  s.last = std::numeric_limits<std::int64_t>::max();
}

}  // namespace

// Making each step a narrow() of x would cost, in backward, one zero-padded [T*B, G]
// gradient per step: O(T²) time and memory. Instead every view's backward copies its
// gradient into one shared buffer and gives x nothing, except the view processed first
// (k = 0), which hands the whole buffer to x. That is correct because the view of step
// k = 0 is recorded first, so backward walks it last, and because a recurrence reaches
// it whenever any step is reached (every step depends on the one processed before it).
std::vector<Tensor> step_views(const Tensor& x, std::int64_t T, bool reverse) {
  detail::check_defined("step_views", x);
  if (x.ndim() != 2 || T <= 0 || x.shape()[0] % T != 0) {
    throw ShapeError(fmt::format("step_views: x {} must be 2-D [T*B, G] with T = {} > 0 dividing its rows",
                                 x.shape().str(), T));
  }
  const TensorImpl& xi = *x.impl();
  const std::int64_t B = xi.shape[0] / T, G = xi.shape[1];
  const std::int64_t step_bytes = B * G * static_cast<std::int64_t>(dtype_size(xi.dtype));
  const bool rec = needs_record({&x});
  auto grads = rec ? std::make_shared<StepGrads>() : nullptr;
  std::vector<Tensor> views;
  views.reserve(static_cast<std::size_t>(T));
  for (std::int64_t k = 0; k < T; ++k) {
    const std::int64_t t = reverse ? T - 1 - k : k;
    void* first = static_cast<char*>(xi.data) + t * step_bytes;
    Tensor v(detail::make_impl(Shape{B, G}, xi.dtype, xi.storage, first));
    if (rec) {
      // d x[t] = g in rows of step t (gathered for all steps, handed over once by k = 0)
      record("rnn_step", v, {&x}, [grads, k, t, T, step_bytes](const Tensor& g, GradSlots& dx) {
        if (is_grad_enabled()) {
          keep_step_grad(*grads, k, t, static_cast<std::size_t>(T), g, dx);
          return;
        }
        StepGrads& s = *grads;
        // Steps are walked in decreasing k, so k >= last means a new backward pass.
        if (!s.buf.defined() || k >= s.last) s.buf = zeros(Shape{T * g.shape()[0], g.shape()[1]}, g.dtype());
        s.last = k;
        std::memcpy(static_cast<char*>(s.buf.data_ptr()) + t * step_bytes, g.data_ptr(),
                    static_cast<std::size_t>(step_bytes));
        if (k == 0) {
          dx[0] = std::move(s.buf);
          s.buf = Tensor();
          s.last = std::numeric_limits<std::int64_t>::max();
        }
      });
    }
    views.push_back(std::move(v));
  }
  return views;
}

}  // namespace xg

// ---------------------------------------------------------------------------
// Variable-length batches: the packed layout
// ---------------------------------------------------------------------------

namespace xg {

bool PackedLayout::sorted() const {
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (order[i] != static_cast<std::int64_t>(i)) return false;
  }
  return true;
}

PackedLayout packed_layout(const std::vector<std::int64_t>& lengths, std::int64_t T) {
  PackedLayout p;
  p.T = T;
  p.B = static_cast<std::int64_t>(lengths.size());
  p.order.resize(lengths.size());
  for (std::size_t i = 0; i < lengths.size(); ++i) p.order[i] = static_cast<std::int64_t>(i);
  std::stable_sort(p.order.begin(), p.order.end(), [&](std::int64_t a, std::int64_t b) {
    return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(b)];
  });
  p.batch_sizes.assign(static_cast<std::size_t>(T), 0);
  for (std::int64_t len : lengths) {
    for (std::int64_t t = 0; t < std::min(len, T); ++t) ++p.batch_sizes[static_cast<std::size_t>(t)];
  }
  p.offsets.assign(static_cast<std::size_t>(T) + 1, 0);
  for (std::int64_t t = 0; t < T; ++t) {
    p.offsets[static_cast<std::size_t>(t) + 1] = p.offsets[static_cast<std::size_t>(t)] + p.batch_sizes[static_cast<std::size_t>(t)];
    if (p.batch_sizes[static_cast<std::size_t>(t)] > 0) p.steps = t + 1;
  }
  return p;
}

namespace {

// Copies between padded [T, B, F] (or [B, T, F]) and packed [N, F] rows; to_packed picks
// the direction. The padded side is not touched outside the real rows.
void copy_packed(const PackedLayout& p, bool batch_first, std::size_t row_bytes, char* padded, char* packed,
                 bool to_packed) {
  for (std::int64_t t = 0; t < p.steps; ++t) {
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)], o = p.offsets[static_cast<std::size_t>(t)];
    for (std::int64_t i = 0; i < b; ++i) {
      const std::int64_t src = p.order[static_cast<std::size_t>(i)];
      const std::int64_t prow = batch_first ? src * p.T + t : t * p.B + src;
      char* pad = padded + static_cast<std::size_t>(prow) * row_bytes;
      char* pk = packed + static_cast<std::size_t>(o + i) * row_bytes;
      if (to_packed) {
        std::memcpy(pk, pad, row_bytes);
      } else {
        std::memcpy(pad, pk, row_bytes);
      }
    }
  }
}

void check_padded(const char* op, const Tensor& x, const PackedLayout& p, bool batch_first) {
  detail::check_defined(op, x);
  const Shape want = batch_first ? Shape{p.B, p.T} : Shape{p.T, p.B};
  if (x.ndim() != 3 || x.shape()[0] != want[0] || x.shape()[1] != want[1]) {
    throw ShapeError(fmt::format("{}: x {}: expected [{}, {}, F] ({}) for {} sequences of at most {} steps", op,
                                 x.shape().str(), want[0], want[1], batch_first ? "[B, T, F]" : "[T, B, F]", p.B,
                                 p.T));
  }
}

Tensor pad_packed_impl(const Tensor& packed, const PackedLayout& p, bool batch_first);

Tensor pack_padded_impl(const Tensor& x, const PackedLayout& p, bool batch_first) {
  check_padded("pack_padded", x, p, batch_first);
  const std::int64_t F = x.shape()[2];
  Tensor out = Tensor::empty(Shape{p.rows(), F}, x.dtype());
  const std::size_t row_bytes = static_cast<std::size_t>(F) * dtype_size(x.dtype());
  if (row_bytes > 0) {
    copy_packed(p, batch_first, row_bytes, static_cast<char*>(x.impl()->data), static_cast<char*>(out.data_ptr()),
                true);
  }
  if (needs_record({&x})) {
    record("pack_padded", out, {&x}, [p, batch_first](const Tensor& g, GradSlots& dx) {
      dx[0] = pad_packed_impl(g, p, batch_first);
    });
  }
  return out;
}

Tensor pad_packed_impl(const Tensor& packed, const PackedLayout& p, bool batch_first) {
  detail::check_defined("pad_packed", packed);
  if (packed.ndim() != 2 || packed.shape()[0] != p.rows()) {
    throw ShapeError(fmt::format("pad_packed: packed {}: expected [{}, F] (one row per real step)",
                                 packed.shape().str(), p.rows()));
  }
  const std::int64_t F = packed.shape()[1];
  Tensor out = zeros(batch_first ? Shape{p.B, p.T, F} : Shape{p.T, p.B, F}, packed.dtype());
  const std::size_t row_bytes = static_cast<std::size_t>(F) * dtype_size(packed.dtype());
  if (row_bytes > 0) {
    copy_packed(p, batch_first, row_bytes, static_cast<char*>(out.data_ptr()),
                static_cast<char*>(packed.impl()->data), false);
  }
  if (needs_record({&packed})) {
    record("pad_packed", out, {&packed}, [p, batch_first](const Tensor& g, GradSlots& dx) {
      dx[0] = pack_padded_impl(g, p, batch_first);
    });
  }
  return out;
}

// ---- LSTM over a packed batch ----

// hn, cn [B, H] hold h0 and c0 on entry and run as the state of every sorted row; a row
// past its last step is not touched again, so they end as every sequence's final state.
// With C (recording): acts [N, 4H] and C [N, H] keep every step; else acts is scratch [B, 4H].
template <class T>
void lstm_packed_forward(const PackedLayout& p, std::int64_t H, bool reverse, bool has_h0, const T* gx, const T* W,
                         T* y, T* hn, T* cn, T* acts, T* C) {
  const std::int64_t G = 4 * H;
  std::optional<detail::PackedB<T>> wt;
  if (p.steps > 1 && detail::packed_gemm_pays(p.B, G, H)) wt.emplace(true, H, G, W, H);
  for (std::int64_t k = 0; k < p.steps; ++k) {
    const std::int64_t t = reverse ? p.steps - 1 - k : k;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)], o = p.offsets[static_cast<std::size_t>(t)];
    T* a = C ? acts + o * G : acts;
    std::memcpy(a, gx + o * G, static_cast<std::size_t>(b * G) * sizeof(T));
    if (k > 0 || has_h0) {
      // gates[b, 4H] += h_prev[b, H] . W_hhᵀ: the b running rows only
      if (wt) {
        wt->gemm_acc(b, hn, H, a, G);
      } else {
        gemm<T>(false, true, b, G, H, T(1), hn, H, W, H, T(1), a, G);
      }
    }
    for (std::int64_t r = 0; r < b; ++r) {
      lstm_row_forward<T>(a + r * G, cn + r * H, hn + r * H, cn + r * H, C ? a + r * G : nullptr, H);
    }
    std::memcpy(y + o * H, hn, static_cast<std::size_t>(b * H) * sizeof(T));
    if (C) std::memcpy(C + o * H, cn, static_cast<std::size_t>(b * H) * sizeof(T));
  }
}

// g [N + 2B, H] (rows: dy, d h_n, d c_n) -> dgx [N, 4H]; dw, dh0, dc0 when not null.
// h0 may be null (zeros); c0 is never null. DH, DC [N, H] (when not null) keep every
// packed row's total d h and d c for a second-order backward.
template <class T>
void lstm_packed_backward(const PackedLayout& p, std::int64_t H, bool reverse, const T* g, const T* acts, const T* C,
                          const T* y, const T* W, const T* h0, const T* c0, T* dgx, T* dw, T* dh0, T* dc0, T* DH,
                          T* DC) {
  const std::int64_t B = p.B, G = 4 * H, N = p.rows();
  std::vector<T> dh_buf(g + N * H, g + (N + B) * H), dc_buf(g + (N + B) * H, g + (N + 2 * B) * H);
  T* dh = dh_buf.data();
  T* dc = dc_buf.data();
  // h_prev of every packed row, aligned with dgx, so d W_hh is one GEMM over all steps.
  std::vector<T> hprev(dw ? static_cast<std::size_t>(N * H) : 0);
  std::optional<detail::PackedB<T>> wp;
  if (p.steps > 1 && detail::packed_gemm_pays(B, H, G)) wp.emplace(false, G, H, W, H);
  auto dh_prev = [&](std::int64_t m, const T* dg, T* out) {  // out[m, H] = dg[m, 4H] . W_hh
    if (m == 0) return;
    if (wp) {
      std::fill(out, out + m * H, T(0));
      wp->gemm_acc(m, dg, G, out, H);
    } else {
      gemm<T>(false, false, m, H, G, T(1), dg, G, W, H, T(0), out, H);
    }
  };
  if (dh0) std::fill(dh0, dh0 + B * H, T(0));
  if (dc0) std::fill(dc0, dc0 + B * H, T(0));
  for (std::int64_t k = p.steps - 1; k >= 0; --k) {
    const std::int64_t t = reverse ? p.steps - 1 - k : k;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)], o = p.offsets[static_cast<std::size_t>(t)];
    // Rows [0, nb) continue from the step processed before this one; rows [nb, b) start
    // here from h0 / c0 (all rows at t = 0 forward; the sequences ending at t in reverse).
    const std::int64_t tp = reverse ? t + 1 : t - 1;
    const std::int64_t nb = k == 0 ? 0 : std::min(b, p.batch_sizes[static_cast<std::size_t>(tp)]);
    const std::int64_t op = k == 0 ? 0 : p.offsets[static_cast<std::size_t>(tp)];
    for (std::int64_t j = 0; j < b * H; ++j) dh[j] += g[o * H + j];
    if (DH) std::memcpy(DH + o * H, dh, static_cast<std::size_t>(b * H) * sizeof(T));
    T* dg = dgx + o * G;
    for (std::int64_t r = 0; r < b; ++r) {
      const T* cp = r < nb ? C + (op + r) * H : c0 + r * H;
      // dc in place: the kernel reads a lane's d c before it stores d c_prev there.
      lstm_row_backward<T>(dh + r * H, dc + r * H, acts + (o + r) * G, cp, C + (o + r) * H, dg + r * G, dc + r * H,
                           H, DC ? DC + (o + r) * H : nullptr);
    }
    if (dc0 && b > nb) std::memcpy(dc0 + nb * H, dc + nb * H, static_cast<std::size_t>((b - nb) * H) * sizeof(T));
    dh_prev(nb, dg, dh);
    if (dh0) dh_prev(b - nb, dg + nb * G, dh0 + nb * H);
    if (dw) {
      T* hp = hprev.data() + o * H;
      std::memcpy(hp, y + op * H, static_cast<std::size_t>(nb * H) * sizeof(T));
      if (h0) {
        std::memcpy(hp + nb * H, h0 + nb * H, static_cast<std::size_t>((b - nb) * H) * sizeof(T));
      } else {
        std::fill(hp + nb * H, hp + b * H, T(0));
      }
    }
  }
  if (dw) gemm<T>(true, false, G, H, N, T(1), dgx, G, hprev.data(), H, T(0), dw, H);
}

// lstm_sequence_backward_tangent over a packed batch: the same formulas per packed row,
// step t over its b_t rows; h_prev, c_prev (and their tangents) of a row are the previous
// step's same row, or h0 / c0 (u_h0 / u_c0) where its sequence starts. rg [N + 2B, H]:
// rows h'_t, then h'_n, c'_n.
template <class T>
void lstm_packed_backward_tangent(const PackedLayout& p, std::int64_t H, bool reverse, const T* acts, const T* C,
                                  const T* y, const T* W, const T* h0, const T* c0, const T* dgx, const T* DH,
                                  const T* DC, const T* ugx, const T* uW, const T* uh0, const T* uc0, T* rgx, T* rw,
                                  T* rh0, T* rc0, T* rg) {
  const std::int64_t B = p.B, G = 4 * H, N = p.rows(), BH = B * H;
  auto buf = [](std::int64_t n) { return std::vector<T>(static_cast<std::size_t>(n), T(0)); };
  // AT: pre' then the activations' tangents; CT: c'_t; HP, HPT: h_prev and h'_prev per row.
  Scratch<T> at_buf(N * G), ct_buf(N * H), hp_buf(N * H), hpt_buf(N * H), q_buf(N * H);
  // Running state: h', c' forward; d h', d c' backward (d h_n' = d c_n' = 0: g is held fixed).
  std::vector<T> ht_buf = buf(BH), cst_buf = buf(BH), dht_buf = buf(BH), dct_buf = buf(BH), zero_buf = buf(BH);
  T* AT = at_buf.p;
  T* CT = ct_buf.p;
  T* HP = hp_buf.p;
  T* HPT = hpt_buf.p;
  T* Q = q_buf.p;
  T* ht = ht_buf.data();
  T* cst = cst_buf.data();
  T* dht = dht_buf.data();
  T* dct = dct_buf.data();
  const std::size_t bh = static_cast<std::size_t>(BH) * sizeof(T);
  if (uh0) std::memcpy(ht, uh0, bh);
  if (uc0) std::memcpy(cst, uc0, bh);
  if (!uc0) uc0 = zero_buf.data();
  // Step k's rows, and how many of them continue from the step processed before (at op).
  struct Rows {
    std::int64_t b, o, nb, op;
  };
  auto rows = [&p, reverse](std::int64_t k) {
    const std::int64_t t = reverse ? p.steps - 1 - k : k, tp = reverse ? t + 1 : t - 1;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)];
    return Rows{b, p.offsets[static_cast<std::size_t>(t)],
                k == 0 ? 0 : std::min(b, p.batch_sizes[static_cast<std::size_t>(tp)]),
                k == 0 ? 0 : p.offsets[static_cast<std::size_t>(tp)]};
  };
  for (std::int64_t k = 0; k < p.steps; ++k) {
    const Rows s = rows(k);
    std::memcpy(HP + s.o * H, y + s.op * H, static_cast<std::size_t>(s.nb * H) * sizeof(T));
    if (h0) {
      std::memcpy(HP + (s.o + s.nb) * H, h0 + s.nb * H, static_cast<std::size_t>((s.b - s.nb) * H) * sizeof(T));
    } else {
      std::fill(HP + (s.o + s.nb) * H, HP + (s.o + s.b) * H, T(0));
    }
  }

  // Forward tangent: pre' = u_gx + h_prev u_Wᵀ (one GEMM over all rows) + h'_prev W_hhᵀ.
  std::memcpy(AT, ugx, static_cast<std::size_t>(N * G) * sizeof(T));
  gemm<T>(false, true, N, G, H, T(1), HP, H, uW, H, T(1), AT, G);
  std::optional<detail::PackedB<T>> wt;
  if (p.steps > 1 && detail::packed_gemm_pays(B, G, H)) wt.emplace(true, H, G, W, H);
  for (std::int64_t k = 0; k < p.steps; ++k) {
    const Rows s = rows(k);
    T* a = AT + s.o * G;
    std::memcpy(HPT + s.o * H, ht, static_cast<std::size_t>(s.b * H) * sizeof(T));
    if (k > 0 || uh0) {
      if (wt) {
        wt->gemm_acc(s.b, ht, H, a, G);
      } else {
        gemm<T>(false, true, s.b, G, H, T(1), ht, H, W, H, T(1), a, G);
      }
    }
    for (std::int64_t r = 0; r < s.b; ++r) {
      const T* cp = r < s.nb ? C + (s.op + r) * H : c0 + r * H;
      // c' in place: the kernel reads a lane's c'_prev before it stores c'_t there.
      lstm_row_tangent<T>(a + r * G, acts + (s.o + r) * G, cp, cst + r * H, C + (s.o + r) * H, cst + r * H,
                          ht + r * H, H);
    }
    std::memcpy(CT + s.o * H, cst, static_cast<std::size_t>(s.b * H) * sizeof(T));
    std::memcpy(rg + s.o * H, ht, static_cast<std::size_t>(s.b * H) * sizeof(T));
  }
  std::memcpy(rg + N * H, ht, bh);
  std::memcpy(rg + (N + B) * H, cst, bh);

  // Backward tangent, latest first: d h' of a row's previous step = dpre' W_hh + dpre u_W
  // (the dpre u_W terms of all rows: one GEMM).
  gemm<T>(false, false, N, H, G, T(1), dgx, G, uW, H, T(0), Q, H);
  std::optional<detail::PackedB<T>> wp;
  if (p.steps > 1 && detail::packed_gemm_pays(B, H, G)) wp.emplace(false, G, H, W, H);
  auto dh_prev = [&](std::int64_t m, const T* dpt, const T* q, T* out) {  // out[m, H] = q + dpt[m, 4H] . W_hh
    if (m == 0) return;
    std::memcpy(out, q, static_cast<std::size_t>(m * H) * sizeof(T));
    if (wp) {
      wp->gemm_acc(m, dpt, G, out, H);
    } else {
      gemm<T>(false, false, m, H, G, T(1), dpt, G, W, H, T(1), out, H);
    }
  };
  if (rh0) std::fill(rh0, rh0 + BH, T(0));
  if (rc0) std::fill(rc0, rc0 + BH, T(0));
  for (std::int64_t k = p.steps - 1; k >= 0; --k) {
    const Rows s = rows(k);
    T* dpt = rgx + s.o * G;
    for (std::int64_t r = 0; r < s.b; ++r) {
      const std::int64_t row = s.o + r;
      const T* cp = r < s.nb ? C + (s.op + r) * H : c0 + r * H;
      const T* cpt = r < s.nb ? CT + (s.op + r) * H : uc0 + r * H;
      lstm_row_backward_tangent<T>(DH + row * H, DC + row * H, dht + r * H, dct + r * H, acts + row * G, AT + row * G,
                                   cp, cpt, C + row * H, CT + row * H, dpt + r * G, H);
    }
    if (rc0 && s.b > s.nb) {
      std::memcpy(rc0 + s.nb * H, dct + s.nb * H, static_cast<std::size_t>((s.b - s.nb) * H) * sizeof(T));
    }
    dh_prev(s.nb, dpt, Q + s.o * H, dht);
    if (rh0) dh_prev(s.b - s.nb, dpt + s.nb * G, Q + (s.o + s.nb) * H, rh0 + s.nb * H);
  }
  if (rw) {
    // dW_hh' = Σ_rows dpre'ᵀ h_prev + dpreᵀ h'_prev
    gemm<T>(true, false, G, H, N, T(1), rgx, G, HP, H, T(0), rw, H);
    gemm<T>(true, false, G, H, N, T(1), dgx, G, HPT, H, T(1), rw, H);
  }
}

void check_packed_lstm_shapes(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                              const PackedLayout& p) {
  constexpr const char* op = "lstm_sequence_packed";
  detail::check_defined(op, gx);
  detail::check_defined(op, w_hh);
  detail::check_same_float(op, gx, w_hh);
  if (h0.defined()) detail::check_same_float(op, gx, h0);
  if (c0.defined()) detail::check_same_float(op, gx, c0);
  const Shape& gs = gx.shape();
  auto shapes = [&] {
    return fmt::format("gx {}, w_hh {}, h0 {}, c0 {}, {} packed rows, batch {}", gs.str(), w_hh.shape().str(),
                       h0.defined() ? h0.shape().str() : "(zeros)", c0.defined() ? c0.shape().str() : "(zeros)",
                       p.rows(), p.B);
  };
  if (gs.size() != 2 || gs[1] % 4 != 0 || gs[0] != p.rows() || p.steps == 0) {
    throw ShapeError(fmt::format("{}: {}: expected gx [N, 4H] with N = the packed rows > 0", op, shapes()));
  }
  const std::int64_t H = gs[1] / 4;
  if (w_hh.shape() != Shape{4 * H, H}) {
    throw ShapeError(fmt::format("{}: {}: expected w_hh {}", op, shapes(), Shape{4 * H, H}.str()));
  }
  if (h0.defined() != c0.defined()) {
    throw ShapeError(fmt::format("{}: {}: give both h0 and c0, or neither (zeros)", op, shapes()));
  }
  if (h0.defined() && (h0.shape() != Shape{p.B, H} || c0.shape() != Shape{p.B, H})) {
    throw ShapeError(fmt::format("{}: {}: expected h0 and c0 {}", op, shapes(), Shape{p.B, H}.str()));
  }
}

// Rows [first, first + n) of a 2-D node output as an [n, H] tensor on its storage.
Tensor row_block(const Tensor& packed, std::int64_t first, std::int64_t n, const char* name) {
  const TensorImpl& t = *packed.impl();
  const std::int64_t H = t.shape[1];
  const std::int64_t esz = static_cast<std::int64_t>(dtype_size(t.dtype));
  Tensor v(detail::make_impl(Shape{n, H}, t.dtype, t.storage,
                                        static_cast<char*>(t.data) + first * H * esz));
  if (needs_record({&packed})) {
    record(name, v, {&packed}, [first, H, esz](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled()) {  // create_graph: a recorded range, so the gradient keeps g's history
        dx.set_range(0, g, 0, first);
        return;
      }
      const Shape& ps = dx.shape(0);
      Tensor d = zeros(ps, g.dtype());
      std::memcpy(static_cast<char*>(d.data_ptr()) + first * H * esz, g.data_ptr(),
                  static_cast<std::size_t>(g.numel() * esz));
      dx[0] = d;
    });
  }
  return v;
}

}  // namespace

Tensor pack_padded(const Tensor& x, const PackedLayout& p, bool batch_first) {
  return pack_padded_impl(x, p, batch_first);
}

Tensor pad_packed(const Tensor& packed, const PackedLayout& p, bool batch_first) {
  return pad_packed_impl(packed, p, batch_first);
}

LSTMSequenceOut lstm_sequence_packed(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                     const PackedLayout& p, bool reverse) {
  return detail::lstm_sequence_packed(gx, w_hh, h0, c0, p, reverse, nullptr);
}

LSTMSequenceOut detail::lstm_sequence_packed(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                             const PackedLayout& p, bool reverse, const GxProjection* proj) {
  check_packed_lstm_shapes(gx, w_hh, h0, c0, p);
  const std::int64_t N = p.rows(), B = p.B, G = gx.shape()[1], H = G / 4;
  const Dtype dt = gx.dtype();
  const bool rec = needs_record({&gx, &w_hh, &h0, &c0});
  Tensor packed = Tensor::empty(Shape{N + 2 * B, H}, dt);
  Tensor acts = Tensor::empty(rec ? Shape{N, G} : Shape{B, G}, dt);
  Tensor cs = rec ? Tensor::empty(Shape{N, H}, dt) : Tensor();
  const Tensor c_init = c0.defined() ? c0 : zeros(Shape{B, H}, dt);
  if (B * H > 0) {
    dispatch_float("lstm_sequence_packed", dt, [&](auto tag) {
      using T_ = decltype(tag);
      T_* y = packed.data<T_>();
      T_* hn = y + N * H;
      T_* cn = hn + B * H;
      const std::size_t bh = static_cast<std::size_t>(B * H) * sizeof(T_);
      if (h0.defined()) {
        std::memcpy(hn, h0.data<T_>(), bh);
      } else {
        std::fill(hn, hn + B * H, T_(0));
      }
      std::memcpy(cn, c_init.data<T_>(), bh);
      lstm_packed_forward<T_>(p, H, reverse, h0.defined(), gx.data<T_>(), w_hh.data<T_>(), y, hn, cn,
                              acts.data<T_>(), rec ? cs.data<T_>() : nullptr);
      return 0;
    });
  }
  if (rec) {
    // As lstm_sequence's backward, per step over its b_t rows; a sequence's d h_n / d c_n
    // enter at its own last step, and d h0 / d c0 leave at its own first step.
    record("lstm_sequence_packed", packed, {&gx, &w_hh, &h0, &c0},
           // gx (or how it was made) is kept for create_graph only: the saved gates are activated
           // constants.
           [acts, cs, sg = std::make_shared<const SavedGx>(gx, proj), sw = save(w_hh, 1), sh = save(h0, 2), sc = save(c_init, 3),
            so = save_output(packed), lay = std::make_shared<const PackedLayout>(p), has_c0 = c0.defined(),
            reverse](const Tensor& g, GradSlots& dx) {
             if (is_grad_enabled() && lay->B * acts.shape()[1] > 0) {
               // create_graph: the fused kernel, recorded as one node with a fused second order.
               lstm_grad_graph(acts, cs, so, sg, sw.get(), sh.get(), sc.get(), has_c0, g, lay, reverse, dx);
               return;
             }
             if (is_grad_enabled()) {
               // create_graph, no rows or no units: composite_backward through lstm_packed_composite.
               composite_backward({sg->get(), sw.get(), sh.get(), sc.get()}, g, dx,
                                  [lay, reverse](const std::vector<Tensor>& in) {
                                    return detail::lstm_packed_composite(in[0], in[1], in[2], in[3], *lay, reverse);
                                  });
               return;
             }
             const PackedLayout& p = *lay;
             const std::int64_t N = p.rows(), B = p.B, H = acts.shape()[1] / 4;
             const Dtype dt = acts.dtype();
             Tensor dgx = Tensor::empty(acts.shape(), dt);
             Tensor dw = dx.needs(1) ? Tensor::empty(dx.shape(1), dt) : Tensor();
             Tensor dh0 = dx.needs(2) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             Tensor dc0 = dx.needs(3) ? Tensor::empty(Shape{B, H}, dt) : Tensor();
             if (B * H == 0) {
               if (dw.defined()) dw = zeros(dx.shape(1), dt);
             } else {
               const Tensor& w_hh = sw.get();
               const Tensor& h0 = sh.get();
               const Tensor& c_init = sc.get();
               const Tensor& out = so.get();
               dispatch_float("lstm_sequence_packed backward", dt, [&](auto tag) {
                 using T_ = decltype(tag);
                 auto ptr = [](Tensor& t) { return t.defined() ? t.data<T_>() : nullptr; };
                 lstm_packed_backward<T_>(p, H, reverse, g.data<T_>(), acts.data<T_>(), cs.data<T_>(),
                                          out.data<T_>(), w_hh.data<T_>(), h0.defined() ? h0.data<T_>() : nullptr,
                                          c_init.data<T_>(), dgx.data<T_>(), ptr(dw), ptr(dh0), ptr(dc0), nullptr,
                                          nullptr);
                 return 0;
               });
             }
             (void)N;
             if (dx.needs(0)) dx[0] = dgx;
             dx[1] = dw;
             dx[2] = dh0;
             dx[3] = dc0;
           });
  }
  LSTMSequenceOut o;
  o.y = row_block(packed, 0, N, "lstm_sequence_packed_y");
  o.h_n = row_block(packed, N, B, "lstm_sequence_packed_h");
  o.c_n = row_block(packed, N + B, B, "lstm_sequence_packed_c");
  o.packed = std::move(packed);
  return o;
}

std::vector<Tensor> packed_step_views(const Tensor& x, const PackedLayout& p, bool reverse) {
  detail::check_defined("packed_step_views", x);
  if (x.ndim() != 2 || x.shape()[0] != p.rows()) {
    throw ShapeError(fmt::format("packed_step_views: x {} must be 2-D [N, G] with N = {} packed rows",
                                 x.shape().str(), p.rows()));
  }
  const TensorImpl& xi = *x.impl();
  const std::int64_t G = xi.shape[1];
  const std::int64_t row_bytes = G * static_cast<std::int64_t>(dtype_size(xi.dtype));
  const bool rec = needs_record({&x});
  auto grads = rec ? std::make_shared<StepGrads>() : nullptr;
  const std::int64_t S = p.steps;
  if (rec) grads->rows.assign(p.batch_sizes.begin(), p.batch_sizes.begin() + S);
  std::vector<Tensor> views;
  views.reserve(static_cast<std::size_t>(S));
  for (std::int64_t k = 0; k < S; ++k) {
    const std::int64_t t = reverse ? S - 1 - k : k;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)], o = p.offsets[static_cast<std::size_t>(t)];
    Tensor v(detail::make_impl(Shape{b, G}, xi.dtype, xi.storage, static_cast<char*>(xi.data) + o * row_bytes));
    if (rec) {
      // d x rows of step t = g (gathered for all steps, handed over once by k = 0)
      const std::int64_t N = p.rows();
      record("rnn_packed_step", v, {&x}, [grads, k, t, S, o, N, row_bytes](const Tensor& g, GradSlots& dx) {
        if (is_grad_enabled()) {
          keep_step_grad(*grads, k, t, static_cast<std::size_t>(S), g, dx);
          return;
        }
        StepGrads& s = *grads;
        if (!s.buf.defined() || k >= s.last) s.buf = zeros(Shape{N, g.shape()[1]}, g.dtype());
        s.last = k;
        std::memcpy(static_cast<char*>(s.buf.data_ptr()) + o * row_bytes, g.data_ptr(),
                    static_cast<std::size_t>(g.shape()[0] * row_bytes));
        if (k == 0) {
          dx[0] = std::move(s.buf);
          s.buf = Tensor();
          s.last = std::numeric_limits<std::int64_t>::max();
        }
      });
    }
    views.push_back(std::move(v));
  }
  return views;
}

}  // namespace xg

// ---------------------------------------------------------------------------
// The composite forms (detail/composite.hpp): the create_graph paths of the fused nodes
// ---------------------------------------------------------------------------

namespace xg::detail {

namespace {

// One LSTM step from gates [b, 4H] and c_prev [b, H] in recorded ops: c = f c_prev + i g,
// h = o tanh(c).
void lstm_step_ops(const Tensor& gates, const Tensor& c_prev, std::int64_t H, Tensor& h, Tensor& c) {
  const Tensor i = sigmoid(narrow(gates, 1, 0, H));
  const Tensor f = sigmoid(narrow(gates, 1, H, H));
  const Tensor g = tanh(narrow(gates, 1, 2 * H, H));
  const Tensor o = sigmoid(narrow(gates, 1, 3 * H, H));
  c = add(mul(f, c_prev), mul(i, g));
  h = mul(o, tanh(c));
}

}  // namespace

Tensor lstm_cell_composite(const Tensor& gates, const Tensor& c_prev) {
  Tensor h, c;
  lstm_step_ops(gates, c_prev, gates.shape()[1] / 4, h, c);
  return stack({h, c}, 0);
}

Tensor lstm_sequence_composite(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                               bool reverse) {
  const std::int64_t T = gx.shape()[0], H = gx.shape()[2] / 4;
  std::vector<Tensor> hs(static_cast<std::size_t>(T));
  // An undefined h0 is zeros, multiplied like any h: with T = 1, W_hh's (zero) gradient
  // then still comes from a recorded product, not a constant.
  Tensor h = h0.defined() ? h0 : zeros(Shape{gx.shape()[1], H}, gx.dtype());
  Tensor c = c0;
  for (std::int64_t k = 0; k < T; ++k) {
    const std::int64_t t = reverse ? T - 1 - k : k;
    const Tensor gates = add(select(gx, 0, t), linear(h, w_hh));
    lstm_step_ops(gates, c, H, h, c);
    hs[static_cast<std::size_t>(t)] = h;
  }
  return concat({stack(hs, 0), unsqueeze(c, 0)}, 0);
}

Tensor lstm_packed_composite(const Tensor& gx, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                             const PackedLayout& p, bool reverse) {
  const std::int64_t B = p.B, S = p.steps, H = gx.shape()[1] / 4;
  const Dtype dt = gx.dtype();
  // Rows [lo, hi) of an initial state (undefined: zeros, multiplied like any h, as in
  // lstm_sequence_composite).
  auto rows = [B, H, dt](const Tensor& s, std::int64_t lo, std::int64_t hi) {
    return !s.defined() ? zeros(Shape{hi - lo, H}, dt) : lo == 0 && hi == B ? s : narrow(s, 0, lo, hi - lo);
  };
  std::vector<Tensor> hs(static_cast<std::size_t>(S)), h_done, c_done;
  Tensor h, c;
  std::int64_t b_prev = 0;
  for (std::int64_t k = 0; k < S; ++k) {
    const std::int64_t t = reverse ? S - 1 - k : k;
    const std::int64_t b = p.batch_sizes[static_cast<std::size_t>(t)], o = p.offsets[static_cast<std::size_t>(t)];
    if (k == 0) {
      h = rows(h0, 0, b);
      c = rows(c0, 0, b);
    } else if (b < b_prev) {
      // Forward: the sequences ending at the previous step leave the running rows.
      h_done.push_back(narrow(h, 0, b, b_prev - b));
      c_done.push_back(narrow(c, 0, b, b_prev - b));
      h = narrow(h, 0, 0, b);
      c = narrow(c, 0, 0, b);
    } else if (b > b_prev) {
      // Reverse: the sequences whose last step is t join from h0 / c0.
      h = concat({h, rows(h0, b_prev, b)}, 0);
      c = concat({c, rows(c0, b_prev, b)}, 0);
    }
    b_prev = b;
    const Tensor gates = add(narrow(gx, 0, o, b), linear(h, w_hh));
    lstm_step_ops(gates, c, H, h, c);
    hs[static_cast<std::size_t>(t)] = h;
  }
  h_done.push_back(h);
  c_done.push_back(c);
  std::reverse(h_done.begin(), h_done.end());
  std::reverse(c_done.begin(), c_done.end());
  std::vector<Tensor> parts = std::move(hs);
  parts.insert(parts.end(), h_done.begin(), h_done.end());
  parts.insert(parts.end(), c_done.begin(), c_done.end());
  return concat(parts, 0);
}

Tensor gru_cell_composite(const Tensor& gi, const Tensor& gh, const Tensor& h_prev) {
  const std::int64_t H = gi.shape()[1] / 3;
  const Tensor r = sigmoid(add(narrow(gi, 1, 0, H), narrow(gh, 1, 0, H)));
  const Tensor z = sigmoid(add(narrow(gi, 1, H, H), narrow(gh, 1, H, H)));
  const Tensor n = tanh(add(narrow(gi, 1, 2 * H, H), mul(r, narrow(gh, 1, 2 * H, H))));
  return add(n, mul(z, sub(h_prev, n)));  // (1 - z) n + z h_prev, grouped as the kernel
}

}  // namespace xg::detail
