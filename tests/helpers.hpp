#pragma once
// Shared test helpers: value comparison and the one gradcheck helper every op test uses.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include <xgrad/xgrad.hpp>

namespace xgtest {

// Every element of `t` equals `want` within atol + rtol * |want|.
inline void check_values(const xg::Tensor& t, const std::vector<double>& want, double atol = 1e-6,
                         double rtol = 1e-6) {
  const std::vector<double> got = t.to_vector<double>();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
    if (std::isinf(want[i])) {
      CHECK(got[i] == want[i]);
    } else {
      CHECK(std::fabs(got[i] - want[i]) <= atol + rtol * std::fabs(want[i]));
    }
  }
}

inline void check_close(const xg::Tensor& a, const xg::Tensor& b, double atol = 1e-6, double rtol = 1e-6) {
  REQUIRE(a.shape() == b.shape());
  check_values(a, b.to_vector<double>(), atol, rtol);
}

// Float64 gradcheck of fn over inputs; fails the test with the report.
inline void gradcheck_ok(const std::function<xg::Tensor(const std::vector<xg::Tensor>&)>& fn,
                         const std::vector<xg::Tensor>& inputs, xg::GradcheckOptions opts = {}) {
  const xg::GradcheckReport r = xg::gradcheck(fn, inputs, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// Random float64 input of the given shape, values in [lo, hi) (keep it off kinks).
inline xg::Tensor rnd(const xg::Shape& s, double lo = -1.0, double hi = 1.0, std::uint64_t seed = 1) {
  xg::Generator g(seed + static_cast<std::uint64_t>(s.numel()) * 7919);
  return xg::uniform(s, lo, hi, xg::f64, &g);
}

// f() must throw E whose message contains every needle (op name, shapes...).
template <class E, class F>
void check_throws_msg(F&& f, const std::vector<std::string>& needles) {
  bool thrown = false;
  try {
    f();
  } catch (const E& e) {
    thrown = true;
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      INFO("message: " << msg << " | expected to contain: " << n);
      CHECK(msg.find(n) != std::string::npos);
    }
  } catch (const std::exception& e) {
    thrown = true;
    FAIL("wrong exception type: " << e.what());
  }
  CHECK_MESSAGE(thrown, "expected an exception");
}

// The one-needle form of check_throws_msg.
template <class E, class F>
void throws_naming(F&& f, const std::string& needle) {
  check_throws_msg<E>(std::forward<F>(f), {needle});
}

// The message of the E that f() throws (a failed check, and "", if it throws nothing
// or something else).
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("threw a different exception: " << e.what());
    return "";
  }
  FAIL_CHECK("did not throw");
  return "";
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Whether the tests that hand files to numpy can run: they are skipped (and counted as
// skipped) where /usr/bin/python3 has no numpy. Evaluated once per test case at start-up.
inline bool python_numpy_available() {
  return ::access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

// A fresh directory per use, removed (with everything in it, even where a test took
// its permissions away) at the end of the scope.
class TempDir {
 public:
  TempDir() : TempDir("") {}
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("xgrad_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + tag);
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (path / name).string(); }
  // Writes `bytes` to `rel` below the directory (making its parents); returns the path.
  std::string write(const std::string& rel, const std::string& bytes) const {
    const std::filesystem::path p = path / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
  // Names of everything in the directory, sorted: catches leftover temporary files.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  std::filesystem::path path;
};

inline std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace xgtest
