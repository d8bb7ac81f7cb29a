#pragma once
// What the numerical backend is and how many threads it uses.
#include <string>

namespace xg {

struct BlasInfo {
  std::string library;  // "openblas" or "blis"
  std::string core;     // OpenBLAS's kernel set, e.g. "Prescott", "SkylakeX" (empty otherwise)
  int threads = 1;
  // Who runs the GEMMs: "blas", or xgrad's own register-tiled kernel ("xgrad-512" for
  // 512-bit vectors) where it beats the BLAS's kernels. gemm: every matrix product;
  // recurrent_gemm: the per-step h·W_hhᵀ of lstm_sequence, with W_hh packed once per sequence.
  std::string gemm;
  std::string recurrent_gemm;
};
BlasInfo blas_info();

// Threads one matrix product may use: the BLAS's threads, and as many for xgrad's own
// GEMM kernel on products big enough to split. Everything else runs on the calling thread.
void set_num_threads(int n);
int get_num_threads();

}  // namespace xg
