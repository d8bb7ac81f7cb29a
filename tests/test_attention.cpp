// Attention modules: AdditiveAttention, DotAttention and MultiheadAttention against
// independent double-loop references (with and without masks, both layouts); float64
// gradchecks w.r.t. every input and every parameter; the Show-Attend-Tell use (additive
// attention over a CNN feature grid learns to look at the cell that matters); agreement
// with PyTorch's nn.MultiheadAttention (tests/fixtures/nn/mha_kpm.npz); every bad input.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "softmax_reference.hpp"

using namespace xg;
using xg::nn::AdditiveAttention;
using xg::nn::AttentionOutput;
using xg::nn::DotAttention;
using xg::nn::DotScore;
using xg::nn::MultiheadAttention;
using xgtest::check_close;
using xgtest::check_rows;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::ref_softmax;
using xgtest::rnd;

namespace {

using Vec = std::vector<double>;
constexpr double kInf = std::numeric_limits<double>::infinity();

Vec vals(const Tensor& t) { return t.to_vector<double>(); }

// Overwrites a float64 parameter's values (not recorded).
void set_values(Tensor p, const Vec& v) {
  REQUIRE(p.dtype() == f64);
  REQUIRE(static_cast<std::size_t>(p.numel()) == v.size());
  std::memcpy(p.data<double>(), v.data(), v.size() * sizeof(double));
}

// Context and weights in one tensor, so one gradcheck covers both outputs.
Tensor both(const AttentionOutput& o) { return concat({flatten(o.context), flatten(o.weights)}, 0); }

// Gradcheck of fn w.r.t. tensors it reads itself (module parameters).
void params_ok(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt) {
  const GradcheckReport r = gradcheck(fn, wrt);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// f() throws an E whose message contains every needle.
template <class E, class F>
void throws_with(F&& f, std::initializer_list<const char*> needles) {
  bool thrown = false;
  try {
    f();
  } catch (const E& e) {
    thrown = true;
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const char* n : needles) CHECK(msg.find(n) != std::string::npos);
  }
  CHECK(thrown);
}

// ---- independent references -----------------------------------------------------------

struct Ref {
  Vec context, weights;
};

// Bahdanau: e[l] = v · tanh(Wq q + bias + Wk k[l]); keep = mask[b, l] != 0 (empty mask: all).
Ref ref_additive(const Vec& q, const Vec& k, const Vec& val, const Vec& wq, const Vec& wk, const Vec& v,
                 const Vec& bias, const Vec& mask, int B, int L, int Dq, int Dk, int Dv, int A) {
  Ref r{Vec(B * Dv, 0.0), Vec(B * L, 0.0)};
  for (int b = 0; b < B; ++b) {
    Vec qp(A, 0.0);
    for (int a = 0; a < A; ++a) {
      for (int d = 0; d < Dq; ++d) qp[a] += wq[a * Dq + d] * q[b * Dq + d];
      if (!bias.empty()) qp[a] += bias[a];
    }
    Vec e(L, 0.0);
    std::vector<bool> keep(L, true);
    for (int l = 0; l < L; ++l) {
      for (int a = 0; a < A; ++a) {
        double kp = 0.0;
        for (int d = 0; d < Dk; ++d) kp += wk[a * Dk + d] * k[(b * L + l) * Dk + d];
        e[l] += v[a] * std::tanh(qp[a] + kp);
      }
      if (!mask.empty()) keep[l] = mask[b * L + l] != 0.0;
    }
    const Vec w = ref_softmax(e, keep);
    for (int l = 0; l < L; ++l) {
      r.weights[b * L + l] = w[l];
      for (int d = 0; d < Dv; ++d) r.context[b * Dv + d] += w[l] * val[(b * L + l) * Dv + d];
    }
  }
  return r;
}

// Luong: query [B, Tq, Dq]; general applies W [Dk, Dq] to the query first.
Ref ref_dot(const Vec& q, const Vec& k, const Vec& val, const Vec& W, DotScore mode, const Vec& mask, int B, int Tq,
            int L, int Dq, int Dk, int Dv) {
  Ref r{Vec(B * Tq * Dv, 0.0), Vec(B * Tq * L, 0.0)};
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < Tq; ++t) {
      Vec qq(Dk, 0.0);
      for (int i = 0; i < Dk; ++i) {
        if (mode == DotScore::general) {
          for (int d = 0; d < Dq; ++d) qq[i] += W[i * Dq + d] * q[(b * Tq + t) * Dq + d];
        } else {
          qq[i] = q[(b * Tq + t) * Dq + i];
        }
      }
      Vec e(L, 0.0);
      std::vector<bool> keep(L, true);
      for (int l = 0; l < L; ++l) {
        for (int i = 0; i < Dk; ++i) e[l] += qq[i] * k[(b * L + l) * Dk + i];
        if (mode == DotScore::scaled) e[l] /= std::sqrt(static_cast<double>(Dk));
        if (!mask.empty()) keep[l] = mask[b * L + l] != 0.0;
      }
      const Vec w = ref_softmax(e, keep);
      for (int l = 0; l < L; ++l) {
        r.weights[(b * Tq + t) * L + l] = w[l];
        for (int d = 0; d < Dv; ++d) r.context[(b * Tq + t) * Dv + d] += w[l] * val[(b * L + l) * Dv + d];
      }
    }
  }
  return r;
}

// nn.MultiheadAttention, seq-first: query [L,B,E], key [S,B,Kd], value [S,B,Vd].
// wq [E,E], wk [E,Kd], wv [E,Vd], bin [3E] (or empty), wo [E,E], bo [E] (or empty).
// kpm [B,S] nonzero = ignore; add [L,S] or [B*H,L,S] added; forbid (same shapes) nonzero = ignore.
struct MhaRef {
  Vec out, weights;  // [L,B,E], [B,L,S] averaged over heads
  Vec head_weights;  // [B,H,L,S]
};
MhaRef ref_mha(const Vec& query, const Vec& key, const Vec& value, const Vec& wq, const Vec& wk, const Vec& wv,
               const Vec& bin, const Vec& wo, const Vec& bo, int L, int S, int B, int E, int H, int Kd, int Vd,
               const Vec& kpm, const Vec& add, const Vec& forbid, bool mask3d) {
  const int dh = E / H;
  auto proj = [&](const Vec& x, const Vec& w, int off, int T, int D) {
    Vec y(T * B * E, 0.0);
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        for (int e = 0; e < E; ++e) {
          double s = bin.empty() ? 0.0 : bin[off + e];
          for (int i = 0; i < D; ++i) s += w[e * D + i] * x[(t * B + b) * D + i];
          y[(t * B + b) * E + e] = s;
        }
    return y;
  };
  const Vec qp = proj(query, wq, 0, L, E), kp = proj(key, wk, E, S, Kd), vp = proj(value, wv, 2 * E, S, Vd);
  MhaRef r{Vec(L * B * E, 0.0), Vec(B * L * S, 0.0), Vec(B * H * L * S, 0.0)};
  Vec ctx(L * B * E, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int l = 0; l < L; ++l) {
        Vec e(S, 0.0);
        std::vector<bool> keep(S, true);
        const int mrow = mask3d ? ((b * H + h) * L + l) : l;
        for (int j = 0; j < S; ++j) {
          for (int d = 0; d < dh; ++d) e[j] += qp[(l * B + b) * E + h * dh + d] * kp[(j * B + b) * E + h * dh + d];
          e[j] /= std::sqrt(static_cast<double>(dh));
          if (!add.empty()) e[j] += add[mrow * S + j];
          if (!kpm.empty() && kpm[b * S + j] != 0.0) keep[j] = false;
          if (!forbid.empty() && forbid[mrow * S + j] != 0.0) keep[j] = false;
        }
        const Vec w = ref_softmax(e, keep);
        for (int j = 0; j < S; ++j) {
          r.head_weights[((b * H + h) * L + l) * S + j] = w[j];
          r.weights[(b * L + l) * S + j] += w[j] / H;
          for (int d = 0; d < dh; ++d) ctx[(l * B + b) * E + h * dh + d] += w[j] * vp[(j * B + b) * E + h * dh + d];
        }
      }
  for (int l = 0; l < L; ++l)
    for (int b = 0; b < B; ++b)
      for (int e = 0; e < E; ++e) {
        double s = bo.empty() ? 0.0 : bo[e];
        for (int i = 0; i < E; ++i) s += wo[e * E + i] * ctx[(l * B + b) * E + i];
        r.out[(l * B + b) * E + e] = s;
      }
  return r;
}

Vec slice_rows(const Vec& w, int r0, int n, int cols) {
  return Vec(w.begin() + static_cast<std::ptrdiff_t>(r0) * cols, w.begin() + static_cast<std::ptrdiff_t>(r0 + n) * cols);
}

// Gives every parameter of m random values (biases included, so bias paths are tested).
void randomise(nn::Module& m, std::uint64_t seed, double scale = 0.5) {
  for (auto& [name, p] : m.named_parameters()) {
    set_values(p, vals(rnd(p.shape(), -scale, scale, seed++)));
  }
}

}  // namespace

// =======================================================================================
// AdditiveAttention
// =======================================================================================

TEST_CASE("AdditiveAttention: parameters, names and init") {
  manual_seed(1);
  AdditiveAttention m(6, 4, 5);
  const auto named = m.named_parameters();
  REQUIRE(named.size() == 3);
  CHECK(named[0].first == "w_query");
  CHECK(named[0].second.shape() == Shape{5, 6});
  CHECK(named[1].first == "w_key");
  CHECK(named[1].second.shape() == Shape{5, 4});
  CHECK(named[2].first == "v");
  CHECK(named[2].second.shape() == Shape{5});
  CHECK(named[0].second.dtype() == f32);
  for (double x : vals(m.w_query)) CHECK(std::fabs(x) <= 1 / std::sqrt(6.0));
  for (double x : vals(m.w_key)) CHECK(std::fabs(x) <= 1 / std::sqrt(4.0));
  for (double x : vals(m.v)) CHECK(std::fabs(x) <= 1 / std::sqrt(5.0));
  AdditiveAttention mb(nn::AdditiveAttentionOptions{.query_size = 3, .key_size = 2, .hidden_size = 4, .bias = true});
  CHECK(mb.named_parameters().back().first == "bias");
  CHECK(mb.bias.shape() == Shape{4});
  // Seeded: the same seed draws the same parameters.
  manual_seed(1);
  AdditiveAttention m2(6, 4, 5);
  check_close(m2.w_key, m.w_key, 0, 0);
  throws_with<ShapeError>([] { AdditiveAttention(0, 4, 5); }, {"AdditiveAttention", "query_size"});
  throws_with<ShapeError>([] { AdditiveAttention(3, 4, -1); }, {"AdditiveAttention", "hidden_size"});
}

TEST_CASE("AdditiveAttention: values against a hand-written reference, with and without mask, bias, values") {
  DefaultDtypeGuard g(f64);
  const int B = 3, L = 4, Dq = 5, Dk = 3, Dv = 2, A = 6;
  for (bool with_bias : {false, true}) {
    AdditiveAttention m(nn::AdditiveAttentionOptions{.query_size = Dq, .key_size = Dk, .hidden_size = A, .bias = with_bias});
    randomise(m, 11, 0.8);
    const Tensor q = rnd({B, Dq}, -1, 1, 1), k = rnd({B, L, Dk}, -1, 1, 2), val = rnd({B, L, Dv}, -1, 1, 3);
    const Vec bias = with_bias ? vals(m.bias) : Vec{};
    const Vec mask = {1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1};
    for (bool masked : {false, true}) {
      const Tensor mk = masked ? from_vector(mask, {B, L}) : Tensor();
      const auto out = m(q, k, val, mk);
      const Ref r = ref_additive(vals(q), vals(k), vals(val), vals(m.w_query), vals(m.w_key), vals(m.v), bias,
                                 masked ? mask : Vec{}, B, L, Dq, Dk, Dv, A);
      CHECK(out.context.shape() == Shape{B, Dv});
      CHECK(out.weights.shape() == Shape{B, L});
      check_values(out.context, r.context, 1e-14, 1e-12);
      check_values(out.weights, r.weights, 1e-14, 1e-12);
      check_rows(out.weights, masked ? mask : Vec{}, B, 1, L);
    }
    // Default values = keys.
    const auto self = m(q, k);
    const Ref rk = ref_additive(vals(q), vals(k), vals(k), vals(m.w_query), vals(m.w_key), vals(m.v), bias, {}, B, L,
                                Dq, Dk, Dk, A);
    CHECK(self.context.shape() == Shape{B, Dk});
    check_values(self.context, rk.context, 1e-14, 1e-12);
  }
}

TEST_CASE("AdditiveAttention: a mask of any dtype, a one-key row gets weight 1") {
  // (Equal up to rounding, not bitwise: BLAS may sum in another order for another
  // buffer alignment.)
  DefaultDtypeGuard g(f64);
  AdditiveAttention m(2, 2, 3);
  const Tensor q = rnd({2, 2}), k = rnd({2, 3, 2});
  const auto a = m(q, k, Tensor(), from_vector(Vec{0, 1, 0, 1, 1, 0}, {2, 3}));
  const auto b = m(q, k, Tensor(), from_vector(std::vector<std::int64_t>{0, 5, 0, -1, 1, 0}, {2, 3}));
  const auto c = m(q, k, Tensor(), from_vector(Vec{0, 1, 0, 1, 1, 0}, {2, 3}, f32));
  check_close(a.weights, b.weights, 1e-15, 1e-14);
  check_close(a.weights, c.weights, 1e-15, 1e-14);
  check_values(select(a.weights, 0, 0), {0.0, 1.0, 0.0}, 0, 0);
  check_close(select(a.context, 0, 0), select(select(k, 0, 0), 0, 1), 0, 1e-15);
}

TEST_CASE("AdditiveAttention: precompute_keys gives the same result, and a decoder loop reuses it") {
  DefaultDtypeGuard g(f64);
  AdditiveAttention m(4, 3, 5);
  randomise(m, 3);
  const Tensor k = rnd({2, 6, 3}, -1, 1, 7), mask = from_vector(Vec{1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1}, {2, 6});
  const auto keys = m.precompute_keys(k);
  CHECK(keys.projected.shape() == Shape{2, 6, 5});
  check_close(keys.projected, linear(k, m.w_key), 1e-15, 1e-14);
  const Tensor q = rnd({2, 4}, -1, 1, 8);
  check_close(m(q, keys, Tensor(), mask).context, m(q, k, Tensor(), mask).context, 1e-15, 1e-14);
  // Three decoder steps over one projection of the keys: the keys' gradient (through both
  // the projection and the values) is right.
  const Tensor w_next = rnd({3, 4}, -1, 1, 9);
  gradcheck_ok(
      [&](const std::vector<Tensor>& in) {
        const auto pk = m.precompute_keys(in[0]);
        Tensor h = in[1];
        std::vector<Tensor> outs;
        for (int t = 0; t < 3; ++t) {
          const auto o = m(h, pk, Tensor(), mask);
          outs.push_back(o.context);
          h = tanh(add(mul(h, 0.5), matmul(o.context, w_next)));  // the next decoder state
        }
        return stack(outs, 0);
      },
      {k, q});
}

TEST_CASE("gradcheck AdditiveAttention w.r.t. query, keys, values and every parameter, with and without mask") {
  DefaultDtypeGuard g(f64);
  AdditiveAttention m(nn::AdditiveAttentionOptions{.query_size = 3, .key_size = 4, .hidden_size = 5, .bias = true});
  randomise(m, 5);
  const Tensor q = rnd({2, 3}, -1, 1, 1), k = rnd({2, 5, 4}, -1, 1, 2), val = rnd({2, 5, 3}, -1, 1, 3);
  const Tensor mask = from_vector(Vec{1, 0, 1, 1, 0, 0, 1, 1, 0, 1}, {2, 5});
  for (const Tensor& mk : {Tensor(), mask}) {
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], in[2], mk)); }, {q, k, val});
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], Tensor(), mk)); }, {q, k});
    params_ok([&] { return both(m(q, k, val, mk)); }, m.parameters());
  }
  // Size-1 dims.
  AdditiveAttention m1(1, 1, 1);
  m1.to(f64);
  gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m1(in[0], in[1], in[2])); },
               {rnd({1, 1}), rnd({1, 1, 1}), rnd({1, 1, 2})});
  params_ok([&] { return both(m1(rnd({1, 1}), rnd({1, 2, 1}), rnd({1, 2, 1}))); }, m1.parameters());
}

TEST_CASE("AdditiveAttention: float32 matches float64, empty batch works") {
  DefaultDtypeGuard g(f64);
  AdditiveAttention m(3, 2, 4);
  const Tensor q = rnd({2, 3}), k = rnd({2, 5, 2}), mask = from_vector(Vec{1, 0, 1, 1, 1, 1, 1, 1, 1, 0}, {2, 5});
  const auto o64 = m(q, k, Tensor(), mask);
  m.to(f32);
  const auto o32 = m(q.to(f32), k.to(f32), Tensor(), mask);
  CHECK(o32.context.dtype() == f32);
  check_close(o32.context, o64.context, 1e-6, 1e-5);
  check_close(o32.weights, o64.weights, 1e-6, 1e-5);
  const auto e = m(zeros({0, 3}, f32), zeros({0, 5, 2}, f32));
  CHECK(e.context.shape() == Shape{0, 2});
  CHECK(e.weights.shape() == Shape{0, 5});
}

TEST_CASE("AdditiveAttention: bad input") {
  DefaultDtypeGuard g(f64);
  AdditiveAttention m(3, 2, 4);
  const Tensor q = rnd({2, 3}), k = rnd({2, 5, 2});
  throws_with<ShapeError>([&] { m(rnd({2, 4}), k); }, {"AdditiveAttention", "query", "[2,4]", "3"});
  throws_with<ShapeError>([&] { m(rnd({2, 1, 3}), k); }, {"AdditiveAttention", "query", "2-d"});
  throws_with<ShapeError>([&] { m(q, rnd({2, 5, 3})); }, {"AdditiveAttention", "keys", "[2,5,3]"});
  throws_with<ShapeError>([&] { m(q, rnd({10, 2})); }, {"AdditiveAttention", "keys"});
  throws_with<ShapeError>([&] { m(q, rnd({3, 5, 2})); }, {"AdditiveAttention", "batch sizes differ"});
  throws_with<ShapeError>([&] { m(q, k, rnd({2, 4, 2})); }, {"AdditiveAttention", "values", "[2,4,2]", "L = 5"});
  throws_with<ShapeError>([&] { m(q, k, rnd({1, 5, 2})); }, {"AdditiveAttention", "values"});
  throws_with<ShapeError>([&] { m(q, k, rnd({2, 5})); }, {"AdditiveAttention", "values"});
  throws_with<ShapeError>([&] { m(q, k, Tensor(), ones({2, 4}, f64)); }, {"AdditiveAttention", "mask", "[2,4]"});
  throws_with<ShapeError>([&] { m(q, k, Tensor(), ones({5, 2}, f64)); }, {"AdditiveAttention", "mask"});
  throws_with<ShapeError>([&] { m(q, k, Tensor(), ones({2, 5, 1}, f64)); }, {"AdditiveAttention", "mask"});
  throws_with<ShapeError>([&] { m(q, zeros({2, 0, 2}, f64)); }, {"AdditiveAttention", "L = 0"});
  throws_with<Error>([&] { m(q, k, Tensor(), from_vector(Vec{1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {2, 5})); },
                     {"AdditiveAttention", "batch 1", "every position is masked"});
  throws_with<DtypeError>([&] { m(q.to(f32), k); }, {"AdditiveAttention", "query", "float32"});
  throws_with<DtypeError>([&] { m(q, k, rnd({2, 5, 2}).to(f32)); }, {"AdditiveAttention", "values"});
  throws_with<DtypeError>([&] { m(from_vector(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}, {2, 3}), k); },
                          {"AdditiveAttention", "int64"});
  throws_with<StateError>([&] { m(Tensor(), k); }, {"AdditiveAttention", "undefined"});
  // Projected keys from another module (a different hidden size) are caught.
  AdditiveAttention other(3, 2, 7);
  other.to(f64);
  const auto foreign = other.precompute_keys(k);
  throws_with<ShapeError>([&] { m(q, foreign); }, {"AdditiveAttention", "projected keys"});
}

// =======================================================================================
// Show-Attend-Tell: additive attention over a CNN feature grid
// =======================================================================================

TEST_CASE("Show-Attend-Tell: spatial attention over a 4x4 feature grid learns to look at the object cell") {
  // A CNN's last feature map [B, D, 4, 4] holds small non-negative (post-ReLU) noise
  // everywhere except one cell per image, at a different place in each image, that
  // carries the object's pattern. The decoder's state (an LSTM-style h = o * tanh(c))
  // is the query; the decoder needs to see the object, so the loss asks the attended
  // context to reproduce the pattern. A few SGD steps on the attention parameters must
  // make the weights concentrate on the object cell, found by content, not position:
  // an image with the object at a cell never seen in training is attended right too.
  DefaultDtypeGuard g(f64);
  manual_seed(7);
  const int B = 4, D = 8, G = 4, L = G * G, Dq = 6, A = 16;
  Vec pattern(D);
  for (int d = 0; d < D; ++d) pattern[d] = (d % 2 == 0) ? 2.0 : 0.0;
  // [B, D, 4, 4] -> [B, 4, 4, D] -> [B, 16, D]: one annotation vector per cell.
  auto grid = [&](const std::vector<int>& cells) {
    const int n = static_cast<int>(cells.size());
    Vec fmap = vals(uniform({n, D, G, G}, 0.0, 0.5, f64));
    for (int b = 0; b < n; ++b)
      for (int d = 0; d < D; ++d) fmap[(b * D + d) * G * G + cells[b]] = pattern[d];
    return reshape(permute(from_vector(fmap, {n, D, G, G}), {0, 2, 3, 1}), {n, L, D});
  };
  const std::vector<int> object_cell = {5, 0, 15, 10};
  const Tensor features = grid(object_cell);

  // Decoder state: the gates of an LSTM step on a fixed input embedding.
  const Tensor x = rnd({B, 5}, -1, 1, 21), w_o = rnd({Dq, 5}, -1, 1, 22), w_c = rnd({Dq, 5}, -1, 1, 23);
  const Tensor h = mul(sigmoid(linear(x, w_o)), tanh(linear(x, w_c)));  // [B, Dq]

  AdditiveAttention att(Dq, D, A);
  const Tensor target = broadcast_to(from_vector(pattern, {1, D}), {B, D});
  auto object_weight = [&](const Tensor& w, int b, int cell) { return vals(w)[b * L + cell]; };
  {
    NoGradGuard ng;
    const auto before = att(h, features);
    for (int b = 0; b < B; ++b) CHECK(object_weight(before.weights, b, object_cell[b]) < 0.1);  // about 1/16
  }
  const double lr = 0.5;
  for (int step = 0; step < 30; ++step) {
    att.zero_grad();
    const auto out = att(h, features);
    mse_loss(out.context, target).backward();
    for (Tensor p : att.parameters()) {
      double* pv = p.data<double>();
      const Vec gv = vals(p.grad());
      for (std::size_t i = 0; i < gv.size(); ++i) pv[i] -= lr * gv[i];
    }
  }
  NoGradGuard ng;
  const auto after = att(h, features);
  const std::vector<std::int64_t> best = argmax(after.weights, 1).to_vector<std::int64_t>();
  for (int b = 0; b < B; ++b) {
    INFO("image " << b << ", object at cell " << object_cell[b]);
    CHECK(best[b] == object_cell[b]);
    CHECK(object_weight(after.weights, b, object_cell[b]) > 0.9);
  }
  check_rows(after.weights, {}, B, 1, L);
  // New images, objects at cells no training image had them in.
  const std::vector<int> new_cells = {12, 3, 9, 6};
  const auto unseen = att(h, grid(new_cells));
  const std::vector<std::int64_t> best_new = argmax(unseen.weights, 1).to_vector<std::int64_t>();
  for (int b = 0; b < B; ++b) {
    INFO("new image " << b << ", object at cell " << new_cells[b]);
    CHECK(best_new[b] == new_cells[b]);
    CHECK(object_weight(unseen.weights, b, new_cells[b]) > 0.9);
  }
}

// =======================================================================================
// DotAttention
// =======================================================================================

TEST_CASE("DotAttention: parameters per mode") {
  CHECK(DotAttention().named_parameters().empty());
  CHECK(DotAttention(DotScore::scaled).named_parameters().empty());
  DotAttention gen(DotScore::general, 5, 3);
  REQUIRE(gen.named_parameters().size() == 1);
  CHECK(gen.named_parameters()[0].first == "weight");
  CHECK(gen.weight.shape() == Shape{3, 5});
  for (double x : vals(gen.weight)) CHECK(std::fabs(x) <= 1 / std::sqrt(5.0));
  throws_with<ShapeError>([] { DotAttention(DotScore::general); }, {"DotAttention", "query_size"});
  throws_with<ShapeError>([] { DotAttention(DotScore::general, 4, 0); }, {"DotAttention", "key_size"});
  throws_with<ShapeError>([] { DotAttention(DotScore::dot, 4, 3); }, {"DotAttention", "query_size == key_size"});
}

TEST_CASE("DotAttention: dot, general and scaled against a hand-written reference, one and many queries") {
  DefaultDtypeGuard g(f64);
  const int B = 2, L = 5, Tq = 3, Dv = 4;
  const Vec mask = {1, 0, 1, 1, 0, 0, 0, 1, 1, 1};
  for (DotScore mode : {DotScore::dot, DotScore::general, DotScore::scaled}) {
    INFO("mode " << static_cast<int>(mode));
    const int Dq = mode == DotScore::general ? 6 : 3, Dk = 3;
    DotAttention m(mode, mode == DotScore::general ? Dq : 0, mode == DotScore::general ? Dk : 0);
    randomise(m, 4, 0.7);
    const Vec W = mode == DotScore::general ? vals(m.weight) : Vec{};
    const Tensor k = rnd({B, L, Dk}, -1, 1, 2), val = rnd({B, L, Dv}, -1, 1, 3);
    for (bool masked : {false, true}) {
      const Tensor mk = masked ? from_vector(mask, {B, L}) : Tensor();
      const Vec mv = masked ? mask : Vec{};
      const Tensor q3 = rnd({B, Tq, Dq}, -1.5, 1.5, 1);
      const auto o3 = m(q3, k, val, mk);
      const Ref r3 = ref_dot(vals(q3), vals(k), vals(val), W, mode, mv, B, Tq, L, Dq, Dk, Dv);
      CHECK(o3.context.shape() == Shape{B, Tq, Dv});
      CHECK(o3.weights.shape() == Shape{B, Tq, L});
      check_values(o3.context, r3.context, 1e-14, 1e-12);
      check_values(o3.weights, r3.weights, 1e-14, 1e-12);
      check_rows(o3.weights, mv, B, Tq, L);
      const Tensor q2 = rnd({B, Dq}, -1.5, 1.5, 5);
      const auto o2 = m(q2, k, val, mk);
      const Ref r2 = ref_dot(vals(q2), vals(k), vals(val), W, mode, mv, B, 1, L, Dq, Dk, Dv);
      CHECK(o2.context.shape() == Shape{B, Dv});
      CHECK(o2.weights.shape() == Shape{B, L});
      check_values(o2.context, r2.context, 1e-14, 1e-12);
      check_values(o2.weights, r2.weights, 1e-14, 1e-12);
    }
  }
}

TEST_CASE("DotAttention: a [B, D] query is the Tq = 1 case of [B, Tq, D]; scaled is dot over sqrt(d)") {
  DefaultDtypeGuard g(f64);
  DotAttention dot, scaled(DotScore::scaled);
  const Tensor q = rnd({3, 4}, -1, 1, 1), k = rnd({3, 6, 4}, -1, 1, 2);
  const auto a = dot(q, k), b = dot(unsqueeze(q, 1), k);
  check_close(a.context, squeeze(b.context, 1), 0, 1e-15);
  check_close(a.weights, squeeze(b.weights, 1), 0, 1e-15);
  check_close(scaled(q, k).weights, dot(div(q, 2.0), k).weights, 1e-15, 1e-13);
}

TEST_CASE("gradcheck DotAttention w.r.t. query, keys, values and the general weight, with and without mask") {
  DefaultDtypeGuard g(f64);
  const Tensor mask = from_vector(Vec{1, 1, 0, 1, 0, 1, 1, 0}, {2, 4});
  for (DotScore mode : {DotScore::dot, DotScore::general, DotScore::scaled}) {
    INFO("mode " << static_cast<int>(mode));
    const int Dq = mode == DotScore::general ? 5 : 3;
    DotAttention m(mode, mode == DotScore::general ? Dq : 0, mode == DotScore::general ? 3 : 0);
    const Tensor k = rnd({2, 4, 3}, -1, 1, 2), val = rnd({2, 4, 2}, -1, 1, 3);
    for (const Tensor& mk : {Tensor(), mask}) {
      gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], in[2], mk)); },
                   {rnd({2, 3, Dq}, -1, 1, 1), k, val});
      gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], Tensor(), mk)); },
                   {rnd({2, Dq}, -1, 1, 4), k});
      if (mode == DotScore::general) {
        const Tensor q = rnd({2, 3, Dq}, -1, 1, 1);
        params_ok([&] { return both(m(q, k, val, mk)); }, m.parameters());
      }
    }
  }
  // Self-attention: the same tensor is query, keys and values.
  DotAttention sa(DotScore::scaled);
  gradcheck_ok([&](const std::vector<Tensor>& in) { return both(sa(in[0], in[0])); }, {rnd({2, 3, 4})});
  // Size-1 dims.
  gradcheck_ok([&](const std::vector<Tensor>& in) { return both(sa(in[0], in[1], in[2])); },
               {rnd({1, 1, 1}), rnd({1, 1, 1}), rnd({1, 1, 1})});
}

TEST_CASE("DotAttention: bad input") {
  DefaultDtypeGuard g(f64);
  DotAttention dot, gen(DotScore::general, 4, 3);
  const Tensor k = rnd({2, 5, 3});
  throws_with<ShapeError>([&] { dot(rnd({2, 4}), k); }, {"DotAttention", "[2,4]", "[2,5,3]", "equal feature sizes"});
  throws_with<ShapeError>([&] { gen(rnd({2, 3}), k); }, {"DotAttention", "query", "4"});
  throws_with<ShapeError>([&] { gen(rnd({2, 4}), rnd({2, 5, 4})); }, {"DotAttention", "keys", "3"});
  throws_with<ShapeError>([&] { dot(rnd({6}), k); }, {"DotAttention", "query", "[B, Dq]"});
  throws_with<ShapeError>([&] { dot(rnd({2, 1, 1, 3}), k); }, {"DotAttention", "query"});
  throws_with<ShapeError>([&] { dot(rnd({3, 3}), k); }, {"DotAttention", "batch sizes differ"});
  throws_with<ShapeError>([&] { dot(rnd({2, 3}), k, rnd({2, 6, 3})); }, {"DotAttention", "values", "L = 5"});
  throws_with<ShapeError>([&] { dot(rnd({2, 3}), k, Tensor(), ones({2, 6}, f64)); }, {"DotAttention", "mask"});
  throws_with<ShapeError>([&] { dot(rnd({2, 2, 3}), k, Tensor(), ones({2, 2, 5}, f64)); }, {"DotAttention", "mask"});
  throws_with<ShapeError>([&] { dot(rnd({2, 3}), zeros({2, 0, 3}, f64)); }, {"DotAttention", "L = 0"});
  throws_with<Error>([&] { dot(rnd({2, 2, 3}), k, Tensor(), from_vector(Vec{0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, {2, 5})); },
                     {"DotAttention", "batch 0, query 0", "every position is masked"});
  throws_with<DtypeError>([&] { dot(rnd({2, 3}).to(f32), k); }, {"DotAttention", "keys"});
  throws_with<DtypeError>([&] { gen(rnd({2, 4}).to(f32), k.to(f32)); }, {"DotAttention", "query"});
  throws_with<ShapeError>([] { DotAttention(DotScore::scaled, 4)(rnd({2, 3}), rnd({2, 5, 3})); },
                          {"DotAttention", "query", "4"});
}

// =======================================================================================
// MultiheadAttention
// =======================================================================================

TEST_CASE("MultiheadAttention: PyTorch's parameter names, shapes, order and init") {
  manual_seed(3);
  MultiheadAttention m(8, 2);
  const auto named = m.named_parameters();
  REQUIRE(named.size() == 4);
  CHECK(named[0].first == "in_proj_weight");
  CHECK(named[0].second.shape() == Shape{24, 8});
  CHECK(named[1].first == "in_proj_bias");
  CHECK(named[1].second.shape() == Shape{24});
  CHECK(named[2].first == "out_proj.weight");
  CHECK(named[2].second.shape() == Shape{8, 8});
  CHECK(named[3].first == "out_proj.bias");
  CHECK(named[3].second.shape() == Shape{8});
  const double xavier = std::sqrt(6.0 / (8 + 24));
  double maxabs = 0;
  for (double x : vals(m.in_proj_weight)) maxabs = std::max(maxabs, std::fabs(x));
  CHECK(maxabs <= xavier);
  CHECK(maxabs > 0.8 * xavier);  // 192 draws fill the range
  for (double x : vals(m.in_proj_bias)) CHECK(x == 0.0);
  for (double x : vals(m.out_proj->bias)) CHECK(x == 0.0);
  for (double x : vals(m.out_proj->weight)) CHECK(std::fabs(x) <= 1 / std::sqrt(8.0));

  MultiheadAttention kv(nn::MultiheadAttentionOptions{.embed_dim = 6, .num_heads = 3, .bias = false, .kdim = 4, .vdim = 5});
  const auto nk = kv.named_parameters();
  REQUIRE(nk.size() == 4);
  CHECK(nk[0].first == "q_proj_weight");
  CHECK(nk[0].second.shape() == Shape{6, 6});
  CHECK(nk[1].first == "k_proj_weight");
  CHECK(nk[1].second.shape() == Shape{6, 4});
  CHECK(nk[2].first == "v_proj_weight");
  CHECK(nk[2].second.shape() == Shape{6, 5});
  CHECK(nk[3].first == "out_proj.weight");
  CHECK(!kv.in_proj_weight.defined());
  CHECK(!kv.out_proj->bias.defined());
  // kdim == vdim == embed_dim given explicitly is the packed layout, like PyTorch.
  MultiheadAttention same(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 1, .kdim = 4, .vdim = 4});
  CHECK(same.in_proj_weight.defined());
}

TEST_CASE("MultiheadAttention: constructor errors") {
  throws_with<ShapeError>([] { MultiheadAttention(10, 3); }, {"MultiheadAttention", "10", "not divisible", "3"});
  throws_with<ShapeError>([] { MultiheadAttention(0, 1); }, {"MultiheadAttention", "embed_dim"});
  throws_with<ShapeError>([] { MultiheadAttention(8, 0); }, {"MultiheadAttention", "num_heads"});
  throws_with<ShapeError>([] { MultiheadAttention(8, -2); }, {"MultiheadAttention", "num_heads"});
  throws_with<Error>([] { MultiheadAttention(nn::MultiheadAttentionOptions{.embed_dim = 4, .dropout = 1.5}); },
                     {"MultiheadAttention", "dropout"});
  throws_with<Error>([] { MultiheadAttention(nn::MultiheadAttentionOptions{.embed_dim = 4, .dropout = -0.1}); },
                     {"MultiheadAttention", "dropout"});
  throws_with<ShapeError>([] { MultiheadAttention(nn::MultiheadAttentionOptions{.embed_dim = 4, .kdim = -1}); },
                          {"MultiheadAttention", "kdim"});
}

namespace {

struct MhaCase {
  int L = 3, S = 4, B = 2, E = 6, H = 2, Kd = 6, Vd = 6;
};

// The module's q/k/v weights, whichever layout it uses.
void mha_weights(const MultiheadAttention& m, Vec& wq, Vec& wk, Vec& wv) {
  const int E = static_cast<int>(m.options.embed_dim);
  if (m.in_proj_weight.defined()) {
    const Vec w = vals(m.in_proj_weight);
    wq = slice_rows(w, 0, E, E);
    wk = slice_rows(w, E, E, E);
    wv = slice_rows(w, 2 * E, E, E);
  } else {
    wq = vals(m.q_proj_weight);
    wk = vals(m.k_proj_weight);
    wv = vals(m.v_proj_weight);
  }
}

MhaRef mha_ref_of(const MultiheadAttention& m, const Tensor& q, const Tensor& k, const Tensor& v, const MhaCase& c,
                  const Vec& kpm, const Vec& add, const Vec& forbid, bool mask3d) {
  Vec wq, wk, wv;
  mha_weights(m, wq, wk, wv);
  return ref_mha(vals(q), vals(k), vals(v), wq, wk, wv, m.in_proj_bias.defined() ? vals(m.in_proj_bias) : Vec{},
                 vals(m.out_proj->weight), m.out_proj->bias.defined() ? vals(m.out_proj->bias) : Vec{}, c.L, c.S, c.B,
                 c.E, c.H, c.Kd, c.Vd, kpm, add, forbid, mask3d);
}

}  // namespace

TEST_CASE("MultiheadAttention: values against a hand-written reference, every mask kind") {
  DefaultDtypeGuard g(f64);
  const MhaCase c;
  MultiheadAttention m(c.E, c.H);
  randomise(m, 31, 0.6);
  const Tensor q = rnd({c.L, c.B, c.E}, -1, 1, 1), k = rnd({c.S, c.B, c.E}, -1, 1, 2),
               v = rnd({c.S, c.B, c.E}, -1, 1, 3);
  const Vec kpm = {0, 0, 1, 0, 1, 0, 0, 1};                    // [B, S], 1 = ignore
  const Vec add = vals(rnd({c.L, c.S}, -1, 1, 4));             // [L, S]
  const Vec forbid = {0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0};     // [L, S], 1 = may not attend
  const Vec add3 = vals(rnd({c.B * c.H, c.L, c.S}, -1, 1, 5));  // [B*H, L, S]
  std::vector<std::int64_t> forbid_i(forbid.begin(), forbid.end());

  struct Variant {
    const char* name;
    Tensor kpm_t, mask_t;
    Vec kpm, add, forbid;
    bool mask3d;
  };
  const std::vector<Variant> variants = {
      {"no masks", Tensor(), Tensor(), {}, {}, {}, false},
      {"key_padding_mask", from_vector(kpm, {c.B, c.S}), Tensor(), kpm, {}, {}, false},
      {"float attn_mask", Tensor(), from_vector(add, {c.L, c.S}), {}, add, {}, false},
      {"bool attn_mask + key_padding_mask", from_vector(kpm, {c.B, c.S}), from_vector(forbid_i, {c.L, c.S}), kpm, {},
       forbid, false},
      {"float attn_mask + key_padding_mask", from_vector(kpm, {c.B, c.S}), from_vector(add, {c.L, c.S}), kpm, add, {},
       false},
      {"3-D float attn_mask", Tensor(), from_vector(add3, {c.B * c.H, c.L, c.S}), {}, add3, {}, true},
  };
  for (const Variant& var : variants) {
    INFO(var.name);
    const auto out = m(q, k, v, {.key_padding_mask = var.kpm_t, .attn_mask = var.mask_t});
    const MhaRef r = mha_ref_of(m, q, k, v, c, var.kpm, var.add, var.forbid, var.mask3d);
    CHECK(out.context.shape() == Shape{c.L, c.B, c.E});
    CHECK(out.weights.shape() == Shape{c.B, c.L, c.S});
    check_values(out.context, r.out, 1e-14, 1e-12);
    check_values(out.weights, r.weights, 1e-14, 1e-12);
    // Per-head weights, rows summing to 1 and exact zeros where keys are padding.
    const auto heads = m(q, k, v, {.key_padding_mask = var.kpm_t, .attn_mask = var.mask_t,
                                   .average_attn_weights = false});
    CHECK(heads.weights.shape() == Shape{c.B, c.H, c.L, c.S});
    check_values(heads.weights, r.head_weights, 1e-14, 1e-12);
    Vec keep;
    for (double x : var.kpm) keep.push_back(x == 0.0 ? 1.0 : 0.0);
    if (var.forbid.empty() && var.add.empty()) check_rows(heads.weights, keep, c.B, c.H * c.L, c.S);
  }
  // A float mask of the other float dtype is converted; -inf in it forbids exactly.
  Vec hard = add;
  hard[1] = -kInf;
  const auto o32 = m(q, k, v, {.attn_mask = from_vector(hard, {c.L, c.S}, f32)});
  const MhaRef r32 = mha_ref_of(m, q, k, v, c, {}, vals(from_vector(hard, {c.L, c.S}, f32)), {}, false);
  check_values(o32.context, r32.out, 1e-14, 1e-12);
  for (int b = 0; b < c.B; ++b) CHECK(vals(o32.weights)[b * c.L * c.S + 1] == 0.0);
  // need_weights = false: no weights.
  const auto nw = m(q, k, v, {.need_weights = false});
  CHECK(!nw.weights.defined());
  check_values(nw.context, mha_ref_of(m, q, k, v, c, {}, {}, {}, false).out, 1e-14, 1e-12);
}

TEST_CASE("MultiheadAttention: kdim / vdim, no bias, one head, batch_first") {
  DefaultDtypeGuard g(f64);
  MhaCase c;
  c.Kd = 4;
  c.Vd = 5;
  c.H = 3;
  MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = c.E, .num_heads = c.H, .bias = false,
                                                     .kdim = c.Kd, .vdim = c.Vd});
  randomise(m, 41, 0.6);
  const Tensor q = rnd({c.L, c.B, c.E}, -1, 1, 1), k = rnd({c.S, c.B, c.Kd}, -1, 1, 2),
               v = rnd({c.S, c.B, c.Vd}, -1, 1, 3);
  const Vec kpm = {0, 1, 1, 0, 0, 0, 0, 1};
  const auto out = m(q, k, v, {.key_padding_mask = from_vector(kpm, {c.B, c.S})});
  const MhaRef r = mha_ref_of(m, q, k, v, c, kpm, {}, {}, false);
  check_values(out.context, r.out, 1e-14, 1e-12);
  check_values(out.weights, r.weights, 1e-14, 1e-12);

  // One head.
  MhaCase c1;
  c1.H = 1;
  MultiheadAttention m1(c1.E, 1);
  randomise(m1, 42, 0.6);
  const Tensor k1 = rnd({c1.S, c1.B, c1.E}, -1, 1, 4);
  const auto o1 = m1(q, k1, k1);
  INFO("one head");
  check_values(o1.context, mha_ref_of(m1, q, k1, k1, c1, {}, {}, {}, false).out, 1e-14, 1e-12);

  // batch_first: the same module on transposed inputs gives the transposed outputs.
  MultiheadAttention bf(nn::MultiheadAttentionOptions{.embed_dim = c1.E, .num_heads = 2, .batch_first = true});
  MultiheadAttention sf(c1.E, 2);
  randomise(bf, 43);
  sf.load_state_dict(bf.state_dict());
  const Tensor kk = rnd({c1.S, c1.B, c1.E}, -1, 1, 6), vv = rnd({c1.S, c1.B, c1.E}, -1, 1, 7);
  const Tensor mask = from_vector(Vec{0, 0, 1, 0, 1, 0, 0, 0}, {2, 4});
  const auto a = sf(q, kk, vv, {.key_padding_mask = mask});
  const auto b = bf(transpose(q, 0, 1), transpose(kk, 0, 1), transpose(vv, 0, 1), {.key_padding_mask = mask});
  CHECK(b.context.shape() == Shape{c1.B, c1.L, c1.E});
  check_close(b.context, transpose(a.context, 0, 1), 1e-15, 1e-13);
  check_close(b.weights, a.weights, 1e-15, 1e-13);
  // Self-attention (query is key is value).
  INFO("self-attention");
  const auto self = sf(q, q, q);
  CHECK(self.weights.shape() == Shape{c1.B, c1.L, c1.L});
  MhaCase cs = c1;
  cs.S = cs.L;
  cs.H = 2;
  check_values(self.context, mha_ref_of(sf, q, q, q, cs, {}, {}, {}, false).out, 1e-14, 1e-12);
}

TEST_CASE("gradcheck MultiheadAttention w.r.t. query, key, value and every parameter, with masks") {
  DefaultDtypeGuard g(f64);
  const Tensor kpm = from_vector(Vec{0, 0, 1, 0, 1, 0, 0, 1}, {2, 4});
  const Tensor am = rnd({3, 4}, -1, 1, 9);
  const Tensor forbid = from_vector(std::vector<std::int64_t>{0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0}, {3, 4});
  for (bool batch_first : {false, true}) {
    MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 2, .batch_first = batch_first});
    randomise(m, 51, 0.7);
    const Shape qs = batch_first ? Shape{2, 3, 4} : Shape{3, 2, 4};
    const Shape ks = batch_first ? Shape{2, 4, 4} : Shape{4, 2, 4};
    const Tensor q = rnd(qs, -1, 1, 1), k = rnd(ks, -1, 1, 2), v = rnd(ks, -1, 1, 3);
    const std::vector<nn::MultiheadAttentionForwardOptions> opts = {
        {}, {.key_padding_mask = kpm}, {.key_padding_mask = kpm, .attn_mask = am}, {.attn_mask = forbid}};
    for (const auto& o : opts) {
      gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], in[2], o)); }, {q, k, v});
      params_ok([&] { return both(m(q, k, v, o)); }, m.parameters());
    }
    // Self-attention: one tensor feeds all three projections.
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[0], in[0])); }, {q});
  }
  // kdim / vdim, no bias, per-head weights.
  MultiheadAttention kv(nn::MultiheadAttentionOptions{.embed_dim = 6, .num_heads = 3, .bias = false, .kdim = 2, .vdim = 3});
  const Tensor q = rnd({2, 2, 6}, -1, 1, 4), k = rnd({3, 2, 2}, -1, 1, 5), v = rnd({3, 2, 3}, -1, 1, 6);
  const nn::MultiheadAttentionForwardOptions o{.key_padding_mask = from_vector(Vec{0, 1, 0, 0, 0, 1}, {2, 3}),
                                               .average_attn_weights = false};
  gradcheck_ok([&](const std::vector<Tensor>& in) { return both(kv(in[0], in[1], in[2], o)); }, {q, k, v});
  params_ok([&] { return both(kv(q, k, v, o)); }, kv.parameters());
}

TEST_CASE("MultiheadAttention: dropout on the weights in training only") {
  DefaultDtypeGuard g(f64);
  manual_seed(5);
  MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 2, .dropout = 0.5});
  const Tensor q = rnd({3, 2, 4}), k = rnd({6, 2, 4});
  m.eval();
  const auto e1 = m(q, k, k, {.average_attn_weights = false}), e2 = m(q, k, k, {.average_attn_weights = false});
  check_close(e1.context, e2.context, 1e-15, 1e-14);
  check_rows(e1.weights, {}, 2, 6, 6);
  m.train();
  const auto t = m(q, k, k, {.average_attn_weights = false});
  // Each weight is dropped (0) or kept and scaled by 1 / (1 - p) = 2.
  const Vec tw = vals(t.weights), ew = vals(e1.weights);
  int dropped = 0;
  for (std::size_t i = 0; i < tw.size(); ++i) {
    if (tw[i] == 0.0) {
      ++dropped;
    } else {
      CHECK(tw[i] == doctest::Approx(2 * ew[i]).epsilon(1e-12));
    }
  }
  CHECK(dropped > 0);
  CHECK(dropped < static_cast<int>(tw.size()));
  // The context uses the dropped weights (PyTorch returns those same weights).
  Tensor tc = t.context;
  CHECK(vals(tc) != vals(e1.context));
}

TEST_CASE("MultiheadAttention: float32, empty batch, empty query") {
  DefaultDtypeGuard g(f64);
  MultiheadAttention m(4, 2);
  randomise(m, 61);
  const Tensor q = rnd({3, 2, 4}), k = rnd({5, 2, 4});
  const Tensor kpm = from_vector(Vec{0, 0, 0, 1, 1, 1, 0, 0, 0, 0}, {2, 5});
  const auto o64 = m(q, k, k, {.key_padding_mask = kpm});
  m.to(f32);
  const auto o32 = m(q.to(f32), k.to(f32), k.to(f32), {.key_padding_mask = kpm});
  CHECK(o32.context.dtype() == f32);
  check_close(o32.context, o64.context, 1e-6, 1e-5);
  check_close(o32.weights, o64.weights, 1e-6, 1e-5);
  const auto eb = m(zeros({3, 0, 4}, f32), zeros({5, 0, 4}, f32), zeros({5, 0, 4}, f32));
  CHECK(eb.context.shape() == Shape{3, 0, 4});
  CHECK(eb.weights.shape() == Shape{0, 3, 5});
  const auto el = m(zeros({0, 2, 4}, f32), k.to(f32), k.to(f32));
  CHECK(el.context.shape() == Shape{0, 2, 4});
  CHECK(el.weights.shape() == Shape{2, 0, 5});
}

TEST_CASE("MultiheadAttention: bad input") {
  DefaultDtypeGuard g(f64);
  MultiheadAttention m(4, 2);
  const Tensor q = rnd({3, 2, 4}), k = rnd({5, 2, 4});
  throws_with<ShapeError>([&] { m(rnd({3, 4}), k, k); }, {"MultiheadAttention", "query", "[3,4]", "3-d"});
  throws_with<ShapeError>([&] { m(q, rnd({5, 8}), k); }, {"MultiheadAttention", "key"});
  throws_with<ShapeError>([&] { m(rnd({3, 2, 5}), k, k); }, {"MultiheadAttention", "query", "embed_dim", "4"});
  throws_with<ShapeError>([&] { m(q, rnd({5, 2, 3}), k); }, {"MultiheadAttention", "key", "kdim"});
  throws_with<ShapeError>([&] { m(q, k, rnd({5, 2, 3})); }, {"MultiheadAttention", "value", "vdim"});
  throws_with<ShapeError>([&] { m(q, rnd({5, 3, 4}), rnd({5, 3, 4})); }, {"MultiheadAttention", "batch sizes differ"});
  throws_with<ShapeError>([&] { m(q, k, rnd({6, 2, 4})); }, {"MultiheadAttention", "lengths differ", "5 vs 6"});
  throws_with<ShapeError>([&] { m(q, zeros({0, 2, 4}, f64), zeros({0, 2, 4}, f64)); }, {"MultiheadAttention", "S = 0"});
  throws_with<ShapeError>([&] { m(q, k, k, {.key_padding_mask = zeros({5, 2}, f64)}); },
                          {"MultiheadAttention", "key_padding_mask", "[5,2]", "[2,5]"});
  throws_with<ShapeError>([&] { m(q, k, k, {.attn_mask = zeros({5, 3}, f64)}); },
                          {"MultiheadAttention", "attn_mask", "[5,3]", "[3,5]", "[4,3,5]"});
  throws_with<ShapeError>([&] { m(q, k, k, {.attn_mask = zeros({2, 3, 5}, f64)}); },
                          {"MultiheadAttention", "attn_mask"});
  throws_with<Error>([&] { m(q, k, k, {.key_padding_mask = from_vector(Vec{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, {2, 5})}); },
                     {"MultiheadAttention", "batch 1, head 0, query 0", "every position is masked"});
  Vec inf_row(15, 0.0);
  for (int j = 0; j < 5; ++j) inf_row[2 * 5 + j] = -kInf;
  throws_with<Error>([&] { m(q, k, k, {.attn_mask = from_vector(inf_row, {3, 5})}); },
                     {"MultiheadAttention", "query 2", "every position is masked"});
  std::vector<std::int64_t> all_forbidden(15, 0);
  for (int j = 0; j < 5; ++j) all_forbidden[j] = 1;
  throws_with<Error>([&] { m(q, k, k, {.attn_mask = from_vector(all_forbidden, {3, 5})}); },
                     {"MultiheadAttention", "query 0"});
  throws_with<DtypeError>([&] { m(q.to(f32), k, k); }, {"MultiheadAttention", "query", "float32", "float64"});
  throws_with<DtypeError>([&] { m(q, k, k.to(f32)); }, {"MultiheadAttention", "value"});
  throws_with<StateError>([&] { m(q, Tensor(), k); }, {"MultiheadAttention", "key", "undefined"});
  MultiheadAttention bf(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 2, .batch_first = true});
  bf.to(f64);
  // [L, B, E] data given to a batch_first module: the batch sizes no longer agree.
  throws_with<ShapeError>([&] { bf(q, k, k); }, {"MultiheadAttention", "batch sizes differ"});
}

// =======================================================================================
// Agreement with PyTorch (tests/fixtures/gen_nn.py, case mha_kpm)
// =======================================================================================

namespace {

// Every element within rtol relative to the reference, with an absolute floor of rtol
// times the reference's largest magnitude (entries that are 0 or nearly so).
void check_rel(const Tensor& got, const Tensor& want, double rtol) {
  REQUIRE(got.shape() == want.shape());
  double scale = 0;
  for (double x : vals(want)) scale = std::max(scale, std::fabs(x));
  check_values(got, vals(want), rtol * scale, rtol);
}

void mha_agreement(Dtype dt, double rtol) {
  const auto entries = load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/mha_kpm.npz");
  std::map<std::string, Tensor> f(entries.begin(), entries.end());
  auto get = [&](const std::string& n) {
    INFO("fixture entry " << n);
    REQUIRE(f.count(n) == 1);
    return f.at(n);
  };
  DefaultDtypeGuard g(dt);
  MultiheadAttention m(8, 2);
  nn::StateDict sd;
  for (const auto& [name, t] : entries) {
    if (name.rfind("param.", 0) == 0) sd.emplace_back(name.substr(6), t.to(dt));
  }
  m.load_state_dict(sd);
  Tensor query = get("in.query").to(dt), key = get("in.key").to(dt), value = get("in.value").to(dt);
  query.requires_grad_();
  key.requires_grad_();
  value.requires_grad_();
  const auto out = m(query, key, value, {.key_padding_mask = get("in.key_padding_mask")});
  check_rel(out.context, get("out.y"), rtol);
  check_rel(out.weights, get("out.attn_weights"), rtol);
  const Tensor loss =
      add(sum(mul(out.context, get("in.w_y").to(dt))), sum(mul(out.weights, get("in.w_attn_weights").to(dt))));
  loss.backward();
  check_rel(query.grad(), get("grad.in.query"), rtol);
  check_rel(key.grad(), get("grad.in.key"), rtol);
  check_rel(value.grad(), get("grad.in.value"), rtol);
  for (const auto& [name, p] : m.named_parameters()) {
    INFO("parameter " << name);
    check_rel(p.grad(), get("grad.param." + name), rtol);
  }
}

}  // namespace

TEST_CASE("MultiheadAttention agrees with PyTorch (mha_kpm.npz): outputs and gradients, float64") {
  mha_agreement(f64, 1e-10);
}

TEST_CASE("MultiheadAttention agrees with PyTorch (mha_kpm.npz): outputs and gradients, float32") {
  mha_agreement(f32, 1e-5);
}

// =======================================================================================
// Key lengths in place of masks
// =======================================================================================

namespace {

Tensor key_lengths(const std::vector<std::int64_t>& v) {
  return from_vector(v, Shape{static_cast<std::int64_t>(v.size())});
}

// [B, L] 0/1, 1 = keep: the mask the lengths stand for.
Tensor keep_of(const std::vector<std::int64_t>& len, std::int64_t L) {
  Vec m;
  for (std::int64_t n : len) {
    for (std::int64_t l = 0; l < L; ++l) m.push_back(l < n ? 1.0 : 0.0);
  }
  return from_vector(m, {static_cast<std::int64_t>(len.size()), L});
}

// 1 - keep: PyTorch's key_padding_mask (1 = ignore).
Tensor padding_of(const std::vector<std::int64_t>& len, std::int64_t L) {
  return sub(ones({static_cast<std::int64_t>(len.size()), L}, f64), keep_of(len, L));
}

}  // namespace

TEST_CASE("AdditiveAttention and DotAttention: lengths give exactly the mask's results, values and gradients") {
  DefaultDtypeGuard g(f64);
  const std::vector<std::int64_t> len{3, 5, 1};  // unsorted, one full, one of length 1
  const Tensor l = key_lengths(len);
  AdditiveAttention add_m(nn::AdditiveAttentionOptions{.query_size = 3, .key_size = 4, .hidden_size = 5, .bias = true});
  randomise(add_m, 61);
  const Tensor q = rnd({3, 3}, -1, 1, 1), k = rnd({3, 5, 4}, -1, 1, 2), v = rnd({3, 5, 2}, -1, 1, 3);
  check_close(both(add_m(q, k, v, nn::Lengths(l))), both(add_m(q, k, v, keep_of(len, 5))), 0, 0);
  check_close(both(add_m(q, add_m.precompute_keys(k), v, nn::Lengths(l))), both(add_m(q, k, v, keep_of(len, 5))), 0,
              0);
  // The padded keys get weight exactly 0.
  const Vec w = vals(add_m(q, k, v, nn::Lengths(l)).weights);
  CHECK(w[3] == 0.0);
  CHECK(w[4] == 0.0);
  CHECK(w[10] == 1.0);
  gradcheck_ok([&](const std::vector<Tensor>& in) { return both(add_m(in[0], in[1], in[2], nn::Lengths(l))); },
               {q, k, v});
  params_ok([&] { return both(add_m(q, k, v, nn::Lengths(l))); }, add_m.parameters());

  for (DotScore mode : {DotScore::dot, DotScore::scaled, DotScore::general}) {
    DotAttention dot_m(mode, 4, 4);
    dot_m.to(f64);
    const Tensor q3 = rnd({3, 2, 4}, -1, 1, 4);
    check_close(both(dot_m(q3, k, v, nn::Lengths(l))), both(dot_m(q3, k, v, keep_of(len, 5))), 0, 0);
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(dot_m(in[0], in[1], in[2], nn::Lengths(l))); },
                 {q3, k, v});
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(dot_m(in[0], in[1], Tensor(), nn::Lengths(l))); },
                 {rnd({3, 4}, -1, 1, 5), k});
  }
}

TEST_CASE("MultiheadAttention: key_lengths give exactly the key_padding_mask's results; gradcheck") {
  DefaultDtypeGuard g(f64);
  const std::vector<std::int64_t> len{4, 1, 3};
  for (bool batch_first : {false, true}) {
    INFO("batch_first " << batch_first);
    MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 2, .batch_first = batch_first});
    randomise(m, 62, 0.7);
    const Shape qs = batch_first ? Shape{3, 2, 4} : Shape{2, 3, 4};
    const Shape ks = batch_first ? Shape{3, 4, 4} : Shape{4, 3, 4};
    const Tensor q = rnd(qs, -1, 1, 1), k = rnd(ks, -1, 1, 2), v = rnd(ks, -1, 1, 3);
    const nn::MultiheadAttentionForwardOptions by_len{.key_lengths = key_lengths(len)};
    check_close(both(m(q, k, v, by_len)), both(m(q, k, v, {.key_padding_mask = padding_of(len, 4)})), 0, 0);
    const nn::MultiheadAttentionForwardOptions with_attn{.attn_mask = rnd({2, 4}, -1, 1, 9),
                                                         .average_attn_weights = false,
                                                         .key_lengths = key_lengths(len)};
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], in[2], by_len)); }, {q, k, v});
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(m(in[0], in[1], in[2], with_attn)); }, {q, k, v});
    params_ok([&] { return both(m(q, k, v, by_len)); }, m.parameters());
  }
}

TEST_CASE("MultiheadAttention agrees with PyTorch given key_lengths (mha_lengths.npz), float64 and float32") {
  const auto entries = load_npz(std::string(XGRAD_FIXTURES_DIR) + "/loss/mha_lengths.npz");
  std::map<std::string, Tensor> f(entries.begin(), entries.end());
  REQUIRE(f.count("in.lengths") == 1);
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    const double rtol = dt == f64 ? 1e-10 : 1e-5;
    DefaultDtypeGuard g(dt);
    MultiheadAttention m(nn::MultiheadAttentionOptions{.embed_dim = 8, .num_heads = 2, .batch_first = true});
    nn::StateDict sd;
    for (const auto& [name, t] : entries) {
      if (name.rfind("param.", 0) == 0) sd.emplace_back(name.substr(6), t.to(dt));
    }
    m.load_state_dict(sd);
    Tensor query = f.at("in.query").to(dt).detach().requires_grad_();
    Tensor key = f.at("in.key").to(dt).detach().requires_grad_();
    Tensor value = f.at("in.value").to(dt).detach().requires_grad_();
    const auto out = m(query, key, value, {.key_lengths = f.at("in.lengths")});
    check_rel(out.context, f.at("out.y"), rtol);
    check_rel(out.weights, f.at("out.attn_weights"), rtol);
    add(sum(mul(out.context, f.at("in.w_y").to(dt))), sum(mul(out.weights, f.at("in.w_attn_weights").to(dt))))
        .backward();
    check_rel(query.grad(), f.at("grad.in.query"), rtol);
    check_rel(key.grad(), f.at("grad.in.key"), rtol);
    check_rel(value.grad(), f.at("grad.in.value"), rtol);
    for (const auto& [name, p] : m.named_parameters()) {
      INFO("parameter " << name);
      check_rel(p.grad(), f.at("grad.param." + name), rtol);
    }
  }
}

TEST_CASE("attention modules: bad key lengths name the module, the shapes and the entry") {
  DefaultDtypeGuard g(f64);
  AdditiveAttention add_m(3, 4, 5);
  DotAttention dot_m;
  MultiheadAttention mha(4, 2);
  const Tensor q = rnd({2, 3}), k = rnd({2, 5, 4}), qd = rnd({2, 4});
  const Tensor mq = rnd({3, 2, 4}), mk = rnd({5, 2, 4});
  std::string m;
  // A length of 0: nothing to attend to (the same rule as a fully masked row).
  m = xgtest::error_of<IndexError>([&] { add_m(q, k, Tensor(), nn::Lengths(key_lengths({0, 5}))); });
  CHECK(xgtest::has(m, "AdditiveAttention"));
  CHECK(xgtest::has(m, "lengths[0] = 0"));
  CHECK(xgtest::has(m, "[1, T = 5]"));
  m = xgtest::error_of<IndexError>([&] { dot_m(qd, k, Tensor(), nn::Lengths(key_lengths({2, 6}))); });
  CHECK(xgtest::has(m, "DotAttention"));
  CHECK(xgtest::has(m, "lengths[1] = 6"));
  m = xgtest::error_of<IndexError>([&] { mha(mq, mk, mk, {.key_lengths = key_lengths({-1, 2})}); });
  CHECK(xgtest::has(m, "MultiheadAttention"));
  CHECK(xgtest::has(m, "lengths[0] = -1"));
  // Wrong size, rank, dtype; undefined.
  m = xgtest::error_of<ShapeError>([&] { add_m(q, k, Tensor(), nn::Lengths(key_lengths({1, 2, 3}))); });
  CHECK(xgtest::has(m, "AdditiveAttention"));
  CHECK(xgtest::has(m, "lengths [3]"));
  CHECK(xgtest::has(m, "[B] = [2]"));
  m = xgtest::error_of<ShapeError>([&] { mha(mq, mk, mk, {.key_lengths = from_vector(std::vector<std::int64_t>{1, 2}, {1, 2})}); });
  CHECK(xgtest::has(m, "[1,2]"));
  m = xgtest::error_of<DtypeError>([&] { dot_m(qd, k, Tensor(), nn::Lengths(from_vector(Vec{1, 2}))); });
  CHECK(xgtest::has(m, "DotAttention"));
  CHECK(xgtest::has(m, "int64"));
  CHECK_THROWS_AS(dot_m(qd, k, Tensor(), nn::Lengths(Tensor())), StateError);
  CHECK_THROWS_AS(add_m(q, Tensor(), Tensor(), nn::Lengths(key_lengths({1, 2}))), StateError);
  CHECK_THROWS_AS(add_m(q, rnd({2, 4}), Tensor(), nn::Lengths(key_lengths({1, 2}))), ShapeError);
  // Both a key_padding_mask and key_lengths: ambiguous.
  m = xgtest::error_of<Error>([&] {
    mha(mq, mk, mk, {.key_padding_mask = zeros({2, 5}, f64), .key_lengths = key_lengths({1, 2})});
  });
  CHECK(xgtest::has(m, "MultiheadAttention"));
  CHECK(xgtest::has(m, "pass one"));
}

TEST_CASE("gradcheck attention modules with key lengths over more shapes: one key, length-1 entries, B = 1") {
  DefaultDtypeGuard g(f64);
  struct Case {
    std::int64_t B, L;
    std::vector<std::int64_t> len;
  };
  for (const Case& c : {Case{1, 1, {1}}, Case{2, 3, {1, 3}}, Case{4, 2, {2, 1, 1, 2}}}) {
    INFO("B " << c.B << " L " << c.L);
    const Tensor l = key_lengths(c.len);
    AdditiveAttention add_m(2, 3, 4);
    add_m.to(f64);
    const Tensor q = rnd({c.B, 2}, -1, 1, 71), k = rnd({c.B, c.L, 3}, -1, 1, 72), v = rnd({c.B, c.L, 2}, -1, 1, 73);
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(add_m(in[0], in[1], in[2], nn::Lengths(l))); },
                 {q, k, v});
    DotAttention dot_m(DotScore::general, 2, 3);
    dot_m.to(f64);
    gradcheck_ok([&](const std::vector<Tensor>& in) { return both(dot_m(in[0], in[1], in[2], nn::Lengths(l))); },
                 {rnd({c.B, 3, 2}, -1, 1, 74), k, v});
    MultiheadAttention mha(nn::MultiheadAttentionOptions{.embed_dim = 4, .num_heads = 2, .kdim = 3, .vdim = 2});
    randomise(mha, 75, 0.7);
    gradcheck_ok(
        [&](const std::vector<Tensor>& in) { return both(mha(in[0], in[1], in[2], {.key_lengths = l})); },
        {rnd({2, c.B, 4}, -1, 1, 76), rnd({c.L, c.B, 3}, -1, 1, 77), rnd({c.L, c.B, 2}, -1, 1, 78)});
  }
}
