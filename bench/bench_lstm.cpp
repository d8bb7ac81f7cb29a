// The LSTM language-model workloads: charlstm, biglstm and bptt_mem. The model is what a
// user writes: Embedding -> nn::LSTM -> Linear -> cross_entropy, trained with truncated
// BPTT (the carried state detached every step).
#include <sys/wait.h>
#include <unistd.h>

#include <cblas.h>

#include <functional>

#include "bench_common.hpp"
#include "xgrad/backend/detail/blas.hpp"  // detail::gemm, timed next to cblas_sgemm
#include "xgrad/backend/detail/packed_gemm.hpp"

namespace bench {

namespace {

using namespace xg;

constexpr std::uint64_t kSeed = 1234;

struct LMConfig {
  std::int64_t V, E, H, layers, B, T;
};

// The 2-layer LSTM of torch_ref.py's LoopLSTM, from public ops only, as a user writes
// it: per step and layer x @ W_ih + h @ W_hh + b, chunk, gates, products. `hoisted`:
// the first layer's input projection of the whole sequence computed once before the
// loop and select()ed per step, as every guide recommends.
class LoopLSTM : public nn::Module {
 public:
  LoopLSTM(std::int64_t input, std::int64_t hidden, std::int64_t layers, bool hoisted)
      : H(hidden), L(layers), hoisted(hoisted) {
    const double k = 1.0 / std::sqrt(double(hidden));
    for (std::int64_t l = 0; l < layers; ++l) {
      const std::int64_t in = l == 0 ? input : hidden;
      const std::string s = std::to_string(l);
      w_ih.push_back(register_parameter("w_ih" + s, uniform(Shape{in, 4 * hidden}, -k, k)));
      w_hh.push_back(register_parameter("w_hh" + s, uniform(Shape{hidden, 4 * hidden}, -k, k)));
      bias.push_back(register_parameter("b" + s, uniform(Shape{4 * hidden}, -k, k)));
    }
  }
  // xs [T, B, in], state h, c [layers, B, H] (or undefined: zeros) ->
  // output [T, B, H] and the final state.
  std::pair<Tensor, nn::LSTMState> forward(const Tensor& xs, const nn::LSTMState& state) const {
    const std::int64_t T = xs.size(0), B = xs.size(1);
    std::vector<Tensor> h, c;
    for (std::int64_t l = 0; l < L; ++l) {
      h.push_back(state.h.defined() ? select(state.h, 0, l) : zeros(Shape{B, H}));
      c.push_back(state.c.defined() ? select(state.c, 0, l) : zeros(Shape{B, H}));
    }
    Tensor xp;
    if (hoisted) xp = add(matmul(xs, w_ih[0]), bias[0]);  // [T, B, 4H]
    std::vector<Tensor> outs;
    for (std::int64_t t = 0; t < T; ++t) {
      Tensor inp = hoisted ? Tensor() : select(xs, 0, t);
      for (std::int64_t l = 0; l < L; ++l) {
        const Tensor gates = hoisted && l == 0 ? add(select(xp, 0, t), matmul(h[0], w_hh[0]))
                                               : add(add(matmul(inp, w_ih[l]), matmul(h[l], w_hh[l])), bias[l]);
        const std::vector<Tensor> g = chunk(gates, 4, 1);
        const Tensor i = sigmoid(g[0]), f = sigmoid(g[1]), gg = tanh(g[2]), o = sigmoid(g[3]);
        c[l] = add(mul(f, c[l]), mul(i, gg));
        h[l] = mul(o, tanh(c[l]));
        inp = h[l];
      }
      outs.push_back(inp);
    }
    return {stack(outs, 0), nn::LSTMState{stack(h, 0), stack(c, 0)}};
  }

  std::int64_t H, L;
  bool hoisted;
  std::vector<Tensor> w_ih, w_hh, bias;
};

class CharLM : public nn::Module {
 public:
  // variant: "" / "fused" / "perstep": nn::LSTM; "loop" / "hoisted": LoopLSTM.
  CharLM(const LMConfig& c, const std::string& variant) : cfg(c) {
    emb = register_module("emb", std::make_shared<nn::Embedding>(c.V, c.E));
    if (variant == "loop" || variant == "hoisted") {
      loop = register_module("rnn", std::make_shared<LoopLSTM>(c.E, c.H, c.layers, variant == "hoisted"));
    } else {
      rnn = register_module("rnn", std::make_shared<nn::LSTM>(
                                       nn::LSTMOptions{.input_size = c.E, .hidden_size = c.H, .num_layers = c.layers}));
    }
    fc = register_module("fc", std::make_shared<nn::Linear>(c.H, c.V));
  }
  // x [T, B] int64 -> logits [T*B, V] and the final state; lengths int64 [B] or undefined
  // (nn::LSTM's lengths: the fused variants only).
  std::pair<Tensor, nn::LSTMState> forward(const Tensor& x, const nn::LSTMState& state,
                                           const Tensor& lengths = Tensor()) const {
    Tensor out;
    nn::LSTMState st;
    if (loop) {
      if (lengths.defined()) throw Error("charlstm: --lengths runs nn::LSTM (the fused variant), not --variant loop");
      std::tie(out, st) = loop->forward((*emb)(x), state);
    } else {
      auto [o, s] = (*rnn)((*emb)(x), state, lengths);
      out = o;
      st = s;
    }
    return {(*fc)(reshape(out, Shape{cfg.T * cfg.B, cfg.H})), st};
  }

  LMConfig cfg;
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<nn::LSTM> rnn;
  std::shared_ptr<LoopLSTM> loop;
  std::shared_ptr<nn::Linear> fc;
};

// Matmul FLOPs of one forward (as torch_ref.py's lstm_lm_flops).
double lm_forward_flops(const LMConfig& c) {
  double f = 0;
  for (std::int64_t l = 0; l < c.layers; ++l) {
    const std::int64_t in = l == 0 ? c.E : c.H;
    f += double(c.T) * 2 * c.B * (in + c.H) * 4 * c.H;
  }
  return f + 2.0 * c.B * c.T * c.H * c.V;
}

// Token batches: x [T, B] and targets y [T, B] (the next token), uniform random ids.
std::vector<std::pair<Tensor, Tensor>> lm_batches(const LMConfig& c, int n, std::uint64_t seed) {
  Generator gen(seed);
  std::vector<std::pair<Tensor, Tensor>> out;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int64_t> xs(static_cast<std::size_t>(c.T * c.B)), ys(xs.size());
    for (std::int64_t b = 0; b < c.B; ++b) {
      std::int64_t prev = static_cast<std::int64_t>(gen.uniform() * double(c.V)) % c.V;
      for (std::int64_t t = 0; t < c.T; ++t) {
        const std::int64_t next = static_cast<std::int64_t>(gen.uniform() * double(c.V)) % c.V;
        xs[static_cast<std::size_t>(t * c.B + b)] = prev;
        ys[static_cast<std::size_t>(t * c.B + b)] = next;
        prev = next;
      }
    }
    out.emplace_back(from_vector(xs, Shape{c.T, c.B}), from_vector(ys, Shape{c.T * c.B}));
  }
  return out;
}

enum class Opt { adam, sgd };

// after_step (when set) runs after every timed step, outside the timing.
Result train_lm(const Args& args, const char* name, const LMConfig& c, Opt which, double lr, double clip,
                int default_steps, const std::function<void()>& after_step = {}) {
  manual_seed(kSeed);
  CharLM model(c, args.variant);
  // "perstep": the per-step path nn::LSTM takes while recording introspection (one fused
  // gate node per step), with nothing recorded: the engine before lstm_sequence.
  const bool perstep = args.variant == "perstep";
  if (perstep) model.rnn->set_record(true, nn::RecordOptions{false, false, false});
  const std::vector<Tensor> params = model.parameters();
  std::unique_ptr<optim::Optimizer> opt;
  if (which == Opt::adam) {
    opt = std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = lr});
  } else {
    opt = std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = lr});
  }
  const int steps = args.steps_or(default_steps);
  auto batches = lm_batches(c, args.warmup + steps, kSeed + 1);
  // --lengths uniform: row b of a batch is a sequence of length uniform in [T/2, T]; its
  // targets past the length are ignore_index, so the loss (a mean) covers the real tokens.
  const bool with_lengths = args.lengths == "uniform";
  std::vector<Tensor> lengths(batches.size());
  double real_tokens = 0;
  if (with_lengths) {
    Generator gen(kSeed + 2);
    const std::int64_t lo = c.T / 2;
    for (std::size_t i = 0; i < batches.size(); ++i) {
      std::vector<std::int64_t> lv(static_cast<std::size_t>(c.B));
      std::vector<std::int64_t> ys = batches[i].second.to_vector<std::int64_t>();
      for (std::int64_t b = 0; b < c.B; ++b) {
        const std::int64_t len = std::min(c.T, lo + static_cast<std::int64_t>(gen.uniform() * double(c.T - lo + 1)));
        lv[static_cast<std::size_t>(b)] = len;
        real_tokens += double(len);
        for (std::int64_t t = len; t < c.T; ++t) ys[static_cast<std::size_t>(t * c.B + b)] = -100;
      }
      lengths[i] = from_vector(lv);
      batches[i].second = from_vector(ys, Shape{c.T * c.B});
    }
  }
  nn::LSTMState state;
  Timings tm;
  for (int i = 0; i < args.warmup + steps; ++i) {
    const auto& [x, y] = batches[static_cast<std::size_t>(i)];
    const double t0 = now_ms();
    auto [logits, st] = model.forward(x, state, lengths[static_cast<std::size_t>(i)]);
    const Tensor loss = cross_entropy(logits, y);
    const double t1 = now_ms();
    opt->zero_grad();
    loss.backward();
    const double t2 = now_ms();
    if (clip > 0) optim::clip_grad_norm(params, clip);
    opt->step();
    state = st.detach();
    const double t3 = now_ms();
    tm.record(t0, t1, t2, t3, loss.item(), i >= args.warmup);
    if (i >= args.warmup && after_step) after_step();
  }
  Result r;
  r.workload = name;
  r.variant = (args.variant.empty() ? std::string("fused") : args.variant) + (with_lengths ? "_lengths" : "");
  r.threads = args.threads;
  tm.fill(r);
  r.tokens_per_step = double(c.B * c.T);
  if (with_lengths) r.extra["real_token_fraction"] = real_tokens / (double(c.B * c.T) * double(batches.size()));
  const double med = median(tm.tot);
  r.extra["gflops"] = 3 * lm_forward_flops(c) / 1e9 / (med / 1e3);
  r.extra["T"] = double(c.T);
  return r;
}

// GFLOP/s of a GEMM alone on the GEMMs one training step of the LSTM LM needs at best (per
// layer one input-projection GEMM, T recurrent GEMMs, and their backward products with dW_ih
// and dW_hh as one GEMM each over all steps; the output layer): cblas_sgemm, and xgrad's own
// dispatcher (detail::gemm: its tiled kernel where that beats the BLAS; the per-step
// products on a once-packed W_hh). Returns the time of one pass over all of them, ms, and
// their FLOPs (= 3x the forward's).
struct SgemmPass {
  double ms, flops;
};
SgemmPass sgemm_pass(const LMConfig& c, bool xgrad_gemm = false) {
  struct G {
    bool ta, tb;
    int M, N, K, count;
  };
  const int TB = int(c.T * c.B), B = int(c.B), H = int(c.H), G4 = int(4 * c.H), E = int(c.E), V = int(c.V);
  const int T = int(c.T);
  std::vector<G> shapes = {
      {false, true, TB, V, H, 1},     // out · W_fcᵀ
      {false, false, TB, H, V, 1},    // d out = g · W_fc
      {true, false, V, H, TB, 1},     // d W_fc
  };
  for (std::int64_t l = 0; l < c.layers; ++l) {
    const int I = l == 0 ? E : H;
    shapes.insert(shapes.end(), {
        {false, true, TB, G4, I, 1},    // x · W_ihᵀ
        {false, true, B, G4, H, T},     // h · W_hhᵀ per step
        {false, false, B, H, G4, T},    // d h per step
        {true, false, G4, H, TB, 1},    // d W_hh over all steps
        {true, false, G4, I, TB, 1},    // d W_ih
        {false, false, TB, I, G4, 1},   // d x
    });
  }
  std::vector<float> a(std::size_t(std::max(TB, G4)) * std::max({E, H, G4, TB}), 0.01f);
  std::vector<float> b(a.size(), 0.02f), cc(a.size(), 0.0f);
  double flops = 0;
  for (const G& g : shapes) flops += 2.0 * g.M * g.N * g.K * g.count;
  const double t0 = now_ms();
  for (const G& g : shapes) {
    const int lda = g.ta ? g.M : g.K, ldb = g.tb ? g.K : g.N;
    if (xgrad_gemm && g.count > 1 && !g.ta) {
      // The recurrences' per-step products: W_hh packed once, as lstm_sequence does.
      const xg::detail::PackedB<float> pb(g.tb, g.K, g.N, b.data(), ldb);
      for (int k = 0; k < g.count; ++k) pb.gemm_acc(g.M, a.data(), lda, cc.data(), g.N);
      continue;
    }
    for (int k = 0; k < g.count; ++k) {
      if (xgrad_gemm) {
        xg::detail::gemm<float>(g.ta, g.tb, g.M, g.N, g.K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, cc.data(), g.N);
      } else {
        cblas_sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans, g.tb ? CblasTrans : CblasNoTrans, g.M, g.N, g.K,
                    1.0f, a.data(), lda, b.data(), ldb, 0.0f, cc.data(), g.N);
      }
    }
  }
  return {now_ms() - t0, flops};
}

}  // namespace

Result charlstm(const Args& args) {
  return train_lm(args, "charlstm", LMConfig{96, 64, 256, 2, 32, 64}, Opt::adam, 2e-3, 5.0, 20);
}

Result biglstm(const Args& args) {
  const LMConfig c{96, 1024, 1024, 1, 64, 32};
  // One sgemm pass after every timed step: the machine is shared and noisy, so the two
  // medians come from interleaved samples of the same moments.
  std::vector<double> sg_ms, xg_ms;
  double sg_flops = 0;
  sgemm_pass(c);  // warm-up
  sgemm_pass(c, true);
  Result r = train_lm(args, "biglstm", c, Opt::sgd, 0.1, 0.0, 5, [&] {
    const SgemmPass p = sgemm_pass(c);
    sg_ms.push_back(p.ms);
    sg_flops = p.flops;
    xg_ms.push_back(sgemm_pass(c, true).ms);
  });
  const double sg = sg_flops / 1e9 / (median(sg_ms) / 1e3);
  const double xgg = sg_flops / 1e9 / (median(xg_ms) / 1e3);
  r.extra["sgemm_gflops"] = sg;
  r.extra["sgemm_ms"] = median(sg_ms);
  r.extra["sgemm_fraction"] = r.extra["gflops"] / sg;
  // The stricter yardstick: the faster of the BLAS and xgrad's own GEMM on the same shapes.
  r.extra["xgrad_gemm_gflops"] = xgg;
  r.extra["best_gemm_fraction"] = r.extra["gflops"] / std::max(sg, xgg);
  return r;
}

// One forward + backward of the charlstm model at sequence length T, in this process:
// peak RSS growth over the RSS just before the forward.
Result bptt_mem_one(const Args& args, std::int64_t T) {
  manual_seed(kSeed);
  const LMConfig c{96, 64, 256, 2, 32, T};
  CharLM model(c, args.variant);
  const bool perstep = args.variant == "perstep";
  if (perstep) model.rnn->set_record(true, nn::RecordOptions{false, false, false});
  const auto batches = lm_batches(c, 1, kSeed + 3);
  const auto& [x, y] = batches[0];
  const double rss_before = rss_now_mib();
  const double peak_before = peak_rss_mib();
  const double t0 = now_ms();
  auto [logits, st] = model.forward(x, nn::LSTMState{});
  const Tensor loss = cross_entropy(logits, y);
  const double t1 = now_ms();
  const double rss_after_fwd = rss_now_mib();
  loss.backward();
  const double t2 = now_ms();
  Result r;
  r.workload = "bptt_mem";
  r.variant = args.variant.empty() ? "fused" : args.variant;
  r.threads = args.threads;
  r.ms = {t2 - t0};
  r.tokens_per_step = double(c.B * T);
  r.extra["T"] = double(T);
  r.extra["fwd_ms"] = t1 - t0;
  r.extra["bwd_ms"] = t2 - t1;
  r.extra["loss"] = loss.item();
  r.extra["rss_before_mib"] = rss_before;
  r.extra["peak_rss_before_mib"] = peak_before;
  r.extra["rss_after_fwd_mib"] = rss_after_fwd;
  r.extra["peak_delta_mib"] = peak_rss_mib() - rss_before;
  return r;
}

// The charlstm model's loss (state from zeros, no optimizer) differentiated twice per step:
// one gradient (forward + xg::grad) and one Hessian-vector product H v = ∂/∂θ <∂L/∂θ, v>
// (forward + xg::grad with create_graph + xg::grad of <g, v>, through xg::hvp) on the same
// batch, one after the other so both see the same machine load. v is a fixed N(0, 1)
// direction per parameter. The JSON's median_ms is the H v's; grad_ms beside it, and the
// process CPU time of each (the machine is shared: wall time includes waiting).
Result hvp(const Args& args) {
  const LMConfig c{96, 64, 256, 2, 32, 64};
  const std::string variant = args.variant.empty() ? "fused" : args.variant;
  manual_seed(kSeed);
  CharLM model(c, variant);
  if (variant == "perstep") model.rnn->set_record(true, nn::RecordOptions{false, false, false});
  const std::vector<Tensor> params = model.parameters();
  Generator vgen(kSeed + 4);
  std::vector<Tensor> v;
  for (const Tensor& p : params) v.push_back(randn(p.shape(), p.dtype(), &vgen));
  const int steps = args.steps_or(10);
  const auto batches = lm_batches(c, args.warmup + steps, kSeed + 1);
  std::vector<double> grad_ms, hvp_ms, grad_cpu, hvp_cpu, gemm_ms;
  double loss_first = 0, vhv_first = 0;
  sgemm_pass(c);  // warm-up
  sgemm_pass(c, true);
  for (int i = 0; i < args.warmup + steps; ++i) {
    const Tensor& x = batches[static_cast<std::size_t>(i)].first;
    const Tensor& y = batches[static_cast<std::size_t>(i)].second;
    const auto loss_fn = [&] { return cross_entropy(model.forward(x, nn::LSTMState{}).first, y); };
    const double t0 = now_ms(), c0 = cpu_ms();
    const std::vector<Tensor> g = grad({loss_fn()}, params);
    const double t1 = now_ms(), c1 = cpu_ms();
    const HvpResult h = xg::hvp(loss_fn, params, v);
    const double t2 = now_ms(), c2 = cpu_ms();
    if (g.size() != params.size() || h.hvp.size() != params.size()) throw Error("hvp: wrong number of results");
    if (i == 0) {
      loss_first = h.value.item();
      for (std::size_t k = 0; k < v.size(); ++k) {
        if (h.hvp[k].defined()) vhv_first += sum(mul(v[k], h.hvp[k])).item();
      }
    }
    if (i >= args.warmup) {
      grad_ms.push_back(t1 - t0);
      hvp_ms.push_back(t2 - t1);
      grad_cpu.push_back(c1 - c0);
      hvp_cpu.push_back(c2 - c1);
      // The gradient's GEMMs alone, best of the BLAS and xgrad's dispatcher, at the same moment.
      gemm_ms.push_back(std::min(sgemm_pass(c).ms, sgemm_pass(c, true).ms));
    }
  }
  Result r;
  r.workload = "hvp";
  r.variant = variant;
  r.threads = args.threads;
  r.ms = hvp_ms;
  r.tokens_per_step = double(c.B * c.T);
  r.extra["T"] = double(c.T);
  r.extra["grad_ms"] = median(grad_ms);
  r.extra["hvp_ms"] = median(hvp_ms);
  r.extra["hvp_over_grad"] = median(hvp_ms) / median(grad_ms);
  r.extra["grad_cpu_ms"] = median(grad_cpu);
  r.extra["hvp_cpu_ms"] = median(hvp_cpu);
  r.extra["hvp_over_grad_cpu"] = median(hvp_cpu) / median(grad_cpu);
  // The GEMM floor. Every GEMM of the gradient, C = A·B, has a directional derivative
  // A'·B + A·B' that an exact H v needs as well (forward-over-reverse, or reverse-over-reverse
  // in the other order: the same products), so H v's GEMMs are at least 3x the gradient's.
  r.extra["grad_gemm_ms"] = median(gemm_ms);
  r.extra["hvp_gemm_floor_ms"] = 3 * median(gemm_ms);
  r.extra["hvp_floor_over_grad"] = 3 * median(gemm_ms) / median(grad_ms);
  r.extra["loss_first"] = loss_first;
  r.extra["vhv_first"] = vhv_first;  // <v, H v> on the first batch: a sanity figure
  return r;
}

Result bptt_mem(const Args& args) {
  if (args.T > 0) return bptt_mem_one(args, args.T);
  // Every T in a fresh process, so each peak RSS is clean.
  for (int T : {64, 128, 256, 512}) {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string t = std::to_string(T), th = std::to_string(args.threads);
      const std::string v = args.variant.empty() ? "fused" : args.variant;
      execl("/proc/self/exe", "xgrad_bench", "bptt_mem", "--T", t.c_str(), "--threads", th.c_str(), "--variant",
            v.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw Error(fmt::format("bptt_mem: T={} failed", T));
  }
  return {};
}

}  // namespace bench
