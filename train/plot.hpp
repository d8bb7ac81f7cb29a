#pragma once
// A line plot written as a standalone SVG file (opens in any browser): title, axes with
// "nice" ticks (1, 2 or 5 times a power of ten) and their labels, axis labels, a legend
// and one <polyline> per series.
//
//   xg::training::LinePlot plot{"char-rnn", "step", "loss"};
//   plot.add_series("train", steps, train_loss);
//   plot.add_series("valid", steps, valid_loss, "#d62728");
//   plot.write_svg("loss.svg");
//
// Points with a non-finite x or y (or y <= 0 with log_y) are skipped; a skipped point
// breaks the line, so each run of finite points is one polyline. A series with no
// plottable point still gets its legend entry. A plot whose series have no plottable
// point at all (or no series) is drawn as empty axes over [0, 1] (not an error: a
// training run that just started has nothing to show yet). A single point or a constant
// series gets a range of ±1 around it (±half a decade with log_y) so it sits mid-plot.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "namespace.hpp"

namespace xg::training {

// Tick positions for [lo, hi]: the step is (hi - lo) / target rounded to a nice number
// (mantissa f of the raw step: f < 1.5 -> 1, < 3 -> 2, < 7 -> 5, else 10, times 10^k), and
// the ticks are every multiple of it from floor(lo / step) to ceil(hi / step), so they
// cover the range (first <= lo, last >= hi). E.g. [0, 1] -> 0, 0.2, ..., 1;
// [0.13, 0.87] -> 0.1, 0.2, ..., 0.9. lo > hi is swapped; lo == hi is widened by 1 either
// side; a non-finite bound or target < 1 is an Error.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
// The step nice_ticks chose.
double nice_step(double lo, double hi, int target = 5);
// Tick label text: the value rounded to the step's decimals, trailing zeros dropped
// ("0.3" for 3 * 0.1, "1500", "-2.5"); very large or small magnitudes as "1e+08", "1e-06".
std::string tick_label(double value, double step);
// &, <, >, " and ' as XML entities.
std::string xml_escape(const std::string& s);

struct LinePlot {
  // A constructor rather than aggregate init, so `LinePlot{"title", "x", "y"}` needs no
  // designators and draws no missing-initializer warnings.
  explicit LinePlot(std::string plot_title = "", std::string x_label = "", std::string y_label = "", bool log_scale_y = false)
      : title(std::move(plot_title)), xlabel(std::move(x_label)), ylabel(std::move(y_label)), log_y(log_scale_y) {}

  std::string title;
  std::string xlabel;
  std::string ylabel;
  bool log_y = false;  // y axis in decades (ticks at powers of ten)
  int width = 720;
  int height = 440;

  struct Series {
    std::string name;
    std::vector<double> xs, ys;
    std::string color;
  };
  std::vector<Series> series;

  // xs and ys of different lengths: ShapeError naming the series. Colour defaults to
  // the next of a 10-colour palette.
  void add_series(const std::string& name, std::vector<double> xs, std::vector<double> ys,
                  std::optional<std::string> color = std::nullopt);
  // The whole document.
  std::string svg() const;
  // Writes svg() to path; IOError naming path when it cannot be written.
  void write_svg(const std::string& path) const;
};

}  // namespace xg::training

namespace xg::training {

// A matrix of numbers drawn as coloured cells (an attention map: one row per output
// token, one column per source token), written as a standalone SVG: title, a label per
// row and per column, axis titles and a colour-scale legend with ticks.
//
//   xg::training::Heatmap map{"attention", "source", "output"};
//   map.row_labels = {"2", "0", "2", "6"};
//   map.col_labels = {"2", "6", " ", "n", "o", "v"};
//   map.values = weights;   // rows x cols, row-major
//   map.write_svg("attention.svg");
//
// Labels go through visible_label (a space shows as '␣') and xml_escape. The colour
// scale runs from vmin (palest) to vmax (darkest); both default to the data's min and
// max, and values outside a given range take the end colour. A constant matrix is drawn
// in the middle colour. Errors (from svg() and write_svg()): no rows or no columns, or
// values.size() != rows * cols: ShapeError naming Heatmap and the sizes; a non-finite
// value (Error naming its row and column); a non-finite vmin / vmax or vmin > vmax.
struct Heatmap {
  explicit Heatmap(std::string plot_title = "", std::string x_label = "", std::string y_label = "")
      : title(std::move(plot_title)), xlabel(std::move(x_label)), ylabel(std::move(y_label)) {}

  std::string title;
  std::string xlabel;                   // under the columns
  std::string ylabel;                   // beside the rows
  std::vector<std::string> row_labels;  // top to bottom; its size is the row count
  std::vector<std::string> col_labels;  // left to right; its size is the column count
  std::vector<double> values;           // [rows, cols] row-major
  std::optional<double> vmin, vmax;     // colour range (default: the data's)
  std::string scale_label;              // caption of the colour legend, e.g. "weight"
  int cell_size = 22;                   // pixels per cell side
  bool show_values = false;             // print each value (2 decimals) in its cell

  // The whole document.
  std::string svg() const;
  // Writes svg() to path; IOError naming path when it cannot be written.
  void write_svg(const std::string& path) const;
};

// The heatmap's colour for t in [0, 1] (clamped; NaN counts as 0) as "#rrggbb": a
// white-to-dark-blue ramp, linear between five stops (ColorBrewer "Blues").
std::string heat_color(double t);
// A label a reader can see: " " -> "␣", "\t" -> "⇥", "\n" -> "↵", "" -> "∅"; spaces inside
// longer labels are kept. Not escaped (pass through xml_escape for SVG).
std::string visible_label(const std::string& s);

}  // namespace xg::training
