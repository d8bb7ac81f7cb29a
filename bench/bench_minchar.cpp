// minchar: Karpathy's min-char-rnn as a define-by-run user writes it, an explicit loop
// over the 25 steps on [H, 1] columns (torch_ref.py's make_minchar, numpy_minchar.py).
#include "bench_common.hpp"

namespace bench {

Result minchar(const Args& args) {
  using namespace xg;
  constexpr std::int64_t V = 65, H = 100, T = 25;
  manual_seed(1234);
  Tensor Wxh = mul(randn(Shape{H, V}), 0.01).requires_grad_();
  Tensor Whh = mul(randn(Shape{H, H}), 0.01).requires_grad_();
  Tensor Why = mul(randn(Shape{V, H}), 0.01).requires_grad_();
  Tensor bh = zeros(Shape{H, 1}).requires_grad_();
  Tensor by = zeros(Shape{V, 1}).requires_grad_();
  const std::vector<Tensor> params = {Wxh, Whh, Why, bh, by};
  optim::Adagrad opt(params, optim::AdagradOptions{.lr = 0.1, .eps = 1e-8});

  const int steps = args.steps_or(300);
  const int n = args.warmup + steps;
  Generator gen(1235);
  std::vector<std::int64_t> data(static_cast<std::size_t>(n * T + 1));
  for (auto& v : data) v = static_cast<std::int64_t>(gen.uniform() * V) % V;

  Tensor hprev = zeros(Shape{H, 1});
  Timings tm;
  for (int i = 0; i < n; ++i) {
    const std::int64_t* in = data.data() + i * T;
    const Tensor targets = from_vector(std::vector<std::int64_t>(in + 1, in + T + 1), Shape{T});
    const double t0 = now_ms();
    // One-hot inputs [T, V], multiplied densely by Wxh (as the reference does).
    std::vector<float> onehot(static_cast<std::size_t>(T * V), 0.0f);
    for (std::int64_t t = 0; t < T; ++t) onehot[static_cast<std::size_t>(t * V + in[t])] = 1.0f;
    const Tensor xs = from_vector(onehot, Shape{T, V});
    Tensor h = hprev;
    std::vector<Tensor> ys;
    ys.reserve(T);
    for (std::int64_t t = 0; t < T; ++t) {
      const Tensor x = reshape(select(xs, 0, t), Shape{V, 1});
      h = tanh(matmul(Wxh, x) + matmul(Whh, h) + bh);
      ys.push_back(reshape(matmul(Why, h) + by, Shape{1, V}));
    }
    // Softmax cross-entropy summed over the 25 steps.
    const Tensor loss = cross_entropy(concat(ys, 0), targets, CrossEntropyOptions{.reduction = Reduction::sum});
    const double t1 = now_ms();
    opt.zero_grad();
    loss.backward();
    const double t2 = now_ms();
    optim::clip_grad_value(params, 5.0);
    opt.step();
    hprev = h.detach();
    const double t3 = now_ms();
    tm.record(t0, t1, t2, t3, loss.item(), i >= args.warmup);
  }
  Result r;
  r.workload = "minchar";
  r.variant = "loop";
  r.threads = args.threads;
  tm.fill(r);
  r.tokens_per_step = T;
  const double med = median(tm.tot);
  r.extra["gflops"] = 3.0 * T * (2 * H * V + 2 * H * H + 2 * V * H) / 1e9 / (med / 1e3);
  r.extra["T"] = T;
  return r;
}

}  // namespace bench
