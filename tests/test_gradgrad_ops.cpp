// Second derivatives of every non-fused recorded op: float64 gradgradchecks (second
// derivatives w.r.t. the inputs and the incoming gradient, against finite differences of
// the create_graph gradient) over several shapes, broadcasting included, for each
// differentiable input; and, for the ops whose backward has a separate create_graph path,
// second derivatives against formulas worked out by hand, so a gradient that silently
// became a constant (zero second derivative) fails even where a check of first
// derivatives would pass.
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "../autograd/detail/matmul_t.hpp"
#include "helpers.hpp"

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::rnd;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
using Vec = std::vector<double>;
using Ids = std::vector<std::int64_t>;

void gradgrad_ok(const Fn& fn, const std::vector<Tensor>& inputs, GradcheckOptions opts = {}) {
  const GradcheckReport r = gradgradcheck(fn, inputs, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// Random float64 values in [lo, hi) at least `gap` away from every kink (kept on its side).
Tensor off_kinks(const Shape& s, const Vec& kinks, double lo = -1.5, double hi = 1.5, std::uint64_t seed = 3,
                 double gap = 0.1) {
  Tensor t = rnd(s, lo, hi, seed);
  double* p = t.data<double>();
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    for (double k : kinks) {
      if (std::fabs(p[i] - k) < gap) p[i] = k + (p[i] >= k ? 2 * gap : -2 * gap);
    }
  }
  return t;
}

GradOptions create_graph() {
  GradOptions o;
  o.create_graph = true;
  return o;
}

Tensor leaf(const Tensor& t) { return t.detach().clone().requires_grad_(); }

// d/dx of sum(d f / dx) for an elementwise f: the diagonal of the Hessian, f''(x).
Tensor second_diag(const std::function<Tensor(const Tensor&)>& f, const Tensor& x0) {
  Tensor x = leaf(x0);
  const std::vector<Tensor> g = xg::grad({sum(f(x))}, {x}, {}, create_graph());
  REQUIRE(g[0].requires_grad());
  return xg::grad({sum(g[0])}, {x})[0];
}

Vec map(const Tensor& t, const std::function<double(double)>& f) {
  Vec out;
  for (double v : t.to_vector<double>()) out.push_back(f(v));
  return out;
}

const std::vector<Shape>& unary_shapes() {
  static const std::vector<Shape> s = {Shape{}, Shape{5}, Shape{2, 3}, Shape{2, 1, 3}};
  return s;
}

// Shape pairs that broadcast: equal, trailing, both sides, against a 0-d tensor.
const std::vector<std::pair<Shape, Shape>>& binary_shapes() {
  static const std::vector<std::pair<Shape, Shape>> s = {
      {Shape{2, 3}, Shape{2, 3}}, {Shape{2, 3}, Shape{3}}, {Shape{2, 1, 3}, Shape{4, 1}}, {Shape{}, Shape{2, 2}}};
  return s;
}

}  // namespace

// ---- elementwise functions ---------------------------------------------------------------

TEST_CASE("gradgradcheck: elementwise functions over 0-d..3-D inputs") {
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    double lo, hi;
    Vec kinks;
  };
  const std::vector<Case> cases = {
      {"pow2", [](const Tensor& x) { return pow(x, 2.0); }, -1.5, 1.5, {}},
      {"pow3", [](const Tensor& x) { return pow(x, 3.0); }, -1.5, 1.5, {}},
      {"pow1", [](const Tensor& x) { return pow(x, 1.0); }, -1.5, 1.5, {}},
      {"pow0.5", [](const Tensor& x) { return pow(x, 0.5); }, 0.5, 2.0, {}},
      {"pow-0.5", [](const Tensor& x) { return pow(x, -0.5); }, 0.5, 2.0, {}},
      {"pow-1", [](const Tensor& x) { return pow(x, -1.0); }, 0.5, 2.0, {}},
      {"pow-2", [](const Tensor& x) { return pow(x, -2.0); }, 0.5, 2.0, {}},
      {"pow2.5", [](const Tensor& x) { return pow(x, 2.5); }, 0.5, 2.0, {}},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, 0.5, 2.0, {}},
      {"exp", [](const Tensor& x) { return exp(x); }, -1.5, 1.5, {}},
      {"log", [](const Tensor& x) { return log(x); }, 0.5, 2.0, {}},
      {"abs", [](const Tensor& x) { return abs(x); }, -1.5, 1.5, {0.0}},
      {"tanh", [](const Tensor& x) { return tanh(x); }, -1.5, 1.5, {}},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, -2.0, 2.0, {}},
      {"relu", [](const Tensor& x) { return relu(x); }, -1.5, 1.5, {0.0}},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); }, -1.5, 1.5, {-0.5, 0.7}},
      {"clamp_min", [](const Tensor& x) { return clamp_min(x, -0.5); }, -1.5, 1.5, {-0.5}},
      {"clamp_max", [](const Tensor& x) { return clamp_max(x, 0.7); }, -1.5, 1.5, {0.7}},
      {"neg", [](const Tensor& x) { return neg(x); }, -1.5, 1.5, {}},
  };
  for (const Case& c : cases) {
    for (const Shape& s : unary_shapes()) {
      INFO(c.name << " " << s.str());
      const Tensor x = off_kinks(s, c.kinks, c.lo, c.hi);
      // Alone (the second derivative w.r.t. x, and the gradient's linearity in gy), and
      // squared, which routes an x-dependent gradient through the op's backward.
      auto f = c.f;
      gradgrad_ok([f](const std::vector<Tensor>& in) { return f(in[0]); }, {x});
      gradgrad_ok([f](const std::vector<Tensor>& in) { return mul(f(in[0]), f(in[0])); }, {x});
    }
  }
}

TEST_CASE("gradgradcheck: pow with exponent 0 (a zero gradient) and scalar arithmetic") {
  const Tensor x = rnd({2, 3}, 0.5, 2.0, 4);
  gradgrad_ok([](const std::vector<Tensor>& in) { return add(mul(pow(in[0], 0.0), in[0]), pow(in[0], 2.0)); }, {x});
  const std::vector<std::function<Tensor(const Tensor&)>> ops = {
      [](const Tensor& t) { return add(t, 2.0); },  [](const Tensor& t) { return sub(t, 1.5); },
      [](const Tensor& t) { return mul(t, -3.0); }, [](const Tensor& t) { return div(t, 4.0); },
      [](const Tensor& t) { return rsub(2.0, t); }, [](const Tensor& t) { return rdiv(2.0, t); },
  };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    INFO("scalar op " << i);
    auto f = ops[i];
    gradgrad_ok([f](const std::vector<Tensor>& in) { return f(in[0]); }, {x});
    gradgrad_ok([f](const std::vector<Tensor>& in) { return mul(f(in[0]), f(in[0])); }, {x});
  }
}

// Each op's second derivative against the hand-derived formula, elementwise.
TEST_CASE("second derivatives of exp, log, sqrt, tanh, sigmoid, pow match their formulas") {
  const Tensor x = from_vector(Vec{-1.3, -0.4, 0.2, 0.9, 1.7}, Shape{5});
  const Tensor xp = from_vector(Vec{0.3, 0.8, 1.1, 2.5, 4.0}, Shape{5});
  check_values(second_diag([](const Tensor& t) { return exp(t); }, x), map(x, [](double v) { return std::exp(v); }),
               1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return log(t); }, xp),
               map(xp, [](double v) { return -1.0 / (v * v); }), 1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return sqrt(t); }, xp),
               map(xp, [](double v) { return -0.25 * std::pow(v, -1.5); }), 1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return tanh(t); }, x), map(x, [](double v) {
                 const double t = std::tanh(v);
                 return -2.0 * t * (1.0 - t * t);
               }),
               1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return sigmoid(t); }, x), map(x, [](double v) {
                 const double s = 1.0 / (1.0 + std::exp(-v));
                 return s * (1.0 - s) * (1.0 - 2.0 * s);
               }),
               1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return pow(t, 2.5); }, xp),
               map(xp, [](double v) { return 2.5 * 1.5 * std::pow(v, 0.5); }), 1e-13, 1e-12);
  check_values(second_diag([](const Tensor& t) { return pow(t, 3.0); }, x), map(x, [](double v) { return 6.0 * v; }),
               1e-13, 1e-12);
}

TEST_CASE("relu, abs, clamp under create_graph: the gradient is differentiable w.r.t. upstream weights") {
  // L = w sum(f(x)), w a scalar leaf: dL/dx = w f'(x) comes out of f's backward with an
  // incoming gradient that depends on w, so d/dw sum(dL/dx) = sum f'(x) only if that
  // backward is recorded.
  const Tensor x = from_vector(Vec{-1.3, -0.4, 0.2, 0.9}, Shape{4});
  const std::vector<std::pair<std::function<Tensor(const Tensor&)>, std::function<double(double)>>> cases = {
      {[](const Tensor& t) { return relu(t); }, [](double v) { return v > 0 ? 1.0 : 0.0; }},
      {[](const Tensor& t) { return abs(t); }, [](double v) { return v > 0 ? 1.0 : -1.0; }},
      {[](const Tensor& t) { return clamp(t, -0.5, 0.5); }, [](double v) { return std::fabs(v) <= 0.5 ? 1.0 : 0.0; }},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    INFO("case " << i);
    Tensor w = leaf(scalar(0.8, f64));
    Tensor xl = leaf(x);
    const Tensor gx = xg::grad({mul(sum(cases[i].first(xl)), w)}, {xl}, {}, create_graph())[0];
    const Tensor gw = xg::grad({sum(gx)}, {w})[0];
    double want = 0.0;
    for (double v : x.to_vector<double>()) want += cases[i].second(v);
    check_values(gw, {want}, 1e-14, 1e-14);
  }
}

// ---- binary arithmetic -------------------------------------------------------------------

TEST_CASE("gradgradcheck: add, sub, mul, div, maximum, minimum with broadcasting, both inputs") {
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"add", [](const std::vector<Tensor>& in) { return mul(add(in[0], in[1]), add(in[0], in[1])); }},
      {"sub", [](const std::vector<Tensor>& in) { return mul(sub(in[0], in[1]), sub(in[0], in[1])); }},
      {"mul", [](const std::vector<Tensor>& in) { return mul(in[0], in[1]); }},
      {"mul_self", [](const std::vector<Tensor>& in) { return mul(mul(in[0], in[1]), in[0]); }},
      {"div", [](const std::vector<Tensor>& in) { return div(in[0], in[1]); }},
      {"maximum", [](const std::vector<Tensor>& in) { return mul(maximum(in[0], in[1]), maximum(in[0], in[1])); }},
      {"minimum", [](const std::vector<Tensor>& in) { return mul(minimum(in[0], in[1]), minimum(in[0], in[1])); }},
  };
  std::uint64_t seed = 10;
  for (const auto& op : ops) {
    for (const auto& sh : binary_shapes()) {
      for (int flip = 0; flip < 2; ++flip) {
        const Shape& sa = flip ? sh.second : sh.first;
        const Shape& sb = flip ? sh.first : sh.second;
        INFO(op.first << " " << sa.str() << " with " << sb.str());
        // Divisors kept away from 0; maximum/minimum operands in disjoint-ish ranges
        // mixed by the random draw, ties having probability 0.
        const Tensor a = rnd(sa, -1.5, 1.5, ++seed);
        const Tensor b = rnd(sb, 0.5, 2.0, ++seed);
        gradgrad_ok(op.second, {a, b});
      }
    }
  }
}

TEST_CASE("second derivatives of div match the formulas: d2/da db = -1/b^2, d2/db2 = 2a/b^3") {
  const Tensor a0 = from_vector(Vec{0.7, -1.2, 2.0}, Shape{3});
  const Tensor b0 = from_vector(Vec{1.5, 0.4, -0.8}, Shape{3});
  Tensor a = leaf(a0), b = leaf(b0);
  const std::vector<Tensor> g = xg::grad({sum(div(a, b))}, {a, b}, {}, create_graph());
  const std::vector<Tensor> hb = xg::grad({sum(g[1])}, {a, b});  // d/d(a, b) of -a/b^2
  const std::vector<Tensor> ha = xg::grad({sum(g[0])}, {b});     // d/db of 1/b
  Vec want_ab, want_bb;
  const Vec av = a0.to_vector<double>(), bv = b0.to_vector<double>();
  for (std::size_t i = 0; i < av.size(); ++i) {
    want_ab.push_back(-1.0 / (bv[i] * bv[i]));
    want_bb.push_back(2.0 * av[i] / (bv[i] * bv[i] * bv[i]));
  }
  check_values(hb[0], want_ab, 1e-13, 1e-12);
  check_values(hb[1], want_bb, 1e-13, 1e-12);
  check_values(ha[0], want_ab, 1e-13, 1e-12);
}

TEST_CASE("gradgradcheck: sum_to and broadcast_to") {
  const Tensor x = rnd({2, 3, 4}, -1, 1, 21);
  gradgrad_ok([](const std::vector<Tensor>& in) { return pow(sum_to(in[0], Shape{3, 1}), 2.0); }, {x});
  gradgrad_ok([](const std::vector<Tensor>& in) { return pow(sum_to(in[0], Shape{2, 1, 4}), 3.0); }, {x});
  const Tensor y = rnd({3, 1}, -1, 1, 22);
  gradgrad_ok([](const std::vector<Tensor>& in) { return pow(broadcast_to(in[0], Shape{2, 3, 4}), 3.0); }, {y});
  gradgrad_ok([](const std::vector<Tensor>& in) { return broadcast_to(in[0], Shape{2, 3, 4}); }, {y});
}

// ---- reductions --------------------------------------------------------------------------

TEST_CASE("gradgradcheck: sum, mean, max, logsumexp over all dims, some dims, keepdim") {
  const Tensor x = rnd({2, 3, 4}, -1.5, 1.5, 31);
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> ops = {
      {"sum", [](const Tensor& t) { return sum(t); }},
      {"sum dim 1", [](const Tensor& t) { return sum(t, {1}); }},
      {"sum dims 0,2 keepdim", [](const Tensor& t) { return sum(t, {0, 2}, true); }},
      {"mean", [](const Tensor& t) { return mean(t); }},
      {"mean dim -1", [](const Tensor& t) { return mean(t, {-1}); }},
      {"mean dims 0,1 keepdim", [](const Tensor& t) { return mean(t, {0, 1}, true); }},
      {"max", [](const Tensor& t) { return max(t); }},
      {"max dim 1", [](const Tensor& t) { return max(t, 1); }},
      {"max dim 0 keepdim", [](const Tensor& t) { return max(t, 0, true); }},
      {"logsumexp dim 1", [](const Tensor& t) { return logsumexp(t, {1}); }},
      {"logsumexp dims 0,2 keepdim", [](const Tensor& t) { return logsumexp(t, {0, 2}, true); }},
      {"logsumexp all", [](const Tensor& t) { return logsumexp(t, {}); }},
  };
  for (const auto& op : ops) {
    INFO(op.first);
    auto f = op.second;
    gradgrad_ok([f](const std::vector<Tensor>& in) { return f(in[0]); }, {x});
    // Squared input and output: the reduction's backward sees a g that depends on x.
    gradgrad_ok([f](const std::vector<Tensor>& in) { return pow(f(mul(in[0], in[0])), 2.0); }, {x});
  }
}

TEST_CASE("second derivative of logsumexp is diag(p) - p p^T (p = softmax)") {
  const Vec xv = {0.3, -1.1, 0.8, 0.05};
  const Vec v = {1.0, -2.0, 0.5, 3.0};
  Tensor x = leaf(from_vector(xv, Shape{1, 4}));
  const Tensor g = xg::grad({sum(logsumexp(x, {1}))}, {x}, {}, create_graph())[0];
  const Tensor hv = xg::grad({sum(mul(g, from_vector(v, Shape{1, 4})))}, {x})[0];
  double z = 0.0;
  for (double t : xv) z += std::exp(t);
  Vec p, want;
  double pv = 0.0;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    p.push_back(std::exp(xv[i]) / z);
    pv += p[i] * v[i];
  }
  for (std::size_t j = 0; j < xv.size(); ++j) want.push_back(p[j] * v[j] - p[j] * pv);  // (H v)_j, H symmetric
  check_values(hv, want, 1e-14, 1e-12);
}

// ---- softmax -----------------------------------------------------------------------------

TEST_CASE("gradgradcheck: softmax and log_softmax along every dim, 0-d..3-D") {
  for (const Shape& s : {Shape{}, Shape{5}, Shape{3, 4}, Shape{2, 3, 2}}) {
    const Tensor x = rnd(s, -2, 2, 41);
    const int nd = std::max(s.size(), 1);
    for (int d = -1; d < nd; ++d) {
      INFO(s.str() << " dim " << d);
      gradgrad_ok([d](const std::vector<Tensor>& in) { return softmax(in[0], d); }, {x});
      gradgrad_ok([d](const std::vector<Tensor>& in) { return log_softmax(in[0], d); }, {x});
      gradgrad_ok([d](const std::vector<Tensor>& in) { return mul(softmax(in[0], d), log_softmax(in[0], d)); }, {x});
    }
  }
}

TEST_CASE("Hessian-vector products of softmax and log_softmax losses match the formulas") {
  // L = sum_i w_i s_i:  g_i = s_i (w_i - <w,s>),
  //   H_ij = s_i (d_ij - s_j)(w_i - <w,s>) - s_i s_j (w_j - <w,s>).
  // L = sum_i w_i log s_i:  g_i = w_i - s_i sum(w),  H_ij = -sum(w) s_i (d_ij - s_j).
  const Vec xv = {0.4, -0.9, 1.3, 0.1, -0.2};
  const Vec w = {0.5, 2.0, -1.0, 0.3, 1.1};
  const Vec v = {1.0, -0.5, 0.25, 2.0, -1.5};
  const std::size_t n = xv.size();
  double z = 0.0;
  for (double t : xv) z += std::exp(t);
  Vec s;
  for (double t : xv) s.push_back(std::exp(t) / z);
  double ws = 0.0, wsum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    ws += w[i] * s[i];
    wsum += w[i];
  }
  Vec hv_soft(n, 0.0), hv_log(n, 0.0);
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t i = 0; i < n; ++i) {
      const double dij = i == j ? 1.0 : 0.0;
      hv_soft[j] += v[i] * (s[i] * (dij - s[j]) * (w[i] - ws) - s[i] * s[j] * (w[j] - ws));
      hv_log[j] += v[i] * (-wsum * s[i] * (dij - s[j]));
    }
  }
  // Along dim 1 of [1, 5] (contiguous rows) and dim 0 of [5, 1] (the strided kernel).
  for (int layout = 0; layout < 2; ++layout) {
    INFO("layout " << layout);
    const Shape sh = layout == 0 ? Shape{1, 5} : Shape{5, 1};
    const int dim = layout == 0 ? 1 : 0;
    for (int log_form = 0; log_form < 2; ++log_form) {
      Tensor x = leaf(from_vector(xv, sh));
      const Tensor y = log_form ? log_softmax(x, dim) : softmax(x, dim);
      const Tensor g = xg::grad({sum(mul(y, from_vector(w, sh)))}, {x}, {}, create_graph())[0];
      const Tensor hv = xg::grad({sum(mul(g, from_vector(v, sh)))}, {x})[0];
      check_values(hv, log_form ? hv_log : hv_soft, 1e-14, 1e-12);
    }
  }
}

// ---- selection ---------------------------------------------------------------------------

TEST_CASE("gradgradcheck: where and masked_fill with broadcast conditions and masks") {
  const Tensor cond = from_vector(std::vector<bool>{true, false, false}, Shape{3});
  const Tensor a = rnd({2, 3}, -1, 1, 51), b = rnd({2, 1}, -1, 1, 52);
  gradgrad_ok([cond](const std::vector<Tensor>& in) { return pow(where(cond, in[0], in[1]), 3.0); }, {a, b});
  gradgrad_ok([cond](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); }, {a, b});
  const Tensor mask = from_vector(std::vector<bool>{false, true}, Shape{2, 1});
  const Tensor x = rnd({2, 3}, -1, 1, 53);
  gradgrad_ok([mask](const std::vector<Tensor>& in) { return pow(masked_fill(in[0], mask, 0.5), 3.0); }, {x});
  gradgrad_ok([mask](const std::vector<Tensor>& in) { return masked_fill(in[0], mask, 0.5); }, {x});
}

// ---- shape -------------------------------------------------------------------------------

TEST_CASE("gradgradcheck: views, permutes and slices (alone and squared)") {
  const Tensor x = rnd({2, 3, 4}, -1, 1, 61);
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> ops = {
      {"reshape", [](const Tensor& t) { return reshape(t, Shape{4, -1}); }},
      {"view", [](const Tensor& t) { return t.view(Shape{6, 4}); }},
      {"flatten", [](const Tensor& t) { return flatten(t, 1); }},
      {"transpose", [](const Tensor& t) { return transpose(t, 0, 2); }},
      {"permute", [](const Tensor& t) { return permute(t, {1, 2, 0}); }},
      {"squeeze", [](const Tensor& t) { return squeeze(unsqueeze(t, 1)); }},
      {"squeeze dim", [](const Tensor& t) { return squeeze(reshape(t, Shape{2, 1, 12}), 1); }},
      {"unsqueeze", [](const Tensor& t) { return unsqueeze(t, -1); }},
      {"slice", [](const Tensor& t) { return slice(t, 1, 1, 3); }},
      {"narrow", [](const Tensor& t) { return narrow(t, 2, 1, 2); }},
      {"select", [](const Tensor& t) { return select(t, 1, -1); }},
      {"row_block", [](const Tensor& t) { return row_block(reshape(t, Shape{6, 4}), 2, 3); }},
      {"clone", [](const Tensor& t) { return t.clone(); }},
      {"concat of splits", [](const Tensor& t) {
         const std::vector<Tensor> p = split(t, 3, 2);
         return concat({mul(p[1], 2.0), p[0]}, 2);
       }},
      {"stack of chunks", [](const Tensor& t) {
         const std::vector<Tensor> p = chunk(t, 3, 1);
         return stack({p[2], mul(p[0], p[1])}, 0);
       }},
  };
  for (const auto& op : ops) {
    INFO(op.first);
    auto f = op.second;
    gradgrad_ok([f](const std::vector<Tensor>& in) { return f(in[0]); }, {x});
    gradgrad_ok([f](const std::vector<Tensor>& in) { return mul(f(in[0]), f(in[0])); }, {x});
  }
}

TEST_CASE("gradgradcheck: concat and stack of several inputs") {
  const Tensor a = rnd({2, 3}, -1, 1, 62), b = rnd({2, 1}, -1, 1, 63), c = rnd({2, 3}, -1, 1, 64);
  gradgrad_ok([](const std::vector<Tensor>& in) { return pow(concat({in[0], in[1], in[2]}, 1), 3.0); }, {a, b, c});
  gradgrad_ok([](const std::vector<Tensor>& in) { return pow(stack({in[0], in[1]}, 1), 3.0); }, {a, c});
  gradgrad_ok([](const std::vector<Tensor>& in) { return stack({in[0], in[1]}, -1); }, {a, c});
}

TEST_CASE("compound assignments on non-leaves are twice differentiable (recorded as the ops)") {
  const Tensor a = rnd({2, 3}, 0.5, 1.5, 65), b = rnd({3}, 0.5, 1.5, 66);
  gradgrad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor t = mul(in[0], 1.0);
        t *= in[1];
        t /= in[0];
        t += mul(in[0], in[0]);
        t -= in[1];
        return t;
      },
      {a, b});
}

TEST_CASE("to: a dtype round trip keeps the second derivative (computed in float32, exact here)") {
  // L = sum((x as f32)^2): dL/dx = 2 x (converted back), d/dx sum(dL/dx) = 2.
  Tensor x = leaf(from_vector(Vec{0.5, -1.25, 2.0}, Shape{3}));
  const Tensor y = x.to(f32);
  const Tensor g = xg::grad({sum(mul(y, y))}, {x}, {}, create_graph())[0];
  CHECK(g.dtype() == f64);
  check_values(g, {1.0, -2.5, 4.0}, 0.0, 0.0);
  check_values(xg::grad({sum(g)}, {x})[0], {2.0, 2.0, 2.0}, 0.0, 0.0);
}

// ---- indexing ----------------------------------------------------------------------------

TEST_CASE("gradgradcheck: index_select, gather and embedding with repeated indices") {
  const Tensor x = rnd({4, 3}, -1, 1, 71);
  const Tensor idx = from_vector(Ids{2, 0, 2}, Shape{3});
  const Tensor ids2 = from_vector(Ids{3, 1, 1, 0}, Shape{2, 2});
  const Tensor gidx = from_vector(Ids{0, 2, 2, 1, 0, 0}, Shape{2, 3});
  for (int sq = 0; sq < 2; ++sq) {
    INFO("squared " << sq);
    auto out = [sq](const Tensor& t) { return sq ? mul(t, t) : t; };
    gradgrad_ok([idx, out](const std::vector<Tensor>& in) { return out(index_select(in[0], 0, idx)); }, {x});
    gradgrad_ok([idx, out](const std::vector<Tensor>& in) { return out(index_select(in[0], 1, idx)); }, {x});
    gradgrad_ok([ids2, out](const std::vector<Tensor>& in) { return out(index_select(in[0], 0, ids2)); }, {x});
    gradgrad_ok([gidx, out](const std::vector<Tensor>& in) { return out(gather(in[0], 1, gidx)); }, {x});
    gradgrad_ok([gidx, out](const std::vector<Tensor>& in) { return out(gather(transpose(in[0], 0, 1), 0, gidx)); },
                {x});
    gradgrad_ok([ids2, out](const std::vector<Tensor>& in) { return out(embedding(ids2, in[0])); }, {x});
    gradgrad_ok([ids2, out](const std::vector<Tensor>& in) { return out(embedding(ids2, in[0], 1)); }, {x});
  }
}

TEST_CASE("embedding under create_graph: the padding row stays exactly zero to second order") {
  // L = sum(E[ids]^3): dL/dE[r] = 3 c_r E[r]^2 (c_r = count of r in ids), 0 for the padding row;
  // d/dE sum(dL/dE) = 6 c_r E[r], again 0 for the padding row.
  Tensor w = leaf(from_vector(Vec{0.5, -1.0, 2.0, 0.25, -0.75, 1.5}, Shape{3, 2}));
  const Tensor ids = from_vector(Ids{2, 0, 2, 1}, Shape{4});
  const Tensor g = xg::grad({sum(pow(embedding(ids, w, 1), 3.0))}, {w}, {}, create_graph())[0];
  check_values(g, {3 * 0.25, 3 * 1.0, 0.0, 0.0, 2 * 3 * 0.5625, 2 * 3 * 2.25}, 1e-14, 1e-14);
  check_values(xg::grad({sum(g)}, {w})[0], {6 * 0.5, 6 * -1.0, 0.0, 0.0, 2 * 6 * -0.75, 2 * 6 * 1.5}, 1e-14, 1e-14);
}

TEST_CASE("gather's create_graph gradient is differentiable again (third derivative)") {
  // fn(x) = d/dx sum(gather(x)^3): its gradgradcheck differentiates gather's backward twice.
  const Tensor x = rnd({3, 4}, -1, 1, 72);
  const Tensor gidx = from_vector(Ids{0, 3, 3, 1, 2, 0}, Shape{3, 2});
  gradgrad_ok(
      [gidx](const std::vector<Tensor>& in) {
        // gradgradcheck probes fn's output shape under NoGradGuard; the inner gradient
        // needs recording even there.
        const bool prev = is_grad_enabled();
        set_grad_enabled(true);
        struct Restore {
          bool on;
          ~Restore() { set_grad_enabled(on); }
        } restore{prev};
        return xg::grad({sum(pow(gather(in[0], 1, gidx), 3.0))}, {in[0]}, {}, create_graph())[0];
      },
      {x});
}

// ---- linear algebra ----------------------------------------------------------------------

TEST_CASE("gradgradcheck: matmul for every supported rank pair, both inputs") {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {Shape{2, 3}, Shape{3, 4}}, {Shape{2, 2, 3}, Shape{2, 3, 2}}, {Shape{2, 2, 3}, Shape{3, 2}},
      {Shape{3}, Shape{3, 2}},    {Shape{2, 3}, Shape{3}},
  };
  std::uint64_t seed = 80;
  for (const auto& s : shapes) {
    INFO(s.first.str() << " x " << s.second.str());
    const Tensor a = rnd(s.first, -1, 1, ++seed), b = rnd(s.second, -1, 1, ++seed);
    gradgrad_ok([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b});
    gradgrad_ok([](const std::vector<Tensor>& in) { return pow(matmul(in[0], in[1]), 2.0); }, {a, b});
  }
}

TEST_CASE("gradgradcheck: linear with and without bias, 1-D to 3-D input") {
  std::uint64_t seed = 90;
  for (const Shape& xs : {Shape{3}, Shape{2, 3}, Shape{2, 2, 3}}) {
    INFO(xs.str());
    const Tensor x = rnd(xs, -1, 1, ++seed), w = rnd({4, 3}, -1, 1, ++seed), b = rnd({4}, -1, 1, ++seed);
    gradgrad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
    gradgrad_ok([](const std::vector<Tensor>& in) { return tanh(linear(in[0], in[1], in[2])); }, {x, w, b});
    gradgrad_ok([](const std::vector<Tensor>& in) { return pow(linear(in[0], in[1]), 2.0); }, {x, w});
  }
}

// matmul_t: the product with transpose flags that matmul's and linear's create_graph
// backwards record.
TEST_CASE("matmul_t: every flag pair, 2-D and batched, equals matmul of explicit transposes; gradcheck and gradgradcheck") {
  std::uint64_t seed = 300;
  // (M, K, N, batch): batch 0 is 2-D. Sizes of 1 included.
  const std::vector<std::array<std::int64_t, 4>> dims{{2, 3, 4, 0}, {1, 3, 1, 0}, {3, 1, 2, 0}, {2, 3, 2, 2}, {1, 2, 3, 1}};
  for (const auto& d : dims) {
    const std::int64_t M = d[0], K = d[1], N = d[2], nb = d[3];
    for (const bool ta : {false, true}) {
      for (const bool tb : {false, true}) {
        CAPTURE(M);
        CAPTURE(K);
        CAPTURE(N);
        CAPTURE(nb);
        CAPTURE(ta);
        CAPTURE(tb);
        auto shape = [&](std::int64_t r, std::int64_t c) { return nb > 0 ? Shape{nb, r, c} : Shape{r, c}; };
        const Tensor a = rnd(ta ? shape(K, M) : shape(M, K), -1, 1, ++seed);
        const Tensor b = rnd(tb ? shape(N, K) : shape(K, N), -1, 1, ++seed);
        const int d0 = nb > 0 ? 1 : 0;
        const Tensor want = matmul(ta ? transpose(a, d0, d0 + 1) : a, tb ? transpose(b, d0, d0 + 1) : b);
        const Tensor got = detail::matmul_t(a, ta, b, tb);
        REQUIRE(got.shape() == want.shape());
        check_close(got, want, 1e-14);
        auto f = [ta, tb](const std::vector<Tensor>& in) { return detail::matmul_t(in[0], ta, in[1], tb); };
        auto f2 = [ta, tb](const std::vector<Tensor>& in) { return pow(detail::matmul_t(in[0], ta, in[1], tb), 2.0); };
        xgtest::gradcheck_ok(f, {a, b});
        gradgrad_ok(f, {a, b});
        gradgrad_ok(f2, {a, b});
      }
    }
  }
}

TEST_CASE("matmul_t: bad operands are a ShapeError or DtypeError naming matmul_t and the shapes") {
  const Tensor a = rnd({2, 3}, -1, 1, 1), b = rnd({3, 4}, -1, 1, 2);
  auto msg = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  CHECK_THROWS_AS(detail::matmul_t(a, true, b, false), ShapeError);  // [3,2] x [3,4]
  CHECK(msg([&] { detail::matmul_t(a, true, b, false); }).find("matmul_t: [2,3]") != std::string::npos);
  CHECK_THROWS_AS(detail::matmul_t(a, false, rnd({2, 3, 4}, -1, 1, 3), false), ShapeError);  // ranks differ
  CHECK_THROWS_AS(detail::matmul_t(rnd({2, 2, 3}, -1, 1, 4), false, rnd({3, 3, 4}, -1, 1, 5), false), ShapeError);
  CHECK_THROWS_AS(detail::matmul_t(rnd({3}, -1, 1, 6), false, rnd({3}, -1, 1, 7), false), ShapeError);  // 1-D
  CHECK_THROWS_AS(detail::matmul_t(a, false, b.to(f32), false), DtypeError);
  CHECK(msg([&] { detail::matmul_t(a, false, rnd({2, 3, 4}, -1, 1, 3), false); }).find("matmul_t") != std::string::npos);
}

TEST_CASE("linear's create_graph backward on an empty batch: exactly zero weight and bias gradients") {
  Tensor x = leaf(zeros({0, 3}, f64)), w = leaf(rnd({2, 3}, -1, 1, 93)), b = leaf(rnd({2}, -1, 1, 94));
  const std::vector<Tensor> g = xg::grad({sum(linear(x, w, b))}, {x, w, b}, {}, create_graph());
  CHECK(g[0].shape() == Shape{0, 3});
  check_values(g[1], Vec(6, 0.0), 0.0, 0.0);
  check_values(g[2], Vec(2, 0.0), 0.0, 0.0);
}

TEST_CASE("mixed second derivatives of matmul and linear match the formulas") {
  // L = sum(A B), A [M,K], B [K,N]: dL/dA[i,k] = sum_n B[k,n], so d/dB sum(dL/dA) = M everywhere.
  Tensor a = leaf(rnd({3, 2}, -1, 1, 95)), b = leaf(rnd({2, 4}, -1, 1, 96));
  const Tensor ga = xg::grad({sum(matmul(a, b))}, {a}, {}, create_graph())[0];
  check_values(xg::grad({sum(ga)}, {b})[0], Vec(8, 3.0), 1e-14, 0.0);
  // L = sum(x Wᵀ + bias), x [n, in]: dL/dW[o,i] = sum_r x[r,i], so d/dx sum(dL/dW) = out everywhere.
  Tensor x = leaf(rnd({5, 2}, -1, 1, 97)), w = leaf(rnd({3, 2}, -1, 1, 98));
  const Tensor gw = xg::grad({sum(linear(x, w))}, {w}, {}, create_graph())[0];
  check_values(xg::grad({sum(gw)}, {x})[0], Vec(10, 3.0), 1e-14, 0.0);
}

// ---- dropout -----------------------------------------------------------------------------

TEST_CASE("gradgradcheck: dropout (the mask a constant of a fixed seed)") {
  const Tensor x = rnd({3, 4}, -1, 1, 99);
  gradgrad_ok(
      [](const std::vector<Tensor>& in) {
        Generator gen(5);
        return pow(dropout(in[0], 0.4, true, &gen), 3.0);
      },
      {x});
}

// ---- both backward paths agree -----------------------------------------------------------

TEST_CASE("the create_graph backward equals the first-order one for every op with two paths") {
  const Tensor x0 = rnd({3, 4}, 0.5, 1.5, 111);
  const Tensor w0 = rnd({5, 4}, -1, 1, 112);
  const Tensor gidx = from_vector(Ids{0, 3, 3, 1, 2, 0}, Shape{3, 2});
  const Tensor ids = from_vector(Ids{4, 0, 4, 2}, Shape{2, 2});
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&, const Tensor&)>>> ops = {
      {"exp", [](const Tensor& x, const Tensor&) { return exp(x); }},
      {"log", [](const Tensor& x, const Tensor&) { return log(x); }},
      {"sqrt", [](const Tensor& x, const Tensor&) { return sqrt(x); }},
      {"tanh", [](const Tensor& x, const Tensor&) { return tanh(x); }},
      {"sigmoid", [](const Tensor& x, const Tensor&) { return sigmoid(x); }},
      {"relu", [](const Tensor& x, const Tensor&) { return relu(sub(x, 1.0)); }},
      {"softmax", [](const Tensor& x, const Tensor&) { return softmax(x, 0); }},
      {"log_softmax", [](const Tensor& x, const Tensor&) { return log_softmax(x, 1); }},
      {"logsumexp", [](const Tensor& x, const Tensor&) { return logsumexp(x, {1}); }},
      {"sum dim", [](const Tensor& x, const Tensor&) { return sum(x, {0}); }},
      {"max dim", [](const Tensor& x, const Tensor&) { return max(x, 1); }},
      {"matmul", [](const Tensor& x, const Tensor& w) { return matmul(x, transpose(w, 0, 1)); }},
      {"linear", [](const Tensor& x, const Tensor& w) { return linear(x, w); }},
      {"gather", [gidx](const Tensor& x, const Tensor&) { return gather(x, 1, gidx); }},
      {"embedding", [ids](const Tensor&, const Tensor& w) { return embedding(ids, w, 2); }},
      {"row_block", [](const Tensor&, const Tensor& w) { return row_block(w, 1, 3); }},
  };
  for (const auto& op : ops) {
    INFO(op.first);
    std::vector<Tensor> g[2];
    for (int cg = 0; cg < 2; ++cg) {
      Tensor x = leaf(x0), w = leaf(w0);
      const Tensor y = op.second(x, w);
      const Tensor seed = rnd(y.shape(), -1, 1, 113);
      GradOptions o;  // (set field by field: -Wextra flags designated initializers that skip retain_graph)
      o.create_graph = cg == 1;
      o.allow_unused = true;
      g[cg] = xg::grad({y}, {x, w}, {seed}, o);
    }
    for (int i = 0; i < 2; ++i) {
      REQUIRE(g[0][i].defined() == g[1][i].defined());
      if (g[0][i].defined()) check_close(g[1][i], g[0][i], 1e-14, 1e-13);
    }
  }
}
