#pragma once
// Softmax references for the tests of softmax, the losses and attention: double loops
// over std::vector<double> with std::exp, independent of the kernels they check.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <xgrad/xgrad.hpp>

namespace xgtest {

// x viewed as [outer, d, inner] around dim.
struct Split {
  std::int64_t outer = 1, d = 1, inner = 1;
};

inline Split split_at(const xg::Shape& s, int dim) {
  Split r;
  if (s.size() == 0) return r;
  if (dim < 0) dim += s.size();
  for (int i = 0; i < dim; ++i) r.outer *= s[i];
  r.d = s[dim];
  for (int i = dim + 1; i < s.size(); ++i) r.inner *= s[i];
  return r;
}

// exp(x) / sum(exp(x)), without going through the log.
inline std::vector<double> ref_softmax(const std::vector<double>& x, const xg::Shape& s, int dim) {
  const Split p = split_at(s, dim);
  std::vector<double> out(x.size());
  for (std::int64_t o = 0; o < p.outer; ++o)
    for (std::int64_t i = 0; i < p.inner; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < p.d; ++j) m = std::max(m, x[(o * p.d + j) * p.inner + i]);
      double acc = 0.0;
      for (std::int64_t j = 0; j < p.d; ++j) acc += std::exp(x[(o * p.d + j) * p.inner + i] - m);
      for (std::int64_t j = 0; j < p.d; ++j) {
        const std::int64_t k = (o * p.d + j) * p.inner + i;
        out[k] = std::exp(x[k] - m) / acc;
      }
    }
  return out;
}

// Softmax of e over the kept positions, 0 elsewhere (a masked attention row).
inline std::vector<double> ref_softmax(const std::vector<double>& e, const std::vector<bool>& keep) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t j = 0; j < e.size(); ++j) {
    if (keep[j]) m = std::max(m, e[j]);
  }
  double s = 0.0;
  for (std::size_t j = 0; j < e.size(); ++j) {
    if (keep[j]) s += std::exp(e[j] - m);
  }
  std::vector<double> w(e.size(), 0.0);
  for (std::size_t j = 0; j < e.size(); ++j) {
    if (keep[j]) w[j] = std::exp(e[j] - m) / s;
  }
  return w;
}

// Rows of weights sum to 1 and masked entries (keep[b, l] == 0) are exactly 0.
inline void check_rows(const xg::Tensor& w, const std::vector<double>& keep, std::int64_t B, std::int64_t rows_per_b, std::int64_t L) {
  const std::vector<double> wv = w.to_vector<double>();
  for (std::int64_t r = 0; r < B * rows_per_b; ++r) {
    double s = 0.0;
    for (std::int64_t l = 0; l < L; ++l) {
      const double x = wv[r * L + l];
      s += x;
      if (!keep.empty() && keep[(r / rows_per_b) * L + l] == 0.0) CHECK(x == 0.0);
      if (keep.empty() || keep[(r / rows_per_b) * L + l] != 0.0) CHECK(x > 0.0);
    }
    CHECK(s == doctest::Approx(1.0).epsilon(1e-12));
  }
}

}  // namespace xgtest
