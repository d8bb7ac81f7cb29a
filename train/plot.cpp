#include "plot.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include <fmt/core.h>

#include "../backend/error.hpp"

namespace xg::training {

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

}  // namespace xg::training

namespace xg::training {

namespace {

// ColorBrewer "Blues" (9-class), five of its stops: pale for 0, dark for 1.
constexpr unsigned char kBlues[][3] = {
    {247, 251, 255}, {198, 219, 239}, {107, 174, 214}, {33, 113, 181}, {8, 48, 107}};

// Display width of a UTF-8 string in code points (layout only needs an estimate).
std::size_t utf8_length(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string heat_color(double t) {
  if (!(t > 0.0)) t = 0.0;  // also NaN
  if (t > 1.0) t = 1.0;
  constexpr int last = static_cast<int>(std::size(kBlues)) - 1;
  const double pos = t * last;
  const int i = std::min(static_cast<int>(pos), last - 1);
  const double f = pos - i;
  int rgb[3];
  for (int k = 0; k < 3; ++k)
    rgb[k] = static_cast<int>(std::lround(kBlues[i][k] + f * (kBlues[i + 1][k] - kBlues[i][k])));
  return fmt::format("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]);
}

std::string visible_label(const std::string& s) {
  if (s.empty()) return "∅";
  if (s == " ") return "␣";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\t') out += "⇥";
    else if (c == '\n') out += "↵";
    else out += c;
  }
  return out;
}

std::string Heatmap::svg() const {
  const std::size_t rows = row_labels.size(), cols = col_labels.size();
  if (rows == 0 || cols == 0 || values.size() != rows * cols)
    throw ShapeError(fmt::format("Heatmap: {} row labels x {} column labels need {} values, got {}{}", rows, cols,
                                 rows * cols, values.size(), rows == 0 || cols == 0 ? " (no rows or no columns)" : ""));
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      throw Error(fmt::format("Heatmap: value at row {}, column {} of [{},{}] is {}", i / cols, i % cols, rows, cols,
                              values[i]));
    lo = std::min(lo, values[i]);
    hi = std::max(hi, values[i]);
  }
  if (vmin) lo = *vmin;
  if (vmax) hi = *vmax;
  if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi)
    throw Error(fmt::format("Heatmap: colour range [{}, {}] must be finite with vmin <= vmax", lo, hi));
  const bool flat = lo == hi;
  const auto frac = [&](double v) { return flat ? 0.5 : (v - lo) / (hi - lo); };

  // Layout: row labels on the left, column labels under the cells (rotated when any is
  // longer than two characters), the legend bar on the right.
  // Printed values ("-0.25") need a wider cell than the default.
  const double cs = std::max(show_values ? 36 : 4, cell_size);
  std::size_t row_chars = 1, col_chars = 1;
  for (const auto& l : row_labels) row_chars = std::max(row_chars, utf8_length(visible_label(l)));
  for (const auto& l : col_labels) col_chars = std::max(col_chars, utf8_length(visible_label(l)));
  const bool rotate_cols = col_chars > 2;
  const double char_w = 8.0;  // 13px monospace
  const double ml = 36 + char_w * static_cast<double>(row_chars) + 8;
  const double mt = 44;
  const double gw = cs * static_cast<double>(cols), gh = cs * static_cast<double>(rows);
  const double col_label_h = rotate_cols ? char_w * static_cast<double>(col_chars) + 12 : 20;
  const double legend_x = ml + gw + 24, legend_w = 14;
  const double legend_h = std::max(120.0, std::min(gh, 240.0));
  const double width = std::max(legend_x + legend_w + 70, ml + 7.0 * static_cast<double>(utf8_length(title)) + 20);
  const double height = std::max(mt + gh + col_label_h + 34, mt + legend_h + 30);

  std::string o;
  o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" viewBox=\"0 0 {0:.0f} {1:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      width, height);
  o += fmt::format("<rect x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"white\"/>\n", width, height);
  o += fmt::format("<text x=\"{:.1f}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
                   std::max(ml + gw / 2, width / 2), xml_escape(title));

  // Cells: one <rect> each, with the value as a tooltip.
  o += "<g class=\"cells\" stroke=\"none\">\n";
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const double v = values[r * cols + c];
      o += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"><title>{} / {}: {:.4g}</title></rect>\n",
          ml + cs * static_cast<double>(c), mt + cs * static_cast<double>(r), cs, cs, heat_color(frac(v)),
          xml_escape(visible_label(row_labels[r])), xml_escape(visible_label(col_labels[c])), v);
    }
  }
  o += "</g>\n";
  o += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"none\" stroke=\"#000\"/>\n",
                   ml, mt, gw, gh);
  if (show_values) {
    o += "<g class=\"values\" text-anchor=\"middle\" dominant-baseline=\"middle\" font-size=\"9\">\n";
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const double v = values[r * cols + c];
        o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" fill=\"{}\">{:.2f}</text>\n",
                         ml + cs * (static_cast<double>(c) + 0.5), mt + cs * (static_cast<double>(r) + 0.5),
                         frac(v) > 0.55 ? "white" : "black", v);
      }
    o += "</g>\n";
  }

  // Row and column labels (monospace: single characters line up with their cells).
  o += "<g class=\"labels\" font-family=\"monospace\" font-size=\"13\">\n";
  for (std::size_t r = 0; r < rows; ++r)
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>\n",
                     ml - 6, mt + cs * (static_cast<double>(r) + 0.5), xml_escape(visible_label(row_labels[r])));
  for (std::size_t c = 0; c < cols; ++c) {
    const double x = ml + cs * (static_cast<double>(c) + 0.5);
    const std::string text = xml_escape(visible_label(col_labels[c]));
    if (rotate_cols)
      o += fmt::format(
          "<text x=\"{0:.2f}\" y=\"{1:.2f}\" text-anchor=\"end\" dominant-baseline=\"middle\" "
          "transform=\"rotate(-90 {0:.2f} {1:.2f})\">{2}</text>\n",
          x, mt + gh + 6, text);
    else
      o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", x, mt + gh + 16, text);
  }
  o += "</g>\n";
  o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", ml + gw / 2,
                   mt + gh + col_label_h + 16, xml_escape(xlabel));
  o += fmt::format(
      "<text x=\"16\" y=\"{0:.2f}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0:.2f})\">{1}</text>\n",
      mt + gh / 2, xml_escape(ylabel));

  // Legend: a vertical bar, vmax at the top, with nice ticks inside [lo, hi].
  o += "<defs><linearGradient id=\"heat-scale\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">\n";
  for (int k = 0; k <= 8; ++k)
    o += fmt::format("<stop offset=\"{:.3f}\" stop-color=\"{}\"/>\n", k / 8.0, heat_color(k / 8.0));
  o += "</linearGradient></defs>\n";
  o += "<g class=\"legend\">\n";
  o += fmt::format(
      "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\" stroke=\"#000\"/>\n", legend_x,
      mt, legend_w, legend_h, flat ? heat_color(0.5) : "url(#heat-scale)");
  const auto ly = [&](double v) { return mt + legend_h - (flat ? 0.5 : (v - lo) / (hi - lo)) * legend_h; };
  std::vector<double> ticks;
  double step = 1.0;
  if (flat) {
    ticks.push_back(lo);
  } else {
    const int target = legend_h < 160 ? 3 : 4;  // labels at least ~30px apart
    step = nice_step(lo, hi, target);
    for (double t : nice_ticks(lo, hi, target))
      if (t >= lo - 1e-9 * (hi - lo) && t <= hi + 1e-9 * (hi - lo)) ticks.push_back(t);
  }
  for (double t : ticks) {
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\" stroke=\"#000\"/>\n",
                     legend_x + legend_w, ly(t), legend_x + legend_w + 4);
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" dominant-baseline=\"middle\">{}</text>\n",
                     legend_x + legend_w + 7, ly(t), xml_escape(tick_label(t, step)));
  }
  if (!scale_label.empty())
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", legend_x + legend_w / 2,
                     mt + legend_h + 18, xml_escape(scale_label));
  o += "</g>\n</svg>\n";
  return o;
}

void Heatmap::write_svg(const std::string& path) const {
  const std::string doc = svg();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw IOError(fmt::format("Heatmap::write_svg: cannot open '{}': {}", path, std::strerror(errno)));
  const bool ok = std::fwrite(doc.data(), 1, doc.size(), f) == doc.size();
  if (std::fclose(f) != 0 || !ok) throw IOError(fmt::format("Heatmap::write_svg: writing '{}' failed", path));
}

}  // namespace xg::training
