#pragma once
// Shared by the benchmark workloads: timing, peak RSS, the JSON line.
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <xgrad/xgrad.hpp>

namespace bench {

// Command line shared by every workload.
struct Args {
  std::string workload;
  std::string variant;  // empty: the workload's default
  int steps = 0;        // 0: the workload's default (torch_ref.py's DEFAULT_STEPS)
  int warmup = 3;
  int threads = 1;
  int ops = 10000;      // opoverhead
  int T = 0;            // bptt_mem: one sequence length (0: all, each in a fresh process)
  int modules = 100000; // modreg: sub-modules registered into one module
  std::string size;     // customcell: small, medium or large
  bool malloc_tuning = true;
  std::string lengths;  // charlstm / biglstm: "uniform" = per-row lengths in [T/2, T], masked loss
  int steps_or(int dflt) const { return steps > 0 ? steps : dflt; }
};

// Resident set size now (VmRSS), MiB.
inline double rss_now_mib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0.0;
  char line[256];
  double kib = 0.0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "VmRSS:", 6) == 0) {
      kib = std::atof(line + 6);
      break;
    }
  }
  std::fclose(f);
  return kib / 1024.0;
}

inline double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

// CPU time of the whole process (every thread), ms.
inline double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

inline double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  if (n == 0) return 0.0;
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One JSON line: fixed keys first, then workload-specific numbers and strings.
struct Result {
  std::string workload, variant;
  int threads = 1;
  std::vector<double> ms;  // per timed step
  double tokens_per_step = 0.0;
  std::map<std::string, double> extra;
  std::map<std::string, std::string> extra_str;

  void print() const {
    const double med = median(ms);
    const xg::BlasInfo blas = xg::blas_info();
    std::string s = fmt::format(
        "{{\"workload\": \"{}\", \"variant\": \"{}\", \"threads\": {}, \"median_ms\": {:.6g}, \"min_ms\": {:.6g}, "
        "\"max_ms\": {:.6g}, \"tokens_per_s\": {:.6g}, \"peak_rss_mib\": {:.4g}, \"blas\": \"{}\", "
        "\"blas_core\": \"{}\", \"gemm\": \"{}\", \"recurrent_gemm\": \"{}\", \"steps\": {}",
        workload, variant, threads, med, *std::min_element(ms.begin(), ms.end()),
        *std::max_element(ms.begin(), ms.end()), med > 0 ? tokens_per_step / (med / 1e3) : 0.0, peak_rss_mib(),
        blas.library, blas.core, blas.gemm, blas.recurrent_gemm, ms.size());
    for (const auto& [k, v] : extra) s += fmt::format(", \"{}\": {:.6g}", k, v);
    for (const auto& [k, v] : extra_str) s += fmt::format(", \"{}\": \"{}\"", k, v);
    s += "}";
    std::puts(s.c_str());
    std::fflush(stdout);
  }
};

// The workloads (definitions in ../shared/bench/README.md and torch_ref.py).
Result opoverhead(const Args& args);
Result charlstm(const Args& args);
Result biglstm(const Args& args);
Result bptt_mem(const Args& args);
Result minchar(const Args& args);
Result seq2seq_attn(const Args& args);
Result gemm(const Args& args);  // per-shape GEMM rates, its own JSON lines
Result pool(const Args& args);  // the cost of one split: pool against a thread per call
Result modreg(const Args& args);  // registering many sub-modules into one module
Result customcell(const Args& args);  // a user's own cells from ops against nn::LSTM / nn::GRU
Result hvp(const Args& args);  // charlstm: one gradient and one Hessian-vector product

// Per-step timings of a training loop: warm-up steps, then timed ones.
struct Timings {
  std::vector<double> tot, fwd, bwd, opt;
  std::vector<double> losses;

  // t0..t3: step start, after forward, after backward, after the optimizer step.
  void record(double t0, double t1, double t2, double t3, double loss, bool timed) {
    losses.push_back(loss);
    if (!timed) return;
    tot.push_back(t3 - t0);
    fwd.push_back(t1 - t0);
    bwd.push_back(t2 - t1);
    opt.push_back(t3 - t2);
  }

  // The timed steps, their phase medians and the first / last loss into r.
  void fill(Result& r) const {
    r.ms = tot;
    r.extra["fwd_ms"] = median(fwd);
    r.extra["bwd_ms"] = median(bwd);
    r.extra["opt_ms"] = median(opt);
    r.extra["loss_first"] = losses.front();
    r.extra["loss_last"] = losses.back();
  }
};

}  // namespace bench
