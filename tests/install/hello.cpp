// The smallest user program: built against an INSTALLED xgrad (see check_install.sh)
// through pkg-config, it fits y = w*x + b by gradient descent and prints OK.
#include <xgrad/xgrad.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using namespace xg;
  manual_seed(0);
  // Data from y = 3x - 1.
  Tensor x = uniform({64}, -1.0, 1.0);
  Tensor y = add(mul(x, 3.0), -1.0);

  Tensor w = zeros({1}).requires_grad_();
  Tensor b = zeros({1}).requires_grad_();
  const double lr = 0.5;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 200; ++step) {
    Tensor d = sub(add(mul(x, w), b), y);
    Tensor loss = mul(sum(mul(d, d)), 1.0 / 64.0);
    w.zero_grad();
    b.zero_grad();
    loss.backward();
    // Plain SGD through data(): updates are not recorded.
    w.data<float>()[0] -= static_cast<float>(lr * w.grad().item());
    b.data<float>()[0] -= static_cast<float>(lr * b.grad().item());
    last = loss.item();
    if (step == 0) first = last;
  }
  const double wv = w.item(), bv = b.item();
  if (!(last < 1e-6 * first) || std::fabs(wv - 3.0) > 1e-3 || std::fabs(bv + 1.0) > 1e-3) {
    std::printf("FAIL: loss %g -> %g, w = %g, b = %g\n", first, last, wv, bv);
    return 1;
  }
  fmt::print("OK\n");
  return 0;
}
