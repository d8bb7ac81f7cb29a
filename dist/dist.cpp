#include "dist.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "../backend/error.hpp"
#include "../autograd/random.hpp"

namespace xg::dist {

namespace {

bool g_started = false;    // init() called MPI_Init_thread (so finalize() owns MPI_Finalize)
bool g_active = false;     // between init() and finalize()

// MPI returns error codes (MPI_ERRORS_RETURN is set at init): each becomes an xg::Error.
void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw Error(fmt::format("dist: {} failed: {}", what, std::string(text, static_cast<std::size_t>(len))));
}

void require_active(const char* what) {
  if (!g_active) throw StateError(fmt::format("dist::{}: call xg::dist::init() first", what));
}

MPI_Datatype mpi_type(Dtype d) {
  switch (d) {
    case f32: return MPI_FLOAT;
    case f64: return MPI_DOUBLE;
    case i64: return MPI_INT64_T;
    case b8: return MPI_C_BOOL;
  }
  return MPI_BYTE;
}

// True on every rank only if `ok` is true on every rank.
bool all_agree(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  check(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
  return all == 1;
}

}  // namespace

int init(int* argc, char*** argv) {
  if (g_active) throw StateError("dist::init: already initialised");
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    int provided = 0;
    // FUNNELED: only the thread that called init talks to MPI (xgrad's BLAS threads never do).
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) throw Error("dist::init: MPI_Init_thread failed");
    g_started = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_active = true;
  return world_size();
}

void finalize() {
  if (!g_active) return;
  g_active = false;
  if (g_started) {
    MPI_Finalize();
    g_started = false;
  }
}

bool is_initialized() { return g_active; }

int rank() {
  if (!g_active) return 0;
  int r = 0;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &r), "MPI_Comm_rank");
  return r;
}

int world_size() {
  if (!g_active) return 1;
  int w = 1;
  check(MPI_Comm_size(MPI_COMM_WORLD, &w), "MPI_Comm_size");
  return w;
}

void barrier() {
  if (!g_active) return;
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void broadcast(Tensor& t, int root) {
  require_active("broadcast");
  if (!t.defined()) throw StateError("dist::broadcast: the tensor is undefined");
  if (root < 0 || root >= world_size()) {
    throw IndexError(fmt::format("dist::broadcast: root {} is not a rank of a world of {}", root, world_size()));
  }
  // Root's dtype and shape first, so a mismatch is an error on every rank, not a hang or a
  // buffer overrun.
  std::int64_t meta[2 + Shape::kMaxDims] = {};
  meta[0] = static_cast<std::int64_t>(t.dtype());
  meta[1] = t.ndim();
  for (int d = 0; d < t.ndim(); ++d) meta[2 + d] = t.size(d);
  std::int64_t root_meta[2 + Shape::kMaxDims];
  std::memcpy(root_meta, meta, sizeof meta);
  check(MPI_Bcast(root_meta, 2 + Shape::kMaxDims, MPI_INT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  const bool same = std::memcmp(root_meta, meta, sizeof meta) == 0;
  if (!all_agree(same)) {
    throw StateError(fmt::format("dist::broadcast: rank {} holds {} {}, {}", rank(), dtype_name(t.dtype()),
                                 t.shape().str(),
                                 same ? "another rank's tensor differs from the root's"
                                      : "which differs from the root's tensor"));
  }
  check(MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype()), root, MPI_COMM_WORLD),
        "MPI_Bcast");
}

void broadcast_parameters(const nn::Module& module, int root) {
  require_active("broadcast_parameters");
  for (auto& [name, t] : module.state_dict()) {
    Tensor dst = t;
    try {
      broadcast(dst, root);
    } catch (const StateError& e) {
      throw StateError(fmt::format("dist::broadcast_parameters: '{}': {}", name, e.what()));
    }
  }
}

double allreduce_sum(double value) {
  if (!g_active) return value;
  double out = 0;
  check(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  return out;
}

std::uint64_t parameter_checksum(const nn::Module& module) {
  std::uint64_t h = 1469598103934665603ULL;  // FNV-1a 64
  for (const auto& [name, t] : module.state_dict()) {
    const auto* p = static_cast<const unsigned char*>(t.data_ptr());
    const std::size_t n = static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype());
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  }
  return h;
}

void verify_replicas(const nn::Module& module) {
  const std::uint64_t mine = parameter_checksum(module);
  if (!g_active) return;
  std::vector<std::uint64_t> all(static_cast<std::size_t>(world_size()));
  check(MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
  if (std::all_of(all.begin(), all.end(), [&](std::uint64_t c) { return c == all[0]; })) return;
  std::string list;
  for (std::size_t r = 0; r < all.size(); ++r) list += fmt::format("{}rank {}: {:016x}", r ? ", " : "", r, all[r]);
  throw StateError(fmt::format("dist::verify_replicas: the replicas differ ({})", list));
}

// ---- GradientReducer --------------------------------------------------------------------

GradientReducer::GradientReducer(std::vector<Tensor> params, ReducerOptions options) : params_(std::move(params)) {
  if (params_.empty()) throw Error("dist::GradientReducer: the parameter list is empty");
  if (options.bucket_bytes == 0) throw Error("dist::GradientReducer: bucket_bytes must be positive");
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    if (!p.defined()) throw StateError(fmt::format("dist::GradientReducer: parameter {} is undefined", i));
    if (!is_floating(p.dtype())) {
      throw DtypeError(fmt::format("dist::GradientReducer: parameter {} is {}, not a float tensor", i,
                                   dtype_name(p.dtype())));
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (std::as_const(params_[j]).data_ptr() == p.data_ptr() && p.numel() > 0) {
        throw Error(fmt::format("dist::GradientReducer: parameters {} and {} are the same tensor", j, i));
      }
    }
    const std::size_t bytes = static_cast<std::size_t>(p.numel()) * dtype_size(p.dtype());
    if (buckets_.empty() || buckets_.back().dtype != p.dtype() ||
        (buckets_.back().bytes > 0 && buckets_.back().bytes + bytes > options.bucket_bytes)) {
      buckets_.push_back(Bucket{i, i, 0, p.dtype()});
    }
    buckets_.back().last = i + 1;
    buckets_.back().bytes += bytes;
  }
  std::size_t biggest = 0;
  for (const Bucket& b : buckets_) biggest = std::max(biggest, b.bytes);
  buffer_.resize(biggest);
}

GradientReducer::GradientReducer(const nn::Module& module, ReducerOptions options)
    : GradientReducer(module.parameters(), options) {}

namespace {

template <class T>
void reduce_bucket(std::vector<Tensor>& params, std::size_t first, std::size_t last, unsigned char* raw, int world) {
  T* buf = reinterpret_cast<T*>(raw);
  std::size_t off = 0;
  for (std::size_t i = first; i < last; ++i) {
    const Tensor& p = params[i];
    const std::size_t n = static_cast<std::size_t>(p.numel());
    const Tensor g = p.grad();
    if (g.defined()) {
      std::memcpy(buf + off, g.data<T>(), n * sizeof(T));
    } else {
      std::fill(buf + off, buf + off + n, T(0));
    }
    off += n;
  }
  if (off > 0) {
    check(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(off), std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE,
                        MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
  const T w = static_cast<T>(world);
  off = 0;
  for (std::size_t i = first; i < last; ++i) {
    Tensor p = params[i];
    const std::size_t n = static_cast<std::size_t>(p.numel());
    Tensor g = p.grad();
    if (!g.defined()) {
      g = Tensor::empty(p.shape(), p.dtype());
      p.set_grad(g);
      g = p.grad();
    }
    T* dst = g.data<T>();
    for (std::size_t k = 0; k < n; ++k) dst[k] = buf[off + k] / w;  // sum / W, in the grad's dtype
    off += n;
  }
}

}  // namespace

void GradientReducer::allreduce() {
  if (!g_active || world_size() == 1) return;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = params_[i].grad();
    if (g.defined() && (g.shape() != params_[i].shape() || g.dtype() != params_[i].dtype())) {
      throw StateError(fmt::format("dist::GradientReducer::allreduce: parameter {} has a {} {} gradient for a {} {} "
                                   "tensor", i, dtype_name(g.dtype()), g.shape().str(),
                                   dtype_name(params_[i].dtype()), params_[i].shape().str()));
    }
  }
  const int world = world_size();
  for (const Bucket& b : buckets_) {
    if (b.dtype == f32) {
      reduce_bucket<float>(params_, b.first, b.last, buffer_.data(), world);
    } else {
      reduce_bucket<double>(params_, b.first, b.last, buffer_.data(), world);
    }
  }
}

// ---- sharding and checkpoints -------------------------------------------------------------

std::vector<std::int64_t> shard(std::int64_t n, std::uint64_t seed, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw Error(fmt::format("dist::shard: rank {} of a world of {}: need 0 <= rank < world", rank, world));
  }
  if (n < 0) throw Error(fmt::format("dist::shard: negative item count {}", n));
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  Generator g(seed);
  for (std::int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with xgrad's portable generator
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(g.randint(0, i + 1))]);
  }
  std::vector<std::int64_t> mine;
  mine.reserve(static_cast<std::size_t>(n / world + 1));
  for (std::int64_t i = rank; i < n; i += world) mine.push_back(order[static_cast<std::size_t>(i)]);
  return mine;
}

void save_checkpoint(const std::string& path, const training::CheckpointParts& parts, std::int64_t step,
                     const training::Extras& extras) {
  if (!g_active) {
    training::save_checkpoint(path, parts, step, extras);
    return;
  }
  std::string error;
  if (rank() == 0) {
    try {
      training::save_checkpoint(path, parts, step, extras);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Rank 0's outcome to everyone; the broadcast is also the barrier.
  int len = static_cast<int>(error.size());
  check(MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  if (len > 0) {
    error.resize(static_cast<std::size_t>(len));
    check(MPI_Bcast(error.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
    throw StateError(fmt::format("dist::save_checkpoint: rank 0 could not save '{}': {}", path, error));
  }
  barrier();
}

}  // namespace xg::dist
