#include "xgrad/autograd/runtime.hpp"

#include <fmt/format.h>

#include "xgrad/autograd/error.hpp"

#ifdef XGRAD_BLAS_OPENBLAS
// Declared here rather than through <cblas.h>: these three are all this file needs.
extern "C" {
char* openblas_get_corename(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);
}
#endif

namespace xg {

BlasInfo blas_info() {
  BlasInfo info;
#ifdef XGRAD_BLAS_OPENBLAS
  info.library = "openblas";
  const char* core = openblas_get_corename();
  info.core = core ? core : "";
  info.threads = openblas_get_num_threads();
#else
  info.library = "blis";
  info.threads = 1;
#endif
  return info;
}

void set_num_threads(int n) {
  if (n < 1) throw Error(fmt::format("set_num_threads: need at least 1 thread, got {}", n));
#ifdef XGRAD_BLAS_OPENBLAS
  openblas_set_num_threads(n);
#endif
}

int get_num_threads() { return blas_info().threads; }

}  // namespace xg
