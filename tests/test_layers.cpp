// Linear, Embedding, Dropout, LayerNorm, Flatten, the activation modules and Sequential:
// parameter names / shapes / default init, values against hand loops, float64 gradchecks
// w.r.t. the input and every parameter, bad inputs, and agreement with PyTorch 1.13
// (tests/fixtures/nn/{linear,embedding,layernorm}.npz, written by gen_nn.py).
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "helpers.hpp"

using xgtest::error_of;
using xgtest::has;

using namespace xg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::rnd;

namespace {

std::vector<std::string> names_of(const nn::Module& m) {
  std::vector<std::string> out;
  for (const auto& [n, _] : m.named_parameters()) out.push_back(n);
  return out;
}

// Float64 gradcheck of a module call w.r.t. tensors it reads (input and parameters).
void gradcheck_wrt(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt) {
  const GradcheckReport r = gradcheck(fn, wrt);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

struct Moments {
  double mean = 0, std = 0, min = 1e300, max = -1e300;
};
Moments moments(const Tensor& t) {
  const std::vector<double> v = t.to_vector<double>();
  Moments m;
  for (double x : v) {
    m.mean += x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
  }
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.std += (x - m.mean) * (x - m.mean);
  m.std = std::sqrt(m.std / static_cast<double>(v.size()));
  return m;
}

// y[r, o] = Σ_i x[r, i] W[o, i] + b[o]
std::vector<double> ref_affine(const Tensor& x, const Tensor& w, const Tensor& b) {
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>();
  const std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>();
  const std::int64_t out = w.shape()[0], in = w.shape()[1], n = x.numel() / in;
  std::vector<double> y(static_cast<std::size_t>(n * out));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t o = 0; o < out; ++o) {
      double acc = bv.empty() ? 0.0 : bv[o];
      for (std::int64_t i = 0; i < in; ++i) acc += xv[r * in + i] * wv[o * in + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

// ---- PyTorch fixtures -------------------------------------------------------------------

using Entries = std::map<std::string, Tensor>;

Entries fixture(const std::string& name) {
  Entries e;
  for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/" + name + ".npz")) e[k] = v;
  return e;
}

// The param.* entries as a state dict with PyTorch's names.
nn::StateDict params_of(const Entries& e) {
  nn::StateDict sd;
  for (const auto& [k, v] : e) {
    if (k.rfind("param.", 0) == 0) sd.emplace_back(k.substr(6), v);
  }
  return sd;
}

const Tensor& entry(const Entries& e, const std::string& k) {
  auto it = e.find(k);
  REQUIRE_MESSAGE(it != e.end(), "fixture entry " << k << " missing");
  return it->second;
}

// Runs `forward` on the fixture in `dtype` and checks out.y, grad.in.x (when present) and
// every grad.param.* against PyTorch. The module is loaded with the fixture's weights
// (and converted to dtype); x_key names the input ("" for none that is float).
void check_agreement(nn::Module& m, const Entries& e, Dtype dtype, const std::function<Tensor(const Tensor&)>& forward,
                     const std::string& in_key, bool float_input) {
  const double rtol = dtype == f64 ? 1e-10 : 1e-5;
  const double atol = dtype == f64 ? 1e-12 : 1e-6;
  m.to(f64);
  m.load_state_dict(params_of(e));
  m.to(dtype);
  m.zero_grad();
  Tensor x = entry(e, in_key);
  if (float_input) x = x.to(dtype).detach().requires_grad_();
  const Tensor y = forward(x);
  CHECK(y.dtype() == dtype);
  check_values(y, entry(e, "out.y").to_vector<double>(), atol, rtol);
  sum(mul(y, entry(e, "in.w_y").to(dtype))).backward();
  if (float_input) check_values(x.grad(), entry(e, "grad.in." + in_key.substr(3)).to_vector<double>(), atol, rtol);
  for (const auto& [name, p] : m.named_parameters()) {
    INFO("parameter " << name);
    REQUIRE(p.grad().defined());
    check_values(p.grad(), entry(e, "grad.param." + name).to_vector<double>(), atol, rtol);
  }
}

}  // namespace

// =========================================================================================
// Linear
// =========================================================================================

TEST_CASE("Linear: PyTorch's parameter names, shapes and default init bounds") {
  manual_seed(1);
  nn::Linear lin(16, 8);
  CHECK(names_of(lin) == std::vector<std::string>{"weight", "bias"});
  CHECK(lin.weight.shape() == Shape{8, 16});
  CHECK(lin.bias.shape() == Shape{8});
  CHECK(lin.weight.dtype() == default_dtype());
  CHECK(lin.weight.requires_grad());
  CHECK(lin.num_parameters() == 8 * 16 + 8);
  const double bound = 1.0 / std::sqrt(16.0);
  for (const Tensor& t : {lin.weight, lin.bias}) {
    const Moments m = moments(t);
    CHECK(m.min >= -bound);
    CHECK(m.max <= bound);
  }
  nn::Linear nob(nn::LinearOptions{.in_features = 3, .out_features = 2, .bias = false});
  CHECK(names_of(nob) == std::vector<std::string>{"weight"});
  CHECK_FALSE(nob.bias.defined());
}

TEST_CASE("Linear: default init is U(-1/sqrt(in), 1/sqrt(in)) for weight and bias") {
  manual_seed(2);
  nn::Linear lin(100, 1000);  // 100k weights, 1000 biases, bound 0.1
  const double bound = 0.1;
  const Moments w = moments(lin.weight);
  CHECK(w.min >= -bound);
  CHECK(w.max <= bound);
  CHECK(w.min < -0.99 * bound);  // the whole interval is used
  CHECK(w.max > 0.99 * bound);
  CHECK(std::fabs(w.mean) < 0.002);
  CHECK(std::fabs(w.std - bound / std::sqrt(3.0)) < 0.002);
  const Moments b = moments(lin.bias);
  CHECK(b.min >= -bound);
  CHECK(b.max <= bound);
  CHECK(std::fabs(b.std - bound / std::sqrt(3.0)) < 0.006);
}

TEST_CASE("Linear: the seed reproduces the weights; the default dtype picks float64") {
  manual_seed(7);
  nn::Linear a(5, 4);
  manual_seed(7);
  nn::Linear b(5, 4);
  check_close(a.weight, b.weight, 0, 0);
  check_close(a.bias, b.bias, 0, 0);
  nn::Linear c(5, 4);
  CHECK(c.weight.to_vector<double>() != a.weight.to_vector<double>());
  DefaultDtypeGuard g(f64);
  nn::Linear d(5, 4);
  CHECK(d.weight.dtype() == f64);
  CHECK(d.bias.dtype() == f64);
}

TEST_CASE("Linear: forward values against a hand loop for 2-D, 3-D and 1-D inputs") {
  DefaultDtypeGuard g(f64);
  nn::Linear lin(3, 4);
  nn::Linear nob(3, 2, false);
  for (const Shape& s : {Shape{5, 3}, Shape{2, 4, 3}, Shape{3}, Shape{1, 3}}) {
    INFO("x " << s.str());
    const Tensor x = rnd(s);
    const Tensor y = lin(x);
    Shape want = s;
    want[want.size() - 1] = 4;
    CHECK(y.shape() == want);
    check_values(y, ref_affine(x, lin.weight, lin.bias), 1e-13, 1e-13);
    check_values(nob(x), ref_affine(x, nob.weight, Tensor()), 1e-13, 1e-13);
  }
}

TEST_CASE("Linear: gradcheck w.r.t. input, weight and bias on [5,3], [2,4,3] and [3]") {
  DefaultDtypeGuard g(f64);
  nn::Linear lin(3, 4);
  nn::Linear nob(3, 2, false);
  for (const Shape& s : {Shape{5, 3}, Shape{2, 4, 3}, Shape{3}}) {
    INFO("x " << s.str());
    const Tensor x = rnd(s);
    gradcheck_wrt([&] { return lin(x); }, {x, lin.weight, lin.bias});
    gradcheck_wrt([&] { return nob(x); }, {x, nob.weight});
  }
}

TEST_CASE("Linear: to(f64) and back keeps working through the same handles") {
  nn::Linear lin(3, 2);
  lin.to(f64);
  CHECK(lin.weight.dtype() == f64);
  CHECK(lin(rnd({4, 3})).dtype() == f64);
  lin.to(f32);
  CHECK(lin(rnd({4, 3}).to(f32)).dtype() == f32);
}

TEST_CASE("Linear: bad inputs name the module and the shapes") {
  nn::Linear lin(3, 2);
  std::string m = error_of<ShapeError>([&] { lin(zeros({5, 4})); });
  CHECK(has(m, "Linear"));
  CHECK(has(m, "[5,4]"));
  CHECK(has(m, "3"));
  m = error_of<ShapeError>([&] { lin(scalar(1.0)); });
  CHECK(has(m, "Linear"));
  m = error_of<DtypeError>([&] { lin(from_vector(std::vector<std::int64_t>{1, 2, 3})); });
  CHECK(has(m, "int64"));
  m = error_of<DtypeError>([&] { lin(zeros({2, 3}, f64)); });  // model is float32
  CHECK(has(m, "float64"));
  CHECK_THROWS_AS(nn::Linear(-1, 2), ShapeError);
}

TEST_CASE("Linear: zero in_features gives a zero-bound bias (PyTorch) and outputs the bias") {
  nn::Linear lin(0, 3);
  CHECK(lin.weight.shape() == Shape{3, 0});
  check_values(lin.bias, {0, 0, 0}, 0, 0);
  check_values(lin(zeros({2, 0})), std::vector<double>(6, 0.0), 0, 0);
  CHECK(nn::Linear(4, 0)(zeros({2, 4})).shape() == Shape{2, 0});
}

TEST_CASE("Linear: agreement with PyTorch (linear.npz) in float64 and float32") {
  const Entries e = fixture("linear");
  nn::Linear lin(4, 3);
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    check_agreement(lin, e, dt, [&](const Tensor& x) { return lin(x); }, "in.x", true);
  }
}

// =========================================================================================
// Embedding
// =========================================================================================

TEST_CASE("Embedding: weight [num, dim] ~ N(0, 1) and a zero padding row") {
  manual_seed(3);
  nn::Embedding emb(1000, 64, 5);
  CHECK(names_of(emb) == std::vector<std::string>{"weight"});
  CHECK(emb.weight.shape() == Shape{1000, 64});
  const Moments m = moments(emb.weight);
  CHECK(std::fabs(m.mean) < 0.01);
  CHECK(std::fabs(m.std - 1.0) < 0.01);
  const std::vector<double> w = emb.weight.to_vector<double>();
  for (int j = 0; j < 64; ++j) CHECK(w[5 * 64 + j] == 0.0);
  // Negative padding_idx counts from the end.
  nn::Embedding neg(10, 3, -1);
  CHECK(neg.options.padding_idx == 9);
  check_values(narrow(neg.weight, 0, 9, 1), {0, 0, 0});
}

TEST_CASE("Embedding: ids of any shape give the rows of weight") {
  DefaultDtypeGuard g(f64);
  nn::Embedding emb(6, 3);
  const std::vector<double> w = emb.weight.to_vector<double>();
  auto rows = [&](const std::vector<std::int64_t>& ids) {
    std::vector<double> out;
    for (auto i : ids) {
      for (int c = 0; c < 3; ++c) out.push_back(w[static_cast<std::size_t>(i * 3 + c)]);
    }
    return out;
  };
  const std::vector<std::int64_t> ids{4, 0, 4, 5, 1, 2};
  Tensor y = emb(from_vector(ids, {2, 3}));
  CHECK(y.shape() == Shape{2, 3, 3});
  check_values(y, rows(ids), 0, 0);
  y = emb(from_vector(ids));
  CHECK(y.shape() == Shape{6, 3});
  check_values(y, rows(ids), 0, 0);
  y = emb(from_vector(std::vector<std::int64_t>{5}, Shape{}));
  CHECK(y.shape() == Shape{3});
  check_values(y, rows({5}), 0, 0);
  y = emb(from_vector(ids, {3, 1, 2}));
  CHECK(y.shape() == Shape{3, 1, 2, 3});
  CHECK(emb(from_vector(std::vector<std::int64_t>{}, {0, 4})).shape() == Shape{0, 4, 3});
}

TEST_CASE("Embedding: repeated ids accumulate; the padding row gets exactly zero gradient") {
  DefaultDtypeGuard g(f64);
  nn::Embedding emb(5, 2, 1);
  const std::vector<std::int64_t> ids{1, 3, 3, 0, 1, 3};
  const Tensor y = emb(from_vector(ids, {2, 3}));
  // The forward returns the padding row as it is (zeros after init).
  const std::vector<double> yv = y.to_vector<double>();
  for (int k : {0, 1, 8, 9}) CHECK(yv[k] == 0.0);  // tokens 0 and 4
  const Tensor gout = rnd({2, 3, 2});
  sum(mul(y, gout)).backward();
  const std::vector<double> gv = gout.to_vector<double>();
  std::vector<double> want(10, 0.0);
  for (std::size_t j = 0; j < ids.size(); ++j) {
    if (ids[j] == 1) continue;
    for (int c = 0; c < 2; ++c) want[ids[j] * 2 + c] += gv[j * 2 + c];
  }
  check_values(emb.weight.grad(), want, 1e-15, 0);
  // A padding row set to non-zero values is still returned, and still gets no gradient.
  emb.zero_grad();
  emb.weight.data<double>()[2] = 7.0;
  const Tensor y2 = emb(from_vector(std::vector<std::int64_t>{1, 1}));
  check_values(y2, {7.0, 0.0, 7.0, 0.0}, 0, 0);
  sum(y2).backward();
  check_values(emb.weight.grad(), std::vector<double>(10, 0.0), 0, 0);
}

TEST_CASE("Embedding: gradcheck w.r.t. the weight with repeated ids, with and without padding_idx") {
  DefaultDtypeGuard g(f64);
  nn::Embedding emb(6, 3);
  nn::Embedding pad(6, 3, 0);
  const Tensor ids = from_vector(std::vector<std::int64_t>{2, 5, 2, 2, 1, 5}, {3, 2});
  gradcheck_wrt([&] { return emb(ids); }, {emb.weight});
  // Without the padding id in the batch the padded table is an ordinary one.
  gradcheck_wrt([&] { return pad(ids); }, {pad.weight});
  // (With the padding id in the batch a finite difference on that row is non-zero by
  // design: PyTorch freezes the row, it does not make the output constant in it. The
  // exact zero gradient is checked in the test above.)
}

TEST_CASE("Embedding: bad ids name the id and num_embeddings") {
  nn::Embedding emb(10, 4);
  std::string m = error_of<IndexError>([&] { emb(from_vector(std::vector<std::int64_t>{1, 10, 2})); });
  CHECK(has(m, "Embedding"));
  CHECK(has(m, "10"));
  CHECK(has(m, "num_embeddings"));
  m = error_of<IndexError>([&] { emb(from_vector(std::vector<std::int64_t>{3, -1})); });
  CHECK(has(m, "-1"));
  m = error_of<DtypeError>([&] { emb(from_vector(std::vector<float>{1, 2})); });
  CHECK(has(m, "Embedding"));
  CHECK(has(m, "float32"));
  m = error_of<StateError>([&] { emb(Tensor()); });
  CHECK(has(m, "Embedding"));
  m = error_of<IndexError>([] { nn::Embedding(10, 4, 10); });
  CHECK(has(m, "padding_idx"));
  CHECK_THROWS_AS(nn::Embedding(10, 4, -11), IndexError);
}

TEST_CASE("Embedding: agreement with PyTorch (embedding.npz, padding_idx 0) in float64 and float32") {
  const Entries e = fixture("embedding");
  nn::Embedding emb(10, 4, 0);
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    check_agreement(emb, e, dt, [&](const Tensor& ids) { return emb(ids); }, "in.ids", false);
  }
}

// =========================================================================================
// Dropout, Flatten, activations
// =========================================================================================

TEST_CASE("Dropout: drops in training mode, is the identity in eval mode") {
  nn::Dropout d(0.5);
  CHECK(names_of(d).empty());
  const Tensor x = ones({10000});
  manual_seed(4);
  const std::vector<float> y = d(x).to_vector<float>();
  int zeros_seen = 0;
  for (float v : y) {
    CHECK((v == 0.0f || v == 2.0f));
    zeros_seen += v == 0.0f;
  }
  CHECK(std::abs(zeros_seen - 5000) < 300);
  d.eval();
  CHECK(d(x).is_same(x));
  d.train();
  CHECK_FALSE(d(x).is_same(x));
  CHECK_THROWS_AS(nn::Dropout(1.5), Error);
  CHECK_THROWS_AS(nn::Dropout(-0.1), Error);
  CHECK(has(error_of<Error>([] { nn::Dropout(2.0); }), "Dropout"));
}

TEST_CASE("Flatten and the activation modules") {
  const Tensor x = rnd({2, 3, 4});
  CHECK(nn::Flatten()(x).shape() == Shape{2, 12});
  CHECK(nn::Flatten(0)(x).shape() == Shape{24});
  CHECK(nn::Flatten(1, 1)(x).shape() == Shape{2, 3, 4});
  CHECK(nn::Flatten(0, 1)(x).shape() == Shape{6, 4});
  check_values(nn::Flatten()(x), x.to_vector<double>(), 0, 0);
  const Tensor v = from_vector(std::vector<double>{-2.0, 0.5, 3.0});
  check_values(nn::ReLU()(v), {0.0, 0.5, 3.0});
  check_values(nn::Tanh()(v), {std::tanh(-2.0), std::tanh(0.5), std::tanh(3.0)}, 1e-15);
  check_values(nn::Sigmoid()(v), {1 / (1 + std::exp(2.0)), 1 / (1 + std::exp(-0.5)), 1 / (1 + std::exp(-3.0))}, 1e-15);
}

// =========================================================================================
// LayerNorm
// =========================================================================================

TEST_CASE("LayerNorm: weight ones and bias zeros, none without elementwise_affine") {
  nn::LayerNorm ln({4, 5});
  CHECK(names_of(ln) == std::vector<std::string>{"weight", "bias"});
  CHECK(ln.weight.shape() == Shape{4, 5});
  check_values(ln.weight, std::vector<double>(20, 1.0), 0, 0);
  check_values(ln.bias, std::vector<double>(20, 0.0), 0, 0);
  nn::LayerNorm plain(nn::LayerNormOptions{.normalized_shape = {8}, .eps = 1e-3, .elementwise_affine = false});
  CHECK(names_of(plain).empty());
  CHECK_FALSE(plain.weight.defined());
}

TEST_CASE("LayerNorm: forward normalises over the trailing dims (hand loop)") {
  DefaultDtypeGuard g(f64);
  for (const Shape& ns : {Shape{4}, Shape{3, 4}}) {
    INFO("normalized " << ns.str());
    nn::LayerNorm ln(ns, 1e-5);
    Generator gen(8);
    nn::init::normal_(ln.weight, 1.0, 0.3, &gen);
    nn::init::normal_(ln.bias, 0.0, 0.3, &gen);
    const Tensor x = rnd({2, 3, 4}, -2, 3);
    const std::int64_t d = ns.numel(), n = 24 / d;
    const std::vector<double> xv = x.to_vector<double>(), wv = ln.weight.to_vector<double>(),
                              bv = ln.bias.to_vector<double>();
    std::vector<double> want(24);
    for (std::int64_t r = 0; r < n; ++r) {
      double mu = 0, var = 0;
      for (std::int64_t j = 0; j < d; ++j) mu += xv[r * d + j] / static_cast<double>(d);
      for (std::int64_t j = 0; j < d; ++j) var += (xv[r * d + j] - mu) * (xv[r * d + j] - mu) / static_cast<double>(d);
      for (std::int64_t j = 0; j < d; ++j) want[r * d + j] = (xv[r * d + j] - mu) / std::sqrt(var + 1e-5) * wv[j] + bv[j];
    }
    check_values(ln(x), want, 1e-12, 1e-12);
  }
}

TEST_CASE("LayerNorm: gradcheck w.r.t. input, weight and bias over 1 and 2 trailing dims") {
  DefaultDtypeGuard g(f64);
  struct Case {
    Shape x, ns;
  };
  for (const Case& c : {Case{{3, 5}, {5}}, Case{{2, 3, 4}, {3, 4}}, Case{{4}, {4}}, Case{{2, 1, 3}, {1, 3}}}) {
    INFO("x " << c.x.str() << " normalized " << c.ns.str());
    nn::LayerNorm ln(c.ns);
    Generator gen(9);
    nn::init::normal_(ln.weight, 1.0, 0.3, &gen);
    nn::init::normal_(ln.bias, 0.0, 0.3, &gen);
    const Tensor x = rnd(c.x, -2, 3);
    gradcheck_wrt([&] { return ln(x); }, {x, ln.weight, ln.bias});
    nn::LayerNorm plain(c.ns, 1e-5, false);
    gradcheck_wrt([&] { return plain(x); }, {x});
  }
}

TEST_CASE("LayerNorm: trailing dims other than normalized_shape are a ShapeError naming LayerNorm") {
  nn::LayerNorm ln({4, 5});
  std::string m = error_of<ShapeError>([&] { ln(zeros({3, 5, 4})); });
  CHECK(has(m, "LayerNorm"));
  CHECK(has(m, "[3,5,4]"));
  CHECK(has(m, "[4,5]"));
  m = error_of<ShapeError>([&] { ln(zeros({5})); });
  CHECK(has(m, "[5]"));
  CHECK_THROWS_AS(ln(from_vector(std::vector<std::int64_t>(20, 1), {4, 5})), DtypeError);
  CHECK_THROWS_AS(nn::LayerNorm(Shape{}), ShapeError);
  CHECK_THROWS_AS(nn::LayerNorm({4}, -1.0), Error);
}

TEST_CASE("LayerNorm: agreement with PyTorch (layernorm.npz, normalized [4,5]) in float64 and float32") {
  const Entries e = fixture("layernorm");
  nn::LayerNorm ln({4, 5});
  for (Dtype dt : {f64, f32}) {
    INFO(dtype_name(dt));
    check_agreement(ln, e, dt, [&](const Tensor& x) { return ln(x); }, "in.x", true);
  }
}

// =========================================================================================
// Sequential
// =========================================================================================

TEST_CASE("Sequential: children are named 0, 1, ... and forward chains them") {
  DefaultDtypeGuard g(f64);
  auto l1 = std::make_shared<nn::Linear>(4, 8);
  auto l2 = std::make_shared<nn::Linear>(8, 2);
  nn::Sequential net(l1, std::make_shared<nn::Tanh>(), l2);
  CHECK(net.size() == 3);
  CHECK(names_of(net) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  const Tensor x = rnd({5, 4});
  check_close(net(x), (*l2)(tanh((*l1)(x))), 1e-15, 1e-15);
  CHECK(net.at<nn::Linear>(0) == l1);
  CHECK(net[1] != nullptr);
  CHECK_THROWS_AS(net.at<nn::Linear>(1), Error);
  CHECK(has(error_of<IndexError>([&] { net[3]; }), "Sequential"));
  gradcheck_wrt([&] { return net(x); }, {x, l1->weight, l1->bias, l2->weight, l2->bias});
  // An empty Sequential is the identity.
  nn::Sequential id;
  CHECK(id.empty());
  CHECK(id(x).is_same(x));
}

TEST_CASE("Sequential: push_back with names, Flatten inside, train/eval reaches the children") {
  nn::Sequential net;
  net.push_back(std::make_shared<nn::Flatten>());
  auto lin = net.push_back("proj", std::make_shared<nn::Linear>(12, 3));
  auto drop = net.push_back(std::make_shared<nn::Dropout>(0.5));
  CHECK(names_of(net) == std::vector<std::string>{"proj.weight", "proj.bias"});
  CHECK(net(zeros({2, 3, 4})).shape() == Shape{2, 3});
  net.eval();
  CHECK_FALSE(drop->is_training());
  const Tensor x = rnd({2, 3, 4}).to(f32);
  check_close(net(x), (*lin)(flatten(x, 1)), 1e-6, 1e-6);
  net.train();
  CHECK(drop->is_training());
  CHECK_THROWS_AS(net.push_back("proj", std::make_shared<nn::ReLU>()), Error);  // name taken
  // Bad input to a child surfaces with the child's name.
  CHECK(has(error_of<ShapeError>([&] { net(zeros({2, 5})); }), "Linear"));
}
