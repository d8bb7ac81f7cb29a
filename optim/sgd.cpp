#include "sgd.hpp"

#include <fmt/format.h>

#include "detail/update_loop.hpp"

namespace xg::optim {

void SGDOptions::validate(const char* optimizer) const {
  if (!(lr >= 0.0)) throw Error(fmt::format("{}: invalid learning rate {} (must be >= 0)", optimizer, lr));
  if (!(momentum >= 0.0)) throw Error(fmt::format("{}: invalid momentum {} (must be >= 0)", optimizer, momentum));
  if (!(weight_decay >= 0.0)) {
    throw Error(fmt::format("{}: invalid weight_decay {} (must be >= 0)", optimizer, weight_decay));
  }
  if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
    throw Error(fmt::format("{}: nesterov momentum requires a momentum > 0 and zero dampening "
                            "(got momentum {}, dampening {})",
                            optimizer, momentum, dampening));
  }
}

SGD::SGD(std::vector<Tensor> params, SGDOptions options)
    : SGD(std::vector<ParamGroup<SGDOptions>>{ParamGroup<SGDOptions>{std::move(params), std::nullopt}}, options) {}

SGD::SGD(std::vector<ParamGroup<SGDOptions>> groups, SGDOptions defaults)
    : GroupedOptimizer("SGD", std::move(groups), defaults) {}

std::vector<std::string> SGD::buffer_names(const SGDOptions& o) const {
  if (o.momentum != 0.0) return {"momentum_buffer"};
  return {};
}

namespace {

// momentum: buf = mom buf + (1 - dampening) g (the first buf = g), g = nesterov ? g + mom buf : buf;
// p -= lr g
template <class T, bool Wd, bool Momentum, bool First, bool Nesterov>
void sgd_loop(T* __restrict p, const T* __restrict g, T* __restrict buf, std::int64_t n, T wd, T mom, T damp, T lr) {
  for (std::int64_t k = 0; k < n; ++k) {
    T d = g[k];
    if constexpr (Wd) d += wd * p[k];
    if constexpr (Momentum) {
      // The buffer starts as the first (decayed) gradient, undampened, as in PyTorch.
      T b;
      if constexpr (First) {
        b = d;
      } else {
        b = mom * buf[k] + damp * d;
      }
      buf[k] = b;
      if constexpr (Nesterov) {
        d = d + mom * b;
      } else {
        d = b;
      }
    }
    p[k] -= lr * d;
  }
}

template <class T>
void sgd_update(T* p, const T* g, T* buf, bool first, std::int64_t n, const SGDOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), mom = static_cast<T>(o.momentum);
  const T damp = static_cast<T>(1.0 - o.dampening), lr = static_cast<T>(o.lr);
  detail::with_flags(
      [&](auto... flag) {
        sgd_loop<T, decltype(flag)::value...>(p, g, buf, n, wd, mom, damp, lr);
      },
      o.weight_decay != 0.0, buf != nullptr, first, o.nesterov);
}

}  // namespace

void SGD::step() {
  update_each([](Tensor& p, const Tensor& g, ParamState& s, const SGDOptions& o) {
    const bool first = s.step == 1;
    if (p.dtype() == f32) {
      sgd_update<float>(p.data<float>(), g.data<float>(), o.momentum == 0.0 ? nullptr : s.buffers[0].data<float>(),
                        first, p.numel(), o);
    } else {
      sgd_update<double>(p.data<double>(), g.data<double>(),
                         o.momentum == 0.0 ? nullptr : s.buffers[0].data<double>(), first, p.numel(), o);
    }
  });
}

}  // namespace xg::optim
