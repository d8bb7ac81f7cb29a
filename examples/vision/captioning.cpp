// captioning: describe synthetic scenes in words — a CNN encoder and an LSTM decoder, the
// lecture's two image-captioning models side by side.
//
//   --mode pooled     the first model: the CNN's features, averaged over the image, become
//                     the LSTM's initial state; after that the decoder never sees the image
//                     again (Karpathy & Fei-Fei / Vinyals et al., "Show and Tell").
//   --mode attention  (default) the decoder looks again at every word ("Show, Attend and
//                     Tell", Xu et al. 2015): its state queries the 4x4 grid with additive
//                     attention, and the word classifier reads [state; attended context].
//   --mode both       trains both and prints them side by side.
//
// The attention model is wired so that the attention has to sit on the object each colour
// and shape word names — the only way the image can reach a word is through where that
// word's step looks:
//   - where to look (the keys) is the CNN grid, whose features see their neighbours and know
//     their position, so a query can find "the next object in reading order" or "the red one"
//     (plus the values below: a content handle that trains from the first step; with the
//     grid alone the attention could stay uniform for a whole run, the grid never learning);
//   - what is seen (the values) comes from a patch encoder that sees only its own 8x8 cell,
//     plus the cell's row and column: a context holds the attended cell and nothing around it;
//   - the decoder state never holds image content: it starts from zero, not from pooled
//     features, and each step is fed the previous word and WHERE the previous step looked
//     (its attention weights), not what it saw there.
// So after "a red" the state knows which cell it looked at but not what is in it, and must
// look at that cell again to say "circle". The lecture's wiring (initial state from the
// pooled features, the context fed into the next step, values = the grid) captions as well,
// but after a colour word its state already knows the object, so the shape words' attention
// drifted anywhere: 0.05 on the object (uniform 0.06) against 0.69 at colour words. With a
// blind state but grid values, both moved to the object, yet an object at the edge was
// often read from its neighbour cell, whose receptive field covers it.
//
// The scenes (scenes.hpp) are 32x32 images with one to three coloured shapes on a 4x4
// grid, and their captions come from a small grammar over the objects in reading order:
//   "a red circle", "a red circle above a blue square",
//   "a green triangle left of a yellow circle above a red square"
// (between consecutive objects: "above" when the next one is in a lower row, otherwise
// "left of"). Training uses teacher forcing on freshly generated scenes; evaluation
// decodes greedily on held-out scenes and reports caption exact-match and token accuracy.
// For the attention model it also measures where the attention goes: the mean attention
// mass on the grid cell of the object a colour or shape word names (1/16 = 0.06 if it
// looked everywhere), and writes figures: the image, then one panel per generated word
// with that word's attention map (bright = attended).
//
//   ./captioning                      # attention model, ~2 minutes on one core
//   ./captioning --mode both
//   ./captioning --steps 1000 --check # the smoke test: fails unless it learned
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <xgrad/xgrad.hpp>

#include "../common/cli.hpp"
#include "scenes.hpp"

using namespace xg;
namespace cli = examples::cli;
using vision::kCells;
using vision::Scene;

// ---- the caption language ---------------------------------------------------------------

// Token ids: specials, grammar words, then the colours and the shapes in scenes.hpp order.
constexpr std::int64_t kPad = 0, kBos = 1, kEos = 2, kA = 3, kAbove = 4, kLeft = 5, kOf = 6;
constexpr std::int64_t kFirstColour = 7, kFirstShape = kFirstColour + vision::kColours;
constexpr std::int64_t kVocab = kFirstShape + vision::kShapes;  // 14

std::string token_text(std::int64_t t) {
  static const char* special[] = {"<pad>", "<bos>", "<eos>", "a", "above", "left", "of"};
  if (t < kFirstColour) return special[t];
  if (t < kFirstShape) return vision::colour_names[t - kFirstColour];
  return vision::shape_names[t - kFirstShape];
}
bool is_colour(std::int64_t t) { return t >= kFirstColour && t < kFirstShape; }
bool is_shape(std::int64_t t) { return t >= kFirstShape && t < kVocab; }

struct Caption {
  std::vector<std::int64_t> tokens;  // words then <eos>
  std::vector<int> names;            // per token: the object a colour / shape word names, else -1
};

Caption describe(const Scene& scene) {
  Caption c;
  auto push = [&](std::int64_t t, int object) {
    c.tokens.push_back(t);
    c.names.push_back(object);
  };
  for (std::size_t i = 0; i < scene.objects.size(); ++i) {
    const vision::Object& o = scene.objects[i];
    if (i > 0) {  // objects are in reading order: the previous one is higher, or left in the same row
      if (scene.objects[i - 1].row < o.row) {
        push(kAbove, -1);
      } else {
        push(kLeft, -1);
        push(kOf, -1);
      }
    }
    push(kA, -1);
    push(kFirstColour + o.colour, static_cast<int>(i));
    push(kFirstShape + o.shape, static_cast<int>(i));
  }
  push(kEos, -1);
  return c;
}

std::string words(const std::vector<std::int64_t>& tokens) {
  std::string s;
  for (std::int64_t t : tokens) {
    if (t == kEos) break;
    s += (s.empty() ? "" : " ") + token_text(t);
  }
  return s;
}

// A teacher-forcing batch: at step t the decoder reads inputs[t] and must predict
// targets[:, t]; captions shorter than T are padded, and the loss counts only each
// caption's own lengths[b] tokens.
struct Batch {
  std::vector<Scene> scenes;
  std::vector<Caption> captions;
  Tensor images;                // [B, 3, 32, 32]
  std::vector<Tensor> inputs;   // T x [B] int64: <bos>, then the caption shifted right
  Tensor targets;               // [B, T] int64, kPad past each caption's end
  Tensor lengths;               // [B] int64: caption b's tokens, <eos> included
};

Batch make_batch(std::vector<Scene> scenes) {
  Batch b;
  b.scenes = std::move(scenes);
  const std::size_t B = b.scenes.size();
  std::size_t T = 0;
  for (const Scene& s : b.scenes) {
    b.captions.push_back(describe(s));
    T = std::max(T, b.captions.back().tokens.size());
  }
  std::vector<std::int64_t> targets(T * B, kPad), lengths(B);
  for (std::size_t i = 0; i < B; ++i) lengths[i] = static_cast<std::int64_t>(b.captions[i].tokens.size());
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<std::int64_t> in(B, kPad);
    for (std::size_t i = 0; i < B; ++i) {
      const auto& tok = b.captions[i].tokens;
      if (t < tok.size()) {
        in[i] = t == 0 ? kBos : tok[t - 1];
        targets[i * T + t] = tok[t];
      }
    }
    b.inputs.push_back(from_vector(in));
  }
  b.images = vision::image_batch(b.scenes);
  b.targets = from_vector(targets, {static_cast<std::int64_t>(B), static_cast<std::int64_t>(T)});
  b.lengths = from_vector(lengths);
  return b;
}

std::vector<Scene> make_scenes(Generator& gen, int n) {
  std::vector<Scene> scenes;
  for (int i = 0; i < n; ++i) scenes.push_back(vision::make_scene(gen));
  return scenes;
}

// ---- the model ---------------------------------------------------------------------------

enum class Mode { pooled, attention };

struct Captioner : nn::Module {
  Mode mode;
  std::shared_ptr<vision::SceneEncoder> encoder;  // the grid: pooled mode's summary, attention's keys
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::Linear> init_h, init_c;     // pooled mode: pooled features -> initial state
  std::shared_ptr<nn::Conv2d> patch1, patch2;     // attention mode: what each cell alone shows
  std::shared_ptr<nn::LSTMCell> cell;
  std::shared_ptr<nn::AdditiveAttention> attention;  // attention mode only
  std::shared_ptr<nn::Linear> hidden_out, out;       // the word classifier
  Tensor cell_xy;                                    // [1, 16, 2]: row, column of each cell in [-1, 1]
  std::int64_t hidden_size;

  Captioner(Mode m, std::int64_t channels, std::int64_t embed_size, std::int64_t hidden, std::int64_t attn)
      : mode(m), hidden_size(hidden) {
    encoder = register_module("encoder", std::make_shared<vision::SceneEncoder>(channels));
    embed = register_module("embed", std::make_shared<nn::Embedding>(kVocab, embed_size));
    if (mode == Mode::pooled) {
      init_h = register_module("init_h", std::make_shared<nn::Linear>(channels, hidden));
      init_c = register_module("init_c", std::make_shared<nn::Linear>(channels, hidden));
      cell = register_module("cell", std::make_shared<nn::LSTMCell>(embed_size, hidden));
      hidden_out = register_module("hidden_out", std::make_shared<nn::Linear>(hidden, hidden));
    } else {
      // Stride = kernel, 4 then 2: each output sees exactly its own 8x8 cell, nothing around it.
      patch1 = register_module("patch1", std::make_shared<nn::Conv2d>(3, 16, 4, 4));
      patch2 = register_module("patch2", std::make_shared<nn::Conv2d>(16, channels, 2, 2));
      std::vector<float> xy;
      for (int l = 0; l < kCells; ++l) {
        xy.push_back((l / vision::kGrid + 0.5f) / vision::kGrid * 2 - 1);
        xy.push_back((l % vision::kGrid + 0.5f) / vision::kGrid * 2 - 1);
      }
      cell_xy = from_vector(xy, {1, kCells, 2});
      // The step input is [word; where the previous step looked]: never what it saw there.
      cell = register_module("cell", std::make_shared<nn::LSTMCell>(embed_size + kCells, hidden));
      attention = register_module("attention", std::make_shared<nn::AdditiveAttention>(hidden, 2 * channels + 2, attn));
      hidden_out = register_module("hidden_out", std::make_shared<nn::Linear>(hidden + channels + 2, hidden));
    }
    out = register_module("out", std::make_shared<nn::Linear>(hidden, kVocab));
  }

  // What the decoder carries from word to word.
  struct Decoder {
    nn::LSTMState state;               // {h, c} [B, H]
    Tensor weights;                    // [B, 16], where the last step looked (attention mode)
    nn::AdditiveAttention::Keys keys;  // [grid; values] and their projection, once per image
    Tensor values;                     // [B, 16, C + 2]: each cell's own content and position
  };

  Decoder start(const Tensor& images) const {
    const Tensor grid = encoder->forward(images);  // [B, 16, C]
    Decoder d;
    if (!attention) {
      const Tensor pooled = mean(grid, {1});  // [B, C]
      d.state = {tanh(init_h->forward(pooled)), init_c->forward(pooled)};
      return d;
    }
    // The attention decoder starts blind: a zero state, and no previous look.
    const std::int64_t B = images.size(0);
    d.state = {zeros({B, hidden_size}), zeros({B, hidden_size})};
    d.weights = zeros({B, kCells});
    const Tensor patches = relu(patch2->forward(relu(patch1->forward(images))));  // [B, C, 4, 4]
    const std::int64_t C = patches.size(1);
    d.values = concat({transpose(reshape(patches, {B, C, kCells}), 1, 2),  // [B, 16, C]
                       broadcast_to(cell_xy, {B, kCells, 2})},
                      2);  // [B, 16, C + 2]
    d.keys = attention->precompute_keys(concat({grid, d.values}, 2));  // [B, 16, 2C + 2]
    return d;
  }

  struct StepOutput {
    Tensor logits;   // [B, V], for the next word
    Tensor weights;  // [B, 16], attention mode only
  };
  // One word: reads `prev` [B] (int64 ids).
  StepOutput step(const Tensor& prev, Decoder& d) const {
    const Tensor e = embed->forward(prev);  // [B, E]
    if (!attention) {
      d.state = cell->forward(e, d.state);
      return {out->forward(tanh(hidden_out->forward(d.state.h))), Tensor()};
    }
    d.state = cell->forward(concat({e, d.weights}, 1), d.state);  // [B, H]
    // context [B, C + 2]: only what the attended cells show, and where they are; weights [B, 16]
    const nn::AttentionOutput a = attention->forward(d.state.h, d.keys, d.values);
    d.weights = a.weights;
    const Tensor logits = out->forward(tanh(hidden_out->forward(concat({d.state.h, a.context}, 1))));
    return {logits, a.weights};
  }

  // Teacher forcing: logits [B, T, V] and the weights of every step.
  std::pair<Tensor, std::vector<Tensor>> forward(const Batch& batch) const {
    Decoder d = start(batch.images);
    std::vector<Tensor> logits, weights;
    for (const Tensor& in : batch.inputs) {
      StepOutput o = step(in, d);
      logits.push_back(o.logits);
      weights.push_back(o.weights);
    }
    return {stack(logits, 1), weights};
  }

  // Greedy decoding: tokens[b] (up to and including <eos>) and weights[b][t] (16 values).
  struct Decoded {
    std::vector<std::vector<std::int64_t>> tokens;
    std::vector<std::vector<std::vector<float>>> weights;
  };
  Decoded greedy(const Tensor& images, int max_len = 16) const {
    NoGradGuard no_grad;
    const std::int64_t B = images.size(0);
    Decoder d = start(images);
    Decoded r;
    r.tokens.resize(B);
    r.weights.resize(B);
    std::vector<std::int64_t> prev(B, kBos);
    std::vector<bool> done(B, false);
    for (int t = 0; t < max_len; ++t) {
      StepOutput o = step(from_vector(prev), d);
      const std::vector<std::int64_t> next = argmax(o.logits, 1).to_vector<std::int64_t>();
      const std::vector<float> w = o.weights.defined() ? o.weights.to_vector<float>() : std::vector<float>();
      bool all_done = true;
      for (std::int64_t b = 0; b < B; ++b) {
        if (done[b]) continue;
        r.tokens[b].push_back(next[b]);
        if (!w.empty()) r.weights[b].emplace_back(w.begin() + b * kCells, w.begin() + (b + 1) * kCells);
        done[b] = next[b] == kEos;
        all_done = all_done && done[b];
      }
      if (all_done) break;
      prev = next;
    }
    return r;
  }
};

// ---- evaluation ----------------------------------------------------------------------------

struct Evaluation {
  double loss = 0;        // teacher-forced cross-entropy per token
  double exact = 0;       // greedy caption == reference
  double token_acc = 0;   // reference tokens (incl. <eos>) the greedy caption has at the same position
  double colour_mass = 0; // attention mass on the named object's cell, at colour / shape words
  double shape_mass = 0;
};

// Cross-entropy per caption token (<eos> included), the padding after each caption not
// counted: logits [B, T, V].
Tensor caption_loss(const Tensor& logits, const Batch& b) {
  return nn::temporal_cross_entropy(logits, b.targets, nn::Lengths(b.lengths));
}

Evaluation evaluate(const Captioner& model, const std::vector<Batch>& test) {
  NoGradGuard no_grad;
  Evaluation e;
  double tokens = 0, hits = 0, captions = 0, exact = 0, loss = 0;
  double colour_n = 0, colour_m = 0, shape_n = 0, shape_m = 0;
  for (const Batch& b : test) {
    auto [logits, weights] = model.forward(b);
    double n_tok = 0;
    for (const Caption& c : b.captions) n_tok += static_cast<double>(c.tokens.size());
    loss += caption_loss(logits, b).item() * n_tok;
    const std::size_t B = b.scenes.size();
    if (model.attention) {  // teacher-forced weights: step t predicts word t
      for (std::size_t t = 0; t < weights.size(); ++t) {
        const std::vector<float> w = weights[t].to_vector<float>();
        for (std::size_t i = 0; i < B; ++i) {
          const Caption& c = b.captions[i];
          if (t >= c.tokens.size() || c.names[t] < 0) continue;
          const double m = w[i * kCells + b.scenes[i].objects[c.names[t]].cell()];
          if (is_colour(c.tokens[t])) colour_m += m, ++colour_n;
          if (is_shape(c.tokens[t])) shape_m += m, ++shape_n;
        }
      }
    }
    const Captioner::Decoded g = model.greedy(b.images);
    for (std::size_t i = 0; i < B; ++i) {
      const auto& ref = b.captions[i].tokens;
      const auto& hyp = g.tokens[i];
      for (std::size_t t = 0; t < ref.size(); ++t) hits += t < hyp.size() && hyp[t] == ref[t];
      tokens += static_cast<double>(ref.size());
      exact += hyp == ref;
      ++captions;
    }
  }
  e.loss = loss / tokens;

  e.exact = exact / captions;
  e.token_acc = hits / tokens;
  e.colour_mass = colour_n > 0 ? colour_m / colour_n : NAN;
  e.shape_mass = shape_n > 0 ? shape_m / shape_n : NAN;
  return e;
}

// Figures for the first `count` test scenes: image, then one panel per generated word.
void write_figures(const Captioner& model, const Batch& batch, int count, const std::string& dir) {
  const Captioner::Decoded g = model.greedy(batch.images);
  for (int i = 0; i < count && i < static_cast<int>(batch.scenes.size()); ++i) {
    const Caption& ref = batch.captions[i];
    const auto& hyp = g.tokens[i];
    std::vector<vision::Panel> panels{{"image", {}, ""}};
    for (std::size_t t = 0; t < hyp.size(); ++t) {
      vision::Panel p{token_text(hyp[t]), g.weights[i][t], ""};
      // Where the generated caption still agrees with the reference, a colour / shape word
      // names a known object: show how much attention is on its cell.
      const bool agrees = t < ref.tokens.size() && std::equal(hyp.begin(), hyp.begin() + t + 1, ref.tokens.begin());
      if (agrees && ref.names[t] >= 0) {
        const vision::Object& o = batch.scenes[i].objects[ref.names[t]];
        p.subtitle = fmt::format("on the {} {}: {:.2f}", vision::colour_names[o.colour], vision::shape_names[o.shape],
                                 g.weights[i][t][o.cell()]);
      } else {
        p.subtitle = fmt::format("peak {:.2f}", *std::max_element(p.weights.begin(), p.weights.end()));
      }
      panels.push_back(std::move(p));
    }
    const std::string path = fmt::format("{}/attention_{}.svg", dir, i);
    vision::write_attention_svg(path, fmt::format("generated: \"{}\"   truth: \"{}\"", words(hyp), words(ref.tokens)),
                                batch.scenes[i], panels);
    fmt::print("wrote {}\n", path);
  }
}

// ---- main ----------------------------------------------------------------------------------

struct Config {
  std::string mode = "attention";
  int steps = 6000, batch = 32, test = 1000, figures = 4;
  std::int64_t channels = 32, embed = 16, hidden = 64, attn = 32;
  double lr = 3e-3, clip = 5.0;
  std::uint64_t seed = 1;
  int threads = 1;
  std::string out = "out/captioning";
  bool check = false;
};

struct Result {
  Evaluation eval;
  double seconds = 0, first_loss = 0, last_loss = 0;
};

Result train_and_evaluate(Mode mode, const Config& cfg, const std::vector<Batch>& test) {
  const char* name = mode == Mode::attention ? "attention" : "pooled";
  manual_seed(cfg.seed);  // the same initial CNN draws for both modes
  Captioner model(mode, cfg.channels, cfg.embed, cfg.hidden, cfg.attn);
  optim::Adam opt(model.parameters(), {.lr = cfg.lr});
  optim::CosineAnnealingLR schedule(opt, cfg.steps, cfg.lr * 0.05);
  Generator scenes(cfg.seed * 7919 + 17);  // training scenes, a stream disjoint from the test seed

  fmt::print("{}: {} parameters\n", name, model.num_parameters());
  const auto t0 = std::chrono::steady_clock::now();
  training::ProgressOptions bar_opts;
  bar_opts.label = name;
  training::ProgressBar bar(cfg.steps, bar_opts);
  std::vector<double> xs, ys;
  Result r;
  for (int step = 1; step <= cfg.steps; ++step) {
    const Batch b = make_batch(make_scenes(scenes, cfg.batch));
    const Tensor loss = caption_loss(model.forward(b).first, b);
    opt.zero_grad();
    loss.backward();
    optim::clip_grad_norm(model, cfg.clip);
    opt.step();
    schedule.step();
    const double l = loss.item();
    if (step == 1) r.first_loss = l;
    bar.update(step, l);
    xs.push_back(step);
    ys.push_back(l);
  }
  bar.finish();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.last_loss = bar.smoothed_loss();

  training::LinePlot plot{fmt::format("captioning ({}): training loss", name), "step", "cross-entropy per token", true};
  plot.add_series("train", xs, ys);
  const std::string plot_path = fmt::format("{}/loss_{}.svg", cfg.out, name);
  plot.write_svg(plot_path);
  fmt::print("wrote {}\n", plot_path);

  r.eval = evaluate(model, test);
  if (mode == Mode::attention && cfg.figures > 0) write_figures(model, test.front(), cfg.figures, cfg.out);
  return r;
}

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"captioning: CNN encoder + LSTM decoder on synthetic scenes, with and without spatial attention"};
  app.add_option("--mode", cfg.mode, "pooled | attention | both")
      ->check(CLI::IsMember({"pooled", "attention", "both"}))
      ->capture_default_str();
  app.add_option("--steps", cfg.steps, "training steps (one fresh batch each)")->capture_default_str()->check(cli::count());
  app.add_option("--batch", cfg.batch, "scenes per batch")->capture_default_str()->check(cli::count(100000));
  // Held in memory all at once (12 KB a scene): the bound keeps that under a gigabyte.
  app.add_option("--test", cfg.test, "held-out scenes")->capture_default_str()->check(cli::count(50000));
  app.add_option("--channels", cfg.channels, "CNN feature channels C")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--embed", cfg.embed, "word embedding size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--hidden", cfg.hidden, "LSTM hidden size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--attn", cfg.attn, "additive attention width")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--lr", cfg.lr, "Adam learning rate (cosine-annealed to 5%)")->capture_default_str()->check(cli::positive());
  app.add_option("--clip", cfg.clip, "gradient norm clip")->capture_default_str()->check(cli::positive());
  // Drawn from the first batch of 250 held-out scenes.
  app.add_option("--figures", cfg.figures, "attention figures to write")->capture_default_str()->check(cli::integer(0, 250));
  app.add_option("--seed", cfg.seed, "random seed")->capture_default_str()->check(cli::seed());
  app.add_option("--threads", cfg.threads, "BLAS threads")->capture_default_str()->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", cfg.out, "output directory")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--check", cfg.check, "exit 1 unless the model clearly learned (smoke test)");
  return cli::run(app, "captioning", argc, argv, [&] {
    set_num_threads(cfg.threads);
    std::filesystem::create_directories(cfg.out);

    // Held-out scenes from their own seed, in batches of 250.
    Generator test_gen(cfg.seed * 104729 + 3);
    std::vector<Batch> test;
    for (int left = cfg.test; left > 0; left -= 250) test.push_back(make_batch(make_scenes(test_gen, std::min(left, 250))));

    std::vector<Mode> modes;
    if (cfg.mode != "attention") modes.push_back(Mode::pooled);
    if (cfg.mode != "pooled") modes.push_back(Mode::attention);

    bool ok = true;
    fmt::print("untrained: cross-entropy log({}) = {:.2f} per token\n", kVocab, std::log(static_cast<double>(kVocab)));
    std::vector<std::pair<Mode, Result>> results;
    for (Mode m : modes) results.emplace_back(m, train_and_evaluate(m, cfg, test));

    fmt::print("\nheld-out ({} scenes)    time    loss  exact-match  token-acc  attn on object (colour / shape words; uniform 0.06)\n",
               cfg.test);
    for (const auto& [m, r] : results) {
      const Evaluation& e = r.eval;
      fmt::print("{:<22} {:6.1f}s  {:5.3f}  {:10.1f}%  {:8.1f}%  ", m == Mode::attention ? "attention" : "pooled", r.seconds,
                 e.loss, 100 * e.exact, 100 * e.token_acc);
      if (m == Mode::attention) {
        fmt::print("{:.2f} / {:.2f}\n", e.colour_mass, e.shape_mass);
      } else {
        fmt::print("-\n");
      }
      if (cfg.check) {
        // Untrained: loss log(14) = 2.64, token accuracy ~ 1/14. A decoder blind to the image
        // still learns the grammar ("a" after each relation, <eos> placement) but pays
        // log 4 + log 3 nats on every colour + shape pair: about 0.6 per token on average.
        // Attention: 1/16 = 0.06 on the named object for a uniform look; the smoke test's 1000
        // steps put 0.78-0.90 on it at both colour and shape words (seeds 1-5).
        const bool learned = e.loss < 0.55 && e.token_acc > 0.5;
        const bool looks = m != Mode::attention || (e.colour_mass > 0.3 && e.shape_mass > 0.3);
        if (!learned) fmt::print(stderr, "check failed: loss {:.3f} (want < 0.55), token accuracy {:.3f} (want > 0.5)\n", e.loss, e.token_acc);
        if (!looks) {
          fmt::print(stderr, "check failed: attention on the object a colour / shape word names {:.2f} / {:.2f} (want > 0.3 each)\n",
                     e.colour_mass, e.shape_mass);
        }
        ok = ok && learned && looks;
      }
    }
    if (cfg.check) fmt::print("{}\n", ok ? "check passed" : "check FAILED");
    return ok ? 0 : 1;
  });
}
