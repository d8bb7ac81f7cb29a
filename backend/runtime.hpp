#pragma once
// What the numerical backend is and how many threads it uses.
#include <string>

namespace xg {

struct BlasInfo {
  std::string library;  // "openblas" or "blis"
  std::string core;     // the kernel set it picked: OpenBLAS "Prescott", "SkylakeX"...; BLIS "zen3", "skx"...
  int threads = 1;      // the BLAS's threads (get_num_threads())
  // Who runs the GEMMs: "blas", or xgrad's own register-tiled kernel ("xgrad-512" for
  // 512-bit vectors) where it beats the BLAS's kernels. gemm: every matrix product;
  // recurrent_gemm: the per-step h·W_hhᵀ of lstm_sequence, with W_hh packed once per sequence.
  std::string gemm;
  std::string recurrent_gemm;
};
BlasInfo blas_info();

// Threads one matrix product may use: the BLAS's threads, and as many for xgrad's own
// GEMM kernel on products big enough to split (the calling thread and n - 1 workers of a
// pool started once and asleep between products). Everything else runs on the calling
// thread. Two user threads may each run products at once; they share the pool.
void set_num_threads(int n);
int get_num_threads();

}  // namespace xg
