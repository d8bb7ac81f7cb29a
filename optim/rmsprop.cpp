#include "rmsprop.hpp"

#include <fmt/format.h>

#include "detail/update_loop.hpp"

#include <cmath>

namespace xg::optim {

void RMSpropOptions::validate(const char* optimizer) const {
  const std::pair<const char*, double> checks[] = {
      {"learning rate", lr}, {"alpha", alpha}, {"eps", eps}, {"weight_decay", weight_decay}, {"momentum", momentum}};
  for (const auto& [name, v] : checks) {
    if (!(v >= 0.0)) throw Error(fmt::format("{}: invalid {} {} (must be >= 0)", optimizer, name, v));
  }
}

RMSprop::RMSprop(std::vector<Tensor> params, RMSpropOptions options)
    : RMSprop(std::vector<ParamGroup<RMSpropOptions>>{ParamGroup<RMSpropOptions>{std::move(params), std::nullopt}},
              options) {}

RMSprop::RMSprop(std::vector<ParamGroup<RMSpropOptions>> groups, RMSpropOptions defaults)
    : GroupedOptimizer("RMSprop", std::move(groups), defaults) {}

// Order matters: step() finds the buffers by these positions.
std::vector<std::string> RMSprop::buffer_names(const RMSpropOptions& o) const {
  std::vector<std::string> names = {"square_avg"};
  if (o.momentum > 0.0) names.push_back("momentum_buffer");
  if (o.centered) names.push_back("grad_avg");
  return names;
}

namespace {

// sq = a sq + (1 - a) g^2;  centered: avg = sqrt(sq - gavg^2) + eps, else sqrt(sq) + eps;
// momentum: buf = mom buf + g / avg, p -= lr buf; else p -= lr g / avg.
template <class T, bool Wd, bool Centered, bool Momentum>
void rmsprop_loop(T* __restrict p, const T* __restrict g, T* __restrict sq, T* __restrict buf, T* __restrict gavg,
                  std::int64_t n, T wd, T a, T a1, T eps, T mom, T lr) {
  for (std::int64_t k = 0; k < n; ++k) {
    T d = g[k];
    if constexpr (Wd) d += wd * p[k];
    const T s = a * sq[k] + a1 * d * d;
    sq[k] = s;
    T avg;
    if constexpr (Centered) {
      const T ga = a * gavg[k] + a1 * d;
      gavg[k] = ga;
      avg = std::sqrt(s - ga * ga) + eps;
    } else {
      avg = std::sqrt(s) + eps;
    }
    if constexpr (Momentum) {
      const T b = mom * buf[k] + d / avg;
      buf[k] = b;
      p[k] -= lr * b;
    } else {
      p[k] -= lr * d / avg;
    }
  }
}

template <class T>
void rmsprop_update(T* p, const T* g, T* sq, T* buf, T* gavg, std::int64_t n, const RMSpropOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), a = static_cast<T>(o.alpha), a1 = static_cast<T>(1.0 - o.alpha);
  const T eps = static_cast<T>(o.eps), mom = static_cast<T>(o.momentum), lr = static_cast<T>(o.lr);
  detail::with_flags(
      [&](auto... flag) {
        rmsprop_loop<T, decltype(flag)::value...>(p, g, sq, buf, gavg, n, wd, a, a1, eps, mom, lr);
      },
      o.weight_decay != 0.0, gavg != nullptr, buf != nullptr);
}

template <class T>
void rmsprop_param(Tensor& p, const Tensor& g, std::vector<Tensor>& b, const RMSpropOptions& o) {
  std::size_t k = 1;
  T* buf = o.momentum > 0.0 ? b[k++].data<T>() : nullptr;
  T* gavg = o.centered ? b[k++].data<T>() : nullptr;
  rmsprop_update<T>(p.data<T>(), g.data<T>(), b[0].data<T>(), buf, gavg, p.numel(), o);
}

}  // namespace

void RMSprop::step() {
  update_each([](Tensor& p, const Tensor& g, ParamState& s, const RMSpropOptions& o) {
    if (p.dtype() == f32) {
      rmsprop_param<float>(p, g, s.buffers, o);
    } else {
      rmsprop_param<double>(p, g, s.buffers, o);
    }
  });
}

}  // namespace xg::optim
