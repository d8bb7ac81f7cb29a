// The GEMMs of the workloads, one JSON line per shape: GFLOP/s of cblas_sgemm, of xgrad's
// own tiled kernel (detail::gemm_tiled, op(B) packed on every call), of what detail::gemm
// picks, and for the per-step recurrent products of PackedB (W_hh packed once, outside the
// timing, as lstm_sequence does once per sequence). Interleaved repetitions, medians.
// --variant xgrad leaves cblas_sgemm out: after each call OpenBLAS's threads spin for a while
// and take the second core from a split of xgrad's kernel, which the interleaving would time.
#include <cblas.h>

#include <string>
#include <thread>

#include "bench_common.hpp"
#include "xgrad/backend/detail/blas.hpp"
#include "xgrad/backend/detail/packed_gemm.hpp"
#include "xgrad/backend/detail/thread_pool.hpp"

namespace bench {

namespace {

struct Shape {
  bool ta, tb;
  int M, N, K;
  const char* where;
  bool recurrent;  // B is W_hh, the same at every step: also time PackedB
};

const std::vector<Shape> kShapes = {
    {false, true, 32, 1024, 256, "charlstm h.W_hh^T per step", true},
    {false, false, 32, 256, 1024, "charlstm dgates.W_hh per step", true},
    {false, true, 2048, 1024, 256, "charlstm layer-2 x.W_ih^T", false},
    {true, false, 1024, 256, 2016, "charlstm dW_hh over all steps", false},
    {false, false, 2048, 256, 1024, "charlstm dx", false},
    {false, true, 2048, 96, 256, "charlstm output layer", false},
    {false, true, 32, 512, 192, "seq2seq decoder gates", false},
    {false, true, 32, 128, 128, "seq2seq attention query", false},
    {false, true, 32, 40, 256, "seq2seq output layer", false},
    {true, false, 512, 192, 640, "a weight gradient over 640 rows", false},
    {false, true, 64, 4096, 1024, "biglstm h.W_hh^T per step", true},
    {false, true, 2048, 4096, 1024, "biglstm x.W_ih^T", false},
    {true, false, 4096, 1024, 2048, "biglstm dW_hh", false},
};

double gflops(const Shape& s, double ms) { return 2.0 * s.M * s.N * s.K / 1e9 / (ms / 1e3); }

}  // namespace

Result gemm(const Args& args) {
  const int reps = args.steps_or(7);
  const xg::BlasInfo blas = xg::blas_info();
  const bool with_blas = args.variant != "xgrad";
  if (!args.variant.empty() && with_blas) throw xg::Error("gemm: --variant is xgrad or nothing, got " + args.variant);
  for (const Shape& s : kShapes) {
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    std::vector<float> a(std::size_t(s.M) * s.K), b(std::size_t(s.K) * s.N), c(std::size_t(s.M) * s.N);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(i % 97) * 0.01f - 0.48f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = float(i % 89) * 0.01f - 0.44f;
    // Enough calls per sample for ~20 ms of work at 200 GFLOP/s.
    const int calls = std::max(1, int(4e9 / (2.0 * s.M * s.N * s.K)));
    const auto time = [&](auto&& f) {
      f();  // warm
      const double t0 = now_ms();
      for (int i = 0; i < calls; ++i) f();
      return (now_ms() - t0) / calls;
    };
    const xg::detail::PackedB<float> packed(s.tb, s.K, s.N, b.data(), ldb);
    std::vector<double> sg, tiled, disp, pk;
    for (int r = 0; r < reps; ++r) {
      if (with_blas) sg.push_back(time([&] {
        cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M, s.N, s.K,
                    1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.N);
      }));
      tiled.push_back(time([&] {
        xg::detail::gemm_tiled<float>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(),
                                      s.N);
      }));
      disp.push_back(time([&] {
        xg::detail::gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.N);
      }));
      if (s.recurrent && !s.ta) pk.push_back(time([&] { packed.gemm_acc(s.M, a.data(), lda, c.data(), s.N); }));
    }
    std::string line = fmt::format(
        "{{\"workload\": \"gemm\", \"shape\": \"{}{} {}x{}x{}\", \"where\": \"{}\", \"threads\": {}, "
        "\"blas\": \"{}\", \"blas_core\": \"{}\", \"gemm\": \"{}\", \"sgemm_gflops\": {:.4g}, "
        "\"tiled_gflops\": {:.4g}, \"dispatched_gflops\": {:.4g}",
        s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, s.where, args.threads, blas.library, blas.core, blas.gemm,
        with_blas ? gflops(s, median(sg)) : 0.0, gflops(s, median(tiled)), gflops(s, median(disp)));
    if (!pk.empty()) line += fmt::format(", \"packed_once_gflops\": {:.4g}", gflops(s, median(pk)));
    line += "}";
    std::puts(line.c_str());
    std::fflush(stdout);
  }
  return Result{};  // the lines above are the output
}

// What splitting costs beyond the work: `threads` shares of a fixed busy wait per call
// (empty, 20 us, 100 us), on the pool the split uses, against one std::thread started per
// extra share and joined (how the split ran before the pool). Interleaved, medians.
Result pool(const Args& args) {
  const int reps = args.steps_or(7), shares = std::max(2, args.threads);
  for (const double task_us : {0.0, 20.0, 100.0}) {
    const auto work = [task_us](std::int64_t) {
      const double t0 = now_ms();
      while ((now_ms() - t0) * 1e3 < task_us) {
      }
    };
    const int calls = task_us == 0.0 ? 2000 : 300;
    std::vector<double> pooled, started;
    for (int r = 0; r < reps; ++r) {
      double t0 = now_ms();
      for (int c = 0; c < calls; ++c) xg::detail::thread_pool().run(shares, work);
      pooled.push_back((now_ms() - t0) * 1e3 / calls);
      t0 = now_ms();
      for (int c = 0; c < calls; ++c) {
        std::vector<std::thread> ts;
        for (int t = 1; t < shares; ++t) ts.emplace_back(work, t);
        work(0);
        for (std::thread& t : ts) t.join();
      }
      started.push_back((now_ms() - t0) * 1e3 / calls);
    }
    std::printf(
        "{\"workload\": \"pool\", \"threads\": %d, \"task_us\": %g, \"pool_us_per_call\": %.4g, "
        "\"thread_per_call_us_per_call\": %.4g}\n",
        shares, task_us, median(pooled), median(started));
    std::fflush(stdout);
  }
  return Result{};
}

}  // namespace bench
