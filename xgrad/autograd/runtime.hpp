#pragma once
// What the numerical backend is and how many threads it uses.
#include <string>

namespace xg {

struct BlasInfo {
  std::string library;  // "openblas" or "blis"
  std::string core;     // OpenBLAS's kernel set, e.g. "Prescott", "SkylakeX" (empty otherwise)
  int threads = 1;
};
BlasInfo blas_info();

// Threads one matrix product may use: the BLAS's threads, and as many for xgrad's own
// GEMM kernel on products big enough to split. Everything else runs on the calling thread.
void set_num_threads(int n);
int get_num_threads();

}  // namespace xg
