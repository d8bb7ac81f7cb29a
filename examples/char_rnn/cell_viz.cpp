// cell_viz: interpretable LSTM cells (Karpathy, Johnson & Fei-Fei, "Visualizing and
// Understanding Recurrent Networks", the lecture's figure) from a char_rnn checkpoint.
//
//   ./build/examples/char_rnn/char_rnn                  # trains, writes out/char_rnn/checkpoint.npz
//   ./build/examples/char_rnn/cell_viz                  # -> out/cell_viz/cells.html
//   ./build/examples/char_rnn/cell_viz --load run/checkpoint.npz --data some_file.cpp
//
// It runs the model over text (default: the held-out tail of the embedded corpus, which the
// model never trained on) with the LSTM's introspection on, which records every layer's
// cell state c at every step. A small C++ lexer labels each character with what a reader
// would track there: inside a string literal, inside a comment, ( [ nesting depth, { }
// depth, position in the line, indentation. For each of these the cell whose tanh(c)
// correlates best with it (|Pearson r|, each cell used once) is picked, and the page
// colours every character by that cell's tanh(c) after reading it: red > 0, blue < 0,
// deeper colour = larger magnitude.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

#include "../common/cli.hpp"
#include "char_model.hpp"

using namespace xg;
namespace cli = examples::cli;
using char_rnn::CharRNN;
using char_rnn::ModelConfig;
namespace fs = std::filesystem;

namespace {

// ---- what a reader tracks: per-character features from a small C++ lexer ---------------

struct Feature {
  std::string key;    // HTML id
  std::string label;  // what the chosen cell is said to track
  std::vector<double> values;
};

// Each value is the state AFTER reading that character (what the LSTM's c can know then):
// the opening quote is inside the string, the closing one outside; the second '/' of "//"
// is inside the comment.
std::vector<Feature> lex_features(const std::string& text) {
  const std::size_t n = text.size();
  Feature in_string{"string", "inside a string or char literal", std::vector<double>(n)};
  Feature in_comment{"comment", "inside a comment", std::vector<double>(n)};
  Feature parens{"parens", "depth of ( ) and [ ] nesting", std::vector<double>(n)};
  Feature braces{"braces", "depth of { } nesting", std::vector<double>(n)};
  Feature column{"column", "position in the line", std::vector<double>(n)};
  Feature indent{"indent", "indentation of the line", std::vector<double>(n)};

  enum class State { code, line_comment, block_comment, string, char_literal } st = State::code;
  bool slash = false, star = false, escape = false, leading = true;
  int paren_depth = 0, brace_depth = 0, col = 0, ind = 0;
  char prev = '\n';
  for (std::size_t i = 0; i < n; ++i) {
    const char ch = text[i];
    switch (st) {
      case State::code:
        if (slash && ch == '/') {
          st = State::line_comment;
        } else if (slash && ch == '*') {
          st = State::block_comment;
          star = false;
        } else if (ch == '"') {
          st = State::string;
        } else if (ch == '\'' && !std::isalnum(static_cast<unsigned char>(prev))) {  // not 1'000'000
          st = State::char_literal;
        } else if (ch == '(' || ch == '[') {
          ++paren_depth;
        } else if (ch == ')' || ch == ']') {
          paren_depth = std::max(0, paren_depth - 1);
        } else if (ch == '{') {
          ++brace_depth;
        } else if (ch == '}') {
          brace_depth = std::max(0, brace_depth - 1);
        }
        slash = st == State::code && ch == '/';
        escape = false;
        break;
      case State::line_comment:
        if (ch == '\n') st = State::code;
        break;
      case State::block_comment:
        if (star && ch == '/') st = State::code;
        star = ch == '*';
        break;
      case State::string:
      case State::char_literal:
        if (escape) {
          escape = false;
        } else if (ch == '\\') {
          escape = true;
        } else if (ch == (st == State::string ? '"' : '\'') || ch == '\n') {  // '\n': unterminated, give up
          st = State::code;
        }
        break;
    }
    if (st != State::code) slash = false;
    if (ch == '\n') {
      col = 0;
      ind = 0;
      leading = true;
    } else {
      ++col;
      if (leading && ch == ' ') ++ind;
      else leading = false;
    }
    in_string.values[i] = st == State::string || st == State::char_literal;
    in_comment.values[i] = st == State::line_comment || st == State::block_comment;
    parens.values[i] = paren_depth;
    braces.values[i] = brace_depth;
    column.values[i] = col;
    indent.values[i] = ind;
    prev = ch;
  }
  return {in_string, in_comment, parens, braces, column, indent};
}

// Pearson correlation over positions [begin, n); 0 when either side is constant.
double correlation(const std::vector<double>& x, const float* y, std::size_t stride, std::size_t begin) {
  const std::size_t n = x.size();
  double mx = 0, my = 0;
  for (std::size_t i = begin; i < n; ++i) {
    mx += x[i];
    my += y[i * stride];
  }
  const double m = static_cast<double>(n - begin);
  mx /= m;
  my /= m;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = begin; i < n; ++i) {
    const double dx = x[i] - mx, dy = y[i * stride] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

// ---- HTML -------------------------------------------------------------------------------

// HTML text: the XML escapes suit it (&apos; is valid HTML5).
std::string html_escape(const std::string& s) { return training::xml_escape(s); }

// The text shown for byte i. The model reads bytes, so a multi-byte UTF-8 character is
// several positions: the whole character is shown at its first byte (coloured by the
// cell's value there) and the continuation bytes show nothing. Invalid bytes and control
// characters show as U+FFFD so the page stays valid UTF-8.
std::string display(const std::string& text, std::size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  if (c == '\n' || c == '\t') return std::string(1, static_cast<char>(c));
  if (c < 0x20 || c == 0x7f) return "\xef\xbf\xbd";
  if (c < 0x80) return html_escape(std::string(1, static_cast<char>(c)));
  if ((c & 0xc0) == 0x80) {  // a continuation byte of an earlier valid character: shown there
    for (std::size_t back = 1; back <= 3 && back <= i; ++back) {
      const auto lead = static_cast<unsigned char>(text[i - back]);
      if ((lead & 0xc0) == 0x80) continue;
      const std::size_t len = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
      if (back < len && i - back + len <= text.size() &&
          training::is_text(std::string_view(text).substr(i - back, len)))
        return "";
      break;
    }
    return "\xef\xbf\xbd";
  }
  const std::size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
  if (i + len <= text.size() && training::is_text(std::string_view(text).substr(i, len))) return text.substr(i, len);
  return "\xef\xbf\xbd";
}

// tanh(c) in [-1, 1] -> one of 21 CSS classes: n10 .. n1 (blue), z, p1 .. p10 (red).
std::string level_class(float v) {
  const int level = static_cast<int>(std::lround(std::min(1.0f, std::abs(v)) * 10.0f));
  if (level == 0) return "z";
  return fmt::format("{}{}", v > 0 ? 'p' : 'n', level);
}

std::string css() {
  std::string s =
      "body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}\n"
      "pre{font:13px/1.4 'DejaVu Sans Mono',monospace;white-space:pre-wrap;border:1px solid #ccc;padding:8px}\n"
      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\n"
      ".z{background:#fff}\n";
  for (int l = 1; l <= 10; ++l) {
    const int fade = static_cast<int>(std::lround(255 * (1.0 - 0.85 * l / 10.0)));
    s += fmt::format(".p{0}{{background:rgb(255,{1},{1})}}.n{0}{{background:rgb({1},{1},255)}}\n", l, fade);
  }
  return s;
}

struct Options {
  std::string load = "out/char_rnn/checkpoint.npz";
  std::string data;
  std::vector<std::string> extensions;
  std::int64_t chars = 20000;
  std::int64_t show = 3000;
  int threads = 1;
  std::string out = "out/cell_viz";
};

int run(const Options& o) {
  set_num_threads(o.threads);

  // ---- the model, from the checkpoint alone ------------------------------------------
  const training::LoadedCheckpoint info = training::read_checkpoint_info(o.load);
  const ModelConfig cfg = ModelConfig::load(info.extras);
  CharRNN model(cfg);
  training::load_checkpoint(o.load, {.model = &model});
  model.eval();

  // ---- the text ------------------------------------------------------------------------
  std::string text, what;
  if (o.data.empty()) {
    const double valid_fraction =
        info.extras.has("data.valid_fraction") ? info.extras.get_double("data.valid_fraction") : 0.05;
    text = training::split_text(char_rnn::embedded_corpus(), valid_fraction).second;
    what = "the held-out tail of the embedded xgrad sources";
  } else {
    text = char_rnn::load_corpus(o.data, o.extensions, &what);
  }
  if (o.chars > 0 && static_cast<std::int64_t>(text.size()) > o.chars) {
    std::size_t cut = text.rfind('\n', static_cast<std::size_t>(o.chars));  // end on a whole line
    text.resize(cut != std::string::npos && cut > 0 ? cut + 1 : static_cast<std::size_t>(o.chars));
  }
  if (text.size() < 100) throw Error(fmt::format("{} has {} chars; need at least 100", what, text.size()));
  // Bytes the model never saw are read as a space (there is no id for them).
  std::int64_t unknown = 0;
  for (char ch : text) unknown += !cfg.vocab.contains(ch);
  const char fallback = cfg.vocab.contains(' ') ? ' ' : cfg.vocab.chr(0);
  const Tensor ids = cfg.vocab.encode(text, fallback);  // [N]

  // ---- run the LSTM with introspection, keeping tanh(c) of every cell at every step ----
  const std::int64_t N = ids.numel(), L = cfg.layers, H = cfg.hidden, cells = L * H;
  std::vector<float> act(static_cast<std::size_t>(N * cells));  // [N, L*H]
  {
    NoGradGuard no_grad;
    model.lstm->set_record(true, {.gates = false, .states = true, .grad_norms = false});
    nn::LSTMState state;
    const std::int64_t window = 250;
    for (std::int64_t begin = 0; begin < N; begin += window) {
      const std::int64_t T = std::min(window, N - begin);
      const Tensor x = (*model.embedding)(reshape(slice(ids, 0, begin, begin + T), {1, T}));  // [1, T, E]
      state = (*model.lstm)(x, state).state;  // the head is not needed: only the cells are studied
      const nn::Introspection& intro = model.lstm->introspection();
      for (std::int64_t l = 0; l < L; ++l) {
        for (std::int64_t t = 0; t < T; ++t) {
          const std::vector<float> c = intro.at(l, t).c.to_vector<float>();  // [1, H]
          float* row = &act[static_cast<std::size_t>((begin + t) * cells + l * H)];
          for (std::int64_t j = 0; j < H; ++j) row[j] = std::tanh(c[static_cast<std::size_t>(j)]);
        }
      }
    }
    model.lstm->set_record(false);
  }

  // ---- for each feature, the best-correlated cell (each cell used once) --------------------
  std::vector<Feature> features = lex_features(text);
  const std::size_t warmup = std::min<std::size_t>(100, text.size() / 4);  // the state starts from zeros
  struct Choice {
    const Feature* feature;
    std::int64_t cell;
    double r;
  };
  std::vector<Choice> chosen;
  std::vector<bool> used(static_cast<std::size_t>(cells), false);
  for (const Feature& f : features) {
    std::int64_t best = -1;
    double best_r = 0.0;
    for (std::int64_t k = 0; k < cells; ++k) {
      if (used[static_cast<std::size_t>(k)]) continue;
      const double r = correlation(f.values, act.data() + k, static_cast<std::size_t>(cells), warmup);
      if (best < 0 || std::abs(r) > std::abs(best_r)) {
        best = k;
        best_r = r;
      }
    }
    used[static_cast<std::size_t>(best)] = true;
    chosen.push_back({&f, best, best_r});
  }

  // ---- the page ------------------------------------------------------------------------
  // Each section shows --show chars (whole lines): the stretch where its feature varies
  // most, so the string cell is shown over code with strings in it, not over a comment.
  const std::size_t show = std::min(text.size() - warmup, static_cast<std::size_t>(std::max<std::int64_t>(o.show, 1)));
  auto excerpt = [&](const Feature& f) {
    std::vector<double> s1(text.size() + 1, 0.0), s2(text.size() + 1, 0.0);  // prefix sums of x and x²
    for (std::size_t i = 0; i < text.size(); ++i) {
      s1[i + 1] = s1[i] + f.values[i];
      s2[i + 1] = s2[i] + f.values[i] * f.values[i];
    }
    std::size_t best = warmup;  // line starts after the warm-up (or the warm-up's end if none fits)
    double best_var = -1.0;
    for (std::size_t i = warmup; i + show <= text.size(); ++i) {
      if (i != warmup && text[i - 1] != '\n') continue;
      const double n = static_cast<double>(show), m = (s1[i + show] - s1[i]) / n;
      const double var = (s2[i + show] - s2[i]) / n - m * m;
      if (var > best_var + 1e-9) {
        best_var = var;
        best = i;
      }
    }
    std::size_t last = std::min(text.size(), best + show);
    const std::size_t nl = last < text.size() ? text.rfind('\n', last) : std::string::npos;
    if (nl != std::string::npos && nl > best) last = nl + 1;
    return std::pair<std::size_t, std::size_t>{best, last};
  };

  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>cell_viz: interpretable LSTM cells</title>\n";
  html += "<style>\n" + css() + "</style></head><body>\n";
  html += "<h1>Interpretable LSTM cells</h1>\n";
  html += fmt::format(
      "<p>Model: <code>{}</code> (step {}, {}-layer LSTM, {} cells per layer). Text: {}, {} chars{}.</p>\n",
      html_escape(o.load), info.step, L, H, html_escape(what), N,
      unknown > 0 ? fmt::format(" ({} not in the vocabulary, read as a space)", unknown) : "");
  html += "<p>Each character is coloured by one cell's tanh(c) after reading it: "
          "<span class=\"p8\">&nbsp;red&nbsp;</span> positive, <span class=\"n8\">&nbsp;blue&nbsp;</span> negative, "
          "deeper = larger magnitude. For each feature the cell with the largest |correlation| over the whole text "
          "was chosen (each cell at most once).</p>\n";
  html += "<table><tr><th>feature</th><th>cell</th><th>correlation r</th></tr>\n";
  for (const Choice& c : chosen) {
    html += fmt::format("<tr><td><a href=\"#{}\">{}</a></td><td>layer {}, cell {}</td><td>{:+.3f}</td></tr>\n",
                        c.feature->key, html_escape(c.feature->label), c.cell / H + 1, c.cell % H, c.r);
  }
  html += "</table>\n";
  for (const Choice& c : chosen) {
    html += fmt::format("<section id=\"{}\">\n<h2>{}: layer {}, cell {}</h2>\n", c.feature->key,
                        html_escape(c.feature->label), c.cell / H + 1, c.cell % H);
    const auto [first, last] = excerpt(*c.feature);
    html += fmt::format("<p>correlation of tanh(c) with the feature: r = {:+.3f} over {} chars{}. "
                        "Shown: chars {} to {}.</p>\n<pre>",
                        c.r, N - static_cast<std::int64_t>(warmup),
                        c.r < 0 ? " (negative: the cell is blue where the feature is high)" : "", first, last);
    // Neighbouring characters of the same colour share one span: a much smaller page.
    std::string open;
    for (std::size_t i = first; i < last; ++i) {
      const std::string cls = level_class(act[i * static_cast<std::size_t>(cells) + static_cast<std::size_t>(c.cell)]);
      if (cls != open) {
        if (!open.empty()) html += "</span>";
        html += "<span class=\"" + cls + "\">";
        open = cls;
      }
      html += display(text, i);
    }
    if (!open.empty()) html += "</span>";
    html += "</pre>\n</section>\n";
  }
  html += "</body></html>\n";

  fs::create_directories(o.out);
  const std::string path = (fs::path(o.out) / "cells.html").string();
  std::ofstream f(path, std::ios::binary);
  f << html;
  f.close();
  if (!f) throw IOError(fmt::format("cannot write {}", path));

  fmt::print("{} chars of {} through {} (step {})\n", N, what, o.load, info.step);
  for (const Choice& c : chosen)
    fmt::print("  {:<34} layer {} cell {:>4}  r = {:+.3f}\n", c.feature->label, c.cell / H + 1, c.cell % H, c.r);
  fmt::print("wrote {} ({} KB)\n", path, html.size() / 1024);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"cell_viz: which LSTM cells of a char_rnn checkpoint track strings, comments, nesting, "
               "line position and indentation; writes an HTML page colouring the text by them."};
  app.add_option("--load", o.load, "char_rnn checkpoint")->capture_default_str()->check(CLI::ExistingFile);
  app.add_option("--data", o.data, "text file or directory to run over (default: the held-out tail of the embedded corpus)")
      ->check(CLI::ExistingPath);
  app.add_option("--ext", o.extensions, "with a --data directory: only files ending in these");
  app.add_option("--chars", o.chars, "analyse at most this many chars (0: all)")
      ->capture_default_str()
      ->check(cli::integer(0, std::numeric_limits<std::int64_t>::max()));
  app.add_option("--show", o.show, "chars shown per cell on the page")->capture_default_str()->check(cli::count(10000000));
  app.add_option("--threads", o.threads, "BLAS threads")->capture_default_str()->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", o.out, "output directory")->capture_default_str()->check(cli::output_dir());
  return cli::run(app, "cell_viz", argc, argv, [&] { return run(o); });
}
