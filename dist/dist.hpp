#pragma once
// Data-parallel training over MPI (built when meson finds MPI: `-Dmpi=auto`, the default).
//
// Every process (rank) holds a full replica of the model and optimizer. Each step:
//
//   auto idx = xg::dist::shard(n_items, epoch_seed);     // this rank's share of the data
//   loss = model(batch of my items); loss.backward();
//   reducer.allreduce();             // grads <- mean over ranks (MPI_Allreduce, sum / W)
//   clip_grad_norm(params, 5.0);     // after averaging: every rank sees the same norm
//   opt.step(); opt.zero_grad();     // identical updates: replicas stay bit-identical
//
// Replicas start equal through broadcast_parameters() (at start, and after a resume, from
// rank 0), and stay equal because every rank applies the same averaged gradient with the
// same optimizer arithmetic. verify_replicas() checks that with a checksum per rank.
// Only rank 0 writes checkpoints (save_checkpoint below), atomically, then all ranks meet
// at a barrier so nobody reads a file that is still being written.
//
// Gradients are packed in registration order into buckets of about bucket_bytes (as
// PyTorch's DistributedDataParallel does) so a model of many small tensors costs a few large
// allreduces rather than many small ones. MPI is not included here: this header stays
// light, and programs that do not use xg::dist do not see MPI at all.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../autograd/tensor.hpp"
#include "../nn/module.hpp"
#include "../train/checkpoint.hpp"

namespace xg::dist {

// MPI_Init_thread (or nothing if MPI is already initialised by the caller). Safe to call
// once per process; a second init is an Error. Returns the world size.
int init(int* argc = nullptr, char*** argv = nullptr);
// MPI_Finalize if init() started MPI. Idempotent.
void finalize();
bool is_initialized();
// Before init(): rank 0 of a world of 1, so the same program runs without mpirun.
int rank();
int world_size();
void barrier();

// Sends `t`'s values from root to every rank, in place (same shape and dtype everywhere;
// a mismatch is a StateError naming the tensor on the rank that finds it).
void broadcast(Tensor& t, int root = 0);
// Every parameter and buffer of the module, from root, in registration order.
void broadcast_parameters(const nn::Module& module, int root = 0);
// Sum of one number over ranks (e.g. token counts, losses for logging).
double allreduce_sum(double value);

// FNV-1a over the bytes of every parameter and buffer, in order.
std::uint64_t parameter_checksum(const nn::Module& module);
// Gathers every rank's checksum and throws StateError on every rank, listing them, when
// they differ. Call it now and then (e.g. when checkpointing) to catch drift.
void verify_replicas(const nn::Module& module);

struct ReducerOptions {
  std::size_t bucket_bytes = std::size_t{25} << 20;  // PyTorch DDP's default bucket_cap_mb
};

// The gradient averaging of DistributedDataParallel. Parameters must be float tensors of
// one dtype per bucket (a bucket never mixes dtypes: a new one starts at each change).
class GradientReducer {
 public:
  explicit GradientReducer(std::vector<Tensor> params, ReducerOptions options = {});
  explicit GradientReducer(const nn::Module& module, ReducerOptions options = {});

  // After backward on every rank: each parameter's grad becomes the mean of that grad over
  // ranks. A parameter with no grad on this rank contributes zeros (and gets the mean), so
  // every rank ends with the same set of gradients. With one rank it is a no-op.
  void allreduce();

  std::size_t num_buckets() const { return buckets_.size(); }
  const std::vector<Tensor>& params() const { return params_; }

 private:
  struct Bucket {
    std::size_t first = 0, last = 0;  // params_[first, last)
    std::size_t bytes = 0;
    Dtype dtype = f32;
  };
  std::vector<Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned char> buffer_;
};

// This rank's items of an epoch: a seeded shuffle of [0, n) (the same on every rank), of
// which rank r takes positions r, r + W, r + 2W, ... The ranks' shares are disjoint and
// cover every item; their sizes differ by at most one. world < 1 or rank outside [0, world):
// Error.
std::vector<std::int64_t> shard(std::int64_t n, std::uint64_t seed, int rank, int world);
inline std::vector<std::int64_t> shard(std::int64_t n, std::uint64_t seed) {
  return shard(n, seed, dist::rank(), world_size());
}

// Rank 0 writes the checkpoint (atomically, as training::save_checkpoint); then every rank
// waits at a barrier, so the file is complete when anyone goes on to read it. An error on
// rank 0 is reported on every rank (StateError naming rank 0's message).
void save_checkpoint(const std::string& path, const training::CheckpointParts& parts, std::int64_t step,
                     const training::Extras& extras = {});

}  // namespace xg::dist
