#include "xgrad/optim/rmsprop.hpp"

#include <fmt/format.h>

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

template <class T>
void rmsprop_update(T* p, const T* g, T* sq, T* buf, T* gavg, std::int64_t n, const RMSpropOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), a = static_cast<T>(o.alpha), a1 = static_cast<T>(1.0 - o.alpha);
  const T eps = static_cast<T>(o.eps), mom = static_cast<T>(o.momentum), lr = static_cast<T>(o.lr);
  for (std::int64_t k = 0; k < n; ++k) {
    T d = g[k];
    if (o.weight_decay != 0.0) d += wd * p[k];
    sq[k] = a * sq[k] + a1 * d * d;
    T avg;
    if (gavg) {
      gavg[k] = a * gavg[k] + a1 * d;
      avg = std::sqrt(sq[k] - gavg[k] * gavg[k]) + eps;
    } else {
      avg = std::sqrt(sq[k]) + eps;
    }
    if (buf) {
      buf[k] = mom * buf[k] + d / avg;
      p[k] -= lr * buf[k];
    } else {
      p[k] -= lr * d / avg;
    }
  }
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
  for (std::size_t gi = 0; gi < num_groups(); ++gi) {
    const RMSpropOptions& o = options_[gi];
    const std::vector<std::string> names = buffer_names(o);
    for (std::size_t i = group_begin(gi); i < group_end(gi); ++i) {
      Tensor p = params_[i];
      const Tensor g = p.grad();
      if (!g.defined()) continue;
      check_grad(i, g);
      ParamState& s = state_for(i, names);
      ++s.step;
      if (p.dtype() == f32) {
        rmsprop_param<float>(p, g, s.buffers, o);
      } else {
        rmsprop_param<double>(p, g, s.buffers, o);
      }
    }
  }
}

}  // namespace xg::optim
