#include "progress.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <limits>

#include <fmt/core.h>

#include "../backend/error.hpp"

namespace xg::training {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-:--:--";
  const auto s = static_cast<std::int64_t>(std::llround(seconds));
  return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

std::string format_rate(double per_second) {
  if (!std::isfinite(per_second) || per_second < 0) return "-";
  static const char* const suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (per_second >= 999.5 && i < 4) {
    per_second /= 1000.0;
    ++i;
  }
  if (i == 0) return fmt::format("{:.0f}", per_second);
  const int decimals = per_second >= 99.95 ? 0 : per_second >= 9.995 ? 1 : 2;
  return fmt::format("{:.{}f}{}", per_second, decimals, suffix[i]);
}

ProgressBar::ProgressBar(std::int64_t total, ProgressOptions opts) : total_(total), opts_(std::move(opts)) {
  if (total_ <= 0) throw Error(fmt::format("ProgressBar: total must be positive, got {}", total_));
  if (!(opts_.smoothing >= 0.0 && opts_.smoothing < 1.0))
    throw Error(fmt::format("ProgressBar: smoothing must be in [0, 1), got {}", opts_.smoothing));
  if (opts_.out == nullptr) throw Error("ProgressBar: out is a null FILE*");
  if (opts_.width < 1) throw Error(fmt::format("ProgressBar: width must be positive, got {}", opts_.width));
  if (!opts_.clock) {
    opts_.clock = [] {
      using namespace std::chrono;
      return duration<double>(steady_clock::now().time_since_epoch()).count();
    };
  }
  tty_ = opts_.force_tty ? *opts_.force_tty : ::isatty(::fileno(opts_.out)) == 1;
  start_ = now();
  last_time_ = start_;
  // A terminal shows the first update at once; a plain log waits for a period to pass.
  last_draw_ = tty_ ? -std::numeric_limits<double>::infinity() : start_;
}

ProgressBar::~ProgressBar() {
  if (finished_ || step_ == 0) return;
  try {
    finish();
  } catch (...) {  // a destructor must not throw; a failed last draw loses nothing
  }
}

double ProgressBar::now() const { return opts_.clock(); }

void ProgressBar::update(std::int64_t step, double loss, std::int64_t tokens_this_step) {
  if (finished_) throw Error("ProgressBar::update: called after finish()");
  if (step < step_) throw Error(fmt::format("ProgressBar::update: step {} is below the previous step {}", step, step_));
  step_ = step;
  tokens_ += tokens_this_step;
  last_loss_ = loss;
  if (std::isfinite(loss)) {
    ema_ = opts_.smoothing * ema_ + (1.0 - opts_.smoothing) * loss;
    ++n_avg_;
  }
  last_time_ = now();
  if (tty_) {
    if (last_time_ - last_draw_ >= opts_.refresh) draw(false);
    return;
  }
  const bool by_steps = opts_.plain_every > 0 && step_ - last_plain_step_ >= opts_.plain_every;
  const bool by_time = opts_.plain_seconds > 0 && last_time_ - last_draw_ >= opts_.plain_seconds;
  // The final step is printed by finish(), so a plain log never shows it twice.
  if ((by_steps || by_time) && step_ < total_) draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  last_time_ = now();
  // A plain log that already has a line for this step (a loop stopped early, right after
  // an update that printed) keeps it as the final line rather than printing the step again.
  if (!tty_ && plain_drawn_ && last_plain_step_ == step_) return;
  draw(true);
}

double ProgressBar::smoothed_loss() const {
  if (n_avg_ == 0) return std::numeric_limits<double>::quiet_NaN();
  return ema_ / (1.0 - std::pow(opts_.smoothing, static_cast<double>(n_avg_)));
}

double ProgressBar::elapsed() const { return last_time_ - start_; }

double ProgressBar::tokens_per_second() const {
  const double t = elapsed();
  return t > 0 ? static_cast<double>(tokens_) / t : 0.0;
}

double ProgressBar::eta() const {
  if (step_ <= 0) return std::numeric_limits<double>::quiet_NaN();
  const std::int64_t left = total_ > step_ ? total_ - step_ : 0;
  return elapsed() / static_cast<double>(step_) * static_cast<double>(left);
}

std::string ProgressBar::line() const {
  const double frac = std::min(1.0, static_cast<double>(step_) / static_cast<double>(total_));
  const int filled = static_cast<int>(frac * opts_.width);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(opts_.width - filled), '.');
  const double shown = n_avg_ > 0 ? smoothed_loss() : last_loss_;
  const std::string loss = step_ == 0 ? std::string("-") : fmt::format("{:.4f}", shown);
  std::string s = opts_.label.empty() ? std::string() : opts_.label + " ";
  s += fmt::format("{}/{} [{}] loss {}", step_, total_, bar, loss);
  if (tokens_ > 0) s += fmt::format("  {} tok/s", format_rate(tokens_per_second()));
  s += fmt::format("  {} < {}", format_duration(elapsed()), format_duration(eta()));
  return s;
}

void ProgressBar::draw(bool final_line) {
  const std::string text = line();
  if (tty_) {
    fmt::print(opts_.out, "\r{}\x1b[K{}", text, final_line ? "\n" : "");
  } else {
    fmt::print(opts_.out, "{}\n", text);
    last_plain_step_ = step_;
    plain_drawn_ = true;
  }
  std::fflush(opts_.out);
  last_draw_ = last_time_;
}

}  // namespace xg::training
