#pragma once
// Finite-difference gradient checking, the public way to trust a backward.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace xg {

struct GradcheckOptions {
  double eps = 1e-6;   // central-difference step
  double atol = 1e-5;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-3;
  // Instead of every element, compare directional derivatives along `projections`
  // random directions per input: O(projections) forward passes instead of O(numel).
  bool random_projection = false;
  int projections = 8;
  std::uint64_t seed = 20240601;  // for the output weights and the directions
};

struct GradcheckReport {
  bool passed = true;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  // The worst comparison: which input, which flat element (-1 for a projection), values.
  int worst_input = -1;
  std::int64_t worst_element = -1;
  double analytic = 0.0;
  double numeric = 0.0;
  std::int64_t checked = 0;  // number of comparisons made
  std::string kind = "gradcheck";
  std::string str() const;
  explicit operator bool() const { return passed; }
};

// Checks d fn / d inputs. Inputs are copied to float64 leaves (int64 ones pass through
// unchanged and are not checked) and fn runs with float64 as the default dtype, so a
// model built inside fn is float64. fn's output (any shape) is reduced to a scalar
// with fixed random weights, so errors that cancel in a plain sum still show.
GradcheckReport gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opts = {});

// Checks d fn / d wrt for tensors fn reads itself (a module's parameters after
// model.to(f64)): each must be a float64 leaf; they are perturbed in place and restored,
// and their grad() is restored too.
GradcheckReport gradcheck(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                          const GradcheckOptions& opts = {});

// Second derivatives, as PyTorch's gradgradcheck: the gradient grad(fn(inputs), inputs, gy)
// computed with create_graph, for a fixed random seed gradient gy, is itself checked by
// finite differences in the inputs and in gy. Float64 as gradcheck; the report reads
// "gradgradcheck PASSED/FAILED".
GradcheckReport gradgradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                              const std::vector<Tensor>& inputs, const GradcheckOptions& opts = {});
// The same for tensors fn reads itself (a module's parameters after model.to(f64)).
GradcheckReport gradgradcheck(const std::function<Tensor()>& fn, const std::vector<Tensor>& wrt,
                              const GradcheckOptions& opts = {});

}  // namespace xg
