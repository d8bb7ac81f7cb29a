// seq2seq with attention: translate dates as people write them into ISO 8601.
//
//   "Thursday, 26 November 2026" / "11/26/26" / "26 nov. 2026" / ...  ->  "2026-11-26"
//
// Encoder: a bidirectional LSTM over the source characters. Decoder: an LSTM cell that,
// before each output character, attends over the encoder outputs with additive
// (Bahdanau) attention. Dates keep their real, varying lengths: a batch is padded to its
// longest source, the lengths go through the encoder (each sequence's final state is its
// own last character's), mask the attention (nn::Lengths) and mask the loss by the target
// lengths. --fixed-width instead pads every source to the longest possible date and runs
// the encoder over the padding too, with a mask on the attention only, for comparison. Trained
// with teacher forcing on batches generated on the fly (dates.hpp); evaluated by exact
// match on dates never seen in training, with greedy and beam-search decoding. Writes
// the attention matrix of a few test examples as SVG heatmaps and the loss curve.
//
//   ./seq2seq                         # default: >= 99% exact match in a few minutes
//   ./seq2seq --beam 5 --out /tmp/s2s
//   ./seq2seq --fixed-width           # every source padded to the longest date, no lengths
//   ./seq2seq --steps 400 --batch 32 --test-size 200 --check   # the smoke test (~10 s)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <xgrad/xgrad.hpp>

#include "../common/cli.hpp"
#include "dates.hpp"

using namespace xg;
namespace cli = examples::cli;

// ---- vocabularies ---------------------------------------------------------------------

// Source: printable ASCII, id = c - 31 (0 is padding). Target: digits and '-', plus
// padding, start and end.
constexpr std::int64_t kPad = 0, kSrcVocab = 96;
constexpr std::int64_t kBos = 1, kEos = 2, kTgtVocab = 14;
constexpr std::int64_t kTgtLen = 11;  // "2026-11-26" and the end token: the longest target
// The longest source any format writes is 29 characters ("wednesday september 30th 2026");
// --fixed-width pads every batch to this.
constexpr std::int64_t kFixedWidth = 32;

std::int64_t src_id(char c) { return c >= 32 && c < 127 ? c - 31 : kSrcVocab - 1; }
std::int64_t tgt_id(char c) { return c == '-' ? 13 : 3 + (c - '0'); }
std::string tgt_str(std::int64_t id) {
  if (id == kEos) return "</s>";
  if (id == 13) return "-";
  if (id >= 3 && id <= 12) return std::string(1, static_cast<char>('0' + id - 3));
  return "?";
}

// A padded batch. src [B, S] (padded with kPad; S = the longest source of the batch, or
// kFixedWidth with fixed_width), src_len int64 [B] (real characters), tgt_in [B, T]
// (<s> + ISO string), tgt_out [B, T] (ISO string + </s>), tgt_len int64 [B] (the
// string and </s>; T = the longest of them, targets padded with kPad). With fixed_width,
// mask [B, S] (1 = a real character) instead of lengths for the attention.
struct Batch {
  std::vector<dates::Example> examples;
  Tensor src, src_len, mask, tgt_in, tgt_out, tgt_len;
  bool fixed_width = false;
};

Batch make_batch(std::vector<dates::Example> examples, bool fixed_width) {
  const auto B = static_cast<std::int64_t>(examples.size());
  std::int64_t S = 1, T = 1;
  for (const auto& e : examples) {
    S = std::max<std::int64_t>(S, static_cast<std::int64_t>(e.source.size()));
    T = std::max<std::int64_t>(T, static_cast<std::int64_t>(e.target.size()) + 1);
  }
  if (fixed_width) {
    if (S > kFixedWidth) throw ShapeError(fmt::format("seq2seq: a source of {} characters is longer than --fixed-width's {}", S, kFixedWidth));
    S = kFixedWidth;
  }
  std::vector<std::int64_t> src(B * S, kPad), slen(B), tin(B * T, kPad), tout(B * T, kPad), tlen(B);
  std::vector<float> mask(B * S, 0.0f);
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& e = examples[b];
    slen[b] = static_cast<std::int64_t>(e.source.size());
    for (std::size_t i = 0; i < e.source.size(); ++i) src[b * S + i] = src_id(e.source[i]), mask[b * S + i] = 1.0f;
    const auto n = static_cast<std::int64_t>(e.target.size());
    tlen[b] = n + 1;
    tin[b * T] = kBos;
    for (std::int64_t t = 0; t < n; ++t) tin[b * T + t + 1] = tout[b * T + t] = tgt_id(e.target[t]);
    tout[b * T + n] = kEos;
  }
  return {std::move(examples), from_vector(src, {B, S}), from_vector(slen, {B}),
          fixed_width ? from_vector(mask, {B, S}) : Tensor(), from_vector(tin, {B, T}), from_vector(tout, {B, T}),
          from_vector(tlen, {B}), fixed_width};
}

// ---- the model ------------------------------------------------------------------------

struct Config {
  std::int64_t embed = 32, enc_hidden = 64, dec_hidden = 128, attn_hidden = 64;
};

struct Seq2Seq : nn::Module {
  std::shared_ptr<nn::Embedding> src_embed, tgt_embed;
  std::shared_ptr<nn::LSTM> encoder;
  std::shared_ptr<nn::Linear> bridge;  // encoder summary -> decoder's initial h
  std::shared_ptr<nn::AdditiveAttention> attention;
  std::shared_ptr<nn::LSTMCell> decoder;
  std::shared_ptr<nn::Linear> readout;  // [h; context] -> target logits

  explicit Seq2Seq(const Config& c) {
    src_embed = register_module("src_embed", std::make_shared<nn::Embedding>(kSrcVocab, c.embed, kPad));
    tgt_embed = register_module("tgt_embed", std::make_shared<nn::Embedding>(kTgtVocab, c.embed));
    encoder = register_module("encoder", std::make_shared<nn::LSTM>(nn::LSTMOptions{
                                             .input_size = c.embed, .hidden_size = c.enc_hidden,
                                             .batch_first = true, .bidirectional = true}));
    bridge = register_module("bridge", std::make_shared<nn::Linear>(c.enc_hidden, c.dec_hidden));
    attention = register_module("attention",
                                std::make_shared<nn::AdditiveAttention>(c.dec_hidden, 2 * c.enc_hidden, c.attn_hidden));
    decoder = register_module("decoder", std::make_shared<nn::LSTMCell>(c.embed + 2 * c.enc_hidden, c.dec_hidden));
    readout = register_module("readout", std::make_shared<nn::Linear>(c.dec_hidden + 2 * c.enc_hidden, kTgtVocab));
  }

  // What the decoder reads at every step: the projected encoder outputs, the source
  // lengths (or, fixed-width, the mask), and the decoder's current state.
  struct Memory {
    nn::AdditiveAttention::Keys keys;  // keys [B, S, 2He], projected [B, S, A]
    Tensor lengths;                    // int64 [B]; undefined with a mask
    Tensor mask;                       // [B, S]; undefined with lengths
    nn::LSTMState state;               // h, c [B, Hd]
    // The same memory for rows `rows` (int64 [N]) of the batch: beams, reordering.
    Memory take(const Tensor& rows) const {
      return {{index_select(keys.keys, 0, rows), index_select(keys.projected, 0, rows)},
              lengths.defined() ? index_select(lengths, 0, rows) : Tensor(),
              mask.defined() ? index_select(mask, 0, rows) : Tensor(),
              {index_select(state.h, 0, rows), index_select(state.c, 0, rows)}};
    }
  };

  Memory encode(const Batch& b) const {
    // The reverse direction's final h (after t = 0) has seen the whole string, which makes
    // it the summary that starts the decoder (Bahdanau et al. do the same). With lengths
    // it starts at each string's own last character; fixed-width, it first reads the
    // padding, which the model has to learn to ignore.
    const Tensor x = (*src_embed)(b.src);
    auto [outputs, state] = b.fixed_width ? (*encoder)(x) : (*encoder)(x, {}, b.src_len);  // [B, S, 2He]; h [2, B, He]
    const Tensor h0 = tanh((*bridge)(select(state.h, 0, 1)));  // [B, Hd]
    return {attention->precompute_keys(outputs), b.fixed_width ? Tensor() : b.src_len, b.mask, {h0, zeros_like(h0)}};
  }

  struct Step {
    Tensor logits;   // [B, V]
    Tensor weights;  // [B, S]: where this output character looked
  };
  // One output character: attend with the previous state, feed [y_{t-1}; context] to the
  // cell, read out from [h_t; context]. Advances m.state.
  Step step(const Tensor& prev, Memory& m) const {
    auto [context, weights] = m.lengths.defined() ? (*attention)(m.state.h, m.keys, Tensor(), nn::Lengths(m.lengths))
                                                  : (*attention)(m.state.h, m.keys, Tensor(), m.mask);  // [B, 2He], [B, S]
    m.state = (*decoder)(concat({(*tgt_embed)(prev), context}, 1), m.state);    // [B, Hd]
    return {(*readout)(concat({m.state.h, context}, 1)), weights};
  }

  // Teacher forcing: the true previous character is the input at every step. The loss
  // counts each target's characters and </s>, not the padding after them (mean per token).
  Tensor loss(const Batch& b) const {
    Memory m = encode(b);
    std::vector<Tensor> logits;
    const std::int64_t T = b.tgt_in.size(1);
    for (std::int64_t t = 0; t < T; ++t) logits.push_back(step(select(b.tgt_in, 1, t), m).logits);
    if (b.fixed_width) return nn::temporal_cross_entropy(stack(logits, 1), b.tgt_out);
    return nn::temporal_cross_entropy(stack(logits, 1), b.tgt_out, nn::Lengths(b.tgt_len));  // [B, T, V] -> 0-d
  }
};

// ---- decoding -----------------------------------------------------------------------

std::string ids_to_string(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (std::int64_t id : ids) {
    if (id == kEos) break;
    s += tgt_str(id);
  }
  return s;
}

// Greedy: the most likely character at every step. weights[b][t] is output step t's
// attention over the source (only filled when `weights` is given).
std::vector<std::string> greedy_decode(const Seq2Seq& model, const Batch& b,
                                       std::vector<std::vector<std::vector<double>>>* weights = nullptr) {
  NoGradGuard no_grad;
  const std::int64_t B = b.src.size(0), S = b.src.size(1);
  Seq2Seq::Memory m = model.encode(b);
  std::vector<std::vector<std::int64_t>> out(B);
  if (weights) weights->assign(B, {});
  Tensor prev = full({B}, static_cast<double>(kBos), i64);
  for (std::int64_t t = 0; t < kTgtLen; ++t) {
    const auto s = model.step(prev, m);
    prev = argmax(s.logits, 1);  // [B]
    const auto ids = prev.to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < B; ++i) out[i].push_back(ids[i]);
    if (weights) {
      const auto w = s.weights.to_vector<double>();
      for (std::int64_t i = 0; i < B; ++i) (*weights)[i].emplace_back(w.begin() + i * S, w.begin() + (i + 1) * S);
    }
  }
  std::vector<std::string> result;
  for (const auto& ids : out) result.push_back(ids_to_string(ids));
  return result;
}

// Beam search with width K, all examples of the batch at once: row b*K + k of every
// tensor is beam k of example b. A beam that emitted </s> is finished: it keeps its
// score and takes one slot. The best-scoring beam (sum of log-probabilities) wins.
std::vector<std::string> beam_decode(const Seq2Seq& model, const Batch& b, std::int64_t K) {
  NoGradGuard no_grad;
  const std::int64_t B = b.src.size(0), V = kTgtVocab;
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  std::vector<std::int64_t> rows(B * K);
  for (std::int64_t i = 0; i < B * K; ++i) rows[i] = i / K;
  Seq2Seq::Memory m = model.encode(b).take(from_vector(rows));  // every tensor [B*K, ...]
  std::vector<double> score(B * K, kNone);
  for (std::int64_t i = 0; i < B; ++i) score[i * K] = 0.0;  // one live beam per example at first
  std::vector<std::vector<std::int64_t>> seq(B * K);
  std::vector<std::int64_t> prev(B * K, kBos);
  struct Candidate {
    double score;
    std::int64_t parent, token;
  };
  for (std::int64_t t = 0; t < kTgtLen; ++t) {
    const auto s = model.step(from_vector(prev), m);
    const auto logp = log_softmax(s.logits, 1).to_vector<double>();  // [B*K, V]
    std::vector<std::int64_t> parent(B * K);
    std::vector<double> new_score(B * K, kNone);
    std::vector<std::vector<std::int64_t>> new_seq(B * K);
    bool all_done = true;
    for (std::int64_t i = 0; i < B; ++i) {
      std::vector<Candidate> cands;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t r = i * K + k;
        if (score[r] == kNone) continue;
        if (!seq[r].empty() && seq[r].back() == kEos) {
          cands.push_back({score[r], r, kEos});
          continue;
        }
        for (std::int64_t v = kEos; v < V; ++v) cands.push_back({score[r] + logp[r * V + v], r, v});
      }
      const auto n = std::min<std::size_t>(static_cast<std::size_t>(K), cands.size());
      std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(n), cands.end(),
                        [](const Candidate& a, const Candidate& c) { return a.score > c.score; });
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t r = i * K + k;
        if (k >= static_cast<std::int64_t>(n)) {
          parent[r] = i * K;
          continue;
        }
        const auto& c = cands[k];
        parent[r] = c.parent;
        new_score[r] = c.score;
        new_seq[r] = seq[c.parent];
        if (new_seq[r].empty() || new_seq[r].back() != kEos) new_seq[r].push_back(c.token);
        all_done = all_done && c.token == kEos;
        prev[r] = c.token;
      }
    }
    score = std::move(new_score);
    seq = std::move(new_seq);
    const Tensor order = from_vector(parent);
    m.state = {index_select(m.state.h, 0, order), index_select(m.state.c, 0, order)};
    if (all_done) break;
  }
  std::vector<std::string> result;
  for (std::int64_t i = 0; i < B; ++i) {
    std::int64_t best = i * K;
    for (std::int64_t k = 1; k < K; ++k)
      if (score[i * K + k] > score[best]) best = i * K + k;
    result.push_back(ids_to_string(seq[best]));
  }
  return result;
}

// Exact-match accuracy of a decoder over the test set, in batches.
template <class Decode>
double accuracy(const std::vector<dates::Example>& test, std::int64_t batch, bool fixed_width, Decode&& decode,
                std::vector<std::string>* predictions = nullptr) {
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < test.size(); i += static_cast<std::size_t>(batch)) {
    const auto end = std::min(test.size(), i + static_cast<std::size_t>(batch));
    const Batch b = make_batch({test.begin() + static_cast<std::ptrdiff_t>(i), test.begin() + static_cast<std::ptrdiff_t>(end)},
                               fixed_width);
    const auto got = decode(b);
    for (std::size_t j = 0; j < got.size(); ++j) {
      correct += got[j] == b.examples[j].target;
      if (predictions) predictions->push_back(got[j]);
    }
  }
  return static_cast<double>(correct) / static_cast<double>(test.size());
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  Config cfg;
  int steps = 2000, threads = 1, test_size = 2000, num_maps = 4;
  std::int64_t batch = 64, beam = 4;
  double lr = 3e-3;
  std::uint64_t seed = 1;
  std::string out_dir = "out/seq2seq";
  bool check = false, fixed_width = false;
  double min_accuracy = 0.5;
  CLI::App app{"seq2seq with attention: human-written dates -> ISO 8601"};
  app.add_option("--steps", steps, "training steps (batches)")->capture_default_str()->check(cli::count());
  app.add_option("--batch", batch, "batch size")->capture_default_str()->check(cli::count(100000));
  app.add_option("--lr", lr, "Adam learning rate")->capture_default_str()->check(cli::positive());
  app.add_option("--embed", cfg.embed, "character embedding size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--enc-hidden", cfg.enc_hidden, "encoder LSTM size per direction")
      ->capture_default_str()
      ->check(cli::count(cli::kMaxWidth));
  app.add_option("--dec-hidden", cfg.dec_hidden, "decoder LSTM size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--attn-hidden", cfg.attn_hidden, "additive attention width")
      ->capture_default_str()
      ->check(cli::count(cli::kMaxWidth));
  app.add_option("--beam", beam, "beam width for beam-search decoding")->capture_default_str()->check(cli::count(64));
  // At least 3: the first three held-out dates are printed as examples.
  app.add_option("--test-size", test_size, "held-out examples")->capture_default_str()->check(cli::integer(3, 1000000));
  app.add_option("--maps", num_maps, "attention heatmaps to write (up to 8)")->capture_default_str()->check(cli::integer(0, 8));
  app.add_option("--seed", seed, "random seed")->capture_default_str()->check(cli::seed());
  app.add_option("--threads", threads, "BLAS threads")->capture_default_str()->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", out_dir, "output directory")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--fixed-width", fixed_width,
               "pad every source to the longest date and run the encoder over the padding (no lengths)");
  app.add_flag("--check", check, "exit 1 unless the model clearly learned (smoke test)");
  app.add_option("--min-accuracy", min_accuracy, "--check's exact-match threshold, greedy and beam")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  return cli::run(app, "seq2seq", argc, argv, [&] {
    set_num_threads(threads);
    manual_seed(seed);
    std::filesystem::create_directories(out_dir);

    Generator data_gen(seed), test_gen(seed + 1000);
    std::vector<dates::Example> test;
    for (int i = 0; i < test_size; ++i) test.push_back(dates::sample(test_gen, true));
    std::printf("examples: \"%s\" -> %s, \"%s\" -> %s, \"%s\" -> %s\n", test[0].source.c_str(), test[0].target.c_str(),
                test[1].source.c_str(), test[1].target.c_str(), test[2].source.c_str(), test[2].target.c_str());

    Seq2Seq model(cfg);
    optim::Adam opt(model.parameters(), {.lr = lr});
    optim::CosineAnnealingLR sched(opt, steps, lr * 0.05);
    std::printf("%lld parameters; %d steps of %lld examples; %s\n", static_cast<long long>(model.num_parameters()), steps,
                static_cast<long long>(batch),
                fixed_width ? "fixed width (padded to the longest date, no lengths)" : "real lengths");

    const auto t0 = std::chrono::steady_clock::now();
    std::vector<double> xs, losses;
    double avg = std::log(static_cast<double>(kTgtVocab));
    for (int s = 1; s <= steps; ++s) {
      std::vector<dates::Example> examples;
      for (std::int64_t i = 0; i < batch; ++i) examples.push_back(dates::sample(data_gen, false));
      const Tensor loss = model.loss(make_batch(std::move(examples), fixed_width));
      opt.zero_grad();
      loss.backward();
      optim::clip_grad_norm(model, 5.0);
      opt.step();
      sched.step();
      avg = 0.95 * avg + 0.05 * loss.item();
      xs.push_back(s);
      losses.push_back(loss.item());
      if (s % 250 == 0 || s == steps) std::printf("step %5d  loss %.4f  (%.0f s)\n", s, avg, seconds_since(t0));
      std::fflush(stdout);
    }
    const double train_seconds = seconds_since(t0);

    model.eval();
    auto t1 = std::chrono::steady_clock::now();
    std::vector<std::string> greedy_pred;
    const double greedy_acc =
        accuracy(test, 500, fixed_width, [&](const Batch& b) { return greedy_decode(model, b); }, &greedy_pred);
    const double greedy_seconds = seconds_since(t1);
    t1 = std::chrono::steady_clock::now();
    const double beam_acc = accuracy(test, 250, fixed_width, [&](const Batch& b) { return beam_decode(model, b, beam); });
    const double beam_seconds = seconds_since(t1);
    // The data is generated on the fly, so there is no natural epoch: one is 10,000 examples.
    const double epoch_seconds = train_seconds / (static_cast<double>(steps) * static_cast<double>(batch)) * 10000.0;
    std::printf("training: %.1f s; %.2f s per epoch of 10000 examples; final loss %.4f (uniform predictor: ln %lld = %.3f)\n",
                train_seconds, epoch_seconds, avg, static_cast<long long>(kTgtVocab), std::log(static_cast<double>(kTgtVocab)));
    std::printf("held-out exact match (%d dates never seen in training):\n", test_size);
    std::printf("  greedy:      %.2f%%  (%.1f s)\n", 100 * greedy_acc, greedy_seconds);
    std::printf("  beam (K=%lld): %.2f%%  (%.1f s)\n", static_cast<long long>(beam), 100 * beam_acc, beam_seconds);
    int misses_shown = 0;
    for (std::size_t i = 0; i < test.size() && misses_shown < 5; ++i) {
      if (greedy_pred[i] == test[i].target) continue;
      std::printf("  miss: \"%s\" -> %s (want %s)\n", test[i].source.c_str(), greedy_pred[i].c_str(),
                  test[i].target.c_str());
      ++misses_shown;
    }

    // Loss curve and attention maps.
    training::LinePlot plot{"seq2seq training loss", "step", "cross-entropy per character", true};
    plot.add_series("train", xs, losses);
    plot.write_svg(out_dir + "/loss.svg");
    std::printf("wrote %s/loss.svg\n", out_dir.c_str());
    // Held-out dates in (up to) eight different formats, short and long.
    std::vector<dates::Example> shown_examples;
    Generator map_gen(seed + 7);
    for (int f : {0, 1, 9, 17, 2, 11, 5, 13}) {
      if (static_cast<int>(shown_examples.size()) >= num_maps) break;
      std::int64_t day;
      do day = map_gen.randint(dates::kFirstDay, dates::kLastDay + 1);
      while (!dates::held_out(day));
      const dates::Date d = dates::from_days(day);
      shown_examples.push_back({dates::human(d, f), dates::iso(d)});
    }
    for (std::size_t i = 0; i < shown_examples.size(); ++i) {
      const Batch b = make_batch({shown_examples[i]}, fixed_width);
      std::vector<std::vector<std::vector<double>>> w;
      const std::string got = greedy_decode(model, b, &w)[0];
      training::Heatmap map{"\"" + shown_examples[i].source + "\" -> " + got, "source character", "output character"};
      for (char c : shown_examples[i].source) map.col_labels.emplace_back(1, c);
      const std::size_t rows = std::min<std::size_t>(got.size() + 1, w[0].size());  // the characters and </s>
      for (std::size_t t = 0; t < rows; ++t) {
        map.row_labels.push_back(t < got.size() ? std::string(1, got[t]) : "</s>");
        // Only the real characters: --fixed-width pads even a batch of one.
        const auto n = static_cast<std::ptrdiff_t>(shown_examples[i].source.size());
        map.values.insert(map.values.end(), w[0][t].begin(), w[0][t].begin() + n);
      }
      map.vmin = 0.0;
      map.vmax = 1.0;
      map.scale_label = "attention";
      const std::string path = out_dir + "/attention_" + std::to_string(i) + ".svg";
      map.write_svg(path);
      std::printf("wrote %s  (\"%s\" -> %s)\n", path.c_str(), shown_examples[i].source.c_str(), got.c_str());
    }

    if (check) {
      // Untrained: per-character loss ln(14) = 2.64 and no exact matches (a guess of the
      // right date is 1 in 36525). A model that learned the task gets most dates right.
      const bool ok = avg < 0.5 && greedy_acc >= min_accuracy && beam_acc >= min_accuracy;
      std::printf("check: loss %.3f < 0.5 and exact match greedy %.1f%% / beam %.1f%% >= %.1f%%: %s\n", avg,
                  100 * greedy_acc, 100 * beam_acc, 100 * min_accuracy, ok ? "ok" : "FAILED");
      return ok ? 0 : 1;
    }
    return 0;
  });
}
