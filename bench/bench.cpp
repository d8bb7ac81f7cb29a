// xgrad's benchmark workloads (definitions in ../shared/bench/README.md and
// bench/README.md), one JSON line per measurement:
//   xgrad_bench WORKLOAD [--steps S] [--warmup W] [--threads N] [--ops N]
#include <cstring>
#include <functional>

#include "bench_common.hpp"

namespace {

struct Args {
  std::string workload;
  int steps = 20;
  int warmup = 3;
  int threads = 1;
  int ops = 10000;
};

// A chain of tiny ops on 1x1 tensors: y = tanh(y * a + b), then backward. Measures the
// engine's fixed cost per recorded op (allocation, dispatch, node, closure, walk).
bench::Result opoverhead(const Args& args) {
  using namespace xg;
  const int iters = args.ops / 3;  // mul, add, tanh
  const int n_ops = 3 * iters;
  Tensor a = full({1, 1}, 0.5).requires_grad_();
  Tensor b = full({1, 1}, 0.1).requires_grad_();
  const Tensor x0 = full({1, 1}, 0.3);
  const Tensor seed = ones({1, 1});
  std::vector<double> fwd, bwd, tot, nograd;
  for (int i = 0; i < args.warmup + args.steps; ++i) {
    a.zero_grad();
    b.zero_grad();
    const double t0 = bench::now_ms();
    Tensor y = x0;
    for (int k = 0; k < iters; ++k) y = tanh(mul(y, a) + b);
    const double t1 = bench::now_ms();
    y.backward(seed);
    const double t2 = bench::now_ms();
    y = Tensor();
    if (i >= args.warmup) {
      fwd.push_back(t1 - t0);
      bwd.push_back(t2 - t1);
      tot.push_back(t2 - t0);
    }
  }
  {
    NoGradGuard no_grad;
    for (int i = 0; i < args.warmup + args.steps; ++i) {
      const double t0 = bench::now_ms();
      Tensor y = x0;
      for (int k = 0; k < iters; ++k) y = tanh(mul(y, a) + b);
      if (i >= args.warmup) nograd.push_back(bench::now_ms() - t0);
    }
  }
  bench::Result r;
  r.workload = "opoverhead";
  r.variant = "chain";
  r.threads = args.threads;
  r.ms = tot;
  r.extra["n_ops"] = n_ops;
  r.extra["ns_per_op"] = bench::median(tot) / n_ops * 1e6;
  r.extra["fwd_ns_per_op"] = bench::median(fwd) / n_ops * 1e6;
  r.extra["bwd_ns_per_op"] = bench::median(bwd) / n_ops * 1e6;
  r.extra["nograd_fwd_ns_per_op"] = bench::median(nograd) / n_ops * 1e6;
  r.extra["grad_a"] = a.grad().item();
  return r;
}

int usage() {
  std::fputs(
      "usage: xgrad_bench WORKLOAD [--steps S] [--warmup W] [--threads N] [--ops N]\n"
      "workloads: opoverhead\n",
      stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  Args args;
  args.workload = argv[1];
  for (int i = 2; i < argc; ++i) {
    auto next = [&](const char* name) -> int {
      if (i + 1 >= argc) throw xg::Error(fmt::format("{} needs a value", name));
      return std::atoi(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--steps")) args.steps = next("--steps");
    else if (!std::strcmp(argv[i], "--warmup")) args.warmup = next("--warmup");
    else if (!std::strcmp(argv[i], "--threads")) args.threads = next("--threads");
    else if (!std::strcmp(argv[i], "--ops")) args.ops = next("--ops");
    else if (!std::strcmp(argv[i], "--json")) {}
    else return usage();
  }
  if (args.steps < 1 || args.threads < 1 || args.ops < 3) return usage();
  try {
    xg::set_num_threads(args.threads);
    if (args.workload == "opoverhead") {
      opoverhead(args).print();
    } else {
      return usage();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xgrad_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
