// vqa: visual question answering on synthetic scenes — an LSTM reads the question, the
// question's encoding conditions attention over a grid of per-cell CNN features (two
// glimpses), and a classifier answers from the question and what the glimpses found.
//
// The scenes are the captioning example's (scenes.hpp: 32x32 images, one to three
// coloured shapes on a 4x4 grid). Five kinds of question, each asked only when its answer
// is well defined (e.g. "the triangle" only when there is exactly one):
//   colour    "what colour is the triangle ?"          -> red | green | blue | yellow
//   shape     "what shape is the green object ?"       -> circle | square | triangle
//   exists    "is there a red square ?"                -> yes | no   (half of each)
//   count     "how many circles are there ?"           -> 0 | 1 | 2 | 3
//   relation  "what is left of the green object ?"    -> the shape of the one object there
//             (left of / right of: any column to that side; above / below: any row)
//
// The model: a stacked attention network (Yang et al. 2016) whose attention scores are
// conditioned on the question by FiLM, over per-cell CNN features. Why each part is there
// (held-out accuracy after the default 6000 steps, measured on variants of this model while
// writing it):
//   - Per-cell features. A small CNN encodes each 8x8 cell on its own (CellEncoder below),
//     then LayerNorm, then the cell's (row, column) as two more channels. A feature then
//     says "a green triangle is HERE", nothing about its neighbours, at a fixed scale. The
//     shared SceneEncoder's features also see the neighbouring cells and come out tiny at
//     init (mean ~0.02), so the answer prior is all the classifier learns for a long time:
//     77% with it instead (vs 97-98%).
//   - Adam at lr 1e-3, cosine-annealed: at 3e-3 it sat on the answer prior (47% after
//     3000 steps, vs 92% at 1e-3).
//   - Two hops (--hops). Hop k scores every cell l with the query u_k (u_1 = the question
//     encoding), and u_{k+1} = u_k + W_k · context_k. A relation needs two looks — find the
//     green object, then look left of where it was (its context carries its position) —
//     and the second look also helps the other types: 77% with one hop.
//   - Scores: s_l = v · tanh(W_key x_l ⊙ gamma(u_k) + beta(u_k)), a softmax over the 16
//     cells, context = the weighted sum of cell features. The product makes "cell is green
//     AND the question asks for green" one unit; beta, a term of the query alone, lets a
//     unit compare a cell's column with the anchor's. (With these features Bahdanau's
//     additive scorer tanh(W x_l + U u) learns it too: 97.2% vs 97.7%.)
//   - Counting needs no extra machinery: a per-cell sigmoid gate whose sum fed the
//     classifier did not change the result (97.6% without). A softmax can count here,
//     presumably because every empty cell gets the same score: the mass left on the empty
//     cells, and so the context, depends on how many cells match (the count figure's
//     hop 2 spreads over the empty cells).
//   - The classifier reads [question; every hop's context].
//
// Reported: held-out accuracy per question type, and where the attention went: the mean
// mass, per hop, on the cell of the object the question is about (the named object; for
// relation questions also the answer object; 1/16 = 0.06 for a uniform look). Figures:
// one per question type, the image and each hop's attention map, with the question and
// the predicted / true answer on top.
//
//   ./vqa                        # ~2 minutes on one core (97% held out)
//   ./vqa --steps 600 --check    # the smoke test: fails unless it learned
#include <algorithm>
#include <array>
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
using vision::Object;
using vision::Scene;

// ---- questions and answers -------------------------------------------------------------

// Question words: id = index. Colours and shapes (singular and plural) follow scenes.hpp order.
const std::vector<std::string> kWords = {
    "<pad>", "what", "colour", "is", "the", "shape", "object", "there", "a", "how", "many", "are",
    "left", "right", "of", "above", "below", "?",
    "red", "green", "blue", "yellow", "circle", "square", "triangle", "circles", "squares", "triangles"};
constexpr std::int64_t kColourWord = 18, kShapeWord = 22, kPluralWord = 25;

// Answers: the classifier's classes.
const std::vector<std::string> kAnswers = {"red", "green", "blue", "yellow", "circle", "square", "triangle",
                                           "yes", "no", "0", "1", "2", "3"};
constexpr std::int64_t kAnswerColour = 0, kAnswerShape = 4, kYes = 7, kNo = 8, kAnswerCount = 9;

enum QType { q_colour, q_shape, q_exists, q_count, q_relation };
constexpr int kTypes = 5;
const std::array<const char*, kTypes> kTypeNames = {"colour", "shape", "exists", "count", "relation"};

struct Question {
  Scene scene;
  int type = 0;
  std::vector<std::int64_t> words;  // ids into kWords, ending with "?"
  std::int64_t answer = 0;          // id into kAnswers
  std::vector<int> about;           // cells of the object(s) the question names (anchor)
  std::vector<int> answer_cells;    // relation: the answer object's cell
};

std::int64_t word(const std::string& w) {
  return std::find(kWords.begin(), kWords.end(), w) - kWords.begin();
}

std::string text(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (std::int64_t id : ids) s += (s.empty() || kWords[id] == "?" ? "" : " ") + kWords[id];
  return s;
}

int count_if(const Scene& s, auto pred) {
  return static_cast<int>(std::count_if(s.objects.begin(), s.objects.end(), pred));
}

// Relation r between two objects: 0 left of, 1 right of, 2 above, 3 below (o relative to anchor).
bool related(int r, const Object& o, const Object& anchor) {
  switch (r) {
    case 0: return o.col < anchor.col;
    case 1: return o.col > anchor.col;
    case 2: return o.row < anchor.row;
    default: return o.row > anchor.row;
  }
}

// Tries to ask a question of `type` about `scene`; false when this scene has no
// well-defined one (the caller draws another scene).
bool ask(Question& q, Generator& gen) {
  const Scene& s = q.scene;
  const int n = static_cast<int>(s.objects.size());
  auto pick = [&](int size) { return static_cast<int>(gen.randint(0, size)); };
  switch (q.type) {
    case q_colour: {  // a shape present exactly once
      const int shape = pick(vision::kShapes);
      if (count_if(s, [&](const Object& o) { return o.shape == shape; }) != 1) return false;
      const Object& o = *std::find_if(s.objects.begin(), s.objects.end(), [&](const Object& x) { return x.shape == shape; });
      q.words = {word("what"), word("colour"), word("is"), word("the"), kShapeWord + shape, word("?")};
      q.answer = kAnswerColour + o.colour;
      q.about = {o.cell()};
      return true;
    }
    case q_shape: {  // a colour present exactly once
      const int colour = pick(vision::kColours);
      if (count_if(s, [&](const Object& o) { return o.colour == colour; }) != 1) return false;
      const Object& o = *std::find_if(s.objects.begin(), s.objects.end(), [&](const Object& x) { return x.colour == colour; });
      q.words = {word("what"), word("shape"), word("is"), word("the"), kColourWord + colour, word("object"), word("?")};
      q.answer = kAnswerShape + o.shape;
      q.about = {o.cell()};
      return true;
    }
    case q_exists: {  // yes and no equally often
      int colour = 0, shape = 0;
      if (gen.uniform() < 0.5) {
        const Object& o = s.objects[pick(n)];
        colour = o.colour, shape = o.shape;
      } else {
        colour = pick(vision::kColours), shape = pick(vision::kShapes);
      }
      q.words = {word("is"), word("there"), word("a"), kColourWord + colour, kShapeWord + shape, word("?")};
      for (const Object& o : s.objects) {
        if (o.colour == colour && o.shape == shape) q.about.push_back(o.cell());
      }
      q.answer = q.about.empty() ? kNo : kYes;
      return true;
    }
    case q_count: {
      const int shape = pick(vision::kShapes);
      q.words = {word("how"), word("many"), kPluralWord + shape, word("are"), word("there"), word("?")};
      for (const Object& o : s.objects) {
        if (o.shape == shape) q.about.push_back(o.cell());
      }
      q.answer = kAnswerCount + static_cast<std::int64_t>(q.about.size());
      return true;
    }
    default: {  // relation: an anchor with a unique colour, exactly one object on the asked side
      if (n < 2) return false;
      const Object& anchor = s.objects[pick(n)];
      if (count_if(s, [&](const Object& o) { return o.colour == anchor.colour; }) != 1) return false;
      const int r = pick(4);
      if (count_if(s, [&](const Object& o) { return &o != &anchor && related(r, o, anchor); }) != 1) return false;
      const Object& o = *std::find_if(s.objects.begin(), s.objects.end(),
                                      [&](const Object& x) { return &x != &anchor && related(r, x, anchor); });
      static const char* rel[4][2] = {{"left", "of"}, {"right", "of"}, {"above", ""}, {"below", ""}};
      q.words = {word("what"), word("is"), word(rel[r][0])};
      if (*rel[r][1]) q.words.push_back(word(rel[r][1]));
      for (const char* w : {"the"}) q.words.push_back(word(w));
      q.words.push_back(kColourWord + anchor.colour);
      q.words.push_back(word("object"));
      q.words.push_back(word("?"));
      q.answer = kAnswerShape + o.shape;
      q.about = {anchor.cell()};
      q.answer_cells = {o.cell()};
      return true;
    }
  }
}

// A question of the given type (a fresh scene until one allows it).
Question make_question(Generator& gen, int type) {
  vision::SceneOptions opts;
  if (type == q_relation) opts.min_objects = 2;
  for (;;) {
    Question q;
    q.type = type;
    q.scene = vision::make_scene(gen, opts);
    if (ask(q, gen)) return q;
  }
}

// Question types cycle, so every batch holds all five equally.
std::vector<Question> make_questions(Generator& gen, int n) {
  std::vector<Question> qs;
  for (int i = 0; i < n; ++i) qs.push_back(make_question(gen, i % kTypes));
  return qs;
}

// A batch: padded question ids [T, B] (time-major, <pad> after the end), the index of
// each question's last word in the flattened [T * B] outputs, images, answers.
struct Batch {
  std::vector<Question> questions;
  Tensor words;    // [T, B] int64
  Tensor last;     // [B] int64: (length - 1) * B + b
  Tensor images;   // [B, 3, 32, 32]
  Tensor answers;  // [B] int64
};

Batch make_batch(std::vector<Question> qs) {
  Batch b;
  b.questions = std::move(qs);
  const std::size_t B = b.questions.size();
  std::size_t T = 0;
  for (const Question& q : b.questions) T = std::max(T, q.words.size());
  std::vector<std::int64_t> words(T * B, 0), last(B), answers(B);
  std::vector<Scene> scenes;
  for (std::size_t i = 0; i < B; ++i) {
    const Question& q = b.questions[i];
    for (std::size_t t = 0; t < q.words.size(); ++t) words[t * B + i] = q.words[t];
    last[i] = static_cast<std::int64_t>((q.words.size() - 1) * B + i);
    answers[i] = q.answer;
    scenes.push_back(q.scene);
  }
  b.words = from_vector(words, {static_cast<std::int64_t>(T), static_cast<std::int64_t>(B)});
  b.last = from_vector(last);
  b.answers = from_vector(answers);
  b.images = vision::image_batch(scenes);
  return b;
}

// ---- the model ---------------------------------------------------------------------------

// The image as a grid of 16 feature vectors, one per 8x8 cell, each computed from its own
// cell only: a small CNN (conv 3x3 -> relu -> pool 2, twice: 8x8 -> 2x2) runs on the 16
// cells as a batch of B * 16 tiny images. Unlike the shared SceneEncoder, whose features
// see the neighbouring cells too, a cell's feature here says "a green triangle is HERE"
// and nothing about the cells around it, which is what the attention has to pick out.
//   images [B, 3, 32, 32] -> grid [B, 16, C]   (position l = row * 4 + col)
struct CellEncoder : nn::Module {
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::MaxPool2d> pool;
  std::shared_ptr<nn::Linear> fc;

  explicit CellEncoder(std::int64_t channels) {
    conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(3, 16, 3, 1, 1));
    conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(16, 32, 3, 1, 1));
    pool = register_module("pool", std::make_shared<nn::MaxPool2d>(2));
    fc = register_module("fc", std::make_shared<nn::Linear>(32 * 2 * 2, channels));
  }

  Tensor forward(const Tensor& images) const {
    const std::int64_t B = images.size(0);
    constexpr std::int64_t G = vision::kGrid, P = vision::kCell;
    // [B, 3, row, y, col, x] -> [B, row, col, 3, y, x]: the cells as separate images.
    Tensor x = reshape(permute(reshape(images, {B, 3, G, P, G, P}), {0, 2, 4, 1, 3, 5}), {B * kCells, 3, P, P});
    x = pool->forward(relu(conv1->forward(x)));                    // [B*16, 16, 4, 4]
    x = pool->forward(relu(conv2->forward(x)));                    // [B*16, 32, 2, 2]
    x = relu(fc->forward(reshape(x, {B * kCells, -1})));           // [B*16, C]
    return reshape(x, {B, kCells, -1});                            // [B, 16, C]
  }
};

struct VQAModel : nn::Module {
  std::shared_ptr<CellEncoder> encoder;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::LSTM> question_lstm;
  std::vector<std::shared_ptr<nn::Linear>> key, film, score;  // per hop
  std::vector<std::shared_ptr<nn::Linear>> refine;            // W_k: context -> query update
  std::shared_ptr<nn::Linear> hidden, out;
  Tensor coords;  // [1, 16, 2]: row, column of each cell in [-1, 1]
  std::int64_t features = 0, width = 0;

  VQAModel(int hops, std::int64_t channels, std::int64_t embed_size, std::int64_t hid, std::int64_t attn)
      : features(channels + 2), width(attn) {
    encoder = register_module("encoder", std::make_shared<CellEncoder>(channels));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(Shape{channels}));
    embed = register_module("embed", std::make_shared<nn::Embedding>(static_cast<std::int64_t>(kWords.size()), embed_size));
    question_lstm = register_module("question_lstm", std::make_shared<nn::LSTM>(embed_size, hid));
    for (int k = 0; k < hops; ++k) {
      key.push_back(register_module(fmt::format("key{}", k), std::make_shared<nn::Linear>(features, attn)));
      film.push_back(register_module(fmt::format("film{}", k), std::make_shared<nn::Linear>(hid, 2 * attn)));
      score.push_back(register_module(fmt::format("score{}", k), std::make_shared<nn::Linear>(attn, 1, false)));
      if (k + 1 < hops) refine.push_back(register_module(fmt::format("refine{}", k), std::make_shared<nn::Linear>(features, hid)));
    }
    hidden = register_module("hidden", std::make_shared<nn::Linear>(hid + hops * features, 2 * hid));
    out = register_module("out", std::make_shared<nn::Linear>(2 * hid, static_cast<std::int64_t>(kAnswers.size())));
    std::vector<float> c(kCells * 2);
    for (int l = 0; l < kCells; ++l) {
      c[2 * l] = static_cast<float>(l / vision::kGrid) / 1.5f - 1;
      c[2 * l + 1] = static_cast<float>(l % vision::kGrid) / 1.5f - 1;
    }
    coords = from_vector(c, {1, kCells, 2});
  }

  struct Output {
    Tensor logits;                // [B, answers]
    std::vector<Tensor> weights;  // per hop [B, 16]
  };

  Output forward(const Batch& b) const {
    const std::int64_t T = b.words.size(0), B = b.words.size(1), A = width;
    // The question: LSTM over all T steps, then each question's state at its last word.
    const Tensor outputs = question_lstm->forward(embed->forward(b.words)).output;  // [T, B, H]
    Tensor u = index_select(reshape(outputs, {T * B, -1}), 0, b.last);             // [B, H]
    const Tensor grid = concat({norm->forward(encoder->forward(b.images)),          // [B, 16, C + 2]
                                broadcast_to(coords, {B, kCells, 2})}, 2);
    Output o;
    std::vector<Tensor> features_in{u};
    for (std::size_t k = 0; k < key.size(); ++k) {
      // FiLM: the query scales (gamma) and shifts (beta) every projected cell feature.
      const Tensor f = reshape(film[k]->forward(u), {B, 1, 2 * A});                        // [B, 1, 2A]
      const Tensor joint = tanh(key[k]->forward(grid) * narrow(f, 2, 0, A) + narrow(f, 2, A, A));  // [B, 16, A]
      const Tensor w = softmax(reshape(score[k]->forward(joint), {B, kCells}), 1);                  // [B, 16]
      o.weights.push_back(w);
      const Tensor context = reshape(matmul(reshape(w, {B, 1, kCells}), grid), {B, -1});  // [B, C + 2]
      features_in.push_back(context);
      if (k < refine.size()) u = u + refine[k]->forward(context);  // the next hop's query
    }
    o.logits = out->forward(relu(hidden->forward(concat(features_in, 1))));
    return o;
  }
};

// ---- evaluation ----------------------------------------------------------------------------

// Row i of a [B, 16] map, flattened into `all`.
std::vector<float> row_of(const std::vector<float>& all, std::size_t i) {
  return {all.begin() + static_cast<std::ptrdiff_t>(i * kCells), all.begin() + static_cast<std::ptrdiff_t>((i + 1) * kCells)};
}

struct TypeStats {
  double n = 0, correct = 0;
  std::vector<double> about_mass, answer_mass;  // per hop
  double attn_n = 0;
};

std::array<TypeStats, kTypes> evaluate(const VQAModel& model, const std::vector<Batch>& test, double* loss_out) {
  NoGradGuard no_grad;
  std::array<TypeStats, kTypes> stats;
  const std::size_t hops = model.key.size();
  for (TypeStats& s : stats) s.about_mass.assign(hops, 0.0), s.answer_mass.assign(hops, 0.0);
  double loss = 0, n = 0;
  for (const Batch& b : test) {
    const VQAModel::Output o = model.forward(b);
    loss += cross_entropy(o.logits, b.answers).item() * static_cast<double>(b.questions.size());
    n += static_cast<double>(b.questions.size());
    const std::vector<std::int64_t> pred = argmax(o.logits, 1).to_vector<std::int64_t>();
    std::vector<std::vector<float>> w;
    for (const Tensor& t : o.weights) w.push_back(t.to_vector<float>());
    for (std::size_t i = 0; i < b.questions.size(); ++i) {
      const Question& q = b.questions[i];
      TypeStats& s = stats[q.type];
      s.n += 1;
      s.correct += pred[i] == q.answer;
      if (q.about.empty()) continue;  // "is there ...?" with answer no, "how many ...?" with 0
      s.attn_n += 1;
      for (std::size_t k = 0; k < hops; ++k) {
        const std::vector<float> wk = row_of(w[k], i);
        s.about_mass[k] += vision::mass_on(wk, q.about);
        if (!q.answer_cells.empty()) s.answer_mass[k] += vision::mass_on(wk, q.answer_cells);
      }
    }
  }
  *loss_out = loss / n;
  return stats;
}

// One figure per question type: the first held-out question of that type that names an
// object in the image (not "is there ...?" with answer no, nor a count of 0, whose
// attention has nothing to find), with each hop's attention.
void write_figures(const VQAModel& model, const Batch& batch, const std::string& dir) {
  NoGradGuard no_grad;
  const VQAModel::Output o = model.forward(batch);
  const std::vector<std::int64_t> pred = argmax(o.logits, 1).to_vector<std::int64_t>();
  std::array<bool, kTypes> done{};
  for (std::size_t i = 0; i < batch.questions.size(); ++i) {
    const Question& q = batch.questions[i];
    if (done[q.type] || q.about.empty()) continue;
    done[q.type] = true;
    std::vector<vision::Panel> panels{{"image", {}, ""}};
    for (std::size_t k = 0; k < o.weights.size(); ++k) {
      vision::Panel p{fmt::format("hop {} attention", k + 1), row_of(o.weights[k].to_vector<float>(), i), ""};
      if (!q.about.empty()) p.subtitle = fmt::format("named {:.2f}", vision::mass_on(p.weights, q.about));
      if (!q.answer_cells.empty()) p.subtitle += fmt::format(", answer {:.2f}", vision::mass_on(p.weights, q.answer_cells));
      panels.push_back(std::move(p));
    }
    const std::string path = fmt::format("{}/attention_{}.svg", dir, kTypeNames[q.type]);
    vision::write_attention_svg(path,
                                fmt::format("{}   predicted: {}   truth: {}", text(q.words), kAnswers[pred[i]], kAnswers[q.answer]),
                                q.scene, panels);
    fmt::print("wrote {}\n", path);
  }
}

// ---- main ----------------------------------------------------------------------------------

int main(int argc, char** argv) {
  int steps = 6000, batch = 32, test = 2000, hops = 2;
  std::int64_t channels = 32, embed_size = 16, hid = 64, attn = 32;
  double lr = 1e-3, clip = 5.0;
  std::uint64_t seed = 1;
  int threads = 1;
  std::string out = "out/vqa";
  bool check = false;
  CLI::App app{"vqa: LSTM question encoder + question-conditioned (FiLM) attention over per-cell CNN features, on synthetic scenes"};
  app.add_option("--steps", steps, "training steps (one fresh batch each)")->capture_default_str()->check(cli::count());
  app.add_option("--batch", batch, "questions per batch (all five types equally)")->capture_default_str()->check(cli::count(100000));
  // At least one question of each type, whose accuracy is reported; held in memory all at
  // once (12 KB a question): the upper bound keeps that under a gigabyte.
  app.add_option("--test", test, "held-out questions")->capture_default_str()->check(cli::integer(kTypes, 50000));
  app.add_option("--hops", hops, "attention glimpses (relation questions need 2)")->check(cli::integer(1, 4))->capture_default_str();
  app.add_option("--channels", channels, "CNN feature channels C per cell")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--embed", embed_size, "word embedding size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--hidden", hid, "LSTM hidden size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--attn", attn, "width A of the FiLM-conditioned scorer")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--lr", lr, "Adam learning rate (cosine-annealed to 5%)")->capture_default_str()->check(cli::positive());
  app.add_option("--clip", clip, "gradient norm clip")->capture_default_str()->check(cli::positive());
  app.add_option("--seed", seed, "random seed")->capture_default_str()->check(cli::seed());
  app.add_option("--threads", threads, "BLAS threads")->capture_default_str()->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", out, "output directory")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--check", check, "exit 1 unless the model clearly learned (smoke test)");
  return cli::run(app, "vqa", argc, argv, [&] {
    set_num_threads(threads);
    std::filesystem::create_directories(out);
    manual_seed(seed);
    VQAModel model(hops, channels, embed_size, hid, attn);
    optim::Adam opt(model.parameters(), {.lr = lr});
    optim::CosineAnnealingLR schedule(opt, steps, lr * 0.05);
    Generator train_gen(seed * 7919 + 29), test_gen(seed * 104729 + 5);  // disjoint streams

    std::vector<Batch> test_batches;
    for (int left = test; left > 0; left -= 250) test_batches.push_back(make_batch(make_questions(test_gen, std::min(left, 250))));

    fmt::print("vqa: {} parameters, {} hops; untrained cross-entropy log({}) = {:.2f}\n", model.num_parameters(), hops,
               kAnswers.size(), std::log(static_cast<double>(kAnswers.size())));
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    training::ProgressOptions bar_opts;
    bar_opts.label = "vqa";
    training::ProgressBar bar(steps, bar_opts);
    std::vector<double> xs, ys;
    for (int step = 1; step <= steps; ++step) {
      const Batch b = make_batch(make_questions(train_gen, batch));
      const Tensor loss = cross_entropy(model.forward(b).logits, b.answers);
      opt.zero_grad();
      loss.backward();
      optim::clip_grad_norm(model, clip);
      opt.step();
      schedule.step();
      bar.update(step, loss.item());
      xs.push_back(step);
      ys.push_back(loss.item());
    }
    bar.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    training::LinePlot plot{"vqa: training loss", "step", "cross-entropy", true};
    plot.add_series("train", xs, ys);
    plot.write_svg(out + "/loss.svg");
    fmt::print("wrote {}/loss.svg\n", out);

    double test_loss = 0;
    const std::array<TypeStats, kTypes> stats = evaluate(model, test_batches, &test_loss);
    write_figures(model, test_batches.front(), out);

    // Chance: the most frequent answer of each type if the model ignored the image.
    fmt::print("\ntrained {} steps in {:.1f}s; held-out loss {:.3f} ({} questions)\n", steps, seconds, test_loss, test);
    fmt::print("{:<10} {:>9}   attention on the named object per hop{}\n", "type", "accuracy",
               " (relation: named / answer object; uniform 0.06)");
    double correct = 0, total = 0;
    for (int t = 0; t < kTypes; ++t) {
      const TypeStats& s = stats[t];
      correct += s.correct, total += s.n;
      std::string masses;
      for (std::size_t k = 0; k < s.about_mass.size(); ++k) {
        masses += fmt::format("  hop {}: {:.2f}", k + 1, s.about_mass[k] / std::max(1.0, s.attn_n));
        if (t == q_relation) masses += fmt::format(" / {:.2f}", s.answer_mass[k] / std::max(1.0, s.attn_n));
      }
      fmt::print("{:<10} {:8.1f}%  {}\n", kTypeNames[t], 100 * s.correct / s.n, masses);
    }
    const double accuracy = correct / total;
    fmt::print("{:<10} {:8.1f}%\n", "all", 100 * accuracy);

    if (!check) return 0;
    // Untrained: loss log(13) = 2.56, accuracy ~1/13. Guessing uniformly among each
    // type's possible answers gives 33% on average; always answering each type's most
    // common answer without looking ~37%, and a model that learned only that prior sits at
    // loss ~1.05. The smoke configuration (600 steps) already uses the image: loss
    // 0.81-0.87, accuracy 51-58% over seeds 1-3.
    const bool ok = test_loss < 1.0 && accuracy > 0.45;
    if (!ok) fmt::print(stderr, "check failed: held-out loss {:.3f} (want < 1.0), accuracy {:.3f} (want > 0.45)\n", test_loss, accuracy);
    fmt::print("{}\n", ok ? "check passed" : "check FAILED");
    return ok ? 0 : 1;
  });
}
