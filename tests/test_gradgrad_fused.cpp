// Second derivatives of the fused ops (create_graph): each fused node's backward takes a
// recorded path when create_graph is on (its composite form through composite_backward,
// or its backward formula in recorded ops). Checked here in float64 by gradgradcheck for
// every fused op and every module built on them, and each composite form against its
// fused op's values. Small shapes: this file runs under the sanitizers in CI too.
#include <cstdint>
#include <functional>
#include <vector>

#include "attention_heads.hpp"
#include "helpers.hpp"
#include "xgrad/autograd/detail/composite.hpp"

using namespace xg;
using xgtest::check_close;
using xgtest::rnd;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

void gg_ok(const Fn& fn, const std::vector<Tensor>& inputs, GradcheckOptions opts = {}) {
  const GradcheckReport r = gradgradcheck(fn, inputs, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// For tensors fn reads itself (a module's float64 parameters and input).
void gg_params_ok(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt, GradcheckOptions opts = {}) {
  const GradcheckReport r = gradgradcheck(fn, wrt, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// The modules' checks compare directional derivatives (random projections): a few dozen
// graph evaluations per tensor instead of two per element.
GradcheckOptions projected() {
  GradcheckOptions o;
  o.random_projection = true;
  o.projections = 4;
  return o;
}

Tensor flat_all(const std::vector<Tensor>& ts) {
  std::vector<Tensor> parts;
  for (const Tensor& t : ts) {
    if (t.defined()) parts.push_back(flatten(t));
  }
  return concat(parts, 0);
}

std::vector<Tensor> with(std::vector<Tensor> a, const std::vector<Tensor>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Tensor leaf(const Shape& s, double lo, double hi, std::uint64_t seed) { return rnd(s, lo, hi, seed).requires_grad_(); }

}  // namespace

// =======================================================================================
// The composite forms equal the fused forwards
// =======================================================================================

TEST_CASE("composite forms: the LSTM and GRU recurrences equal their fused nodes (float64, 1e-12)") {
  const std::int64_t B = 3, H = 2;
  const Tensor gates = rnd({B, 4 * H}, -2, 2, 1), c = rnd({B, H}, -1, 1, 2);
  check_close(lstm_cell_fused(gates, c).hc, detail::lstm_cell_composite(gates, c), 1e-12, 0);
  const Tensor gi = rnd({B, 3 * H}, -2, 2, 3), gh = rnd({B, 3 * H}, -2, 2, 4), h = rnd({B, H}, -1, 1, 5);
  check_close(gru_cell_fused(gi, gh, h), detail::gru_cell_composite(gi, gh, h), 1e-12, 0);

  const std::int64_t T = 3;
  const Tensor gx = rnd({T, B, 4 * H}, -1.5, 1.5, 6), w = rnd({4 * H, H}, -0.6, 0.6, 7);
  const Tensor h0 = rnd({B, H}, -1, 1, 8), c0 = rnd({B, H}, -1, 1, 9);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    check_close(lstm_sequence(gx, w, h0, c0, reverse).packed, detail::lstm_sequence_composite(gx, w, h0, c0, reverse),
                1e-12, 0);
    check_close(lstm_sequence(gx, w, {}, {}, reverse).packed,
                detail::lstm_sequence_composite(gx, w, {}, zeros({B, H}, f64), reverse), 1e-12, 0);
    const PackedLayout p = packed_layout({2, 3, 1}, T);
    const Tensor pgx = rnd({p.rows(), 4 * H}, -1.5, 1.5, 10);
    check_close(lstm_sequence_packed(pgx, w, h0, c0, p, reverse).packed,
                detail::lstm_packed_composite(pgx, w, h0, c0, p, reverse), 1e-12, 0);
    check_close(lstm_sequence_packed(pgx, w, {}, {}, p, reverse).packed,
                detail::lstm_packed_composite(pgx, w, {}, zeros({B, H}, f64), p, reverse), 1e-12, 0);
  }
}

TEST_CASE("composite forms: additive_scores, layer_norm, cross_entropy and conv2d equal their fused nodes") {
  const Tensor kp = rnd({2, 3, 4}, -1, 1, 1), qp = rnd({2, 4}, -1, 1, 2), v = rnd({4}, -1, 1, 3);
  check_close(additive_scores(kp, qp, v), detail::additive_scores_composite(kp, qp, v), 1e-12, 0);

  const Tensor x = rnd({2, 3, 4}, -2, 2, 4), lw = rnd({3, 4}, 0.5, 1.5, 5), lb = rnd({3, 4}, -1, 1, 6);
  check_close(layer_norm(x, {3, 4}, lw, lb, 1e-5), detail::layer_norm_composite(x, {3, 4}, lw, lb, 1e-5), 1e-12, 0);
  check_close(layer_norm(x, {4}, {}, {}, 0.1), detail::layer_norm_composite(x, {4}, {}, {}, 0.1), 1e-12, 0);

  const Tensor logits = rnd({5, 4}, -3, 3, 7);
  const Tensor target = from_vector(std::vector<std::int64_t>{1, -1, 3, 0, 2}, {5});
  for (Reduction red : {Reduction::none, Reduction::sum, Reduction::mean}) {
    for (bool weighted : {false, true}) {
      for (double eps : {0.0, 0.2}) {
        CAPTURE(static_cast<int>(red));
        CAPTURE(weighted);
        CAPTURE(eps);
        CrossEntropyOptions o;
        o.ignore_index = -1;
        o.reduction = red;
        o.label_smoothing = eps;
        if (weighted) o.weight = from_vector(std::vector<double>{0.5, 2.0, 1.0, 0.25}, {4});
        const Tensor fused = cross_entropy(logits, target, o);
        const Tensor comp = detail::cross_entropy_composite(logits, target, o);
        check_close(fused, comp, 1e-12, 1e-12);
        if (red == Reduction::none) CHECK(comp.to_vector<double>()[1] == 0.0);  // the ignored row
        // One sample: [C] logits, a 0-d target.
        const Tensor one = rnd({4}, -3, 3, 8), t0 = from_vector(std::vector<std::int64_t>{2}, Shape{});
        check_close(cross_entropy(one, t0, o), detail::cross_entropy_composite(one, t0, o), 1e-12, 1e-12);
      }
    }
  }

  struct Case {
    Shape x, w;
    Size2 stride, padding;
    bool bias;
  };
  for (const Case& c : {Case{{2, 3, 5, 4}, {4, 3, 3, 2}, {2, 1}, {1, 0}, true},
                        Case{{1, 2, 3, 3}, {3, 2, 1, 1}, 1, 0, false},  // 1x1: the direct path
                        Case{{2, 1, 4, 4}, {2, 1, 2, 2}, 2, 1, true}}) {
    const Tensor cx = rnd(c.x, -1, 1, 9), cw = rnd(c.w, -1, 1, 10);
    const Tensor cb = c.bias ? rnd({c.w[0]}, -1, 1, 11) : Tensor();
    check_close(conv2d(cx, cw, cb, c.stride, c.padding), detail::conv2d_composite(cx, cw, cb, c.stride, c.padding),
                1e-12, 0);
  }
}

TEST_CASE("conv_unfold and conv_fold are each other's adjoint: <unfold(x), c> = <x, fold(c)>") {
  const Shape xs{2, 3, 5, 4};
  const Tensor x = rnd(xs, -1, 1, 1);
  const Tensor cols = detail::conv_unfold(x, 3, 2, Size2{2, 1}, Size2{1, 2});
  const Tensor c = rnd(cols.shape(), -1, 1, 2);
  const double lhs = sum(mul(cols, c)).item<double>();
  const double rhs = sum(mul(x, detail::conv_fold(c, xs, 3, 2, Size2{2, 1}, Size2{1, 2}))).item<double>();
  CHECK(std::fabs(lhs - rhs) <= 1e-12 * (1.0 + std::fabs(lhs)));
  CHECK(lhs != 0.0);
}

// =======================================================================================
// gradgradcheck of each fused op
// =======================================================================================

TEST_CASE("gradgradcheck lstm_cell_fused and gru_cell_fused: through h, c and the packed hc") {
  // Plain variables, not structured bindings: clang 14 cannot capture those (CAPTURE).
  using Sizes = std::pair<std::int64_t, std::int64_t>;
  for (const Sizes& bh : std::vector<Sizes>{{1, 1}, {2, 3}}) {
    const std::int64_t B = bh.first, H = bh.second;
    CAPTURE(B);
    CAPTURE(H);
    const Tensor gates = rnd({B, 4 * H}, -2, 2, 1), c = rnd({B, H}, -1, 1, 2);
    gg_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).hc; }, {gates, c});
    gg_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).h; }, {gates, c});
    gg_ok([](const std::vector<Tensor>& in) { return lstm_cell_fused(in[0], in[1]).c; }, {gates, c});
    const Tensor gi = rnd({B, 3 * H}, -2, 2, 3), gh = rnd({B, 3 * H}, -2, 2, 4), h = rnd({B, H}, -1, 1, 5);
    gg_ok([](const std::vector<Tensor>& in) { return gru_cell_fused(in[0], in[1], in[2]); }, {gi, gh, h});
  }
}

TEST_CASE("gradgradcheck lstm_sequence: both directions, with and without h0 / c0, through y, h_n, c_n") {
  for (const std::int64_t T : {1, 3}) {
    const std::int64_t B = T == 1 ? 1 : 2, H = T == 1 ? 1 : 2;
    for (bool reverse : {false, true}) {
      CAPTURE(T);
      CAPTURE(reverse);
      const Tensor gx = rnd({T, B, 4 * H}, -1.5, 1.5, 1), w = rnd({4 * H, H}, -0.6, 0.6, 2);
      const Tensor h0 = rnd({B, H}, -1, 1, 3), c0 = rnd({B, H}, -1, 1, 4);
      gg_ok(
          [reverse](const std::vector<Tensor>& in) {
            const LSTMSequenceOut o = lstm_sequence(in[0], in[1], in[2], in[3], reverse);
            return flat_all({o.y, o.h_n, o.c_n});
          },
          {gx, w, h0, c0});
      gg_ok([reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], {}, {}, reverse).packed; },
            {gx, w});
    }
  }
}

// lstm_sequence's create_graph backward is one "lstm_sequence_backward" node with a fused
// second order (the forward tangent for d g, forward over reverse for the rest). These hit
// it directly: odd batch and hidden sizes (H = 5 runs the vector lanes and the scalar
// tail), T = 1, both directions, with and without h0 / c0.
TEST_CASE("gradgradcheck lstm_sequence's fused second order: odd B and H, T = 1, both directions, h0 / c0 or not") {
  struct Case {
    std::int64_t T, B, H;
  };
  for (const Case c : {Case{1, 3, 2}, Case{4, 3, 5}}) {
    for (bool reverse : {false, true}) {
      CAPTURE(c.T);
      CAPTURE(c.H);
      CAPTURE(reverse);
      const Tensor gx = rnd({c.T, c.B, 4 * c.H}, -1.5, 1.5, 11), w = rnd({4 * c.H, c.H}, -0.6, 0.6, 12);
      const Tensor h0 = rnd({c.B, c.H}, -1, 1, 13), c0 = rnd({c.B, c.H}, -1, 1, 14);
      gg_ok(
          [reverse](const std::vector<Tensor>& in) {
            return lstm_sequence(in[0], in[1], in[2], in[3], reverse).packed;
          },
          {gx, w, h0, c0});
      gg_ok([reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], {}, {}, reverse).y; },
            {gx, w});
      // Only the final state: y's rows get no gradient, h_n's row one through a select.
      gg_ok([reverse](const std::vector<Tensor>& in) { return lstm_sequence(in[0], in[1], in[2], in[3], reverse).h_n; },
            {gx, w, h0, c0});
    }
  }
}

namespace {

// First-order gradients of <gy, packed> in (gx, w, h0, c0) with create_graph, and the
// gradients of <grads, v> in (gx, w, h0, c0, gy): the fused node or the composite
// recurrence (c0 undefined: zeros for the composite); lay: lstm_sequence_packed's.
std::vector<Tensor> lstm_second_order(bool fused, const std::vector<Tensor>& in, const Tensor& gy,
                                      const std::vector<Tensor>& v, bool reverse, const PackedLayout* lay = nullptr) {
  const bool state = in[2].defined();
  const std::int64_t H = in[1].shape()[1];
  const Tensor c0 = state ? in[3] : zeros({lay ? lay->B : in[0].shape()[1], H}, in[0].dtype());
  Tensor out;
  if (lay) {
    out = fused ? lstm_sequence_packed(in[0], in[1], in[2], in[3], *lay, reverse).packed
                : detail::lstm_packed_composite(in[0], in[1], in[2], c0, *lay, reverse);
  } else {
    out = fused ? lstm_sequence(in[0], in[1], in[2], in[3], reverse).packed
                : detail::lstm_sequence_composite(in[0], in[1], in[2], c0, reverse);
  }
  std::vector<Tensor> wrt{in[0], in[1]};
  if (state) wrt.insert(wrt.end(), {in[2], in[3]});
  const std::vector<Tensor> g1 = grad({out}, wrt, {gy}, {.create_graph = true});
  if (fused) CHECK(g1[0].op_name() == (lay ? "lstm_sequence_packed_backward_gx" : "lstm_sequence_backward_gx"));
  Tensor s;
  for (std::size_t j = 0; j < g1.size(); ++j) {
    const Tensor term = sum(mul(g1[j], v[j]));
    s = s.defined() ? add(s, term) : term;
  }
  wrt.push_back(gy);
  std::vector<Tensor> r = grad({s}, wrt);
  for (const Tensor& g : g1) r.push_back(g.detach());
  return r;
}

}  // namespace

TEST_CASE("lstm_sequence's fused second order equals the composite recurrence's (float64, 1e-12)") {
  const std::int64_t B = 3, H = 5;
  for (const std::int64_t T : {1, 4}) {
    for (bool reverse : {false, true}) {
      for (bool state : {false, true}) {
        CAPTURE(T);
        CAPTURE(reverse);
        CAPTURE(state);
        const std::vector<Tensor> in{leaf({T, B, 4 * H}, -1.5, 1.5, 21), leaf({4 * H, H}, -0.6, 0.6, 22),
                                     state ? leaf({B, H}, -1, 1, 23) : Tensor(),
                                     state ? leaf({B, H}, -1, 1, 24) : Tensor()};
        const Tensor gy = leaf({T + 1, B, H}, -1, 1, 25);
        const std::vector<Tensor> v{rnd({T, B, 4 * H}, -1, 1, 26), rnd({4 * H, H}, -1, 1, 27), rnd({B, H}, -1, 1, 28),
                                    rnd({B, H}, -1, 1, 29)};
        const std::vector<Tensor> fused = lstm_second_order(true, in, gy, v, reverse);
        const std::vector<Tensor> comp = lstm_second_order(false, in, gy, v, reverse);
        REQUIRE(fused.size() == comp.size());
        for (std::size_t j = 0; j < fused.size(); ++j) {
          CAPTURE(j);
          check_close(fused[j], comp[j], 1e-12, 0);
        }
      }
    }
  }
}

TEST_CASE("lstm_sequence_packed's fused second order equals the composite recurrence's (float64, 1e-12)") {
  const std::int64_t H = 5;
  // Lengths 2, 4, 1 (unsorted: the layout sorts them) and one batch of a single step.
  using Lengths = std::vector<std::int64_t>;
  for (const Lengths& lengths : {Lengths{2, 4, 1}, Lengths{1, 1}}) {
    const PackedLayout p = packed_layout(lengths, 4);
    for (bool reverse : {false, true}) {
      for (bool state : {false, true}) {
        CAPTURE(p.B);
        CAPTURE(reverse);
        CAPTURE(state);
        const std::vector<Tensor> in{leaf({p.rows(), 4 * H}, -1.5, 1.5, 51), leaf({4 * H, H}, -0.6, 0.6, 52),
                                     state ? leaf({p.B, H}, -1, 1, 53) : Tensor(),
                                     state ? leaf({p.B, H}, -1, 1, 54) : Tensor()};
        const Tensor gy = leaf({p.rows() + 2 * p.B, H}, -1, 1, 55);
        const std::vector<Tensor> v{rnd({p.rows(), 4 * H}, -1, 1, 56), rnd({4 * H, H}, -1, 1, 57),
                                    rnd({p.B, H}, -1, 1, 58), rnd({p.B, H}, -1, 1, 59)};
        const std::vector<Tensor> fused = lstm_second_order(true, in, gy, v, reverse, &p);
        const std::vector<Tensor> comp = lstm_second_order(false, in, gy, v, reverse, &p);
        REQUIRE(fused.size() == comp.size());
        for (std::size_t j = 0; j < fused.size(); ++j) {
          CAPTURE(j);
          check_close(fused[j], comp[j], 1e-12, 0);
        }
      }
    }
  }
}

TEST_CASE("lstm_sequence's fused second order in float32 follows float64 (charlstm-like gates)") {
  const std::int64_t T = 6, B = 3, H = 9;
  const std::vector<Tensor> in64{leaf({T, B, 4 * H}, -1.5, 1.5, 31), leaf({4 * H, H}, -0.6, 0.6, 32),
                                 leaf({B, H}, -1, 1, 33), leaf({B, H}, -1, 1, 34)};
  const Tensor gy64 = leaf({T + 1, B, H}, -1, 1, 35);
  const std::vector<Tensor> v64{rnd({T, B, 4 * H}, -1, 1, 36), rnd({4 * H, H}, -1, 1, 37), rnd({B, H}, -1, 1, 38),
                                rnd({B, H}, -1, 1, 39)};
  std::vector<Tensor> in32, v32;
  for (const Tensor& t : in64) in32.push_back(t.detach().to(f32).requires_grad_());
  for (const Tensor& t : v64) v32.push_back(t.to(f32));
  const Tensor gy32 = gy64.detach().to(f32).requires_grad_();
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    const std::vector<Tensor> r64 = lstm_second_order(true, in64, gy64, v64, reverse);
    const std::vector<Tensor> r32 = lstm_second_order(true, in32, gy32, v32, reverse);
    for (std::size_t j = 0; j < r64.size(); ++j) {
      CAPTURE(j);
      REQUIRE(r32[j].dtype() == f32);
      check_close(r32[j].to(f64), r64[j], 1e-4, 1e-4);
    }
  }
}

// Third order: the fused second-order node's own create_graph backward takes the recorded
// path (the first-order gradients rebuilt from the composite recurrence).
TEST_CASE("gradgradcheck of lstm_sequence's create_graph gradient (third order), with and without h0 / c0") {
  const std::int64_t T = 2, B = 1, H = 1;
  const Tensor gx = rnd({T, B, 4 * H}, -1.5, 1.5, 41), w = rnd({4 * H, H}, -0.6, 0.6, 42);
  const Tensor h0 = rnd({B, H}, -1, 1, 43), c0 = rnd({B, H}, -1, 1, 44), gy = rnd({T + 1, B, H}, -1, 1, 45);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    gg_ok(
        [reverse](const std::vector<Tensor>& in) {
          const Tensor out = lstm_sequence(in[0], in[1], in[2], in[3], reverse).packed;
          return flat_all(grad({out}, {in[0], in[1], in[2], in[3]}, {in[4]}, {.create_graph = true}));
        },
        {gx, w, h0, c0, gy});
    gg_ok(
        [reverse](const std::vector<Tensor>& in) {
          const Tensor out = lstm_sequence(in[0], in[1], {}, {}, reverse).packed;
          return flat_all(grad({out}, {in[0], in[1]}, {in[2]}, {.create_graph = true}));
        },
        {gx, w, gy});
  }
}

TEST_CASE("gradgradcheck of lstm_sequence_packed's create_graph gradient (third order), lengths 2, 1") {
  const std::int64_t H = 1;
  const PackedLayout p = packed_layout({2, 1}, 2);
  const Tensor gx = rnd({p.rows(), 4 * H}, -1.5, 1.5, 61), w = rnd({4 * H, H}, -0.6, 0.6, 62);
  const Tensor h0 = rnd({p.B, H}, -1, 1, 63), c0 = rnd({p.B, H}, -1, 1, 64);
  const Tensor gy = rnd({p.rows() + 2 * p.B, H}, -1, 1, 65);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    gg_ok(
        [&p, reverse](const std::vector<Tensor>& in) {
          const Tensor out = lstm_sequence_packed(in[0], in[1], in[2], in[3], p, reverse).packed;
          return flat_all(grad({out}, {in[0], in[1], in[2], in[3]}, {in[4]}, {.create_graph = true}));
        },
        {gx, w, h0, c0, gy});
  }
}

namespace {

// lstm_sequence over gx = x · W_ihᵀ + b, told how gx was made (as nn::LSTM does) or not.
// in: x, w_ih, b, w_hh, h0, c0.
Tensor projected_lstm(const std::vector<Tensor>& in, bool tell, bool reverse) {
  const std::int64_t T = in[0].shape()[0], B = in[0].shape()[1], G = in[1].shape()[0];
  const Tensor gx = reshape(linear(in[0], in[1], in[2]), {T, B, G});
  const detail::GxProjection proj{in[0], in[1], in[2]};
  return detail::lstm_sequence(gx, in[3], in[4], in[5], reverse, tell ? &proj : nullptr).packed;
}

}  // namespace

TEST_CASE("lstm_sequence with gx's projection (nn::LSTM's form): second and third order through x, W_ih and b") {
  const std::int64_t T = 3, B = 2, I = 3, H = 2;
  const Tensor x = rnd({T, B, I}, -1, 1, 71), w_ih = rnd({4 * H, I}, -0.6, 0.6, 72), b = rnd({4 * H}, -0.5, 0.5, 73);
  const Tensor w_hh = rnd({4 * H, H}, -0.6, 0.6, 74), h0 = rnd({B, H}, -1, 1, 75), c0 = rnd({B, H}, -1, 1, 76);
  const Tensor gy = rnd({T + 1, B, H}, -1, 1, 77);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    gg_ok([reverse](const std::vector<Tensor>& in) { return projected_lstm(in, true, reverse); },
          {x, w_ih, b, w_hh, h0, c0});
    gg_ok(
        [reverse](const std::vector<Tensor>& in) {
          const std::vector<Tensor> ins(in.begin(), in.begin() + 6);
          return flat_all(grad({projected_lstm(ins, true, reverse)}, ins, {in[6]}, {.create_graph = true}));
        },
        {x, w_ih, b, w_hh, h0, c0, gy});
    // The node fed by x, W_ih and b directly gives what it gives fed by gx.
    std::vector<std::vector<Tensor>> results;
    for (bool tell : {true, false}) {
      std::vector<Tensor> in;
      for (const Tensor& t : {x, w_ih, b, w_hh, h0, c0}) in.push_back(t.detach().requires_grad_());
      const Tensor gyl = gy.detach().requires_grad_();
      const std::vector<Tensor> g1 = grad({projected_lstm(in, tell, reverse)}, in, {gyl}, {.create_graph = true});
      Tensor s;
      for (std::size_t j = 0; j < g1.size(); ++j) {
        const Tensor term = sum(mul(g1[j], rnd(g1[j].shape(), -1, 1, 80 + j)));
        s = s.defined() ? add(s, term) : term;
      }
      in.push_back(gyl);
      results.push_back(grad({s}, in));
    }
    for (std::size_t j = 0; j < results[0].size(); ++j) {
      CAPTURE(j);
      check_close(results[0][j], results[1][j], 1e-12, 1e-12);
    }
  }
}

TEST_CASE("gradgradcheck lstm_sequence_packed: lengths 2, 3, 1, both directions, with and without h0 / c0") {
  const std::int64_t H = 2;
  const PackedLayout p = packed_layout({2, 3, 1}, 3);
  const Tensor gx = rnd({p.rows(), 4 * H}, -1.5, 1.5, 1), w = rnd({4 * H, H}, -0.6, 0.6, 2);
  const Tensor h0 = rnd({p.B, H}, -1, 1, 3), c0 = rnd({p.B, H}, -1, 1, 4);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    gg_ok(
        [&p, reverse](const std::vector<Tensor>& in) {
          const LSTMSequenceOut o = lstm_sequence_packed(in[0], in[1], in[2], in[3], p, reverse);
          return flat_all({o.y, o.h_n, o.c_n});
        },
        {gx, w, h0, c0});
    gg_ok(
        [&p, reverse](const std::vector<Tensor>& in) {
          return lstm_sequence_packed(in[0], in[1], {}, {}, p, reverse).packed;
        },
        {gx, w});
  }
}

TEST_CASE("gradgradcheck step_views, packed_step_views, pack_padded and pad_packed") {
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    gg_ok([reverse](const std::vector<Tensor>& in) { return tanh(stack(step_views(in[0], 3, reverse), 0)); },
          {rnd({6, 3}, -1, 1, 1)});
    const PackedLayout p = packed_layout({2, 3, 1}, 3);
    gg_ok(
        [&p, reverse](const std::vector<Tensor>& in) { return tanh(concat(packed_step_views(in[0], p, reverse), 0)); },
        {rnd({p.rows(), 3}, -1, 1, 2)});
  }
  const PackedLayout p = packed_layout({2, 3, 1}, 3);
  for (bool bf : {false, true}) {
    CAPTURE(bf);
    gg_ok([&p, bf](const std::vector<Tensor>& in) { return tanh(pad_packed(tanh(pack_padded(in[0], p, bf)), p, bf)); },
          {rnd({3, 3, 2}, -1, 1, 3)});
  }
}

namespace {

using xgtest::heads;
using xgtest::seq;

}  // namespace

TEST_CASE("gradgradcheck masked_softmax and additive_scores") {
  const Tensor keep = from_vector(std::vector<double>{1, 0, 1, 1, 1, 1, 1, 0}, {2, 4});
  gg_ok([keep](const std::vector<Tensor>& in) { return masked_softmax(in[0], keep, 0.7); }, {rnd({2, 3, 4}, -2, 2, 1)});
  gg_ok([](const std::vector<Tensor>& in) { return masked_softmax(in[0]); }, {rnd({5}, -2, 2, 2)});
  gg_ok([](const std::vector<Tensor>& in) { return additive_scores(in[0], in[1], in[2]); },
        {rnd({2, 3, 4}, -1, 1, 3), rnd({2, 4}, -1, 1, 4), rnd({4}, -1, 1, 5)});
}

TEST_CASE("gradgradcheck attention_probs and attention_apply: both layouts, one and two heads, masks") {
  struct Case {
    bool bf;
    std::int64_t B, H, L, S, dk, dv;
  };
  for (const Case c : {Case{false, 2, 2, 3, 4, 2, 3}, Case{true, 2, 2, 3, 4, 2, 1}, Case{true, 1, 1, 2, 3, 2, 2}}) {
    CAPTURE(c.bf);
    CAPTURE(c.H);
    const AttentionHeads hd = heads(c.bf, c.B, c.H, c.L, c.S, c.dk, c.dv);
    const Shape ps{c.B, c.H, c.L, c.S}, os = seq(c.bf, c.B, c.L, c.H * c.dv);
    AttentionMasks masks;
    std::vector<double> keep(static_cast<std::size_t>(c.B * c.S), 1.0);
    keep[1] = 0.0;
    masks.key_mask = from_vector(keep, {c.B, c.S});
    masks.attn_mask = rnd({c.L, c.S}, -1, 1, 8);
    const Tensor q = rnd(seq(c.bf, c.B, c.L, c.H * c.dk), -1, 1, 1), k = rnd(seq(c.bf, c.B, c.S, c.H * c.dk), -1, 1, 2);
    const Tensor v = rnd(seq(c.bf, c.B, c.S, c.H * c.dv), -1, 1, 3);
    gg_ok([&](const std::vector<Tensor>& in) { return attention_probs(in[0], in[1], hd, 0.7, ps, masks); }, {q, k});
    gg_ok([&](const std::vector<Tensor>& in) { return attention_apply(in[0], in[1], hd, os); },
          {rnd(ps, 0, 1, 4), v});
    gg_ok(
        [&](const std::vector<Tensor>& in) {
          return attention_apply(attention_probs(in[0], in[1], hd, 0.7, ps, masks), in[2], hd, os);
        },
        {q, k, v});
  }
}

TEST_CASE("gradgradcheck layer_norm: with and without the affine part, one and two normalised dims") {
  gg_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {3, 4}, in[1], in[2], 1e-5); },
        {rnd({2, 3, 4}, -2, 2, 1), rnd({3, 4}, 0.5, 1.5, 2), rnd({3, 4}, -1, 1, 3)});
  gg_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, {}, {}, 0.1); }, {rnd({3, 4}, -2, 2, 4)});
  gg_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, in[1], {}, 1e-5); },
        {rnd({2, 4}, -2, 2, 5), rnd({4}, 0.5, 1.5, 6)});
}

TEST_CASE("gradgradcheck cross_entropy (weight, label_smoothing, ignore_index), nll_loss, mse_loss") {
  const Tensor target = from_vector(std::vector<std::int64_t>{1, -1, 3, 0, 2}, {5});
  for (Reduction red : {Reduction::none, Reduction::sum, Reduction::mean}) {
    CAPTURE(static_cast<int>(red));
    CrossEntropyOptions o;
    o.ignore_index = -1;
    o.reduction = red;
    o.label_smoothing = 0.2;
    o.weight = from_vector(std::vector<double>{0.5, 2.0, 1.0, 0.25}, {4});
    gg_ok([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], target, o); }, {rnd({5, 4}, -2, 2, 1)});
    const Tensor t0 = from_vector(std::vector<std::int64_t>{3}, Shape{});
    gg_ok([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t0, o); }, {rnd({4}, -2, 2, 2)});
    CrossEntropyOptions plain;
    plain.reduction = red;
    const Tensor t3 = from_vector(std::vector<std::int64_t>{1, 0, 3}, {3});
    gg_ok([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t3, plain); }, {rnd({3, 4}, -2, 2, 3)});
    CrossEntropyOptions nll = o;
    nll.label_smoothing = 0.0;
    // nll_loss is linear in its input: tanh in front gives it a second derivative to check.
    gg_ok([&](const std::vector<Tensor>& in) { return nll_loss(tanh(in[0]), target, nll); }, {rnd({5, 4}, -2, 2, 4)});
    gg_ok([red](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], red); },
          {rnd({2, 3}, -1, 1, 5), rnd({2, 3}, -1, 1, 6)});
  }
}

TEST_CASE("gradgradcheck conv2d (stride, padding, bias) and max_pool2d (plain and overlapping windows)") {
  gg_ok([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], Size2{2, 1}, Size2{1, 0}); },
        {rnd({2, 2, 4, 3}, -1, 1, 1), rnd({3, 2, 2, 2}, -1, 1, 2), rnd({3}, -1, 1, 3)});
  gg_ok([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1]); },
        {rnd({1, 2, 3, 3}, -1, 1, 4), rnd({2, 2, 1, 1}, -1, 1, 5)});
  gg_ok([](const std::vector<Tensor>& in) { return tanh(max_pool2d(in[0], 2)); }, {rnd({2, 2, 4, 4}, -1, 1, 6)});
  gg_ok([](const std::vector<Tensor>& in) { return tanh(max_pool2d(in[0], 2, 1)); }, {rnd({1, 2, 3, 4}, -1, 1, 7)});
}

// =======================================================================================
// Modules
// =======================================================================================

TEST_CASE("gradgradcheck nn::LSTM: 2 layers, bidirectional, with lengths, without, and layer-normalised") {
  DefaultDtypeGuard dg(f64);
  manual_seed(1);
  nn::LSTMOptions o;
  o.input_size = 2;
  o.hidden_size = 2;
  o.num_layers = 2;
  o.bidirectional = true;
  nn::LSTM lstm(o);
  const Tensor x = leaf({3, 3, 2}, -1, 1, 1);
  const Tensor lengths = from_vector(std::vector<std::int64_t>{3, 1, 2}, {3});
  const Tensor h0 = leaf({4, 3, 2}, -1, 1, 2), c0 = leaf({4, 3, 2}, -1, 1, 3);
  const std::vector<Tensor> wrt = with(lstm.parameters(), {x, h0, c0});
  gg_params_ok(
      [&] {
        const nn::LSTMResult r = lstm(x, {h0, c0}, lengths);
        return flat_all({r.output, r.state.h, r.state.c});
      },
      wrt, projected());
  gg_params_ok(
      [&] {
        const nn::LSTMResult r = lstm(x);
        return flat_all({r.output, r.state.h, r.state.c});
      },
      with(lstm.parameters(), {x}), projected());
  o.num_layers = 1;
  o.layer_norm = true;
  nn::LSTM ln(o);
  gg_params_ok(
      [&] {
        const nn::LSTMResult r = ln(x, {}, lengths);
        return flat_all({r.output, r.state.h, r.state.c});
      },
      with(ln.parameters(), {x}), projected());
}

TEST_CASE("gradgradcheck nn::GRU and nn::RNN: bidirectional, with lengths; LSTMCell, GRUCell, RNNCell") {
  DefaultDtypeGuard dg(f64);
  manual_seed(2);
  const Tensor x = leaf({3, 3, 2}, -1, 1, 1);
  const Tensor lengths = from_vector(std::vector<std::int64_t>{2, 3, 1}, {3});
  nn::GRUOptions go;
  go.input_size = 2;
  go.hidden_size = 2;
  go.num_layers = 2;
  go.bidirectional = true;
  nn::GRU gru(go);
  gg_params_ok(
      [&] {
        const nn::RNNResult r = gru(x, {}, lengths);
        return flat_all({r.output, r.state.h});
      },
      with(gru.parameters(), {x}), projected());
  gg_params_ok(
      [&] {
        const nn::RNNResult r = gru(x);
        return flat_all({r.output, r.state.h});
      },
      with(gru.parameters(), {x}), projected());
  nn::RNNOptions ro;
  ro.input_size = 2;
  ro.hidden_size = 3;
  ro.bidirectional = true;
  nn::RNN rnn(ro);
  gg_params_ok(
      [&] {
        const nn::RNNResult r = rnn(x, {}, lengths);
        return flat_all({r.output, r.state.h});
      },
      with(rnn.parameters(), {x}), projected());

  const Tensor xb = leaf({2, 2}, -1, 1, 2), hb = leaf({2, 3}, -1, 1, 3), cb = leaf({2, 3}, -1, 1, 4);
  nn::LSTMCell lc(2, 3);
  gg_params_ok(
      [&] {
        const nn::LSTMState s = lc(xb, {hb, cb});
        return flat_all({s.h, s.c});
      },
      with(lc.parameters(), {xb, hb, cb}));
  nn::GRUCell gc(2, 3);
  gg_params_ok([&] { return gc(xb, hb); }, with(gc.parameters(), {xb, hb}));
  nn::RNNCell rc(2, 3);
  gg_params_ok([&] { return rc(xb, hb); }, with(rc.parameters(), {xb, hb}));
}

TEST_CASE("gradgradcheck nn::MultiheadAttention with a key padding mask and an additive attn_mask") {
  DefaultDtypeGuard dg(f64);
  manual_seed(3);
  nn::MultiheadAttentionOptions o;
  o.embed_dim = 4;
  o.num_heads = 2;
  nn::MultiheadAttention mha(o);
  const Tensor q = leaf({2, 2, 4}, -1, 1, 1), kv = leaf({3, 2, 4}, -1, 1, 2);
  nn::MultiheadAttentionForwardOptions fo;
  fo.key_padding_mask = from_vector(std::vector<bool>{false, false, true, false, true, false}, {2, 3});
  fo.attn_mask = rnd({2, 3}, -1, 1, 3);
  gg_params_ok(
      [&] {
        const nn::AttentionOutput r = mha(q, kv, kv, fo);
        return flat_all({r.context, r.weights});
      },
      with(mha.parameters(), {q, kv}), projected());
}

TEST_CASE("gradgradcheck nn::LayerNorm, nn::Conv2d + nn::MaxPool2d, nn::CrossEntropyLoss") {
  DefaultDtypeGuard dg(f64);
  manual_seed(4);
  nn::LayerNorm norm(Shape{3});
  const Tensor x = leaf({2, 3}, -2, 2, 1);
  gg_params_ok([&] { return norm(x); }, with(norm.parameters(), {x}));

  nn::Conv2d conv(2, 3, 3, 1, 1);
  nn::MaxPool2d pool(2);
  const Tensor img = leaf({2, 2, 4, 4}, -1, 1, 2);
  gg_params_ok([&] { return tanh(pool(conv(img))); }, with(conv.parameters(), {img}), projected());

  CrossEntropyOptions co;
  co.weight = from_vector(std::vector<double>{0.5, 2.0, 1.0}, {3});
  co.label_smoothing = 0.1;
  co.ignore_index = 1;
  nn::CrossEntropyLoss loss(co);
  const Tensor logits = leaf({4, 3}, -2, 2, 3);
  const Tensor target = from_vector(std::vector<std::int64_t>{0, 1, 2, 2}, {4});
  gg_params_ok([&] { return loss(logits, target); }, {logits});
}
