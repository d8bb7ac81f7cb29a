// Optimizers: every update rule replayed against PyTorch 1.13 trajectories
// (tests/fixtures/gen_optim.py), hand-derived first steps, state dict round trips and
// validation, and every bad input.
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace {

using xg::Tensor;
using Dict = std::vector<std::pair<std::string, Tensor>>;
namespace fs = std::filesystem;
namespace optim = xg::optim;

const std::string kDir = std::string(XGRAD_FIXTURES_DIR) + "/optim";
constexpr int kSteps = 6;

const Tensor* find(const Dict& d, const std::string& name) {
  for (const auto& [k, t] : d) {
    if (k == name) return &t;
  }
  return nullptr;
}

Tensor get(const Dict& d, const std::string& name) {
  const Tensor* t = find(d, name);
  INFO("missing entry " << name);
  REQUIRE(t != nullptr);
  return *t;
}

template <class Options>
Options options_from(const Dict& d, int g) {
  Options o;
  o.visit([&](const char* name, auto& field) {
    const double v = get(d, "group." + std::to_string(g) + "." + name).item();
    using F = std::remove_reference_t<decltype(field)>;
    if constexpr (std::is_same_v<F, bool>) {
      field = v != 0.0;
    } else {
      field = v;
    }
  });
  return o;
}

// The case's parameters (fresh copies of init.<i>, in `dtype`) and its parameter groups.
template <class Options>
std::vector<optim::ParamGroup<Options>> groups_from(const Dict& d, std::vector<Tensor>& params,
                                                    xg::Dtype dtype = xg::f64) {
  params.clear();
  for (int i = 0; find(d, "init." + std::to_string(i)); ++i) {
    params.push_back(get(d, "init." + std::to_string(i)).to(dtype).clone().requires_grad_());
  }
  std::vector<optim::ParamGroup<Options>> groups;
  for (int g = 0; find(d, "group." + std::to_string(g) + ".params"); ++g) {
    optim::ParamGroup<Options> group;
    for (std::int64_t i : get(d, "group." + std::to_string(g) + ".params").to_vector<std::int64_t>()) {
      group.params.push_back(params[static_cast<std::size_t>(i)]);
    }
    group.options = options_from<Options>(d, g);
    groups.push_back(group);
  }
  return groups;
}

// Feeds the case's gradient of step t (none where the file has none).
void feed(const Dict& d, std::vector<Tensor>& params, int t) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor* g = find(d, "grad." + std::to_string(t) + "." + std::to_string(i));
    if (g) {
      params[i].set_grad(g->to(params[i].dtype()).clone());
    } else {
      params[i].zero_grad();
    }
  }
}

void check_step(const Dict& d, const std::vector<Tensor>& params, int t, double tol) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    INFO("step " << t << ", parameter " << i);
    xgtest::check_close(params[i], get(d, "param." + std::to_string(t) + "." + std::to_string(i)), tol, tol);
  }
}

template <class Opt, class Options>
void replay(const Dict& d, xg::Dtype dtype = xg::f64, double tol = 1e-6) {
  std::vector<Tensor> params;
  Opt opt(groups_from<Options>(d, params, dtype), Options{});
  for (int t = 1; t <= kSteps; ++t) {
    feed(d, params, t);
    opt.step();
    check_step(d, params, t, tol);
  }
}

std::vector<fs::path> cases(const std::string& kind) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(kDir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kind + "_", 0) == 0 && e.path().extension() == ".npz") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

template <class Opt, class Options>
void replay_all(const std::string& kind, std::size_t expected) {
  const auto files = cases(kind);
  // Every option combination of gen_optim.py: a missing file must fail, not shrink the test.
  CHECK(files.size() == expected);
  for (const auto& f : files) {
    INFO("case " << f.filename().string());
    replay<Opt, Options>(xg::load_npz(f.string()));
  }
}


Tensor param(const std::vector<double>& v, const xg::Shape& s) {
  return xg::from_vector(v, s, xg::f64).requires_grad_();
}

}  // namespace

// ---------------------------------------------------------------------------
// PyTorch trajectories (6 steps, float64, 1e-6)
// ---------------------------------------------------------------------------

TEST_CASE("optim SGD matches PyTorch for every momentum/dampening/nesterov/weight_decay combination") {
  replay_all<optim::SGD, optim::SGDOptions>("sgd", 12);  // 10 combos + two groups + missing grad
}
TEST_CASE("optim Adagrad matches PyTorch for every lr_decay/weight_decay/initial_accumulator_value combination") {
  replay_all<optim::Adagrad, optim::AdagradOptions>("adagrad", 11);  // 8 + eps + two groups + missing grad
}
TEST_CASE("optim RMSprop matches PyTorch for every momentum/centered/weight_decay combination") {
  replay_all<optim::RMSprop, optim::RMSpropOptions>("rmsprop", 11);  // 8 + alpha/eps + two groups + missing
}
TEST_CASE("optim Adam matches PyTorch for every amsgrad/weight_decay combination") {
  replay_all<optim::Adam, optim::AdamOptions>("adam", 7);  // 4 + betas/eps + two groups + missing grad
}
TEST_CASE("optim AdamW matches PyTorch for every amsgrad/weight_decay combination") {
  replay_all<optim::AdamW, optim::AdamWOptions>("adamw", 6);  // 4 + two groups + missing grad
}

TEST_CASE("optim float32 parameters are updated in float32 and follow the float64 trajectory") {
  const Dict sgd = xg::load_npz(kDir + "/sgd_m0p9_d0p0_nes1_wd0p01.npz");
  replay<optim::SGD, optim::SGDOptions>(sgd, xg::f32, 1e-4);
  const Dict adam = xg::load_npz(kDir + "/adam_ams1_wd0p1.npz");
  replay<optim::Adam, optim::AdamOptions>(adam, xg::f32, 1e-4);
  const Dict rms = xg::load_npz(kDir + "/rmsprop_m0p9_c1_wd0p1.npz");
  replay<optim::RMSprop, optim::RMSpropOptions>(rms, xg::f32, 1e-4);
  const Dict ada = xg::load_npz(kDir + "/adagrad_lrd0p01_wd0p1_acc0p5.npz");
  replay<optim::Adagrad, optim::AdagradOptions>(ada, xg::f32, 1e-4);
}

// ---------------------------------------------------------------------------
// Closed-form first steps (derived by hand from the documented formulas)
// ---------------------------------------------------------------------------

TEST_CASE("optim first steps equal the hand-derived values") {
  SUBCASE("SGD: p - lr * (g + wd * p)") {
    Tensor p = param({1.0, -2.0}, {2});
    optim::SGD opt({p}, {.lr = 0.1, .weight_decay = 0.5});
    p.set_grad(xg::from_vector(std::vector<double>{0.5, 1.0}, {2}, xg::f64));
    opt.step();
    // 1 - 0.1 * (0.5 + 0.5), -2 - 0.1 * (1 - 1)
    xgtest::check_values(p, {0.9, -2.0}, 1e-12, 0);
  }
  SUBCASE("SGD momentum: the buffer starts at the gradient, then b = m b + (1 - d) g") {
    Tensor p = param({0.0}, {1});
    optim::SGD opt({p}, {.lr = 1.0, .momentum = 0.5, .dampening = 0.5});
    p.set_grad(xg::from_vector(std::vector<double>{2.0}, {1}, xg::f64));
    opt.step();  // b = 2, p = -2
    opt.step();  // b = 0.5 * 2 + 0.5 * 2 = 2, p = -4
    xgtest::check_values(p, {-4.0}, 1e-12, 0);
  }
  SUBCASE("Adagrad: p - lr * g / (sqrt(acc + g^2) + eps)") {
    Tensor p = param({1.0}, {1});
    optim::Adagrad opt({p}, {.lr = 0.5, .initial_accumulator_value = 5.0, .eps = 0.0});
    p.set_grad(xg::from_vector(std::vector<double>{2.0}, {1}, xg::f64));
    opt.step();  // 1 - 0.5 * 2 / 3
    xgtest::check_values(p, {1.0 - 1.0 / 3.0}, 1e-12, 0);
  }
  SUBCASE("RMSprop: p - lr * g / (sqrt((1 - alpha) g^2) + eps)") {
    Tensor p = param({1.0}, {1});
    optim::RMSprop opt({p}, {.lr = 0.1, .alpha = 0.75, .eps = 0.0});
    p.set_grad(xg::from_vector(std::vector<double>{4.0}, {1}, xg::f64));
    opt.step();  // v = 0.25 * 16 = 4, p = 1 - 0.1 * 4 / 2
    xgtest::check_values(p, {0.8}, 1e-12, 0);
  }
  SUBCASE("Adam: the first step moves each element by lr * g / (|g| + eps)") {
    Tensor p = param({1.0, -1.0}, {2});
    optim::Adam opt({p}, {.lr = 0.1});
    p.set_grad(xg::from_vector(std::vector<double>{3.0, -0.25}, {2}, xg::f64));
    opt.step();
    xgtest::check_values(p, {1.0 - 0.1 * 3.0 / (3.0 + 1e-8), -1.0 + 0.1 * 0.25 / (0.25 + 1e-8)}, 1e-12, 0);
  }
  SUBCASE("AdamW: decay p by (1 - lr wd) first, then the Adam step") {
    Tensor p = param({2.0}, {1});
    optim::AdamW opt({p}, {.lr = 0.1, .eps = 0.0, .weight_decay = 0.5});
    p.set_grad(xg::from_vector(std::vector<double>{1.0}, {1}, xg::f64));
    opt.step();  // 2 * 0.95 - 0.1
    xgtest::check_values(p, {1.8}, 1e-12, 0);
  }
}

// ---------------------------------------------------------------------------
// Groups, skipping, zero_grad
// ---------------------------------------------------------------------------

TEST_CASE("optim get_lr/set_lr address each group and the new lr is used by the next step") {
  Tensor a = param({1.0}, {1}), b = param({1.0}, {1});
  optim::SGD opt({optim::SGDGroup{{a}}, optim::SGDGroup{{b}, optim::SGDOptions{.lr = 0.5}}}, {.lr = 0.1});
  CHECK(opt.num_groups() == 2);
  CHECK(opt.get_lr(0) == 0.1);
  CHECK(opt.get_lr(1) == 0.5);
  opt.set_lr(0, 0.25);
  CHECK(opt.get_lr(0) == 0.25);
  CHECK(opt.options(1).lr == 0.5);
  a.set_grad(xg::full({1}, 1.0, xg::f64));
  b.set_grad(xg::full({1}, 1.0, xg::f64));
  opt.step();
  xgtest::check_values(a, {0.75}, 1e-12, 0);
  xgtest::check_values(b, {0.5}, 1e-12, 0);
}

TEST_CASE("optim parameters without a gradient are skipped and get no state; zero_grad drops every gradient") {
  Tensor a = param({1.0, 2.0}, {2}), b = param({3.0}, {1});
  optim::Adam opt({a, b}, {.lr = 0.1});
  a.set_grad(xg::full({2}, 1.0, xg::f64));
  opt.step();
  xgtest::check_values(b, {3.0}, 0, 0);
  CHECK(opt.step_count(0) == 1);
  CHECK(opt.step_count(1) == 0);
  const Dict sd = opt.state_dict();
  CHECK(find(sd, "state.0.exp_avg") != nullptr);
  for (const auto& [k, t] : sd) CHECK(k.rfind("state.1.", 0) != 0);

  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
  const std::vector<double> before = a.to_vector<double>();
  opt.step();  // nothing has a gradient: nothing moves, no step is counted
  xgtest::check_values(a, before, 0, 0);
  CHECK(opt.step_count(0) == 1);
}

// ---------------------------------------------------------------------------
// state_dict
// ---------------------------------------------------------------------------

TEST_CASE("optim state_dict names, dtypes and values follow the documented convention") {
  Tensor a = param({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, {2, 3});
  optim::Adam opt({a}, {.lr = 0.1, .amsgrad = true});
  a.set_grad(xg::full({2, 3}, 2.0, xg::f64));
  opt.step();
  opt.step();
  const Dict sd = opt.state_dict();
  CHECK(get(sd, "state.0.step").dtype() == xg::i64);
  CHECK(get(sd, "state.0.step").ndim() == 0);
  CHECK(get(sd, "state.0.step").item() == 2);
  for (const char* b : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
    INFO(b);
    CHECK(get(sd, std::string("state.0.") + b).shape() == a.shape());
  }
  // m after two steps of g = 2: 0.1 * 2 * (1 + 0.9)
  xgtest::check_values(get(sd, "state.0.exp_avg"), std::vector<double>(6, 0.38), 1e-12, 0);
  for (const char* o : {"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"}) {
    const Tensor t = get(sd, std::string("group.0.") + o);
    CHECK(t.dtype() == xg::f64);
    CHECK(t.ndim() == 0);
  }
  CHECK(get(sd, "group.0.beta2").item() == 0.999);
  CHECK(get(sd, "group.0.amsgrad").item() == 1.0);
  CHECK(get(sd, "group.0.params").item() == 1);
  // A snapshot: later steps do not change it.
  opt.step();
  CHECK(get(sd, "state.0.step").item() == 2);
  xgtest::check_values(get(sd, "state.0.exp_avg"), std::vector<double>(6, 0.38), 1e-12, 0);

  SUBCASE("optional buffers appear only with their option") {
    Tensor b = param({1.0}, {1});
    optim::RMSprop rms({b}, {.momentum = 0.0, .centered = false});
    b.set_grad(xg::full({1}, 1.0, xg::f64));
    rms.step();
    const Dict s = rms.state_dict();
    CHECK(find(s, "state.0.square_avg") != nullptr);
    CHECK(find(s, "state.0.momentum_buffer") == nullptr);
    CHECK(find(s, "state.0.grad_avg") == nullptr);
  }
}

namespace {

// Runs `kind`'s nograd case to step 3, saves the state through a .npz file, continues in a new
// optimizer (built with other options: the loaded ones must win) and compares with running
// straight through, bit for bit, and with PyTorch.
template <class Opt, class Options>
void round_trip(const std::string& kind, int split) {
  const Dict d = xg::load_npz(kDir + "/" + kind + "_twogroups.npz");
  std::vector<Tensor> straight_params, first_params;
  Opt straight(groups_from<Options>(d, straight_params), Options{});
  Opt first(groups_from<Options>(d, first_params), Options{});
  for (int t = 1; t <= split; ++t) {
    feed(d, straight_params, t);
    straight.step();
    feed(d, first_params, t);
    first.step();
  }
  const std::string path = (fs::temp_directory_path() / ("xgrad_optim_" + kind + ".npz")).string();
  xg::save_npz(path, first.state_dict());
  const Dict loaded = xg::load_npz(path);
  fs::remove(path);

  std::vector<Tensor> params;
  for (const Tensor& p : first_params) params.push_back(p.detach().clone().requires_grad_());
  std::vector<optim::ParamGroup<Options>> groups;
  groups.push_back({{params[0]}, std::nullopt});
  groups.push_back({{params[1]}, std::nullopt});
  Options other;
  other.lr = 0.777;
  Opt resumed(groups, other);
  resumed.load_state_dict(loaded);
  CHECK(resumed.get_lr(0) == straight.get_lr(0));
  CHECK(resumed.get_lr(1) == straight.get_lr(1));
  for (int t = split + 1; t <= kSteps; ++t) {
    feed(d, straight_params, t);
    straight.step();
    feed(d, params, t);
    resumed.step();
    for (std::size_t i = 0; i < params.size(); ++i) {
      CHECK(params[i].to_vector<double>() == straight_params[i].to_vector<double>());
    }
    check_step(d, params, t, 1e-6);
  }
}

}  // namespace

TEST_CASE("optim state_dict round trip through .npz at step 3 continues exactly like running straight through") {
  round_trip<optim::SGD, optim::SGDOptions>("sgd", 3);
  round_trip<optim::Adagrad, optim::AdagradOptions>("adagrad", 3);
  round_trip<optim::RMSprop, optim::RMSpropOptions>("rmsprop", 3);
  round_trip<optim::Adam, optim::AdamOptions>("adam", 3);
  round_trip<optim::AdamW, optim::AdamWOptions>("adamw", 3);
}

TEST_CASE("optim state_dict round trip restores partially created state (a parameter not stepped yet)") {
  // nograd case: p1 has no gradient at step 1, so after step 1 only p0 has state.
  const Dict d = xg::load_npz(kDir + "/adam_nograd.npz");
  std::vector<Tensor> p1s, p2s;
  optim::Adam a(groups_from<optim::AdamOptions>(d, p1s), {});
  feed(d, p1s, 1);
  a.step();
  const Dict sd = a.state_dict();
  CHECK(find(sd, "state.1.step") == nullptr);
  optim::Adam b(groups_from<optim::AdamOptions>(d, p2s), {});
  for (std::size_t i = 0; i < p2s.size(); ++i) {
    std::copy_n(p1s[i].data<double>(), p1s[i].numel(), p2s[i].data<double>());
  }
  b.load_state_dict(sd);
  for (int t = 2; t <= kSteps; ++t) {
    feed(d, p2s, t);
    b.step();
    check_step(d, p2s, t, 1e-6);
  }
  CHECK(b.step_count(0) == 6);
  CHECK(b.step_count(1) == 4);  // no gradient at steps 1 and 4
}

TEST_CASE("optim load_state_dict rejects a mismatching state with StateError and changes nothing") {
  Tensor w = param({1, 2, 3, 4, 5, 6}, {2, 3}), v = param({1, 2}, {2});
  optim::Adam opt({w, v}, {.lr = 0.1});
  w.set_grad(xg::full({2, 3}, 1.0, xg::f64));
  v.set_grad(xg::full({2}, 1.0, xg::f64));
  opt.step();
  const Dict good = opt.state_dict();

  auto unchanged = [&] {
    const Dict now = opt.state_dict();
    REQUIRE(now.size() == good.size());
    for (std::size_t k = 0; k < now.size(); ++k) {
      CHECK(now[k].first == good[k].first);
      CHECK(now[k].second.to_vector<double>() == good[k].second.to_vector<double>());
    }
  };
  auto rejects = [&](const Dict& bad, const std::vector<std::string>& parts) {
    std::vector<std::string> want = {"Adam", "load_state_dict"};
    want.insert(want.end(), parts.begin(), parts.end());
    xgtest::check_throws_msg<xg::StateError>([&] { opt.load_state_dict(bad); }, want);
    unchanged();
  };

  SUBCASE("state of other parameters (shapes differ)") {
    Tensor x = param({1, 2, 3}, {3}), y = param({1, 2}, {2});
    optim::Adam other({x, y}, {.lr = 0.5});
    x.set_grad(xg::full({3}, 1.0, xg::f64));
    y.set_grad(xg::full({2}, 1.0, xg::f64));
    other.step();
    rejects(other.state_dict(), {"state.0.exp_avg", "[3]", "[2,3]"});
  }
  SUBCASE("a different number of parameters") {
    Tensor x = param({1, 2, 3, 4, 5, 6}, {2, 3});
    optim::Adam other({x}, {});
    x.set_grad(xg::full({2, 3}, 1.0, xg::f64));
    other.step();
    rejects(other.state_dict(), {"group 0 has 1 parameters in the state but 2"});
  }
  SUBCASE("a different number of groups") {
    Tensor x = param({1, 2, 3, 4, 5, 6}, {2, 3}), y = param({1, 2}, {2});
    optim::Adam other({optim::AdamGroup{{x}}, optim::AdamGroup{{y}}}, {});
    rejects(other.state_dict(), {"2 parameter groups"});
  }
  SUBCASE("a buffer of the wrong dtype") {
    Dict bad = good;
    for (auto& [k, t] : bad) {
      if (k == "state.0.exp_avg_sq") t = t.to(xg::f32);
    }
    rejects(bad, {"state.0.exp_avg_sq", "float32"});
  }
  SUBCASE("a missing buffer, step or option") {
    Dict bad;
    for (const auto& kv : good) {
      if (kv.first != "state.1.exp_avg" && kv.first != "state.0.step") bad.push_back(kv);
    }
    rejects(bad, {"missing 'state.1.exp_avg'", "missing 'state.0.step'"});
    Dict no_lr;
    for (const auto& kv : good) {
      if (kv.first != "group.0.lr") no_lr.push_back(kv);
    }
    rejects(no_lr, {"missing 'group.0.lr'"});
  }
  SUBCASE("another optimizer's state (SGD options and buffers)") {
    Tensor x = param({1, 2, 3, 4, 5, 6}, {2, 3}), y = param({1, 2}, {2});
    optim::SGD other({x, y}, {.lr = 0.1, .momentum = 0.9});
    x.set_grad(xg::full({2, 3}, 1.0, xg::f64));
    other.step();
    rejects(other.state_dict(), {"saved by SGD, this optimizer is Adam"});
  }
  SUBCASE("an invalid option value or step") {
    Dict bad = good;
    for (auto& [k, t] : bad) {
      if (k == "group.0.beta1") t = xg::scalar(1.5, xg::f64);
    }
    rejects(bad, {"beta1"});
    Dict bad_step = good;
    for (auto& [k, t] : bad_step) {
      if (k == "state.0.step") t = xg::scalar(0.5, xg::f64);
    }
    rejects(bad_step, {"state.0.step"});
  }
  SUBCASE("an empty dict or unknown entries") {
    rejects(Dict{}, {"no 'group.<g>.*' entries"});
    Dict bad = good;
    bad.emplace_back("state.5.exp_avg", xg::zeros({2}, xg::f64));
    bad.emplace_back("weights", xg::zeros({2}, xg::f64));
    rejects(bad, {"unexpected entry 'weights'"});
    Dict bad2 = good;
    bad2.emplace_back("state.5.exp_avg", xg::zeros({2}, xg::f64));
    bad2.emplace_back("state.0.momentum_buffer", xg::zeros({2, 3}, xg::f64));
    rejects(bad2, {"'state.5.exp_avg' is for parameter 5", "unexpected buffer 'state.0.momentum_buffer'"});
  }
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

TEST_CASE("optim bad parameters: empty list, the same parameter twice, int64, non-leaf") {
  Tensor a = param({1.0, 2.0}, {2}), b = param({3.0}, {1});
  xgtest::check_throws_msg<xg::Error>([] { optim::SGD(std::vector<Tensor>{}, optim::SGDOptions{}); }, {"SGD", "empty"});
  xgtest::check_throws_msg<xg::Error>([] { optim::Adam(std::vector<optim::ParamGroup<optim::AdamOptions>>{}, {}); },
                           {"Adam", "empty"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({a, b, a}, {}); }, {"Adam", "parameter 2", "same tensor as parameter 0"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::RMSprop({optim::RMSpropGroup{{a}}, optim::RMSpropGroup{{b, a}}}, {}); }, {"RMSprop", "group 1", "same tensor"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adagrad({a, a.detach()}, {}); }, {"Adagrad", "same tensor"});
  Tensor ids = xg::from_vector(std::vector<std::int64_t>{1, 2}, {2});
  xgtest::check_throws_msg<xg::DtypeError>([&] { optim::SGD({a, ids}, {}); }, {"SGD", "int64"});
  Tensor derived = xg::mul(a, 2.0);
  xgtest::check_throws_msg<xg::StateError>([&] { optim::AdamW({derived}, {}); }, {"AdamW", "not a leaf", "mul"});
  xgtest::check_throws_msg<xg::StateError>([&] { optim::SGD({Tensor()}, {}); }, {"SGD", "undefined"});
}

TEST_CASE("optim bad options: negative lr/eps/weight_decay/momentum, betas outside [0,1), nesterov rules") {
  Tensor a = param({1.0, 2.0}, {2});
  using optim::AdagradOptions, optim::AdamOptions, optim::AdamWOptions, optim::RMSpropOptions, optim::SGDOptions;
  xgtest::check_throws_msg<xg::Error>([&] { optim::SGD({a}, SGDOptions{.lr = -0.1}); }, {"SGD", "learning rate", "-0.1"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::SGD({a}, SGDOptions{.momentum = -0.5}); }, {"SGD", "momentum"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::SGD({a}, SGDOptions{.weight_decay = -1}); }, {"SGD", "weight_decay"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::SGD({a}, SGDOptions{.nesterov = true}); }, {"SGD", "nesterov"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::SGD({a}, SGDOptions{.momentum = 0.9, .dampening = 0.1, .nesterov = true}); },
                           {"SGD", "nesterov", "dampening"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adagrad({a}, AdagradOptions{.lr = -1}); }, {"Adagrad", "learning rate"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adagrad({a}, AdagradOptions{.lr_decay = -1}); }, {"Adagrad", "lr_decay"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adagrad({a}, AdagradOptions{.initial_accumulator_value = -1}); },
                           {"Adagrad", "initial_accumulator_value"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adagrad({a}, AdagradOptions{.eps = -1}); }, {"Adagrad", "eps"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::RMSprop({a}, RMSpropOptions{.alpha = -0.1}); }, {"RMSprop", "alpha"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::RMSprop({a}, RMSpropOptions{.momentum = -0.1}); }, {"RMSprop", "momentum"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::RMSprop({a}, RMSpropOptions{.weight_decay = -0.1}); },
                           {"RMSprop", "weight_decay"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({a}, AdamOptions{.betas = {1.0, 0.999}}); }, {"Adam", "beta1", "[0, 1)"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({a}, AdamOptions{.betas = {-0.1, 0.999}}); }, {"Adam", "beta1"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({a}, AdamOptions{.betas = {0.9, 1.5}}); }, {"Adam", "beta2"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({a}, AdamOptions{.eps = -1e-8}); }, {"Adam", "eps"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::AdamW({a}, AdamWOptions{.weight_decay = -0.01}); }, {"AdamW", "weight_decay"});
  xgtest::check_throws_msg<xg::Error>([&] { optim::AdamW({a}, AdamWOptions{.lr = std::nan("")}); }, {"AdamW", "learning rate"});
  // A group's own options are validated too.
  Tensor b = param({1.0}, {1});
  xgtest::check_throws_msg<xg::Error>([&] { optim::Adam({optim::AdamGroup{{a}}, optim::AdamGroup{{b}, AdamOptions{.lr = -1}}}, {}); }, {"Adam", "learning rate"});
}

TEST_CASE("optim get_lr/set_lr on a group that does not exist, and a negative set_lr, throw and change nothing") {
  Tensor a = param({1.0}, {1});
  optim::RMSprop opt({a}, {.lr = 0.01});
  xgtest::check_throws_msg<xg::IndexError>([&] { opt.get_lr(1); }, {"RMSprop", "get_lr", "group 1", "1 group"});
  xgtest::check_throws_msg<xg::IndexError>([&] { opt.set_lr(3, 0.1); }, {"RMSprop", "set_lr", "group 3"});
  xgtest::check_throws_msg<xg::Error>([&] { opt.set_lr(0, -0.5); }, {"RMSprop", "learning rate"});
  CHECK(opt.get_lr(0) == 0.01);
}

TEST_CASE("optim step on empty (0-element) parameters is a no-op") {
  Tensor e = xg::zeros({0, 3}, xg::f64).requires_grad_();
  Tensor a = param({1.0}, {1});
  optim::Adam opt({e, a}, {.lr = 0.1});
  e.set_grad(xg::zeros({0, 3}, xg::f64));
  a.set_grad(xg::full({1}, 1.0, xg::f64));
  opt.step();
  CHECK(e.numel() == 0);
  xgtest::check_values(a, {1.0 - 0.1 / (1.0 + 1e-8)}, 1e-12, 0);
  const Dict sd = opt.state_dict();
  optim::Adam again({xg::zeros({0, 3}, xg::f64).requires_grad_(), param({1.0}, {1})}, {});
  again.load_state_dict(sd);
}

// ---------------------------------------------------------------------------
// States of the wrong kind, and values no training run produces
// ---------------------------------------------------------------------------

namespace {

// Two parameters (f64 [2, 3] and `dt` [2]) stepped twice with constant gradients, so every
// buffer exists and holds ordinary values.
template <class Opt, class Options>
struct Stepped {
  Tensor w = param({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor v;
  Opt opt;
  explicit Stepped(Options o, xg::Dtype dt = xg::f64)
      : v(xg::full({2}, 0.5, dt).requires_grad_()), opt(std::vector<Tensor>{w, v}, o) {
    for (int k = 0; k < 2; ++k) {
      w.set_grad(xg::full({2, 3}, 0.3, xg::f64));
      v.set_grad(xg::full({2}, -0.2, dt));
      opt.step();
    }
  }
};

// A copy of `sd` with element k of entry `key` set to x.
Dict with_value(const Dict& sd, const std::string& key, std::int64_t k, double x) {
  Dict out;
  bool found = false;
  for (const auto& [n, t] : sd) {
    Tensor c = t.clone();
    if (n == key) {
      found = true;
      if (c.dtype() == xg::f64) c.data<double>()[k] = x;
      if (c.dtype() == xg::f32) c.data<float>()[k] = static_cast<float>(x);
      if (c.dtype() == xg::i64) c.data<std::int64_t>()[k] = static_cast<std::int64_t>(x);
    }
    out.emplace_back(n, c);
  }
  REQUIRE_MESSAGE(found, key);
  return out;
}

Dict without_type(const Dict& sd) {
  Dict out;
  for (const auto& kv : sd) {
    if (kv.first.rfind("type.", 0) != 0) out.push_back(kv);
  }
  return out;
}

// load_state_dict(bad) is a StateError whose message has every needle, and the optimizer's
// state (options, steps, buffers) is what it was, bit for bit.
void refused_unchanged(optim::Optimizer& opt, const Dict& bad, const std::vector<std::string>& needles) {
  const Dict before = opt.state_dict();
  xgtest::check_throws_msg<xg::StateError>([&] { opt.load_state_dict(bad); }, needles);
  const Dict after = opt.state_dict();
  REQUIRE(after.size() == before.size());
  for (std::size_t k = 0; k < after.size(); ++k) {
    CAPTURE(after[k].first);
    CHECK(after[k].first == before[k].first);
    CHECK(after[k].second.to_vector<double>() == before[k].second.to_vector<double>());
  }
}

}  // namespace

TEST_CASE("optim state_dict records the optimizer type; another type's state is a StateError naming both") {
  Stepped<optim::Adam, optim::AdamOptions> adam({.lr = 0.1});
  Stepped<optim::AdamW, optim::AdamWOptions> adamw({.lr = 0.1});
  Stepped<optim::SGD, optim::SGDOptions> sgd({.lr = 0.1, .momentum = 0.9});
  Stepped<optim::RMSprop, optim::RMSpropOptions> rms({.lr = 0.1});
  Stepped<optim::Adagrad, optim::AdagradOptions> ada({.lr = 0.1});
  const Dict adam_state = adam.opt.state_dict();
  const Tensor* tag = find(adam_state, "type.Adam");
  REQUIRE(tag != nullptr);
  CHECK(tag->dtype() == xg::i64);
  CHECK(tag->ndim() == 0);
  CHECK(tag->item() == 1);
  CHECK(find(adamw.opt.state_dict(), "type.AdamW") != nullptr);
  CHECK(find(sgd.opt.state_dict(), "type.SGD") != nullptr);
  CHECK(find(rms.opt.state_dict(), "type.RMSprop") != nullptr);
  CHECK(find(ada.opt.state_dict(), "type.Adagrad") != nullptr);

  // Adam and AdamW have the same entries: before the type entry, each loaded the other's.
  refused_unchanged(adamw.opt, adam.opt.state_dict(), {"AdamW", "load_state_dict", "saved by Adam"});
  refused_unchanged(adam.opt, adamw.opt.state_dict(), {"Adam", "saved by AdamW, this optimizer is Adam"});
  // Through a file, as a checkpoint would carry it.
  const std::string path = (fs::temp_directory_path() / "xgrad_optim_adam_type.npz").string();
  xg::save_npz(path, adam.opt.state_dict());
  const Dict from_file = xg::load_npz(path);
  fs::remove(path);
  refused_unchanged(adamw.opt, from_file, {"saved by Adam, this optimizer is AdamW"});
  refused_unchanged(rms.opt, ada.opt.state_dict(), {"saved by Adagrad, this optimizer is RMSprop"});
  refused_unchanged(ada.opt, sgd.opt.state_dict(), {"saved by SGD, this optimizer is Adagrad"});
  refused_unchanged(sgd.opt, rms.opt.state_dict(), {"saved by RMSprop, this optimizer is SGD"});

  SUBCASE("a malformed or doubled type entry") {
    Dict two = adam.opt.state_dict();
    two.emplace_back("type.AdamW", find(adamw.opt.state_dict(), "type.AdamW")->clone());
    refused_unchanged(adam.opt, two, {"2 optimizer types", "Adam, AdamW"});
    Dict f = without_type(adam.opt.state_dict());
    f.emplace_back("type.Adam", xg::scalar(1.0, xg::f64));
    refused_unchanged(adam.opt, f, {"'type.Adam' must be a 0-d int64", "float64"});
    refused_unchanged(adam.opt, with_value(adam.opt.state_dict(), "type.Adam", 0, 7),
                      {"'type.Adam' is 7", "state format"});
  }
}

TEST_CASE("optim a state without a type entry (saved before types were recorded)") {
  SUBCASE("SGD, RMSprop and Adagrad states, whose entries are their own, load as before") {
    Stepped<optim::SGD, optim::SGDOptions> sgd({.lr = 0.1, .momentum = 0.9}), sgd2({.lr = 0.5, .momentum = 0.9});
    sgd2.opt.load_state_dict(without_type(sgd.opt.state_dict()));
    CHECK(sgd2.opt.get_lr(0) == 0.1);
    Stepped<optim::RMSprop, optim::RMSpropOptions> rms({.lr = 0.1}), rms2({.lr = 0.5});
    rms2.opt.load_state_dict(without_type(rms.opt.state_dict()));
    CHECK(rms2.opt.get_lr(0) == 0.1);
    Stepped<optim::Adagrad, optim::AdagradOptions> ada({.lr = 0.1}), ada2({.lr = 0.5});
    ada2.opt.load_state_dict(without_type(ada.opt.state_dict()));
    CHECK(ada2.opt.get_lr(0) == 0.1);
  }
  SUBCASE("Adam and AdamW states, which cannot be told apart, are refused with how to tag them") {
    Stepped<optim::Adam, optim::AdamOptions> adam({.lr = 0.1}), other({.lr = 0.5});
    const Dict old = without_type(adam.opt.state_dict());
    refused_unchanged(other.opt, old, {"Adam", "records no optimizer type", "AdamW", "add the entry 'type.Adam'"});
    Stepped<optim::AdamW, optim::AdamWOptions> adamw({.lr = 0.5});
    refused_unchanged(adamw.opt, old, {"AdamW", "records no optimizer type", "'type.AdamW'"});
    // The fix the message gives works, and the state saves with its type from then on.
    Dict tagged = old;
    Tensor one = Tensor::empty(xg::Shape{}, xg::i64);
    one.data<std::int64_t>()[0] = 1;
    tagged.emplace_back("type.Adam", one);
    other.opt.load_state_dict(tagged);
    CHECK(other.opt.get_lr(0) == 0.1);
    CHECK(find(other.opt.state_dict(), "type.Adam") != nullptr);
  }
}

TEST_CASE("optim load_state_dict refuses values no training run produces, naming entry and parameter, and changes nothing") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  SUBCASE("Adam: negative or NaN moments, in float64 and float32") {
    Stepped<optim::Adam, optim::AdamOptions> a({.lr = 0.1, .amsgrad = true});
    const Dict good = a.opt.state_dict();
    refused_unchanged(a.opt, with_value(good, "state.0.exp_avg_sq", 4, -1e-3),
                      {"'state.0.exp_avg_sq' (parameter 0)", "element 4", "must be >= 0"});
    refused_unchanged(a.opt, with_value(good, "state.1.max_exp_avg_sq", 1, -2.0), {"'state.1.max_exp_avg_sq' (parameter 1)"});
    refused_unchanged(a.opt, with_value(good, "state.0.exp_avg", 2, nan), {"'state.0.exp_avg' (parameter 0)", "nan"});
    Stepped<optim::AdamW, optim::AdamWOptions> f({.lr = 0.1}, xg::f32);
    refused_unchanged(f.opt, with_value(f.opt.state_dict(), "state.1.exp_avg_sq", 0, -0.5),
                      {"AdamW", "'state.1.exp_avg_sq' (parameter 1)", "element 0"});
    refused_unchanged(f.opt, with_value(f.opt.state_dict(), "state.1.exp_avg", 1, inf), {"'state.1.exp_avg'", "inf"});
  }
  SUBCASE("a negative or zero step count") {
    Stepped<optim::Adam, optim::AdamOptions> a({.lr = 0.1});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "state.1.step", 0, -3), {"'state.1.step'", ">= 1"});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "state.0.step", 0, 0), {"'state.0.step'"});
  }
  SUBCASE("Adagrad: NaN or negative sums") {
    Stepped<optim::Adagrad, optim::AdagradOptions> a({.lr = 0.1});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "state.0.sum", 5, nan),
                      {"Adagrad", "'state.0.sum' (parameter 0)", "element 5 is nan"});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "state.1.sum", 0, -1.0), {"'state.1.sum' (parameter 1)", ">= 0"});
  }
  SUBCASE("RMSprop: negative or NaN square averages, infinite momentum or grad averages") {
    Stepped<optim::RMSprop, optim::RMSpropOptions> r({.lr = 0.1, .momentum = 0.9, .centered = true});
    const Dict good = r.opt.state_dict();
    refused_unchanged(r.opt, with_value(good, "state.0.square_avg", 0, -1e-9), {"'state.0.square_avg' (parameter 0)"});
    refused_unchanged(r.opt, with_value(good, "state.1.square_avg", 1, nan), {"'state.1.square_avg' (parameter 1)"});
    refused_unchanged(r.opt, with_value(good, "state.0.momentum_buffer", 3, -inf), {"'state.0.momentum_buffer'", "-inf"});
    refused_unchanged(r.opt, with_value(good, "state.1.grad_avg", 0, nan), {"'state.1.grad_avg'"});
    // A negative grad_avg or momentum is an ordinary value.
    r.opt.load_state_dict(with_value(good, "state.1.grad_avg", 0, -0.25));
  }
  SUBCASE("SGD: a NaN or infinite momentum buffer") {
    Stepped<optim::SGD, optim::SGDOptions> s({.lr = 0.1, .momentum = 0.9});
    refused_unchanged(s.opt, with_value(s.opt.state_dict(), "state.0.momentum_buffer", 0, nan),
                      {"SGD", "'state.0.momentum_buffer' (parameter 0)"});
    refused_unchanged(s.opt, with_value(s.opt.state_dict(), "state.1.momentum_buffer", 1, inf), {"'state.1.momentum_buffer'"});
  }
  SUBCASE("NaN or infinite options") {
    Stepped<optim::Adam, optim::AdamOptions> a({.lr = 0.1});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "group.0.lr", 0, inf), {"'group.0.lr' is inf", "finite"});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "group.0.lr", 0, nan), {"'group.0.lr' is nan"});
    refused_unchanged(a.opt, with_value(a.opt.state_dict(), "group.0.weight_decay", 0, inf), {"'group.0.weight_decay'"});
    Stepped<optim::SGD, optim::SGDOptions> s({.lr = 0.1, .momentum = 0.9});
    refused_unchanged(s.opt, with_value(s.opt.state_dict(), "group.0.momentum", 0, inf), {"'group.0.momentum' is inf"});
  }
  SUBCASE("every problem is reported at once") {
    Stepped<optim::Adam, optim::AdamOptions> a({.lr = 0.1});
    Dict bad = with_value(a.opt.state_dict(), "state.0.exp_avg_sq", 0, -1.0);
    bad = with_value(bad, "state.1.exp_avg", 1, nan);
    refused_unchanged(a.opt, bad, {"2 problems", "state.0.exp_avg_sq", "state.1.exp_avg"});
  }
}
