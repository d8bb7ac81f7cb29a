#pragma once
// What char_rnn and cell_viz share: the model, how its configuration travels inside a
// checkpoint, and the corpus (the embedded one or --data).
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

// embed_corpus.py generates these from xgrad/**/*.hpp, *.cpp at build time.
namespace char_rnn {
extern const char kCorpusData[];
extern const long kCorpusSize;
extern const int kCorpusFiles;
}  // namespace char_rnn

namespace char_rnn {

inline std::string_view embedded_corpus() { return {kCorpusData, static_cast<std::size_t>(kCorpusSize)}; }

// --data PATH (a file, or a directory read recursively, optionally only files ending in one
// of `extensions`), or the embedded corpus when `data` is empty. `what` receives a
// one-line description for the log.
inline std::string load_corpus(const std::string& data, const std::vector<std::string>& extensions,
                               std::string* what) {
  if (data.empty()) {
    *what = fmt::format("embedded xgrad sources ({} files, {} bytes)", kCorpusFiles, kCorpusSize);
    return std::string(embedded_corpus());
  }
  std::string text = xg::training::read_text(data, {.extensions = extensions});
  *what = fmt::format("{} ({} bytes)", data, text.size());
  return text;
}

// FNV-1a: a checkpoint records the corpus it was trained on, so --resume on other data is
// caught instead of silently continuing at a meaningless position.
inline std::int64_t corpus_hash(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return static_cast<std::int64_t>(h);
}

inline constexpr double kLn2 = 0.69314718055994530942;

// The sizes that define the model's parameters: saved with every checkpoint, so sampling
// and cell_viz rebuild the right model from the file alone.
struct ModelConfig {
  xg::training::CharVocab vocab;
  std::int64_t embed = 64;
  std::int64_t hidden = 256;
  std::int64_t layers = 2;
  double dropout = 0.0;

  void save(xg::training::Extras& extras) const {
    extras.set_string("vocab", vocab.to_string());
    extras.set_int("model.embed", embed);
    extras.set_int("model.hidden", hidden);
    extras.set_int("model.layers", layers);
    extras.set_double("model.dropout", dropout);
  }
  static ModelConfig load(const xg::training::Extras& extras) {
    ModelConfig c;
    c.vocab = xg::training::CharVocab::from_string(extras.get_string("vocab"));
    c.embed = extras.get_int("model.embed");
    c.hidden = extras.get_int("model.hidden");
    c.layers = extras.get_int("model.layers");
    c.dropout = extras.get_double("model.dropout");
    c.validate();
    return c;
  }
  void validate() const {
    if (vocab.size() < 2) throw xg::Error(fmt::format("the vocabulary has {} chars; need 2 or more", vocab.size()));
    if (embed < 1 || hidden < 1 || layers < 1)
      throw xg::Error(fmt::format("--embed {}, --hidden {}, --layers {}: each must be >= 1", embed, hidden, layers));
    if (!(dropout >= 0.0 && dropout < 1.0)) throw xg::Error(fmt::format("--dropout {} not in [0, 1)", dropout));
  }
};

// Embedding -> multi-layer LSTM -> Linear: Karpathy's char-rnn, with a learned embedding
// in place of the one-hot input (the same model, the first layer's input GEMM made small).
class CharRNN : public xg::nn::Module {
 public:
  explicit CharRNN(const ModelConfig& cfg) {
    const std::int64_t V = cfg.vocab.size();
    embedding = register_module("embedding", std::make_shared<xg::nn::Embedding>(V, cfg.embed));
    lstm = register_module("lstm", std::make_shared<xg::nn::LSTM>(xg::nn::LSTMOptions{
                                       .input_size = cfg.embed,
                                       .hidden_size = cfg.hidden,
                                       .num_layers = cfg.layers,
                                       .batch_first = true,  // ids come as [B, T] streams
                                       .dropout = cfg.dropout,
                                   }));
    head = register_module("head", std::make_shared<xg::nn::Linear>(cfg.hidden, V));
  }

  // ids int64 [B, T], state {h, c} each [L, B, H] (undefined: zeros)
  // -> logits [B*T, V] (row b*T + t predicts the char after ids[b, t]), state after step T.
  std::pair<xg::Tensor, xg::nn::LSTMState> forward(const xg::Tensor& ids, const xg::nn::LSTMState& state) const {
    return forward_embedded((*embedding)(ids), state);
  }
  // The same from the embedded ids x [B, T, E] (--grad-penalty differentiates the loss
  // with respect to them).
  std::pair<xg::Tensor, xg::nn::LSTMState> forward_embedded(const xg::Tensor& x, const xg::nn::LSTMState& state) const {
    const std::int64_t B = x.size(0), T = x.size(1);
    auto [out, next] = (*lstm)(x, state);  // out [B, T, H]
    xg::Tensor logits = (*head)(xg::reshape(out, {B * T, lstm->hidden_size()}));  // [B*T, V]
    return {logits, next};
  }

  // A padded batch: ids int64 [B, T], lengths int64 [B] (each in [1, T]) -> logits
  // [B, T, V] (rows past a length are the head's bias: the LSTM's outputs there are zero),
  // and the state after each row's last real step (--documents).
  std::pair<xg::Tensor, xg::nn::LSTMState> forward(const xg::Tensor& ids, const xg::nn::LSTMState& state,
                                                   const xg::Tensor& lengths) const {
    const std::int64_t B = ids.size(0), T = ids.size(1);
    auto [out, next] = (*lstm)((*embedding)(ids), state, lengths);  // out [B, T, H]
    xg::Tensor logits = (*head)(xg::reshape(out, {B * T, lstm->hidden_size()}));
    return {xg::reshape(logits, {B, T, -1}), next};
  }

  std::shared_ptr<xg::nn::Embedding> embedding;
  std::shared_ptr<xg::nn::LSTM> lstm;
  std::shared_ptr<xg::nn::Linear> head;
};

}  // namespace char_rnn
