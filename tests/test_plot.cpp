#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <xgrad/train/plot.hpp>

#include "helpers.hpp"

using xg::training::LinePlot;
using xg::training::nice_step;
using xg::training::nice_ticks;
using xg::training::tick_label;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

void check_ticks(double lo, double hi, const std::vector<double>& want) {
  CAPTURE(lo);
  CAPTURE(hi);
  const auto got = nice_ticks(lo, hi);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

std::size_t count_of(const std::string& s, const std::string& part) {
  std::size_t n = 0;
  for (std::size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + 1)) ++n;
  return n;
}

// A small well-formedness check: every tag is closed in order, attributes are quoted,
// and text holds no raw '<' and no '&' outside an entity. Returns "" when fine.
std::string xml_problem(const std::string& doc) {
  std::vector<std::string> stack;
  std::size_t i = 0;
  int roots = 0;
  while (i < doc.size()) {
    if (doc[i] == '&') {
      static const std::regex entity("^&(amp|lt|gt|quot|apos);");
      if (!std::regex_search(doc.substr(i, 8), entity)) return "bare & at " + std::to_string(i);
      ++i;
      continue;
    }
    if (doc[i] == '>') return "bare > outside a tag at " + std::to_string(i);
    if (doc[i] != '<') {
      ++i;
      continue;
    }
    // Inside a tag: find its end, skipping quoted attribute values.
    std::size_t j = i + 1;
    char quote = 0;
    for (; j < doc.size(); ++j) {
      if (quote) {
        if (doc[j] == quote) quote = 0;
        else if (doc[j] == '<') return "< inside an attribute at " + std::to_string(j);
      } else if (doc[j] == '"' || doc[j] == '\'') {
        quote = doc[j];
      } else if (doc[j] == '>') {
        break;
      }
    }
    if (j >= doc.size()) return "unterminated tag at " + std::to_string(i);
    const std::string tag = doc.substr(i + 1, j - i - 1);
    i = j + 1;
    if (tag.front() == '?') continue;
    if (tag.front() == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "mismatched </" + name + ">";
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
    if (stack.empty()) ++roots;
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return "expected one root element, got " + std::to_string(roots);
  return "";
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("xgrad_test_plot_" + name)).string();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every x,y pair of every polyline and circle lies inside the viewBox.
void check_inside_viewbox(const std::string& doc, double w, double h) {
  static const std::regex points("points=\"([^\"]*)\"");
  static const std::regex pair("(-?[0-9.]+),(-?[0-9.]+)");
  static const std::regex circle("cx=\"(-?[0-9.]+)\" cy=\"(-?[0-9.]+)\"");
  std::size_t n = 0;
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), points); it != std::sregex_iterator(); ++it) {
    const std::string pts = (*it)[1];
    for (auto p = std::sregex_iterator(pts.begin(), pts.end(), pair); p != std::sregex_iterator(); ++p) {
      const double x = std::stod((*p)[1]), y = std::stod((*p)[2]);
      CHECK(x >= 0);
      CHECK(x <= w);
      CHECK(y >= 0);
      CHECK(y <= h);
      ++n;
    }
  }
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), circle); it != std::sregex_iterator(); ++it) {
    const double x = std::stod((*it)[1]), y = std::stod((*it)[2]);
    CHECK(x >= 0);
    CHECK(x <= w);
    CHECK(y >= 0);
    CHECK(y <= h);
    ++n;
  }
  MESSAGE(n << " plotted coordinates checked");
}

void check_well_formed_file(const std::string& path) {
  const std::string doc = slurp(path);
  CHECK(xml_problem(doc) == "");
  if (std::filesystem::exists("/usr/bin/xmllint")) {
    const std::string cmd = "/usr/bin/xmllint --noout '" + path + "' 2>/dev/null";
    CHECK(std::system(cmd.c_str()) == 0);
  } else {
    MESSAGE("xmllint not found: only the built-in well-formedness check ran");
  }
}

}  // namespace

TEST_CASE("plot: nice_ticks on hand-checked ranges") {
  check_ticks(0, 1, {0, 0.2, 0.4, 0.6, 0.8, 1});
  check_ticks(1, 0, {0, 0.2, 0.4, 0.6, 0.8, 1});  // swapped
  check_ticks(0, 100, {0, 20, 40, 60, 80, 100});
  check_ticks(0.13, 0.87, {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9});
  check_ticks(-3, 7, {-4, -2, 0, 2, 4, 6, 8});
  check_ticks(1000, 1003, {1000, 1000.5, 1001, 1001.5, 1002, 1002.5, 1003});
  check_ticks(0, 2.3, {0, 0.5, 1, 1.5, 2, 2.5});
  check_ticks(0, 0.3, {0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3});  // 0.3 / 0.05 is 5.999...: no extra tick
  check_ticks(5, 5, {4, 4.5, 5, 5.5, 6});                     // widened by 1 either side
  check_ticks(1e-6, 3e-6, {1e-6, 1.5e-6, 2e-6, 2.5e-6, 3e-6});
  check_ticks(-250, -10, {-250, -200, -150, -100, -50, 0});
  CHECK(nice_step(0, 1e9) == doctest::Approx(2e8));
  CHECK(nice_step(0, 7) == doctest::Approx(1));  // raw 1.4 -> 1
  CHECK(nice_step(0, 8) == doctest::Approx(2));  // raw 1.6 -> 2
  CHECK(nice_step(0, 40) == doctest::Approx(10));  // raw 8 -> 10
  CHECK_THROWS_WITH_AS(nice_ticks(0, kInf), doctest::Contains("nice_ticks"), xg::Error);
  CHECK_THROWS_AS(nice_ticks(kNaN, 1), xg::Error);
  CHECK_THROWS_AS(nice_ticks(0, 1, 0), xg::Error);
}

TEST_CASE("plot: tick labels are short decimals") {
  CHECK(tick_label(3 * 0.1, 0.1) == "0.3");
  CHECK(tick_label(1500, 500) == "1500");
  CHECK(tick_label(-2.5, 0.5) == "-2.5");
  CHECK(tick_label(1e-17, 0.1) == "0");
  CHECK(tick_label(-1e-17, 0.1) == "0");
  CHECK(tick_label(1000.5, 0.5) == "1000.5");
  CHECK(tick_label(1000, 0.5) == "1000");
  CHECK(tick_label(2e8, 2e8) == "2e+08");
  CHECK(tick_label(1e-6, 5e-7) == "1e-06");
  CHECK(xg::training::xml_escape("a<b & c>\"d'") == "a&lt;b &amp; c&gt;&quot;d&apos;");
}

TEST_CASE("plot: two series give a valid standalone SVG with labels, ticks and one polyline each") {
  LinePlot plot{"loss & <ppl>", "step", "loss"};
  std::vector<double> xs, train, valid;
  for (int i = 0; i <= 100; ++i) {
    xs.push_back(i);
    train.push_back(4.0 * std::exp(-i / 30.0) + 0.5);
    valid.push_back(4.2 * std::exp(-i / 35.0) + 0.6);
  }
  plot.add_series("train", xs, train);
  plot.add_series("valid <v>", xs, valid, "#d62728");
  const std::string path = temp_path("two.svg");
  plot.write_svg(path);
  const std::string doc = slurp(path);
  check_well_formed_file(path);
  CHECK(doc.find("xmlns=\"http://www.w3.org/2000/svg\"") != std::string::npos);
  CHECK(doc.find("viewBox=\"0 0 720 440\"") != std::string::npos);
  CHECK(count_of(doc, "<polyline") == 2);
  CHECK(doc.find(">loss &amp; &lt;ppl&gt;</text>") != std::string::npos);
  CHECK(doc.find(">step</text>") != std::string::npos);
  CHECK(doc.find(">loss</text>") != std::string::npos);
  CHECK(doc.find(">train</text>") != std::string::npos);
  CHECK(doc.find(">valid &lt;v&gt;</text>") != std::string::npos);
  CHECK(doc.find("#d62728") != std::string::npos);
  // x ticks of [0, 100] with 6 targets: step 20 (raw 16.7 -> 2 x 10).
  for (const char* t : {">0<", ">20<", ">40<", ">100<"}) CHECK(doc.find(t) != std::string::npos);
  check_inside_viewbox(doc, 720, 440);
  std::filesystem::remove(path);
}

TEST_CASE("plot: NaN and inf points are skipped and break the line") {
  LinePlot plot{"t", "x", "y"};
  plot.add_series("gappy", {0, 1, 2, 3, 4, 5, 6}, {1, 2, kNaN, 3, 4, kInf, 5});
  const std::string doc = plot.svg();
  CHECK(xml_problem(doc) == "");
  // Runs {0,1} and {3,4} are lines, {6} alone is a dot.
  CHECK(count_of(doc, "<polyline") == 2);
  CHECK(count_of(doc, "<circle") == 1);
  // Only finite numbers in the coordinates.
  static const std::regex coords("points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), coords); it != std::sregex_iterator(); ++it)
    CHECK((*it)[1].str().find_first_not_of("0123456789., -") == std::string::npos);
  CHECK(doc.find("nan,") == std::string::npos);
  CHECK(doc.find("inf") == std::string::npos);
  check_inside_viewbox(doc, plot.width, plot.height);
}

TEST_CASE("plot: a single point, a constant series and an empty plot") {
  SUBCASE("single point") {
    LinePlot plot{"one", "x", "y"};
    plot.add_series("p", {3}, {7});
    const std::string doc = plot.svg();
    CHECK(xml_problem(doc) == "");
    CHECK(count_of(doc, "<circle") == 1);
    CHECK(count_of(doc, "<polyline") == 0);
    // Ranges widened to [2, 4] and [6, 8]: the point sits mid-plot.
    CHECK(doc.find(">2<") != std::string::npos);
    CHECK(doc.find(">8<") != std::string::npos);
    check_inside_viewbox(doc, plot.width, plot.height);
  }
  SUBCASE("constant series") {
    LinePlot plot{"flat", "x", "y"};
    plot.add_series("c", {0, 1, 2, 3}, {2.5, 2.5, 2.5, 2.5});
    const std::string doc = plot.svg();
    CHECK(xml_problem(doc) == "");
    REQUIRE(count_of(doc, "<polyline") == 1);
    // Every point at the same height.
    static const std::regex pts("points=\"([^\"]*)\"");
    std::smatch m;
    REQUIRE(std::regex_search(doc, m, pts));
    const std::string p = m[1];
    std::vector<std::string> ys;
    static const std::regex pair(",(-?[0-9.]+)");
    for (auto it = std::sregex_iterator(p.begin(), p.end(), pair); it != std::sregex_iterator(); ++it)
      ys.push_back((*it)[1]);
    REQUIRE(ys.size() == 4);
    for (const auto& y : ys) CHECK(y == ys[0]);
    check_inside_viewbox(doc, plot.width, plot.height);
  }
  SUBCASE("empty series and no series draw empty axes") {
    LinePlot none{"nothing yet", "step", "loss"};
    const std::string a = none.svg();
    CHECK(xml_problem(a) == "");
    CHECK(a.find(">nothing yet</text>") != std::string::npos);
    LinePlot plot{"empty", "step", "loss"};
    plot.add_series("train", {}, {});
    plot.add_series("all nan", {1, 2}, {kNaN, kNaN});
    const std::string doc = plot.svg();
    CHECK(xml_problem(doc) == "");
    CHECK(count_of(doc, "<polyline") == 0);
    CHECK(count_of(doc, "<circle") == 0);
    CHECK(doc.find(">train</text>") != std::string::npos);  // still in the legend
    CHECK(doc.find(">all nan</text>") != std::string::npos);
  }
}

TEST_CASE("plot: log_y puts ticks at decades and skips non-positive values") {
  LinePlot plot{"log", "step", "loss", true};
  plot.add_series("l", {0, 1, 2, 3, 4}, {10, 1, 0.1, 0, 0.001});
  const std::string path = temp_path("log.svg");
  plot.write_svg(path);
  const std::string doc = slurp(path);
  check_well_formed_file(path);
  for (const char* t : {">0.001<", ">0.01<", ">0.1<", ">1<", ">10<"}) CHECK(doc.find(t) != std::string::npos);
  // y = 0 is skipped: one line of three points and a dot.
  CHECK(count_of(doc, "<polyline") == 1);
  CHECK(count_of(doc, "<circle") == 1);
  check_inside_viewbox(doc, plot.width, plot.height);
  std::filesystem::remove(path);
}

TEST_CASE("plot: bad input") {
  LinePlot plot{"t", "x", "y"};
  CHECK_THROWS_WITH_AS(plot.add_series("short", {1, 2, 3}, {1, 2}), doctest::Contains("'short'"), xg::ShapeError);
  plot.add_series("ok", {1, 2}, {1, 2});
  CHECK_THROWS_WITH_AS(plot.write_svg("/nonexistent_dir_xgrad/p.svg"),
                       doctest::Contains("/nonexistent_dir_xgrad/p.svg"), xg::IOError);
}

// ---- Heatmap ------------------------------------------------------------------------

namespace {

using xg::training::Heatmap;
using xg::training::heat_color;
using xg::training::visible_label;

// The fill colours of the cell rects, in document (row-major) order.
std::vector<std::string> cell_fills(const std::string& doc) {
  const auto begin = doc.find("<g class=\"cells\"");
  const auto end = doc.find("</g>", begin);
  const std::string cells = doc.substr(begin, end - begin);
  static const std::regex fill("<rect [^>]*fill=\"(#[0-9a-f]{6})\"");
  std::vector<std::string> out;
  for (auto it = std::sregex_iterator(cells.begin(), cells.end(), fill); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

Heatmap small_map() {
  Heatmap map{"attention", "source", "output"};
  map.row_labels = {"2", "0"};
  map.col_labels = {"a", " ", "<", "&"};
  map.values = {0.0, 0.25, 0.5, 1.0,  //
                0.75, 0.25, 0.0, 0.0};
  map.scale_label = "weight";
  return map;
}

}  // namespace

TEST_CASE("heatmap: heat_color endpoints, interpolation and clamping") {
  CHECK(heat_color(0.0) == "#f7fbff");
  CHECK(heat_color(1.0) == "#08306b");
  // t = 0.5 is exactly the middle stop (107, 174, 214); t = 0.125 is halfway between the
  // first two stops: (247+198)/2 = 222.5 -> 223, (251+219)/2 = 235, (255+239)/2 = 247.
  CHECK(heat_color(0.5) == "#6baed6");
  CHECK(heat_color(0.125) == "#dfebf7");
  CHECK(heat_color(-3.0) == heat_color(0.0));
  CHECK(heat_color(7.0) == heat_color(1.0));
  CHECK(heat_color(kNaN) == heat_color(0.0));
}

TEST_CASE("heatmap: visible_label shows whitespace") {
  CHECK(visible_label(" ") == "␣");
  CHECK(visible_label("\t") == "⇥");
  CHECK(visible_label("\n") == "↵");
  CHECK(visible_label("") == "∅");
  CHECK(visible_label("a b") == "a b");
  CHECK(visible_label("x") == "x");
}

TEST_CASE("heatmap: one cell per value, coloured by value, labels escaped and visible") {
  Heatmap map = small_map();
  const std::string path = temp_path("heat.svg");
  map.write_svg(path);
  const std::string doc = slurp(path);
  check_well_formed_file(path);
  CHECK(doc.find("xmlns=\"http://www.w3.org/2000/svg\"") != std::string::npos);
  // Data range [0, 1]: each cell's colour is heat_color(value), row-major.
  const auto fills = cell_fills(doc);
  REQUIRE(fills.size() == 8);
  for (std::size_t i = 0; i < 8; ++i) {
    CAPTURE(i);
    CHECK(fills[i] == heat_color(map.values[i]));
  }
  CHECK(count_of(doc, "<title>") == 8);
  CHECK(doc.find(">attention</text>") != std::string::npos);
  CHECK(doc.find(">source</text>") != std::string::npos);
  CHECK(doc.find(">output</text>") != std::string::npos);
  CHECK(doc.find(">weight</text>") != std::string::npos);
  CHECK(doc.find(">␣</text>") != std::string::npos);
  CHECK(doc.find(">&lt;</text>") != std::string::npos);
  CHECK(doc.find(">&amp;</text>") != std::string::npos);
  // Legend ticks of [0, 1] on a short (two-row) legend aim at 3 ticks: step 0.5 (raw
  // 0.33 -> 5 x 0.1).
  for (const char* t : {">0<", ">0.5<", ">1<"}) CHECK(doc.find(t) != std::string::npos);
  CHECK(doc.find(">0.2<") == std::string::npos);
  CHECK(doc.find("url(#heat-scale)") != std::string::npos);
  std::filesystem::remove(path);
}

TEST_CASE("heatmap: vmin / vmax fix the colour range and clamp values outside it") {
  Heatmap map = small_map();
  map.vmin = 0.25;
  map.vmax = 0.75;
  const auto fills = cell_fills(map.svg());
  REQUIRE(fills.size() == 8);
  CHECK(fills[0] == heat_color(0.0));  // 0 is below vmin
  CHECK(fills[1] == heat_color(0.0));  // 0.25 = vmin
  CHECK(fills[2] == heat_color(0.5));  // 0.5 is mid-range
  CHECK(fills[3] == heat_color(1.0));  // 1 is above vmax
  CHECK(fills[4] == heat_color(1.0));  // 0.75 = vmax
}

TEST_CASE("heatmap: a constant matrix, a 1x1 map, long labels and show_values") {
  SUBCASE("constant") {
    Heatmap map{"flat"};
    map.row_labels = {"r0", "r1"};
    map.col_labels = {"c0", "c1"};
    map.values = {3, 3, 3, 3};
    const std::string doc = map.svg();
    CHECK(xml_problem(doc) == "");
    for (const auto& f : cell_fills(doc)) CHECK(f == heat_color(0.5));
  }
  SUBCASE("1x1") {
    Heatmap map;
    map.row_labels = {"y"};
    map.col_labels = {"x"};
    map.values = {0.5};
    const std::string doc = map.svg();
    CHECK(xml_problem(doc) == "");
    CHECK(cell_fills(doc).size() == 1);
  }
  SUBCASE("long column labels are rotated; values printed") {
    Heatmap map{"words"};
    map.row_labels = {"first row", "second"};
    map.col_labels = {"alpha", "beta", "gamma"};
    map.values = {1, 2, 3, 4, 5, 6};
    map.show_values = true;
    const std::string doc = map.svg();
    CHECK(xml_problem(doc) == "");
    CHECK(count_of(doc, "transform=\"rotate(-90") >= 3);
    CHECK(doc.find(">6.00</text>") != std::string::npos);
    CHECK(doc.find(">first row</text>") != std::string::npos);
  }
}

TEST_CASE("heatmap: bad input is an error naming Heatmap and the sizes") {
  Heatmap map = small_map();
  map.values.pop_back();
  CHECK_THROWS_AS(map.svg(), xg::ShapeError);
  const std::string msg = xgtest::error_of<xg::ShapeError>([&] { (void)map.svg(); });
  CHECK(xgtest::has(msg, "Heatmap"));
  CHECK(xgtest::has(msg, "2 row labels x 4 column labels"));
  CHECK(xgtest::has(msg, "need 8 values, got 7"));

  Heatmap empty;
  CHECK_THROWS_WITH_AS(empty.svg(), doctest::Contains("Heatmap"), xg::ShapeError);
  empty.col_labels = {"a"};
  CHECK_THROWS_WITH_AS(empty.svg(), doctest::Contains("0 row labels x 1 column labels"), xg::ShapeError);

  Heatmap nan_map = small_map();
  nan_map.values[6] = kNaN;
  CHECK_THROWS_WITH_AS(nan_map.svg(), doctest::Contains("Heatmap: value at row 1, column 2 of [2,4] is nan"),
                       xg::Error);
  Heatmap inf_map = small_map();
  inf_map.values[0] = -kInf;
  CHECK_THROWS_WITH_AS(inf_map.svg(), doctest::Contains("row 0, column 0"), xg::Error);

  Heatmap range = small_map();
  range.vmin = 1.0;
  range.vmax = 0.0;
  CHECK_THROWS_WITH_AS(range.svg(), doctest::Contains("Heatmap: colour range"), xg::Error);
  range.vmin = kNaN;
  CHECK_THROWS_WITH_AS(range.svg(), doctest::Contains("Heatmap"), xg::Error);

  Heatmap ok = small_map();
  CHECK_THROWS_WITH_AS(ok.write_svg("/nonexistent_dir_xgrad/h.svg"), doctest::Contains("/nonexistent_dir_xgrad/h.svg"),
                       xg::IOError);
  // A failed write leaves nothing behind and a bad map writes no file.
  const std::string path = temp_path("bad_heat.svg");
  std::filesystem::remove(path);
  CHECK_THROWS(nan_map.write_svg(path));
  CHECK_FALSE(std::filesystem::exists(path));
}
