// Printing tensors the way PyTorch does, so a tensor reads the same in both:
//   tensor([[ 1.0000, -2.0000],
//           [ 3.0000,  4.0000]], dtype=float32, shape=[2,2], requires_grad=True)
// Only the shown elements are ever read (a [1000,1000] tensor costs 36 reads at edge 3).
#include "format.hpp"

#include <algorithm>
#include <ostream>
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace xg {

namespace {

// "tensor(" is 7 columns: nested rows line up under the first '['.
constexpr int kPrefixWidth = 7;

class Printer {
 public:
  Printer(const Tensor& t, int edge) : t_(t), edge_(edge), shape_(t.shape()), nd_(t.ndim()) {
    std::int64_t s = 1;
    for (int d = nd_ - 1; d >= 0; --d) {
      strides_[d] = s;
      s *= shape_[d];
    }
  }

  std::string values() {
    collect_cells();
    std::string out;
    std::size_t next = 0;
    layout(0, out, next);
    return out;
  }

 private:
  bool abbreviated(int d) const { return edge_ > 0 && shape_[d] > 2 * static_cast<std::int64_t>(edge_); }

  // Calls f(flat offset) for every shown element in row-major order.
  template <class F>
  void visit(int d, std::int64_t off, F& f) const {
    if (d == nd_) {
      f(off);
      return;
    }
    const std::int64_t n = shape_[d];
    if (abbreviated(d)) {
      for (std::int64_t i = 0; i < edge_; ++i) visit(d + 1, off + i * strides_[d], f);
      for (std::int64_t i = n - edge_; i < n; ++i) visit(d + 1, off + i * strides_[d], f);
    } else {
      for (std::int64_t i = 0; i < n; ++i) visit(d + 1, off + i * strides_[d], f);
    }
  }

  void collect_cells() {
    if (t_.dtype() == Dtype::i64) {
      const std::int64_t* p = t_.data<std::int64_t>();
      auto f = [&](std::int64_t off) { cells_.push_back(fmt::format("{}", p[off])); };
      visit(0, 0, f);
    } else if (t_.dtype() == Dtype::b8) {
      // PyTorch's spelling: tensor([ True, False]).
      const bool* p = t_.data<bool>();
      auto f = [&](std::int64_t off) { cells_.emplace_back(p[off] ? "True" : "False"); };
      visit(0, 0, f);
    } else {
      std::vector<double> vals;
      if (t_.dtype() == Dtype::f32) {
        const float* p = t_.data<float>();
        auto f = [&](std::int64_t off) { vals.push_back(p[off]); };
        visit(0, 0, f);
      } else {
        const double* p = t_.data<double>();
        auto f = [&](std::int64_t off) { vals.push_back(p[off]); };
        visit(0, 0, f);
      }
      // PyTorch's rule: scientific notation when fixed 4 decimals would hide the small
      // values or the range is too wide (> 1e8, < 1e-4, or a ratio past 1000).
      double max_abs = 0.0, min_abs = HUGE_VAL;
      for (double v : vals) {
        if (!std::isfinite(v) || v == 0.0) continue;
        max_abs = std::max(max_abs, std::fabs(v));
        min_abs = std::min(min_abs, std::fabs(v));
      }
      const bool sci = max_abs > 0.0 && (max_abs >= 1e8 || min_abs < 1e-4 || max_abs / min_abs > 1000.0);
      cells_.reserve(vals.size());
      for (double v : vals) {
        if (std::isnan(v)) {
          cells_.emplace_back("nan");
        } else if (std::isinf(v)) {
          cells_.emplace_back(v > 0 ? "inf" : "-inf");
        } else {
          cells_.push_back(sci ? fmt::format("{:.4e}", v) : fmt::format("{:.4f}", v));
        }
      }
    }
    for (const std::string& c : cells_) width_ = std::max(width_, c.size());
  }

  void layout(int d, std::string& out, std::size_t& next) const {
    if (d == nd_) {
      out.append(width_ - cells_[next].size(), ' ');
      out += cells_[next++];
      return;
    }
    // Between rows: ',' then one newline per remaining inner dim, then the indent.
    std::string sep = ",";
    if (d == nd_ - 1) {
      sep += ' ';
    } else {
      sep.append(static_cast<std::size_t>(nd_ - 1 - d), '\n');
      sep.append(static_cast<std::size_t>(kPrefixWidth + d + 1), ' ');
    }
    out += '[';
    const std::int64_t n = shape_[d];
    const bool abbr = abbreviated(d);
    const std::int64_t shown = abbr ? 2 * static_cast<std::int64_t>(edge_) : n;
    for (std::int64_t i = 0; i < shown; ++i) {
      if (i > 0) out += sep;
      if (abbr && i == edge_) {
        out += "...";
        out += sep;
      }
      layout(d + 1, out, next);
    }
    out += ']';
  }

  const Tensor& t_;
  int edge_;
  const Shape& shape_;
  int nd_;
  std::int64_t strides_[Shape::kMaxDims] = {};
  std::vector<std::string> cells_;
  std::size_t width_ = 0;
};

}  // namespace

std::string to_string(const Tensor& t, int edge) {
  if (!t.defined()) return "tensor(undefined)";
  std::string out = "tensor(";
  if (t.numel() == 0) {
    out += "[]";
  } else {
    out += Printer(t, edge).values();
  }
  out += fmt::format(", dtype={}, shape={}", dtype_name(t.dtype()), t.shape().str());
  if (!t.is_leaf()) {
    out += fmt::format(", grad_fn=<{}>", t.op_name());
  } else if (t.requires_grad()) {
    out += ", requires_grad=True";
  }
  out += ')';
  return out;
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << to_string(t); }
std::ostream& operator<<(std::ostream& os, Dtype d) { return os << dtype_name(d); }
std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

}  // namespace xg
