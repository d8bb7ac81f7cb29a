#pragma once
// A progress bar for training loops, written with fmt to a FILE* (stderr by default):
//
//   train  1200/5000 [#######.................]  loss 1.8342  51.2k tok/s  0:01:03 < 0:03:21
//
// On a terminal (isatty(fileno(out)), or force_tty) the line is redrawn in place ("\r",
// then the line, then "\x1b[K" to clear what a longer previous line left), at most once
// per `refresh` seconds; finish() draws the last state and ends the line. Elsewhere (CI
// logs, files) a plain line ends in '\n' every `plain_every` steps or every
// `plain_seconds`, whichever comes first, and finish() prints the final line (unless the
// last line printed was already of the final step: each step is printed at most once).
//
// The loss shown is an exponential moving average with the bias correction of Adam:
//   m_n = s m_{n-1} + (1 - s) loss_n,  m_0 = 0,   shown = m_n / (1 - s^n)
// so the first value shown is the first loss itself rather than (1 - s) of it.
// Non-finite losses are shown as they come but do not enter the average (one NaN would
// otherwise hide every later value).
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

#include "namespace.hpp"

namespace xg::training {

struct ProgressOptions {
  std::string label = "train";
  std::FILE* out = stderr;  // not owned; must outlive the bar (its destructor may write)
  double refresh = 0.1;          // terminal: minimum seconds between redraws
  std::int64_t plain_every = 100;  // non-terminal: a line every this many steps (0: never by steps)
  double plain_seconds = 30.0;   // non-terminal: ... or when this many seconds passed (0: never)
  double smoothing = 0.98;       // EMA factor s in [0, 1); 0 shows the last loss
  int width = 30;                // bar characters
  std::optional<bool> force_tty = std::nullopt;  // tests: override the isatty() check
  // Seconds since an arbitrary origin; steady_clock when empty. Tests inject a fake one.
  std::function<double()> clock = nullptr;
};

// h:mm:ss (hours unbounded; negative or non-finite shows "-:--:--").
std::string format_duration(double seconds);
// 950, 51.2k, 3.40M: three significant figures with an SI suffix.
std::string format_rate(double per_second);

class ProgressBar {
 public:
  // total <= 0 or smoothing outside [0, 1) or out == nullptr: Error.
  explicit ProgressBar(std::int64_t total, ProgressOptions opts = {});
  // Calls finish() when update() was called and finish() was not (a loop left by an
  // exception still ends its line, so the next message does not overwrite it).
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  // `step` is the number of steps done (1-based: update(total, ...) is the last one).
  // Steps may be skipped; a step below the previous one is an Error.
  void update(std::int64_t step, double loss, std::int64_t tokens_this_step = 0);
  // Draws the final state and ends the line (a plain log: prints the final line unless the
  // last one printed has this step already). Idempotent; later update() is an Error.
  void finish();

  double smoothed_loss() const;  // NaN before the first finite loss
  double tokens_per_second() const;  // average since construction
  double elapsed() const;
  // Seconds left at the current average step rate; NaN before the first step.
  double eta() const;
  bool is_tty() const { return tty_; }
  // The text of the current line (without "\r", clear code or newline).
  std::string line() const;

 private:
  void draw(bool final_line);
  double now() const;

  std::int64_t total_;
  ProgressOptions opts_;
  bool tty_ = false;
  bool finished_ = false;
  double start_ = 0.0;
  double last_draw_ = 0.0;
  double last_time_ = 0.0;  // time of the last update
  std::int64_t step_ = 0;
  std::int64_t last_plain_step_ = 0;
  bool plain_drawn_ = false;  // a plain line was printed (at last_plain_step_)
  std::int64_t tokens_ = 0;
  std::int64_t n_avg_ = 0;     // finite losses averaged
  double ema_ = 0.0;
  double last_loss_ = 0.0;
};

}  // namespace xg::training
