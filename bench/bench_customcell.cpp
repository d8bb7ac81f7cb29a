// customcell: a user's own recurrent cells, written from public ops, against the built-in
// module of the same family. One layer, I = H, T = 64, forward + backward of mean(output);
// sizes small (H 64, B 8), medium (H 128, B 16), large (H 256, B 32). One JSON line per cell:
//   lstm_loop     per step x_t W_ih + h W_hh + b, chunk, gates, products
//   lstm_hoisted  x W_ih + b for the whole sequence before the loop, select()ed per step
//   peephole      lstm_loop with c feeding the i, f (c_{t-1}) and o (c_t) gates
//   gru_loop      PyTorch's GRU equations from ops
//   nn_lstm, nn_gru  the built-in modules
// The same cells in PyTorch (eager and TorchScript): bench/torch_customcell.py.
// The LSTM rows also carry gemm_floor_ms: the same GEMMs alone (x_gemm_floor = cpu_ms over it).
#include <time.h>

#include <cmath>

#include "bench_common.hpp"
#include "xgrad/backend/detail/blas.hpp"  // detail::gemm, for the GEMM floor
#include "xgrad/backend/detail/packed_gemm.hpp"

namespace bench {

namespace {

using namespace xg;

constexpr std::uint64_t kSeed = 1234;

struct Size {
  std::int64_t H, B;
};

Size size_of(const std::string& s) {
  if (s == "small") return {64, 8};
  if (s == "medium") return {128, 16};
  if (s == "large") return {256, 32};
  throw Error(fmt::format("customcell: --size must be small, medium or large, got '{}'", s));
}

// This thread's CPU time: on a loaded machine the wall clock also counts the time the
// scheduler gave to others; both go in the JSON.
double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
}

Tensor param(const Shape& s, double k) { return uniform(s, -k, k).requires_grad_(); }

// xs [T, B, H] -> the stacked h [T, B, H].
struct LstmFromOps {
  Tensor w_ih, w_hh, b, p_i, p_f, p_o;
  bool hoisted = false, peephole = false;
  LstmFromOps(std::int64_t H, bool hoisted, bool peephole) : hoisted(hoisted), peephole(peephole) {
    const double k = 1.0 / std::sqrt(double(H));
    w_ih = param({H, 4 * H}, k);
    w_hh = param({H, 4 * H}, k);
    b = param({4 * H}, k);
    if (peephole) {
      p_i = param({H}, k);
      p_f = param({H}, k);
      p_o = param({H}, k);
    }
  }
  std::vector<Tensor> params() const {
    std::vector<Tensor> p{w_ih, w_hh, b};
    if (peephole) p.insert(p.end(), {p_i, p_f, p_o});
    return p;
  }
  Tensor forward(const Tensor& xs) const {
    const std::int64_t T = xs.size(0), B = xs.size(1), H = w_hh.size(0);
    Tensor h = zeros({B, H}), c = zeros({B, H});
    Tensor xp;
    if (hoisted) xp = add(matmul(xs, w_ih), b);
    std::vector<Tensor> outs;
    for (std::int64_t t = 0; t < T; ++t) {
      const Tensor gates = hoisted ? add(select(xp, 0, t), matmul(h, w_hh))
                                   : add(add(matmul(select(xs, 0, t), w_ih), matmul(h, w_hh)), b);
      const std::vector<Tensor> g = chunk(gates, 4, 1);
      Tensor i, f, o;
      if (peephole) {
        i = sigmoid(add(g[0], mul(c, p_i)));
        f = sigmoid(add(g[1], mul(c, p_f)));
      } else {
        i = sigmoid(g[0]);
        f = sigmoid(g[1]);
      }
      c = add(mul(f, c), mul(i, tanh(g[2])));
      o = peephole ? sigmoid(add(g[3], mul(c, p_o))) : sigmoid(g[3]);
      h = mul(o, tanh(c));
      outs.push_back(h);
    }
    return stack(outs, 0);
  }
};

// PyTorch's GRU: r, z = σ(x W_{r,z} + b_i + h U_{r,z} + b_h); n = tanh(x W_n + b_in + r ⊙ (h U_n + b_hn));
// h' = (1 - z) ⊙ n + z ⊙ h.
struct GruFromOps {
  Tensor w_ih, w_hh, b_ih, b_hh;
  explicit GruFromOps(std::int64_t H) {
    const double k = 1.0 / std::sqrt(double(H));
    w_ih = param({H, 3 * H}, k);
    w_hh = param({H, 3 * H}, k);
    b_ih = param({3 * H}, k);
    b_hh = param({3 * H}, k);
  }
  std::vector<Tensor> params() const { return {w_ih, w_hh, b_ih, b_hh}; }
  Tensor forward(const Tensor& xs) const {
    const std::int64_t T = xs.size(0), B = xs.size(1), H = w_hh.size(0);
    Tensor h = zeros({B, H});
    std::vector<Tensor> outs;
    for (std::int64_t t = 0; t < T; ++t) {
      const std::vector<Tensor> gi = chunk(add(matmul(select(xs, 0, t), w_ih), b_ih), 3, 1);
      const std::vector<Tensor> gh = chunk(add(matmul(h, w_hh), b_hh), 3, 1);
      const Tensor r = sigmoid(add(gi[0], gh[0]));
      const Tensor z = sigmoid(add(gi[1], gh[1]));
      const Tensor n = tanh(add(gi[2], mul(r, gh[2])));
      h = add(n, mul(z, sub(h, n)));  // (1 - z) n + z h
      outs.push_back(h);
    }
    return stack(outs, 0);
  }
};

// The GEMMs of one forward + backward of the LSTM from ops (the loop, or hoisted: one
// x W_ih for the whole sequence), alone and as xgrad runs them: the per-step products on
// W_ih / W_hh packed once (the packed-parameter cache), the weight gradients as one product
// over all T * B rows (GradSlots::set_product). nn::LSTM runs the hoisted set. Median ms.
double lstm_gemm_floor_ms(const Size& sz, std::int64_t T, bool hoisted, int reps) {
  const std::int64_t B = sz.B, H = sz.H, G = 4 * H, TB = T * B;
  std::vector<float> x(std::size_t(TB * H), 0.01f), w(std::size_t(H * G), 0.02f), g(std::size_t(TB * G), 0.03f);
  std::vector<float> out(std::size_t(TB * G), 0.0f), dw(std::size_t(H * G), 0.0f);
  std::vector<double> ms;
  for (int r = 0; r < reps + 1; ++r) {
    const double t0 = cpu_ms();
    const detail::PackedB<float> w_fwd(false, H, G, w.data(), G);  // h · W
    const detail::PackedB<float> w_bwd(true, G, H, w.data(), G);   // g · Wᵀ
    if (hoisted) {
      detail::gemm<float>(false, false, TB, G, H, 1.0f, x.data(), H, w.data(), G, 0.0f, out.data(), G);
    } else {
      for (std::int64_t t = 0; t < T; ++t) w_fwd.gemm_acc(B, x.data() + t * B * H, H, out.data() + t * B * G, G);
    }
    for (std::int64_t t = 0; t < T; ++t) w_fwd.gemm_acc(B, x.data() + t * B * H, H, out.data() + t * B * G, G);
    for (std::int64_t t = 1; t < T; ++t) w_bwd.gemm_acc(B, g.data() + t * B * G, G, x.data() + t * B * H, H);
    // d W_ih and d W_hh: [H, G] = Xᵀ G over all rows.
    for (int k = 0; k < 2; ++k) {
      detail::gemm<float>(true, false, H, G, TB, 1.0f, x.data(), H, g.data(), G, 0.0f, dw.data(), G);
    }
    if (r > 0) ms.push_back(cpu_ms() - t0);
  }
  return median(ms);
}

Result time_cell(const Args& args, const std::string& name, const Size& sz,
                 const std::function<Tensor(const Tensor&)>& forward, const std::vector<Tensor>& params) {
  constexpr std::int64_t T = 64;
  const Tensor xs = randn({T, sz.B, sz.H});
  std::vector<double> ms, cpu;
  double loss = 0;
  const int steps = args.steps_or(12);
  for (int i = 0; i < args.warmup + steps; ++i) {
    for (Tensor p : params) p.zero_grad();
    const double t0 = now_ms(), c0 = cpu_ms();
    const Tensor out = forward(xs);
    const Tensor l = mean(out);
    l.backward();
    const double t1 = now_ms(), c1 = cpu_ms();
    loss = l.item();
    if (i >= args.warmup) {
      ms.push_back(t1 - t0);
      cpu.push_back(c1 - c0);
    }
  }
  Result r;
  r.workload = "customcell";
  r.variant = name;
  r.threads = args.threads;
  r.ms = ms;
  r.tokens_per_step = double(T * sz.B);
  r.extra["H"] = double(sz.H);
  r.extra["B"] = double(sz.B);
  r.extra["T"] = double(T);
  r.extra["loss"] = loss;
  r.extra["cpu_ms"] = median(cpu);
  return r;
}

}  // namespace

Result customcell(const Args& args) {
  const std::string size = args.size.empty() ? "medium" : args.size;
  const Size sz = size_of(size);
  manual_seed(kSeed);
  std::map<std::string, double> builtin;
  std::vector<Result> rows;
  const auto run = [&](const std::string& name, const std::function<Tensor(const Tensor&)>& f,
                       const std::vector<Tensor>& params) {
    if (!args.variant.empty() && args.variant != name) return;
    Result r = time_cell(args, name, sz, f, params);
    r.extra_str["size"] = size;
    rows.push_back(r);
  };
  nn::LSTM lstm(nn::LSTMOptions{.input_size = sz.H, .hidden_size = sz.H});
  nn::GRU gru(nn::GRUOptions{.input_size = sz.H, .hidden_size = sz.H});
  const LstmFromOps loop(sz.H, false, false), hoisted(sz.H, true, false), peephole(sz.H, false, true);
  const GruFromOps gru_ops(sz.H);
  run("nn_lstm", [&](const Tensor& x) { return lstm(x).output; }, lstm.parameters());
  run("nn_gru", [&](const Tensor& x) { return gru(x).output; }, gru.parameters());
  run("lstm_loop", [&](const Tensor& x) { return loop.forward(x); }, loop.params());
  run("lstm_hoisted", [&](const Tensor& x) { return hoisted.forward(x); }, hoisted.params());
  run("peephole", [&](const Tensor& x) { return peephole.forward(x); }, peephole.params());
  run("gru_loop", [&](const Tensor& x) { return gru_ops.forward(x); }, gru_ops.params());
  for (const Result& r : rows) {
    if (r.variant == "nn_lstm" || r.variant == "nn_gru") builtin[r.variant] = r.extra.at("cpu_ms");
  }
  for (Result& r : rows) {
    if (r.variant == "lstm_loop" || r.variant == "lstm_hoisted" || r.variant == "nn_lstm") {
      const double floor = lstm_gemm_floor_ms(sz, 64, r.variant != "lstm_loop", args.steps_or(12));
      r.extra["gemm_floor_ms"] = floor;
      r.extra["x_gemm_floor"] = r.extra.at("cpu_ms") / floor;
    }
    const char* family = r.variant == "gru_loop" || r.variant == "nn_gru" ? "nn_gru" : "nn_lstm";
    // Against the built-in module in CPU time, which a busy machine does not inflate.
    if (builtin.count(family) && r.variant != family) r.extra["x_builtin"] = r.extra.at("cpu_ms") / builtin[family];
    r.print();
  }
  return Result{};
}

}  // namespace bench
