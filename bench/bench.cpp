// xgrad's benchmark workloads (definitions in ../shared/bench/README.md), one JSON line
// per measurement:
//   xgrad_bench WORKLOAD [--steps S] [--warmup W] [--threads N] [--variant V] [--T N]
//                        [--ops N] [--modules N] [--no-malloc-tuning]
// WORKLOAD: opoverhead, charlstm, minchar, biglstm, seq2seq_attn, bptt_mem; and gemm, the
// workloads' GEMM shapes on cblas_sgemm and on xgrad's own kernel; pool, what a split costs;
// modreg, registering --modules N one-parameter sub-modules into one module (a model built
// from many small blocks, or a generated one): each step builds the module afresh;
// customcell --size S, a user's own LSTM / GRU cells from ops against nn::LSTM / nn::GRU;
// hvp --variant fused|loop, one gradient and one Hessian-vector product of the charlstm loss.
#include <malloc.h>

#include <cstring>
#include <functional>

#include "bench_common.hpp"

namespace bench {

// A chain of tiny ops on 1x1 tensors: y = tanh(y * a + b), then backward. Measures the
// engine's fixed cost per recorded op (allocation, dispatch, node, closure, walk).
Result opoverhead(const Args& args) {
  using namespace xg;
  const int iters = args.ops / 3;  // mul, add, tanh
  const int n_ops = 3 * iters;
  const int steps = args.steps_or(20);
  Tensor a = full({1, 1}, 0.5).requires_grad_();
  Tensor b = full({1, 1}, 0.1).requires_grad_();
  const Tensor x0 = full({1, 1}, 0.3);
  const Tensor seed = ones({1, 1});
  std::vector<double> fwd, bwd, tot, nograd;
  for (int i = 0; i < args.warmup + steps; ++i) {
    a.zero_grad();
    b.zero_grad();
    const double t0 = now_ms();
    Tensor y = x0;
    for (int k = 0; k < iters; ++k) y = tanh(mul(y, a) + b);
    const double t1 = now_ms();
    y.backward(seed);
    const double t2 = now_ms();
    y = Tensor();
    if (i >= args.warmup) {
      fwd.push_back(t1 - t0);
      bwd.push_back(t2 - t1);
      tot.push_back(t2 - t0);
    }
  }
  {
    NoGradGuard no_grad;
    for (int i = 0; i < args.warmup + steps; ++i) {
      const double t0 = now_ms();
      Tensor y = x0;
      for (int k = 0; k < iters; ++k) y = tanh(mul(y, a) + b);
      if (i >= args.warmup) nograd.push_back(now_ms() - t0);
    }
  }
  Result r;
  r.workload = "opoverhead";
  r.variant = "chain";
  r.threads = args.threads;
  r.ms = tot;
  r.extra["n_ops"] = n_ops;
  r.extra["ns_per_op"] = median(tot) / n_ops * 1e6;
  r.extra["fwd_ns_per_op"] = median(fwd) / n_ops * 1e6;
  r.extra["bwd_ns_per_op"] = median(bwd) / n_ops * 1e6;
  r.extra["nograd_fwd_ns_per_op"] = median(nograd) / n_ops * 1e6;
  r.extra["grad_a"] = a.grad().item();
  return r;
}

namespace {
struct OneParam : xg::nn::Module {
  OneParam() { register_parameter("w", xg::zeros({1})); }
};
}  // namespace

// Registration time per step (the JSON's ms); parameters() and lookup by name beside it.
Result modreg(const Args& args) {
  using namespace xg;
  const int n = args.modules;
  const int steps = args.steps_or(3);
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back(fmt::format("block{}", i));
  std::vector<double> reg, params, lookup;
  std::size_t n_params = 0;
  for (int s = 0; s < args.warmup + steps; ++s) {
    nn::Module root;
    const double t0 = now_ms();
    for (int i = 0; i < n; ++i) root.register_module(names[i], std::make_shared<OneParam>());
    const double t1 = now_ms();
    n_params = root.parameters().size();
    const double t2 = now_ms();
    std::size_t found = 0;
    for (int i = 0; i < n; ++i) found += root.get_submodule(names[i]) != nullptr;
    const double t3 = now_ms();
    if (found != static_cast<std::size_t>(n)) throw Error("modreg: a registered sub-module was not found");
    if (s >= args.warmup) {
      reg.push_back(t1 - t0);
      params.push_back(t2 - t1);
      lookup.push_back(t3 - t2);
    }
  }
  Result r;
  r.workload = "modreg";
  r.variant = fmt::format("n{}", n);
  r.threads = args.threads;
  r.ms = reg;
  r.extra["n_modules"] = n;
  r.extra["n_params"] = static_cast<double>(n_params);
  r.extra["ns_per_register"] = median(reg) / n * 1e6;
  r.extra["parameters_ms"] = median(params);
  r.extra["lookup_ms"] = median(lookup);
  return r;
}

}  // namespace bench

namespace {

int usage() {
  std::fputs(
      "usage: xgrad_bench WORKLOAD [--steps S] [--warmup W] [--threads N] [--variant V] [--T N] [--ops N]\n"
      "                   [--modules N] [--size small|medium|large] [--no-malloc-tuning] [--lengths uniform]\n"
      "workloads: opoverhead charlstm minchar biglstm seq2seq_attn bptt_mem gemm pool modreg customcell hvp\n"
      "  --T N: bptt_mem at one sequence length (default: 64, 128, 256, 512, each in a fresh process)\n"
      "  --lengths uniform: charlstm / biglstm on sequences of lengths uniform in [T/2, T] per batch row\n"
      "                     (nn::LSTM's lengths, loss on the real tokens only)\n",
      stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  bench::Args args;
  args.workload = argv[1];
  for (int i = 2; i < argc; ++i) {
    auto next = [&](const char* name) -> const char* {
      if (i + 1 >= argc) throw xg::Error(fmt::format("{} needs a value", name));
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--steps")) args.steps = std::atoi(next("--steps"));
    else if (!std::strcmp(argv[i], "--warmup")) args.warmup = std::atoi(next("--warmup"));
    else if (!std::strcmp(argv[i], "--threads")) args.threads = std::atoi(next("--threads"));
    else if (!std::strcmp(argv[i], "--ops")) args.ops = std::atoi(next("--ops"));
    else if (!std::strcmp(argv[i], "--T") || !std::strcmp(argv[i], "--seq-len")) args.T = std::atoi(next("--T"));
    else if (!std::strcmp(argv[i], "--variant")) args.variant = next("--variant");
    else if (!std::strcmp(argv[i], "--modules")) args.modules = std::atoi(next("--modules"));
    else if (!std::strcmp(argv[i], "--size")) args.size = next("--size");
    else if (!std::strcmp(argv[i], "--no-malloc-tuning")) args.malloc_tuning = false;
    else if (!std::strcmp(argv[i], "--lengths")) args.lengths = next("--lengths");
    else if (!std::strcmp(argv[i], "--json")) {}
    else return usage();
  }
  if (!args.lengths.empty() && args.lengths != "uniform") return usage();
  if (args.steps < 0 || args.warmup < 0 || args.threads < 1 || args.ops < 3 || args.T < 0 || args.modules < 1) return usage();
  // bptt_mem measures memory in one forward + backward: it keeps glibc's defaults
  // (freed big blocks go back to the OS), as the reference's process does.
  if (args.workload == "bptt_mem") args.malloc_tuning = false;
  if (args.malloc_tuning) {
    // Keep freed blocks in the heap: with glibc's defaults every temporary above 128 KiB
    // is an mmap/munmap pair and page-faults afresh at every step (a [T*B, 4H] gate
    // buffer is 8-32 MiB here). A training loop reuses the same sizes every step.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
  }
  try {
    xg::set_num_threads(args.threads);
    const std::map<std::string, std::function<bench::Result(const bench::Args&)>> workloads = {
        {"opoverhead", bench::opoverhead}, {"charlstm", bench::charlstm},
        {"minchar", bench::minchar},       {"biglstm", bench::biglstm},
        {"seq2seq_attn", bench::seq2seq_attn}, {"bptt_mem", bench::bptt_mem},
        {"gemm", bench::gemm},             {"pool", bench::pool},
        {"modreg", bench::modreg},         {"customcell", bench::customcell},
        {"hvp", bench::hvp},
    };
    const auto it = workloads.find(args.workload);
    if (it == workloads.end()) return usage();
    bench::Result r = it->second(args);
    if (!r.ms.empty()) r.print();  // bptt_mem without --T: its children printed
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xgrad_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
