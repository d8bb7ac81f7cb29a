#include "xgrad/train/plot.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include <fmt/core.h>

#include "xgrad/autograd/error.hpp"

namespace xg::train {

namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

void check_range(const char* op, double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi))
    throw Error(fmt::format("{}: range [{}, {}] is not finite", op, lo, hi));
  if (target < 1) throw Error(fmt::format("{}: target tick count must be >= 1, got {}", op, target));
}

// A relative tolerance for "is this multiple of the step at the bound": the bounds often
// are ticks already (0.3 computed as 3 * 0.1), and must not get an extra tick for a 1-ulp miss.
constexpr double kTickEps = 1e-9;

}  // namespace

double nice_step(double lo, double hi, int target) {
  check_range("nice_step", lo, hi, target);
  if (lo > hi) std::swap(lo, hi);
  if (lo == hi) {
    lo -= 1.0;
    hi += 1.0;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double nice = f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0;
  return nice * mag;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  check_range("nice_ticks", lo, hi, target);
  if (lo > hi) std::swap(lo, hi);
  if (lo == hi) {
    lo -= 1.0;
    hi += 1.0;
  }
  const double step = nice_step(lo, hi, target);
  const auto first = static_cast<std::int64_t>(std::floor(lo / step + kTickEps));
  const auto last = static_cast<std::int64_t>(std::ceil(hi / step - kTickEps));
  std::vector<double> ticks;
  ticks.reserve(static_cast<std::size_t>(last - first + 1));
  // i * step, not an accumulated sum: no drift over many ticks.
  for (std::int64_t i = first; i <= last; ++i) ticks.push_back(static_cast<double>(i) * step);
  return ticks;
}

std::string tick_label(double value, double step) {
  if (std::fabs(value) < std::fabs(step) * 1e-9) value = 0.0;  // -1e-17 from rounding is 0
  const double a = std::fabs(value);
  if (a != 0.0 && (a >= 1e7 || std::fabs(step) < 1e-4)) return fmt::format("{:.3g}", value);
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(std::fabs(step)) + kTickEps)));
  std::string s = fmt::format("{:.{}f}", value, decimals);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

void LinePlot::add_series(const std::string& name, std::vector<double> xs, std::vector<double> ys,
                          std::optional<std::string> color) {
  if (xs.size() != ys.size())
    throw ShapeError(fmt::format("LinePlot::add_series: series '{}': {} x values but {} y values", name,
                                 xs.size(), ys.size()));
  std::string c = color ? *color : kPalette[series.size() % std::size(kPalette)];
  series.push_back({name, std::move(xs), std::move(ys), std::move(c)});
}

std::string LinePlot::svg() const {
  const auto plottable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0);
  };
  // Data range over plottable points; y in log10 units with log_y.
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series) {
    for (std::size_t i = 0; i < s.xs.size(); ++i) {
      if (!plottable(s.xs[i], s.ys[i])) continue;
      const double y = log_y ? std::log10(s.ys[i]) : s.ys[i];
      x0 = std::min(x0, s.xs[i]);
      x1 = std::max(x1, s.xs[i]);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  const bool empty = !(x0 <= x1);
  if (empty) {
    x0 = y0 = 0.0;
    x1 = y1 = 1.0;
  }
  std::vector<double> xt = nice_ticks(x0, x1, 6);
  std::vector<double> yt;
  if (log_y && !empty) {
    if (y0 == y1) {
      y0 -= 0.5;
      y1 += 0.5;
    }
    // Decades; every n-th when the span is wide so labels do not collide.
    const double lo = std::floor(y0 + kTickEps), hi = std::ceil(y1 - kTickEps);
    const double every = std::max(1.0, std::ceil((hi - lo) / 8.0));
    for (double e = lo; e < hi + every - kTickEps; e += every) yt.push_back(e);
  } else {
    yt = nice_ticks(y0, y1, 5);
  }
  const double xa = xt.front(), xb = xt.back(), ya = yt.front(), yb = yt.back();
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1.0;
  const double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1.0;

  // Layout: plot area inside margins; the legend sits in the right margin.
  const double ml = 72, mr = 160, mt = 44, mb = 56;
  const double pw = std::max(10.0, width - ml - mr), ph = std::max(10.0, height - mt - mb);
  const auto px = [&](double x) { return ml + (x - xa) / (xb - xa) * pw; };
  const auto py = [&](double y) { return mt + ph - (y - ya) / (yb - ya) * ph; };

  std::string o;
  o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      width, height);
  o += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"white\"/>\n", width, height);
  o += fmt::format("<text x=\"{:.1f}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n", ml + pw / 2,
                   xml_escape(title));

  // Grid, ticks and tick labels.
  o += "<g class=\"axes\" stroke=\"#000\" stroke-width=\"1\">\n";
  for (double t : xt) {
    const double x = px(t);
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\" stroke=\"#e5e5e5\"/>\n", x, mt,
                     mt + ph);
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\"/>\n", x, mt + ph, mt + ph + 5);
  }
  for (double t : yt) {
    const double y = py(t);
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\" stroke=\"#e5e5e5\"/>\n", ml, y,
                     ml + pw);
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\"/>\n", ml - 5, y, ml);
  }
  o += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"none\"/>\n", ml, mt, pw,
                   ph);
  o += "</g>\n<g class=\"tick-labels\">\n";
  for (double t : xt)
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", px(t), mt + ph + 18,
                     xml_escape(tick_label(t, xstep)));
  for (double t : yt) {
    const std::string label = log_y ? tick_label(std::pow(10.0, t), std::pow(10.0, t)) : tick_label(t, ystep);
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>\n",
                     ml - 8, py(t), xml_escape(label));
  }
  o += "</g>\n";
  o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", ml + pw / 2, mt + ph + 42,
                   xml_escape(xlabel));
  o += fmt::format(
      "<text x=\"18\" y=\"{0:.2f}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0:.2f})\">{1}</text>\n",
      mt + ph / 2, xml_escape(ylabel));

  // Series: each run of plottable points is one polyline; a lone point is a dot.
  for (const auto& s : series) {
    o += fmt::format("<g class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\">\n", xml_escape(s.color));
    std::string pts;
    std::size_t run = 0;
    double lx = 0, ly = 0;
    const auto flush = [&] {
      if (run == 1)
        o += fmt::format("<circle cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"2.5\" fill=\"{}\"/>\n", lx, ly, xml_escape(s.color));
      else if (run > 1)
        o += fmt::format("<polyline points=\"{}\"/>\n", pts);
      pts.clear();
      run = 0;
    };
    for (std::size_t i = 0; i < s.xs.size(); ++i) {
      if (!plottable(s.xs[i], s.ys[i])) {
        flush();
        continue;
      }
      lx = px(s.xs[i]);
      ly = py(log_y ? std::log10(s.ys[i]) : s.ys[i]);
      if (run) pts += ' ';
      pts += fmt::format("{:.2f},{:.2f}", lx, ly);
      ++run;
    }
    flush();
    o += "</g>\n";
  }

  // Legend.
  o += "<g class=\"legend\">\n";
  for (std::size_t i = 0; i < series.size(); ++i) {
    const double y = mt + 10 + 20.0 * static_cast<double>(i);
    const double x = ml + pw + 14;
    o += fmt::format("<line x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                     x, y, x + 22, y, xml_escape(series[i].color));
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" dominant-baseline=\"middle\">{}</text>\n", x + 28, y,
                     xml_escape(series[i].name));
  }
  o += "</g>\n</svg>\n";
  return o;
}

void LinePlot::write_svg(const std::string& path) const {
  const std::string doc = svg();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw IOError(fmt::format("LinePlot::write_svg: cannot open '{}': {}", path, std::strerror(errno)));
  const bool ok = std::fwrite(doc.data(), 1, doc.size(), f) == doc.size();
  if (std::fclose(f) != 0 || !ok) throw IOError(fmt::format("LinePlot::write_svg: writing '{}' failed", path));
}

}  // namespace xg::train
