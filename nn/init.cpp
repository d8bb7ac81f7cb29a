// torch.nn.init in C++: the same fan rules and gains, drawing from xgrad's seeded
// generator. Values are written straight into the tensor's storage (no tape).
#include "init.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

namespace xg::nn::init {

namespace {

// The tensor every initialiser writes: defined and floating.
void check_writable(const char* fn, const Tensor& t) {
  if (!t.defined()) throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", fn));
  if (!is_floating(t.dtype())) {
    throw DtypeError(fmt::format("{}: expected a float32 or float64 tensor, got {} {}", fn, dtype_name(t.dtype()),
                                 t.shape().str()));
  }
}

// t[i] = f(i) for every element in row-major order, in t's dtype.
template <class F>
void fill(Tensor& t, F&& f) {
  const std::int64_t n = t.numel();
  if (t.dtype() == Dtype::f64) {
    double* p = t.data<double>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = f(i);
  } else {
    float* p = t.data<float>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(f(i));
  }
}

Generator& rng(Generator* gen) { return gen ? *gen : default_generator(); }

void fill_uniform(Tensor& t, double a, double b, Generator* gen) {
  Generator& g = rng(gen);
  fill(t, [&](std::int64_t) { return a + (b - a) * g.uniform(); });
}

void fill_normal(Tensor& t, double mean, double std, Generator* gen) {
  Generator& g = rng(gen);
  fill(t, [&](std::int64_t) { return mean + std * g.normal(); });
}

Fans fans_of(const char* fn, const Tensor& t) {
  if (t.ndim() < 2) {
    throw ShapeError(fmt::format("{}: fan in and fan out can not be computed for a tensor with fewer than 2 dims, "
                                 "got {}",
                                 fn, t.shape().str()));
  }
  const Shape& s = t.shape();
  std::int64_t receptive = 1;
  for (int i = 2; i < s.size(); ++i) receptive *= s[i];
  return {s[1] * receptive, s[0] * receptive};
}

// The std of kaiming_* for t.
double kaiming_std(const char* fn, const Tensor& t, double a, FanMode mode, Nonlinearity nonlinearity) {
  const Fans f = fans_of(fn, t);
  const std::int64_t fan = mode == FanMode::fan_in ? f.fan_in : f.fan_out;
  return calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(fan));
}

// Householder QR of the matrix A [m, n] (m >= n, row-major, in
// place): returns Q [m, n] (row-major) with its columns multiplied by sign(diag(R)),
// which makes the factorisation unique and Q Haar-distributed for Gaussian A.
std::vector<double> orthonormal_columns(std::vector<double> A, std::int64_t m, std::int64_t n) {
  std::vector<double> V(static_cast<std::size_t>(m * n), 0.0);  // reflector k in column k, rows k..m-1
  std::vector<double> rdiag(static_cast<std::size_t>(n), 0.0);
  std::vector<double> w(static_cast<std::size_t>(n), 0.0);
  auto at = [](std::vector<double>& M, std::int64_t cols, std::int64_t i, std::int64_t j) -> double& {
    return M[static_cast<std::size_t>(i * cols + j)];
  };
  for (std::int64_t k = 0; k < n; ++k) {
    double norm2 = 0.0;
    for (std::int64_t i = k; i < m; ++i) norm2 += at(A, n, i, k) * at(A, n, i, k);
    const double norm = std::sqrt(norm2);
    if (norm == 0.0) {  // a zero column (probability 0): no reflection, R[k,k] = 0
      rdiag[static_cast<std::size_t>(k)] = 0.0;
      continue;
    }
    const double x0 = at(A, n, k, k);
    // alpha has the opposite sign of x0, so v = x - alpha e1 does not cancel.
    const double alpha = x0 >= 0.0 ? -norm : norm;
    rdiag[static_cast<std::size_t>(k)] = alpha;
    double vnorm2 = 0.0;
    for (std::int64_t i = k; i < m; ++i) {
      const double v = at(A, n, i, k) - (i == k ? alpha : 0.0);
      at(V, n, i, k) = v;
      vnorm2 += v * v;
    }
    const double inv = 1.0 / std::sqrt(vnorm2);
    for (std::int64_t i = k; i < m; ++i) at(V, n, i, k) *= inv;
    // A[k:, k+1:] -= 2 v (vᵀ A[k:, k+1:]), row by row so every inner loop is unit-stride.
    std::fill(w.begin(), w.end(), 0.0);
    for (std::int64_t i = k; i < m; ++i) {
      const double vi = at(V, n, i, k);
      for (std::int64_t j = k + 1; j < n; ++j) w[static_cast<std::size_t>(j)] += vi * at(A, n, i, j);
    }
    for (std::int64_t i = k; i < m; ++i) {
      const double vi2 = 2.0 * at(V, n, i, k);
      for (std::int64_t j = k + 1; j < n; ++j) at(A, n, i, j) -= vi2 * w[static_cast<std::size_t>(j)];
    }
  }
  // Q = H_0 H_1 ... H_{n-1} I[:, :n]: apply the reflectors last to first.
  std::vector<double> Q(static_cast<std::size_t>(m * n), 0.0);
  for (std::int64_t j = 0; j < n; ++j) at(Q, n, j, j) = 1.0;
  for (std::int64_t k = n - 1; k >= 0; --k) {
    if (rdiag[static_cast<std::size_t>(k)] == 0.0) continue;
    std::fill(w.begin(), w.end(), 0.0);
    for (std::int64_t i = k; i < m; ++i) {
      const double vi = at(V, n, i, k);
      for (std::int64_t j = 0; j < n; ++j) w[static_cast<std::size_t>(j)] += vi * at(Q, n, i, j);
    }
    for (std::int64_t i = k; i < m; ++i) {
      const double vi2 = 2.0 * at(V, n, i, k);
      for (std::int64_t j = 0; j < n; ++j) at(Q, n, i, j) -= vi2 * w[static_cast<std::size_t>(j)];
    }
  }
  for (std::int64_t j = 0; j < n; ++j) {
    if (rdiag[static_cast<std::size_t>(j)] < 0.0) {
      for (std::int64_t i = 0; i < m; ++i) at(Q, n, i, j) = -at(Q, n, i, j);
    }
  }
  return Q;
}

}  // namespace

double calculate_gain(Nonlinearity nonlinearity, double param) {
  switch (nonlinearity) {
    case Nonlinearity::leaky_relu:
      if (!std::isfinite(param)) {
        throw Error(fmt::format("calculate_gain: negative slope {} for leaky_relu is not a finite number", param));
      }
      return std::sqrt(2.0 / (1.0 + param * param));
    case Nonlinearity::tanh: return 5.0 / 3.0;
    case Nonlinearity::relu: return std::sqrt(2.0);
    case Nonlinearity::selu: return 3.0 / 4.0;
    default: return 1.0;  // linear, conv*, sigmoid
  }
}

Fans fan_in_and_fan_out(const Tensor& t) {
  if (!t.defined()) throw StateError("fan_in_and_fan_out: the tensor is undefined (default-constructed Tensor)");
  return fans_of("fan_in_and_fan_out", t);
}

Tensor uniform_(Tensor t, double a, double b, Generator* gen) {
  check_writable("uniform_", t);
  if (!(std::isfinite(a) && std::isfinite(b) && a <= b)) {
    throw Error(fmt::format("uniform_: bounds [{}, {}) must be finite with a <= b", a, b));
  }
  fill_uniform(t, a, b, gen);
  return t;
}

Tensor normal_(Tensor t, double mean, double std, Generator* gen) {
  check_writable("normal_", t);
  if (!(std::isfinite(mean) && std::isfinite(std) && std >= 0.0)) {
    throw Error(fmt::format("normal_: mean {} and std {} must be finite with std >= 0", mean, std));
  }
  fill_normal(t, mean, std, gen);
  return t;
}

Tensor constant_(Tensor t, double value) {
  check_writable("constant_", t);
  fill(t, [value](std::int64_t) { return value; });
  return t;
}

Tensor zeros_(Tensor t) {
  check_writable("zeros_", t);
  return constant_(std::move(t), 0.0);
}

Tensor ones_(Tensor t) {
  check_writable("ones_", t);
  return constant_(std::move(t), 1.0);
}

Tensor xavier_uniform_(Tensor t, double gain, Generator* gen) {
  check_writable("xavier_uniform_", t);
  const Fans f = fans_of("xavier_uniform_", t);
  if (t.numel() == 0) return t;
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(f.fan_in + f.fan_out));
  fill_uniform(t, -bound, bound, gen);
  return t;
}

Tensor xavier_normal_(Tensor t, double gain, Generator* gen) {
  check_writable("xavier_normal_", t);
  const Fans f = fans_of("xavier_normal_", t);
  if (t.numel() == 0) return t;
  fill_normal(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out)), gen);
  return t;
}

Tensor kaiming_uniform_(Tensor t, double a, FanMode mode, Nonlinearity nonlinearity, Generator* gen) {
  check_writable("kaiming_uniform_", t);
  const double std = kaiming_std("kaiming_uniform_", t, a, mode, nonlinearity);
  if (t.numel() == 0) return t;
  const double bound = std::sqrt(3.0) * std;
  fill_uniform(t, -bound, bound, gen);
  return t;
}

Tensor kaiming_normal_(Tensor t, double a, FanMode mode, Nonlinearity nonlinearity, Generator* gen) {
  check_writable("kaiming_normal_", t);
  const double std = kaiming_std("kaiming_normal_", t, a, mode, nonlinearity);
  if (t.numel() == 0) return t;
  fill_normal(t, 0.0, std, gen);
  return t;
}

Tensor orthogonal_(Tensor t, double gain, Generator* gen) {
  check_writable("orthogonal_", t);
  if (t.ndim() < 2) {
    throw ShapeError(fmt::format("orthogonal_: only tensors with 2 or more dims are supported, got {}", t.shape().str()));
  }
  if (t.numel() == 0) return t;
  const std::int64_t rows = t.shape()[0], cols = t.numel() / rows;
  // Draw [rows, cols] in row-major order (PyTorch's draw order), then orthogonalise
  // the tall orientation: A itself, or Aᵀ when rows < cols.
  Generator& g = rng(gen);
  const bool wide = rows < cols;
  const std::int64_t m = wide ? cols : rows, n = wide ? rows : cols;
  std::vector<double> A(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      A[static_cast<std::size_t>(wide ? j * n + i : i * n + j)] = g.normal();
    }
  }
  const std::vector<double> Q = orthonormal_columns(std::move(A), m, n);
  fill(t, [&](std::int64_t e) {
    const std::int64_t i = e / cols, j = e % cols;
    return gain * Q[static_cast<std::size_t>(wide ? j * n + i : i * n + j)];
  });
  return t;
}

}  // namespace xg::nn::init
