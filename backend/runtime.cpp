#include "runtime.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "detail/packed_gemm.hpp"
#include "detail/thread_pool.hpp"
#include "error.hpp"

#ifdef XGRAD_BLAS_OPENBLAS
// Declared here rather than through <cblas.h>: these three are all this file needs.
extern "C" {
char* openblas_get_corename(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);
}
#endif
#ifdef XGRAD_BLAS_BLIS
// From <blis.h> (Debian ships no pkg-config file for it, and these four are all this file
// needs): dim_t is 64-bit on 64-bit targets, arch_t an enum.
extern "C" {
void bli_thread_set_num_threads(std::int64_t n_threads);
std::int64_t bli_thread_get_num_threads(void);
int bli_arch_query_id(void);
char* bli_arch_string(int id);
}
#endif

namespace xg {

namespace {

// The name of the kernel set the BLAS picked when it loaded (OPENBLAS_CORETYPE or CPU
// detection for OpenBLAS, BLIS_ARCH_TYPE or CPU detection for BLIS).
std::string blas_core() {
#if defined(XGRAD_BLAS_OPENBLAS)
  const char* core = openblas_get_corename();
#else
  const char* core = bli_arch_string(bli_arch_query_id());
#endif
  return core ? core : "";
}

}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
#ifdef XGRAD_BLAS_OPENBLAS
  info.library = "openblas";
#else
  info.library = "blis";
#endif
  info.core = blas_core();
  info.threads = detail::blas_threads();
  const std::string own = fmt::format("xgrad-{}", detail::tiled_vector_bits());
  info.gemm = detail::tiled_gemm_pays() ? own : "blas";
  info.recurrent_gemm = detail::packed_gemm_usable() ? own : "blas";
  return info;
}

void set_num_threads(int n) {
  if (n < 1) throw Error(fmt::format("set_num_threads: need at least 1 thread, got {}", n));
#ifdef XGRAD_BLAS_OPENBLAS
  openblas_set_num_threads(n);
#else
  bli_thread_set_num_threads(n);
#endif
  detail::set_pool_threads(n);
}

int get_num_threads() { return detail::blas_threads(); }

namespace detail {

int blas_threads() {
#ifdef XGRAD_BLAS_OPENBLAS
  return openblas_get_num_threads();
#else
  // -1 until set (by set_num_threads or BLIS_NUM_THREADS/OMP_NUM_THREADS at load), and
  // then BLIS runs on one thread.
  return static_cast<int>(std::max<std::int64_t>(1, bli_thread_get_num_threads()));
#endif
}

int blas_kernel_bits() {
  // The BLAS picks its kernel set once, when it loads. OpenBLAS names: "SkylakeX",
  // "Haswell", "Zen", "Prescott"...; BLIS: "skx", "knl", "zen3", "haswell", "generic"...
  static const int bits = [] {
    std::string core = blas_core();
    for (char& ch : core) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const char* wide : {"skylakex", "cooperlake", "sapphirerapids", "skx", "knl", "zen4"}) {
      if (core.find(wide) != std::string::npos) return 512;
    }
    for (const char* avx : {"haswell", "zen", "sandybridge", "excavator", "bulldozer", "piledriver", "steamroller"}) {
      if (core.find(avx) != std::string::npos) return 256;
    }
    return 128;
  }();
  return bits;
}

}  // namespace detail

}  // namespace xg
