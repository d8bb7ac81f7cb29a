#pragma once
// Gradient clipping, PyTorch's clip_grad_norm_ / clip_grad_value_ (torch 1.13 semantics),
// applied in place to the .grad() of each parameter. Parameters without a gradient are skipped.
//
// Non-finite norms: PyTorch (error_if_nonfinite=False, its default) multiplies every gradient
// by max_norm / (nan + 1e-6) = NaN, silently poisoning the next optimizer step. We never write
// a NaN: by default a non-finite total norm throws NonFiniteNormError (naming the first
// parameter whose gradient holds a NaN or Inf) and leaves every gradient untouched; with
// error_if_nonfinite = false the non-finite norm is returned and the gradients are still left
// untouched, so the caller can test std::isfinite(norm) and skip the step.
#include <vector>

#include "../backend/error.hpp"
#include "../autograd/tensor.hpp"
#include "../nn/module.hpp"

namespace xg::optim {

// The total gradient norm was NaN or Inf (thrown only when error_if_nonfinite is true).
class NonFiniteNormError : public Error {
 public:
  using Error::Error;
};

// total = ||(||g_1||_p, ..., ||g_n||_p)||_p over the gradients g_i of `params` (p = 2 or
// INFINITY; any other norm_type is an Error), i.e. the norm of all gradients concatenated.
// If max_norm / (total + 1e-6) < 1, every gradient is multiplied by that coefficient in its
// own dtype (exactly PyTorch's clamp(coef, max=1): this also scales, by a hair, when total
// is within 1e-6 below max_norm). Returns total, the norm before clipping.
// The norm is accumulated in double for float32 gradients too (PyTorch accumulates in the
// gradient's dtype: the two agree to float32 rounding), and a float64 sum of squares that
// overflows is recomputed with scaling, so finite gradients always give a finite norm.
// Errors: max_norm < 0 or NaN; norm_type not 2 or +inf; an undefined tensor or the same
// parameter listed twice (it would be counted and scaled twice); an int64 gradient (DtypeError).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                      bool error_if_nonfinite = true);
// The same over module.parameters(); a non-finite norm error names the parameter.
double clip_grad_norm(const nn::Module& module, double max_norm, double norm_type = 2.0,
                      bool error_if_nonfinite = true);

// Clamps every gradient element in place to [-clip, clip] (clip is converted to the
// gradient's dtype first, like PyTorch). NaN elements stay NaN; +-Inf become +-clip.
// Errors: clip < 0 or NaN, an undefined tensor, the same parameter listed twice.
void clip_grad_value(const std::vector<Tensor>& params, double clip);
void clip_grad_value(const nn::Module& module, double clip);

}  // namespace xg::optim
