// Robustness at the level a training run sees it: saturated recurrent models, non-finite
// gradients meeting clipping and the optimizer, and two training runs in two threads.
// (Op-level extremes — log_softmax / cross_entropy at +-1e4, saturated fused gate kernels —
// are in test_ops_softmax.cpp, test_ops_loss.cpp and test_ops_rnn.cpp; docs/robustness.md
// lists them all.)
#include <cmath>
#include <functional>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include <xgrad/xgrad.hpp>

#include "helpers.hpp"

using xg::Tensor;

namespace {

struct LM : xg::nn::Module {
  std::shared_ptr<xg::nn::Embedding> emb;
  std::shared_ptr<xg::nn::LSTM> lstm;
  std::shared_ptr<xg::nn::Linear> out;
  LM(std::int64_t V, std::int64_t H) {
    emb = register_module("emb", std::make_shared<xg::nn::Embedding>(V, 6));
    xg::nn::LSTMOptions o;
    o.input_size = 6;
    o.hidden_size = H;
    o.num_layers = 2;
    o.dropout = 0.25;  // consumes this thread's generator: part of what must not interfere
    lstm = register_module("lstm", std::make_shared<xg::nn::LSTM>(o));
    out = register_module("out", std::make_shared<xg::nn::Linear>(H, V));
  }
};

struct RunResult {
  std::vector<double> losses;
  std::vector<std::vector<unsigned char>> params;  // raw bytes of every parameter
};

// A complete little training run that owns everything it touches except the thread's
// tape and default generator. `mid_step`, when given, runs on each step's logits while
// that step's graph is pending.
RunResult train_run(std::uint64_t seed, int steps, const std::function<void(const Tensor&)>& mid_step = {}) {
  constexpr std::int64_t V = 13, H = 16, B = 4, T = 12;
  xg::manual_seed(seed);
  LM lm(V, H);
  xg::optim::Adam opt(lm.parameters(), xg::optim::AdamOptions{.lr = 0.01});
  RunResult r;
  for (int s = 0; s < steps; ++s) {
    const Tensor tok = xg::randint(0, V, {T + 1, B});
    auto [hs, st] = (*lm.lstm)(lm.emb->forward(xg::slice(tok, 0, 0, T)));
    const Tensor logits = lm.out->forward(hs);
    if (mid_step) mid_step(logits);
    const Tensor loss =
        xg::cross_entropy(xg::reshape(logits, {T * B, V}), xg::reshape(xg::slice(tok, 0, 1, T + 1), {T * B}));
    loss.backward();
    xg::optim::clip_grad_norm(lm, 1.0);
    opt.step();
    opt.zero_grad();
    r.losses.push_back(loss.item());
  }
  for (const Tensor& p : lm.parameters()) {
    const auto* b = static_cast<const unsigned char*>(p.data_ptr());
    r.params.emplace_back(b, b + p.numel() * static_cast<std::int64_t>(xg::dtype_size(p.dtype())));
  }
  return r;
}

}  // namespace

TEST_CASE("threads: two models trained concurrently are bit-identical to training them one after the other") {
  constexpr int steps = 15;
  const RunResult a_seq = train_run(11, steps);
  const RunResult b_seq = train_run(22, steps);
  REQUIRE(a_seq.losses != b_seq.losses);  // the two runs really differ

  for (int round = 0; round < 2; ++round) {
    RunResult a_par, b_par;
    std::thread ta([&] { a_par = train_run(11, steps); });
    std::thread tb([&] { b_par = train_run(22, steps); });
    ta.join();
    tb.join();
    CHECK(a_par.losses == a_seq.losses);  // exact equality, not approximate
    CHECK(b_par.losses == b_seq.losses);
    CHECK(a_par.params == a_seq.params);
    CHECK(b_par.params == b_seq.params);
  }
  // The main thread's tape is untouched by the workers' (it is thread-local).
  CHECK(xg::tape_size() == 0);
}

TEST_CASE("robustness: an LSTM driven into saturation on every gate stays finite, forward and backward") {
  for (xg::Dtype dt : {xg::f32, xg::f64}) {
    INFO(xg::dtype_name(dt));
    xg::manual_seed(4);
    xg::nn::LSTMOptions o;
    o.input_size = 5;
    o.hidden_size = 7;
    o.num_layers = 2;
    o.bidirectional = true;
    xg::nn::LSTM lstm(o);
    lstm.to(dt);
    // Inputs of +-1e4 and weights scaled by 100: every pre-activation is far past the
    // point where sigmoid and tanh round to their limits.
    {
      xg::NoGradGuard ng;
      for (Tensor p : lstm.parameters()) {
        const Tensor scaled = xg::mul(p, 100.0);
        std::memcpy(p.data_ptr(), scaled.data_ptr(), static_cast<std::size_t>(p.numel()) * xg::dtype_size(dt));
      }
    }
    std::vector<double> xs;
    for (double v : xgtest::rnd({9, 3, 5}, -1.0, 1.0, 5).to_vector<double>()) xs.push_back(v < 0 ? -1e4 : 1e4);
    Tensor x = xg::from_vector(xs, {9, 3, 5}, dt).requires_grad_();
    auto [y, st] = lstm(x);
    for (double v : y.to_vector<double>()) {
      REQUIRE(std::isfinite(v));
      CHECK(std::abs(v) <= 1.0);
    }
    // c grows by at most 1 per step when every gate saturates: |c_T| <= T.
    for (double v : st.c.to_vector<double>()) CHECK(std::abs(v) <= 9.0 + 1e-6);
    xg::sum(xg::mul(y, xgtest::rnd(y.shape(), -1.0, 1.0, 8).to(dt))).backward();
    for (double g : x.grad().to_vector<double>()) CHECK(std::isfinite(g));
    for (const Tensor& p : lstm.parameters()) {
      for (double g : p.grad().to_vector<double>()) CHECK(std::isfinite(g));
    }
  }
}

TEST_CASE("robustness: a NaN or Inf gradient never reaches the parameters through clip + step") {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    INFO(bad);
    xg::manual_seed(2);
    xg::nn::Linear lin(4, 3);
    xg::optim::Adam opt(lin.parameters());
    const Tensor w_before = lin.weight.clone();
    // log(x) at x = 0 or x < 0 in the loss: the kind of bug that produces the bad value.
    const Tensor x = xg::from_vector(std::vector<float>{1.f, 2.f, 3.f, 4.f}, {1, 4});
    Tensor loss = xg::sum(xg::mul(lin.forward(x), static_cast<float>(bad)));
    loss.backward();

    // Default: an error naming the parameter; gradients and parameters untouched.
    const std::string msg = xgtest::error_of<xg::optim::NonFiniteNormError>([&] { xg::optim::clip_grad_norm(lin, 1.0); });
    CHECK(xgtest::has(msg, "weight"));
    // The documented recovery: skip the step (error_if_nonfinite = false returns the norm).
    const double norm = xg::optim::clip_grad_norm(lin, 1.0, 2.0, false);
    CHECK_FALSE(std::isfinite(norm));
    if (std::isfinite(norm)) opt.step();
    opt.zero_grad();
    CHECK(std::memcmp(lin.weight.data_ptr(), w_before.data_ptr(), 12 * sizeof(float)) == 0);
    for (double v : lin.weight.to_vector<double>()) CHECK(std::isfinite(v));
  }
}

TEST_CASE("robustness: cross_entropy at logits of +-1e4 has finite loss and gradient (f32, f64)") {
  for (xg::Dtype dt : {xg::f32, xg::f64}) {
    INFO(xg::dtype_name(dt));
    // Row 0: the target's logit wins by 2e4 (loss 0); row 1: loses by 2e4 (loss 2e4).
    Tensor logits = xg::from_vector({1e4, -1e4, 0.0, -1e4, 1e4, 0.0}, {2, 3}, dt).requires_grad_();
    const Tensor target = xg::from_vector(std::vector<std::int64_t>{0, 0});
    const Tensor loss = xg::cross_entropy(logits, target);
    CHECK(loss.item() == doctest::Approx(1e4).epsilon(1e-6));  // mean of 0 and 2e4
    loss.backward();
    // d/dlogits = (softmax - onehot) / N: row 0 ~ 0, row 1 ~ (-1, 1, 0) / 2.
    xgtest::check_values(logits.grad(), {0.0, 0.0, 0.0, -0.5, 0.5, 0.0}, 1e-6, 1e-6);
  }
}

// A shape that fits the 2^60-byte limit but no machine's memory: 2^57 float32 values are
// 2^59 bytes, past the 47- and 57-bit address spaces, so the system refuses it whatever
// its overcommit setting. (Under AddressSanitizer, test_main's __asan_default_options
// lets malloc return null instead of aborting.)
TEST_CASE("robustness: an allocation the system refuses is a ResourceError naming the op, shape and bytes") {
  const xg::Shape huge{std::int64_t{1} << 29, std::int64_t{1} << 28};
  try {
    (void)xg::zeros(huge);
    FAIL("zeros of 2^59 bytes did not throw");
  } catch (const xg::ResourceError& e) {
    const std::string m = e.what();
    CHECK(m.find("zeros: out of memory") != std::string::npos);
    CHECK(m.find("[536870912,268435456]") != std::string::npos);
    CHECK(m.find("576460752303423488 bytes") != std::string::npos);
  }
  const Tensor p = xg::ones({1, 1}).requires_grad_();
  try {
    (void)xg::broadcast_to(p, huge);
    FAIL("broadcast_to of 2^59 bytes did not throw");
  } catch (const xg::ResourceError& e) {
    CHECK(std::string(e.what()).find("broadcast_to: out of memory") != std::string::npos);
  }
  // ResourceError is an xg::Error: one catch clause covers every refusal.
  CHECK_THROWS_AS((void)xg::randn(huge), xg::Error);
}

TEST_CASE("robustness: training goes on after a ResourceError, bit-identical to a run that never failed") {
  const RunResult clean = train_run(11, 6);
  // The same run with a refused allocation mid-forward, while the step's graph is pending:
  // the refused op must leave that graph, the tape and the generator as they were.
  int refused = 0;
  const RunResult failing = train_run(11, 6, [&](const Tensor& logits) {
    try {
      (void)xg::broadcast_to(xg::sum(logits), {std::int64_t{1} << 29, std::int64_t{1} << 28});
    } catch (const xg::ResourceError&) {
      ++refused;
    }
  });
  CHECK(refused == 6);
  CHECK(failing.losses == clean.losses);
  CHECK(failing.params == clean.params);
}
