// What each op's backward saves. An op that reads an input's (or its output's) values in
// backward keeps them as a SavedTensor: writing into that tensor (or a view of it) after
// the forward makes backward throw StateError naming the op and the input. An op whose
// backward does not read a tensor's values must let it be written: no error, and the
// same gradients as without the write.
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace xg;

namespace {

// Deterministic, varied float64 values.
Tensor vals(const Shape& s, double seed) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.9 * std::sin(1.3 * static_cast<double>(i) + seed) + 0.05 * seed;
  return from_vector(v, s);
}

// Positive values (log, sqrt, pow, div's denominator).
Tensor pos(const Shape& s, double seed) { return add(abs(vals(s, seed)), 0.5); }

Tensor leaf(const Shape& s, double seed) {
  Tensor t = vals(s, seed);
  t.requires_grad_();
  return t;
}

Tensor pos_leaf(const Shape& s, double seed) {
  Tensor t = pos(s, seed);
  t.requires_grad_();
  return t;
}

Tensor ids(std::initializer_list<std::int64_t> v, const Shape& s) { return from_vector(std::vector<std::int64_t>(v), s); }

// A write through data<T>() (the same index for int64, so the graph stays valid).
void poke(Tensor t) {
  if (t.dtype() == Dtype::i64) {
    std::int64_t* p = t.data<std::int64_t>();
    p[0] = p[0];
  } else {
    double* p = t.data<double>();
    p[0] += 0.25;
  }
}

struct Graph {
  Tensor out;                 // backward starts here, with a varied seed
  Tensor victim;              // what the test writes into
  std::vector<Tensor> leaves;  // whose gradients are compared
};

AttentionHeads heads1(std::int64_t L, std::int64_t S, std::int64_t d) {
  AttentionHeads hd;
  hd.B = 1;
  hd.H = 1;
  hd.Lq = L;
  hd.S = S;
  hd.dk = d;
  hd.dv = d;
  hd.q = head_strides(false, 1, L, d);
  hd.k = head_strides(false, 1, S, d);
  hd.v = head_strides(false, 1, S, d);
  hd.o = head_strides(false, 1, L, d);
  return hd;
}

void run_backward(const Graph& g) { g.out.backward(vals(g.out.shape(), 7.0)); }

struct SavedCase {
  std::string what;
  std::vector<std::string> needles;
  std::function<Graph()> build;
};

struct FreeCase {
  std::string what;
  std::function<Graph()> build;
};

const std::string in0 = "saved input 0", in1 = "saved input 1", in2 = "saved input 2", in3 = "saved input 3",
                  output = "saved its output";

}  // namespace

TEST_CASE("an op's backward refuses a saved input or output written after the forward, naming the op") {
  const std::vector<SavedCase> cases = {
      {"mul, a", {"'mul'", in0}, [] { Tensor a = leaf({2, 3}, 1), b = leaf({2, 3}, 2); return Graph{mul(a, b), a, {a, b}}; }},
      {"mul, b", {"'mul'", in1}, [] { Tensor a = leaf({2, 3}, 1), b = leaf({3}, 2); return Graph{mul(a, b), b, {a, b}}; }},
      {"mul, a view of a saved input", {"'mul'", in0}, [] {
         Tensor base = vals({6}, 1), w = leaf({2, 3}, 2);
         return Graph{mul(reshape(base, {2, 3}), w), base, {w}};
       }},
      {"div, b", {"'div'", in1}, [] { Tensor a = leaf({3}, 1), b = pos_leaf({3}, 2); return Graph{div(a, b), b, {a, b}}; }},
      {"div, output", {"'div'", output}, [] {
         Tensor a = leaf({3}, 1), b = pos_leaf({3}, 2);
         Tensor y = div(a, b);
         return Graph{y, y, {a, b}};
       }},
      {"rdiv, b", {"'rdiv_scalar'", in0}, [] { Tensor b = pos_leaf({3}, 2); return Graph{rdiv(2.0, b), b, {b}}; }},
      {"matmul, a", {"'matmul'", in0}, [] { Tensor a = leaf({2, 3}, 1), b = leaf({3, 4}, 2); return Graph{matmul(a, b), a, {a, b}}; }},
      {"matmul, b", {"'matmul'", in1}, [] { Tensor a = leaf({2, 3}, 1), b = leaf({3, 4}, 2); return Graph{matmul(a, b), b, {a, b}}; }},
      {"linear, x", {"'linear'", in0}, [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({4, 3}, 2), b = leaf({4}, 3);
         return Graph{linear(x, w, b), x, {x, w, b}};
       }},
      {"linear, weight", {"'linear'", in1}, [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({4, 3}, 2);
         return Graph{linear(x, w), w, {x, w}};
       }},
      {"tanh, output", {"'tanh'", output}, [] { Tensor x = leaf({3}, 1); Tensor y = tanh(x); return Graph{y, y, {x}}; }},
      {"sigmoid, output", {"'sigmoid'", output}, [] { Tensor x = leaf({3}, 1); Tensor y = sigmoid(x); return Graph{y, y, {x}}; }},
      {"relu, output", {"'relu'", output}, [] { Tensor x = leaf({3}, 1); Tensor y = relu(x); return Graph{y, y, {x}}; }},
      {"exp, output", {"'exp'", output}, [] { Tensor x = leaf({3}, 1); Tensor y = exp(x); return Graph{y, y, {x}}; }},
      {"sqrt, output", {"'sqrt'", output}, [] { Tensor x = pos_leaf({3}, 1); Tensor y = sqrt(x); return Graph{y, y, {x}}; }},
      {"log, x", {"'log'", in0}, [] { Tensor x = pos_leaf({3}, 1); return Graph{log(x), x, {x}}; }},
      {"pow, x", {"'pow'", in0}, [] { Tensor x = pos_leaf({3}, 1); return Graph{pow(x, 3.0), x, {x}}; }},
      {"abs, x", {"'abs'", in0}, [] { Tensor x = leaf({3}, 1); return Graph{abs(x), x, {x}}; }},
      {"clamp, x", {"'clamp'", in0}, [] { Tensor x = leaf({3}, 1); return Graph{clamp(x, -0.5, 0.5), x, {x}}; }},
      {"softmax, output", {"'softmax'", output}, [] { Tensor x = leaf({2, 3}, 1); Tensor y = softmax(x, 1); return Graph{y, y, {x}}; }},
      {"log_softmax, output", {"'log_softmax'", output}, [] {
         Tensor x = leaf({2, 3}, 1);
         Tensor y = log_softmax(x, 1);
         return Graph{y, y, {x}};
       }},
      {"logsumexp, x", {"'logsumexp'", in0}, [] { Tensor x = leaf({2, 3}, 1); return Graph{logsumexp(x, {1}), x, {x}}; }},
      {"logsumexp, output", {"'logsumexp'", output}, [] {
         Tensor x = leaf({2, 3}, 1);
         Tensor y = logsumexp(x, {1});
         return Graph{y, y, {x}};
       }},
      {"maximum, b", {"'maximum'", in1}, [] { Tensor a = leaf({3}, 1), b = leaf({3}, 2); return Graph{maximum(a, b), b, {a, b}}; }},
      {"minimum, a", {"'minimum'", in0}, [] { Tensor a = leaf({3}, 1), b = leaf({3}, 2); return Graph{minimum(a, b), a, {a, b}}; }},
      {"where, cond", {"'where'", in2}, [] {
         Tensor c = ids({1, 0, 1}, {3}), a = leaf({3}, 1), b = leaf({3}, 2);
         return Graph{where(c, a, b), c, {a, b}};
       }},
      {"masked_fill, mask", {"'masked_fill'", in1}, [] {
         Tensor m = ids({0, 1, 0}, {3}), x = leaf({3}, 1);
         return Graph{masked_fill(x, m, 5.0), m, {x}};
       }},
      {"cross_entropy, logits", {"'cross_entropy'", in0}, [] {
         Tensor x = leaf({2, 3}, 1);
         return Graph{cross_entropy(x, ids({0, 2}, {2})), x, {x}};
       }},
      {"cross_entropy, target", {"'cross_entropy'", in1}, [] {
         Tensor x = leaf({2, 3}, 1), t = ids({0, 2}, {2});
         return Graph{cross_entropy(x, t), t, {x}};
       }},
      {"nll_loss, target", {"'nll_loss'", in1}, [] {
         Tensor x = leaf({2, 3}, 1), t = ids({1, 2}, {2});
         return Graph{nll_loss(x, t), t, {x}};
       }},
      {"mse_loss, b", {"'mse_loss'", in1}, [] { Tensor a = leaf({3}, 1), b = vals({3}, 2); return Graph{mse_loss(a, b), b, {a}}; }},
      {"layer_norm, x", {"'layer_norm'", in0}, [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({3}, 2), b = leaf({3}, 3);
         return Graph{layer_norm(x, {3}, w, b), x, {x, w, b}};
       }},
      {"layer_norm, weight", {"'layer_norm'", in1}, [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({3}, 2), b = leaf({3}, 3);
         return Graph{layer_norm(x, {3}, w, b), w, {x, w, b}};
       }},
      {"conv2d, x", {"'conv2d'", in0}, [] {
         Tensor x = leaf({1, 2, 4, 4}, 1), w = leaf({3, 2, 2, 2}, 2), b = leaf({3}, 3);
         return Graph{conv2d(x, w, b, 1, 1), x, {x, w, b}};
       }},
      {"conv2d, weight", {"'conv2d'", in1}, [] {
         Tensor x = leaf({1, 2, 4, 4}, 1), w = leaf({3, 2, 2, 2}, 2), b = leaf({3}, 3);
         return Graph{conv2d(x, w, b, 2), w, {x, w, b}};
       }},
      {"embedding, ids", {"'embedding'", in1}, [] {
         Tensor i = ids({0, 2, 1}, {3}), w = leaf({3, 2}, 1);
         return Graph{embedding(i, w), i, {w}};
       }},
      {"index_select, index", {"'index_select'", in1}, [] {
         Tensor x = leaf({3, 2}, 1), i = ids({2, 0}, {2});
         return Graph{index_select(x, 0, i), i, {x}};
       }},
      {"gather, index", {"'gather'", in1}, [] {
         Tensor x = leaf({2, 3}, 1), i = ids({2, 0}, {2, 1});
         return Graph{gather(x, 1, i), i, {x}};
       }},
      {"lstm_cell_fused, c_prev", {"'lstm_cell_fused'", in1}, [] {
         Tensor g = leaf({1, 8}, 1), c = leaf({1, 2}, 2);
         return Graph{lstm_cell_fused(g, c).hc, c, {g, c}};
       }},
      {"lstm_cell_fused, h (a view of the output)", {"'lstm_cell_fused'", output}, [] {
         Tensor g = leaf({1, 8}, 1), c = leaf({1, 2}, 2);
         const LSTMGatesOut o = lstm_cell_fused(g, c);
         return Graph{o.c, o.h, {g, c}};
       }},
      {"lstm_sequence, w_hh", {"'lstm_sequence'", in1}, [] {
         Tensor gx = leaf({2, 1, 8}, 1), w = leaf({8, 2}, 2), h0 = leaf({1, 2}, 3), c0 = leaf({1, 2}, 4);
         return Graph{lstm_sequence(gx, w, h0, c0).y, w, {gx, w, h0, c0}};
       }},
      {"lstm_sequence, h0", {"'lstm_sequence'", in2}, [] {
         Tensor gx = leaf({2, 1, 8}, 1), w = leaf({8, 2}, 2), h0 = leaf({1, 2}, 3), c0 = leaf({1, 2}, 4);
         return Graph{lstm_sequence(gx, w, h0, c0).y, h0, {gx, w, h0, c0}};
       }},
      {"lstm_sequence, c0", {"'lstm_sequence'", in3}, [] {
         Tensor gx = leaf({2, 1, 8}, 1), w = leaf({8, 2}, 2), h0 = leaf({1, 2}, 3), c0 = leaf({1, 2}, 4);
         return Graph{lstm_sequence(gx, w, h0, c0).y, c0, {gx, w, h0, c0}};
       }},
      {"lstm_sequence, y (a view of the output)", {"'lstm_sequence'", output}, [] {
         Tensor gx = leaf({2, 1, 8}, 1), w = leaf({8, 2}, 2);
         const LSTMSequenceOut o = lstm_sequence(gx, w);
         return Graph{o.c_n, o.y, {gx, w}};
       }},
      {"gru_cell_fused, gh", {"'gru_cell_fused'", in1}, [] {
         Tensor gi = leaf({1, 6}, 1), gh = leaf({1, 6}, 2), h = leaf({1, 2}, 3);
         return Graph{gru_cell_fused(gi, gh, h), gh, {gi, gh, h}};
       }},
      {"gru_cell_fused, h_prev", {"'gru_cell_fused'", in2}, [] {
         Tensor gi = leaf({1, 6}, 1), gh = leaf({1, 6}, 2), h = leaf({1, 2}, 3);
         return Graph{gru_cell_fused(gi, gh, h), h, {gi, gh, h}};
       }},
      {"masked_softmax, output", {"'masked_softmax'", output}, [] {
         Tensor x = leaf({2, 3}, 1);
         Tensor y = masked_softmax(x);
         return Graph{y, y, {x}};
       }},
      {"additive_scores, v", {"'additive_scores'", in2}, [] {
         Tensor k = leaf({1, 3, 2}, 1), q = leaf({1, 2}, 2), v = leaf({2}, 3);
         return Graph{additive_scores(k, q, v), v, {k, q, v}};
       }},
      {"attention_probs, q", {"'attention_probs'", in0}, [] {
         Tensor q = leaf({2, 1, 2}, 1), k = leaf({3, 1, 2}, 2);
         return Graph{attention_probs(q, k, heads1(2, 3, 2), 0.7, {1, 1, 2, 3}), q, {q, k}};
       }},
      {"attention_probs, k", {"'attention_probs'", in1}, [] {
         Tensor q = leaf({2, 1, 2}, 1), k = leaf({3, 1, 2}, 2);
         return Graph{attention_probs(q, k, heads1(2, 3, 2), 0.7, {1, 1, 2, 3}), k, {q, k}};
       }},
      {"attention_probs, output", {"'attention_probs'", output}, [] {
         Tensor q = leaf({2, 1, 2}, 1), k = leaf({3, 1, 2}, 2);
         Tensor p = attention_probs(q, k, heads1(2, 3, 2), 0.7, {1, 1, 2, 3});
         return Graph{p, p, {q, k}};
       }},
      {"attention_apply, p", {"'attention_apply'", in0}, [] {
         Tensor p = leaf({1, 1, 2, 3}, 1), v = leaf({3, 1, 2}, 2);
         return Graph{attention_apply(p, v, heads1(2, 3, 2), {2, 1, 2}), p, {p, v}};
       }},
      {"attention_apply, v", {"'attention_apply'", in1}, [] {
         Tensor p = leaf({1, 1, 2, 3}, 1), v = leaf({3, 1, 2}, 2);
         return Graph{attention_apply(p, v, heads1(2, 3, 2), {2, 1, 2}), v, {p, v}};
       }},
  };
  for (const SavedCase& c : cases) {
    CAPTURE(c.what);
    // Without the write, backward runs.
    CHECK_NOTHROW(run_backward(c.build()));
    const Graph g = c.build();
    poke(g.victim);
    std::vector<std::string> needles = c.needles;
    needles.push_back("modified in place");
    xgtest::check_throws_msg<StateError>([&] { run_backward(g); }, needles);
  }
}

TEST_CASE("writing into a tensor whose values an op's backward does not read is allowed, and the gradients stay right") {
  const std::vector<FreeCase> cases = {
      {"add, a", [] { Tensor a = leaf({2, 3}, 1), b = leaf({3}, 2); return Graph{add(a, b), a, {a, b}}; }},
      {"add, b", [] { Tensor a = leaf({2, 3}, 1), b = leaf({3}, 2); return Graph{add(a, b), b, {a, b}}; }},
      {"sub, b", [] { Tensor a = leaf({3}, 1), b = leaf({3}, 2); return Graph{sub(a, b), b, {a, b}}; }},
      {"add scalar", [] { Tensor a = leaf({3}, 1); return Graph{add(a, 2.0), a, {a}}; }},
      {"mul scalar", [] { Tensor a = leaf({3}, 1); return Graph{mul(a, 2.0), a, {a}}; }},
      {"neg", [] { Tensor a = leaf({3}, 1); return Graph{neg(a), a, {a}}; }},
      {"div, a (only b and the output are read)", [] {
         Tensor a = leaf({3}, 1), b = pos_leaf({3}, 2);
         return Graph{div(a, b), a, {a, b}};
       }},
      {"sum", [] { Tensor a = leaf({2, 3}, 1); return Graph{sum(a, {1}), a, {a}}; }},
      {"mean", [] { Tensor a = leaf({2, 3}, 1); return Graph{mean(a), a, {a}}; }},
      {"max", [] { Tensor a = leaf({2, 3}, 1); return Graph{max(a, 1), a, {a}}; }},
      {"reshape", [] { Tensor a = leaf({2, 3}, 1); return Graph{reshape(a, {3, 2}), a, {a}}; }},
      {"transpose", [] { Tensor a = leaf({2, 3}, 1); return Graph{transpose(a, 0, 1), a, {a}}; }},
      {"narrow", [] { Tensor a = leaf({2, 3}, 1); return Graph{narrow(a, 1, 1, 2), a, {a}}; }},
      {"concat", [] { Tensor a = leaf({2, 3}, 1), b = leaf({1, 3}, 2); return Graph{concat({a, b}, 0), b, {a, b}}; }},
      {"stack", [] { Tensor a = leaf({3}, 1), b = leaf({3}, 2); return Graph{stack({a, b}, 0), a, {a, b}}; }},
      {"clone", [] { Tensor a = leaf({3}, 1); return Graph{a.clone(), a, {a}}; }},
      {"exp, x (the output is read)", [] { Tensor x = leaf({3}, 1); return Graph{exp(x), x, {x}}; }},
      {"tanh, x", [] { Tensor x = leaf({3}, 1); return Graph{tanh(x), x, {x}}; }},
      {"relu, x", [] { Tensor x = leaf({3}, 1); return Graph{relu(x), x, {x}}; }},
      {"softmax, x", [] { Tensor x = leaf({2, 3}, 1); return Graph{softmax(x, 1), x, {x}}; }},
      {"pow 0, x", [] { Tensor x = leaf({3}, 1); return Graph{pow(x, 0.0), x, {x}}; }},
      {"dropout, x", [] {
         Generator gen(5);
         Tensor x = leaf({4}, 1);
         return Graph{dropout(x, 0.5, true, &gen), x, {x}};
       }},
      {"max_pool2d, x (the argmax is kept)", [] {
         Tensor x = leaf({1, 1, 4, 4}, 1);
         return Graph{max_pool2d(x, 2), x, {x}};
       }},
      {"linear, bias", [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({4, 3}, 2), b = leaf({4}, 3);
         return Graph{linear(x, w, b), b, {x, w, b}};
       }},
      {"layer_norm, bias", [] {
         Tensor x = leaf({2, 3}, 1), w = leaf({3}, 2), b = leaf({3}, 3);
         return Graph{layer_norm(x, {3}, w, b), b, {x, w, b}};
       }},
      {"layer_norm, x when only the bias needs a gradient", [] {
         Tensor x = vals({2, 3}, 1), w = vals({3}, 2), b = leaf({3}, 3);
         return Graph{layer_norm(x, {3}, w, b), x, {b}};
       }},
      {"conv2d, bias", [] {
         Tensor x = leaf({1, 2, 4, 4}, 1), w = leaf({3, 2, 2, 2}, 2), b = leaf({3}, 3);
         return Graph{conv2d(x, w, b, 1, 1), b, {x, w, b}};
       }},
      {"conv2d, x and weight when only the bias needs a gradient", [] {
         Tensor x = vals({1, 2, 4, 4}, 1), w = vals({3, 2, 2, 2}, 2), b = leaf({3}, 3);
         return Graph{conv2d(x, w, b), x, {b}};
       }},
      {"matmul, a when only a needs a gradient (b is read)", [] {
         Tensor a = leaf({2, 3}, 1), b = vals({3, 4}, 2);
         return Graph{matmul(a, b), a, {a}};
       }},
      {"nll_loss, log_probs", [] {
         Tensor x = leaf({2, 3}, 1);
         return Graph{nll_loss(x, ids({1, 2}, {2})), x, {x}};
       }},
      {"embedding, weight", [] {
         Tensor w = leaf({3, 2}, 1);
         return Graph{embedding(ids({0, 2, 1}, {3}), w), w, {w}};
       }},
      {"index_select, x", [] {
         Tensor x = leaf({3, 2}, 1);
         return Graph{index_select(x, 0, ids({2, 0}, {2})), x, {x}};
       }},
      {"gather, x", [] {
         Tensor x = leaf({2, 3}, 1);
         return Graph{gather(x, 1, ids({2, 0}, {2, 1})), x, {x}};
       }},
      {"where, a", [] {
         Tensor a = leaf({3}, 1), b = leaf({3}, 2);
         return Graph{where(ids({1, 0, 1}, {3}), a, b), a, {a, b}};
       }},
      {"masked_fill, x", [] {
         Tensor x = leaf({3}, 1);
         return Graph{masked_fill(x, ids({0, 1, 0}, {3}), 5.0), x, {x}};
       }},
      {"lstm_cell_fused, gates (the activations are kept)", [] {
         Tensor g = leaf({1, 8}, 1), c = leaf({1, 2}, 2);
         return Graph{lstm_cell_fused(g, c).hc, g, {g, c}};
       }},
      {"lstm_sequence, gx", [] {
         Tensor gx = leaf({2, 1, 8}, 1), w = leaf({8, 2}, 2), h0 = leaf({1, 2}, 3), c0 = leaf({1, 2}, 4);
         return Graph{lstm_sequence(gx, w, h0, c0).y, gx, {gx, w, h0, c0}};
       }},
      {"gru_cell_fused, gi", [] {
         Tensor gi = leaf({1, 6}, 1), gh = leaf({1, 6}, 2), h = leaf({1, 2}, 3);
         return Graph{gru_cell_fused(gi, gh, h), gi, {gi, gh, h}};
       }},
      {"masked_softmax, scores", [] {
         Tensor x = leaf({2, 3}, 1);
         return Graph{masked_softmax(x), x, {x}};
       }},
      {"additive_scores, keys_proj", [] {
         Tensor k = leaf({1, 3, 2}, 1), q = leaf({1, 2}, 2), v = leaf({2}, 3);
         return Graph{additive_scores(k, q, v), k, {k, q, v}};
       }},
      {"additive_scores, v when only v needs a gradient", [] {
         Tensor k = vals({1, 3, 2}, 1), q = vals({1, 2}, 2), v = leaf({2}, 3);
         return Graph{additive_scores(k, q, v), v, {v}};
       }},
  };
  for (const FreeCase& c : cases) {
    CAPTURE(c.what);
    const Graph ref = c.build();
    run_backward(ref);
    const Graph g = c.build();
    poke(g.victim);
    CHECK_NOTHROW(run_backward(g));
    REQUIRE(g.leaves.size() == ref.leaves.size());
    for (std::size_t i = 0; i < g.leaves.size(); ++i) {
      CAPTURE(i);
      REQUIRE(ref.leaves[i].grad().defined());
      REQUIRE(g.leaves[i].grad().defined());
      xgtest::check_close(g.leaves[i].grad(), ref.leaves[i].grad(), 1e-12, 1e-12);
    }
  }
}

TEST_CASE("reads do not count as writes: reductions, building an optimizer and clipping leave saved tensors usable") {
  Tensor a = leaf({2, 3}, 1), b = leaf({2, 3}, 2);
  const Tensor y = mul(a, b);  // saves a and b
  {
    NoGradGuard no_grad;
    // Reductions read their input (sum over a dim goes through the staged reducer).
    (void)sum(a, {1});
    (void)mean(b, {0});
    (void)logsumexp(a, {1});
    (void)max(b, 1);
  }
  // The optimizer compares its parameters' storage to reject aliases: a read.
  optim::SGD opt({a, b}, optim::SGDOptions{.lr = 0.1});
  const std::uint32_t va = a.version(), vb = b.version();
  CHECK_NOTHROW(y.backward(vals({2, 3}, 7.0)));
  CHECK(a.version() == va);
  CHECK(b.version() == vb);
  // clip_grad_norm reads every gradient for the norm and writes only when it scales.
  const Tensor ga = a.grad();
  const std::uint32_t vg = ga.version();
  (void)optim::clip_grad_norm({a, b}, 1e9);
  CHECK(ga.version() == vg);
  // The step itself is a write: a graph that saved a refuses it afterwards.
  const Tensor z = mul(a, b);
  opt.step();
  xgtest::check_throws_msg<StateError>([&] { z.backward(vals({2, 3}, 7.0)); }, {"'mul'", "saved input 1"});
}
