#pragma once
// For the file loaders' tests: a body run where a hang or a huge allocation cannot take
// the suite down with it.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>

#include "helpers.hpp"

namespace xgtest {

// ---- a body that must neither hang nor take much memory -----------------------------------
//
// run_in_child(body, seconds) runs body in a fork()ed child under an alarm of `seconds`, so
// a regression that blocks (a load of a FIFO) or allocates gigabytes (a zip bomb) fails
// the case instead of hanging or killing the suite. Returns the body's failures ("" when
// none), a timeout or a killed child among them. *peak_growth, when given, gets how far
// the child's peak RSS (VmHWM) rose while the body ran. The body runs single-threaded:
// plain file I/O only.
inline long long vm_hwm_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return -1;
}

inline std::string run_in_child(const std::function<void(Expect&)>& body, unsigned seconds,
                                long long* peak_growth = nullptr) {
  int fds[2];
  if (::pipe(fds) != 0) return std::string("pipe: ") + std::strerror(errno);
  std::fflush(nullptr);
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return std::string("fork: ") + std::strerror(errno);
  }
  if (pid == 0) {  // reports the growth, a newline, then the failures
    ::close(fds[0]);
    ::alarm(seconds);
    Expect expect;
    const long long before = vm_hwm_bytes();
    try {
      body(expect);
    } catch (const std::exception& e) {
      expect(false, std::string("the body threw: ") + e.what());
    } catch (...) {
      expect(false, "the body threw a non-std exception");
    }
    const long long after = vm_hwm_bytes();
    detail::write_all(fds[1], std::to_string(after - before) + "\n" + expect.failures());
    ::_exit(0);
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
    return "the child was killed by signal " + std::to_string(WTERMSIG(status)) +
           (WTERMSIG(status) == SIGALRM ? " (its " + std::to_string(seconds) + " s alarm: a hang?)" : "");
  const std::size_t nl = report.find('\n');
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || nl == std::string::npos)
    return "the child ended without a verdict (exit status " + std::to_string(status) + ")";
  if (peak_growth) *peak_growth = std::atoll(report.c_str());
  return report.substr(nl + 1);
}

// The failures of loading a FIFO nobody writes through `load` (in a child under a 10 s
// alarm: before, open() blocked forever): "" when it was an IOError naming the path and
// "is a FIFO".
template <class Load>
std::string fifo_load_failures(const std::string& fifo, Load&& load) {
  return run_in_child(
      [&](Expect& expect) {
        try {
          load(fifo);
          expect(false, "a FIFO loaded");
        } catch (const xg::IOError& e) {
          const std::string msg = e.what();
          expect(msg.find(fifo) != std::string::npos && msg.find("is a FIFO") != std::string::npos, msg);
        }
      },
      10);
}

}  // namespace xgtest
