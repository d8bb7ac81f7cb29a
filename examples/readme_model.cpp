// The README's example, compiled and run by the test suite so it cannot rot.
#include <xgrad/xgrad.hpp>
using namespace xg;

int main() {
  manual_seed(0);
  // A one-hidden-layer tanh network learning y = x^3 - x on [-1, 1].
  Tensor W1 = randn({1, 16}).requires_grad_(), b1 = zeros({16}).requires_grad_();
  Tensor W2 = mul(randn({16, 1}), 0.1).detach().requires_grad_(), b2 = zeros({1}).requires_grad_();
  auto model = [](const Tensor& x, const Tensor& W1, const Tensor& b1, const Tensor& W2, const Tensor& b2) {
    return add(matmul(tanh(add(matmul(x, W1), b1)), W2), b2);  // [N,1] -> [N,16] -> [N,1]
  };
  Tensor x = reshape(arange(-1.0, 1.0, 0.05), {-1, 1}), y = sub(pow(x, 3.0), x);
  double first = 0, last = 0;
  for (int step = 0; step < 2000; ++step) {
    Tensor loss = mse_loss(model(x, W1, b1, W2, b2), y);
    for (Tensor p : {W1, b1, W2, b2}) p.zero_grad();
    loss.backward();
    for (Tensor p : {W1, b1, W2, b2}) {  // plain SGD, in place
      float* w = p.data<float>();
      const float* g = p.grad().data<float>();
      for (std::int64_t i = 0; i < p.numel(); ++i) w[i] -= 0.2f * g[i];
    }
    (step == 0 ? first : last) = loss.item();
  }
  // The same model, checked in float64 against central differences:
  GradcheckReport r = gradcheck([&](const std::vector<Tensor>& in) { return model(in[0], in[1], in[2], in[3], in[4]); },
                                {x, W1, b1, W2, b2});
  fmt::print("loss {:.4f} -> {:.5f}\n{}\n", first, last, r);
  return r.passed && last < first / 20 ? 0 : 1;
}
