// Curvature: the largest eigenvalue of a char-LSTM's loss Hessian, before and after training,
// by power iteration on Hessian-vector products, checked against PyTorch on the same weights.
//
// The Hessian of a model with P parameters is P x P; it is never formed. xg::hvp(f, params, v)
// gives H v as the gradient of <grad f, v> (the gradient recorded with create_graph, then
// differentiated once more), at about the cost of two gradients. Power iteration,
//     v <- H v / ||H v||,
// converges to the eigenvector of the eigenvalue of largest magnitude, and the Rayleigh
// quotient lambda = v' H v to that eigenvalue. Since ||H v||^2 = lambda^2 + ||H v - lambda v||^2
// for a unit v, |lambda| = ||H v|| exactly when v is an eigenvector: the gap between them is
// the convergence test. The "sharpness" lambda_max bounds the stable step of gradient descent
// (lr < 2 / lambda_max) and typically grows as training goes on.
//
// The model: Embedding(V, 8) -> nn::LSTM(8, 16) -> Linear(16, V), cross-entropy over a fixed
// text cut into 4 streams, all in float64. Both Hessians (initial and trained weights) are
// saved as .npz with the start vector and the number of iterations; torch_eigen.py loads them
// into torch.nn modules and runs the same iteration with torch.autograd.grad(create_graph=True):
// the eigenvalues must agree to 1e-6 (relative).
//
//   ./curvature                          # prints both eigenvalues, xgrad's and PyTorch's
//   ./curvature --steps 60 --check       # smoke test: converged, positive after training
//   ./curvature --torch on --check       # and agrees with PyTorch (exit 77: no python3/torch)
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

#include "../common/cli.hpp"

using namespace xg;
namespace cli = examples::cli;
namespace fs = std::filesystem;

#ifndef XGRAD_CURVATURE_SCRIPT
#define XGRAD_CURVATURE_SCRIPT "examples/curvature/torch_eigen.py"
#endif

namespace {

// The fixed text (a paragraph of docs/autograd.md's kind): 4 streams of 64 + 1 chars.
constexpr const char* kText =
    "the tape records every op in the order it ran. backward walks it in reverse, calls each node's "
    "backward with the gradient accumulated for it and adds the results into the nodes its edges name. "
    "with create_graph the backward functions record too, so a gradient is itself a function of the "
    "weights and can be differentiated again: a hessian-vector product is the gradient of <g, v>.";

struct CharLSTM : nn::Module {
  std::shared_ptr<nn::Embedding> embedding;
  std::shared_ptr<nn::LSTM> lstm;
  std::shared_ptr<nn::Linear> head;
  CharLSTM(std::int64_t vocab, std::int64_t embed, std::int64_t hidden) {
    embedding = register_module("embedding", std::make_shared<nn::Embedding>(vocab, embed));
    lstm = register_module("lstm", std::make_shared<nn::LSTM>(nn::LSTMOptions{
                                       .input_size = embed, .hidden_size = hidden, .batch_first = true}));
    head = register_module("head", std::make_shared<nn::Linear>(hidden, vocab));
  }
  // inputs, targets int64 [B, T] -> mean cross-entropy over the B*T next-char predictions.
  Tensor loss(const Tensor& inputs, const Tensor& targets) const {
    const std::int64_t B = inputs.size(0), T = inputs.size(1);
    const Tensor out = (*lstm)((*embedding)(inputs)).output;  // [B, T, H]
    const Tensor logits = (*head)(reshape(out, {B * T, lstm->hidden_size()}));
    return cross_entropy(logits, reshape(targets, {B * T}));
  }
};

double dot_all(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += sum(a[i] * b[i]).item();
  return s;
}

struct Power {
  double eigenvalue = 0;  // v' H v at the last v
  double hv_norm = 0;     // ||H v|| at the same v
  double residual = 0;    // ||H v - lambda v|| / |lambda|
  int iterations = 0;
  bool converged = false;
};

// Power iteration from v0 (normalised here): stops once the Rayleigh quotient moves by less
// than tol (relative) or after max_iters.
Power power_iteration(const std::function<Tensor()>& f, const std::vector<Tensor>& params, const std::vector<Tensor>& v0,
                      int max_iters, double tol) {
  std::vector<Tensor> v;
  const double n0 = std::sqrt(dot_all(v0, v0));
  for (const Tensor& t : v0) v.push_back(t / n0);
  Power p;
  double previous = 0;
  for (int it = 1; it <= max_iters; ++it) {
    const std::vector<Tensor> hv = hvp(f, params, v).hvp;
    NoGradGuard no_grad;
    p.iterations = it;
    p.eigenvalue = dot_all(v, hv);
    p.hv_norm = std::sqrt(dot_all(hv, hv));
    double r2 = 0;
    for (std::size_t i = 0; i < v.size(); ++i) r2 += sum((hv[i] - v[i] * p.eigenvalue) * (hv[i] - v[i] * p.eigenvalue)).item();
    p.residual = std::sqrt(r2) / std::abs(p.eigenvalue);
    if (it > 1 && std::abs(p.eigenvalue - previous) <= tol * std::abs(p.eigenvalue)) {
      p.converged = true;
      break;
    }
    previous = p.eigenvalue;
    // A constant direction for the next product: detach() marks a gradient's value used on purpose.
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = (hv[i] / p.hv_norm).detach();
  }
  return p;
}

// ---- PyTorch --------------------------------------------------------------------------

struct TorchRun {
  bool ran = false;
  std::string why;  // when not ran: what was missing
  double eigenvalue = 0;
};

bool python_has_torch(const std::string& python) {
  if (::access(python.c_str(), X_OK) != 0) return false;
  return std::system(fmt::format("'{}' -c 'import torch, numpy' >/dev/null 2>&1", python).c_str()) == 0;
}

// Runs the script on one .npz; it prints "eigenvalue <value>" as its last line.
TorchRun run_torch(const std::string& python, const std::string& script, const std::string& npz) {
  TorchRun r;
  const std::string cmd = fmt::format("'{}' '{}' '{}' 2>&1", python, script, npz);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) throw IOError("curvature: cannot run " + cmd);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) out += buf;
  const int status = ::pclose(pipe);
  const auto at = out.rfind("eigenvalue ");
  if (status != 0 || at == std::string::npos)
    throw Error(fmt::format("curvature: {} failed (status {}):\n{}", script, status, out));
  r.ran = true;
  r.eigenvalue = std::stod(out.substr(at + 11));
  return r;
}

struct Options {
  std::int64_t embed = 8, hidden = 16, batch = 4;
  int steps = 300, max_iters = 500;
  double lr = 1e-2, tol = 1e-10;
  std::uint64_t seed = 1;
  std::string torch = "auto", python = "/usr/bin/python3", script = XGRAD_CURVATURE_SCRIPT;
  std::string out = "out/curvature";
  bool check = false;
  double check_gap = 1e-4;
};

int run(const Options& o) {
  DefaultDtypeGuard f64_guard(f64);  // the comparison with PyTorch is to 1e-6: float32 cannot carry it
  manual_seed(o.seed);
  fs::create_directories(o.out);
  const training::CharVocab vocab{std::string(kText)};
  const Tensor streams = training::batchify(vocab.encode(kText), o.batch);  // [B, L]
  const std::int64_t L = streams.size(1);
  const Tensor inputs = slice(streams, 1, 0, L - 1), targets = slice(streams, 1, 1, L);  // [B, T]
  CharLSTM model(vocab.size(), o.embed, o.hidden);
  const std::vector<Tensor> params = model.parameters();
  const auto f = [&] { return model.loss(inputs, targets); };
  fmt::print("char-LSTM: Embedding({}, {}) -> LSTM({}, {}) -> Linear({}, {}), {} parameters; {} streams of {} chars\n",
             vocab.size(), o.embed, o.embed, o.hidden, o.hidden, vocab.size(), model.num_parameters(), o.batch,
             inputs.size(1));

  Generator gen(o.seed + 7);
  std::vector<Tensor> v0;
  for (const Tensor& p : params) v0.push_back(randn(p.shape(), f64, &gen));

  bool torch_wanted = o.torch != "off";
  TorchRun skipped;
  if (torch_wanted && !python_has_torch(o.python)) {
    skipped.why = fmt::format("{} with torch and numpy not found", o.python);
    torch_wanted = false;
  } else if (torch_wanted && ::access(o.script.c_str(), R_OK) != 0) {
    skipped.why = fmt::format("{} not found (--torch-script)", o.script);
    torch_wanted = false;
  }
  if (!torch_wanted && o.torch == "on" && !o.check)
    throw Error(fmt::format("curvature: --torch on: {}", skipped.why));

  struct Row {
    std::string when;
    double loss;
    Power power;
    TorchRun torch;
  };
  std::vector<Row> rows;
  auto measure = [&](const std::string& when) {
    const double loss = f().item();
    const Power p = power_iteration(f, params, v0, o.max_iters, o.tol);
    const std::string npz = (fs::path(o.out) / fmt::format("curvature_{}.npz", when)).string();
    std::vector<std::pair<std::string, Tensor>> entries = model.state_dict();
    const nn::StateDict named = model.named_parameters();  // the order of params and v0
    for (std::size_t i = 0; i < named.size(); ++i) entries.emplace_back("v0." + named[i].first, v0[i]);
    entries.emplace_back("inputs", inputs);
    entries.emplace_back("targets", targets);
    entries.emplace_back("iterations", from_vector(std::vector<std::int64_t>{p.iterations}));
    entries.emplace_back("xgrad_eigenvalue", from_vector(std::vector<double>{p.eigenvalue}));
    save_npz(npz, entries);
    fmt::print("{:>8}: loss {:.4f}; lambda_max {:.10g} after {} iterations{}; ||Hv|| {:.10g}, residual ||Hv - lambda v|| / "
               "|lambda| {:.2e}; wrote {}\n",
               when, loss, p.eigenvalue, p.iterations, p.converged ? "" : " (NOT converged)", p.hv_norm, p.residual, npz);
    std::fflush(stdout);
    rows.push_back({when, loss, p, torch_wanted ? run_torch(o.python, o.script, npz) : skipped});
  };

  measure("initial");
  optim::Adam opt(params, {.lr = o.lr});
  for (int step = 1; step <= o.steps; ++step) {
    opt.zero_grad();
    f().backward();
    opt.step();
  }
  measure("trained");
  {
    // What a product costs: the power iteration's time is almost all in them.
    const auto t0 = std::chrono::steady_clock::now();
    const int n = 20;
    for (int i = 0; i < n; ++i) (void)grad({f()}, params);
    const auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) (void)hvp(f, params, v0);
    const auto t2 = std::chrono::steady_clock::now();
    const double g_ms = std::chrono::duration<double, std::milli>(t1 - t0).count() / n;
    const double h_ms = std::chrono::duration<double, std::milli>(t2 - t1).count() / n;
    fmt::print("one gradient {:.2f} ms, one Hessian-vector product {:.2f} ms ({:.1f}x)\n", g_ms, h_ms, h_ms / g_ms);
  }

  fmt::print("\n{:>8}  {:>10}  {:>22}  {:>22}  {:>10}\n", "weights", "loss", "lambda_max (xgrad)", "lambda_max (PyTorch)",
             "rel. diff");
  double worst_rel = 0;
  for (const Row& r : rows) {
    if (r.torch.ran) {
      const double rel = std::abs(r.power.eigenvalue - r.torch.eigenvalue) / std::abs(r.torch.eigenvalue);
      worst_rel = std::max(worst_rel, rel);
      fmt::print("{:>8}  {:>10.4f}  {:>22.15g}  {:>22.15g}  {:>10.2e}\n", r.when, r.loss, r.power.eigenvalue,
                 r.torch.eigenvalue, rel);
    } else {
      fmt::print("{:>8}  {:>10.4f}  {:>22.15g}  {:>22}  {:>10}\n", r.when, r.loss, r.power.eigenvalue, "skipped", "");
    }
  }
  if (!torch_wanted) fmt::print("PyTorch comparison skipped: {}\n", skipped.why);
  if (!o.check) return 0;

  bool ok = true;
  for (const Row& r : rows) {
    const double gap = std::abs(std::abs(r.power.eigenvalue) - r.power.hv_norm) / r.power.hv_norm;
    const bool pass = r.power.converged && gap < o.check_gap;
    fmt::print("check {}: {} weights: converged in {} iterations, | |v'Hv| - ||Hv|| | / ||Hv|| = {:.2e} (< {})\n",
               pass ? "ok" : "FAILED", r.when, r.power.iterations, gap, o.check_gap);
    ok = ok && pass;
  }
  const bool positive = rows.back().power.eigenvalue > 0;
  fmt::print("check {}: lambda_max after training {:.6g} > 0\n", positive ? "ok" : "FAILED", rows.back().power.eigenvalue);
  ok = ok && positive;
  if (torch_wanted) {
    const bool agree = worst_rel < 1e-6;
    fmt::print("check {}: xgrad and PyTorch agree to {:.2e} (< 1e-6 relative)\n", agree ? "ok" : "FAILED", worst_rel);
    ok = ok && agree;
  }
  if (!ok) return 1;
  // meson counts exit code 77 as a skipped test: the PyTorch half was asked for and could not run.
  if (o.torch == "on" && !torch_wanted) {
    fmt::print("SKIP: the PyTorch comparison: {}\n", skipped.why);
    return 77;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"The largest Hessian eigenvalue of a char-LSTM's loss (power iteration on xg::hvp), before and after "
               "training, compared with PyTorch's on the same weights"};
  app.add_option("--steps", o.steps, "Adam steps of full-batch training")->capture_default_str()->check(cli::integer(0, cli::kMaxSteps));
  app.add_option("--lr", o.lr, "Adam learning rate")->capture_default_str()->check(cli::positive());
  app.add_option("--embed", o.embed, "embedding size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--hidden", o.hidden, "LSTM hidden size")->capture_default_str()->check(cli::count(cli::kMaxWidth));
  app.add_option("--batch", o.batch, "streams the text is cut into")->capture_default_str()->check(cli::count(64));
  app.add_option("--max-iters", o.max_iters, "power iterations at most")->capture_default_str()->check(cli::count(100000));
  app.add_option("--tol", o.tol, "stop when the Rayleigh quotient moves by less than this (relative)")
      ->capture_default_str()
      ->check(cli::real(0, true, 1, true));
  app.add_option("--seed", o.seed, "seed of the weights (the start vector uses seed + 7)")->capture_default_str()->check(cli::seed());
  app.add_option("--torch", o.torch, "run torch_eigen.py: auto (if python3 has torch), on, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--python", o.python, "the python3 with torch")->capture_default_str();
  app.add_option("--torch-script", o.script, "path of torch_eigen.py")->capture_default_str();
  app.add_option("--out", o.out, "output directory (the .npz files)")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--check", o.check, "exit 1 unless both iterations converged, lambda_max > 0 after training and (when "
                                   "it ran) PyTorch agrees to 1e-6; 77 (skipped) if --torch on could not run");
  return cli::run(app, "curvature", argc, argv, [&] { return run(o); });
}
