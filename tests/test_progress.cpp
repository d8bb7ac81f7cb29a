#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <xgrad/train/progress.hpp>

#include "helpers.hpp"

using xg::training::format_duration;
using xg::training::format_rate;
using xg::training::ProgressBar;
using xg::training::ProgressOptions;

namespace {

// Everything written to f so far.
std::string contents(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

std::size_t count(const std::string& s, char c) {
  std::size_t n = 0;
  for (char x : s) n += x == c;
  return n;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// "[###...]" with `filled` of `width` characters filled.
std::string bar_text(std::size_t filled, std::size_t width) {
  std::string s(1, '[');
  s.append(filled, '#');
  s.append(width - filled, '.');
  s.push_back(']');
  return s;
}

// A temporary file closed when it goes out of scope: declared before a ProgressBar, it
// outlives it (the bar's destructor may still write its last line).
struct TmpFile {
  std::FILE* f = std::tmpfile();
  TmpFile() { REQUIRE(f != nullptr); }
  ~TmpFile() { std::fclose(f); }
  TmpFile(const TmpFile&) = delete;
  TmpFile& operator=(const TmpFile&) = delete;
};

struct FakeClock {
  double t = 0.0;
  std::function<double()> fn() {
    return [this] { return t; };
  }
};

}  // namespace

TEST_CASE("progress: format_duration gives h:mm:ss") {
  CHECK(format_duration(0) == "0:00:00");
  CHECK(format_duration(59.4) == "0:00:59");
  CHECK(format_duration(59.6) == "0:01:00");
  CHECK(format_duration(61) == "0:01:01");
  CHECK(format_duration(3600) == "1:00:00");
  CHECK(format_duration(3725) == "1:02:05");
  CHECK(format_duration(36000 + 59 * 60 + 59) == "10:59:59");
  CHECK(format_duration(-1) == "-:--:--");
  CHECK(format_duration(std::nan("")) == "-:--:--");
  CHECK(format_duration(INFINITY) == "-:--:--");
}

TEST_CASE("progress: format_rate uses three significant figures and SI suffixes") {
  CHECK(format_rate(0) == "0");
  CHECK(format_rate(950) == "950");
  CHECK(format_rate(51234) == "51.2k");
  CHECK(format_rate(1000) == "1.00k");
  CHECK(format_rate(3.4e6) == "3.40M");
  CHECK(format_rate(123456) == "123k");
}

TEST_CASE("progress: non-tty prints a plain line every plain_every steps plus the final line") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  FakeClock clock;
  {
    ProgressOptions o;
    o.out = f;
    o.plain_every = 3;
    o.plain_seconds = 0;
    o.smoothing = 0.5;
    o.force_tty = false;
    o.clock = clock.fn();
    ProgressBar bar(10, o);
    CHECK_FALSE(bar.is_tty());
    for (int step = 1; step <= 10; ++step) {
      clock.t = step;  // one second per step
      bar.update(step, static_cast<double>(step), 100);
    }
    bar.finish();
    bar.finish();  // idempotent
  }
  const std::string out = contents(f);
  CHECK(count(out, '\r') == 0);
  const auto lines = lines_of(out);
  REQUIRE(lines.size() == 4);  // steps 3, 6, 9 and the final line
  INFO(out);
  CHECK(lines[0].rfind("train 3/10 [", 0) == 0);
  CHECK(lines[1].rfind("train 6/10 [", 0) == 0);
  CHECK(lines[2].rfind("train 9/10 [", 0) == 0);
  CHECK(lines[3].rfind("train 10/10 [", 0) == 0);
  // Debiased EMA of 1, 2, 3 with s = 0.5 by hand: 0.5 * (0.25*1 + 0.5*2 + 3) / (1 - 0.125).
  CHECK(contains(lines[0], "loss 2.4286"));
  // 300 tokens in 3 s; 3 s elapsed, 7 steps left at 1 s each.
  CHECK(contains(lines[0], "100 tok/s"));
  CHECK(contains(lines[0], "0:00:03 < 0:00:07"));
  CHECK(contains(lines[3], "0:00:10 < 0:00:00"));
  // The bar of a finished run is full.
  CHECK(contains(lines[3], bar_text(30, 30)));
}

TEST_CASE("progress: non-tty also prints a line every plain_seconds") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  FakeClock clock;
  ProgressOptions o;
  o.out = f;
  o.plain_every = 0;
  o.plain_seconds = 5;
  o.force_tty = false;
  o.clock = clock.fn();
  ProgressBar bar(20, o);
  for (int step = 1; step <= 20; ++step) {
    clock.t = step;
    bar.update(step, 1.0);
  }
  bar.finish();
  const auto lines = lines_of(contents(f));
  REQUIRE(lines.size() == 4);  // t = 5, 10, 15 and the final line
  CHECK(lines[0].rfind("train 5/20", 0) == 0);
  CHECK(lines[2].rfind("train 15/20", 0) == 0);
  CHECK(lines[3].rfind("train 20/20", 0) == 0);
  // No tokens reported: no rate shown.
  CHECK_FALSE(contains(lines[0], "tok/s"));
}

TEST_CASE("progress: non-tty prints each step once when finish() follows an update that printed") {
  // A loop stopped before `total` (a time budget: char_rnn's bar has the estimated total)
  // right after a step that printed its line: finish() must not print that step again.
  for (const bool by_time : {false, true}) {
    CAPTURE(by_time);
    TmpFile tmp;
    std::FILE* f = tmp.f;
    FakeClock clock;
    {
      ProgressOptions o;
      o.out = f;
      o.plain_every = by_time ? 0 : 5;
      o.plain_seconds = by_time ? 5 : 0;
      o.force_tty = false;
      o.clock = clock.fn();
      ProgressBar bar(20, o);
      for (int step = 1; step <= 10; ++step) {
        clock.t = step;
        bar.update(step, 1.0);
      }
      clock.t = 12;  // e.g. an evaluation after the last step
      bar.finish();
    }
    const std::string out = contents(f);
    INFO(out);
    const auto lines = lines_of(out);
    REQUIRE(lines.size() == 2);  // steps 5 and 10, once each
    CHECK(lines[0].rfind("train 5/20 [", 0) == 0);
    CHECK(lines[1].rfind("train 10/20 [", 0) == 0);
  }
  // Stopped one step after a printed line: finish() prints the final step.
  TmpFile tmp;
  std::FILE* f = tmp.f;
  {
    ProgressOptions o;
    o.out = f;
    o.plain_every = 5;
    o.plain_seconds = 0;
    o.force_tty = false;
    ProgressBar bar(20, o);
    for (int step = 1; step <= 11; ++step) bar.update(step, 1.0);
    bar.finish();
  }
  const auto lines = lines_of(contents(f));
  REQUIRE(lines.size() == 3);
  CHECK(lines[2].rfind("train 11/20 [", 0) == 0);
  // A bar finished without any update still prints its (empty) line, once.
  TmpFile tmp0;
  {
    ProgressOptions o;
    o.out = tmp0.f;
    o.force_tty = false;
    ProgressBar bar(20, o);
    bar.finish();
  }
  const auto lines0 = lines_of(contents(tmp0.f));
  REQUIRE(lines0.size() == 1);
  CHECK(lines0[0].rfind("train 0/20 [", 0) == 0);
}

TEST_CASE("progress: tty mode redraws in place, rate-limited by refresh") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  FakeClock clock;
  ProgressOptions o;
  o.out = f;
  o.refresh = 1.0;
  o.force_tty = true;
  o.label = "fit";
  o.clock = clock.fn();
  ProgressBar bar(8, o);
  CHECK(bar.is_tty());
  for (int step = 1; step <= 8; ++step) {
    clock.t = 0.25 * step;
    bar.update(step, 2.0, 10);
  }
  bar.finish();
  const std::string out = contents(f);
  // Drawn at step 1 (first), step 5 (t = 1.25, 1 s after the first) and by finish().
  CHECK(count(out, '\r') == 3);
  CHECK(count(out, '\n') == 1);
  CHECK(out.back() == '\n');
  CHECK(contains(out, "\x1b[K"));
  CHECK(contains(out, "\rfit 1/8 ["));
  CHECK(contains(out, "\rfit 5/8 ["));
  CHECK(contains(out, "\rfit 8/8 ["));
  CHECK_FALSE(contains(out, "fit 2/8"));
}

TEST_CASE("progress: smoothed loss is the bias-corrected EMA (hand computation)") {
  const std::vector<double> losses = {4.0, 3.0, 3.5, 2.0, 2.5, 1.0};
  for (double s : {0.0, 0.5, 0.9, 0.98}) {
    CAPTURE(s);
    ProgressOptions o;
    TmpFile tmp;
    std::FILE* f = tmp.f;
    o.out = f;
    o.force_tty = false;
    o.smoothing = s;
    ProgressBar bar(100, o);
    CHECK(std::isnan(bar.smoothed_loss()));
    for (std::size_t n = 1; n <= losses.size(); ++n) {
      bar.update(static_cast<std::int64_t>(n), losses[n - 1]);
      // Weighted mean with weights s^(n-i): the closed form of the debiased EMA.
      double num = 0, den = 0;
      for (std::size_t i = 1; i <= n; ++i) {
        const double w = std::pow(s, static_cast<double>(n - i));
        num += w * losses[i - 1];
        den += w;
      }
      CHECK(bar.smoothed_loss() == doctest::Approx(num / den).epsilon(1e-12));
    }
  }
}

TEST_CASE("progress: a non-finite loss does not poison the average") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  ProgressOptions o;
  o.out = f;
  o.force_tty = false;
  o.smoothing = 0.5;
  ProgressBar bar(10, o);
  bar.update(1, 2.0);
  bar.update(2, std::nan(""));
  bar.update(3, 4.0);
  // Weights 0.5 and 1 over the finite values 2 and 4.
  CHECK(bar.smoothed_loss() == doctest::Approx((0.5 * 2.0 + 4.0) / 1.5));
}

TEST_CASE("progress: eta and tokens/s from the injected clock") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  FakeClock clock;
  clock.t = 100.0;  // the origin is arbitrary
  ProgressOptions o;
  o.out = f;
  o.force_tty = false;
  o.clock = clock.fn();
  ProgressBar bar(1000, o);
  CHECK(std::isnan(bar.eta()));
  clock.t = 100.0 + 3725.0;  // 1:02:05 for 250 steps
  bar.update(250, 1.0, 5000);
  CHECK(bar.elapsed() == doctest::Approx(3725.0));
  CHECK(bar.eta() == doctest::Approx(3725.0 * 3));
  CHECK(bar.tokens_per_second() == doctest::Approx(5000.0 / 3725.0));
  CHECK(contains(bar.line(), "1:02:05 < 3:06:15"));
  // A quarter done: a quarter of the bar.
  CHECK(contains(bar.line(), bar_text(7, 30)));
}

TEST_CASE("progress: bad input is an Error") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  ProgressOptions o;
  o.out = f;
  o.force_tty = false;
  CHECK_THROWS_WITH_AS(ProgressBar(0, o), doctest::Contains("ProgressBar"), xg::Error);
  CHECK_THROWS_WITH_AS(ProgressBar(-5, o), doctest::Contains("total"), xg::Error);
  ProgressOptions bad = o;
  bad.smoothing = 1.0;
  CHECK_THROWS_WITH_AS(ProgressBar(10, bad), doctest::Contains("smoothing"), xg::Error);
  bad = o;
  bad.out = nullptr;
  CHECK_THROWS_AS(ProgressBar(10, bad), xg::Error);
  ProgressBar bar(10, o);
  bar.update(5, 1.0);
  CHECK_THROWS_WITH_AS(bar.update(4, 1.0), doctest::Contains("below the previous step"), xg::Error);
  bar.finish();
  CHECK_THROWS_WITH_AS(bar.update(6, 1.0), doctest::Contains("finish"), xg::Error);
}

TEST_CASE("progress: the destructor ends an unfinished line") {
  TmpFile tmp;
  std::FILE* f = tmp.f;
  FakeClock clock;
  {
    ProgressOptions o;
    o.out = f;
    o.force_tty = true;
    o.clock = clock.fn();
    ProgressBar bar(10, o);
    bar.update(3, 1.0);  // e.g. the loop threw here
  }
  {
    ProgressOptions o;
    o.out = f;
    o.force_tty = true;
    ProgressBar unused(10, o);  // never updated: prints nothing
  }
  const std::string out = contents(f);
  CHECK(count(out, '\r') == 2);  // the first update and the destructor's finish()
  CHECK(count(out, '\n') == 1);
  CHECK(out.back() == '\n');
}
