#include "adam.hpp"

#include <fmt/format.h>

#include "detail/update_loop.hpp"

#include <algorithm>
#include <cmath>

namespace xg::optim {

namespace {

template <class O>
void validate_adam(const O& o, const char* optimizer) {
  if (!(o.lr >= 0.0)) throw Error(fmt::format("{}: invalid learning rate {} (must be >= 0)", optimizer, o.lr));
  if (!(o.eps >= 0.0)) throw Error(fmt::format("{}: invalid eps {} (must be >= 0)", optimizer, o.eps));
  if (!(o.betas.first >= 0.0 && o.betas.first < 1.0)) {
    throw Error(fmt::format("{}: invalid beta1 {} (betas must be in [0, 1))", optimizer, o.betas.first));
  }
  if (!(o.betas.second >= 0.0 && o.betas.second < 1.0)) {
    throw Error(fmt::format("{}: invalid beta2 {} (betas must be in [0, 1))", optimizer, o.betas.second));
  }
  if (!(o.weight_decay >= 0.0)) {
    throw Error(fmt::format("{}: invalid weight_decay {} (must be >= 0)", optimizer, o.weight_decay));
  }
}

template <class O>
std::vector<std::string> adam_buffers(const O& o) {
  if (o.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

// decoupled: AdamW's p *= 1 - lr * wd before the update; otherwise Adam's L2 term in g.
// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
template <class T, bool Decoupled, bool L2, bool Amsgrad>
void adam_loop(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, T* __restrict vmax,
               std::int64_t n, T step_size, T bc2s, T b1, T b1c, T b2, T b2c, T eps, T wd, T shrink) {
  for (std::int64_t k = 0; k < n; ++k) {
    T pk = p[k];
    if constexpr (Decoupled) pk *= shrink;
    T d = g[k];
    if constexpr (L2) d += wd * pk;
    const T mk = b1 * m[k] + b1c * d;
    const T vk = b2 * v[k] + b2c * d * d;
    m[k] = mk;
    v[k] = vk;
    T vv = vk;
    if constexpr (Amsgrad) vv = vmax[k] = std::max(vmax[k], vk);
    p[k] = pk - step_size * mk / (std::sqrt(vv) / bc2s + eps);
  }
}

template <class T, class O>
void adam_update(T* p, const T* g, T* m, T* v, T* vmax, std::int64_t n, std::int64_t step, const O& o,
                 bool decoupled) {
  const double b1 = o.betas.first, b2 = o.betas.second;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step)));
  const T step_size = static_cast<T>(o.lr / bc1), bc2s = static_cast<T>(bc2_sqrt);
  const T tb1 = static_cast<T>(b1), tb1c = static_cast<T>(1.0 - b1);
  const T tb2 = static_cast<T>(b2), tb2c = static_cast<T>(1.0 - b2);
  const T eps = static_cast<T>(o.eps), wd = static_cast<T>(o.weight_decay);
  const T shrink = static_cast<T>(1.0 - o.lr * o.weight_decay);
  const bool l2 = !decoupled && o.weight_decay != 0.0;
  detail::with_flags(
      [&](auto... flag) {
        adam_loop<T, decltype(flag)::value...>(p, g, m, v, vmax, n, step_size, bc2s, tb1, tb1c, tb2, tb2c, eps, wd,
                                               shrink);
      },
      decoupled, l2, vmax != nullptr);
}

template <class O>
void adam_param(Tensor& p, const Tensor& g, std::vector<Tensor>& b, std::int64_t step, const O& o, bool decoupled) {
  if (p.dtype() == f32) {
    adam_update<float>(p.data<float>(), g.data<float>(), b[0].data<float>(), b[1].data<float>(),
                       o.amsgrad ? b[2].data<float>() : nullptr, p.numel(), step, o, decoupled);
  } else {
    adam_update<double>(p.data<double>(), g.data<double>(), b[0].data<double>(), b[1].data<double>(),
                        o.amsgrad ? b[2].data<double>() : nullptr, p.numel(), step, o, decoupled);
  }
}

}  // namespace

void AdamOptions::validate(const char* optimizer) const { validate_adam(*this, optimizer); }
void AdamWOptions::validate(const char* optimizer) const { validate_adam(*this, optimizer); }

Adam::Adam(std::vector<Tensor> params, AdamOptions options)
    : Adam(std::vector<ParamGroup<AdamOptions>>{ParamGroup<AdamOptions>{std::move(params), std::nullopt}}, options) {}

Adam::Adam(std::vector<ParamGroup<AdamOptions>> groups, AdamOptions defaults)
    : GroupedOptimizer("Adam", std::move(groups), defaults) {}

std::vector<std::string> Adam::buffer_names(const AdamOptions& o) const { return adam_buffers(o); }

void Adam::step() {
  update_each([](Tensor& p, const Tensor& g, ParamState& s, const AdamOptions& o) {
    adam_param(p, g, s.buffers, s.step, o, false);
  });
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : AdamW(std::vector<ParamGroup<AdamWOptions>>{ParamGroup<AdamWOptions>{std::move(params), std::nullopt}},
            options) {}

AdamW::AdamW(std::vector<ParamGroup<AdamWOptions>> groups, AdamWOptions defaults)
    : GroupedOptimizer("AdamW", std::move(groups), defaults) {}

std::vector<std::string> AdamW::buffer_names(const AdamWOptions& o) const { return adam_buffers(o); }

void AdamW::step() {
  update_each([](Tensor& p, const Tensor& g, ParamState& s, const AdamWOptions& o) {
    adam_param(p, g, s.buffers, s.step, o, true);
  });
}

}  // namespace xg::optim
