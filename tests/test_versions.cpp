// Version counters: a value a backward saved and that was then written in place is
// refused (StateError naming the op, its tape node and the input), never used silently.
// Also: record() outside its contract, and a .grad() used as a value.
#include "helpers.hpp"

using namespace xg;
using xgtest::check_throws_msg;
using xgtest::check_values;

namespace {
Tensor vec(std::vector<double> v) { return from_vector(v); }
}  // namespace

TEST_CASE("version: data<T>() and data_ptr() bump it; const access, views and detach share it") {
  Tensor a = vec({1, 2, 3, 4});
  const std::uint32_t v0 = a.version();
  a.data<double>()[0] = 5;
  CHECK(a.version() == v0 + 1);
  (void)a.data<const double>();
  (void)std::as_const(a).data<double>();
  (void)std::as_const(a).data_ptr();
  CHECK(a.version() == v0 + 1);
  Tensor v = a.view({2, 2});
  Tensor d = a.detach();
  v.data<double>()[1] = 7;
  CHECK(a.version() == v0 + 2);
  CHECK(d.version() == v0 + 2);
  Tensor c = a.clone();
  const std::uint32_t cv = c.version();
  c.data<double>()[0] = 1;
  CHECK(a.version() == v0 + 2);
  CHECK(c.version() == cv + 1);
  (void)a.data_ptr();
  CHECK(a.version() == v0 + 3);
  a.bump_version();
  CHECK(a.version() == v0 + 4);
}

TEST_CASE("an input written through data<T>() between forward and backward is refused, naming the op") {
  // The probe behind this: y = w * x; writing x (a reused input buffer) before backward
  // gave d/dw = [20, 4] where [2, 4] is right.
  Tensor w = vec({1, 1}).requires_grad_();
  Tensor x = vec({2, 4});
  Tensor loss = sum(mul(w, x));
  x.data<double>()[0] = 20;
  check_throws_msg<StateError>([&] { loss.backward(); },
                               {"'mul'", "tape node #", "saved input 1 [2]", "at version", "modified in place"});
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("reading saved values with data<const T>() does not disturb backward") {
  Tensor w = vec({1, 1}).requires_grad_();
  Tensor x = vec({2, 4});
  Tensor y = mul(w, x);
  Tensor loss = sum(tanh(y));
  double s = 0;
  for (int i = 0; i < 2; ++i) s += x.data<const double>()[i] + std::as_const(y).data<double>()[i];
  CHECK(s == 12);
  loss.backward();
  check_values(w.grad(), {2 * (1 - std::tanh(2) * std::tanh(2)), 4 * (1 - std::tanh(4) * std::tanh(4))});
}

TEST_CASE("an output saved by its op (tanh) and then written is refused") {
  Tensor x = vec({0.5, -0.5}).requires_grad_();
  Tensor y = tanh(x);
  Tensor loss = sum(mul(y, 1.0));
  y.data<double>()[1] = 0;
  check_throws_msg<StateError>([&] { loss.backward(); }, {"'tanh'", "saved its output [2]"});
}

TEST_CASE("an optimizer step between two backward passes over a retained graph is refused") {
  // Before: the second backward used the stepped weights and gave [1.44, 1.92] where the
  // gradient of the recorded forward is [9, 48].
  Tensor w = vec({3, 4}).requires_grad_();
  Tensor loss = sum(mul(mul(w, w), w));  // d/dw = 3 w^2 = [27, 48]
  optim::SGD opt({w}, {.lr = 0.1});
  loss.backward(Tensor(), /*retain_graph=*/true);
  check_values(w.grad(), {27, 48});
  opt.step();
  opt.zero_grad();
  check_throws_msg<StateError>([&] { loss.backward(); }, {"'mul'", "modified in place"});
}

TEST_CASE("load_state_dict, init and Module::to while a graph is pending are refused") {
  nn::Linear lin(2, 2);
  lin.to(Dtype::f64);
  // x requires grad, so linear's backward reads the weight (for dx): the write matters.
  // (Were only the weight's own gradient wanted, its values would not be read, and the
  // writes below would be harmless: PyTorch's rule too.)
  Tensor x = vec({1, 2}).reshape({1, 2}).requires_grad_();
  SUBCASE("load_state_dict") {
    Tensor loss = sum(lin.forward(x));
    nn::StateDict sd = lin.state_dict();
    nn::StateDict other;
    for (auto& [k, v] : sd) other.emplace_back(k, v.clone());
    lin.load_state_dict(other);
    check_throws_msg<StateError>([&] { loss.backward(); }, {"modified in place"});
  }
  SUBCASE("init") {
    Tensor loss = sum(lin.forward(x));
    nn::init::uniform_(lin.weight, -1, 1);
    check_throws_msg<StateError>([&] { loss.backward(); }, {"modified in place"});
  }
  SUBCASE("Module::to") {
    Tensor loss = sum(lin.forward(x));
    lin.to(Dtype::f32);  // converts the parameters in place (every handle sees it)
    check_throws_msg<StateError>([&] { loss.backward(); }, {"modified in place"});
  }
  SUBCASE("after backward the same writes are fine") {
    Tensor loss = sum(lin.forward(x));
    loss.backward();
    nn::init::uniform_(lin.weight, -1, 1);
    Tensor loss2 = sum(lin.forward(x));
    loss2.backward();
    CHECK(lin.weight.grad().defined());
  }
}

TEST_CASE("a compound assignment under NoGradGuard to a saved input is refused at backward") {
  Tensor w = vec({1, 2}).requires_grad_();
  Tensor x = vec({3, 4});
  Tensor loss = sum(mul(w, x));
  {
    NoGradGuard g;
    x += 1.0;
  }
  check_throws_msg<StateError>([&] { loss.backward(); }, {"'mul'", "saved input 1"});
}

TEST_CASE("record under NoGradGuard records nothing; record inside a backward is a StateError") {
  Tensor x = vec({1, 2}).requires_grad_();
  const std::size_t before = tape_size();
  {
    NoGradGuard g;
    Tensor out = Tensor::empty({2}, Dtype::f64);
    record("custom", out, {&x}, [](const Tensor& g, GradSlots& dx) { dx[0] = g; });
    CHECK_FALSE(out.requires_grad());
    CHECK(out.is_leaf());
    CHECK(tape_size() == before);
  }
  // A backward function that records (here: it turns grad mode back on) is refused
  // instead of appending to the node list the walk is reading.
  Tensor y = Tensor::empty({2}, Dtype::f64);
  record("recorder", y, {&x}, [x](const Tensor& g, GradSlots& dx) {
    set_grad_enabled(true);
    Tensor z = Tensor::empty({2}, Dtype::f64);
    record("inner", z, {&x}, [](const Tensor& gg, GradSlots& d2) { d2[0] = gg; });
    dx[0] = g;
  });
  check_throws_msg<StateError>([&] { sum(y).backward(); }, {"record 'inner'", "inside a backward", "'recorder'"});
  set_grad_enabled(true);
}

TEST_CASE("a .grad() used as a value in a loss is refused at backward; detach() makes it a constant") {
  // Before: the penalty term was silently a constant, so the gradient ignored it.
  Tensor w = vec({1, 2}).requires_grad_();
  sum(mul(w, w)).backward();  // w.grad() = 2w
  Tensor penalty = sum(mul(w.grad(), w.grad()));
  CHECK(penalty.requires_grad());  // it carries the mark
  Tensor loss = add(sum(mul(w, 3.0)), penalty);
  check_throws_msg<StateError>([&] { loss.backward(); }, {"gradient made without create_graph", "constant", "detach()"});
  check_throws_msg<StateError>([&] { penalty.backward(); }, {"create_graph"});
  // On purpose, as a constant: detach() it.
  w.zero_grad();
  sum(mul(w, w)).backward();
  Tensor g = w.grad().detach();
  w.zero_grad();
  Tensor loss2 = add(sum(mul(w, g)), sum(mul(g, g)));
  loss2.backward();
  check_values(w.grad(), {2, 4});
  // Under NoGradGuard (what optimizers and clipping do) a grad is just values.
  {
    NoGradGuard ng;
    Tensor n = sum(mul(w.grad(), w.grad()));
    CHECK_FALSE(n.requires_grad());
    CHECK(n.item() == doctest::Approx(20));
  }
}

TEST_CASE("the truncated-BPTT error says detach(), and retain_graph only where it applies") {
  Tensor w = vec({0.5}).requires_grad_();
  Tensor h = vec({1.0});
  h = tanh(mul(h, w));
  sum(h).backward();
  Tensor h2 = tanh(mul(h, w));  // h was not detached
  check_throws_msg<StateError>([&] { sum(h2).backward(); },
                               {"detach()", "truncated BPTT", "grow with each chunk", "walking one graph twice"});
}
