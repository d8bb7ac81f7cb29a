#pragma once
// Shared test helpers: value comparison, the one gradcheck helper every op test uses,
// temporary directories, and running a body as an unprivileged user (permission tests).
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <xgrad/xgrad.hpp>

namespace xgtest {

// Whether this build runs under AddressSanitizer (GCC's and clang's spellings): some
// cases only mean something there, others (RSS) are skipped there, counted either way.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

// Whether `body` dies in a fork()ed child with AddressSanitizer's report (the child's
// stderr, the report, goes to /dev/null; with or without abort_on_error the child must not
// exit 0).
template <class F>
bool asan_reports(F&& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (std::freopen("/dev/null", "w", stderr) == nullptr) ::_exit(3);
    body();
    ::_exit(0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
}

// Every element of `t` equals `want` within atol + rtol * |want|.
inline void check_values(const xg::Tensor& t, const std::vector<double>& want, double atol = 1e-6,
                         double rtol = 1e-6) {
  const std::vector<double> got = t.to_vector<double>();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
    if (std::isinf(want[i])) {
      CHECK(got[i] == want[i]);
    } else {
      CHECK(std::fabs(got[i] - want[i]) <= atol + rtol * std::fabs(want[i]));
    }
  }
}

inline void check_close(const xg::Tensor& a, const xg::Tensor& b, double atol = 1e-6, double rtol = 1e-6) {
  REQUIRE(a.shape() == b.shape());
  check_values(a, b.to_vector<double>(), atol, rtol);
}

// Float64 gradcheck of fn over inputs; fails the test with the report.
inline void gradcheck_ok(const std::function<xg::Tensor(const std::vector<xg::Tensor>&)>& fn,
                         const std::vector<xg::Tensor>& inputs, xg::GradcheckOptions opts = {}) {
  const xg::GradcheckReport r = xg::gradcheck(fn, inputs, opts);
  INFO(r.str());
  CHECK(r.passed);
  CHECK(r.checked > 0);
}

// Random float64 input of the given shape, values in [lo, hi) (keep it off kinks).
inline xg::Tensor rnd(const xg::Shape& s, double lo = -1.0, double hi = 1.0, std::uint64_t seed = 1) {
  xg::Generator g(seed + static_cast<std::uint64_t>(s.numel()) * 7919);
  return xg::uniform(s, lo, hi, xg::f64, &g);
}

// f() must throw E whose message contains every needle (op name, shapes...).
template <class E, class F>
void check_throws_msg(F&& f, const std::vector<std::string>& needles) {
  bool thrown = false;
  try {
    f();
  } catch (const E& e) {
    thrown = true;
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      INFO("message: " << msg << " | expected to contain: " << n);
      CHECK(msg.find(n) != std::string::npos);
    }
  } catch (const std::exception& e) {
    thrown = true;
    FAIL("wrong exception type: " << e.what());
  }
  CHECK_MESSAGE(thrown, "expected an exception");
}

// The one-needle form of check_throws_msg.
template <class E, class F>
void throws_naming(F&& f, const std::string& needle) {
  check_throws_msg<E>(std::forward<F>(f), {needle});
}

// The message of the E that f() throws (a failed check, and "", if it throws nothing
// or something else).
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("threw a different exception: " << e.what());
    return "";
  }
  FAIL_CHECK("did not throw");
  return "";
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Whether the tests that hand files to numpy can run: they are skipped (and counted as
// skipped) where /usr/bin/python3 has no numpy. Evaluated once per test case at start-up.
inline bool python_numpy_available() {
  return ::access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

// A fresh directory per use, removed (with everything in it, even where a test took
// its permissions away) at the end of the scope.
class TempDir {
 public:
  TempDir() : TempDir("") {}
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("xgrad_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + tag);
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    restore_permissions(path);
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (path / name).string(); }
  // Writes `bytes` to `rel` below the directory (making its parents); returns the path.
  std::string write(const std::string& rel, const std::string& bytes) const {
    const std::filesystem::path p = path / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
  // Names of everything in the directory, sorted: catches leftover temporary files.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  // Makes the directory and everything in it belong to the user run_as_unprivileged runs
  // as (see there), so the body can create, read and chmod below it. No-op unless root.
  void hand_to_unprivileged() const;

  std::filesystem::path path;

 private:
  // Gives the owner rwx on every directory below p again, so that remove_all can empty it.
  static void restore_permissions(const std::filesystem::path& p) {
    std::error_code ec;
    if (!std::filesystem::is_directory(std::filesystem::symlink_status(p, ec))) return;
    std::filesystem::permissions(p, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    for (const auto& e : std::filesystem::directory_iterator(p, ec)) restore_permissions(e.path());
  }
};

inline std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---- running a test body as an unprivileged user -------------------------------------------
//
// Root reads and writes whatever the permission bits say, and CI runs as root: a test of
// what happens when a file or directory is unreadable or unwritable must run under
// another identity. run_as_unprivileged(body) does that: as root it fork()s, the child drops
// to uid/gid 65534 ("nobody": setgroups(0), setresgid, setresuid, which also clears every
// capability), runs body and sends its verdict back through a pipe; not as root, it runs
// body in-process (the permission bits already apply). doctest's macros cannot be used in
// the child, so body reports through an Expect, and the caller checks the returned string:
//
//   TEST_CASE("..." * doctest::skip(!xgtest::can_drop_privileges())) {
//     TempDir dir;
//     dir.hand_to_unprivileged();
//     const std::string failures = xgtest::run_as_unprivileged([&](xgtest::Expect& expect) {
//       expect(!can_read(...), "an unreadable file was read");
//     });
//     CHECK_MESSAGE(failures.empty(), failures);
//   }
//
// The skip decorator makes a machine where privileges cannot be dropped (a container that
// forbids setuid, an unmapped uid 65534, a TMPDIR that nobody cannot enter) count the case
// as skipped, never as passed. The body runs in a single-threaded child, under a 60 s
// alarm: file operations are fine, work for xgrad's thread pool is not.

inline constexpr uid_t kUnprivilegedUid = 65534;
inline constexpr gid_t kUnprivilegedGid = 65534;

// The failures a run_as_unprivileged body found; empty when everything held.
class Expect {
 public:
  void operator()(bool ok, const std::string& what) {
    if (!ok) failures_ += (failures_.empty() ? "" : "\n") + what;
  }
  const std::string& failures() const { return failures_; }

 private:
  std::string failures_;
};

namespace detail {

// In the child: setgroups(0), setresgid(gid), setresuid(uid); "" or why it failed.
// Defined in unprivileged.cpp (part of the test_main library).
std::string drop_privileges(uid_t uid, gid_t gid);

inline void write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// Runs body in a child that first drops privileges. Returns {ran, failures}: ran is false
// (and failures says why) when the child could not drop them.
inline std::pair<bool, std::string> run_in_unprivileged_child(const std::function<void(Expect&)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return {false, std::string("pipe: ") + std::strerror(errno)};
  std::fflush(nullptr);
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return {false, std::string("fork: ") + std::strerror(errno)};
  }
  if (pid == 0) {  // the child: reports 'S' + why it could not drop, or 'R' + failures
    ::close(fds[0]);
    ::alarm(60);
    const std::string why = drop_privileges(kUnprivilegedUid, kUnprivilegedGid);
    if (!why.empty()) {
      write_all(fds[1], "S" + why);
      ::_exit(0);
    }
    Expect expect;
    try {
      body(expect);
    } catch (const std::exception& e) {
      expect(false, std::string("the body threw: ") + e.what());
    } catch (...) {
      expect(false, "the body threw a non-std exception");
    }
    write_all(fds[1], "R" + expect.failures());
    ::_exit(0);  // no atexit handlers, no destructors of the parent's objects
  }
  ::close(fds[1]);
  std::string report;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    report.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (WIFSIGNALED(status))
    return {true, "the unprivileged child was killed by signal " + std::to_string(WTERMSIG(status)) +
                      (WTERMSIG(status) == SIGALRM ? " (its 60 s alarm: a hang?)" : "")};
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || report.empty())
    return {true, "the unprivileged child ended without a verdict (exit status " + std::to_string(status) + ")"};
  if (report[0] == 'S') return {false, report.substr(1)};
  return {true, report.substr(1)};
}

// Why permission tests cannot run here ("" when they can): the identity run_as_unprivileged
// runs a body as (uid 65534 for root, else the user itself) must be able to work in a
// TempDir handed to it and must then be refused a file it made unreadable (not so for root,
// nor for a user holding CAP_DAC_OVERRIDE). Printed once to stderr when they cannot.
inline std::string unprivileged_unavailable_reason() {
  try {
    TempDir dir("_probe");
    dir.hand_to_unprivileged();
    const std::string file = (dir.path / "locked").string();
    const auto probe = [&](Expect& expect) {
      {
        std::ofstream out(file);
        out << "x";
        expect(static_cast<bool>(out), "cannot write in a TempDir handed to it (is TMPDIR traversable?)");
      }
      std::error_code ec;
      std::filesystem::permissions(file, std::filesystem::perms::none, ec);
      expect(!ec, "chmod " + file + ": " + ec.message());
      expect(!std::ifstream(file), "it opened a file of mode 000: permissions are not enforced for it");
    };
    if (::geteuid() != 0) {
      Expect expect;
      probe(expect);
      return expect.failures();
    }
    const auto [ran, failures] = run_in_unprivileged_child(probe);
    if (!ran) return "cannot drop privileges: " + failures;
    return failures;
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace detail

// Whether run_as_unprivileged can run a body where permissions apply: when the probe above
// succeeds (probed once per process).
inline bool can_drop_privileges() {
  static const bool ok = [] {
    const std::string why = detail::unprivileged_unavailable_reason();
    if (!why.empty()) std::cerr << "xgtest: permission tests skipped: " << why << "\n";
    return why.empty();
  }();
  return ok;
}

// Runs body without root's privileges (see above); returns its failures, "" when none.
// Where privileges cannot be dropped that is itself the failure: gate the test case with
// doctest::skip(!can_drop_privileges()) so such a machine counts it as skipped.
inline std::string run_as_unprivileged(const std::function<void(Expect&)>& body) {
  if (::geteuid() != 0) {
    Expect expect;
    try {
      body(expect);
    } catch (const std::exception& e) {
      expect(false, std::string("the body threw: ") + e.what());
    }
    return expect.failures();
  }
  const auto [ran, failures] = detail::run_in_unprivileged_child(body);
  if (!ran) return "run_as_unprivileged: cannot drop privileges: " + failures;
  return failures;
}

inline void TempDir::hand_to_unprivileged() const {
  if (::geteuid() != 0) return;
  auto give = [](const std::filesystem::path& p) {
    if (::lchown(p.c_str(), kUnprivilegedUid, kUnprivilegedGid) != 0)
      throw std::runtime_error("TempDir: chown " + p.string() + ": " + std::strerror(errno));
  };
  give(path);
  for (const auto& e : std::filesystem::recursive_directory_iterator(path)) give(e.path());
}

}  // namespace xgtest
