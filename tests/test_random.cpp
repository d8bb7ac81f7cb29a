#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace xg;

namespace {
std::vector<std::uint64_t> draws(Generator& g, int n) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < n; ++i) v.push_back(g.next_u64());
  return v;
}
}  // namespace

TEST_CASE("random: xoshiro256** and splitmix64 match the published reference outputs") {
  // Vigna's reference xoshiro256** from state {1, 2, 3, 4}.
  Generator g;
  g.set_state({1, 2, 3, 4, 0, 0});
  CHECK(g.next_u64() == 11520u);
  CHECK(g.next_u64() == 0u);
  CHECK(g.next_u64() == 1509978240u);
  CHECK(g.next_u64() == 1215971899390074240u);
  // Seeding fills the state with splitmix64(seed): the reference outputs for seed 0.
  const Generator::State s = Generator(0).state();
  CHECK(s[0] == 0xe220a8397b1dcdafULL);
  CHECK(s[1] == 0x6e789e6aa1b965f4ULL);
  CHECK(s[2] == 0x06c45d188009454fULL);
  CHECK(s[3] == 0xf88bb8a8724c81ecULL);
  CHECK(s[5] == 0u);  // no cached normal
}

TEST_CASE("random: the same seed gives the same sequence, different seeds differ") {
  Generator a(42), b(42), c(43);
  const auto va = draws(a, 1000);
  CHECK(va == draws(b, 1000));
  const auto vc = draws(c, 1000);
  int equal = 0;
  for (std::size_t i = 0; i < va.size(); ++i) equal += va[i] == vc[i];
  CHECK(equal == 0);
  // manual_seed resets, including a cached normal.
  a.manual_seed(42);
  (void)a.normal();  // caches the second of the pair
  a.manual_seed(42);
  Generator fresh(42);
  CHECK(a.normal() == fresh.normal());
  CHECK(draws(a, 10) == draws(fresh, 10));
}

TEST_CASE("random: state()/set_state() resumes the exact sequence, cached normal included") {
  Generator g(7);
  (void)g.normal();  // odd number of normals: one is cached
  const Generator::State st = g.state();
  CHECK(st[5] == 1u);
  std::vector<double> first;
  for (int i = 0; i < 5; ++i) first.push_back(g.normal());
  for (int i = 0; i < 5; ++i) first.push_back(g.uniform());
  first.push_back(static_cast<double>(g.randint(-5, 5)));

  auto replay = [](Generator& r) {
    std::vector<double> v;
    for (int i = 0; i < 5; ++i) v.push_back(r.normal());
    for (int i = 0; i < 5; ++i) v.push_back(r.uniform());
    v.push_back(static_cast<double>(r.randint(-5, 5)));
    return v;
  };
  g.set_state(st);
  CHECK(replay(g) == first);
  Generator other(999);
  other.set_state(st);
  CHECK(replay(other) == first);
  // The all-zero xoshiro state never leaves zero: refused.
  CHECK_THROWS_AS(g.set_state({0, 0, 0, 0, 0, 0}), Error);
}

TEST_CASE("random: uniform is in [0, 1) with the right mean and variance") {
  Generator g(1);
  const int n = 100000;
  double sum = 0, sq = 0, lo = 1, hi = 0;
  int outside = 0;
  for (int i = 0; i < n; ++i) {
    const double u = g.uniform();
    outside += !(u >= 0.0 && u < 1.0);
    sum += u;
    sq += u * u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  CHECK(outside == 0);
  const double mean = sum / n;
  const double var = sq / n - mean * mean;
  // Standard error of the mean is sqrt(1/12/n) ~ 0.0009: 6 sigma bounds.
  CHECK(std::fabs(mean - 0.5) < 0.006);
  CHECK(std::fabs(var - 1.0 / 12.0) < 0.003);
  CHECK(lo < 1e-3);
  CHECK(hi > 1 - 1e-3);
}

TEST_CASE("random: normal has mean 0 and std 1 over 100k samples") {
  Generator g(2);
  const int n = 100000;
  double sum = 0, sq = 0, q = 0;
  int within1 = 0, not_finite = 0;
  for (int i = 0; i < n; ++i) {
    const double z = g.normal();
    not_finite += !std::isfinite(z);
    sum += z;
    sq += z * z;
    q += z * z * z * z;
    within1 += std::fabs(z) < 1.0;
  }
  CHECK(not_finite == 0);
  const double mean = sum / n;
  const double sd = std::sqrt(sq / n - mean * mean);
  CHECK(std::fabs(mean) < 0.02);                      // se 0.0032
  CHECK(std::fabs(sd - 1.0) < 0.015);                 // se ~0.0022
  CHECK(std::fabs(q / n - 3.0) < 0.1);                // kurtosis of a normal is 3
  CHECK(std::fabs(within1 / double(n) - 0.6827) < 0.01);  // 68.27% within one sigma
}

TEST_CASE("random: randint stays in [low, high) and is roughly uniform") {
  Generator g(3);
  const std::int64_t low = -3, high = 4;  // 7 values
  const int n = 70000;
  std::vector<int> counts(7, 0);
  for (int i = 0; i < n; ++i) {
    const std::int64_t v = g.randint(low, high);
    if (v < low || v >= high) FAIL("randint out of range: " << v);
    ++counts[static_cast<std::size_t>(v - low)];
  }
  // Chi-square with 6 degrees of freedom: P(chi2 > 30) ~ 4e-5.
  const double expected = n / 7.0;
  double chi2 = 0;
  for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  INFO("chi2 = " << chi2);
  CHECK(chi2 < 30.0);
  // Single-value range, the full int64 range, and an empty range.
  CHECK(g.randint(5, 6) == 5);
  const std::int64_t big = g.randint(std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max());
  CHECK(big < std::numeric_limits<std::int64_t>::max());
  CHECK_THROWS_AS(g.randint(5, 5), Error);
  CHECK_THROWS_WITH_AS(g.randint(5, 1), doctest::Contains("randint"), Error);
}

TEST_CASE("random: manual_seed makes the rand/randn/randint factories reproducible") {
  manual_seed(2024);
  Tensor a1 = rand({50});
  Tensor b1 = randn({4, 5}, f64);
  Tensor c1 = randint(0, 10, {30});
  manual_seed(2024);
  Tensor a2 = rand({50});
  Tensor b2 = randn({4, 5}, f64);
  Tensor c2 = randint(0, 10, {30});
  CHECK(a1.to_vector<double>() == a2.to_vector<double>());
  CHECK(b1.to_vector<double>() == b2.to_vector<double>());
  CHECK(c1.to_vector<std::int64_t>() == c2.to_vector<std::int64_t>());
  // The factories draw from the same stream as the generator itself.
  manual_seed(2024);
  Generator ref(2024);
  const std::vector<float> a = rand({3}).to_vector<float>();
  for (float v : a) CHECK(v == static_cast<float>(ref.uniform()));
  // A generator passed explicitly leaves the default one alone.
  manual_seed(5);
  Generator mine(11);
  (void)randn({100}, f32, &mine);
  Generator ref5(5);
  CHECK(default_generator().next_u64() == ref5.next_u64());
}

TEST_CASE("random: each thread has its own default generator") {
  manual_seed(77);
  const std::uint64_t main_first = default_generator().next_u64();
  std::vector<std::uint64_t> t1, t2;
  const Generator* addr_main = &default_generator();
  const Generator* addr_thread = nullptr;
  std::thread a([&] {
    manual_seed(123);
    addr_thread = &default_generator();
    t1 = draws(default_generator(), 100);
  });
  std::thread b([&] {
    manual_seed(123);
    t2 = draws(default_generator(), 100);
    // Heavy use in a thread does not advance anyone else's stream.
    (void)draws(default_generator(), 10000);
  });
  a.join();
  b.join();
  CHECK(t1 == t2);
  CHECK(addr_thread != addr_main);
  // This thread's stream continued where it was, untouched by the threads' reseeding.
  Generator ref(77);
  (void)ref.next_u64();
  CHECK(main_first != 0u);
  CHECK(default_generator().next_u64() == ref.next_u64());
  // A new thread starts from the same fixed default seed, so it is reproducible too.
  std::uint64_t fresh1 = 0, fresh2 = 0;
  std::thread([&] { fresh1 = default_generator().next_u64(); }).join();
  std::thread([&] { fresh2 = default_generator().next_u64(); }).join();
  CHECK(fresh1 == fresh2);
}

TEST_CASE("random: set_state refuses states no generator can be in, naming the entry, and changes nothing") {
  Generator g(5);
  (void)g.normal();  // leaves a cached normal: state()[5] == 1
  const Generator::State before = g.state();
  REQUIRE(before[5] == 1u);
  auto refused = [&](const Generator::State& st, const std::vector<std::string>& needles) {
    std::vector<std::string> want = {"Generator::set_state"};
    want.insert(want.end(), needles.begin(), needles.end());
    xgtest::check_throws_msg<StateError>([&] { g.set_state(st); }, want);
    CHECK(g.state() == before);
    CHECK(Generator::state_problem(st) != "");
  };
  const auto bits = [](double v) {
    std::uint64_t b = 0;
    std::memcpy(&b, &v, sizeof b);
    return b;
  };
  SUBCASE("all-zero xoshiro words") { refused({0, 0, 0, 0, bits(0.5), 1}, {"entries 0-3", "all zero"}); }
  SUBCASE("a NaN or infinite cached normal") {
    refused({1, 2, 3, 4, bits(std::numeric_limits<double>::quiet_NaN()), 1}, {"entry 4", "nan"});
    refused({1, 2, 3, 4, bits(-std::numeric_limits<double>::infinity()), 1}, {"entry 4", "inf"});
  }
  SUBCASE("a has-cached flag that is not 0 or 1") { refused({1, 2, 3, 4, bits(0.5), 7}, {"entry 5", "7"}); }
  SUBCASE("a NaN in the cached slot is harmless while the flag says there is none") {
    g.set_state({1, 2, 3, 4, bits(std::numeric_limits<double>::quiet_NaN()), 0});
    CHECK(std::isfinite(g.normal()));
  }
}
