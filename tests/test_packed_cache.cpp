// Parameters kept packed between products (autograd/packed_cache.cpp): a hand-written
// recurrent loop packs each weight once per version, and every way a parameter's values
// can change makes the next product re-pack instead of using stale panels.
#include <array>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <xgrad/xgrad.hpp>

#include "../autograd/detail/matmul_t.hpp"
#include "helpers.hpp"
#include "xgrad/backend/detail/gemm_test_hook.hpp"

using xg::Tensor;

namespace {

// The packed path runs wherever the packed kernel pays; the guard makes that every build
// (BLAS core, thread count) without splitting a product over threads.
struct Packed {
  xg::detail::GemmForceGuard force{1e18};
  Packed() {
    xg::empty_cache();
    xg::reset_memory_stats();
  }
};

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(xg::f64), y = b.to(xg::f64);
  double m = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::abs(x.data<const double>()[i] - y.data<const double>()[i]));
  return m;
}

// T steps of h = tanh(h W + x_t U) from h0, summed.
Tensor loop(const Tensor& h0, const Tensor& W, const Tensor& U, const Tensor& xs) {
  Tensor h = h0, total;
  for (std::int64_t t = 0; t < xs.size(0); ++t) {
    h = xg::tanh(xg::matmul(h, W) + xg::matmul(xg::select(xs, 0, t), U));
    total = total.defined() ? total + h : h;
  }
  return xg::sum(total);
}

}  // namespace

TEST_CASE("packed parameters: a T-step loop packs each weight once for forward and once for backward") {
  Packed guard;
  xg::manual_seed(3);
  const int T = 6;
  Tensor W = xg::uniform({16, 16}, -0.3, 0.3, xg::f64).requires_grad_();
  Tensor U = xg::uniform({5, 16}, -0.3, 0.3, xg::f64).requires_grad_();
  const Tensor xs = xg::randn({T, 3, 5}, xg::f64);
  Tensor h0 = xg::randn({3, 16}, xg::f64).requires_grad_();
  Tensor loss = loop(h0, W, U, xs);
  xg::MemoryStats s = xg::memory_stats();
  CHECK(s.packed_packs == 2);           // W and U, once each
  CHECK(s.packed_hits == 2 * (T - 1));  // every later step
  loss.backward();
  s = xg::memory_stats();
  CHECK(s.packed_packs == 3);  // Wᵀ for dh; no Uᵀ, since xs wants no gradient
  CHECK(s.packed_hits == 2 * (T - 1) + (T - 1));
  CHECK(s.packed_bytes > 0);

  // The same loop on plain tensors (not parameters: never packed) gives the same values.
  Tensor W2 = W.detach().clone(), U2 = U.detach().clone();
  Tensor h2 = h0.detach().clone().requires_grad_();
  Tensor loss2 = loop(h2, W2, U2, xs);
  loss2.backward();
  CHECK(max_abs_diff(loss, loss2) < 1e-12);
  CHECK(max_abs_diff(h0.grad(), h2.grad()) < 1e-12);
  CHECK(xg::memory_stats().packed_packs == 3);  // the plain loop packed nothing
}

namespace {

struct OneWeight : xg::nn::Module {
  Tensor W;
  OneWeight() { W = register_parameter("W", xg::uniform({8, 12}, -1.0, 1.0)); }
};

// y = x W with W packed; `change` alters W's values; the next product must see them.
void check_invalidated(const std::string& what, const std::function<void(OneWeight&)>& change) {
  CAPTURE(what);
  Packed guard;
  xg::manual_seed(11);
  OneWeight m;
  const Tensor x = xg::randn({4, 8});
  const Tensor before = xg::matmul(x, m.W);
  CHECK(xg::memory_stats().packed_packs == 1);
  change(m);
  const Tensor after = xg::matmul(x.to(m.W.dtype()), m.W);
  const Tensor expected = xg::matmul(x.to(m.W.dtype()), m.W.detach().clone());  // a plain tensor: never packed
  CHECK(xg::memory_stats().packed_packs == 2);
  CHECK(max_abs_diff(after, expected) < 1e-5);
  CHECK(max_abs_diff(after, before) > 1e-3);  // the change is visible, so a stale product fails above
}

}  // namespace

TEST_CASE("packed parameters: re-packed after an optimizer step") {
  check_invalidated("SGD step", [](OneWeight& m) {
    m.W.set_grad(xg::ones({8, 12}));
    xg::optim::SGD opt({m.W}, xg::optim::SGDOptions{.lr = 0.5});
    opt.step();
  });
  check_invalidated("Adam step", [](OneWeight& m) {
    m.W.set_grad(xg::ones({8, 12}));
    xg::optim::Adam opt({m.W}, xg::optim::AdamOptions{.lr = 0.5});
    opt.step();
  });
}

TEST_CASE("packed parameters: re-packed after load_state_dict") {
  check_invalidated("load_state_dict", [](OneWeight& m) {
    xg::nn::StateDict sd = m.state_dict();
    sd[0].second = xg::full({8, 12}, 0.25);
    m.load_state_dict(sd);
  });
}

TEST_CASE("packed parameters: re-packed after nn::init") {
  check_invalidated("init::uniform_", [](OneWeight& m) { xg::nn::init::uniform_(m.W, 2.0, 3.0); });
  check_invalidated("init::constant_", [](OneWeight& m) { xg::nn::init::constant_(m.W, -0.5); });
}

TEST_CASE("packed parameters: re-packed after Module::to") {
  check_invalidated("to(f64)", [](OneWeight& m) {
    m.to(xg::f64);
    xg::NoGradGuard ng;
    m.W *= 2.0;  // after the conversion too: its storage is new and then written
  });
  // The dtype alone changes what is packed (a float64 panel set, not the float32 one).
  Packed guard;
  OneWeight m;
  const Tensor y32 = xg::matmul(xg::ones({2, 8}), m.W);
  m.to(xg::f64);
  const Tensor y64 = xg::matmul(xg::ones({2, 8}, xg::f64), m.W);
  CHECK(y64.dtype() == xg::f64);
  CHECK(max_abs_diff(y32, y64) < 1e-5);
  CHECK(xg::memory_stats().packed_packs == 2);
}

TEST_CASE("packed parameters: re-packed after an in-place write") {
  check_invalidated("write through data<T>()", [](OneWeight& m) { m.W.data<float>()[5] += 7.0f; });
  check_invalidated("compound assignment under NoGradGuard", [](OneWeight& m) {
    xg::NoGradGuard ng;
    m.W += 1.0;
  });
  check_invalidated("write through a detached alias", [](OneWeight& m) {
    Tensor alias = m.W.detach();
    alias.data<float>()[0] = 100.0f;
  });
  check_invalidated("bump_version after a write through a kept pointer", [](OneWeight& m) {
    // A pointer kept from a read (no bump then), written later: the owner says so.
    auto* p = const_cast<float*>(m.W.data<const float>());
    p[3] = -9.0f;
    m.W.bump_version();
  });
}

TEST_CASE("packed parameters: a from_blob parameter is never packed, so writes into its buffer show") {
  Packed guard;
  std::vector<float> buf(8 * 12, 0.5f);
  Tensor W = xg::from_blob(buf.data(), {8, 12}, xg::f32).requires_grad_();
  const Tensor x = xg::ones({3, 8});
  CHECK(xg::matmul(x, W).data<const float>()[0] == doctest::Approx(4.0));
  buf[0] = 10.5f;  // the owner's write: no version bump
  CHECK(xg::matmul(x, W).data<const float>()[0] == doctest::Approx(14.0));
  CHECK(xg::memory_stats().packed_packs == 0);
}

TEST_CASE("packed parameters: linear packs Wᵀ for forward and W for backward, and agrees with the plain GEMM") {
  Packed guard;
  xg::manual_seed(5);
  // Not a structured binding: CAPTURE's lambda cannot capture one under clang 14.
  for (const auto& s : std::vector<std::array<std::int64_t, 3>>{{1, 7, 5}, {3, 16, 33}, {17, 31, 9}}) {
    const std::int64_t n = s[0], in = s[1], out = s[2];
    CAPTURE(n);
    Tensor W = xg::uniform({out, in}, -1, 1, xg::f64).requires_grad_();
    Tensor b = xg::uniform({out}, -1, 1, xg::f64).requires_grad_();
    Tensor x = xg::randn({n, in}, xg::f64).requires_grad_();
    xg::reset_memory_stats();
    Tensor y = xg::linear(x, W, b);
    xg::sum(xg::mul(y, y)).backward();
    CHECK(xg::memory_stats().packed_packs == 2);
    Tensor W2 = W.detach().clone(), x2 = x.detach().clone().requires_grad_();
    Tensor y2 = xg::linear(x2, W2, b.detach());
    xg::sum(xg::mul(y2, y2)).backward();
    CHECK(max_abs_diff(y, y2) < 1e-12);
    CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-12);
  }
}

TEST_CASE("packed parameters: matmul_t (create_graph's g · Wᵀ) uses the panels and agrees with the plain GEMM") {
  Packed guard;
  xg::manual_seed(7);
  for (const bool tb : {false, true}) {
    CAPTURE(tb);
    Tensor W = xg::uniform(tb ? xg::Shape{12, 20} : xg::Shape{20, 12}, -1, 1, xg::f64).requires_grad_();
    const Tensor a = xg::randn({5, 20}, xg::f64);
    xg::reset_memory_stats();
    const Tensor y = xg::detail::matmul_t(a, false, W, tb);
    CHECK(xg::memory_stats().packed_packs == 1);
    CHECK(max_abs_diff(y, xg::detail::matmul_t(a, false, W.detach(), tb)) < 1e-12);
    // A transposed left operand is not a packed product: the plain GEMM.
    xg::reset_memory_stats();
    const Tensor at = xg::randn({20, 5}, xg::f64);
    CHECK(max_abs_diff(xg::detail::matmul_t(at, true, W, tb), xg::detail::matmul_t(at, true, W.detach(), tb)) == 0.0);
    CHECK(xg::memory_stats().packed_packs == 0);
  }
}

TEST_CASE("packed parameters: gradcheck of matmul and linear on packed weights (f64, several shapes)") {
  Packed guard;
  xg::manual_seed(8);
  for (const auto& s : std::vector<std::array<std::int64_t, 3>>{{1, 1, 1}, {2, 3, 4}, {5, 17, 33}, {3, 40, 7}}) {
    const std::int64_t m = s[0], k = s[1], n = s[2];
    CAPTURE(k);
    Tensor W = xg::randn({k, n}, xg::f64).requires_grad_();
    Tensor L = xg::randn({n, k}, xg::f64).requires_grad_();
    Tensor bias = xg::randn({n}, xg::f64).requires_grad_();
    Tensor a = xg::randn({m, k}, xg::f64).requires_grad_();
    Tensor a3 = xg::randn({2, m, k}, xg::f64).requires_grad_();
    // gradcheck perturbs W and L in place: each perturbation must re-pack.
    CHECK(xg::gradcheck([&] { return xg::matmul(a, W); }, {a, W}));
    CHECK(xg::gradcheck([&] { return xg::matmul(a3, W); }, {a3, W}));  // [B,M,K] x [K,N]
    CHECK(xg::gradcheck([&] { return xg::linear(a, L, bias); }, {a, L, bias}));
    CHECK(xg::gradcheck([&] { return xg::add(xg::matmul(a, W), bias); }, {W, bias}));
  }
  CHECK(xg::memory_stats().packed_hits > 0);
}

TEST_CASE("packed parameters: bit-identical results whether the panels are fresh or reused") {
  Packed guard;
  xg::manual_seed(2);
  Tensor W = xg::randn({64, 48}).requires_grad_();
  const Tensor x = xg::randn({8, 64});
  const Tensor first = xg::matmul(x, W);
  const Tensor again = xg::matmul(x, W);
  CHECK(xg::memory_stats().packed_hits == 1);
  CHECK(max_abs_diff(first, again) == 0.0);
}

TEST_CASE("packed parameters: empty_cache releases them; each thread keeps its own") {
  Packed guard;
  xg::manual_seed(4);
  Tensor W = xg::randn({32, 32}).requires_grad_();
  const Tensor x = xg::randn({4, 32});
  const Tensor y = xg::matmul(x, W);
  CHECK(xg::memory_stats().packed_bytes >= 32 * 32 * 4);
  Tensor from_thread;
  std::thread other([&] {
    xg::reset_memory_stats();
    from_thread = xg::matmul(x, W).detach();
    CHECK(xg::memory_stats().packed_packs == 1);  // its own panels, not this thread's
  });
  other.join();
  CHECK(max_abs_diff(y, from_thread) == 0.0);
  xg::empty_cache();
  CHECK(xg::memory_stats().packed_bytes == 0);
  xg::reset_memory_stats();
  const Tensor y2 = xg::matmul(x, W);
  CHECK(xg::memory_stats().packed_packs == 1);
  CHECK(max_abs_diff(y, y2) == 0.0);
}

TEST_CASE("packed parameters: a parameter that dies takes its panels' place with it, never its values") {
  Packed guard;
  const Tensor x = xg::ones({2, 4});
  for (int i = 0; i < 200; ++i) {
    // A new parameter often lands at the freed one's address: its values must be its own.
    Tensor W = xg::full({4, 4}, double(i)).requires_grad_();
    CHECK(xg::matmul(x, W).data<const float>()[0] == doctest::Approx(4.0 * i));
  }
  CHECK(xg::memory_stats().packed_hits == 0);
  CHECK(xg::memory_stats().packed_bytes <= 64 * 4 * 4 * 4);  // bounded by the entry limit
}
