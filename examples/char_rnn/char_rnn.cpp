// char_rnn: a character-level LSTM language model, the lecture's "RNN writes C code" demo.
//
// With no arguments it trains on xgrad's own C++ sources (embedded in the binary at build
// time) for 1,200 steps with dropout 0.25 between the LSTM layers (a slow or busy machine
// is stopped earlier by the 165 s time budget), then prints a sample
// of C++ it wrote, the validation bits per character, and where the loss curve is:
//
//   ./build/examples/char_rnn/char_rnn
//   ./build/examples/char_rnn/char_rnn --data my_novel.txt --hidden 512 --steps 100000 --time-budget 600
//   ./build/examples/char_rnn/char_rnn --load out/char_rnn/best.npz --sample 2000 --temperature 0.6
//   ./build/examples/char_rnn/char_rnn --resume out/char_rnn/checkpoint_step500.npz --steps 2000
//   ./build/examples/char_rnn/char_rnn --documents --data my_letters/ --seq-len 128
//
// --documents trains on a directory's files as separate documents, each a sequence of its
// own in padded batches with lengths, the state never carried from one into another (see
// documents.hpp).
//
// What it shows: Embedding -> nn::LSTM -> Linear over B parallel streams of the corpus,
// truncated BPTT with xg::training::tbptt_chunk (the carried state detached between chunks),
// gradient clipping, Adam or RMSprop, a held-out tail of the corpus scored in bits per
// character, the progress bar, a metrics CSV and loss-curve SVG, checkpoints that resume
// bit for bit, and temperature / top-k sampling.
//
// The run ends on its best model: it keeps the model with the lowest validation bpc seen
// (a small corpus is overfitted within minutes) and, at the end, restores it, so the
// validation printed and the sample are the best model's. Checkpoints carry it along, so
// --resume ends on the same model.
//
// Outputs (under --out, default out/char_rnn): metrics.csv, loss.svg, best.npz (the best
// model), checkpoint.npz (the last state, to --resume), checkpoint_step<N>.npz every
// --checkpoint-every steps, sample.txt.
//
// Data-parallel on MPI (when xgrad was built with MPI):
//   mpirun -np 2 ./build/examples/char_rnn/char_rnn --distributed
// splits the --batch streams between the ranks (xg::dist::shard), averages the gradients
// after each backward (xg::dist::GradientReducer), and lets rank 0 alone print, validate,
// plot, sample and write checkpoints. A checkpoint holds the carried state of every stream
// in the original order, so a run can resume with another number of ranks, or none.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <xgrad/xgrad.hpp>
#ifdef XGRAD_WITH_MPI
#include <xgrad/dist/dist.hpp>
#endif

#include "../common/cli.hpp"
#include "char_model.hpp"
#include "documents.hpp"

using namespace xg;
namespace cli = examples::cli;
using char_rnn::CharRNN;
using char_rnn::ModelConfig;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string data;
  std::vector<std::string> extensions;
  std::int64_t embed = 64, hidden = 256, layers = 2;
  // The corpus (~600k chars, about 300 steps an epoch) is small for 0.9M parameters: a longer run
  // without dropout overfits. The run ends on its best model either way; README's demo
  // section has the measured curves.
  double dropout = 0.25;
  std::int64_t seq_len = 64, batch = 32;
  std::int64_t steps = 1200;
  double time_budget = 165.0;
  std::string optim = "adam";
  double lr = 3e-3;
  double clip = 5.0;
  double valid_fraction = 0.05;
  std::int64_t valid_chars = 0;
  std::int64_t eval_every = 100;
  std::int64_t checkpoint_every = 500;
  std::string resume, load;
  std::int64_t sample = 1500;
  double temperature = 0.8;
  std::int64_t top_k = 0;
  std::string prime;
  std::uint64_t seed = 1;
  int threads = 1;
  std::string out = "out/char_rnn";
  bool check = false;
  double check_bpc = 4.0;
  bool distributed = false;
  bool documents = false;
  double grad_penalty = 0.0;
};

// The data-parallel layer, or its one-process stand-in when xgrad was built without MPI.
struct Parallel {
  int rank = 0, world = 1;
#ifdef XGRAD_WITH_MPI
  std::unique_ptr<dist::GradientReducer> reducer;
#endif
  bool on() const { return world > 1; }
  bool leader() const { return rank == 0; }
  // Streams (rows of the [B, L] stream matrix) this rank trains on: a seeded shuffle of
  // [0, B) dealt round-robin, so every rank gets B / W of them.
  std::vector<std::int64_t> rows_of(int r, std::int64_t batch, std::uint64_t seed) const {
#ifdef XGRAD_WITH_MPI
    if (on()) return dist::shard(batch, seed, r, world);
#endif
    (void)r;
    (void)seed;
    std::vector<std::int64_t> all(static_cast<std::size_t>(batch));
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  void average_gradients() {
#ifdef XGRAD_WITH_MPI
    if (reducer) reducer->allreduce();
#endif
  }
  // True on every rank when any rank says true (the time budget must stop all together).
  bool any(bool v) const {
#ifdef XGRAD_WITH_MPI
    if (on()) return dist::allreduce_sum(v ? 1.0 : 0.0) > 0;
#endif
    return v;
  }
  // The carried state of every stream, in stream order ([L, B, H]), from each rank's rows.
  Tensor gather_rows(const Tensor& mine, std::int64_t batch, std::uint64_t seed) const {
#ifdef XGRAD_WITH_MPI
    if (on()) {
      std::vector<Tensor> parts;
      std::vector<std::int64_t> rank_major_row;  // global row of each column of concat(parts)
      for (int r = 0; r < world; ++r) {
        const std::vector<std::int64_t> rows = rows_of(r, batch, seed);
        Tensor part = r == rank ? mine.clone() : zeros({mine.size(0), static_cast<std::int64_t>(rows.size()), mine.size(2)}, mine.dtype());
        dist::broadcast(part, r);
        parts.push_back(part);
        rank_major_row.insert(rank_major_row.end(), rows.begin(), rows.end());
      }
      std::vector<std::int64_t> perm(static_cast<std::size_t>(batch));
      for (std::size_t k = 0; k < rank_major_row.size(); ++k) perm[static_cast<std::size_t>(rank_major_row[k])] = static_cast<std::int64_t>(k);
      return index_select(concat(parts, 1), 1, from_vector(perm));
    }
#endif
    (void)batch;
    (void)seed;
    return mine;
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bits per character of `model` on `tokens` [N]: the stream is cut into 16 rows scored side
// by side (state carried along each row, as in training), without recording anything.
double evaluate_bpc(CharRNN& model, const Tensor& tokens, std::int64_t* chars_scored) {
  NoGradGuard no_grad;
  model.eval();
  const std::int64_t rows = std::min<std::int64_t>(16, tokens.numel() / 2);
  const Tensor streams = training::batchify(tokens, rows);  // [rows, N / rows]
  const std::int64_t window = 256;                       // no graph to keep: long chunks are cheaper
  nn::LSTMState state;
  double total_nats = 0.0;
  std::int64_t count = 0;
  for (std::int64_t c = 0; c < training::tbptt_num_chunks(streams, window); ++c) {
    const training::TBPTTChunk chunk = training::tbptt_chunk(streams, window, c);
    auto [logits, next] = model.forward(chunk.inputs, state);  // [rows*T, V]
    const Tensor targets = reshape(chunk.targets, {-1});        // [rows*T]
    total_nats += cross_entropy(logits, targets, {.reduction = Reduction::sum}).item();
    count += targets.numel();
    state = next;
  }
  model.train();
  if (chars_scored) *chars_scored = count;
  return total_nats / static_cast<double>(count) / char_rnn::kLn2;
}

// Draws one id from logits [V] at `temperature` (0: the most likely one), keeping only the
// top_k most likely ids when top_k > 0. In double, with the max subtracted: exp cannot
// overflow however low the temperature.
std::int64_t sample_id(const std::vector<double>& logits, double temperature, std::int64_t top_k, Generator& gen) {
  const auto V = static_cast<std::int64_t>(logits.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
  if (temperature <= 0.0) return order[0];
  const std::int64_t keep = top_k > 0 ? std::min(top_k, V) : V;
  std::vector<double> p(static_cast<std::size_t>(keep));
  double total = 0.0;
  for (std::int64_t i = 0; i < keep; ++i) total += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  double u = gen.uniform() * total;
  for (std::int64_t i = 0; i < keep; ++i) {
    if ((u -= p[i]) < 0.0) return order[i];
  }
  return order[keep - 1];
}

// Feeds `prime` (or a newline, so the sample starts at the beginning of a line), then
// draws n characters one at a time, each fed back as the next input.
std::string sample_text(CharRNN& model, const training::CharVocab& vocab, const Options& o, Generator& gen) {
  NoGradGuard no_grad;
  model.eval();
  std::string seed_text = o.prime.empty() ? std::string(1, vocab.contains('\n') ? '\n' : vocab.chr(0)) : o.prime;
  Tensor ids = reshape(vocab.encode(seed_text), {1, -1});  // [1, P]
  auto [logits, state] = model.forward(ids, {});          // [P, V]
  std::string text = o.prime;
  for (std::int64_t i = 0; i < o.sample; ++i) {
    const std::vector<double> last = select(logits, 0, logits.size(0) - 1).to_vector<double>();  // [V]
    const std::int64_t id = sample_id(last, o.temperature, o.top_k, gen);
    text += vocab.chr(id);
    std::tie(logits, state) = model.forward(from_vector(std::vector<std::int64_t>{id}, {1, 1}), state);  // [1, V]
  }
  model.train();
  return text;
}

void write_loss_plot(const std::string& csv, const std::string& svg) {
  const std::vector<double> step = training::read_csv_column(csv, "step");
  const std::vector<double> train_bpc = training::read_csv_column(csv, "train_bpc");
  const std::vector<double> valid_bpc = training::read_csv_column(csv, "valid_bpc");
  // Chunk losses are noisy: the train curve is a trailing mean over 25 steps. Rows that
  // only record a validation score (step 0, the last step after a time-budget stop) have no
  // train value, and validation is logged only on evaluation steps: empty fields read back
  // as NaN, so each series keeps just its finite points.
  std::vector<double> xs, ys, vx, vy, recent;
  const std::size_t window = 25;
  double window_sum = 0.0;
  for (std::size_t i = 0; i < step.size(); ++i) {
    if (std::isfinite(train_bpc[i])) {
      recent.push_back(train_bpc[i]);
      window_sum += train_bpc[i];
      if (recent.size() > window) window_sum -= recent[recent.size() - 1 - window];
      xs.push_back(step[i]);
      ys.push_back(window_sum / static_cast<double>(std::min(recent.size(), window)));
    }
    if (std::isfinite(valid_bpc[i])) {
      vx.push_back(step[i]);
      vy.push_back(valid_bpc[i]);
    }
  }
  training::LinePlot plot{"char_rnn: bits per character (train: mean of 25 steps)", "step", "bits per character"};
  plot.add_series("train", xs, ys);
  plot.add_series("validation", vx, vy, "#d62728");
  plot.write_svg(svg);
}

// The metrics log of a resumed run continues the previous one: keep the rows up to the
// checkpoint's step (a later part belongs to the run being replaced), then append.
void truncate_log(const std::string& path, const std::vector<std::string>& columns, std::int64_t last_step) {
  if (!fs::exists(path)) return;
  auto rows = training::read_csv(path);
  if (rows.empty() || rows[0] != columns) return;  // another layout: start afresh
  training::CsvLog log(path, columns);
  for (std::size_t r = 1; r < rows.size(); ++r) {
    if (rows[r].size() != columns.size() || std::stoll(rows[r][0]) > last_step) break;
    std::vector<std::pair<std::string, training::CsvValue>> row;
    for (std::size_t c = 0; c < columns.size(); ++c) {
      if (!rows[r][c].empty()) row.emplace_back(columns[c], rows[r][c]);
    }
    log.log(row);
  }
}

// One chunk's training objective: the mean cross-entropy L, plus with --grad-penalty
// lambda * ||dL/de||^2 over the input embeddings e [B, T, E]. dL/de is taken with
// create_graph, so it is a function of the weights and the objective's backward
// differentiates through it (a double backward through the LSTM).
struct ChunkLoss {
  Tensor loss, objective;
  nn::LSTMState next;
  double penalty = 0;  // ||dL/de||^2
};
ChunkLoss chunk_loss(const CharRNN& model, const Tensor& inputs, const Tensor& targets, const nn::LSTMState& state,
                     double lambda) {
  const Tensor e = (*model.embedding)(inputs);  // [B, T, E]
  auto [logits, next] = model.forward_embedded(e, state);
  ChunkLoss r;
  r.loss = cross_entropy(logits, reshape(targets, {-1}));
  r.next = next;
  r.objective = r.loss;
  if (lambda > 0) {
    const Tensor ge = grad({r.loss}, {e}, {}, {.create_graph = true})[0];
    const Tensor p = sum(ge * ge);
    r.penalty = p.item();
    r.objective = r.loss + p * lambda;
  }
  return r;
}

// ||a - b.grad()|| / ||a|| over the parameters (an undefined a[i] counts as zeros).
double relative_change(const std::vector<Tensor>& a, const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  double diff = 0, base = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor g = params[i].grad();
    if (!g.defined()) continue;
    const Tensor d = a[i].defined() ? g - a[i] : g;
    diff += sum(d * d).item();
    if (a[i].defined()) base += sum(a[i] * a[i]).item();
  }
  return std::sqrt(diff / base);
}

int run(const Options& o_in, const CLI::App& app) {
  Options o = o_in;
  set_num_threads(o.threads);
  manual_seed(o.seed);
  Parallel par;
#ifdef XGRAD_WITH_MPI
  if (o.distributed) {
    par.rank = dist::rank();
    par.world = dist::world_size();
  }
#endif
  // Everything a person reads or a later run loads comes from rank 0 only.
  auto say = [&]<class... A>(fmt::format_string<A...> f, A&&... args) {
    if (par.leader()) fmt::print(f, std::forward<A>(args)...);
  };
  const auto t0 = std::chrono::steady_clock::now();

  // ---- what to start from: a fresh model, a run to resume, or a model to sample ----------
  const std::string from = !o.resume.empty() ? o.resume : o.load;
  training::LoadedCheckpoint info;
  if (!from.empty()) info = training::read_checkpoint_info(from);
  // The checkpoint defines the model and the data layout; the command line cannot change
  // them without breaking the run, so say when it tried.
  auto note_ignored = [&](const char* opt, double given, double stored) {
    if (app.count(opt) > 0 && given != stored)
      fmt::print(stderr, "note: {} {} ignored: {} has {}\n", opt, given, from, stored);
  };
  ModelConfig cfg;
  std::string corpus_what, text;
  if (!o.load.empty()) {
    cfg = ModelConfig::load(info.extras);
  } else {
    text = char_rnn::load_corpus(o.data, o.extensions, &corpus_what);
    if (!o.resume.empty()) {
      cfg = ModelConfig::load(info.extras);
      if (info.extras.get_int("data.hash") != char_rnn::corpus_hash(text))
        throw Error(fmt::format("--resume {}: the checkpoint was trained on other data; pass the same --data", from));
      const std::int64_t batch = info.extras.get_int("data.batch"), seq_len = info.extras.get_int("data.seq_len");
      const double valid_fraction = info.extras.get_double("data.valid_fraction");
      note_ignored("--batch", static_cast<double>(o.batch), static_cast<double>(batch));
      note_ignored("--seq-len", static_cast<double>(o.seq_len), static_cast<double>(seq_len));
      note_ignored("--valid-fraction", o.valid_fraction, valid_fraction);
      o.batch = batch;
      o.seq_len = seq_len;
      o.valid_fraction = valid_fraction;
      if (app.count("--optim") > 0 && o.optim != info.extras.get_string("optim"))
        fmt::print(stderr, "note: --optim {} ignored: {} has {}\n", o.optim, from, info.extras.get_string("optim"));
      o.optim = info.extras.get_string("optim");  // and its state, with the learning rate
    } else {
      cfg.vocab = training::CharVocab(text);
      cfg.embed = o.embed;
      cfg.hidden = o.hidden;
      cfg.layers = o.layers;
      cfg.dropout = o.dropout;
    }
  }
  if (!from.empty()) {
    note_ignored("--hidden", static_cast<double>(o.hidden), static_cast<double>(cfg.hidden));
    note_ignored("--layers", static_cast<double>(o.layers), static_cast<double>(cfg.layers));
    note_ignored("--embed", static_cast<double>(o.embed), static_cast<double>(cfg.embed));
    note_ignored("--dropout", o.dropout, cfg.dropout);
  }
  cfg.validate();
  // The vocabulary is known now, before any training: a --prime it cannot encode is a bad
  // flag, not a failure after the whole run.
  if (!o.prime.empty()) {
    try {
      (void)cfg.vocab.encode(o.prime);
    } catch (const IndexError& e) {
      throw CLI::ValidationError("--prime", fmt::format("{} ({}); use characters of the training text", e.what(),
                                                        o.load.empty() ? corpus_what : o.load));
    }
  }
  CharRNN model(cfg);
  if (!o.load.empty()) training::load_checkpoint(o.load, {.model = &model});

  Generator sample_gen(o.seed + 1);  // its own stream: sampling never shifts training's random numbers
  if (!o.load.empty()) {
    fmt::print("loaded {} (step {}): {}-layer LSTM, hidden {}, {} chars in the vocabulary\n", o.load, info.step,
               cfg.layers, cfg.hidden, cfg.vocab.size());
  } else {
    // ---- data: the held-out tail, and B parallel streams of the rest ---------------------
    if (o.batch < 1 || o.seq_len < 1) throw Error("--batch and --seq-len must be >= 1");
    const Tensor ids = cfg.vocab.encode(text);                           // [N]
    auto [train_ids, valid_ids] = training::split_tokens(ids, o.valid_fraction);
    if (o.valid_chars > 0 && valid_ids.numel() > o.valid_chars) valid_ids = slice(valid_ids, 0, 0, o.valid_chars);
    if (valid_ids.numel() < 2) throw Error(fmt::format("the validation part of {} has {} chars; use a larger "
                                                       "corpus or --valid-fraction", corpus_what, valid_ids.numel()));
    if (train_ids.numel() < 2 * o.batch)
      throw Error(fmt::format("{} training chars are too few for --batch {}", train_ids.numel(), o.batch));
    const Tensor all_streams = training::batchify(train_ids, o.batch);                  // [B, N/B]
    const std::int64_t chunks_per_epoch = training::tbptt_num_chunks(all_streams, o.seq_len);
    if (o.batch % par.world != 0)
      throw Error(fmt::format("--batch {} must be a multiple of the {} ranks", o.batch, par.world));
    const std::uint64_t rows_seed = 0x5eed;
    const Tensor my_rows = from_vector(par.rows_of(par.rank, o.batch, rows_seed));
    const Tensor streams = par.on() ? index_select(all_streams, 0, my_rows) : all_streams;  // [B / W, N/B]

    // ---- model, optimizer, and the state a checkpoint restores --------------------------
    const std::vector<Tensor> params = model.parameters();
    std::unique_ptr<optim::Optimizer> opt;
    if (o.optim == "adam") {
      opt = std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = o.lr});
    } else if (o.optim == "rmsprop") {
      // alpha 0.95 as in Karpathy's char-rnn (PyTorch's default is 0.99).
      opt = std::make_unique<optim::RMSprop>(params, optim::RMSpropOptions{.lr = o.lr, .alpha = 0.95});
    } else {
      throw Error(fmt::format("--optim must be adam or rmsprop, got '{}'", o.optim));
    }
    const training::CheckpointParts parts{.model = &model, .optimizer = opt.get(), .generator = &default_generator()};
#ifdef XGRAD_WITH_MPI
    if (par.on()) {
      dist::broadcast_parameters(model);  // one starting point for every replica
      par.reducer = std::make_unique<dist::GradientReducer>(model);
    }
#endif

    std::int64_t step = 0, epoch = 0, chunk = 0;
    nn::LSTMState state;  // undefined: zeros, the start of every stream
    // The model with the lowest validation bpc so far (rank 0): its weights (a copy), score
    // and step. The run ends on it (the last model may have overfitted since), and every
    // checkpoint carries it, so a resumed run ends on the same model as the uninterrupted one.
    struct Best {
      double bpc = std::numeric_limits<double>::infinity();
      std::int64_t step = -1;  // none yet
      nn::StateDict weights;
    } best;
    if (!o.resume.empty()) {
      const training::LoadedCheckpoint loaded = training::load_checkpoint(o.resume, parts);
      step = loaded.step;
      epoch = loaded.extras.get_int("data.epoch");
      chunk = loaded.extras.get_int("data.chunk");
      if (chunk < 0 || chunk >= chunks_per_epoch) throw Error(fmt::format("--resume {}: data.chunk {} out of range", from, chunk));
      if (loaded.extras.has("state.h")) state = {loaded.extras.get_tensor("state.h"), loaded.extras.get_tensor("state.c")};
      if (par.on() && state.h.defined()) state = {index_select(state.h, 1, my_rows), index_select(state.c, 1, my_rows)};
      if (loaded.extras.has("best.valid_bpc")) {
        best.bpc = loaded.extras.get_double("best.valid_bpc");
        best.step = loaded.extras.get_int("best.step");
        for (const auto& [name, t] : model.state_dict()) best.weights.emplace_back(name, loaded.extras.get_tensor("best.model." + name));
      }
      say("resumed {} at step {} (epoch {}, chunk {} of {})\n", o.resume, step, epoch, chunk, chunks_per_epoch);
    }

    auto save = [&](const std::string& path) {
      training::Extras extras;
      cfg.save(extras);
      extras.set_string("optim", o.optim);
      extras.set_int("data.hash", char_rnn::corpus_hash(text));
      extras.set_int("data.batch", o.batch);
      extras.set_int("data.seq_len", o.seq_len);
      extras.set_double("data.valid_fraction", o.valid_fraction);
      // Where the streams are: the next chunk to train on, and the state carried into it.
      extras.set_int("data.epoch", epoch);
      extras.set_int("data.chunk", chunk);
      if (state.h.defined()) {
        extras.set_tensor("state.h", par.gather_rows(state.h, o.batch, rows_seed));
        extras.set_tensor("state.c", par.gather_rows(state.c, o.batch, rows_seed));
      }
      if (best.step >= 0) {  // rank 0's (the one that writes)
        extras.set_double("best.valid_bpc", best.bpc);
        extras.set_int("best.step", best.step);
        for (const auto& [name, t] : best.weights) extras.set_tensor("best.model." + name, t);
      }
#ifdef XGRAD_WITH_MPI
      if (par.on()) return dist::save_checkpoint(path, parts, step, extras);  // rank 0 writes
#endif
      training::save_checkpoint(path, parts, step, extras);
    };

    // best.npz: the best model alone (what --load and cell_viz read), rewritten whenever the
    // validation improves, so even an interrupted run leaves its best model behind.
    const std::string best_path = (fs::path(o.out) / "best.npz").string();
    auto save_best = [&] {
      training::Extras extras;
      cfg.save(extras);
      extras.set_double("best.valid_bpc", best.bpc);
      training::save_checkpoint(best_path, {.model = &model}, best.step, extras);
    };
    // Rank 0, after scoring the current model: keep it if it is the best so far.
    auto note_validation = [&](double bpc) {
      if (!(bpc < best.bpc)) return;  // ties keep the earlier model; NaN never wins
      NoGradGuard no_grad;
      best.bpc = bpc;
      best.step = step;
      best.weights.clear();
      for (const auto& [name, t] : model.state_dict()) best.weights.emplace_back(name, t.clone());
      save_best();
    };

    if (par.on()) say("data-parallel: {} ranks, {} streams each\n", par.world, o.batch / par.world);
    say("corpus: {}: {} distinct chars; {} train / {} validation chars\n", corpus_what, cfg.vocab.size(),
               train_ids.numel(), valid_ids.numel());
    say("model: Embedding({}, {}) -> LSTM {}x{} -> Linear({}, {}): {} parameters; {} B={} T={} lr={}\n",
               cfg.vocab.size(), cfg.embed, cfg.layers, cfg.hidden, cfg.hidden, cfg.vocab.size(),
               model.num_parameters(), o.optim, o.batch, o.seq_len, opt->get_lr(0));
    const double start_bpc = par.leader() ? evaluate_bpc(model, valid_ids, nullptr) : 0.0;
    say("{} model: {:.2f} bits per char on the validation part (uniform: log2 {} = {:.2f})\n",
               o.resume.empty() ? "untrained" : "resumed", start_bpc, cfg.vocab.size(), std::log2(cfg.vocab.size()));

    if (par.leader()) fs::create_directories(o.out);  // only now: a run that fails its checks above leaves nothing behind
    // A resumed model was scored (or not) by the run that saved it; scoring it again here
    // must not change which model that run ends on.
    if (par.leader() && o.resume.empty()) note_validation(start_bpc);
    const std::string csv_path = (fs::path(o.out) / "metrics.csv").string();
    const std::string svg_path = (fs::path(o.out) / "loss.svg").string();
    const std::vector<std::string> columns{"step", "epoch", "train_bpc", "valid_bpc", "grad_norm", "seconds"};
    if (par.leader() && !o.resume.empty()) truncate_log(csv_path, columns, step);
    std::unique_ptr<training::CsvLog> log;
    if (par.leader()) {
      log = std::make_unique<training::CsvLog>(csv_path, columns, /*append=*/!o.resume.empty());
      if (o.resume.empty()) log->log({{"step", 0}, {"epoch", 0}, {"valid_bpc", start_bpc}, {"seconds", seconds_since(t0)}});
    }

    std::fflush(stdout);  // the header lines before the progress bar (stderr) starts

    // ---- training: the loop of training::train_tbptt, one chunk per optimizer step --------
    // (spelled out rather than called so it can stop on the time budget and evaluate and
    // checkpoint between chunks). Each step: the model over chunk [B, T] from the carried
    // state, backward (which frees the chunk's graph), clip, update, and detach the state
    // so the next chunk's backward stops here.
    std::unique_ptr<training::ProgressBar> bar;
    const std::int64_t first_step = step;
    const auto train_t0 = std::chrono::steady_clock::now();
    double valid_bpc = std::numeric_limits<double>::quiet_NaN();
    std::int64_t valid_scored = 0, valid_step = -1;
    std::string stop_reason = fmt::format("--steps {} done", o.steps);
    struct {
      std::vector<Tensor> plain;     // first step: the gradient of the loss alone
      double relative_change = -1;   // ||g(loss + penalty) - g(loss)|| / ||g(loss)||
      double penalty = 0;
    } penalty_check;
    double penalty_sum = 0;
    while (step < o.steps) {
      const double elapsed = seconds_since(train_t0);
      if (par.any(o.time_budget > 0 && elapsed >= o.time_budget)) {
        stop_reason = fmt::format("time budget of {} s reached", o.time_budget);
        break;
      }
      const training::TBPTTChunk c = training::tbptt_chunk(streams, o.seq_len, chunk);
      const ChunkLoss cl = chunk_loss(model, c.inputs, c.targets, state, o.grad_penalty);
      const Tensor& loss = cl.loss;  // mean nats per char, what the bpc reports
      if (o.check && o.grad_penalty > 0 && step == first_step) {
        // The penalty's gradient must reach the weights: the gradient of the loss alone,
        // taken from the same graph, has to differ from the one backward leaves below.
        penalty_check.plain = grad({loss}, params, {}, {.retain_graph = true, .allow_unused = true});
      }
      cl.objective.backward();
      if (!penalty_check.plain.empty() && penalty_check.relative_change < 0) {
        penalty_check.relative_change = relative_change(penalty_check.plain, params);
        penalty_check.penalty = cl.penalty;
      }
      if (o.grad_penalty > 0) penalty_sum += cl.penalty;
      par.average_gradients();  // data-parallel: every rank now holds the mean gradient
      const double grad_norm = optim::clip_grad_norm(params, o.clip);
      opt->step();
      opt->zero_grad();
      state = cl.next.detach();
      ++step;
      if (++chunk == chunks_per_epoch) {  // the streams are used up: start them again from zeros
        chunk = 0;
        ++epoch;
        state = {};
      }

      const double bpc = loss.item() / char_rnn::kLn2;
      // The bar's total is what fits in the time budget at the rate of the first steps, so
      // its ETA means something (it is created once that rate is known).
      if (par.leader() && !bar && (step - first_step >= 10 || seconds_since(train_t0) > 3.0 || step == o.steps)) {
        std::int64_t total = o.steps;
        if (o.time_budget > 0) {
          const double per_step = seconds_since(train_t0) / static_cast<double>(step - first_step);
          total = std::min(o.steps, step + static_cast<std::int64_t>((o.time_budget - seconds_since(train_t0)) / per_step));
        }
        training::ProgressOptions bar_options;
        bar_options.smoothing = 0.9;  // a few dozen steps in all: a short average
        bar = std::make_unique<training::ProgressBar>(std::max<std::int64_t>(total, step), bar_options);
      }
      if (bar) bar->update(step, bpc, c.inputs.numel() * par.world);

      const bool last = step == o.steps;
      std::vector<std::pair<std::string, training::CsvValue>> row{
          {"step", step}, {"epoch", epoch}, {"train_bpc", bpc}, {"grad_norm", grad_norm},
          {"seconds", seconds_since(t0)}};
      if (par.leader() && ((o.eval_every > 0 && step % o.eval_every == 0) || last)) {
        valid_bpc = evaluate_bpc(model, valid_ids, &valid_scored);
        valid_step = step;
        row.emplace_back("valid_bpc", valid_bpc);
        note_validation(valid_bpc);
      }
      if (log) log->log(row);
      if (par.leader() && valid_step == step) write_loss_plot(csv_path, svg_path);  // a plot after every evaluation
      if (o.checkpoint_every > 0 && step % o.checkpoint_every == 0)
        save((fs::path(o.out) / fmt::format("checkpoint_step{}.npz", step)).string());
    }
    if (bar) bar->finish();
    if (par.leader() && valid_step != step) {
      // Stopped by the time budget between evaluations (or no step at all): score the model as it is now.
      valid_bpc = evaluate_bpc(model, valid_ids, &valid_scored);
      note_validation(valid_bpc);
      if (step > first_step) {
        log->log({{"step", step}, {"epoch", epoch}, {"valid_bpc", valid_bpc}, {"seconds", seconds_since(t0)}});
      }
    }
    if (log && log->rows() > 0) write_loss_plot(csv_path, svg_path);
    save((fs::path(o.out) / "checkpoint.npz").string());
#ifdef XGRAD_WITH_MPI
    if (par.on()) dist::verify_replicas(model);  // the replicas never drifted apart
#endif
    if (!par.leader()) return 0;

    // End on the best model: checkpoint.npz above keeps the last one (to resume from); the
    // validation printed, the sample and best.npz come from the best.
    const double last_bpc = valid_bpc;
    const bool restored = best.step >= 0 && best.step != step;
    if (restored) {
      model.load_state_dict(best.weights);
      valid_bpc = evaluate_bpc(model, valid_ids, &valid_scored);
    }
    if (best.step >= 0) save_best();  // also when the best came with --resume: this --out gets it too

    const double train_seconds = seconds_since(train_t0);
    const std::int64_t chars_seen = (step - first_step) * o.batch * o.seq_len;  // all ranks together
    fmt::print("{}: {} steps ({} this run) in {:.1f} s, {:.2f}M chars = {:.2f} epochs this run\n", stop_reason, step,
               step - first_step, train_seconds, static_cast<double>(chars_seen) / 1e6,
               static_cast<double>(chars_seen) / static_cast<double>(all_streams.numel()));
    if (o.grad_penalty > 0 && step > first_step)
      fmt::print("gradient penalty: {} * ||dL/d(embeddings)||^2, mean ||dL/d(embeddings)||^2 {:.4g} over the run's steps\n",
                 o.grad_penalty, penalty_sum / static_cast<double>(step - first_step));
    fmt::print("validation: {:.3f} bits per character ({} held-out chars)", valid_bpc, valid_scored);
    if (restored) {
      fmt::print(", the best model: step {} (the last, step {}, had {:.3f})\n", best.step, step, last_bpc);
    } else {
      fmt::print("{}\n", best.step >= 0 ? ", the best model: the last one" : "");
    }
    fmt::print("wrote {}\nwrote {} (the last model, to --resume)\n", csv_path, (fs::path(o.out) / "checkpoint.npz").string());
    if (best.step >= 0) fmt::print("wrote {} (the best model, step {}: --load it to sample)\n", best_path, best.step);
    fmt::print("wrote {}\n", svg_path);

    if (o.sample > 0) {
      const std::string s = sample_text(model, cfg.vocab, o, sample_gen);
      const std::string sample_path = (fs::path(o.out) / "sample.txt").string();
      std::ofstream(sample_path, std::ios::binary) << s;
      fmt::print("\n---- sample: {} chars, temperature {}{} ----\n{}\n---- end of sample ----\n", o.sample,
                 o.temperature, o.top_k > 0 ? fmt::format(", top-k {}", o.top_k) : "", s);
      fmt::print("wrote {}\n", sample_path);
    }
    fmt::print("validation bpc {:.3f}; loss curve: {}; total {:.1f} s\n", valid_bpc, svg_path, seconds_since(t0));
    if (o.check && !(valid_bpc < o.check_bpc)) {
      fmt::print(stderr, "check FAILED: validation {:.3f} bits per char is not below {} (untrained: ~log2 {} = {:.2f})\n",
                 valid_bpc, o.check_bpc, cfg.vocab.size(), std::log2(cfg.vocab.size()));
      return 1;
    }
    // The run ends on its best model: the score printed is the lowest seen, to the bit.
    if (o.check && best.step >= 0 && valid_bpc != best.bpc) {
      fmt::print(stderr, "check FAILED: the final validation {:.17g} is not the best seen, {:.17g} at step {}\n", valid_bpc,
                 best.bpc, best.step);
      return 1;
    }
    if (o.check && o.grad_penalty > 0) {
      // Measured on the smoke test's model: the change is 4.7e-5 x LAMBDA (4.7e-3 at 100),
      // and exactly 0 at 1e-12, where the penalty is below float32 rounding.
      if (!(penalty_check.relative_change > 1e-4)) {
        fmt::print(stderr, "check FAILED: with --grad-penalty {} the first step's gradient changed by {:.3g} (relative) "
                           "from the loss's alone: the penalty term does not reach the weights\n",
                   o.grad_penalty, penalty_check.relative_change);
        return 1;
      }
      fmt::print("check passed: the gradient penalty ({:.4g} at step 1) changed the first gradient by {:.3g} (relative)\n",
                 penalty_check.penalty, penalty_check.relative_change);
    }
    if (o.check)
      fmt::print("check passed: validation {:.3f} < {} bits per char, the best of the run (step {})\n", valid_bpc,
                 o.check_bpc, best.step);
    return 0;
  }

  // --load: sample only.
  const std::string s = sample_text(model, cfg.vocab, o, sample_gen);
  fmt::print("---- sample: {} chars, temperature {}{} ----\n{}\n---- end of sample ----\n", o.sample, o.temperature,
             o.top_k > 0 ? fmt::format(", top-k {}", o.top_k) : "", s);
  return 0;
}

// --documents (see documents.hpp): bits per character of the held-out documents, each
// scored from a zero state in windows of 256 chars carrying the state along it.
double evaluate_documents_bpc(CharRNN& model, const std::vector<Tensor>& docs, std::int64_t max_chars,
                              std::int64_t* chars_scored) {
  NoGradGuard no_grad;
  model.eval();
  double total_nats = 0.0;
  std::int64_t count = 0;
  for (const Tensor& doc : docs) {
    nn::LSTMState state;  // every document from zeros, as in training
    for (std::int64_t pos = 0; pos + 1 < doc.numel(); pos += 256) {
      std::int64_t len = std::min<std::int64_t>(256, doc.numel() - 1 - pos);
      if (max_chars > 0) len = std::min(len, max_chars - count);
      if (len <= 0) break;
      const Tensor in = reshape(slice(doc, 0, pos, pos + len), {1, len});
      auto [logits, next] = model.forward(in, state);  // [len, V]
      total_nats += cross_entropy(logits, slice(doc, 0, pos + 1, pos + 1 + len), {.reduction = Reduction::sum}).item();
      count += len;
      state = next;
    }
    if (max_chars > 0 && count >= max_chars) break;
  }
  model.train();
  if (chars_scored) *chars_scored = count;
  return total_nats / static_cast<double>(count) / char_rnn::kLn2;
}

// The isolation half of --check's boundary audit: every row of the padded batch, rerun
// alone from its own state row, must give the batch's logits over its real steps.
double isolation_gap(CharRNN& model, const char_rnn::DocumentBatcher::Batch& b, const nn::LSTMState& state) {
  NoGradGuard no_grad;
  model.eval();
  const Tensor full = model.forward(b.inputs, state, b.lengths).first;  // [B, T, V]
  double gap = 0.0;
  for (std::size_t r = 0; r < b.rows.size(); ++r) {
    const auto row = static_cast<std::int64_t>(r);
    const std::int64_t len = b.rows[r].length;
    nn::LSTMState own;
    if (state.h.defined()) own = {slice(state.h, 1, row, row + 1), slice(state.c, 1, row, row + 1)};
    const Tensor alone = model.forward(reshape(slice(select(b.inputs, 0, row), 0, 0, len), {1, len}), own).first;  // [len, V]
    gap = std::max(gap, max(abs(alone - slice(select(full, 0, row), 0, 0, len))).item());
  }
  model.train();
  return gap;
}

int run_documents(const Options& o) {
  set_num_threads(o.threads);
  manual_seed(o.seed);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<char_rnn::Document> docs = char_rnn::read_documents(o.data, o.extensions);
  const auto n_docs = static_cast<std::int64_t>(docs.size());
  // The held-out part is whole documents (the last ones in path order): a document the
  // model never saw any part of.
  const std::int64_t n_valid = std::max<std::int64_t>(1, n_docs - training::split_point(n_docs, o.valid_fraction));
  if (n_docs < 2)
    throw Error(fmt::format("char_rnn --documents: {} has {} usable document; need 2 or more (one is held out for "
                            "validation)", o.data, n_docs));
  std::string all;
  for (const auto& d : docs) all += d.text;
  ModelConfig cfg;
  cfg.vocab = training::CharVocab(all);
  cfg.embed = o.embed;
  cfg.hidden = o.hidden;
  cfg.layers = o.layers;
  cfg.dropout = o.dropout;
  cfg.validate();
  if (!o.prime.empty()) {
    try {
      (void)cfg.vocab.encode(o.prime);
    } catch (const IndexError& e) {
      throw CLI::ValidationError("--prime", fmt::format("{} ({}); use characters of the training text", e.what(), o.data));
    }
  }
  std::vector<Tensor> train_docs, valid_docs;
  std::int64_t train_chars = 0, valid_chars = 0;
  for (std::int64_t i = 0; i < n_docs; ++i) {
    Tensor ids = cfg.vocab.encode(docs[static_cast<std::size_t>(i)].text);
    (i < n_docs - n_valid ? train_chars : valid_chars) += ids.numel();
    (i < n_docs - n_valid ? train_docs : valid_docs).push_back(ids);
  }

  CharRNN model(cfg);
  const std::vector<Tensor> params = model.parameters();
  std::unique_ptr<optim::Optimizer> opt;
  if (o.optim == "adam") {
    opt = std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = o.lr});
  } else {
    opt = std::make_unique<optim::RMSprop>(params, optim::RMSpropOptions{.lr = o.lr, .alpha = 0.95});
  }
  fmt::print("documents: {}: {} train documents ({} chars), {} held out ({} chars); {} distinct chars\n", o.data,
             train_docs.size(), train_chars, valid_docs.size(), valid_chars, cfg.vocab.size());
  fmt::print("model: Embedding({}, {}) -> LSTM {}x{} -> Linear({}, {}): {} parameters; {} B={} T<={} lr={}\n",
             cfg.vocab.size(), cfg.embed, cfg.layers, cfg.hidden, cfg.hidden, cfg.vocab.size(), model.num_parameters(),
             o.optim, o.batch, o.seq_len, o.lr);
  const double start_bpc = evaluate_documents_bpc(model, valid_docs, o.valid_chars, nullptr);
  fmt::print("untrained model: {:.2f} bits per char on the held-out documents (uniform: log2 {} = {:.2f})\n", start_bpc,
             cfg.vocab.size(), std::log2(cfg.vocab.size()));
  std::fflush(stdout);

  char_rnn::DocumentBatcher batcher(train_docs, o.batch, o.seq_len, o.seed + 2);
  const Dtype dtype = params.front().dtype();
  nn::LSTMState state;  // undefined: zeros
  std::vector<char_rnn::RowSource> prev;
  std::int64_t step = 0, fresh_rows = 0, carried_rows = 0, isolation_steps = 0;
  double worst_gap = 0.0, recent_bpc = 0.0;
  std::string stop_reason = fmt::format("--steps {} done", o.steps);
  while (step < o.steps) {
    if (o.time_budget > 0 && seconds_since(t0) >= o.time_budget) {
      stop_reason = fmt::format("time budget of {} s reached", o.time_budget);
      break;
    }
    const char_rnn::DocumentBatcher::Batch b = batcher.next(dtype);
    // A slot that took a new document starts it from zeros: its row of the carried state
    // is multiplied by 0, the others by 1.
    if (state.h.defined()) state = {state.h * b.keep, state.c * b.keep};
    if (o.check) {
      char_rnn::audit_rows(b.rows, prev, train_docs, b.inputs, state.h, step + 1);
      for (const auto& r : b.rows) ++(r.carried ? carried_rows : fresh_rows);
      if (step < 3) {
        worst_gap = std::max(worst_gap, isolation_gap(model, b, state));
        ++isolation_steps;
      }
    }
    auto [logits, next] = model.forward(b.inputs, state, b.lengths);  // [B, T, V]
    Tensor loss = nn::temporal_cross_entropy(logits, b.targets, nn::Lengths(b.lengths));  // mean nats per real char
    loss.backward();
    const double grad_norm = optim::clip_grad_norm(params, o.clip);
    opt->step();
    opt->zero_grad();
    state = next.detach();
    prev = b.rows;
    ++step;
    const double bpc = loss.item() / char_rnn::kLn2;
    recent_bpc = step == 1 ? bpc : 0.9 * recent_bpc + 0.1 * bpc;
    if (o.eval_every > 0 && step % o.eval_every == 0 && step < o.steps) {
      fmt::print("step {} (epoch {}): train {:.3f} bpc (mean), grad norm {:.2f}, validation {:.3f} bpc\n", step,
                 batcher.epoch(), recent_bpc, grad_norm,
                 evaluate_documents_bpc(model, valid_docs, o.valid_chars, nullptr));
      std::fflush(stdout);
    }
  }
  std::int64_t scored = 0;
  const double valid_bpc = evaluate_documents_bpc(model, valid_docs, o.valid_chars, &scored);
  fmt::print("{}: {} steps in {:.1f} s; validation: {:.3f} bits per character ({} held-out chars)\n", stop_reason, step,
             seconds_since(t0), valid_bpc, scored);
  if (o.sample > 0) {
    Generator sample_gen(o.seed + 1);
    fmt::print("---- sample: {} chars, temperature {} ----\n{}\n---- end of sample ----\n", o.sample, o.temperature,
               sample_text(model, cfg.vocab, o, sample_gen));
  }
  if (!o.check) return 0;
  if (isolation_steps > 0 && !(worst_gap <= 1e-4)) {
    fmt::print(stderr, "check FAILED: a row rerun alone differs from the padded batch by {:.3g} (above 1e-4): another "
                       "row or the padding reached it\n", worst_gap);
    return 1;
  }
  if (!(valid_bpc < o.check_bpc)) {
    fmt::print(stderr, "check FAILED: validation {:.3f} bits per char is not below {} (untrained: {:.2f})\n", valid_bpc,
               o.check_bpc, start_bpc);
    return 1;
  }
  fmt::print("check passed: validation {:.3f} < {} bits per char; boundaries: {} steps audited, {} rows started a "
             "document from a zero state, {} continued their own; rows alone vs batched (first {} steps): max gap {:.3g}\n",
             valid_bpc, o.check_bpc, step, fresh_rows, carried_rows, isolation_steps, worst_gap);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "char_rnn: a character-level LSTM language model trained with truncated BPTT.\n"
      "With no arguments: trains on xgrad's own C++ sources (embedded) for 1200 steps (at most 165 s),\n"
      "then prints a sample, the validation bits per character and the loss curve's path.\n"
      "--resume PATH continues a run exactly from a checkpoint; --load PATH only samples\n"
      "from a checkpoint's model (no training)."};
  app.add_option("--data", o.data, "text file or directory to train on (default: the embedded xgrad sources; "
                                    "--data <repo>/xgrad --ext .hpp .cpp gives the same text)")
      ->check(CLI::ExistingPath);
  app.add_option("--ext", o.extensions, "with a --data directory: only files ending in these (default: every text file)");
  app.add_option("--hidden", o.hidden, "LSTM hidden size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--layers", o.layers, "LSTM layers")->capture_default_str()->check(cli::count(16));
  app.add_option("--embed", o.embed, "character embedding size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--dropout", o.dropout, "dropout between LSTM layers")->capture_default_str()->check(cli::real(0, false, 1, true));
  app.add_option("--seq-len", o.seq_len, "truncated BPTT window (chars per chunk)")->capture_default_str()->check(cli::count(100000));
  app.add_option("--batch", o.batch, "parallel streams B")->capture_default_str()->check(cli::count(100000));
  app.add_option("--steps", o.steps, "optimizer steps (one chunk of B x seq-len chars each), in total when resuming")
      ->capture_default_str()
      ->check(cli::count());
  app.add_option("--time-budget", o.time_budget, "stop training after this many seconds (0: no limit)")
      ->capture_default_str()
      ->check(cli::non_negative());
  app.add_option("--optim", o.optim, "adam or rmsprop")->capture_default_str()->check(CLI::IsMember({"adam", "rmsprop"}));
  app.add_option("--lr", o.lr, "learning rate")->capture_default_str()->check(cli::positive());
  app.add_option("--clip", o.clip, "clip the gradient norm to this")->capture_default_str()->check(cli::positive());
  app.add_option("--valid-fraction", o.valid_fraction, "the corpus' last fraction held out for validation")
      ->capture_default_str()
      ->check(cli::real(0, true, 1, true));
  app.add_option("--valid-chars", o.valid_chars, "score at most this many held-out chars (0: all)")
      ->capture_default_str()
      ->check(cli::integer(0, std::numeric_limits<std::int64_t>::max()));
  app.add_option("--eval-every", o.eval_every, "validate every N steps (0: only at the end)")
      ->capture_default_str()
      ->check(cli::integer(0, cli::kMaxSteps));
  app.add_option("--checkpoint-every", o.checkpoint_every, "write checkpoint_step<N>.npz every N steps (0: never)")
      ->capture_default_str()
      ->check(cli::integer(0, cli::kMaxSteps));
  auto* resume = app.add_option("--resume", o.resume, "continue training from this checkpoint (same --data; the model, batch, "
                                                     "seq-len, optimizer and learning rate come from the checkpoint)")
                     ->check(CLI::ExistingFile);
  app.add_option("--load", o.load, "sample from this checkpoint's model without training")
      ->check(CLI::ExistingFile)
      ->excludes(resume);
  app.add_option("--sample", o.sample, "chars to sample at the end")->capture_default_str()->check(cli::integer(0, 10000000));
  // Above ~10 every character is about equally likely: a larger value is a typo.
  app.add_option("--temperature", o.temperature, "sampling temperature (0: always the most likely char)")
      ->capture_default_str()
      ->check(cli::real_in(0, 100));
  app.add_option("--top-k", o.top_k, "sample among the k most likely chars only (0: all)")
      ->capture_default_str()
      ->check(cli::integer(0, 256));
  app.add_option("--prime", o.prime, "text the sample starts with (default: a new line); every char must be in the vocabulary");
  app.add_option("--seed", o.seed, "random seed (initialisation; the sampler uses seed + 1)")
      ->capture_default_str()
      ->check(cli::seed());
  app.add_option("--threads", o.threads, "BLAS threads (the per-step GEMMs are small: 1 is usually fastest)")
      ->capture_default_str()
      ->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", o.out, "output directory")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--check", o.check, "exit 1 unless the final validation bpc is below --check-bpc (smoke test)");
  app.add_option("--check-bpc", o.check_bpc, "threshold for --check")->capture_default_str()->check(cli::positive());
  app.add_flag("--distributed", o.distributed, "data-parallel over MPI: run under mpirun; --batch streams are split "
                                               "between the ranks");
  app.add_flag("--documents", o.documents, "with a --data directory: each file is a document, trained as a sequence of "
                                           "its own (padded batches with lengths; the state never crosses documents)");
  app.add_option("--grad-penalty", o.grad_penalty, "add LAMBDA * ||dL/d(input embeddings)||^2 to each chunk's loss L "
                                                   "(mean nats per char); its gradient is a double backward (0: off)")
      ->capture_default_str()
      ->check(cli::non_negative());
  return cli::run(app, "char_rnn", argc, argv, [&] {
    if (o.documents) {
      cli::require(o.grad_penalty == 0, "--grad-penalty", "is not supported with --documents");
      cli::require(!o.data.empty() && fs::is_directory(o.data), "--documents", "needs --data DIR, a directory with one document per file");
      cli::require(o.resume.empty() && o.load.empty() && !o.distributed, "--documents",
                   "trains from scratch on one process: --resume, --load and --distributed are not supported with it");
      return run_documents(o);
    }
#ifdef XGRAD_WITH_MPI
    if (o.distributed) {
      cli::require(o.load.empty(), "--distributed", "trains; --load only samples: give one of them");
      dist::init(&argc, &argv);
      const int rc = run(o, app);
      dist::finalize();
      return rc;
    }
#else
    cli::require(!o.distributed, "--distributed", "this xgrad was built without MPI (apt-get install -y libopenmpi-dev)");
#endif
    return run(o, app);
  });
}
