// Loss modules and the masked temporal cross-entropy: values against hand-written log-softmax
// loops for every reduction, exact zero gradients on masked / ignored tokens, float64
// gradchecks, bad inputs, and CrossEntropyLoss against PyTorch (cross_entropy.npz).
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"

using xgtest::error_of;
using xgtest::has;

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

Tensor ids(const std::vector<std::int64_t>& v, const Shape& s) { return from_vector(v, s); }

// -log softmax(row)[t], the textbook way in double.
double ref_token_loss(const std::vector<double>& logits, std::int64_t row, std::int64_t V, std::int64_t t) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < V; ++j) m = std::max(m, logits[row * V + j]);
  double s = 0.0;
  for (std::int64_t j = 0; j < V; ++j) s += std::exp(logits[row * V + j] - m);
  return -(logits[row * V + t] - m - std::log(s));
}

// CS231n's temporal softmax loss generalised: Σ mask * token loss over non-ignored tokens,
// then / counted tokens, / 1 or / B.
double ref_temporal(const Tensor& logits, const Tensor& targets, const std::vector<double>& mask,
                    nn::TemporalReduction red, std::int64_t ignore = -100) {
  const std::int64_t B = logits.shape()[0], T = logits.shape()[1], V = logits.shape()[2];
  const std::vector<double> lv = logits.to_vector<double>();
  const std::vector<std::int64_t> tv = targets.to_vector<std::int64_t>();
  double total = 0.0, count = 0.0;
  for (std::int64_t i = 0; i < B * T; ++i) {
    if (tv[i] == ignore) continue;
    const double w = mask.empty() ? 1.0 : mask[i];
    total += w * ref_token_loss(lv, i, V, tv[i]);
    count += w;
  }
  switch (red) {
    case nn::TemporalReduction::sum: return total;
    case nn::TemporalReduction::mean_batch: return total / static_cast<double>(B);
    case nn::TemporalReduction::mean_tokens: return total / count;
    case nn::TemporalReduction::mean_sequences: break;  // by hand in its own test case
  }
  return 0.0;
}

const nn::TemporalReduction kReductions[] = {nn::TemporalReduction::mean_tokens, nn::TemporalReduction::sum,
                                             nn::TemporalReduction::mean_batch};

}  // namespace

// =========================================================================================
// CrossEntropyLoss, NLLLoss, MSELoss
// =========================================================================================

TEST_CASE("CrossEntropyLoss / NLLLoss / MSELoss: values against hand loops, options passed through") {
  const Tensor logits = rnd({4, 3}, -2, 2);
  const Tensor t = ids({2, 0, -100, 1}, {4});
  const std::vector<double> lv = logits.to_vector<double>();
  const double l0 = ref_token_loss(lv, 0, 3, 2), l1 = ref_token_loss(lv, 1, 3, 0), l3 = ref_token_loss(lv, 3, 3, 1);
  nn::CrossEntropyLoss ce;
  check_values(ce(logits, t), {(l0 + l1 + l3) / 3.0}, 1e-12, 1e-12);
  nn::CrossEntropyLoss ce_sum({.ignore_index = -100, .reduction = Reduction::sum});
  check_values(ce_sum(logits, t), {l0 + l1 + l3}, 1e-12, 1e-12);
  nn::CrossEntropyLoss ce_none({.ignore_index = 0, .reduction = Reduction::none});
  CHECK_THROWS_AS(ce_none(logits, t), IndexError);  // -100 is no longer ignored
  check_values(ce_none(logits, ids({2, 0, 1, 1}, {4})), {l0, 0.0, ref_token_loss(lv, 2, 3, 1), l3}, 1e-12, 1e-12);
  CHECK(nn::CrossEntropyLoss().named_parameters().empty());

  nn::NLLLoss nll;
  check_values(nll(log_softmax(logits, 1), t), {(l0 + l1 + l3) / 3.0}, 1e-12, 1e-12);

  const Tensor a = rnd({2, 3}, -1, 1, 5), b = rnd({2, 3}, -1, 1, 6);
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  double s = 0.0;
  for (int i = 0; i < 6; ++i) s += (av[i] - bv[i]) * (av[i] - bv[i]);
  check_values(nn::MSELoss()(a, b), {s / 6.0}, 1e-14, 1e-14);
  check_values(nn::MSELoss(Reduction::sum)(a, b), {s}, 1e-14, 1e-14);
  CHECK(nn::MSELoss(Reduction::none)(a, b).shape() == Shape{2, 3});
}

TEST_CASE("CrossEntropyLoss: agreement with PyTorch (cross_entropy.npz, ignore_index) in float64 and float32") {
  std::map<std::string, Tensor> e;
  for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/cross_entropy.npz")) e[k] = v;
  REQUIRE(e.count("in.logits"));
  nn::CrossEntropyLoss ce;  // PyTorch's defaults: ignore_index -100, mean
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    const double rtol = dt == f64 ? 1e-10 : 1e-5, atol = dt == f64 ? 1e-12 : 1e-6;
    Tensor x = e["in.logits"].to(dt).detach().requires_grad_();
    const Tensor loss = ce(x, e["in.target"]);
    check_values(loss, e["out.loss"].to_vector<double>(), atol, rtol);
    mul(loss, e["in.w_loss"].to(dt)).backward();
    check_values(x.grad(), e["grad.in.logits"].to_vector<double>(), atol, rtol);
  }
}

// =========================================================================================
// temporal_cross_entropy
// =========================================================================================

TEST_CASE("temporal_cross_entropy: values for every reduction, with ignore_index, a mask, and both") {
  const std::int64_t B = 3, T = 4, V = 5;
  const Tensor logits = rnd({B, T, V}, -3, 3, 7);
  const Tensor targets = ids({0, 4, 2, 1, 3, 3, -100, 0, 2, -100, 1, 4}, {B, T});
  const Tensor plain = ids({0, 4, 2, 1, 3, 3, 1, 0, 2, 2, 1, 4}, {B, T});
  const std::vector<double> mask{1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0};
  const Tensor m = from_vector(mask, {B, T});
  for (nn::TemporalReduction red : kReductions) {
    INFO("reduction " << static_cast<int>(red));
    const nn::TemporalCrossEntropyOptions o{.reduction = red};
    check_values(nn::temporal_cross_entropy(logits, plain, Tensor(), o), {ref_temporal(logits, plain, {}, red)},
                 1e-12, 1e-12);
    check_values(nn::temporal_cross_entropy(logits, targets, Tensor(), o), {ref_temporal(logits, targets, {}, red)},
                 1e-12, 1e-12);
    check_values(nn::temporal_cross_entropy(logits, plain, m, o), {ref_temporal(logits, plain, mask, red)}, 1e-12,
                 1e-12);
    check_values(nn::temporal_cross_entropy(logits, targets, m, o), {ref_temporal(logits, targets, mask, red)},
                 1e-12, 1e-12);
    // float32 logits, float32 mask.
    check_values(nn::temporal_cross_entropy(logits.to(f32), targets, m.to(f32), o),
                 {ref_temporal(logits, targets, mask, red)}, 1e-5, 1e-5);
  }
  // A custom ignore_index.
  const nn::TemporalCrossEntropyOptions o0{.ignore_index = 0};
  check_values(nn::temporal_cross_entropy(logits, plain, Tensor(), o0),
               {ref_temporal(logits, plain, {}, nn::TemporalReduction::mean_tokens, 0)}, 1e-12, 1e-12);
}

TEST_CASE("temporal_cross_entropy: mean_batch is CS231n's temporal_softmax_loss (sum over T, mean over B)") {
  // Hand-computed: B = 1, T = 2, V = 2, logits [[0, 0], [ln 3, 0]], targets [0, 1], mask [1, 1]:
  // token losses ln 2 and ln 4 -> mean_batch ln 8, mean_tokens ln 8 / 2, sum ln 8.
  const Tensor logits = from_vector(std::vector<double>{0, 0, std::log(3.0), 0}, {1, 2, 2});
  const Tensor t = ids({0, 1}, {1, 2});
  using R = nn::TemporalReduction;
  check_values(nn::temporal_cross_entropy(logits, t, Tensor(), {.reduction = R::mean_batch}), {std::log(8.0)}, 1e-15);
  check_values(nn::temporal_cross_entropy(logits, t, Tensor(), {.reduction = R::sum}), {std::log(8.0)}, 1e-15);
  check_values(nn::temporal_cross_entropy(logits, t, Tensor(), {.reduction = R::mean_tokens}), {std::log(8.0) / 2},
               1e-15);
  // Masking the second token leaves ln 2.
  check_values(nn::temporal_cross_entropy(logits, t, from_vector(std::vector<double>{1, 0}, {1, 2}),
                                          {.reduction = R::mean_batch}),
               {std::log(2.0)}, 1e-15);
}

TEST_CASE("temporal_cross_entropy: masked and ignored tokens get exactly zero gradient") {
  const Tensor logits0 = rnd({2, 3, 4}, -2, 2, 9);
  const Tensor targets = ids({1, -100, 3, 0, 2, 2}, {2, 3});
  const Tensor m = from_vector(std::vector<double>{1, 1, 0, 1, 1, 0}, {2, 3});
  Tensor logits = logits0.clone().requires_grad_();
  nn::temporal_cross_entropy(logits, targets, m).backward();
  const std::vector<double> g = logits.grad().to_vector<double>();
  for (int tok : {1, 2, 5}) {  // ignored (1) and masked (2, 5)
    for (int v = 0; v < 4; ++v) CHECK(g[tok * 4 + v] == 0.0);
  }
  // Counted tokens: (softmax - onehot) / 3 counted tokens.
  const std::vector<double> lv = logits0.to_vector<double>();
  for (int tok : {0, 3, 4}) {
    const std::int64_t t = targets.to_vector<std::int64_t>()[tok];
    double mx = -1e300, s = 0;
    for (int v = 0; v < 4; ++v) mx = std::max(mx, lv[tok * 4 + v]);
    for (int v = 0; v < 4; ++v) s += std::exp(lv[tok * 4 + v] - mx);
    for (int v = 0; v < 4; ++v) {
      const double want = (std::exp(lv[tok * 4 + v] - mx) / s - (v == t ? 1.0 : 0.0)) / 3.0;
      CHECK(std::fabs(g[tok * 4 + v] - want) < 1e-14);
    }
  }
}

TEST_CASE("temporal_cross_entropy: gradcheck w.r.t. logits for every reduction, with and without mask") {
  const Tensor targets = ids({1, -100, 3, 0, 2, 2, 0, 1}, {2, 4});
  const Tensor mask = from_vector(std::vector<double>{1, 1, 0, 1, 0.5, 1, 1, 0}, {2, 4});
  for (nn::TemporalReduction red : kReductions) {
    INFO("reduction " << static_cast<int>(red));
    const nn::TemporalCrossEntropyOptions o{.reduction = red};
    gradcheck_ok([&](const std::vector<Tensor>& v) { return nn::temporal_cross_entropy(v[0], targets, Tensor(), o); },
                 {rnd({2, 4, 5}, -2, 2, 10)});
    gradcheck_ok([&](const std::vector<Tensor>& v) { return nn::temporal_cross_entropy(v[0], targets, mask, o); },
                 {rnd({2, 4, 5}, -2, 2, 11)});
  }
  // Size-1 dims: one sequence, one step, one class.
  gradcheck_ok([](const std::vector<Tensor>& v) { return nn::temporal_cross_entropy(v[0], ids({0}, {1, 1})); },
               {rnd({1, 1, 3})});
}

TEST_CASE("temporal_cross_entropy: definition: no mask == a mask of ones; int64 masks work") {
  const Tensor logits = rnd({2, 3, 4}, -2, 2, 12);
  const Tensor t = ids({1, 2, 3, 0, 1, 2}, {2, 3});
  const Tensor a = nn::temporal_cross_entropy(logits, t);
  check_close(a, nn::temporal_cross_entropy(logits, t, ones({2, 3}, f64)), 1e-15, 1e-15);
  check_close(a, nn::temporal_cross_entropy(logits, t, ones({2, 3}, f32)), 1e-15, 1e-15);
  check_close(nn::temporal_cross_entropy(logits, t, ids({1, 0, 1, 1, 1, 0}, {2, 3})),
              nn::temporal_cross_entropy(logits, t, from_vector(std::vector<double>{1, 0, 1, 1, 1, 0}, {2, 3})), 0,
              0);
  // mean_tokens of the flat cross_entropy.
  check_close(a, cross_entropy(reshape(logits, {6, 4}), reshape(t, {6})), 1e-15, 1e-15);
}

TEST_CASE("temporal_cross_entropy: empty sequences and all-masked batches") {
  using R = nn::TemporalReduction;
  const Tensor logits = zeros({2, 0, 4}, f64);
  const Tensor t = ids({}, {2, 0});
  CHECK(nn::temporal_cross_entropy(logits, t, Tensor(), {.reduction = R::sum}).item() == 0.0);
  CHECK(nn::temporal_cross_entropy(logits, t, Tensor(), {.reduction = R::mean_batch}).item() == 0.0);
  CHECK(std::isnan(nn::temporal_cross_entropy(logits, t).item()));
  const Tensor l2 = rnd({1, 2, 3});
  CHECK(std::isnan(nn::temporal_cross_entropy(l2, ids({0, 1}, {1, 2}), zeros({1, 2}, f64)).item()));
}

TEST_CASE("TemporalCrossEntropyLoss module matches the function") {
  const Tensor logits = rnd({2, 3, 4}, -2, 2, 13);
  const Tensor t = ids({1, 2, 3, 0, 1, 2}, {2, 3});
  const Tensor m = from_vector(std::vector<double>{1, 1, 0, 1, 0, 0}, {2, 3});
  nn::TemporalCrossEntropyLoss loss({.reduction = nn::TemporalReduction::mean_batch});
  check_close(loss(logits, t, m),
              nn::temporal_cross_entropy(logits, t, m, {.reduction = nn::TemporalReduction::mean_batch}), 0, 0);
  check_close(loss(logits, t), nn::temporal_cross_entropy(logits, t, Tensor(), loss.options), 0, 0);
}

TEST_CASE("temporal_cross_entropy: bad inputs name the function and the shapes") {
  const Tensor logits = rnd({2, 3, 4});
  const Tensor t = ids({1, 2, 3, 0, 1, 2}, {2, 3});
  std::string m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(logits, t, ones({3, 2}, f64)); });
  CHECK(has(m, "temporal_cross_entropy"));
  CHECK(has(m, "mask"));
  CHECK(has(m, "[3,2]"));
  m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(logits, t, ones({6}, f64)); });
  CHECK(has(m, "[6]"));
  m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(rnd({6, 4}), t); });
  CHECK(has(m, "[B, T, V]"));
  m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(logits, ids({1, 2, 3, 0, 1, 2}, {6})); });
  CHECK(has(m, "targets"));
  m = error_of<DtypeError>([&] { nn::temporal_cross_entropy(logits, ones({2, 3}, f64)); });
  CHECK(has(m, "int64"));
  m = error_of<DtypeError>([&] { nn::temporal_cross_entropy(ids(std::vector<std::int64_t>(24, 1), {2, 3, 4}), t); });
  CHECK(has(m, "logits"));
  m = error_of<IndexError>([&] { nn::temporal_cross_entropy(logits, ids({1, 2, 3, 0, 4, 2}, {2, 3})); });
  CHECK(has(m, "4"));
  CHECK(has(m, "b=1, t=1"));
  CHECK_THROWS_AS(nn::temporal_cross_entropy(logits, ids({1, 2, 3, 0, -1, 2}, {2, 3})), IndexError);
  CHECK_THROWS_AS(nn::temporal_cross_entropy(Tensor(), t), StateError);
}

// =========================================================================================
// temporal_cross_entropy: lengths, mean_sequences, class weights, label smoothing
// =========================================================================================

namespace {

Tensor lens(const std::vector<std::int64_t>& v) { return from_vector(v, Shape{static_cast<std::int64_t>(v.size())}); }

// The [B, T] 0/1 mask of lengths, as a user would write it by hand.
Tensor mask_of(const std::vector<std::int64_t>& len, std::int64_t T) {
  std::vector<double> m;
  for (std::int64_t n : len) {
    for (std::int64_t t = 0; t < T; ++t) m.push_back(t < n ? 1.0 : 0.0);
  }
  return from_vector(m, Shape{static_cast<std::int64_t>(len.size()), T});
}

const nn::TemporalReduction kAllReductions[] = {nn::TemporalReduction::mean_tokens, nn::TemporalReduction::sum,
                                                nn::TemporalReduction::mean_batch,
                                                nn::TemporalReduction::mean_sequences};

}  // namespace

TEST_CASE("temporal_cross_entropy: lengths with weight + label_smoothing agree with PyTorch (temporal_lengths.npz)") {
  std::map<std::string, Tensor> e;
  for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/loss/temporal_lengths.npz")) e[k] = v;
  REQUIRE(e.count("in.logits"));
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    const double rtol = dt == f64 ? 1e-12 : 1e-5, atol = dt == f64 ? 1e-12 : 1e-6;
    Tensor x = e["in.logits"].to(dt).detach().requires_grad_();
    nn::TemporalCrossEntropyOptions o{.weight = e["in.weight"].to(dt),
                                      .label_smoothing = e["in.label_smoothing"].item<double>()};
    const nn::Lengths len(e["in.lengths"]);
    Tensor loss = zeros({}, dt);
    for (auto [name, red] : {std::pair{"tokens", nn::TemporalReduction::mean_tokens},
                             std::pair{"sum", nn::TemporalReduction::sum},
                             std::pair{"sequences", nn::TemporalReduction::mean_sequences}}) {
      INFO(name);
      o.reduction = red;
      const Tensor l = nn::temporal_cross_entropy(x, e["in.targets"], len, o);
      check_values(l, e[std::string("out.loss_") + name].to_vector<double>(), atol, rtol);
      loss = add(loss, mul(l, e[std::string("in.w_loss_") + name].to(dt)));
    }
    loss.backward();
    check_values(x.grad(), e["grad.in.logits"].to_vector<double>(), atol, rtol);
  }
}

TEST_CASE("temporal_cross_entropy: lengths give the values and gradients of the equivalent mask, every reduction") {
  const std::int64_t B = 4, T = 5, V = 6;
  const std::vector<std::int64_t> len{5, 2, 3, 1};
  const Tensor targets = ids({0, 4, 2, 1, 3, 3, 5, 0, 2, 1, 1, 4, -100, 0, 0, 2, 2, 3, 4, 5}, {B, T});
  for (nn::TemporalReduction red : kAllReductions) {
    INFO("reduction " << static_cast<int>(red));
    const nn::TemporalCrossEntropyOptions o{.reduction = red};
    Tensor a = rnd({B, T, V}, -3, 3, 31).requires_grad_();
    Tensor b = rnd({B, T, V}, -3, 3, 31).requires_grad_();
    const Tensor la = nn::temporal_cross_entropy(a, targets, nn::Lengths(lens(len)), o);
    const Tensor lb = nn::temporal_cross_entropy(b, targets, mask_of(len, T), o);
    check_close(la, lb, 1e-14, 1e-14);
    la.backward();
    lb.backward();
    check_close(a.grad(), b.grad(), 1e-15, 1e-14);
  }
}

TEST_CASE("temporal_cross_entropy: mean_sequences is the mean over sequences of each one's token mean") {
  const std::int64_t B = 3, T = 4, V = 5;
  const Tensor logits = rnd({B, T, V}, -3, 3, 32);
  const Tensor targets = ids({0, 4, 2, 1, 3, -100, 1, 0, 2, 2, 1, 4}, {B, T});
  const std::vector<double> lv = logits.to_vector<double>();
  const std::vector<std::int64_t> tv = targets.to_vector<std::int64_t>();
  // lengths 4, 3, 1: sequence 1 has 2 counted tokens (one ignored), sequence 2 one.
  const std::vector<std::int64_t> len{4, 3, 1};
  double want = 0.0;
  for (std::int64_t b = 0; b < B; ++b) {
    double s = 0.0, n = 0.0;
    for (std::int64_t t = 0; t < len[b]; ++t) {
      if (tv[b * T + t] == -100) continue;
      s += ref_token_loss(lv, b * T + t, V, tv[b * T + t]);
      n += 1.0;
    }
    want += s / n / 3.0;
  }
  const nn::TemporalCrossEntropyOptions o{.reduction = nn::TemporalReduction::mean_sequences};
  check_values(nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens(len)), o), {want}, 1e-14, 1e-14);
  // A sequence of length 0 is left out of the batch mean, not counted as a 0 loss.
  const Tensor with_empty = nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens({4, 3, 0})), o);
  const Tensor two = nn::temporal_cross_entropy(slice(logits, 0, 0, 2), slice(targets, 0, 0, 2),
                                                nn::Lengths(lens({4, 3})), o);
  check_close(with_empty, two, 1e-15, 1e-14);
  // Every sequence empty: 0/0 = NaN, like mean_tokens.
  CHECK(std::isnan(nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens({0, 0, 0})), o).item<double>()));
  CHECK(std::isnan(nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens({0, 0, 0}))).item<double>()));
  CHECK(nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens({0, 0, 0})),
                                   {.reduction = nn::TemporalReduction::sum})
            .item<double>() == 0.0);
}

TEST_CASE("temporal_cross_entropy: with lengths, padding is never read: NaN logits and any target there, zero gradient") {
  const std::int64_t B = 2, T = 4, V = 3;
  std::vector<double> xv = rnd({B, T, V}, -2, 2, 33).to_vector<double>();
  // Padding: NaN logits, targets that are no class at all.
  for (std::int64_t t = 2; t < T; ++t) {
    for (std::int64_t v = 0; v < V; ++v) xv[(0 * T + t) * V + v] = std::nan("");
  }
  for (std::int64_t v = 0; v < V; ++v) xv[(1 * T + 3) * V + v] = std::nan("");
  const Tensor targets = ids({1, 2, -7, 99, 0, 2, 1, 12345}, {B, T});
  for (nn::TemporalReduction red : kAllReductions) {
    INFO("reduction " << static_cast<int>(red));
    Tensor x = from_vector(xv, {B, T, V}).requires_grad_();
    const Tensor loss = nn::temporal_cross_entropy(x, targets, nn::Lengths(lens({2, 3})),
                                                   {.reduction = red, .weight = from_vector(std::vector<double>{1, 2, 3}),
                                                    .label_smoothing = 0.1});
    CHECK(std::isfinite(loss.item<double>()));
    loss.backward();
    const std::vector<double> g = x.grad().to_vector<double>();
    for (std::int64_t i = 0; i < B * T * V; ++i) {
      const std::int64_t b = i / (T * V), t = (i / V) % T;
      const bool pad = t >= (b == 0 ? 2 : 3);
      INFO("b " << b << " t " << t);
      if (pad) {
        CHECK(g[i] == 0.0);
      } else {
        CHECK(std::isfinite(g[i]));
      }
    }
  }
}

TEST_CASE("temporal_cross_entropy: gradcheck with lengths, weight and label_smoothing, every reduction") {
  struct Case {
    std::int64_t B, T, V;
    std::vector<std::int64_t> len;
  };
  // All lengths different and unsorted; length-1 sequences; a length 0; one full batch.
  const std::vector<Case> cases = {{3, 4, 5, {4, 1, 3}}, {2, 3, 2, {1, 1}}, {4, 5, 3, {2, 5, 0, 3}}, {1, 2, 4, {2}}};
  for (const Case& c : cases) {
    std::vector<std::int64_t> tv;
    for (std::int64_t i = 0; i < c.B * c.T; ++i) tv.push_back((i * 7 + 3) % c.V);
    tv[1] = -100;
    const Tensor targets = ids(tv, {c.B, c.T});
    const Tensor w = rnd({c.V}, 0.2, 2.0, 34);
    for (nn::TemporalReduction red : kAllReductions) {
      for (double eps : {0.0, 0.2}) {
        INFO("B " << c.B << " T " << c.T << " reduction " << static_cast<int>(red) << " eps " << eps);
        const nn::TemporalCrossEntropyOptions o{.reduction = red, .weight = w, .label_smoothing = eps};
        const Tensor l = lens(c.len);
        gradcheck_ok([&](const std::vector<Tensor>& in) {
          return nn::temporal_cross_entropy(in[0], targets, nn::Lengths(l), o);
        }, {rnd({c.B, c.T, c.V}, -2, 2, 35)});
        // the mask form too, with mean_sequences and class weights
        gradcheck_ok([&](const std::vector<Tensor>& in) {
          return nn::temporal_cross_entropy(in[0], targets, mask_of(c.len, c.T), o);
        }, {rnd({c.B, c.T, c.V}, -2, 2, 36)});
      }
    }
  }
}

TEST_CASE("temporal_cross_entropy: mean_tokens with class weights equals cross_entropy's weighted mean on the view") {
  const std::int64_t B = 3, T = 4, V = 5;
  const Tensor logits = rnd({B, T, V}, -3, 3, 37);
  const Tensor targets = ids({0, 4, 2, 1, 3, 3, 1, 0, 2, 2, 1, 4}, {B, T});
  const Tensor padded = ids({0, 4, 2, -100, 3, 3, -100, -100, 2, 2, 1, 4}, {B, T});
  const Tensor w = rnd({V}, 0.1, 3.0, 38);
  const Tensor got = nn::temporal_cross_entropy(logits, targets, nn::Lengths(lens({3, 2, 4})),
                                                {.weight = w, .label_smoothing = 0.3});
  check_close(got,
              cross_entropy(reshape(logits, {B * T, V}), reshape(padded, {B * T}), {.weight = w, .label_smoothing = 0.3}),
              1e-14, 1e-14);
  nn::TemporalCrossEntropyLoss loss({.weight = w, .label_smoothing = 0.3});
  check_close(loss(logits, targets, nn::Lengths(lens({3, 2, 4}))), got, 0, 0);
}

TEST_CASE("temporal_cross_entropy: bad lengths name the function, the shapes and the entry") {
  const Tensor logits = rnd({2, 3, 4});
  const Tensor t = ids({1, 2, 3, 0, 1, 2}, {2, 3});
  std::string m = error_of<IndexError>([&] { nn::temporal_cross_entropy(logits, t, nn::Lengths(lens({3, 4}))); });
  CHECK(has(m, "temporal_cross_entropy"));
  CHECK(has(m, "lengths[1] = 4"));
  CHECK(has(m, "T = 3"));
  m = error_of<IndexError>([&] { nn::temporal_cross_entropy(logits, t, nn::Lengths(lens({-1, 2}))); });
  CHECK(has(m, "lengths[0] = -1"));
  m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(logits, t, nn::Lengths(lens({3, 2, 1}))); });
  CHECK(has(m, "temporal_cross_entropy"));
  CHECK(has(m, "[3]"));
  CHECK(has(m, "[B] = [2]"));
  m = error_of<ShapeError>([&] { nn::temporal_cross_entropy(logits, t, nn::Lengths(ids({3, 2}, {2, 1}))); });
  CHECK(has(m, "[2,1]"));
  m = error_of<DtypeError>([&] {
    nn::temporal_cross_entropy(logits, t, nn::Lengths(from_vector(std::vector<double>{3, 2})));
  });
  CHECK(has(m, "temporal_cross_entropy"));
  CHECK(has(m, "int64"));
  CHECK(has(m, "float64"));
  m = error_of<StateError>([&] { nn::temporal_cross_entropy(logits, t, nn::Lengths(Tensor())); });
  CHECK(has(m, "lengths"));
  // A bad target inside a sequence is still an error; one in the padding is not read.
  m = error_of<IndexError>([&] { nn::temporal_cross_entropy(logits, ids({1, 7, 3, 0, 1, 2}, {2, 3}), nn::Lengths(lens({2, 3}))); });
  CHECK(has(m, "b=0, t=1"));
  CHECK_NOTHROW(nn::temporal_cross_entropy(logits, ids({1, 2, 7, 0, 1, 2}, {2, 3}), nn::Lengths(lens({2, 3}))));
  // Weight and smoothing errors come from cross_entropy, which the function calls.
  CHECK_THROWS_AS(nn::temporal_cross_entropy(logits, t, Tensor(), {.weight = rnd({3})}), ShapeError);
  CHECK(has(error_of<Error>([&] { nn::temporal_cross_entropy(logits, t, Tensor(), {.label_smoothing = 2.0}); }),
            "label_smoothing"));
}

TEST_CASE("CrossEntropyLoss passes weight and label_smoothing through to cross_entropy") {
  const Tensor logits = rnd({5, 4}, -2, 2, 39);
  const Tensor t = ids({3, 0, -100, 1, 2}, {5});
  const Tensor w = rnd({4}, 0.1, 2.0, 40);
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    const CrossEntropyOptions o{.reduction = r, .weight = w, .label_smoothing = 0.25};
    nn::CrossEntropyLoss ce(o);
    check_close(ce(logits, t), cross_entropy(logits, t, o), 0, 0);
    // and the options change the value: not the plain loss
    CHECK(std::fabs(sum(ce(logits, t)).item<double>() - sum(cross_entropy(logits, t, {.reduction = r})).item<double>()) >
          1e-3);
  }
}
