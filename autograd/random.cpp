#include "random.hpp"

#include <cmath>
#include <cstring>
#include <numbers>

#include <fmt/format.h>

#include "../backend/error.hpp"

namespace xg {

namespace {
std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

void Generator::manual_seed(std::uint64_t seed) {
  std::uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
  has_cached_ = false;
  cached_normal_ = 0.0;
}

std::uint64_t Generator::next_u64() {
  const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Generator::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Generator::normal() {
  if (has_cached_) {
    has_cached_ = false;
    return cached_normal_;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * std::numbers::pi * u2;
  cached_normal_ = r * std::sin(theta);
  has_cached_ = true;
  return r * std::cos(theta);
}

std::int64_t Generator::randint(std::int64_t low, std::int64_t high) {
  if (low >= high) throw Error(fmt::format("randint: empty range [{}, {})", low, high));
  // In unsigned arithmetic: high - low overflows int64 for ranges wider than 2^63.
  const std::uint64_t span = static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low);
  // Rejection sampling: no modulo bias.
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  std::uint64_t r = next_u64();
  while (r >= limit) r = next_u64();
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(low) + r % span);
}

Generator::State Generator::state() const {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &cached_normal_, sizeof bits);
  return {s_[0], s_[1], s_[2], s_[3], bits, has_cached_ ? 1u : 0u};
}

std::string Generator::state_problem(const State& st) {
  if ((st[0] | st[1] | st[2] | st[3]) == 0) return "entries 0-3 (s0..s3) are all zero, a state xoshiro never leaves";
  if (st[5] > 1) return fmt::format("entry 5 (has-cached flag) is {}, not 0 or 1", st[5]);
  double cached = 0.0;
  std::memcpy(&cached, &st[4], sizeof cached);
  if (st[5] == 1 && !std::isfinite(cached)) {
    return fmt::format("entry 4 (the cached normal) is {}, and the next normal() would return it", cached);
  }
  return "";
}

void Generator::set_state(const State& st) {
  if (const std::string problem = state_problem(st); !problem.empty()) {
    throw StateError(fmt::format("Generator::set_state: {}; pass a state from state() or reseed with manual_seed",
                                 problem));
  }
  for (int i = 0; i < 4; ++i) s_[i] = st[i];
  std::memcpy(&cached_normal_, &st[4], sizeof cached_normal_);
  has_cached_ = st[5] != 0;
}

Generator& default_generator() {
  thread_local Generator g(0x5eed);
  return g;
}

void manual_seed(std::uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace xg
