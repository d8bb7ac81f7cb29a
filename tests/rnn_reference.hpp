#pragma once
// The RNN tests' independent reference (the PyTorch equations as loops over
// std::vector<double>), gradcheck helpers and the PyTorch fixture runner, shared by
// test_rnn.cpp (sequence modules) and test_rnn_cell.cpp (cells).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace rnnref {

using namespace xg;
using namespace xg::nn;
using xgtest::check_values;


// ---------------------------------------------------------------------------
// Independent reference: the PyTorch equations as loops over std::vector<double>
// ---------------------------------------------------------------------------

enum class RefMode { tanh, relu, lstm, gru };

inline double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct RefWeights {
  std::vector<double> wih, whh, bih, bhh;  // biases empty when the module has none
  // layer-normalised LSTM
  std::vector<double> ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b;
};

inline std::vector<double> vec(const Tensor& t) { return t.defined() ? t.to_vector<double>() : std::vector<double>(); }

template <class Cell>
RefWeights cell_weights(const Cell& m) {
  RefWeights w;
  w.wih = vec(m.weight_ih), w.whh = vec(m.weight_hh), w.bih = vec(m.bias_ih), w.bhh = vec(m.bias_hh);
  return w;
}

inline RefWeights ref_weights(const RecurrentWeights& w) {
  return {vec(w.weight_ih),    vec(w.weight_hh),   vec(w.bias_ih),      vec(w.bias_hh),
          vec(w.ln_ih_weight), vec(w.ln_ih_bias),  vec(w.ln_hh_weight), vec(w.ln_hh_bias),
          vec(w.ln_c_weight),  vec(w.ln_c_bias)};
}

inline int gates_of(RefMode m) { return m == RefMode::lstm ? 4 : m == RefMode::gru ? 3 : 1; }

// y[g] = W[g, :] · x (+ b[g]) for W [G, n].
inline std::vector<double> matvec(const std::vector<double>& W, const std::vector<double>& b, const double* x,
                           std::int64_t G, std::int64_t n) {
  std::vector<double> y(G, 0.0);
  for (std::int64_t g = 0; g < G; ++g) {
    double s = b.empty() ? 0.0 : b[g];
    for (std::int64_t i = 0; i < n; ++i) s += W[g * n + i] * x[i];
    y[g] = s;
  }
  return y;
}

// Layer norm of v (biased variance, eps 1e-5) with gamma, beta.
inline std::vector<double> ref_ln(const std::vector<double>& v, const std::vector<double>& gm, const std::vector<double>& bt) {
  double mean = 0.0, var = 0.0;
  for (double e : v) mean += e;
  mean /= static_cast<double>(v.size());
  for (double e : v) var += (e - mean) * (e - mean);
  var /= static_cast<double>(v.size());
  std::vector<double> y(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) y[i] = (v[i] - mean) / std::sqrt(var + 1e-5) * gm[i] + bt[i];
  return y;
}

// One step for one batch row: x [n], h, c [H] -> h', c'. mh: recurrent dropout mask or null.
inline void ref_step(RefMode mode, bool layer_norm, const RefWeights& w, const double* x, std::int64_t n, double* h,
              double* c, std::int64_t H, const double* mh) {
  const std::int64_t G = gates_of(mode) * H;
  std::vector<double> hin(h, h + H);
  if (mh) {
    for (std::int64_t j = 0; j < H; ++j) hin[j] *= mh[j];
  }
  if (layer_norm) {
    std::vector<double> a = ref_ln(matvec(w.wih, {}, x, G, n), w.ln_ih_w, w.ln_ih_b);
    std::vector<double> r = ref_ln(matvec(w.whh, {}, hin.data(), G, H), w.ln_hh_w, w.ln_hh_b);
    for (std::int64_t g = 0; g < G; ++g) a[g] += r[g] + (w.bih.empty() ? 0.0 : w.bih[g] + w.bhh[g]);
    std::vector<double> cn(H);
    for (std::int64_t j = 0; j < H; ++j) cn[j] = sig(a[H + j]) * c[j] + sig(a[j]) * std::tanh(a[2 * H + j]);
    const std::vector<double> lc = ref_ln(cn, w.ln_c_w, w.ln_c_b);
    for (std::int64_t j = 0; j < H; ++j) {
      c[j] = cn[j];
      h[j] = sig(a[3 * H + j]) * std::tanh(lc[j]);
    }
    return;
  }
  const std::vector<double> a = matvec(w.wih, w.bih, x, G, n);
  const std::vector<double> r = matvec(w.whh, w.bhh, hin.data(), G, H);
  for (std::int64_t j = 0; j < H; ++j) {
    switch (mode) {
      case RefMode::tanh: h[j] = std::tanh(a[j] + r[j]); break;
      case RefMode::relu: h[j] = std::max(0.0, a[j] + r[j]); break;
      case RefMode::lstm: {
        const double i = sig(a[j] + r[j]), f = sig(a[H + j] + r[H + j]);
        const double g = std::tanh(a[2 * H + j] + r[2 * H + j]), o = sig(a[3 * H + j] + r[3 * H + j]);
        c[j] = f * c[j] + i * g;
        h[j] = o * std::tanh(c[j]);
        break;
      }
      case RefMode::gru: {
        const double rr = sig(a[j] + r[j]), z = sig(a[H + j] + r[H + j]);
        const double nn = std::tanh(a[2 * H + j] + rr * r[2 * H + j]);
        h[j] = (1.0 - z) * nn + z * h[j];
        break;
      }
    }
  }
}

struct RefResult {
  std::vector<double> out;     // [T, B, D*H]
  std::vector<double> hn, cn;  // [L*D, B, H]
};

struct RefSpec {
  RefMode mode;
  std::int64_t T, B, I, H, L, D;
  bool layer_norm = false;
  // variational dropout masks: per layer [B, in], per layer*D+d [B, H]
  std::vector<std::vector<double>> mx, mh;
};

inline RefSpec spec_of(RefMode mode, std::int64_t T, std::int64_t B, std::int64_t I, std::int64_t H, std::int64_t L,
                std::int64_t D, bool layer_norm = false) {
  RefSpec s;
  s.mode = mode;
  s.T = T, s.B = B, s.I = I, s.H = H, s.L = L, s.D = D;
  s.layer_norm = layer_norm;
  return s;
}

// x [T, B, I] time-major; h0 / c0 [L*D, B, H] or empty (zeros).
inline RefResult ref_sequence(const RefSpec& s, const std::vector<RefWeights>& W, std::vector<double> x,
                       const std::vector<double>& h0, const std::vector<double>& c0) {
  const std::int64_t T = s.T, B = s.B, H = s.H, D = s.D;
  RefResult res;
  res.hn.assign(s.L * D * B * H, 0.0);
  res.cn.assign(s.L * D * B * H, 0.0);
  std::int64_t in = s.I;
  for (std::int64_t l = 0; l < s.L; ++l) {
    if (!s.mx.empty()) {
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t i = 0; i < in; ++i) x[(t * B + b) * in + i] *= s.mx[l][b * in + i];
    }
    std::vector<double> out(T * B * D * H);
    for (std::int64_t d = 0; d < D; ++d) {
      const std::int64_t idx = l * D + d;
      for (std::int64_t b = 0; b < B; ++b) {
        std::vector<double> h(H, 0.0), c(H, 0.0);
        if (!h0.empty()) std::copy_n(h0.begin() + (idx * B + b) * H, H, h.begin());
        if (!c0.empty()) std::copy_n(c0.begin() + (idx * B + b) * H, H, c.begin());
        for (std::int64_t k = 0; k < T; ++k) {
          const std::int64_t t = d == 1 ? T - 1 - k : k;
          ref_step(s.mode, s.layer_norm, W[idx], x.data() + (t * B + b) * in, in, h.data(), c.data(), H,
                   s.mh.empty() ? nullptr : s.mh[idx].data() + b * H);
          std::copy_n(h.begin(), H, out.begin() + (t * B + b) * D * H + d * H);
        }
        std::copy_n(h.begin(), H, res.hn.begin() + (idx * B + b) * H);
        std::copy_n(c.begin(), H, res.cn.begin() + (idx * B + b) * H);
      }
    }
    x = out;
    in = D * H;
  }
  res.out = x;
  return res;
}

inline std::vector<RefWeights> all_weights(const RecurrentBase& m) {
  std::vector<RefWeights> w;
  for (std::int64_t l = 0; l < m.num_layers(); ++l) {
    for (std::int64_t d = 0; d < m.num_directions(); ++d) w.push_back(ref_weights(m.weights(l, d == 1)));
  }
  return w;
}

// ---------------------------------------------------------------------------
// Gradcheck helpers
// ---------------------------------------------------------------------------

// All of a module's results flattened into one tensor, so one gradcheck covers them.
inline Tensor flat_all(std::initializer_list<Tensor> ts) {
  std::vector<Tensor> parts;
  for (const Tensor& t : ts) {
    if (t.defined()) parts.push_back(reshape(t, Shape{-1}));
  }
  return concat(parts, 0);
}

// Gradcheck of fn w.r.t. the given inputs and every parameter of m (float64 leaves).
inline void gradcheck_module(const Module& m, std::vector<Tensor> inputs, const std::function<Tensor()>& fn,
                      GradcheckOptions opts = {}) {
  for (const Tensor& p : m.parameters()) inputs.push_back(p);
  const GradcheckReport r = gradcheck(fn, inputs, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

inline std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no exception)";
}

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------
// Agreement with PyTorch (tests/fixtures/gen_nn.py; see tests/fixtures/README.md)
// ---------------------------------------------------------------------------

// One fixture file, run in dtype dt: parameters loaded into the module, inputs as leaves,
// the file's scalar loss = Σ_o sum(out_o * w_o) rebuilt, and every output and gradient
// compared within tol relative to the largest magnitude of the reference tensor.
class Agreement {
 public:
  Agreement(const std::string& name, Dtype dt, double tol) : name_(name), dt_(dt), tol_(tol) {
    for (auto& [k, v] : load_npz(std::string(XGRAD_FIXTURES_DIR) + "/nn/" + name + ".npz")) f_[k] = v;
  }

  Tensor entry(const std::string& key) const {
    INFO(name_ << ": entry " << key);
    REQUIRE(f_.count(key) == 1);
    return f_.at(key).detach().to(dt_).clone();
  }

  // An input leaf whose gradient is compared with grad.in.<name>.
  Tensor input(const std::string& name) {
    Tensor t = entry("in." + name).requires_grad_();
    inputs_.emplace_back(name, t);
    return t;
  }

  // Loads every param.* entry (strict: the names must be exactly the module's).
  void load(Module& m) const {
    StateDict sd;
    for (const auto& [k, v] : f_) {
      if (k.rfind("param.", 0) == 0) sd.emplace_back(k.substr(6), v.to(dt_));
    }
    m.load_state_dict(sd);
  }

  void check(const Module& m, const std::map<std::string, Tensor>& outputs) const {
    Tensor loss;
    for (const auto& [k, v] : f_) {
      if (k.rfind("out.", 0) != 0) continue;
      const std::string o = k.substr(4);
      INFO(name_ << ": output " << o);
      REQUIRE(outputs.count(o) == 1);
      const Tensor& got = outputs.at(o);
      close(got, v);
      Tensor l = sum(mul(got, entry("in.w_" + o)));
      loss = loss.defined() ? add(loss, l) : l;
    }
    loss.backward();
    for (const auto& [n, t] : inputs_) {
      INFO(name_ << ": grad of input " << n);
      close(t.grad(), f_.at("grad.in." + n));
    }
    for (const auto& [n, p] : m.named_parameters()) {
      INFO(name_ << ": grad of parameter " << n);
      REQUIRE(f_.count("grad.param." + n) == 1);
      close(p.grad(), f_.at("grad.param." + n));
    }
  }

 private:
  void close(const Tensor& got, const Tensor& want) const {
    REQUIRE(got.defined());
    CHECK(got.dtype() == dt_);
    REQUIRE(got.shape() == want.shape());
    double scale = 0.0;
    for (double v : want.to_vector<double>()) scale = std::max(scale, std::fabs(v));
    check_values(got, want.to_vector<double>(), tol_ * scale, tol_);
  }

  std::string name_;
  Dtype dt_;
  double tol_;
  std::map<std::string, Tensor> f_;
  std::vector<std::pair<std::string, Tensor>> inputs_;
};

struct Precision {
  Dtype dt;
  double tol;
};
inline const Precision kPrecisions[] = {{f64, 1e-10}, {f32, 1e-5}};

}  // namespace rnnref
