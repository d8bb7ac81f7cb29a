// LR schedulers: lr sequences against PyTorch fixtures (tests/fixtures/sched/<case>.npz, written
// by gen_sched.py), against closed forms derived by hand, state save / load, bad input.
#include <cmath>
#include <map>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace xg;
using namespace xg::optim;

namespace {

// Stores one lr per group: all a scheduler may touch.
class FakeOptimizer : public Optimizer {
 public:
  explicit FakeOptimizer(std::vector<double> lrs = {0.1, 0.05}) : lrs_(std::move(lrs)) {}
  void step() override { ++steps; }
  void zero_grad() override {}
  std::size_t num_groups() const override { return lrs_.size(); }
  double get_lr(std::size_t g) const override { return lrs_.at(g); }
  void set_lr(std::size_t g, double lr) override { lrs_.at(g) = lr; }
  nn::StateDict state_dict() const override { return {}; }
  void load_state_dict(const nn::StateDict&) override {}
  std::vector<double> lrs() const { return lrs_; }
  int steps = 0;

 private:
  std::vector<double> lrs_;
};

using Entries = std::map<std::string, Tensor>;

Entries load_case(const std::string& name) {
  Entries out;
  for (auto& [k, t] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/sched/" + name + ".npz")) out[k] = t;
  return out;
}

// lr[k][g] from the fixture's [steps + 1, groups] entry.
std::vector<std::vector<double>> lr_rows(const Tensor& t) {
  REQUIRE(t.ndim() == 2);
  const std::vector<double> v = t.to_vector<double>();
  const auto rows = t.size(0), cols = t.size(1);
  std::vector<std::vector<double>> out(rows, std::vector<double>(cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out[r][c] = v[r * cols + c];
  return out;
}

void check_lrs(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-12) {
  REQUIRE(got.size() == want.size());
  for (std::size_t g = 0; g < got.size(); ++g) {
    INFO("group " << g << ": got " << got[g] << ", want " << want[g]);
    CHECK(std::fabs(got[g] - want[g]) <= tol);
  }
}

// Runs `sched` over the fixture: lr[0] after construction, lr[k] after k steps.
void check_sequence(FakeOptimizer& opt, LRScheduler& sched, const std::string& name) {
  const Entries fx = load_case(name);
  const auto want = lr_rows(fx.at("lr"));
  REQUIRE(want.size() >= 31);
  check_lrs(opt.lrs(), want[0]);
  check_lrs(sched.get_last_lr(), want[0]);
  for (std::size_t k = 1; k < want.size(); ++k) {
    CAPTURE(k);
    opt.step();
    sched.step();
    CHECK(sched.last_epoch() == static_cast<std::int64_t>(k));
    check_lrs(opt.lrs(), want[k]);
    check_lrs(sched.get_last_lr(), want[k]);
  }
}

template <class F>
void check_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("expected an xg::Error");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

template <class F>
void check_state_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("expected an xg::StateError");
  } catch (const StateError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

nn::StateDict replaced(nn::StateDict sd, const std::string& name, Tensor t) {
  for (auto& [n, v] : sd)
    if (n == name) v = t;
  return sd;
}

Tensor i64_scalar(std::int64_t v) {
  Tensor t = Tensor::empty(Shape{}, i64);
  t.data<std::int64_t>()[0] = v;
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PyTorch fixtures

TEST_CASE("StepLR: lr sequence matches torch StepLR (2 groups, 40 steps)") {
  {
    FakeOptimizer opt;
    StepLR s(opt, 3, 0.5);
    check_sequence(opt, s, "step_3_0.5");
  }
  FakeOptimizer opt;
  StepLR s(opt, 1);
  check_sequence(opt, s, "step_1_default");
}

TEST_CASE("ExponentialLR: lr sequence matches torch ExponentialLR") {
  FakeOptimizer opt;
  ExponentialLR s(opt, 0.9);
  check_sequence(opt, s, "exp_0.9");
}

TEST_CASE("CosineAnnealingLR: lr sequence matches torch, including past T_max") {
  {
    FakeOptimizer opt;
    CosineAnnealingLR s(opt, 10);
    check_sequence(opt, s, "cos_10");
  }
  FakeOptimizer opt;
  CosineAnnealingLR s(opt, 7, 0.001);
  check_sequence(opt, s, "cos_7_eta");
}

TEST_CASE("LinearWarmup: lr sequence matches torch LinearLR(start_factor, 1.0, total_iters)") {
  FakeOptimizer opt;
  LinearWarmup s(opt, 5, 0.1);
  check_sequence(opt, s, "warmup_5_0.1");
}

TEST_CASE("LinearWarmup chained with cosine / step / exponential matches torch ChainedScheduler") {
  {
    FakeOptimizer opt;
    auto s = chain(LinearWarmup(opt, 5, 0.1), CosineAnnealingLR(opt, 20));
    CHECK(s.size() == 2);
    check_sequence(opt, s, "warmup_5_0.1_cos_20");
  }
  {
    FakeOptimizer opt;
    auto s = chain(LinearWarmup(opt, 4, 0.25), StepLR(opt, 3, 0.5));
    check_sequence(opt, s, "warmup_4_0.25_step_3_0.5");
  }
  FakeOptimizer opt;
  std::vector<std::unique_ptr<LRScheduler>> v;
  v.push_back(std::make_unique<LinearWarmup>(opt, 3, 0.5));
  v.push_back(std::make_unique<ExponentialLR>(opt, 0.95));
  ChainedScheduler s(std::move(v));
  check_sequence(opt, s, "warmup_3_0.5_exp_0.95");
}

TEST_CASE("ReduceLROnPlateau: lrs, best, bad epochs and cooldown match torch on fixed metrics") {
  struct Case {
    const char* name;
    PlateauOptions options;
  };
  const std::vector<Case> cases = {
      {"plateau_min_rel", {.mode = "min", .factor = 0.5, .patience = 2, .threshold = 1e-4,
                           .threshold_mode = "rel", .cooldown = 2, .min_lr = 0.0, .eps = 1e-8}},
      {"plateau_max_abs", {.mode = "max", .factor = 0.1, .patience = 1, .threshold = 0.01,
                           .threshold_mode = "abs", .cooldown = 0, .min_lrs = {1e-4, 2e-5}, .eps = 1e-8}},
      {"plateau_min_abs_floor", {.mode = "min", .factor = 0.3, .patience = 0, .threshold = 0.0,
                                 .threshold_mode = "abs", .cooldown = 1, .min_lr = 0.004, .eps = 1e-3}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const Entries fx = load_case(c.name);
    const auto want = lr_rows(fx.at("lr"));
    const std::vector<double> metric = fx.at("metric").to_vector<double>();
    const std::vector<double> bad = fx.at("num_bad").to_vector<double>();
    const std::vector<double> cool = fx.at("cooldown").to_vector<double>();
    const std::vector<double> best = fx.at("best").to_vector<double>();
    FakeOptimizer opt;
    ReduceLROnPlateau s(opt, c.options);
    check_lrs(opt.lrs(), want[0]);
    check_lrs(s.get_last_lr(), want[0]);
    int reductions = 0;
    for (std::size_t k = 0; k < metric.size(); ++k) {
      CAPTURE(k);
      const double before = opt.get_lr(0);
      s.step(metric[k]);
      reductions += opt.get_lr(0) < before;
      check_lrs(opt.lrs(), want[k + 1]);
      check_lrs(s.get_last_lr(), want[k + 1]);
      CHECK(s.num_bad_epochs() == static_cast<std::int64_t>(bad[k]));
      CHECK(s.cooldown_counter() == static_cast<std::int64_t>(cool[k]));
      CHECK(s.best() == best[k]);
    }
    CHECK(reductions >= 3);  // the fixtures do exercise reductions
  }
}

// ---------------------------------------------------------------------------------------------
// Closed forms derived by hand (independent of PyTorch's recursive formulas)

TEST_CASE("epoch schedulers agree with their closed forms for 60 epochs") {
  constexpr double pi = std::numbers::pi;
  FakeOptimizer o1, o2, o3, o4;
  StepLR step(o1, 4, 0.3);
  ExponentialLR expo(o2, 0.97);
  CosineAnnealingLR cosine(o3, 9, 0.002);
  LinearWarmup warm(o4, 6, 0.2);
  for (int e = 0; e <= 60; ++e) {
    CAPTURE(e);
    for (std::size_t g = 0; g < 2; ++g) {
      const double base = g == 0 ? 0.1 : 0.05;
      CHECK(o1.get_lr(g) == doctest::Approx(base * std::pow(0.3, e / 4)).epsilon(1e-13));
      CHECK(o2.get_lr(g) == doctest::Approx(base * std::pow(0.97, e)).epsilon(1e-12));
      CHECK(std::fabs(o3.get_lr(g) - (0.002 + (base - 0.002) * (1 + std::cos(pi * e / 9)) / 2)) <= 1e-12);
      const double factor = e >= 6 ? 1.0 : 0.2 + (1.0 - 0.2) * e / 6;
      CHECK(o4.get_lr(g) == doctest::Approx(base * factor).epsilon(1e-13));
    }
    step.step();
    expo.step();
    cosine.step();
    warm.step();
  }
}

TEST_CASE("LinearWarmup with warmup_steps = 0 is no warmup; schedulers keep an lr set by hand") {
  FakeOptimizer opt;
  LinearWarmup w(opt, 0, 0.1);
  for (int i = 0; i < 3; ++i) w.step();
  check_lrs(opt.lrs(), {0.1, 0.05}, 0);
  // Recursive form, like PyTorch: a hand-set lr is scaled from there on.
  FakeOptimizer opt2;
  ExponentialLR e(opt2, 0.5);
  opt2.set_lr(0, 1.0);
  e.step();
  check_lrs(opt2.lrs(), {0.5, 0.025}, 0);
}

// ---------------------------------------------------------------------------------------------
// State save / load

namespace {

// Runs `a` for 7 steps, saves it, loads the state into `b` (built over a fresh optimizer with
// different lrs whose lr is restored as the optimizer's own state would), then steps both.
template <class Make, class Step>
void check_round_trip(Make make, Step step) {
  FakeOptimizer oa;
  auto a = make(oa);
  for (int k = 0; k < 7; ++k) step(*a, k);
  const nn::StateDict sd = a->state_dict();
  for (const auto& [name, t] : sd) {
    CAPTURE(name);
    CHECK(t.ndim() == 0);
  }
  FakeOptimizer ob({0.7, 0.9});
  auto b = make(ob);
  b->load_state_dict(sd);
  for (std::size_t g = 0; g < 2; ++g) ob.set_lr(g, oa.get_lr(g));
  CHECK(b->last_epoch() == a->last_epoch());
  check_lrs(b->get_last_lr(), a->get_last_lr(), 0);
  check_lrs(b->base_lrs(), a->base_lrs(), 0);
  for (int k = 7; k < 40; ++k) {
    step(*a, k);
    step(*b, k);
    check_lrs(ob.lrs(), oa.lrs(), 0);
  }
  CHECK(b->state_dict().size() == sd.size());
}

const auto epoch_step = [](LRScheduler& s, int) { s.step(); };

}  // namespace

TEST_CASE("state_dict / load_state_dict: a reloaded scheduler continues the same sequence") {
  SUBCASE("StepLR") {
    check_round_trip([](Optimizer& o) { return std::make_unique<StepLR>(o, 3, 0.5); }, epoch_step);
  }
  SUBCASE("ExponentialLR") {
    check_round_trip([](Optimizer& o) { return std::make_unique<ExponentialLR>(o, 0.9); }, epoch_step);
  }
  SUBCASE("CosineAnnealingLR (the recursive form needs the saved base lrs)") {
    check_round_trip([](Optimizer& o) { return std::make_unique<CosineAnnealingLR>(o, 5, 0.01); }, epoch_step);
  }
  SUBCASE("LinearWarmup, mid-warmup") {
    check_round_trip([](Optimizer& o) { return std::make_unique<LinearWarmup>(o, 10, 0.1); }, epoch_step);
  }
  SUBCASE("ChainedScheduler") {
    check_round_trip(
        [](Optimizer& o) {
          return std::make_unique<ChainedScheduler>(chain(LinearWarmup(o, 10, 0.1), CosineAnnealingLR(o, 4)));
        },
        epoch_step);
  }
  SUBCASE("ReduceLROnPlateau, mid-cooldown") {
    check_round_trip(
        [](Optimizer& o) {
          return std::make_unique<ReduceLROnPlateau>(o, PlateauOptions{.factor = 0.5, .patience = 1, .cooldown = 3});
        },
        [](LRScheduler& s, int k) { static_cast<ReduceLROnPlateau&>(s).step(k < 3 ? 1.0 - 0.1 * k : 1.0); });
  }
}

TEST_CASE("load_state_dict restores options too (PyTorch's semantics)") {
  FakeOptimizer oa, ob;
  StepLR a(oa, 2, 0.5);
  StepLR b(ob, 5, 0.9);
  b.load_state_dict(a.state_dict());
  CHECK(b.step_size() == 2);
  CHECK(b.gamma() == 0.5);
  ReduceLROnPlateau pa(oa, {.mode = "max", .threshold_mode = "abs", .min_lrs = {0.01, 0.02}});
  ReduceLROnPlateau pb(ob);
  pb.load_state_dict(pa.state_dict());
  CHECK(pb.best() == -INFINITY);
  check_lrs(pb.min_lrs(), {0.01, 0.02}, 0);
  pb.step(1.0);
  pb.step(1.005);  // abs threshold 1e-4 in max mode: better
  CHECK(pb.best() == 1.005);
}

TEST_CASE("load_state_dict: mismatched or corrupt state is a StateError and changes nothing") {
  FakeOptimizer opt;
  StepLR s(opt, 3, 0.5);
  for (int k = 0; k < 4; ++k) s.step();
  const nn::StateDict good = s.state_dict();
  const auto check_unchanged = [&] {
    CHECK(s.last_epoch() == 4);
    CHECK(s.step_size() == 3);
    CHECK(s.gamma() == 0.5);
    check_lrs(s.get_last_lr(), {0.05, 0.025}, 0);
  };

  SUBCASE("different number of groups") {
    FakeOptimizer three({0.1, 0.2, 0.3});
    StepLR other(three, 3, 0.5);
    check_state_error([&] { s.load_state_dict(other.state_dict()); }, "3 parameter groups, the optimizer has 2");
    check_state_error([&] { other.load_state_dict(good); }, "2 parameter groups, the optimizer has 3");
  }
  SUBCASE("missing entry") {
    nn::StateDict sd;
    for (const auto& e : good)
      if (e.first != "gamma") sd.push_back(e);
    check_state_error([&] { s.load_state_dict(sd); }, "missing entry 'gamma'");
  }
  SUBCASE("unexpected entry") {
    nn::StateDict sd = good;
    sd.emplace_back("T_max", i64_scalar(3));
    check_state_error([&] { s.load_state_dict(sd); }, "unexpected entries 'T_max'");
  }
  SUBCASE("wrong dtype or rank") {
    check_state_error([&] { s.load_state_dict(replaced(good, "last_epoch", scalar(4.0, f64))); },
                      "'last_epoch' must be a 0-d int64");
    check_state_error([&] { s.load_state_dict(replaced(good, "gamma", full(Shape{1}, 0.5, f64))); },
                      "'gamma' must be a 0-d float64");
  }
  SUBCASE("invalid values") {
    check_state_error([&] { s.load_state_dict(replaced(good, "gamma", scalar(-1.0, f64))); }, "gamma");
    check_state_error([&] { s.load_state_dict(replaced(good, "step_size", i64_scalar(0))); }, "step_size");
    check_state_error([&] { s.load_state_dict(replaced(good, "last_epoch", i64_scalar(-2))); }, "last_epoch");
    check_state_error([&] { s.load_state_dict(replaced(good, "base_lr.1", scalar(NAN, f64))); }, "base_lr");
  }
  SUBCASE("a state of another scheduler kind") {
    ExponentialLR e(opt, 0.9);
    check_state_error([&] { s.load_state_dict(e.state_dict()); }, "StepLR.load_state_dict");
  }
  check_unchanged();
}

TEST_CASE("ChainedScheduler.load_state_dict validates every member before applying any") {
  FakeOptimizer opt;
  auto s = chain(LinearWarmup(opt, 5, 0.1), StepLR(opt, 2, 0.5));
  s.step();
  nn::StateDict sd = s.state_dict();
  CHECK(sd.front().first == "num_schedulers");
  for (int k = 0; k < 3; ++k) s.step();
  const std::int64_t warm_epoch = s[0].last_epoch();
  check_state_error([&] { s.load_state_dict(replaced(sd, "1.gamma", scalar(0.0, f64))); }, "scheduler 1");
  CHECK(s[0].last_epoch() == warm_epoch);  // member 0 was valid but not applied
  check_state_error([&] { s.load_state_dict(replaced(sd, "num_schedulers", i64_scalar(3))); }, "3 schedulers");
  nn::StateDict extra = sd;
  extra.emplace_back("7.gamma", scalar(0.5, f64));
  check_state_error([&] { s.load_state_dict(extra); }, "unexpected entry '7.gamma'");
  s.load_state_dict(sd);
  CHECK(s.last_epoch() == 1);
  CHECK(s[1].last_epoch() == 1);
}

TEST_CASE("ReduceLROnPlateau.load_state_dict rejects inconsistent counters") {
  FakeOptimizer opt;
  ReduceLROnPlateau s(opt, {.cooldown = 2});
  const nn::StateDict good = s.state_dict();
  check_state_error([&] { s.load_state_dict(replaced(good, "cooldown_counter", i64_scalar(3))); }, "cooldown_counter");
  check_state_error([&] { s.load_state_dict(replaced(good, "num_bad_epochs", i64_scalar(-1))); }, "num_bad_epochs");
  check_state_error([&] { s.load_state_dict(replaced(good, "mode_max", i64_scalar(2))); }, "mode_max");
  check_state_error([&] { s.load_state_dict(replaced(good, "factor", scalar(1.0, f64))); }, "factor");
  check_state_error([&] { s.load_state_dict(replaced(good, "best", scalar(NAN, f64))); }, "best");
  FakeOptimizer one({0.3});
  ReduceLROnPlateau other(one);
  check_state_error([&] { s.load_state_dict(other.state_dict()); }, "1 parameter groups, the optimizer has 2");
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST_CASE("schedulers: bad options are an Error that names the scheduler") {
  FakeOptimizer opt;
  check_error([&] { StepLR(opt, 0); }, "StepLR: step_size");
  check_error([&] { StepLR(opt, -3); }, "StepLR: step_size");
  check_error([&] { StepLR(opt, 2, 0.0); }, "StepLR: gamma");
  check_error([&] { StepLR(opt, 2, -0.5); }, "StepLR: gamma");
  check_error([&] { ExponentialLR(opt, 0.0); }, "ExponentialLR: gamma");
  check_error([&] { ExponentialLR(opt, NAN); }, "ExponentialLR: gamma");
  check_error([&] { CosineAnnealingLR(opt, 0); }, "CosineAnnealingLR: T_max");
  check_error([&] { CosineAnnealingLR(opt, -1); }, "CosineAnnealingLR: T_max");
  check_error([&] { CosineAnnealingLR(opt, 5, -0.1); }, "CosineAnnealingLR: eta_min");
  check_error([&] { LinearWarmup(opt, -1, 0.1); }, "LinearWarmup: warmup_steps");
  check_error([&] { LinearWarmup(opt, 5, 0.0); }, "LinearWarmup: start_factor");
  check_error([&] { LinearWarmup(opt, 5, 1.5); }, "LinearWarmup: start_factor");
  check_error([&] { ReduceLROnPlateau(opt, {.factor = 1.0}); }, "ReduceLROnPlateau: factor");
  check_error([&] { ReduceLROnPlateau(opt, {.factor = 2.0}); }, "ReduceLROnPlateau: factor");
  check_error([&] { ReduceLROnPlateau(opt, {.factor = 0.0}); }, "ReduceLROnPlateau: factor");
  check_error([&] { ReduceLROnPlateau(opt, {.mode = "mni"}); }, "ReduceLROnPlateau: mode must be");
  check_error([&] { ReduceLROnPlateau(opt, {.threshold_mode = "relative"}); }, "threshold_mode");
  check_error([&] { ReduceLROnPlateau(opt, {.patience = -1}); }, "patience");
  check_error([&] { ReduceLROnPlateau(opt, {.threshold = -1e-4}); }, "threshold");
  check_error([&] { ReduceLROnPlateau(opt, {.cooldown = -1}); }, "cooldown");
  check_error([&] { ReduceLROnPlateau(opt, {.min_lr = -1.0}); }, "min_lr");
  check_error([&] { ReduceLROnPlateau(opt, {.min_lrs = {0.0, 0.0, 0.0}}); }, "min_lrs has 3 values");
  check_error([&] { ReduceLROnPlateau(opt, {.eps = -1.0}); }, "eps");
  FakeOptimizer empty(std::vector<double>{});
  check_error([&] { ExponentialLR(empty, 0.5); }, "no parameter groups");
  // None of the failed constructions touched the optimizer.
  check_lrs(opt.lrs(), {0.1, 0.05}, 0);
}

TEST_CASE("ChainedScheduler: empty, null or mixed optimizers are an Error; plateau needs a metric") {
  FakeOptimizer a, b;
  check_error([&] { ChainedScheduler(std::vector<std::unique_ptr<LRScheduler>>{}); }, "at least one");
  std::vector<std::unique_ptr<LRScheduler>> with_null;
  with_null.push_back(nullptr);
  check_error([&] { ChainedScheduler(std::move(with_null)); }, "scheduler 0 is null");
  check_error([&] { (void)chain(StepLR(a, 2), StepLR(b, 2)); }, "different optimizer");
  ReduceLROnPlateau p(a);
  CHECK_THROWS_AS(p.step(), StateError);
  LRScheduler& base = p;
  CHECK_THROWS_AS(base.step(), StateError);
}
