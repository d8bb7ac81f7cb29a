#pragma once
// The examples' command lines: validators for their flags and the frame of their main.
//
// Every flag is checked while the command line is parsed, before any work: a run that
// would fail after minutes of training (or crash on an empty test set, or turn a NaN
// learning rate into an abort) is refused at once, with one line on stderr naming the flag
// and what it accepts, and CLI11's exit code for the error (105 for a value out of range,
// 104 for one that is not a number, 109 for an unknown flag...). Checks that need the data
// (char_rnn's --prime against the vocabulary) throw CLI::ValidationError before training,
// so they read and exit the same way. An xg::Error during the run itself is one line and
// exit 1.
//
//   CLI::App app{"..."};
//   app.add_option("--lr", lr, "learning rate")->check(examples::cli::positive());
//   return examples::cli::run(app, "seq2seq", argc, argv, [&] { ...; return 0; });
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

namespace examples::cli {

// Upper bounds that keep a typo from asking for terabytes or a million threads; each is far
// above what the examples are meant to run with.
inline constexpr std::int64_t kMaxSteps = 100'000'000;
inline constexpr std::int64_t kMaxWidth = 4096;  // embedding, hidden, attention and channel sizes
inline constexpr std::int64_t kMaxThreads = 256;

// An integer from lo to hi (CLI::Range says "Value abc not in range", or "could not be
// converted" for 1.5: this one says what is accepted and what was given, in decimal only).
inline CLI::Validator integer(std::int64_t lo, std::int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        std::int64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && end == s.data() + s.size() && v >= lo && v <= hi) return "";
        return fmt::format("must be an integer from {} to {}, got '{}'", lo, hi, s);
      },
      fmt::format("in [{}, {}]", lo, hi));
}
// A count of something that must happen at least once.
inline CLI::Validator count(std::int64_t hi = kMaxSteps) { return integer(1, hi); }

// A random seed, 0 to 2^64 - 1: CLI11 alone reads "-1" into a std::uint64_t as 2^64 - 1.
inline CLI::Validator seed() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        std::uint64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && end == s.data() + s.size()) return "";
        return fmt::format("must be an integer from 0 to {}, got '{}'", std::numeric_limits<std::uint64_t>::max(), s);
      },
      "in [0, 2^64)");
}

// A finite real number between lo and hi, each end open or closed. CLI::Range lets NaN
// through (every comparison with it is false), and an infinite or NaN rate turns into an
// abort or a run of NaN losses much later: both are refused here.
inline CLI::Validator real(double lo, bool lo_open, double hi, bool hi_open) {
  const double inf = std::numeric_limits<double>::infinity();
  std::string bounds;
  if (lo > -inf && hi < inf) {
    bounds = fmt::format(" in {}{}, {}{}", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
  } else if (lo > -inf) {
    bounds = fmt::format(" {} {}", lo_open ? ">" : ">=", lo);
  } else if (hi < inf) {
    bounds = fmt::format(" {} {}", hi_open ? "<" : "<=", hi);
  }
  const std::string what = "a finite number" + bounds;
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = s.empty() ? NAN : std::strtod(s.c_str(), &end);
        const bool parsed = !s.empty() && end == s.c_str() + s.size();
        const bool inside = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
        if (parsed && inside) return "";
        return fmt::format("must be {}, got '{}'", what, s);
      },
      "finite" + bounds);
}
inline CLI::Validator finite() {
  const double inf = std::numeric_limits<double>::infinity();
  return real(-inf, false, inf, false);
}
inline CLI::Validator positive() { return real(0, true, std::numeric_limits<double>::infinity(), false); }
inline CLI::Validator non_negative() { return real(0, false, std::numeric_limits<double>::infinity(), false); }
inline CLI::Validator real_in(double lo, double hi) { return real(lo, false, hi, false); }

// An output directory: a missing one is created by the run, but an existing file, or a path
// below one, is refused now rather than when the first figure is written, minutes later.
inline CLI::Validator output_dir() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        namespace fs = std::filesystem;
        if (s.empty()) return "must name a directory, got ''";
        std::error_code ec;
        fs::path p = fs::absolute(s, ec);
        if (ec) p = s;
        // The longest part of the path that exists must be a directory: nothing can be made below a file.
        for (fs::path q = p;; q = q.parent_path()) {
          const fs::file_status st = fs::status(q, ec);
          if (fs::exists(st)) {
            if (fs::is_directory(st)) return "";
            if (q == p) return fmt::format("'{}' exists and is not a directory: give a directory (created if missing)", s);
            return fmt::format("'{}' cannot be created: '{}' is not a directory", s, q.string());
          }
          if (q == q.parent_path()) return "";
        }
      },
      "DIR");
}

// Throws what a validator would have, for a flag that can only be checked against another
// one or against the data: the run exits through app.exit like any other bad flag.
inline void require(bool ok, const std::string& flag, const std::string& message) {
  if (!ok) throw CLI::ValidationError(flag, message);
}

// Parses the command line, then runs `body`. Every error is one line on stderr that starts
// with the example's name: a bad flag exits with CLI11's code (body may still throw
// CLI::ValidationError from require() before it starts working), an xg::Error or any
// other exception with 1. --help prints the help and exits 0.
template <class Body>
int run(CLI::App& app, const char* name, int argc, char** argv, Body&& body) {
  app.failure_message([name](const CLI::App*, const CLI::Error& e) {
    return fmt::format("{}: {} (see --help)\n", name, e.what());
  });
  try {
    app.parse(argc, argv);
    return body();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const xg::Error& e) {
    std::fflush(stdout);  // what the run printed comes before why it stopped
    fmt::print(stderr, "{}: {}\n", name, e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "{}: error: {}\n", name, e.what());
    return 1;
  }
}

}  // namespace examples::cli
