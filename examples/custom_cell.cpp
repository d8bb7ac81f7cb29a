// A recurrent cell of your own: subclass nn::Module, register parameters, write forward
// with ops. Training it and checking its gradients need nothing else. Built and run by
// the test suite (README, "Your own recurrent model").
#include <cmath>
#include <cstdio>

#include <xgrad/xgrad.hpp>

#include "common/cli.hpp"

using namespace xg;

// Minimal gated unit, one time step.  x [B, I], h [B, H] -> h' [B, H]
//   z  = sigmoid(x W_z + h U_z + b_z)
//   h' = z * tanh(x W_h + h U_h + b_h) + (1 - z) * h
struct MinimalGatedCell : nn::Module {
  Tensor W_z, U_z, b_z, W_h, U_h, b_h;
  MinimalGatedCell(std::int64_t input, std::int64_t hidden) {
    const double k = 1.0 / std::sqrt(static_cast<double>(hidden));
    W_z = register_parameter("W_z", uniform({input, hidden}, -k, k));
    U_z = register_parameter("U_z", uniform({hidden, hidden}, -k, k));
    b_z = register_parameter("b_z", zeros({hidden}));
    W_h = register_parameter("W_h", uniform({input, hidden}, -k, k));
    U_h = register_parameter("U_h", uniform({hidden, hidden}, -k, k));
    b_h = register_parameter("b_h", zeros({hidden}));
  }
  Tensor forward(const Tensor& x, const Tensor& h) {
    const Tensor z = sigmoid(matmul(x, W_z) + matmul(h, U_z) + b_z);
    return z * tanh(matmul(x, W_h) + matmul(h, U_h) + b_h) + (1.0 - z) * h;
  }
};

// The cell unrolled over a sequence with a linear read-out of the last state.
//   x [T, B, I] -> y [B, 1]
struct Model : nn::Module {
  std::shared_ptr<MinimalGatedCell> cell;
  std::shared_ptr<nn::Linear> head;
  std::int64_t hidden;
  Model(std::int64_t input, std::int64_t hidden_size) : hidden(hidden_size) {
    cell = register_module("cell", std::make_shared<MinimalGatedCell>(input, hidden));
    head = register_module("head", std::make_shared<nn::Linear>(hidden, 1));
  }
  Tensor forward(const Tensor& x) {
    Tensor h = zeros({x.size(1), hidden}, x.dtype());
    for (std::int64_t t = 0; t < x.size(0); ++t) h = cell->forward(select(x, 0, t), h);
    return head->forward(h);
  }
};

int train() {
  manual_seed(1);
  // Task: remember the first input of a sequence of 6 until the end.
  const std::int64_t T = 6, B = 32;
  Tensor x = randn({T, B, 1});
  Tensor y = reshape(select(x, 0, 0), {B, 1});
  Model model(1, 8);
  double first = 0, last = 0;
  for (int step = 0; step < 400; ++step) {
    Tensor loss = mse_loss(model.forward(x), y);
    model.zero_grad();
    loss.backward();
    for (Tensor p : model.parameters()) {  // plain SGD
      float* w = p.data<float>();
      const float* g = p.grad().data<float>();
      for (std::int64_t i = 0; i < p.numel(); ++i) w[i] -= 0.1f * g[i];
    }
    (step == 0 ? first : last) = loss.item();
  }
  // Gradients of the same model in float64, w.r.t. every parameter, against finite differences.
  model.to(f64);
  const Tensor x64 = slice(x, 1, 0, 4).to(f64), y64 = slice(y, 0, 0, 4).to(f64);
  GradcheckReport r = gradcheck([&] { return mse_loss(model.forward(x64), y64); }, model.parameters());
  std::printf("%lld parameters; loss %.4f -> %.4f\n%s\n", static_cast<long long>(model.num_parameters()), first, last,
              r.str().c_str());
  return r.passed && last < first / 4 ? 0 : 1;
}

int main(int argc, char** argv) {
  // No options: --help, and any other argument is refused.
  CLI::App app{"custom_cell: a gated recurrent cell of your own, trained and gradient-checked"};
  return examples::cli::run(app, "custom_cell", argc, argv, train);
}
