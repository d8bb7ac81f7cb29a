#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <unistd.h>
#include <vector>

#include <xgrad/nn/layers.hpp>
#include <xgrad/nn/rnn.hpp>
#include <xgrad/train/tbptt.hpp>

#include "helpers.hpp"

using xg::Tensor;
using xg::training::tbptt_chunks;
using xg::training::train_tbptt;

namespace {

// A tiny Elman RNN over one stream, written with xg ops (float64):
//   h_t = tanh(E[x_t] + h_{t-1} W + b),   logits_t = h_t Wo + bo
struct TinyState {
  Tensor h;  // [H]
  TinyState detach() const { return {h.detach()}; }
};

struct TinyRNN {
  std::int64_t vocab, hidden;
  Tensor E, W, b, Wo, bo;

  TinyRNN(std::int64_t v, std::int64_t h, std::uint64_t seed) : vocab(v), hidden(h) {
    const double s = 1.0 / std::sqrt(static_cast<double>(h));
    E = xgtest::rnd({v, h}, -s, s, seed).requires_grad_();
    W = xgtest::rnd({h, h}, -s, s, seed + 1).requires_grad_();
    b = xgtest::rnd({h}, -s, s, seed + 2).requires_grad_();
    Wo = xgtest::rnd({h, v}, -s, s, seed + 3).requires_grad_();
    bo = xgtest::rnd({v}, -s, s, seed + 4).requires_grad_();
  }
  std::vector<Tensor> params() const { return {E, W, b, Wo, bo}; }
  TinyState zero_state() const { return {xg::zeros({hidden}, xg::f64)}; }

  // One step: the new h.
  Tensor cell(const Tensor& x_emb, const Tensor& h) const { return xg::tanh(x_emb + xg::matmul(h, W) + b); }

  // The chunk as train_tbptt wants it: mean cross-entropy over the chunk, final state.
  std::pair<Tensor, TinyState> chunk(const Tensor& inputs, const Tensor& targets, const TinyState& s) const {
    const Tensor X = xg::index_select(E, 0, inputs);  // [k, H]
    Tensor h = s.h;
    std::vector<Tensor> hs;
    for (std::int64_t t = 0; t < inputs.size(0); ++t) {
      h = cell(xg::select(X, 0, t), h);
      hs.push_back(h);
    }
    const Tensor logits = xg::matmul(xg::stack(hs, 0), Wo) + bo;  // [k, V]
    return {xg::cross_entropy(logits, targets), TinyState{h}};
  }
};

// Plain SGD, then zero the gradients (what train_tbptt asks of update_fn).
void sgd(const std::vector<Tensor>& params, double lr) {
  for (Tensor p : params) {
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    double* w = p.data<double>();
    const double* d = g.data<double>();
    for (std::int64_t i = 0; i < p.numel(); ++i) w[i] -= lr * d[i];
    p.zero_grad();
  }
}

Tensor stream(const std::vector<std::int64_t>& pattern, std::int64_t n) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = pattern[static_cast<std::size_t>(i) % pattern.size()];
  return xg::from_vector(v);
}

// Resident set size in bytes (second field of /proc/self/statm, in pages).
long rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// What train_tbptt accepts as a state: anything with detach().
static_assert(xg::training::Detachable<TinyState>);
static_assert(xg::training::Detachable<xg::nn::RNNState>);
static_assert(xg::training::Detachable<xg::nn::LSTMState>);
static_assert(xg::training::Detachable<Tensor>);
static_assert(!xg::training::Detachable<Tensor*>);
static_assert(!xg::training::Detachable<int>);

}  // namespace

TEST_CASE("tbptt: chunks of k with targets shifted by one") {
  const Tensor tokens = xg::from_vector(std::vector<std::int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19});
  const auto chunks = tbptt_chunks(tokens, 4);
  // 9 prediction positions: [0,4), [4,8), [8,9).
  REQUIRE(chunks.size() == 3);
  CHECK(chunks[0].inputs.to_vector<std::int64_t>() == std::vector<std::int64_t>{10, 11, 12, 13});
  CHECK(chunks[0].targets.to_vector<std::int64_t>() == std::vector<std::int64_t>{11, 12, 13, 14});
  CHECK(chunks[1].inputs.to_vector<std::int64_t>() == std::vector<std::int64_t>{14, 15, 16, 17});
  CHECK(chunks[2].inputs.to_vector<std::int64_t>() == std::vector<std::int64_t>{18});
  CHECK(chunks[2].targets.to_vector<std::int64_t>() == std::vector<std::int64_t>{19});
  CHECK(chunks[2].begin == 8);
  CHECK(chunks[2].end == 9);
  CHECK(tbptt_chunks(tokens, 9).size() == 1);
  CHECK(tbptt_chunks(tokens, 100).size() == 1);
  CHECK(tbptt_chunks(tokens, 1).size() == 9);
  CHECK(xg::training::tbptt_num_chunks(tokens, 4) == 3);
  CHECK(xg::training::tbptt_chunk(tokens, 4, 1).targets.to_vector<std::int64_t>() == std::vector<std::int64_t>{15, 16, 17, 18});
  CHECK_THROWS_WITH_AS(xg::training::tbptt_chunk(tokens, 4, 3), doctest::Contains("make 3 chunks"), xg::IndexError);
  CHECK_THROWS_AS(xg::training::tbptt_chunk(tokens, 4, -1), xg::IndexError);

  // [B, N]: chunks run along the time dim for every stream at once.
  const Tensor batch = xg::from_vector(std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {2, 5});
  const auto bc = tbptt_chunks(batch, 3);
  REQUIRE(bc.size() == 2);
  CHECK(bc[0].inputs.shape() == xg::Shape{2, 3});
  CHECK(bc[0].targets.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3, 6, 7, 8});
  CHECK(bc[1].inputs.to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 8});
  CHECK(bc[1].targets.to_vector<std::int64_t>() == std::vector<std::int64_t>{4, 9});
}

TEST_CASE("tbptt: bad tokens and window are errors naming train_tbptt") {
  const Tensor ok = xg::from_vector(std::vector<std::int64_t>{1, 2, 3});
  CHECK_THROWS_WITH_AS(tbptt_chunks(ok, 0), doctest::Contains("train_tbptt"), xg::Error);
  CHECK_THROWS_WITH_AS(tbptt_chunks(xg::zeros({5}, xg::f64), 2), doctest::Contains("int64"), xg::DtypeError);
  const Tensor cube = xg::from_vector(std::vector<std::int64_t>(8, 0), {2, 2, 2});
  CHECK_THROWS_WITH_AS(tbptt_chunks(cube, 2), doctest::Contains("[2,2,2]"), xg::ShapeError);
  const Tensor one = xg::from_vector(std::vector<std::int64_t>{7});
  CHECK_THROWS_WITH_AS(tbptt_chunks(one, 2), doctest::Contains("train_tbptt"), xg::ShapeError);
  const Tensor empty = xg::from_vector(std::vector<std::int64_t>{}, {2, 0});
  CHECK_THROWS_AS(tbptt_chunks(empty, 2), xg::ShapeError);
  CHECK_THROWS_AS(tbptt_chunks(Tensor(), 2), xg::StateError);
}

TEST_CASE("tbptt: the tape does not grow and memory stays flat over many chunks") {
  const std::int64_t k = 16;
  TinyRNN model(8, 32, 11);
  xg::Generator gen(5);
  const auto run = [&](std::int64_t chunks) {
    const Tensor tokens = xg::randint(0, 8, {chunks * k + 1}, &gen);
    std::vector<std::size_t> size_at_start, pending_after_backward;
    auto result = train_tbptt<TinyState>(
        tokens, k, model.zero_state(),
        [&](const Tensor& x, const Tensor& y, const TinyState& s) {
          size_at_start.push_back(xg::tape_size());
          return model.chunk(x, y, s);
        },
        [&](const Tensor&) {
          pending_after_backward.push_back(xg::tape_pending());
          sgd(model.params(), 0.01);
        });
    CHECK(result.losses.size() == static_cast<std::size_t>(chunks));
    CHECK(std::all_of(size_at_start.begin(), size_at_start.end(), [](std::size_t n) { return n == 0; }));
    CHECK(std::all_of(pending_after_backward.begin(), pending_after_backward.end(), [](std::size_t n) { return n == 0; }));
    CHECK(xg::tape_size() == 0);
    CHECK(xg::tape_pending() == 0);
    CHECK_FALSE(result.state.h.requires_grad());
  };
  run(20);  // warm-up: allocator pools, BLAS buffers
  const long before = rss_bytes();
  run(200);
  const long after = rss_bytes();
  MESSAGE("RSS before " << before / 1024 << " KiB, after 200 chunks " << after / 1024 << " KiB");
  // One chunk's graph is ~16 steps x a few [32] tensors; 200 kept graphs would be several
  // MiB. Flat means a small constant, whatever the number of chunks.
#if defined(__SANITIZE_ADDRESS__)
  MESSAGE("AddressSanitizer keeps freed memory in quarantine: RSS bound not checked");
#else
  CHECK(after - before < 1024 * 1024);
#endif
}

TEST_CASE("tbptt: carrying the state without detach() is the engine's StateError") {
  TinyRNN model(4, 8, 3);
  const Tensor tokens = stream({0, 1, 2, 3}, 33);
  const auto chunks = tbptt_chunks(tokens, 8);
  for (bool detach : {true, false}) {
    CAPTURE(detach);
    TinyState state = model.zero_state();
    bool threw = false;
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      auto [loss, next] = model.chunk(chunks[c].inputs, chunks[c].targets, state);
      try {
        loss.backward();
      } catch (const xg::StateError& e) {
        threw = true;
        CHECK(c == 1);  // the first chunk that reaches into a freed graph
        CHECK(std::string(e.what()).find("detach()") != std::string::npos);
        break;
      }
      sgd(model.params(), 0.01);
      state = detach ? next.detach() : next;
    }
    CHECK(threw == !detach);
    for (Tensor p : model.params()) p.zero_grad();
  }
  CHECK(xg::tape_pending() == 0);
}

TEST_CASE("tbptt: chunked gradients equal a hand-written truncated loop") {
  // Stream of 23 tokens, k = 5: chunks of 5, 5, 5, 5, 2 positions.
  const std::vector<std::int64_t> toks = {3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0, 2, 6, 4, 3, 3, 2, 5, 0, 2, 6, 4, 1};
  const std::int64_t k = 5, V = 7;
  TinyRNN model(V, 6, 21);

  // The helper; update_fn copies each chunk's gradients and does not change parameters.
  std::vector<std::vector<std::vector<double>>> helper_grads;
  const auto result = train_tbptt<TinyState>(
      xg::from_vector(toks), k, model.zero_state(),
      [&](const Tensor& x, const Tensor& y, const TinyState& s) { return model.chunk(x, y, s); },
      [&](const Tensor&) {
        std::vector<std::vector<double>> g;
        for (Tensor p : model.params()) {
          g.push_back(p.grad().to_vector<double>());
          p.zero_grad();
        }
        helper_grads.push_back(std::move(g));
      });
  REQUIRE(helper_grads.size() == 5);

  // By hand: one token at a time, a per-step loss, the chunk loss their mean, the cut
  // every k steps.
  Tensor h = model.zero_state().h;
  std::size_t chunk = 0;
  std::vector<double> hand_losses;
  for (std::size_t start = 0; start + 1 < toks.size(); start += static_cast<std::size_t>(k)) {
    const std::size_t end = std::min(start + static_cast<std::size_t>(k), toks.size() - 1);
    h = h.detach();
    Tensor total;
    for (std::size_t t = start; t < end; ++t) {
      const Tensor emb = xg::select(model.E, 0, toks[t]);
      h = model.cell(emb, h);
      const Tensor logits = xg::reshape(xg::matmul(h, model.Wo) + model.bo, {1, V});
      const Tensor step_loss = xg::cross_entropy(logits, xg::from_vector(std::vector<std::int64_t>{toks[t + 1]}));
      total = total.defined() ? total + step_loss : step_loss;
    }
    const Tensor loss = total / static_cast<double>(end - start);
    loss.backward();
    hand_losses.push_back(loss.item());
    const auto params = model.params();
    for (std::size_t i = 0; i < params.size(); ++i) {
      CAPTURE(chunk);
      CAPTURE(i);
      Tensor p = params[i];
      xgtest::check_values(p.grad(), helper_grads[chunk][i], 1e-12, 1e-10);
      p.zero_grad();
    }
    ++chunk;
  }
  CHECK(chunk == 5);
  REQUIRE(result.losses.size() == hand_losses.size());
  for (std::size_t i = 0; i < hand_losses.size(); ++i) CHECK(result.losses[i] == doctest::Approx(hand_losses[i]).epsilon(1e-12));
  // The final state is the hand loop's last h, detached.
  xgtest::check_close(result.state.h, h);
  CHECK_FALSE(result.state.h.requires_grad());
}

TEST_CASE("tbptt: loss decreases on a learnable periodic stream") {
  // After 0 comes 1, 2 or 3 in turn: predicting it needs the token before the 0.
  const Tensor tokens = stream({0, 1, 0, 2, 0, 3}, 6 * 400 + 1);
  TinyRNN model(4, 24, 7);
  const auto result = train_tbptt<TinyState>(
      tokens, 12, model.zero_state(),
      [&](const Tensor& x, const Tensor& y, const TinyState& s) { return model.chunk(x, y, s); },
      [&](const Tensor&) { sgd(model.params(), 0.3); });
  REQUIRE(result.losses.size() == 200);
  const double first = std::accumulate(result.losses.begin(), result.losses.begin() + 10, 0.0) / 10;
  const double last = std::accumulate(result.losses.end() - 10, result.losses.end(), 0.0) / 10;
  MESSAGE("first chunk " << result.losses[0] << ", mean of the first 10 " << first << ", of the last 10 " << last);
  CHECK(result.losses[0] > 1.0);  // about log(4) untrained
  CHECK(last < 0.1 * result.losses[0]);
  CHECK(last < 0.25 * first);
}

TEST_CASE("tbptt: works with nn::LSTM's state over a batch of streams") {
  const std::int64_t V = 5, H = 16, B = 3, k = 8;
  xg::nn::LSTM lstm(xg::nn::LSTMOptions{V, H});
  xg::nn::Linear head(H, V);
  std::vector<Tensor> params = lstm.parameters();
  for (const Tensor& p : head.parameters()) params.push_back(p);
  const Tensor onehot = xg::eye(V);
  // Three phase-shifted copies of a period-5 stream: [B, N].
  std::vector<std::int64_t> v;
  for (std::int64_t bi = 0; bi < B; ++bi)
    for (std::int64_t i = 0; i < k * 150 + 1; ++i) v.push_back((i + bi) % V);
  const Tensor tokens = xg::from_vector(v, {B, k * 150 + 1});

  const auto step = [&](const Tensor& x, const Tensor& y, const xg::nn::LSTMState& s) {
    const Tensor in = xg::index_select(onehot, 0, xg::transpose(x, 0, 1));  // [k, B, V]
    auto [out, next] = lstm(in, s);                                         // out [k, B, H]
    const Tensor logits = head(xg::reshape(out, {-1, H}));                  // [k*B, V]
    const Tensor targets = xg::reshape(xg::transpose(y, 0, 1), {-1});       // time-major like logits
    return std::pair<Tensor, xg::nn::LSTMState>{xg::cross_entropy(logits, targets), next};
  };
  // Each chunk starts on an empty tape. (Right after backward a few nodes can still be
  // pending: those producing the returned state that the loss does not use, e.g. c_n;
  // they go when the state is replaced by its detached copy.)
  std::size_t max_tape = 0;
  const auto counted_step = [&](const Tensor& x, const Tensor& y, const xg::nn::LSTMState& s) {
    max_tape = std::max(max_tape, xg::tape_size());
    return step(x, y, s);
  };
  const auto result = train_tbptt<xg::nn::LSTMState>(tokens, k, xg::nn::LSTMState{}, counted_step, [&](const Tensor&) {
    for (Tensor p : params) {
      const Tensor g = p.grad();
      if (!g.defined()) continue;
      float* w = p.data<float>();
      const float* d = g.data<float>();
      for (std::int64_t i = 0; i < p.numel(); ++i) w[i] -= 1.0f * d[i];
      p.zero_grad();
    }
  });
  REQUIRE(result.losses.size() == 150);
  CHECK(max_tape == 0);
  CHECK(xg::tape_size() == 0);
  CHECK(result.state.h.shape() == xg::Shape{1, B, H});
  CHECK(result.state.c.shape() == xg::Shape{1, B, H});
  CHECK_FALSE(result.state.h.requires_grad());
  for (double l : result.losses) CHECK(std::isfinite(l));
  MESSAGE("LSTM loss: first chunk " << result.losses.front() << ", last " << result.losses.back());
  CHECK(result.losses.back() < 0.25 * result.losses.front());
}
