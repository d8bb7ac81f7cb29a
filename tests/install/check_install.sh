#!/bin/bash
# Install test: configure a separate, minimal build of the source tree with a private
# prefix, `ninja install` it, then build tests/install/hello.cpp against the INSTALLED
# headers and library through pkg-config (as a user would) and run it. Also checks that
# no installed header except xgrad/xtensor.hpp includes xtensor (users must not pay its
# compile time). Touches no existing build directory.
#
# Usage: tests/install/check_install.sh <source dir> [<c++ compiler>]
# Exits non-zero on any failure. Keeps its work directory on failure for inspection.
set -euo pipefail

src=$(cd "${1:?usage: check_install.sh <source dir> [c++]}" && pwd)
cxx=${2:-${CXX:-c++}}
work=$(mktemp -d "${TMPDIR:-/tmp}/xgrad_install.XXXXXX")
ok=0
cleanup() { if [ "$ok" = 1 ]; then rm -rf "$work"; else echo "check_install: work dir kept: $work" >&2; fi; }
trap cleanup EXIT

fail() { echo "check_install: FAIL: $*" >&2; exit 1; }
step() { echo "check_install: $*"; }

step "configuring $src into $work/b (prefix $work/prefix)"
meson setup "$work/b" "$src" --prefix="$work/prefix" \
  -Dtests=false -Dbench=false -Dexamples=false >"$work/setup.log" 2>&1 \
  || { cat "$work/setup.log" >&2; fail "meson setup"; }
step "building and installing"
ninja -C "$work/b" -j 2 install >"$work/install.log" 2>&1 \
  || { tail -50 "$work/install.log" >&2; fail "ninja install"; }

pc=$(find "$work/prefix" -name xgrad.pc -print -quit)
[ -n "$pc" ] || fail "no xgrad.pc installed under $work/prefix"
pcdir=$(dirname "$pc")
inc="$work/prefix/include"
[ -f "$inc/xgrad/xgrad.hpp" ] || fail "xgrad/xgrad.hpp not installed under $inc"
[ -f "$inc/xgrad/xtensor.hpp" ] || fail "xgrad/xtensor.hpp not installed under $inc"
lib=$(find "$work/prefix" -name 'libxgrad.*' -print -quit)
[ -n "$lib" ] || fail "libxgrad not installed"

step "checking that only xgrad/xtensor.hpp includes xtensor"
offenders=$(grep -rlE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](xtensor|xtensor-blas|xsimd|xtl)/' "$inc/xgrad" \
  | grep -v "^$inc/xgrad/xtensor.hpp\$" || true)
[ -z "$offenders" ] || fail "installed headers include xtensor: $offenders"
# Private headers (detail/) must not be installed: they include xtensor and the impl.
[ ! -e "$inc/xgrad/autograd/detail" ] || fail "private headers installed: $inc/xgrad/autograd/detail"

step "building tests/install/hello.cpp against the installed xgrad ($pc)"
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs xgrad) || fail "pkg-config xgrad"
step "pkg-config --cflags --libs xgrad: $flags"
# shellcheck disable=SC2086  # the flags are a word list
"$cxx" -std=c++20 -O1 -Wall -Wextra -Werror "$src/tests/install/hello.cpp" -o "$work/hello" $flags \
  >"$work/hello.log" 2>&1 || { cat "$work/hello.log" >&2; fail "compiling/linking hello.cpp"; }

step "running hello"
rc=0
out=$("$work/hello" 2>&1) || rc=$?
[ "$rc" = 0 ] || fail "hello exited with status $rc (139 = segfault): $out"
[ "$out" = "OK" ] || fail "hello printed '$out', expected 'OK'"

# The opt-in interop header compiles for a user too (xtensor comes from the system).
printf '#include <xgrad/xtensor.hpp>\nint main() { auto a = xg::to_xarray<float>(xg::ones({2})); return a(1) == 1.f ? 0 : 1; }\n' \
  >"$work/interop.cpp"
# shellcheck disable=SC2086
"$cxx" -std=c++20 -O1 "$work/interop.cpp" -o "$work/interop" $flags >"$work/interop.log" 2>&1 \
  || { cat "$work/interop.log" >&2; fail "compiling a program that includes xgrad/xtensor.hpp"; }
"$work/interop" || fail "interop program failed"

ok=1
step "OK"
