// xgtest::detail::drop_privileges, the one helper that needs <grp.h> (for setgroups): kept
// out of helpers.hpp, where grp.h's `struct group` would clash with names in the tests.
#include <grp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace xgtest::detail {

std::string drop_privileges(uid_t uid, gid_t gid) {
  if (::setgroups(0, nullptr) != 0) return std::string("setgroups(0): ") + std::strerror(errno);
  if (::setresgid(gid, gid, gid) != 0) return "setresgid(" + std::to_string(gid) + "): " + std::strerror(errno);
  if (::setresuid(uid, uid, uid) != 0) return "setresuid(" + std::to_string(uid) + "): " + std::strerror(errno);
  if (::geteuid() != uid || ::getegid() != gid) return "still privileged after setresuid";
  return "";
}

}  // namespace xgtest::detail
