#!/bin/bash
# Compile time of a user program (tests/install/hello.cpp) against the in-tree headers:
# compile only (-c, no link), g++ -O2 -std=c++20, median wall time of N runs (default 5).
# The design target is under 2 s (<xgrad/xgrad.hpp> must not pull in xtensor).
#
# Usage: tools/compile_time.sh [runs] [extra compiler flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
shift || true
cxx=${CXX:-g++}
out=$(mktemp -d "${TMPDIR:-/tmp}/xgrad_ctime.XXXXXX")
trap 'rm -rf "$out"' EXIT
# <xgrad/...> from the source tree, as a build tree provides it (<build>/xgrad -> source root).
mkdir "$out/include"
ln -s "$root" "$out/include/xgrad"

times=()
for ((i = 0; i < runs; ++i)); do
  start=$(date +%s.%N)
  "$cxx" -O2 -std=c++20 -I"$out/include" "$@" -c "$root/tests/install/hello.cpp" -o "$out/hello.o"
  end=$(date +%s.%N)
  times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')")
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
printf 'compile_time: %s -O2 -std=c++20 -c tests/install/hello.cpp: median %.2f s over %d runs (runs: %s)\n' \
  "$cxx" "$median" "$runs" "$(printf '%.2f ' "${times[@]}")"
