// Tests of xg::nn::Module through small modules written here the way a user would write
// their own: an affine map, a "minimal gated cell" and a model nesting them.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "helpers.hpp"

using namespace xg;
namespace fs = std::filesystem;

namespace {

// y = x W + b.  x [B, I] -> y [B, O]
struct Affine : nn::Module {
  Tensor weight, bias;
  Affine(std::int64_t in, std::int64_t out) {
    const double k = 1.0 / std::sqrt(static_cast<double>(in));
    weight = register_parameter("weight", uniform({in, out}, -k, k));
    bias = register_parameter("bias", uniform({out}, -k, k));
  }
  Tensor forward(const Tensor& x) { return matmul(x, weight) + bias; }
  Tensor operator()(const Tensor& x) { return forward(x); }
};

// Minimal gated cell, one time step.  x [B, I], h [B, H] -> h' [B, H]
//   z  = sigmoid(x W_z + h U_z + b_z)
//   h' = z * tanh(x W_h + h U_h + b_h) + (1 - z) * h
struct MinimalGatedCell : nn::Module {
  Tensor W_z, U_z, b_z, W_h, U_h, b_h;
  std::int64_t hidden;
  MinimalGatedCell(std::int64_t input, std::int64_t hidden_size) : hidden(hidden_size) {
    const double k = 1.0 / std::sqrt(static_cast<double>(hidden));
    W_z = register_parameter("W_z", uniform({input, hidden}, -k, k));
    U_z = register_parameter("U_z", uniform({hidden, hidden}, -k, k));
    b_z = register_parameter("b_z", uniform({hidden}, -k, k));
    W_h = register_parameter("W_h", uniform({input, hidden}, -k, k));
    U_h = register_parameter("U_h", uniform({hidden, hidden}, -k, k));
    b_h = register_parameter("b_h", uniform({hidden}, -k, k));
  }
  Tensor forward(const Tensor& x, const Tensor& h) {
    const Tensor z = sigmoid(matmul(x, W_z) + matmul(h, U_z) + b_z);
    return z * tanh(matmul(x, W_h) + matmul(h, U_h) + b_h) + (1.0 - z) * h;
  }
  Tensor operator()(const Tensor& x, const Tensor& h) { return forward(x, h); }
};

// Two stacked cells.  Children "cell0", "cell1".
struct Encoder : nn::Module {
  std::shared_ptr<MinimalGatedCell> cell0, cell1;
  int train_calls = 0;
  bool last_mode = true;
  Encoder(std::int64_t input, std::int64_t hidden) {
    cell0 = register_module("cell0", std::make_shared<MinimalGatedCell>(input, hidden));
    cell1 = register_module("cell1", std::make_shared<MinimalGatedCell>(hidden, hidden));
  }

 protected:
  void on_train(bool on) override {
    ++train_calls;
    last_mode = on;
  }
};

// Runs the encoder over a sequence and reads out the last hidden state.
//   x [T, B, I], h0 [B, H] (or the learned "h0" parameter) -> y [B, O]
struct Model : nn::Module {
  std::shared_ptr<Encoder> encoder;
  std::shared_ptr<Affine> head;
  Tensor h0;      // learned initial state [1, H], registered after the children
  Tensor scale;   // float buffer
  Tensor steps;   // int64 buffer
  Model(std::int64_t input, std::int64_t hidden, std::int64_t out) {
    encoder = register_module("encoder", std::make_shared<Encoder>(input, hidden));
    head = register_module("head", std::make_shared<Affine>(hidden, out));
    h0 = register_parameter("h0", zeros({1, hidden}));
    scale = register_buffer("scale", full({out}, 2.0));
    steps = register_buffer("steps", scalar(0, i64));
  }
  Tensor forward(const Tensor& x, const Tensor& h_init) {
    Tensor a = h_init, b = h_init;
    for (std::int64_t t = 0; t < x.size(0); ++t) {
      a = (*encoder->cell0)(select(x, 0, t), a);
      b = (*encoder->cell1)(a, b);
    }
    return (*head)(b) * scale;
  }
  Tensor forward(const Tensor& x) { return forward(x, broadcast_to(h0, {x.size(1), h0.size(1)})); }
};

std::vector<std::string> names_of(const nn::StateDict& d) {
  std::vector<std::string> out;
  for (const auto& [n, _] : d) out.push_back(n);
  return out;
}

const std::vector<std::string> kCellNames{"W_z", "U_z", "b_z", "W_h", "U_h", "b_h"};

std::vector<std::string> model_param_names() {
  // Own parameters first (h0, although registered after the children), then each
  // child's in registration order: PyTorch's named_parameters() order.
  std::vector<std::string> out{"h0"};
  for (const char* cell : {"encoder.cell0.", "encoder.cell1."}) {
    for (const auto& n : kCellNames) out.push_back(cell + n);
  }
  out.push_back("head.weight");
  out.push_back("head.bias");
  return out;
}

// Deep copy of every state_dict value, to compare "before" and "after".
std::vector<std::vector<double>> snapshot(const nn::Module& m) {
  std::vector<std::vector<double>> out;
  for (const auto& [_, t] : m.state_dict()) out.push_back(t.to_vector<double>());
  return out;
}

using xgtest::TempDir;

using xgtest::read_file;

void write_file(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Checks that the message of `fn`'s xg::Error contains every needle.
template <class Ex, class Fn>
void check_error(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL("no exception");
  } catch (const Ex& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const auto& n : needles) {
      INFO("needle: " << n);
      CHECK(msg.find(n) != std::string::npos);
    }
  }
}

}  // namespace

TEST_CASE("module: named_parameters gives dotted names in registration order, own parameters first") {
  manual_seed(1);
  Model m(3, 4, 2);
  CHECK(names_of(m.named_parameters()) == model_param_names());
  // The handles are the members themselves (aliases, not copies).
  const nn::StateDict named = m.named_parameters();
  CHECK(named[0].second.is_same(m.h0));
  CHECK(named[1].second.is_same(m.encoder->cell0->W_z));
  CHECK(named[12].second.is_same(m.encoder->cell1->b_h));
  CHECK(named[13].second.is_same(m.head->weight));
  // A child's names are relative to it.
  CHECK(names_of(m.encoder->cell1->named_parameters()) == kCellNames);
  CHECK(names_of(m.encoder->named_parameters()).front() == "cell0.W_z");

  std::vector<std::string> children;
  for (const auto& [n, c] : m.named_children()) children.push_back(n);
  CHECK(children == std::vector<std::string>{"encoder", "head"});
  CHECK(m.named_children()[0].second.get() == m.encoder.get());
  CHECK(names_of(m.named_buffers()) == std::vector<std::string>{"scale", "steps"});
}

TEST_CASE("module: parameters() is recursive, in the same order; num_parameters counts elements") {
  Model m(3, 4, 2);
  const std::vector<Tensor> ps = m.parameters();
  const nn::StateDict named = m.named_parameters();
  REQUIRE(ps.size() == named.size());
  REQUIRE(ps.size() == 15);
  for (std::size_t i = 0; i < ps.size(); ++i) CHECK(ps[i].is_same(named[i].second));
  // Every parameter is a leaf that requires grad; buffers do not.
  for (const Tensor& p : ps) {
    CHECK(p.is_leaf());
    CHECK(p.requires_grad());
  }
  CHECK_FALSE(m.scale.requires_grad());
  // h0 4; per cell W_z + W_h: 2*I*H, U_z + U_h: 2*H*H, biases 2*H; head 4*2 + 2.
  const std::int64_t cell0 = 2 * 3 * 4 + 2 * 4 * 4 + 2 * 4;
  const std::int64_t cell1 = 2 * 4 * 4 + 2 * 4 * 4 + 2 * 4;
  CHECK(m.num_parameters() == 4 + cell0 + cell1 + 4 * 2 + 2);
  CHECK(m.encoder->cell0->num_parameters() == cell0);
  // A module with nothing registered.
  nn::Module empty;
  CHECK(empty.parameters().empty());
  CHECK(empty.num_parameters() == 0);
  CHECK(empty.state_dict().empty());
}

TEST_CASE("module: register_parameter makes a leaf that requires grad (or not, when asked)") {
  nn::Module m;
  Tensor a = ones({2}, f64);
  Tensor p = m.register_parameter("p", a);
  CHECK(p.is_same(a));
  CHECK(p.requires_grad());
  // A computed value becomes a leaf (its history is cut).
  Tensor src = ones({2}, f64).requires_grad_();
  Tensor q = m.register_parameter("q", src * 3.0);
  CHECK(q.is_leaf());
  CHECK(q.requires_grad());
  xgtest::check_values(q, {3, 3});
  Tensor frozen = m.register_parameter("frozen", zeros({3}), false);
  CHECK_FALSE(frozen.requires_grad());
  CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"p", "q", "frozen"});
  CHECK(m.num_parameters() == 7);
}

TEST_CASE("module: parameters are created in the default dtype") {
  DefaultDtypeGuard guard(f64);
  Model m(2, 3, 1);
  for (const auto& [n, t] : m.state_dict()) {
    INFO(n);
    CHECK(t.dtype() == (n == "steps" ? i64 : f64));
  }
}

TEST_CASE("module: an int64 tensor cannot be a trainable parameter") {
  nn::Module m;
  CHECK_THROWS_AS(m.register_parameter("idx", zeros({2}, i64)), DtypeError);
  CHECK(m.named_parameters().empty());
  // As a buffer it is fine.
  m.register_buffer("idx", zeros({2}, i64));
  CHECK(names_of(m.state_dict()) == std::vector<std::string>{"idx"});
}

TEST_CASE("module: a child registered under two names (tied weights) saves and loads both names, still tied") {
  struct Tied : nn::Module {
    std::shared_ptr<Affine> enc, dec;
    Tied() {
      enc = register_module("enc", std::make_shared<Affine>(2, 2));
      dec = register_module("dec", enc);
    }
  };
  TempDir dir;
  manual_seed(15);
  Tied a;
  CHECK(names_of(a.state_dict()) ==
        std::vector<std::string>{"enc.weight", "enc.bias", "dec.weight", "dec.bias"});
  a.save(dir.file("tied.npz"));
  manual_seed(16);
  Tied b;
  b.load(dir.file("tied.npz"));
  CHECK(snapshot(b) == snapshot(a));
  CHECK(b.enc->weight.is_same(b.dec->weight));
  // ...but an optimizer sees each tied tensor once.
  CHECK(names_of(b.named_parameters()) == std::vector<std::string>{"enc.weight", "enc.bias"});
  CHECK(b.parameters().size() == 2);
  CHECK(b.num_parameters() == 6);
}

TEST_CASE("module: load_state_dict with strict=false ignores missing and unexpected entries (PyTorch)") {
  manual_seed(3);
  Affine a(2, 2);
  const std::vector<double> bias_before = a.bias.to_vector<double>();
  nn::StateDict partial{{"weight", ones({2, 2})}, {"extra", zeros({1})}};
  CHECK_THROWS_AS(a.load_state_dict(partial), StateError);
  a.load_state_dict(partial, false);
  CHECK(a.weight.to_vector<double>() == std::vector<double>{1, 1, 1, 1});
  CHECK(a.bias.to_vector<double>() == bias_before);
}

TEST_CASE("module: a '/' in a name is refused at registration (it could not be saved)") {
  nn::Module m;
  CHECK_THROWS_AS(m.register_parameter("a/b", zeros({2})), Error);
}

TEST_CASE("module: registering a taken, dotted or empty name, an undefined tensor or a null child is an Error") {
  nn::Module m;
  m.register_parameter("w", zeros({2}));
  m.register_buffer("buf", zeros({2}));
  m.register_module("child", std::make_shared<Affine>(2, 2));

  check_error<Error>([&] { m.register_parameter("w", zeros({2})); }, {"register_parameter", "'w'", "already"});
  check_error<Error>([&] { m.register_buffer("w", zeros({2})); }, {"register_buffer", "'w'", "already"});
  check_error<Error>([&] { m.register_parameter("buf", zeros({2})); }, {"'buf'", "already"});
  check_error<Error>([&] { m.register_parameter("child", zeros({2})); }, {"'child'", "already"});
  check_error<Error>([&] { m.register_module("w", std::make_shared<Affine>(2, 2)); }, {"register_module", "'w'"});
  check_error<Error>([&] { m.register_module("child", std::make_shared<Affine>(2, 2)); }, {"'child'", "already"});
  check_error<Error>([&] { m.register_parameter("a.b", zeros({2})); }, {"register_parameter", "'a.b'"});
  check_error<Error>([&] { m.register_module("enc.cell", std::make_shared<Affine>(2, 2)); }, {"'enc.cell'"});
  check_error<Error>([&] { m.register_buffer("", zeros({2})); }, {"register_buffer", "''"});
  check_error<Error>([&] { m.register_parameter("", zeros({2})); }, {"register_parameter", "''"});
  check_error<StateError>([&] { m.register_parameter("u", Tensor()); }, {"'u'", "undefined"});
  check_error<StateError>([&] { m.register_buffer("u", Tensor()); }, {"'u'", "undefined"});
  check_error<StateError>([&] { m.register_module("n", std::shared_ptr<Affine>()); }, {"'n'", "null"});
  // The failed registrations left nothing behind.
  CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"w", "child.weight", "child.bias"});
  CHECK(names_of(m.named_buffers()) == std::vector<std::string>{"buf"});
  CHECK(m.named_children().size() == 1);
}

TEST_CASE("module: train() and eval() reach every descendant and call on_train") {
  Model m(2, 3, 1);
  CHECK(m.is_training());
  CHECK(m.encoder->cell1->is_training());
  m.eval();
  CHECK_FALSE(m.is_training());
  CHECK_FALSE(m.encoder->is_training());
  CHECK_FALSE(m.encoder->cell0->is_training());
  CHECK_FALSE(m.encoder->cell1->is_training());
  CHECK_FALSE(m.head->is_training());
  CHECK(m.encoder->train_calls == 1);
  CHECK_FALSE(m.encoder->last_mode);
  m.train();
  CHECK(m.encoder->cell1->is_training());
  CHECK(m.head->is_training());
  CHECK(m.encoder->last_mode);
  // A subtree can be switched on its own.
  m.encoder->eval();
  CHECK(m.is_training());
  CHECK_FALSE(m.encoder->cell0->is_training());
  CHECK(m.head->is_training());
  m.train(true);
  CHECK(m.encoder->cell0->is_training());
  CHECK(m.encoder->train_calls == 4);
}

TEST_CASE("module: zero_grad drops every parameter's gradient") {
  manual_seed(3);
  Model m(2, 3, 1);
  Tensor x = uniform({4, 2, 2}, -1, 1);
  sum(m.forward(x)).backward();
  for (const auto& [n, p] : m.named_parameters()) {
    INFO(n);
    CHECK(p.grad().defined());
  }
  m.zero_grad();
  for (const auto& [n, p] : m.named_parameters()) {
    INFO(n);
    CHECK_FALSE(p.grad().defined());
  }
  // A child's zero_grad touches only its subtree.
  sum(m.forward(x)).backward();
  m.head->zero_grad();
  CHECK_FALSE(m.head->weight.grad().defined());
  CHECK(m.encoder->cell0->W_z.grad().defined());
}

TEST_CASE("module: the gated cell's forward matches a hand-written loop") {
  // B = 2, I = 3, H = 2, float64; weights from a fixed formula.
  DefaultDtypeGuard guard(f64);
  MinimalGatedCell cell(3, 2);
  auto fill = [](Tensor& t, double offset) {
    double* p = t.data<double>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = 0.1 * std::sin(1.7 * static_cast<double>(i) + offset);
  };
  fill(cell.W_z, 0.1);
  fill(cell.U_z, 0.2);
  fill(cell.b_z, 0.3);
  fill(cell.W_h, 0.4);
  fill(cell.U_h, 0.5);
  fill(cell.b_h, 0.6);
  const std::vector<double> x{0.5, -1.0, 2.0, 0.25, 0.75, -0.5};  // [2, 3]
  const std::vector<double> h{0.3, -0.2, -0.6, 0.9};             // [2, 2]
  Tensor y = cell(from_vector(x, {2, 3}), from_vector(h, {2, 2}));

  auto W = [](const Tensor& t, std::int64_t r, std::int64_t c) { return t.data<double>()[r * t.size(1) + c]; };
  std::vector<double> want;
  for (int b = 0; b < 2; ++b) {
    for (int j = 0; j < 2; ++j) {
      double az = cell.b_z.data<double>()[j], ah = cell.b_h.data<double>()[j];
      for (int i = 0; i < 3; ++i) {
        az += x[b * 3 + i] * W(cell.W_z, i, j);
        ah += x[b * 3 + i] * W(cell.W_h, i, j);
      }
      for (int k = 0; k < 2; ++k) {
        az += h[b * 2 + k] * W(cell.U_z, k, j);
        ah += h[b * 2 + k] * W(cell.U_h, k, j);
      }
      const double z = 1.0 / (1.0 + std::exp(-az));
      want.push_back(z * std::tanh(ah) + (1.0 - z) * h[b * 2 + j]);
    }
  }
  CHECK(y.shape() == Shape{2, 2});
  xgtest::check_values(y, want, 1e-14, 1e-12);
}

TEST_CASE("module: to(f64) converts every parameter and float buffer in place and drops grads") {
  manual_seed(4);
  Model m(2, 3, 1);
  const std::vector<Tensor> kept = m.parameters();  // e.g. an optimizer's list
  Tensor w = m.encoder->cell1->U_h;
  const std::vector<double> before = w.to_vector<double>();
  sum(m.forward(uniform({3, 2, 2}, -1, 1))).backward();
  REQUIRE(w.grad().defined());

  m.to(f64);
  for (const Tensor& p : kept) {
    CHECK(p.dtype() == f64);
    CHECK(p.is_leaf());
    CHECK(p.requires_grad());
    CHECK_FALSE(p.grad().defined());
  }
  CHECK(w.dtype() == f64);
  CHECK(w.is_same(m.encoder->cell1->U_h));
  CHECK(w.to_vector<double>() == before);  // float32 -> float64 is exact
  CHECK(m.scale.dtype() == f64);
  xgtest::check_values(m.scale, {2.0});
  CHECK(m.steps.dtype() == i64);  // integer buffers stay integer

  // The model now runs in float64 and its gradients are float64.
  Tensor y = m.forward(uniform({3, 2, 2}, -1, 1, f64));
  CHECK(y.dtype() == f64);
  sum(y).backward();
  CHECK(w.grad().dtype() == f64);

  // Back to float32, and a no-op conversion keeps the storage.
  m.to(f32);
  CHECK(w.dtype() == f32);
  const void* storage = w.data_ptr();
  m.to(f32);
  CHECK(w.data_ptr() == storage);
  check_error<DtypeError>([&] { m.to(i64); }, {"to", "int64"});
  CHECK(w.dtype() == f32);
}

TEST_CASE("module: state_dict holds parameters and buffers in PyTorch's order, sharing storage") {
  // PyTorch's order: per module, its parameters, then its buffers, then its children.
  Model m(2, 3, 1);
  std::vector<std::string> want = model_param_names();
  want.insert(want.begin() + 1, {"scale", "steps"});
  const nn::StateDict sd = m.state_dict();
  CHECK(names_of(sd) == want);
  CHECK(sd[2].second.is_same(m.steps));
  // Writing through a state_dict entry writes the module (no copies were made).
  Tensor scale = sd[1].second;
  scale.data<float>()[0] = 5.f;
  xgtest::check_values(m.scale, {5.0});
}

TEST_CASE("module: load_state_dict copies values into the existing tensors") {
  manual_seed(5);
  Model a(2, 3, 1);
  manual_seed(6);
  Model b(2, 3, 1);
  a.steps.data<std::int64_t>()[0] = 42;
  const std::vector<Tensor> b_handles = b.parameters();
  const void* b_storage = b.head->weight.data_ptr();
  REQUIRE(snapshot(a) != snapshot(b));

  b.load_state_dict(a.state_dict());
  CHECK(snapshot(b) == snapshot(a));
  CHECK(b.steps.item() == 42);
  // Same tensors (an optimizer's handles stay valid), same storage, not aliases of a's.
  CHECK(b.parameters()[13].is_same(b_handles[13]));
  CHECK(b.head->weight.data_ptr() == b_storage);
  CHECK_FALSE(b.head->weight.data_ptr() == a.head->weight.data_ptr());
  a.head->weight.data<float>()[0] += 1.f;
  CHECK(b.head->weight.data<float>()[0] != a.head->weight.data<float>()[0]);
  // Loading a module's own state dict is harmless.
  const auto before = snapshot(b);
  b.load_state_dict(b.state_dict());
  CHECK(snapshot(b) == before);
}

TEST_CASE("module: load_state_dict reports every problem in one StateError and changes nothing") {
  manual_seed(7);
  Model m(2, 3, 1);
  const auto before = snapshot(m);
  nn::StateDict sd;
  for (const auto& [n, t] : m.state_dict()) sd.emplace_back(n, t.detach().clone());

  nn::StateDict bad;
  for (const auto& [n, t] : sd) {
    if (n == "encoder.cell0.U_z" || n == "steps") continue;            // missing
    if (n == "head.weight") {
      bad.emplace_back(n, zeros({2, 1}));                                // mis-shaped
    } else if (n == "encoder.cell1.b_h") {
      bad.emplace_back(n, zeros({3}, f64));                              // mis-typed
    } else {
      bad.emplace_back(n, full(t.shape(), 9.0, t.dtype()));              // fine, but must not load
    }
  }
  bad.emplace_back("encoder.cell2.W_z", zeros({3, 3}));                  // unexpected
  bad.emplace_back("head.weight_typo", zeros({3, 1}));                   // unexpected

  check_error<StateError>([&] { m.load_state_dict(bad); },
                          {"load_state_dict", "6 problem", "encoder.cell0.U_z", "steps", "head.weight",
                           "[2,1]", "[3,1]", "encoder.cell1.b_h", "float64", "encoder.cell2.W_z",
                           "head.weight_typo"});
  CHECK(snapshot(m) == before);

  // strict = false ignores unexpected entries (and loads the rest).
  nn::StateDict extra = sd;
  extra.emplace_back("encoder.cell2.W_z", zeros({3, 3}));
  for (auto& [n, t] : extra) {
    if (n == "h0") t = full({1, 3}, 0.5, f32);
  }
  check_error<StateError>([&] { m.load_state_dict(extra); }, {"unexpected", "encoder.cell2.W_z"});
  CHECK(snapshot(m) == before);
  m.load_state_dict(extra, /*strict=*/false);
  xgtest::check_values(m.h0, {0.5, 0.5, 0.5});
  // ... but not mismatches.
  nn::StateDict mis = sd;
  for (auto& [n, t] : mis) {
    if (n == "scale") t = zeros({2});
  }
  check_error<StateError>([&] { m.load_state_dict(mis, false); }, {"scale", "[1]", "[2]"});
  // Duplicate entries are a problem too.
  nn::StateDict dup = sd;
  dup.push_back(sd[0]);
  check_error<StateError>([&] { m.load_state_dict(dup); }, {"duplicate", "h0"});
}

TEST_CASE("module: save and load round trip through .npz") {
  TempDir dir;
  const std::string p = dir.file("model.npz");
  manual_seed(8);
  Model a(2, 3, 1);
  a.steps.data<std::int64_t>()[0] = 17;
  a.save(p);
  // The file is a plain .npz holding the state dict, names and all.
  const auto entries = load_npz(p);
  CHECK(names_of(entries) == names_of(a.state_dict()));

  manual_seed(9);
  Model b(2, 3, 1);
  REQUIRE(snapshot(a) != snapshot(b));
  b.load(p);
  CHECK(snapshot(b) == snapshot(a));
  CHECK(b.steps.item() == 17);

  // Same outputs.
  Tensor x = uniform({4, 2, 2}, -1, 1);
  xgtest::check_close(a.forward(x), b.forward(x), 0, 0);

  // A float64 model saves float64 entries; loading them into a float32 model is a
  // dtype mismatch, reported (convert first with to()).
  a.to(f64);
  a.save(p);
  check_error<StateError>([&] { b.load(p); }, {"h0", "float64"});
  b.to(f64);
  b.load(p);
  CHECK(snapshot(b) == snapshot(a));
}

TEST_CASE("module: loading a truncated or corrupted .npz is an IOError and leaves the module unchanged") {
  TempDir dir;
  const std::string good_path = dir.file("good.npz");
  manual_seed(10);
  Model a(2, 3, 1);
  a.save(good_path);
  const std::string good = read_file(good_path);
  manual_seed(11);
  Model b(2, 3, 1);
  const auto before = snapshot(b);
  const std::string p = dir.file("bad.npz");

  for (std::size_t len : {std::size_t{0}, std::size_t{10}, good.size() / 3, good.size() / 2, good.size() - 1}) {
    INFO("truncated to " << len);
    write_file(p, good.substr(0, len));
    CHECK_THROWS_AS(b.load(p), IOError);
    CHECK(snapshot(b) == before);
  }
  // A flipped byte in the middle of the values of some entry.
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x5a;
  write_file(p, flipped);
  CHECK_THROWS_AS(b.load(p), IOError);
  CHECK(snapshot(b) == before);
  check_error<IOError>([&] { b.load(dir.file("missing.npz")); }, {"missing.npz"});
  CHECK(snapshot(b) == before);
}

TEST_CASE("module: a few SGD steps on a toy task reduce the custom cell's loss") {
  // Task: from a sequence x [T=6, B=16, 2], predict the mean of x[:, :, 0] minus half
  // the last x[:, :, 1]: needs memory across steps.
  manual_seed(12);
  Model m(2, 8, 1);
  Generator g(99);
  Tensor x = uniform({6, 16, 2}, -1, 1, f32, &g);
  std::vector<float> target(16);
  const float* xp = x.data<float>();
  for (int b = 0; b < 16; ++b) {
    float s = 0;
    for (int t = 0; t < 6; ++t) s += xp[(t * 16 + b) * 2];
    target[b] = s / 6 - 0.5f * xp[(5 * 16 + b) * 2 + 1];
  }
  Tensor y = from_vector(target, {16, 1});

  auto loss_now = [&] { return mse_loss(m.forward(x), y); };
  const double initial = loss_now().item();
  double last = initial;
  for (int step = 0; step < 60; ++step) {
    m.zero_grad();
    Tensor loss = loss_now();
    last = loss.item();
    loss.backward();
    for (Tensor p : m.parameters()) {
      float* v = p.data<float>();
      const float* gp = p.grad().data<float>();
      for (std::int64_t i = 0; i < p.numel(); ++i) v[i] -= 0.1f * gp[i];
    }
  }
  const double final_loss = loss_now().item();
  INFO("loss " << initial << " -> " << final_loss);
  CHECK(std::isfinite(final_loss));
  CHECK(final_loss < 0.5 * initial);
  CHECK(final_loss <= last);
  // Every graph was either walked by backward or dropped with its output.
  CHECK(tape_pending() == 0);
}

TEST_CASE("module: gradcheck of the custom cell w.r.t. input, initial state and every parameter") {
  SUBCASE("one step of the cell") {
    manual_seed(13);
    MinimalGatedCell cell(3, 4);
    cell.to(f64);
    Tensor x = xgtest::rnd({2, 3}, -1, 1, 1);
    Tensor h = xgtest::rnd({2, 4}, -1, 1, 2);
    std::vector<Tensor> wrt{x, h};
    for (const Tensor& p : cell.parameters()) wrt.push_back(p);
    const GradcheckReport r = gradcheck([&] { return cell(x, h); }, wrt);
    INFO(r.str());
    CHECK(r.passed);
    CHECK(r.checked == 2 * 3 + 2 * 4 + cell.num_parameters());
  }
  SUBCASE("the nested model over a sequence (weights reused at every step)") {
    manual_seed(14);
    Model m(2, 3, 2);
    m.to(f64);
    // A non-zero learned initial state, so the gradient through U_z, U_h at step 0 is not trivially zero.
    const Tensor h0_values = xgtest::rnd({1, 3}, -0.5, 0.5, 5);
    std::memcpy(m.h0.data<double>(), h0_values.data<double>(), 3 * sizeof(double));
    Tensor x = xgtest::rnd({4, 2, 2}, -1, 1, 3);
    Tensor h_init = xgtest::rnd({2, 3}, -0.5, 0.5, 4);
    std::vector<Tensor> wrt{x, h_init};
    for (const Tensor& p : m.parameters()) wrt.push_back(p);
    const GradcheckReport r = gradcheck([&] { return m.forward(x, h_init); }, wrt);
    INFO(r.str());
    CHECK(r.passed);
    // And through the learned initial state.
    const GradcheckReport r0 = gradcheck([&] { return m.forward(x); }, m.parameters());
    INFO(r0.str());
    CHECK(r0.passed);
    CHECK(tape_pending() == 0);
  }
}

TEST_CASE("module: many sub-modules keep registration order, refuse duplicates and are found by name") {
  constexpr int n = 2000;
  nn::Module m;
  m.register_parameter("scale", ones({1}));
  std::vector<std::shared_ptr<Affine>> kids;
  for (int i = 0; i < n; ++i) {
    // Names whose sorted and hashed orders differ from registration order.
    kids.push_back(m.register_module(fmt::format("b{}", (i * 7919) % n), std::make_shared<Affine>(1, 1)));
  }
  m.register_buffer("count", zeros({1}));
  // A failed registration (undefined tensor) does not take its name.
  CHECK_THROWS_AS(m.register_parameter("late", Tensor()), StateError);
  Tensor late = m.register_parameter("late", zeros({1}));

  const auto children = m.named_children();
  REQUIRE(children.size() == static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    CHECK(children[i].first == fmt::format("b{}", (i * 7919) % n));
    CHECK(children[i].second.get() == kids[i].get());
  }
  const auto params = m.named_parameters();
  REQUIRE(params.size() == static_cast<std::size_t>(2 * n + 2));
  CHECK(params[0].first == "scale");
  CHECK(params[1].first == "late");  // own parameters first, then each child's
  CHECK(params[2].first == "b0.weight");
  CHECK(params[4].first == fmt::format("b{}.weight", 7919 % n));

  for (const char* dup : {"b0", "b1999", "scale", "count", "late"}) {
    check_error<Error>([&] { m.register_module(dup, std::make_shared<Affine>(1, 1)); }, {"'" + std::string(dup) + "'", "already"});
    check_error<Error>([&] { m.register_parameter(dup, zeros({1})); }, {"already"});
  }
  CHECK(m.named_children().size() == static_cast<std::size_t>(n));

  // Lookup by name and by dotted path.
  CHECK(m.get_submodule(fmt::format("b{}", 7919 % n)).get() == kids[1].get());
  CHECK(m.get_parameter("scale").is_same(params[0].second));
  CHECK(m.get_parameter("late").is_same(late));
  CHECK(m.get_parameter(fmt::format("b{}.bias", (5 * 7919) % n)).is_same(kids[5]->bias));
  CHECK(m.get_buffer("count").numel() == 1);
  check_error<IndexError>([&] { (void)m.get_submodule("nope"); }, {"get_submodule", "'nope'"});
  check_error<IndexError>([&] { (void)m.get_submodule("scale"); }, {"get_submodule", "'scale'", "a parameter"});
  check_error<IndexError>([&] { (void)m.get_parameter("b3.nope"); }, {"get_parameter", "'b3.nope'"});
  check_error<IndexError>([&] { (void)m.get_parameter("nope.weight"); }, {"get_parameter", "'nope.weight'", "no sub-module 'nope'"});
  check_error<IndexError>([&] { (void)m.get_parameter("count"); }, {"get_parameter", "a buffer"});
  check_error<IndexError>([&] { (void)m.get_buffer("scale.x"); }, {"get_buffer", "'scale' is a parameter"});
  check_error<IndexError>([&] { (void)m.get_parameter(""); }, {"get_parameter", "empty"});
}
