// The attention ops: masked_softmax and additive_scores against hand-written loops and
// their composed versions; attention_probs and attention_apply against the composed
// per-head softmax(Q Kᵀ) V in both layouts, float64 gradchecks, every bad input.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_heads.hpp"
#include "helpers.hpp"
#include "softmax_reference.hpp"

using namespace xg;
using xgtest::check_close;
using xgtest::check_rows;
using xgtest::check_throws_msg;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::ref_softmax;
using xgtest::rnd;

namespace {

using Vec = std::vector<double>;
constexpr double kInf = std::numeric_limits<double>::infinity();

Vec vals(const Tensor& t) { return t.to_vector<double>(); }

// [B, T, H*w] (batch_first) or [T, B, H*w] -> [B*H, T, w], each head its own matrix.
Tensor heads_of(const Tensor& x, bool batch_first, std::int64_t H) {
  const Tensor bt = batch_first ? x : transpose(x, 0, 1);  // [B, T, H*w]
  const std::int64_t B = bt.shape()[0], T = bt.shape()[1], w = bt.shape()[2] / H;
  return reshape(permute(reshape(bt, {B, T, H, w}), {0, 2, 1, 3}), {B * H, T, w});
}

// The inverse of heads_of for the context: [B*H, T, w] -> [B, T, H*w] or [T, B, H*w].
Tensor merge_heads(const Tensor& o, bool batch_first, std::int64_t B, std::int64_t H) {
  const std::int64_t T = o.shape()[1], w = o.shape()[2];
  const Tensor bt = reshape(permute(reshape(o, {B, H, T, w}), {0, 2, 1, 3}), {B, T, H * w});
  return batch_first ? bt : transpose(bt, 0, 1);
}

using xgtest::heads;
using xgtest::seq;

}  // namespace

// =======================================================================================
// masked_softmax
// =======================================================================================

TEST_CASE("masked_softmax: values against a hand-written masked softmax, masked entries exactly 0") {
  const Tensor x = rnd({2, 3, 4}, -2, 2, 3);
  const Vec keep = {1, 0, 1, 1, 0, 1, 1, 0};  // [B=2, S=4]
  for (double scale : {1.0, 0.35}) {
    const Tensor y = masked_softmax(x, from_vector(keep, {2, 4}), scale);
    const Vec xv = vals(x);
    Vec want;
    for (int r = 0; r < 6; ++r) {
      Vec e(xv.begin() + r * 4, xv.begin() + r * 4 + 4);
      for (double& v : e) v *= scale;
      std::vector<bool> k(4);
      for (int j = 0; j < 4; ++j) k[j] = keep[(r / 3) * 4 + j] != 0.0;
      const Vec w = ref_softmax(e, k);
      want.insert(want.end(), w.begin(), w.end());
    }
    check_values(y, want, 1e-14, 1e-12);
    check_rows(y, keep, 2, 3, 4);
  }
  // Without a mask it is softmax(scale * x).
  check_close(masked_softmax(x, Tensor(), 0.5), softmax(mul(x, 0.5), -1), 1e-15, 1e-13);
  // int64 and float32 keeps mean the same; 1-D scores take a [S] keep.
  check_close(masked_softmax(x, from_vector(std::vector<std::int64_t>{1, 0, 1, 1, 0, 1, 1, 0}, {2, 4})),
              masked_softmax(x, from_vector(keep, {2, 4})), 0, 0);
  check_close(masked_softmax(x, from_vector(keep, {2, 4}, f32)), masked_softmax(x, from_vector(keep, {2, 4})),
              0, 0);
  const Tensor y1 = masked_softmax(from_vector(Vec{1.0, 2.0, 3.0}), from_vector(Vec{1, 1, 0}));
  check_values(y1, {1 / (1 + std::exp(1.0)), std::exp(1.0) / (1 + std::exp(1.0)), 0.0}, 1e-15, 1e-13);
}

TEST_CASE("masked_softmax agrees with the composed softmax(masked_fill(x, !keep, -inf))") {
  const Tensor x = rnd({3, 2, 5}, -3, 3, 4);
  const Vec keep = {1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1};
  Vec drop3;  // [3, 1, 5] broadcast over the middle dim
  for (double k : keep) drop3.push_back(k == 0.0 ? 1.0 : 0.0);
  const Tensor composed = softmax(masked_fill(mul(x, 0.7), from_vector(drop3, {3, 1, 5}), -kInf), -1);
  check_close(masked_softmax(x, from_vector(keep, {3, 5}), 0.7), composed, 1e-15, 1e-13);
}

TEST_CASE("masked_softmax: extreme scores stay finite, float32 works") {
  const Tensor x = from_vector(Vec{1000, -1000, 999, 0, -1e4, 1e4}, {2, 3});
  const Tensor y = masked_softmax(x, from_vector(Vec{1, 1, 1, 1, 0, 1}, {2, 3}));
  for (double v : vals(y)) CHECK(std::isfinite(v));
  check_values(y, {1 / (1 + std::exp(-1.0)), 0.0, std::exp(-1.0) / (1 + std::exp(-1.0)), 0.0, 0.0, 1.0}, 1e-15,
               1e-12);
  const Tensor xf = from_vector(std::vector<float>{0.5f, -0.25f, 2.0f, 1.0f}, {1, 4});
  const Tensor yf = masked_softmax(xf, from_vector(Vec{1, 0, 1, 1}, {1, 4}));
  CHECK(yf.dtype() == f32);
  check_values(yf, ref_softmax({0.5, -0.25, 2.0, 1.0}, {true, false, true, true}), 1e-7, 1e-6);
}

TEST_CASE("gradcheck masked_softmax: 1-D, 2-D, 3-D, size-1 dims, with and without masks") {
  gradcheck_ok([](const std::vector<Tensor>& in) { return masked_softmax(in[0]); }, {rnd({5})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return masked_softmax(in[0], from_vector(Vec{1, 0, 1, 1})); },
               {rnd({4})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return masked_softmax(in[0], Tensor(), 0.4); }, {rnd({3, 4})});
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        return masked_softmax(in[0], from_vector(Vec{1, 1, 0, 0, 1, 1, 1, 0, 1}, {3, 3}), 1.7);
      },
      {rnd({3, 3})});
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        return masked_softmax(in[0], from_vector(Vec{0, 1, 1, 1, 1, 0}, {2, 3}), 0.9);
      },
      {rnd({2, 4, 3})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return masked_softmax(in[0], from_vector(Vec{1}, {1, 1})); },
               {rnd({1, 1, 1})});
}

TEST_CASE("masked_softmax: masked positions get exactly zero gradient") {
  Tensor x = rnd({2, 4}, -1, 1, 9);
  x.requires_grad_();
  const Tensor y = masked_softmax(x, from_vector(Vec{1, 0, 1, 0, 0, 1, 1, 1}, {2, 4}));
  sum(mul(y, rnd({2, 4}, -1, 1, 10))).backward();
  const Vec g = vals(x.grad());
  CHECK(g[1] == 0.0);
  CHECK(g[3] == 0.0);
  CHECK(g[4] == 0.0);
  CHECK(g[0] != 0.0);
}

TEST_CASE("masked_softmax: bad input") {
  const Tensor x = rnd({2, 3});
  check_throws_msg<ShapeError>([&] { masked_softmax(x, from_vector(Vec{1, 1, 1}, {1, 3})); },
                          {"masked_softmax", "[1,3]", "[2,3]"});
  check_throws_msg<ShapeError>([&] { masked_softmax(x, from_vector(Vec{1, 1, 1, 1, 1, 1})); }, {"masked_softmax"});
  check_throws_msg<ShapeError>([&] { masked_softmax(scalar(1.0)); }, {"masked_softmax", "0-d"});
  check_throws_msg<DtypeError>([&] { masked_softmax(from_vector(std::vector<std::int64_t>{1, 2})); },
                          {"masked_softmax"});
  // A fully masked row: an Error naming the row, never NaN.
  check_throws_msg<Error>([&] { masked_softmax(x, from_vector(Vec{1, 1, 1, 0, 0, 0}, {2, 3})); },
                     {"masked_softmax", "batch 1", "every position is masked"});
  check_throws_msg<Error>([&] { masked_softmax(from_vector(Vec{-kInf, -kInf}, {1, 2})); }, {"masked_softmax"});
  // NaN scores give a NaN row, like softmax (not the fully-masked error).
  const Tensor yn = masked_softmax(from_vector(Vec{1.0, std::nan(""), 0.0, 1.0}, {2, 2}));
  CHECK(std::isnan(vals(yn)[0]));
  CHECK(std::isfinite(vals(yn)[2]));
  // Empty: zero rows work.
  CHECK(masked_softmax(zeros({0, 3}, f64), zeros({0, 3}, f64)).shape() == Shape{0, 3});
}

// =======================================================================================
// additive_scores
// =======================================================================================

TEST_CASE("additive_scores: values against the composed v · tanh(keys_proj + query_proj)") {
  const Tensor kp = rnd({2, 3, 5}, -1, 1, 1), qp = rnd({2, 5}, -1, 1, 2), v = rnd({5}, -1, 1, 3);
  const Tensor s = additive_scores(kp, qp, v);
  CHECK(s.shape() == Shape{2, 3});
  const Tensor composed = reshape(matmul(reshape(tanh(add(kp, unsqueeze(qp, 1))), {6, 5}), v), {2, 3});
  check_close(s, composed, 1e-15, 1e-13);
  const Vec k = vals(kp), q = vals(qp), vv = vals(v);
  Vec want;
  for (int b = 0; b < 2; ++b)
    for (int l = 0; l < 3; ++l) {
      double e = 0;
      for (int a = 0; a < 5; ++a) e += vv[a] * std::tanh(k[(b * 3 + l) * 5 + a] + q[b * 5 + a]);
      want.push_back(e);
    }
  check_values(s, want, 1e-15, 1e-13);
}

TEST_CASE("gradcheck additive_scores w.r.t. all three inputs, several shapes") {
  auto fn = [](const std::vector<Tensor>& in) { return additive_scores(in[0], in[1], in[2]); };
  gradcheck_ok(fn, {rnd({2, 3, 4}), rnd({2, 4}), rnd({4})});
  gradcheck_ok(fn, {rnd({1, 1, 1}), rnd({1, 1}), rnd({1})});
  gradcheck_ok(fn, {rnd({3, 1, 7}), rnd({3, 7}), rnd({7})});
  gradcheck_ok(fn, {rnd({1, 9, 2}), rnd({1, 2}), rnd({2})});
}

TEST_CASE("additive_scores: bad input") {
  check_throws_msg<ShapeError>([] { additive_scores(rnd({2, 3, 4}), rnd({2, 5}), rnd({4})); },
                          {"additive_scores", "[2,3,4]", "[2,5]"});
  check_throws_msg<ShapeError>([] { additive_scores(rnd({2, 3, 4}), rnd({3, 4}), rnd({4})); }, {"additive_scores"});
  check_throws_msg<ShapeError>([] { additive_scores(rnd({2, 3, 4}), rnd({2, 4}), rnd({3})); }, {"additive_scores"});
  check_throws_msg<ShapeError>([] { additive_scores(rnd({6, 4}), rnd({2, 4}), rnd({4})); }, {"additive_scores"});
  check_throws_msg<DtypeError>([] { additive_scores(rnd({2, 3, 4}).to(f32), rnd({2, 4}), rnd({4})); },
                          {"additive_scores"});
}

// =======================================================================================
// attention_probs, attention_apply
// =======================================================================================

TEST_CASE("attention_probs and attention_apply agree with the composed per-head softmax(scale Q Kᵀ) V") {
  const std::int64_t B = 2, H = 2, L = 3, S = 4, dk = 3, dv = 2;
  for (bool bf : {false, true}) {
    CAPTURE(bf);
    const Tensor q = rnd(seq(bf, B, L, H * dk), -1, 1, 1), k = rnd(seq(bf, B, S, H * dk), -1, 1, 2);
    const Tensor v = rnd(seq(bf, B, S, H * dv), -1, 1, 3);
    const AttentionHeads hd = heads(bf, B, H, L, S, dk, dv);
    const Tensor p = attention_probs(q, k, hd, 0.6, Shape{B, H, L, S});
    const Tensor scores = mul(matmul(heads_of(q, bf, H), transpose(heads_of(k, bf, H), 1, 2)), 0.6);
    check_close(p, reshape(softmax(scores, -1), {B, H, L, S}), 1e-15, 1e-13);
    const Tensor o = attention_apply(p, v, hd, seq(bf, B, L, H * dv));
    check_close(o, merge_heads(matmul(reshape(p, {B * H, L, S}), heads_of(v, bf, H)), bf, B, H), 1e-15, 1e-13);
  }
}

TEST_CASE("attention_probs: key mask (keep or ignore), additive and int64 attn masks") {
  const std::int64_t B = 2, H = 2, L = 2, S = 3, dk = 2;
  const Tensor q = rnd({L, B, H * dk}, -1, 1, 4), k = rnd({S, B, H * dk}, -1, 1, 5);
  const AttentionHeads hd = heads(false, B, H, L, S, dk, dk);
  const Tensor scores = matmul(heads_of(q, false, H), transpose(heads_of(k, false, H), 1, 2));  // [B*H, L, S]
  // key_mask [B, S]: batch 0 drops key 1, batch 1 drops key 2.
  const Vec keep = {1, 0, 1, 1, 1, 0};
  AttentionMasks km;
  km.key_mask = from_vector(keep, {B, S});
  const Tensor p = attention_probs(q, k, hd, 1.0, Shape{B, H, L, S}, km);
  check_rows(p, keep, B, H * L, S);
  Vec drop;  // [B*H, 1, S], nonzero = dropped
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t s = 0; s < S; ++s) drop.push_back(keep[b * S + s] == 0.0 ? 1.0 : 0.0);
  const Tensor composed = softmax(masked_fill(scores, from_vector(drop, {B * H, 1, S}), -kInf), -1);
  check_close(p, reshape(composed, {B, H, L, S}), 1e-15, 1e-13);
  // The same mask as nonzero = ignore.
  AttentionMasks ignore;
  Vec inv;
  for (double x : keep) inv.push_back(x == 0.0 ? 1.0 : 0.0);
  ignore.key_mask = from_vector(inv, {B, S});
  ignore.key_mask_keeps = false;
  check_close(attention_probs(q, k, hd, 1.0, Shape{B, H, L, S}, ignore), p, 0, 0);
  // An additive [L, S] mask is added to every batch entry and head; an int64 one forbids.
  const Tensor added = rnd({L, S}, -1, 1, 6);
  AttentionMasks am;
  am.attn_mask = added;
  check_close(attention_probs(q, k, hd, 1.0, Shape{B, H, L, S}, am),
              reshape(softmax(scores + unsqueeze(added, 0), -1), {B, H, L, S}), 1e-15, 1e-13);
  AttentionMasks forbid;
  forbid.attn_mask = from_vector(std::vector<std::int64_t>{0, 1, 0, 0, 0, 1}, {L, S});
  const Vec pf = vals(attention_probs(q, k, hd, 1.0, Shape{B, H, L, S}, forbid));
  for (std::int64_t r = 0; r < B * H * L; ++r) CHECK(pf[r * S + (r % L == 0 ? 1 : 2)] == 0.0);
}

TEST_CASE("gradcheck attention_probs and attention_apply: both layouts, one and several heads, 2-D queries, masks") {
  struct Case {
    bool bf;
    std::int64_t B, H, L, S, dk, dv;
  };
  for (const Case c : {Case{false, 2, 2, 3, 4, 2, 3}, Case{true, 2, 2, 3, 4, 2, 3}, Case{true, 1, 1, 1, 1, 1, 1},
                       Case{false, 3, 1, 2, 5, 3, 1}, Case{true, 2, 3, 1, 2, 1, 2}}) {
    CAPTURE(c.bf);
    CAPTURE(c.H);
    const AttentionHeads hd = heads(c.bf, c.B, c.H, c.L, c.S, c.dk, c.dv);
    const Shape ps{c.B, c.H, c.L, c.S};
    AttentionMasks masks;
    if (c.S > 1) {
      Vec keep(static_cast<std::size_t>(c.B * c.S), 1.0);
      keep[1] = 0.0;
      masks.key_mask = from_vector(keep, {c.B, c.S});
      masks.attn_mask = rnd({c.L, c.S}, -1, 1, 8);
    }
    gradcheck_ok([&](const std::vector<Tensor>& in) { return attention_probs(in[0], in[1], hd, 0.7, ps, masks); },
                 {rnd(seq(c.bf, c.B, c.L, c.H * c.dk), -1, 1, 1), rnd(seq(c.bf, c.B, c.S, c.H * c.dk), -1, 1, 2)});
    const Shape os = seq(c.bf, c.B, c.L, c.H * c.dv);
    gradcheck_ok([&](const std::vector<Tensor>& in) { return attention_apply(in[0], in[1], hd, os); },
                 {rnd(ps, 0, 1, 3), rnd(seq(c.bf, c.B, c.S, c.H * c.dv), -1, 1, 4)});
  }
  // The 2-D query of DotAttention: q [B, dk] is one query per batch entry, P [B, S].
  AttentionHeads hd;
  hd.B = 3;
  hd.Lq = 1;
  hd.S = 4;
  hd.dk = 2;
  hd.dv = 2;
  hd.q = HeadStrides{2, 2};
  hd.k = hd.v = HeadStrides{8, 2};
  hd.o = HeadStrides{2, 2};
  gradcheck_ok(
      [&](const std::vector<Tensor>& in) {
        return attention_apply(attention_probs(in[0], in[1], hd, 1.0, Shape{3, 4}), in[2], hd, Shape{3, 2});
      },
      {rnd({3, 2}, -1, 1, 5), rnd({3, 4, 2}, -1, 1, 6), rnd({3, 4, 2}, -1, 1, 7)});
}

TEST_CASE("attention_probs and attention_apply: bad input names the op and the shapes") {
  const AttentionHeads hd = heads(true, 2, 2, 3, 4, 2, 2);
  const Tensor q = rnd({2, 3, 4}), k = rnd({2, 4, 4}), p = rnd({2, 2, 3, 4}), v = rnd({2, 4, 4});
  const Shape ps{2, 2, 3, 4};
  check_throws_msg<DtypeError>([&] { attention_probs(q.to(f32), k, hd, 1.0, ps); }, {"attention_probs"});
  check_throws_msg<ShapeError>([&] { attention_probs(rnd({2, 3, 5}), k, hd, 1.0, ps); },
                               {"attention_probs", "q", "[2,3,5]"});
  check_throws_msg<ShapeError>([&] { attention_probs(q, rnd({2, 5, 4}), hd, 1.0, ps); }, {"attention_probs", "k"});
  check_throws_msg<ShapeError>([&] { attention_probs(q, k, hd, 1.0, Shape{2, 3, 4}); },
                               {"attention_probs", "[2,3,4]"});
  // A layout that reads some element twice is refused even when the sizes add up.
  AttentionHeads twice = hd;
  twice.q = HeadStrides{0, 4};
  check_throws_msg<ShapeError>([&] { attention_probs(rnd({1, 6, 4}), k, twice, 1.0, ps); }, {"attention_probs", "q"});
  AttentionMasks bad;
  bad.key_mask = ones({2, 3}, f64);
  check_throws_msg<ShapeError>([&] { attention_probs(q, k, hd, 1.0, ps, bad); }, {"attention_probs", "[2,3]"});
  AttentionMasks bad_attn;
  bad_attn.attn_mask = zeros({4, 4}, f64);
  check_throws_msg<ShapeError>([&] { attention_probs(q, k, hd, 1.0, ps, bad_attn); },
                               {"attention_probs", "attn_mask", "[4,4]"});
  AttentionMasks all;
  all.key_mask = zeros({2, 4}, f64);
  check_throws_msg<Error>([&] { attention_probs(q, k, hd, 1.0, ps, all, "MyAttention"); },
                          {"MyAttention", "batch 0, head 0, query 0", "every position is masked"});
  check_throws_msg<ShapeError>([&] { attention_apply(rnd({2, 2, 3, 3}), v, hd, Shape{2, 3, 4}); },
                               {"attention_apply", "[2,2,3,3]"});
  check_throws_msg<ShapeError>([&] { attention_apply(p, v, hd, Shape{2, 3, 5}); }, {"attention_apply", "[2,3,5]"});
  check_throws_msg<DtypeError>([&] { attention_apply(p, v.to(f32), hd, Shape{2, 3, 4}); }, {"attention_apply"});
}

// The sizes and strides of AttentionHeads come from the caller: their products are
// checked, not left to wrap around int64 into a small offset that passes the layout test.
TEST_CASE("attention_probs: sizes or strides whose products overflow are a ShapeError naming the op") {
  // B = 3 batch entries 2^62 apart: (B - 1) * sb = 2^63 wrapped to -2^63, which passed
  // "last offset <= numel" and let the kernel read far outside q.
  AttentionHeads far = heads(true, 3, 2, 3, 4, 2, 2);
  far.q = HeadStrides{1LL << 62, 4};
  const Tensor q = rnd({3, 3, 4}), k = rnd({3, 4, 4});
  check_throws_msg<ShapeError>([&] { (void)attention_probs(q, k, far, 1.0, Shape{3, 2, 3, 4}); },
                               {"attention_probs", "q", "[3,3,4]"});
  // Lq = 2^62: B * Lq * (H * dk) = 2^65 wrapped around in the layout check.
  AttentionHeads huge = heads(true, 2, 2, 3, 4, 2, 2);
  huge.Lq = 1LL << 62;
  check_throws_msg<ShapeError>([&] { (void)attention_probs(rnd({2, 3, 4}), rnd({2, 4, 4}), huge, 1.0, Shape{2, 2, 3, 4}); },
                               {"attention_probs", "Lq 4611686018427387904", "2^60"});
  check_throws_msg<ShapeError>([&] { (void)attention_apply(rnd({2, 2, 3, 4}), rnd({2, 4, 4}), huge, Shape{2, 3, 4}); },
                               {"attention_apply", "2^60"});
  // head_strides of such sizes saturates instead of wrapping around.
  CHECK(head_strides(true, 2, 1LL << 62, 4).sb == std::numeric_limits<std::int64_t>::max());
}
