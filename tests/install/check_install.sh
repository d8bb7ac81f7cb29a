#!/bin/bash
# The three ways a program builds against xgrad, each checked by building
# tests/install/hello.cpp (and a program using the opt-in xtensor interop header) and running it:
#
#   installed    a separate build of the source tree, configured as a packager would
#                (-Dnative=false, private prefix), `ninja install`ed, then used through
#                `pkg-config xgrad` alone: its Cflags must carry -std=c++20 (the compiler is
#                called without it) and its Libs must not pull MPI in (that is xgrad-dist's).
#                Also: no installed header but xgrad/xtensor.hpp includes xtensor, and no
#                private detail/ header is installed.
#   uninstalled  the build tree the tests run from, through
#                PKG_CONFIG_PATH=<build>/meson-uninstalled.
#   subproject   a fresh meson project with xgrad under subprojects/, using
#                dependency('xgrad') (meson.override_dependency).
#
# Usage: tests/install/check_install.sh <source dir> <build dir> [<c++ compiler>]
# Exits non-zero on any failure. Keeps its work directory on failure for inspection.
set -euo pipefail

src=$(cd "${1:?usage: check_install.sh <source dir> <build dir> [c++]}" && pwd)
build=$(cd "${2:?usage: check_install.sh <source dir> <build dir> [c++]}" && pwd)
cxx=${3:-${CXX:-c++}}
work=$(mktemp -d "${TMPDIR:-/tmp}/xgrad_install.XXXXXX")
ok=0
cleanup() { if [ "$ok" = 1 ]; then rm -rf "$work"; else echo "check_install: work dir kept: $work" >&2; fi; }
trap cleanup EXIT

fail() { echo "check_install: FAIL: $*" >&2; exit 1; }
step() { echo "check_install: $*"; }

# build_and_run NAME FLAGS...: hello.cpp and the interop program, compiled without -std
# (whatever the flags lack, the compiler's default, C++17, would show), then run.
build_and_run() {
  local name=$1
  shift
  # shellcheck disable=SC2068  # the flags are a word list
  "$cxx" -O1 -Wall -Wextra -Werror "$src/tests/install/hello.cpp" -o "$work/hello_$name" $@ \
    >"$work/hello_$name.log" 2>&1 || { cat "$work/hello_$name.log" >&2; fail "$name: compiling/linking hello.cpp"; }
  local rc=0 out
  out=$("$work/hello_$name" 2>&1) || rc=$?
  [ "$rc" = 0 ] || fail "$name: hello exited with status $rc (139 = segfault): $out"
  [ "$out" = "OK" ] || fail "$name: hello printed '$out', expected 'OK'"
  printf '#include <xgrad/xtensor.hpp>\nint main() { auto a = xg::to_xarray<float>(xg::ones({2})); return a(1) == 1.f ? 0 : 1; }\n' \
    >"$work/interop.cpp"
  # shellcheck disable=SC2068
  "$cxx" -O1 "$work/interop.cpp" -o "$work/interop_$name" $@ >"$work/interop_$name.log" 2>&1 \
    || { cat "$work/interop_$name.log" >&2; fail "$name: compiling a program that includes xgrad/xtensor.hpp"; }
  "$work/interop_$name" || fail "$name: interop program failed"
  step "$name: OK"
}

# --- installed -------------------------------------------------------------------------
step "installed: configuring $src into $work/b (prefix $work/prefix, -Dnative=false)"
meson setup "$work/b" "$src" --prefix="$work/prefix" -Dnative=false \
  -Dtests=false -Dbench=false -Dexamples=false >"$work/setup.log" 2>&1 \
  || { cat "$work/setup.log" >&2; fail "meson setup"; }
ninja -C "$work/b" -j 2 install >"$work/install.log" 2>&1 \
  || { tail -50 "$work/install.log" >&2; fail "ninja install"; }
pc=$(find "$work/prefix" -name xgrad.pc -print -quit)
[ -n "$pc" ] || fail "no xgrad.pc installed under $work/prefix"
pcdir=$(dirname "$pc")
inc="$work/prefix/include"
[ -f "$inc/xgrad/xgrad.hpp" ] || fail "xgrad/xgrad.hpp not installed under $inc"
[ -f "$inc/xgrad/xtensor.hpp" ] || fail "xgrad/xtensor.hpp not installed under $inc"
[ -f "$inc/xgrad/nn/rnn.hpp" ] || fail "xgrad/nn/rnn.hpp not installed under $inc"
[ -f "$inc/xgrad/backend/error.hpp" ] || fail "xgrad/backend/error.hpp not installed under $inc"
offenders=$(grep -rlE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](xtensor|xtensor-blas|xsimd|xtl)/' "$inc/xgrad" \
  | grep -v "^$inc/xgrad/xtensor.hpp\$" || true)
[ -z "$offenders" ] || fail "installed headers include xtensor: $offenders"
privates=$(find "$inc/xgrad" -type d -name detail)
[ -z "$privates" ] || fail "private headers installed: $privates"
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs xgrad) || fail "pkg-config xgrad"
step "installed: pkg-config --cflags --libs xgrad: $flags"
case " $flags " in *" -std=c++20 "*) ;; *) fail "xgrad.pc's Cflags lack -std=c++20" ;; esac
case "$flags" in *mpi*) fail "xgrad.pc pulls MPI into programs that do not use xg::dist: $flags" ;; esac
# shellcheck disable=SC2086
build_and_run installed $flags

# --- uninstalled -----------------------------------------------------------------------
[ -f "$build/meson-uninstalled/xgrad-uninstalled.pc" ] || fail "no $build/meson-uninstalled/xgrad-uninstalled.pc"
flags=$(PKG_CONFIG_PATH="$build/meson-uninstalled" pkg-config --cflags --libs xgrad) || fail "pkg-config xgrad (uninstalled)"
step "uninstalled: pkg-config --cflags --libs xgrad: $flags"
# shellcheck disable=SC2086
build_and_run uninstalled $flags

# --- subproject ------------------------------------------------------------------------
mkdir -p "$work/sub/subprojects"
ln -s "$src" "$work/sub/subprojects/xgrad"
cp "$src/tests/install/hello.cpp" "$work/sub/hello.cpp"
cat >"$work/sub/meson.build" <<'MESON'
project('uses_xgrad', 'cpp', default_options: ['cpp_std=c++20'])
xgrad_dep = dependency('xgrad', fallback: 'xgrad',
  default_options: ['tests=false', 'bench=false', 'examples=false', 'native=false', 'mpi=disabled'])
executable('hello', 'hello.cpp', dependencies: xgrad_dep)
MESON
step "subproject: configuring $work/sub"
meson setup "$work/sub/b" "$work/sub" >"$work/sub_setup.log" 2>&1 \
  || { cat "$work/sub_setup.log" >&2; fail "subproject: meson setup"; }
ninja -C "$work/sub/b" -j 2 >"$work/sub_build.log" 2>&1 \
  || { tail -50 "$work/sub_build.log" >&2; fail "subproject: ninja"; }
rc=0
out=$("$work/sub/b/hello" 2>&1) || rc=$?
[ "$rc" = 0 ] && [ "$out" = "OK" ] || fail "subproject: hello exited $rc and printed '$out'"
step "subproject: OK"

ok=1
step "OK"
