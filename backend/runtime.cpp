#include "runtime.hpp"

#include <cctype>
#include <string>

#include <fmt/format.h>

#include "detail/packed_gemm.hpp"
#include "error.hpp"

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
  const std::string own = fmt::format("xgrad-{}", detail::tiled_vector_bits());
  info.gemm = detail::tiled_gemm_pays() ? own : "blas";
  info.recurrent_gemm = detail::packed_gemm_usable() ? own : "blas";
  return info;
}

void set_num_threads(int n) {
  if (n < 1) throw Error(fmt::format("set_num_threads: need at least 1 thread, got {}", n));
#ifdef XGRAD_BLAS_OPENBLAS
  openblas_set_num_threads(n);
#endif
}

int get_num_threads() { return detail::blas_threads(); }

namespace detail {

int blas_threads() {
#ifdef XGRAD_BLAS_OPENBLAS
  return openblas_get_num_threads();
#else
  return 1;
#endif
}

int blas_kernel_bits() {
#ifdef XGRAD_BLAS_OPENBLAS
  // OpenBLAS picks its kernel set once, when it loads (OPENBLAS_CORETYPE or CPU detection).
  static const int bits = [] {
    const char* c = openblas_get_corename();
    std::string core = c ? c : "";
    for (char& ch : core) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const char* wide : {"skylakex", "cooperlake", "sapphirerapids"}) {
      if (core.find(wide) != std::string::npos) return 512;
    }
    for (const char* avx : {"haswell", "zen", "sandybridge", "excavator", "bulldozer", "piledriver", "steamroller"}) {
      if (core.find(avx) != std::string::npos) return 256;
    }
    return 128;
  }();
  return bits;
#else
  return 512;  // unknown: assume the BLAS uses the widest vectors there are
#endif
}

}  // namespace detail

}  // namespace xg
