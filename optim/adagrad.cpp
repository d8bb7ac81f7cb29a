#include "adagrad.hpp"

#include <fmt/format.h>

#include "detail/update_loop.hpp"

#include <cmath>

namespace xg::optim {

void AdagradOptions::validate(const char* optimizer) const {
  const std::pair<const char*, double> checks[] = {{"learning rate", lr},
                                                   {"lr_decay", lr_decay},
                                                   {"weight_decay", weight_decay},
                                                   {"initial_accumulator_value", initial_accumulator_value},
                                                   {"eps", eps}};
  for (const auto& [name, v] : checks) {
    if (!(v >= 0.0)) throw Error(fmt::format("{}: invalid {} {} (must be >= 0)", optimizer, name, v));
  }
}

Adagrad::Adagrad(std::vector<Tensor> params, AdagradOptions options)
    : Adagrad(std::vector<ParamGroup<AdagradOptions>>{ParamGroup<AdagradOptions>{std::move(params), std::nullopt}},
              options) {}

Adagrad::Adagrad(std::vector<ParamGroup<AdagradOptions>> groups, AdagradOptions defaults)
    : GroupedOptimizer("Adagrad", std::move(groups), defaults) {}

std::vector<std::string> Adagrad::buffer_names(const AdagradOptions&) const { return {"sum"}; }

namespace {

// sum += g^2;  p -= clr * g / (sqrt(sum) + eps)
template <class T, bool Wd>
void adagrad_loop(T* __restrict p, const T* __restrict g, T* __restrict sum, std::int64_t n, T c, T wd, T eps) {
  for (std::int64_t k = 0; k < n; ++k) {
    T d = g[k];
    if constexpr (Wd) d += wd * p[k];
    const T s = sum[k] + d * d;
    sum[k] = s;
    p[k] -= c * d / (std::sqrt(s) + eps);
  }
}

template <class T>
void adagrad_update(T* p, const T* g, T* sum, std::int64_t n, double clr, const AdagradOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), eps = static_cast<T>(o.eps), c = static_cast<T>(clr);
  detail::with_flags([&](auto... flag) { adagrad_loop<T, decltype(flag)::value...>(p, g, sum, n, c, wd, eps); },
                     o.weight_decay != 0.0);
}

}  // namespace

void Adagrad::step() {
  update_each(
      [](Tensor& p, const Tensor& g, ParamState& s, const AdagradOptions& o) {
        const double clr = o.lr / (1.0 + static_cast<double>(s.step - 1) * o.lr_decay);
        if (p.dtype() == f32) {
          adagrad_update<float>(p.data<float>(), g.data<float>(), s.buffers[0].data<float>(), p.numel(), clr, o);
        } else {
          adagrad_update<double>(p.data<double>(), g.data<double>(), s.buffers[0].data<double>(), p.numel(), clr, o);
        }
      },
      [](const AdagradOptions& o) { return std::vector<double>{o.initial_accumulator_value}; });
}

}  // namespace xg::optim
