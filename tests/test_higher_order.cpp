// Higher-order gradients: create_graph, xg::grad, hvp/jvp, gradgradcheck, and the
// engine's guards against a silently constant second derivative.
#include <cmath>

#include "helpers.hpp"

using namespace xg;

namespace {

Tensor vec(std::vector<double> v) { return from_vector(v, Shape{static_cast<std::int64_t>(v.size())}); }

double at(const Tensor& t, std::int64_t i) { return t.to_vector<double>()[static_cast<std::size_t>(i)]; }

// y = x^2 with a raw kernel as its first-order backward (as a fused op has), and the
// composite y = x * x as its create_graph path.
Tensor raw_square(const Tensor& x, bool with_composite) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  const double* p = x.data<double>();
  double* q = y.data<double>();
  for (std::int64_t i = 0; i < x.numel(); ++i) q[i] = p[i] * p[i];
  if (needs_record({&x})) {
    // d x^2 = 2 x g
    record("raw_square", y, {&x}, [x = save(x, 0), with_composite](const Tensor& g, GradSlots& dx) {
      if (is_grad_enabled() && with_composite) {
        composite_backward({x.get()}, g, dx, [](const std::vector<Tensor>& in) { return mul(in[0], in[0]); });
        return;
      }
      Tensor d = Tensor::empty(g.shape(), g.dtype());
      const double* gp = g.data<double>();
      const double* xp = x.get().data<double>();
      double* dp = d.data<double>();
      for (std::int64_t i = 0; i < g.numel(); ++i) dp[i] = 2.0 * xp[i] * gp[i];
      dx[0] = d;
    });
  }
  return y;
}

}  // namespace

TEST_CASE("create_graph: the grad of x^3 is 3x^2 with history, and its derivative is 6x") {
  {
    Tensor x = vec({0.5, -2.0, 3.0}).requires_grad_();
    Tensor y = sum(mul(mul(x, x), x));
    y.backward({.create_graph = true});
    Tensor g = x.grad();
    REQUIRE(g.requires_grad());
    for (int i = 0; i < 3; ++i) CHECK(at(g, i) == doctest::Approx(3 * std::pow(at(x, i), 2)));
    x.zero_grad();
    sum(g).backward();
    for (int i = 0; i < 3; ++i) CHECK(at(x.grad(), i) == doctest::Approx(6 * at(x, i)));
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("create_graph: retain_graph defaults to create_graph, and stays off without it") {
  {
    Tensor x = vec({1.0, 2.0}).requires_grad_();
    Tensor y = sum(mul(x, x));
    y.backward({.create_graph = true});
    CHECK_NOTHROW(y.backward());  // the graph was kept
    // The create_graph grad holds history that reads x: x -> grad -> graph -> x is a cycle
    // (as in PyTorch) that zero_grad() breaks; xg::grad has none.
    x.zero_grad();
    Tensor z = sum(mul(x, x));
    z.backward({.create_graph = false});
    CHECK_THROWS_AS(z.backward(), StateError);
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("a gradient penalty: d/dw of |d L/d x|^2 matches the closed form") {
  {
    // L = sum(q(w x)) with q(m) = m / (1 + m^2); q'(m) = (1 - m^2) / (1 + m^2)^2.
    // dL/dx = w q'(w x); P = sum((dL/dx)^2); dP/dw = sum(2 (dL/dx) (q'(w x) + w x q''(w x))),
    // q''(m) = (2 m^3 - 6 m) / (1 + m^2)^3.
    const std::vector<double> xs = {0.3, -1.1, 0.7};
    const double w0 = 0.8;
    Tensor x = vec(xs).requires_grad_();
    Tensor w = from_vector(std::vector<double>{w0}, Shape{1}).requires_grad_();
    Tensor m = mul(w, x);
    Tensor L = sum(div(m, add(mul(m, m), 1.0)));
    Tensor gx = xg::grad({L}, {x}, {}, {.create_graph = true})[0];
    Tensor P = sum(mul(gx, gx));
    P.backward();
    double want = 0.0;
    for (double xi : xs) {
      const double mi = w0 * xi, d = 1 + mi * mi;
      const double q1 = (1 - mi * mi) / (d * d), q2 = (2 * mi * mi * mi - 6 * mi) / (d * d * d);
      want += 2 * (w0 * q1) * (q1 + w0 * xi * q2);
    }
    CHECK(at(w.grad(), 0) == doctest::Approx(want).epsilon(1e-12));
  }
  CHECK(tape_pending() == 0);
}

TEST_CASE("a .grad() made without create_graph, used in a loss, is refused with the fix named") {
  {
    Tensor x = vec({1.0, 2.0}).requires_grad_();
    sum(mul(x, x)).backward();
    Tensor penalty = sum(mul(x.grad(), x));
    xgtest::check_throws_msg<StateError>([&] { penalty.backward(); }, {"create_graph", "detach"});
    // xg::grad's results without create_graph are constants too.
    Tensor y = sum(mul(x, x));
    Tensor g = xg::grad({y}, {x})[0];
    Tensor p2 = sum(mul(g, x));
    xgtest::check_throws_msg<StateError>([&] { p2.backward(); }, {"create_graph"});
    // Detached on purpose, it is a constant: d/dx sum(c * x) = c.
    Tensor x2 = vec({1.0, 2.0}).requires_grad_();
    Tensor p3 = sum(mul(g.detach(), x2));
    p3.backward();
    CHECK(at(x2.grad(), 0) == doctest::Approx(2.0));
    CHECK(at(x2.grad(), 1) == doctest::Approx(4.0));
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("xg::grad leaves .grad() alone, takes intermediates, seeds and duplicates, and names unused inputs") {
  {
    Tensor x = vec({1.0, 2.0, 3.0}).requires_grad_();
    Tensor u = mul(x, 2.0);
    Tensor y = mul(u, u);  // y = 4 x^2
    Tensor seed = vec({1.0, 10.0, 100.0});
    std::vector<Tensor> g = xg::grad({y}, {x, u, x}, {seed});
    CHECK_FALSE(x.grad().defined());
    CHECK(g[0].to_vector<double>() == std::vector<double>{8.0, 160.0, 2400.0});
    CHECK(g[1].to_vector<double>() == std::vector<double>{4.0, 80.0, 1200.0});
    CHECK(g[2].to_vector<double>() == g[0].to_vector<double>());
    CHECK(seed.to_vector<double>() == std::vector<double>{1.0, 10.0, 100.0});
    Tensor z = vec({1.0}).requires_grad_();
    Tensor y2 = sum(mul(x, x));
    xgtest::check_throws_msg<StateError>([&] { xg::grad({y2}, {x, z}, {}, {.retain_graph = true}); },
                                         {"input 1", "allow_unused"});
    std::vector<Tensor> g2 = xg::grad({y2}, {x, z}, {}, {.allow_unused = true});
    CHECK(g2[0].defined());
    CHECK_FALSE(g2[1].defined());
    Tensor c = vec({1.0});
    xgtest::check_throws_msg<StateError>([&] { xg::grad({sum(mul(x, x))}, {c}); }, {"input 0", "does not require grad"});
    xgtest::check_throws_msg<ShapeError>([&] { xg::grad({mul(x, x)}, {x}, {vec({1.0})}); }, {"seed"});
    xgtest::check_throws_msg<StateError>([&] { xg::grad({mul(x, x)}, {x}); }, {"scalar"});
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("hvp of a quadratic form is A v; jvp of a linear map is A v") {
  {
    // f(x) = 0.5 x^T A x with symmetric A: H = A.
    Tensor A = from_vector(std::vector<double>{2, 1, 0, 1, 3, -1, 0, -1, 4}, Shape{3, 3});
    Tensor x = vec({0.1, -0.2, 0.3}).requires_grad_();
    Tensor v = vec({1.0, -1.0, 2.0});
    // x^T A x = sum(A * x_i * x_j), by broadcasting.
    HvpResult r = hvp([&] { return mul(sum(mul(mul(A, reshape(x, Shape{3, 1})), reshape(x, Shape{1, 3}))), 0.5); },
                      {x}, {v});
    CHECK(r.hvp[0].to_vector<double>() == std::vector<double>{1.0, -4.0, 9.0});
    const std::vector<double> ax = {0.0, -0.8, 1.4};  // A x
    for (int i = 0; i < 3; ++i) CHECK(at(r.grad[0], i) == doctest::Approx(ax[static_cast<std::size_t>(i)]));
    CHECK_FALSE(r.hvp[0].requires_grad());
    // f(x) = x * c + x^2: J v = (c + 2 x) v.
    Tensor c = vec({3.0, 1.0, -2.0});
    JvpResult j = jvp([&](const std::vector<Tensor>& in) { return add(mul(in[0], c), mul(in[0], in[0])); },
                      {x.detach()}, {v});
    const std::vector<double> jv = {3.2, -0.6, -2.8};  // rounding differs with FMA: approximate
    for (int i = 0; i < 3; ++i) CHECK(at(j.jvp, i) == doctest::Approx(jv[static_cast<std::size_t>(i)]).epsilon(1e-14));
    xgtest::check_throws_msg<ShapeError>([&] { hvp([&] { return sum(x); }, {x}, {vec({1.0})}); }, {"hvp", "v[0]"});
    xgtest::check_throws_msg<ShapeError>([&] { hvp([&] { return mul(x, 2.0); }, {x}, {v}); }, {"scalar"});
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("gradgradcheck passes on ops whose backward reads a saved output, and fails on a wrong one") {
  {
    Tensor a = uniform(Shape{2, 3}, 0.5, 1.5, Dtype::f64);
    Tensor b = uniform(Shape{3}, 0.5, 1.5, Dtype::f64);
    GradcheckReport r =
        gradgradcheck([](const std::vector<Tensor>& in) { return div(in[0], add(mul(in[1], in[1]), 1.0)); }, {a, b});
    CHECK_MESSAGE(r.passed, r.str());
    CHECK(r.str().find("gradgradcheck") != std::string::npos);
    CHECK(r.checked > 0);
    // A backward whose factor 2x is taken as a constant: right first derivative, wrong second.
    auto wrong = [](const Tensor& x) {
      Tensor y = mul(x, x.detach());
      if (!needs_record({&x})) return y;
      Tensor out = y.detach();
      record("wrong_square", out, {&x}, [xc = x.detach()](const Tensor& g, GradSlots& dx) {
        dx[0] = mul(g, mul(xc, 2.0));
      });
      return out;
    };
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return wrong(in[0]); }, {a}).passed);
    CHECK_FALSE(gradgradcheck([&](const std::vector<Tensor>& in) { return wrong(in[0]); }, {a}).passed);
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("a raw-kernel backward under create_graph is refused; composite_backward makes it twice differentiable") {
  {
    {
      Tensor x = vec({0.5, -1.5}).requires_grad_();
      // Without a create_graph path: the constant it returns (its gradient 2y has history)
      // would drop the second derivative.
      Tensor y = raw_square(x, false);
      xgtest::check_throws_msg<StateError>([&] { xg::grad({sum(mul(y, y))}, {x}, {}, {.create_graph = true}); },
                                           {"raw_square", "not twice differentiable"});
      // Its first derivative alone is fine.
      CHECK(at(xg::grad({sum(raw_square(x, false))}, {x})[0], 1) == doctest::Approx(-3.0));
    }
    // With composite_backward: d^2 (x^2)^2 / dx^2 = 12 x^2.
    Tensor x3 = vec({0.5, -1.5}).requires_grad_();
    Tensor y3 = raw_square(x3, true);
    Tensor g3 = xg::grad({sum(mul(y3, y3))}, {x3}, {}, {.create_graph = true})[0];
    CHECK(at(g3, 0) == doctest::Approx(4 * 0.125));
    Tensor h = xg::grad({sum(g3)}, {x3})[0];
    CHECK(at(h, 0) == doctest::Approx(12 * 0.25));
    CHECK(at(h, 1) == doctest::Approx(12 * 2.25));
    // Its input made by an op recorded before the walk (a fused op inside a model).
    GradcheckReport r = gradgradcheck(
        [](const std::vector<Tensor>& in) { return mul(raw_square(mul(in[0], in[1]), true), in[1]); },
        {uniform(Shape{4}, -1, 1, Dtype::f64), uniform(Shape{4}, -1, 1, Dtype::f64)});
    CHECK_MESSAGE(r.passed, r.str());
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("ranged gradients (select, narrow, index_select) are differentiable under create_graph") {
  {
    Tensor x = uniform(Shape{4, 3}, -1, 1, Dtype::f64);
    GradcheckReport r = gradgradcheck(
        [](const std::vector<Tensor>& in) {
          Tensor s = mul(select(in[0], 0, 1), narrow(in[0], 0, 2, 1));
          Tensor idx = from_vector(std::vector<std::int64_t>{3, 0, 3}, Shape{3});
          Tensor t = index_select(in[0], 0, idx);
          return add(mul(t, t), s);
        },
        {x});
    CHECK_MESSAGE(r.passed, r.str());
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("MAML-style: a loss after an SGD step differentiated through the step") {
  {
    // w' = w - lr * dL1/dw with L1 = (w a - 1)^2; L2 = (w' b)^2.
    // dL2/dw = 2 w' b^2 * (1 - lr * 2 a^2).
    const double w0 = 0.7, a = 1.3, b = -0.4, lr = 0.1;
    Tensor w = from_vector(std::vector<double>{w0}, Shape{1}).requires_grad_();
    {
      Tensor r1 = sub(mul(w, a), 1.0);
      Tensor L1 = sum(mul(r1, r1));
      Tensor g = xg::grad({L1}, {w}, {}, {.create_graph = true})[0];
      Tensor w1 = sub(w, mul(g, lr));
      Tensor o = mul(w1, b);
      sum(mul(o, o)).backward();
    }
    const double wp = w0 - lr * 2 * (w0 * a - 1) * a;
    CHECK(at(w.grad(), 0) == doctest::Approx(2 * wp * b * b * (1 - lr * 2 * a * a)).epsilon(1e-12));
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("memory: after grad with create_graph and a second backward the tape is empty and bytes return") {
  {
    empty_cache();
    Tensor W = uniform(Shape{64}, 0.5, 1.5, Dtype::f64).requires_grad_();
    Tensor x = uniform(Shape{16, 64}, -1, 1, Dtype::f64);
    auto step = [&] {
      // A saturating map from ops whose backward is recorded: m / (1 + m^2).
      auto squash = [](const Tensor& m) { return div(m, add(mul(m, m), 1.0)); };
      Tensor h = squash(mul(x, W));
      for (int k = 0; k < 5; ++k) h = squash(mul(h, W));
      Tensor L = sum(mul(h, h));
      Tensor g = xg::grad({L}, {W}, {}, {.create_graph = true})[0];
      sum(mul(g, g)).backward();
    };
    step();
    W.zero_grad();
    const std::int64_t before = memory_stats().allocated_bytes;
    for (int k = 0; k < 20; ++k) {
      step();
      W.zero_grad();
    }
    CHECK(tape_size() == 0);
    CHECK(memory_stats().allocated_bytes <= before);
  }
  if (tape_pending() != 0) MESSAGE(tape_dump());
  CHECK(tape_pending() == 0);
}

TEST_CASE("create_graph through a per-step select loop: pieces summed once, into a leaf and into a node") {
  {
    const std::vector<double> v = {0.5, -1.0, 2.0, 0.25, -0.75, 1.5};
    for (bool through_node : {false, true}) {
      CAPTURE(through_node);
      Tensor x = from_vector(v, Shape{3, 2}).requires_grad_();
      Tensor xs = through_node ? mul(x, 1.0) : x;
      Tensor loss;
      for (int t = 0; t < 3; ++t) {
        Tensor s = select(xs, 0, t);
        Tensor c = sum(mul(mul(s, s), s));
        loss = loss.defined() ? add(loss, c) : c;
      }
      loss.backward({.create_graph = true});
      Tensor g = x.grad();  // 3 x^2
      REQUIRE(g.requires_grad());
      for (std::size_t i = 0; i < v.size(); ++i) CHECK(g.to_vector<double>()[i] == doctest::Approx(3 * v[i] * v[i]));
      x.zero_grad();
      sum(g).backward();  // 6 x
      for (std::size_t i = 0; i < v.size(); ++i) CHECK(x.grad().to_vector<double>()[i] == doctest::Approx(6 * v[i]));
    }
  }
  CHECK(tape_pending() == 0);
}
