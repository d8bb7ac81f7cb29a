#pragma once
// Seeded random numbers. xoshiro256** with splitmix64 seeding: the same seed gives the
// same numbers on every platform and standard library (std::normal_distribution would
// not), and the whole state is five integers that a checkpoint can store.
#include <array>
#include <cstdint>
#include <string>

namespace xg {

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0x5eed) { manual_seed(seed); }
  void manual_seed(std::uint64_t seed);

  std::uint64_t next_u64();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  double normal();
  // Uniform integer in [low, high); requires low < high.
  std::int64_t randint(std::int64_t low, std::int64_t high);

  // Full state for checkpoints: s0..s3, then the cached normal's bits and a has-cached flag.
  using State = std::array<std::uint64_t, 6>;
  State state() const;
  // StateError for a state no generator can be in (see state_problem); changes nothing then.
  void set_state(const State& st);
  // What makes `st` unusable, or "" when it is fine: s0..s3 all zero (xoshiro would return
  // zeros forever), a has-cached flag other than 0/1, or a cached normal that is NaN or
  // infinite (returned by the next normal()).
  static std::string state_problem(const State& st);

 private:
  std::uint64_t s_[4] = {};
  double cached_normal_ = 0.0;
  bool has_cached_ = false;
};

// The generator used when a call passes none (one per thread, so threads are independent
// and reproducible). manual_seed reseeds this thread's generator.
Generator& default_generator();
void manual_seed(std::uint64_t seed);

}  // namespace xg
