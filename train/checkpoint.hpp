#pragma once
// Checkpoints: everything a training run needs to continue as if never stopped, in one
// .npz that numpy.load opens.
//
//   xg::training::CheckpointParts parts{.model = &model, .optimizer = &opt,
//                                    .scheduler = &sched, .generator = &xg::default_generator()};
//   xg::training::Extras extras;
//   extras.set_int("data.position", pos);
//   extras.set_string("vocab", vocab_chars);
//   xg::training::save_checkpoint("run/ckpt.npz", parts, step, extras);
//   ...
//   auto loaded = xg::training::load_checkpoint("run/ckpt.npz", parts);   // fresh objects
//   step = loaded.step; pos = loaded.extras.get_int("data.position");
//
// Entries of the archive:
//   xgrad.checkpoint        int64 format version (1)
//   step                    int64 the caller's step counter
//   model.<name>            the model's state_dict
//   optimizer.<name>        the optimizer's state_dict (every moment and step count)
//   scheduler.<name>        the scheduler's state_dict
//   generator.state         int64 [6]: the random generator's full state (bit pattern)
//   extra.<name>            the caller's extras
//
// Saving is atomic (temp file in the same directory, fsync, rename): a run killed at any
// moment leaves either the previous checkpoint or the new one, never a torn file.
// Loading reads and validates the whole file and every part first; if anything does not
// fit (another model's shapes, another optimizer, a part missing from the file) it throws
// StateError naming every problem and changes nothing.
#include <cstdint>
#include <string>
#include <vector>

#include "../autograd/random.hpp"
#include "../autograd/tensor.hpp"
#include "../nn/module.hpp"
#include "../optim/optimizer.hpp"
#include "../optim/scheduler.hpp"

#include "namespace.hpp"

namespace xg::training {

// What a checkpoint saves and restores. Each part is optional: a null part is neither
// saved nor loaded. Loading requires every non-null part to be in the file.
struct CheckpointParts {
  nn::Module* model = nullptr;
  optim::Optimizer* optimizer = nullptr;
  optim::LRScheduler* scheduler = nullptr;
  Generator* generator = nullptr;
};

// The caller's own data, by name: numbers, strings (e.g. a vocabulary) and tensors.
// Stored as tensors (int64 / float64 0-d, a string as int64 bytes) under "extra.<name>".
class Extras {
 public:
  void set_int(const std::string& name, std::int64_t v);
  void set_double(const std::string& name, double v);
  void set_string(const std::string& name, const std::string& v);
  void set_tensor(const std::string& name, const Tensor& t);

  bool has(const std::string& name) const;
  // Missing name, or an entry of another kind: StateError naming it.
  std::int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  std::string get_string(const std::string& name) const;
  Tensor get_tensor(const std::string& name) const;

  const nn::StateDict& entries() const { return entries_; }

 private:
  void put(const std::string& name, Tensor t);
  const Tensor& find(const std::string& name, const char* what) const;
  nn::StateDict entries_;
};

struct LoadedCheckpoint {
  std::int64_t step = 0;
  Extras extras;
};

// Throws Error when there is nothing to save (no part and no extras: surely a mistake),
// IOError when the file cannot be written (the previous file, if any, is then untouched).
void save_checkpoint(const std::string& path, const CheckpointParts& parts, std::int64_t step,
                     const Extras& extras = {});
// IOError for an unreadable or corrupt file; StateError for one that is not a checkpoint
// or does not fit the parts. Either way nothing is changed.
LoadedCheckpoint load_checkpoint(const std::string& path, const CheckpointParts& parts);
// Just the step and extras (e.g. the vocabulary, to build the model before loading it).
LoadedCheckpoint read_checkpoint_info(const std::string& path);

}  // namespace xg::training
