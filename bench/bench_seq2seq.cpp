// seq2seq_attn: an nn::LSTM encoder and an explicit decoder loop over nn::LSTMCell with
// Bahdanau attention (nn::AdditiveAttention) at every step, teacher forcing; the task is
// reversing the source. As torch_ref.py's make_seq2seq (variant fused).
#include "bench_common.hpp"

namespace bench {

namespace {

using namespace xg;

constexpr std::int64_t V = 40, E = 64, H = 128, A = 128, S = 20, T = 20, B = 32;
constexpr std::int64_t BOS = 0;

class Seq2Seq : public nn::Module {
 public:
  Seq2Seq() {
    src_emb = register_module("src_emb", std::make_shared<nn::Embedding>(V, E));
    tgt_emb = register_module("tgt_emb", std::make_shared<nn::Embedding>(V, E));
    enc = register_module("enc", std::make_shared<nn::LSTM>(E, H));
    dec = register_module("dec", std::make_shared<nn::LSTMCell>(E + H, H));
    // score = v · tanh(W_a h + U_a k + b): the bias of U_a folded into the query side.
    attn = register_module("attn", std::make_shared<nn::AdditiveAttention>(nn::AdditiveAttentionOptions{
                                       .query_size = H, .key_size = H, .hidden_size = A, .bias = true}));
    out = register_module("out", std::make_shared<nn::Linear>(2 * H, V));
  }

  // src, tgt_in [S or T, B] int64 -> logits [T*B, V].
  Tensor forward(const Tensor& src, const Tensor& tgt_in) const {
    auto [enc_out, state] = (*enc)((*src_emb)(src));                   // [S, B, H]
    const Tensor keys_bf = transpose(enc_out, 0, 1);                   // [B, S, H]
    const nn::AdditiveAttention::Keys keys = attn->precompute_keys(keys_bf);
    nn::LSTMState st{select(state.h, 0, 0), select(state.c, 0, 0)};  // [B, H]
    const Tensor emb = (*tgt_emb)(tgt_in);                             // [T, B, E]
    std::vector<Tensor> logits;
    logits.reserve(T);
    for (std::int64_t t = 0; t < T; ++t) {
      const Tensor ctx = (*attn)(st.h, keys).context;  // [B, H]
      st = (*dec)(concat({select(emb, 0, t), ctx}, 1), st);
      logits.push_back((*out)(concat({st.h, ctx}, 1)));
    }
    return concat(logits, 0);  // [T*B, V], step-major like the reference's stack + reshape
  }

  std::shared_ptr<nn::Embedding> src_emb, tgt_emb;
  std::shared_ptr<nn::LSTM> enc;
  std::shared_ptr<nn::LSTMCell> dec;
  std::shared_ptr<nn::AdditiveAttention> attn;
  std::shared_ptr<nn::Linear> out;
};

}  // namespace

Result seq2seq_attn(const Args& args) {
  manual_seed(1234);
  Seq2Seq model;
  const std::vector<Tensor> params = model.parameters();
  optim::Adam opt(params, optim::AdamOptions{.lr = 1e-3});
  const int steps = args.steps_or(20);
  const int n = args.warmup + steps;
  Generator gen(1236);
  struct Batch {
    Tensor src, tgt_in, tgt;
  };
  std::vector<Batch> batches;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int64_t> src(static_cast<std::size_t>(S * B)), tin(src.size()), tgt(src.size());
    for (auto& v : src) v = 1 + static_cast<std::int64_t>(gen.uniform() * (V - 1)) % (V - 1);
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t b = 0; b < B; ++b) {
        const auto at = static_cast<std::size_t>(t * B + b);
        tgt[at] = src[static_cast<std::size_t>((S - 1 - t) * B + b)];  // reversed source
        tin[at] = t == 0 ? BOS : src[static_cast<std::size_t>((S - t) * B + b)];
      }
    }
    batches.push_back(
        {from_vector(src, Shape{S, B}), from_vector(tin, Shape{T, B}), from_vector(tgt, Shape{T * B})});
  }
  Timings tm;
  for (int i = 0; i < n; ++i) {
    const Batch& b = batches[static_cast<std::size_t>(i)];
    const double t0 = now_ms();
    const Tensor loss = cross_entropy(model.forward(b.src, b.tgt_in), b.tgt);
    const double t1 = now_ms();
    opt.zero_grad();
    loss.backward();
    const double t2 = now_ms();
    opt.step();
    const double t3 = now_ms();
    tm.record(t0, t1, t2, t3, loss.item(), i >= args.warmup);
  }
  const double enc = double(S) * 2 * B * (E + H) * 4 * H + 2.0 * S * B * H * A;
  const double dec_step =
      2.0 * B * (E + H + H) * 4 * H + 2.0 * B * H * A + 2.0 * S * B * A + 2.0 * S * B * H + 2.0 * B * 2 * H * V;
  Result r;
  r.workload = "seq2seq_attn";
  r.variant = "fused";
  r.threads = args.threads;
  tm.fill(r);
  r.tokens_per_step = double(B * T);
  const double med = median(tm.tot);
  r.extra["gflops"] = 3 * (enc + T * dec_step) / 1e9 / (med / 1e3);
  r.extra["T"] = T;
  return r;
}

}  // namespace bench
