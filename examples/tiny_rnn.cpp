// A tiny character-level RNN, written directly on xgrad's tensor ops: it learns to
// continue "hello xgrad! " and prints what it samples. The whole model is four
// tensors; backward through time is just loss.backward().
#include <cstdio>
#include <string>

#include <xgrad/xgrad.hpp>

#include "common/cli.hpp"

using namespace xg;

int train() {
  // Three laps, so the model also learns to go on after the space, not only from a zero state.
  const std::string text = "hello xgrad! hello xgrad! hello xgrad! ";
  const std::int64_t V = 128, H = 48, T = static_cast<std::int64_t>(text.size());
  manual_seed(7);
  Tensor Wxh = mul(randn({V, H}), 0.1).detach().requires_grad_();
  Tensor Whh = mul(randn({H, H}), 0.1).detach().requires_grad_();
  Tensor Why = mul(randn({H, V}), 0.1).detach().requires_grad_();
  Tensor bh = zeros({H}).requires_grad_();
  const std::vector<Tensor> params{Wxh, Whh, Why, bh};

  std::vector<std::int64_t> in, out;
  for (std::int64_t t = 0; t < T; ++t) {
    in.push_back(text[t]);
    out.push_back(text[(t + 1) % T]);
  }
  const Tensor x = from_vector(in), y = from_vector(out);

  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    Tensor h = zeros({1, H});
    std::vector<Tensor> logits;
    Tensor emb = index_select(Wxh, 0, x);  // [T, H]: the input projection of every step
    for (std::int64_t t = 0; t < T; ++t) {
      h = tanh(add(add(select(emb, 0, t), matmul(h, Whh)), bh));  // [1, H]
      logits.push_back(matmul(h, Why));                               // [1, V]
    }
    Tensor loss = cross_entropy(concat(logits, 0), y);
    for (Tensor p : params) p.zero_grad();
    loss.backward();
    for (Tensor p : params) {  // plain SGD
      float* w = p.data<float>();
      const float* g = p.grad().data<float>();
      for (std::int64_t i = 0; i < p.numel(); ++i) w[i] -= 0.5f * g[i];
    }
    if (step == 0) first = loss.item();
    last = loss.item();
    if (step % 50 == 0) std::printf("step %3d  loss %.4f\n", step, loss.item());
  }

  // Sample greedily from 'h', with recording off.
  NoGradGuard no_grad;
  Tensor h = zeros({1, H});
  std::int64_t c = 'h';
  std::string sample(1, 'h');
  for (int i = 0; i < 38; ++i) {
    h = tanh(add(add(reshape(select(Wxh, 0, c), {1, H}), matmul(h, Whh)), bh));
    c = argmax(matmul(h, Why), 1).to_vector<std::int64_t>()[0];
    sample += static_cast<char>(c);
  }
  std::printf("loss %.3f -> %.3f\nsample: %s\n", first, last, sample.c_str());
  return last < first / 10 ? 0 : 1;
}

int main(int argc, char** argv) {
  // No options: --help, and any other argument is refused.
  CLI::App app{"tiny_rnn: a character-level RNN written on tensor ops learns to continue \"hello xgrad! \""};
  return examples::cli::run(app, "tiny_rnn", argc, argv, train);
}
