#pragma once
// Shared test helpers: value comparison and the one gradcheck helper every op test uses.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <string>
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
void check_throws_msg(F&& f, std::initializer_list<std::string> needles) {
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

}  // namespace xgtest
