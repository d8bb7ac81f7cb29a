#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine:
#   bash tools/dev.sh demo   install what is missing, build, run the demo: a char-level LSTM
#                            learns to write C++ from xgrad's own sources (~3 minutes)
#   bash tools/dev.sh test   install what is missing, build, run every test suite
#   bash tools/dev.sh sanitize   the same suites built with clang under AddressSanitizer +
#                            UndefinedBehaviorSanitizer (any report fails the test), then
#                            each libFuzzer target for FUZZ_SECONDS (default 30) on its corpus
#   bash tools/dev.sh fuzz [RUNS]   each fuzz target for RUNS executions (default 1000000)
#   bash tools/dev.sh blis   the library and the unit, modules and training suites built
#                            against BLIS instead of OpenBLAS (-Dblas=blis), in build-blis
# test, sanitize and blis end with one line "N passed, N failed" counting test cases.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${XGRAD_BUILD_DIR:-build}
PACKAGES=(g++ meson ninja-build pkg-config python3 xtensor-dev libxtensor-blas-dev libxsimd-dev xtl-dev
          libfmt-dev doctest-dev libopenblas-dev libzip-dev libcli11-dev
          libopenmpi-dev openmpi-bin)

install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

BLIS_BUILD=${XGRAD_BLIS_BUILD_DIR:-build-blis}
BLIS_PACKAGES=(libblis-dev)

SAN_BUILD=${XGRAD_SAN_BUILD_DIR:-build-san}
FUZZ_BUILD=${XGRAD_FUZZ_BUILD_DIR:-build-fuzz}
SAN_PACKAGES=(clang libclang-rt-14-dev)

# The suites and examples under ASan + UBSan, with UBSan findings fatal (by default UBSan
# only prints). GCC here: clang 14 cannot capture structured bindings in lambdas, which
# the tests use freely. -O1 and no -march=native: instrumented xtensor code at -O3 with
# AVX-512 takes GCC tens of minutes per file; -O1 is what the sanitizer docs recommend.
build_san() {
  [ -f "$SAN_BUILD/build.ninja" ] || meson setup "$SAN_BUILD" -Db_sanitize=address,undefined -Dbench=false \
      -Doptimization=1 -Dnative=false \
      -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all >/dev/null
  ninja -C "$SAN_BUILD"
}
# The library and the libFuzzer targets: clang, ASan + UBSan, coverage-instrumented.
build_fuzz() {
  [ -f "$FUZZ_BUILD/build.ninja" ] || CXX=clang++ meson setup "$FUZZ_BUILD" -Db_sanitize=address,undefined \
      -Db_lundef=false -Doptimization=1 -Dnative=false -Dfuzz=true -Dtests=false -Dexamples=false -Dbench=false \
      -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all >/dev/null
  ninja -C "$FUZZ_BUILD"
}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Runs each fuzz target on a scratch copy of its corpus (the repository's stays as it is).
# Each target's outcome also goes to $FUZZ_BUILD/fuzz-results.json, one line per target in
# meson's testlog format, so tools/count_tests.py counts the targets as test cases.
run_fuzzers() {
  local status=0 t
  : >"$FUZZ_BUILD/fuzz-results.json"
  for t in npy npz checkpoint text; do
    local work
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$t/." "$work/"
    if "$FUZZ_BUILD/fuzz/fuzz_$t" "$work" "$@" -malloc_limit_mb=512 -print_final_stats=1 \
        >"$FUZZ_BUILD/fuzz_$t.log" 2>&1; then
      echo "fuzz_$t: $(grep -o 'number_of_executed_units: *[0-9]*' "$FUZZ_BUILD/fuzz_$t.log" | grep -o '[0-9]*$') runs, no crash" >&2
      echo "{\"name\": \"fuzz_$t\", \"result\": \"OK\"}" >>"$FUZZ_BUILD/fuzz-results.json"
    else
      echo "{\"name\": \"fuzz_$t\", \"result\": \"FAIL\"}" >>"$FUZZ_BUILD/fuzz-results.json"
      echo "fuzz_$t: FAILED (log: $FUZZ_BUILD/fuzz_$t.log)" >&2
      tail -40 "$FUZZ_BUILD/fuzz_$t.log" >&2
      status=1
    fi
    rm -rf "$work"
  done
  return $status
}

build() {
  [ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
  ninja -C "$BUILD"
}

# Only what the three suites need: no examples, benchmarks or xg::dist (whose tests need
# MPI ranks, and say nothing about the BLAS).
BLIS_SUITES=(unit modules training)
build_blis() {
  [ -f "$BLIS_BUILD/build.ninja" ] || meson setup "$BLIS_BUILD" -Dblas=blis -Dexamples=false -Dbench=false \
      >/dev/null
  ninja -C "$BLIS_BUILD" "${BLIS_SUITES[@]/#/tests/}"
}

case "${1:-}" in
  demo)
    install_missing "${PACKAGES[@]}"
    build >/dev/null
    "$BUILD/examples/char_rnn/char_rnn"
    ;;
  test)
    install_missing "${PACKAGES[@]}"
    build >/dev/null
    status=0
    meson test -C "$BUILD" --print-errorlogs --num-processes 1 || status=$?
    python3 tools/count_tests.py "$BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  sanitize)
    install_missing "${PACKAGES[@]}" "${SAN_PACKAGES[@]}"
    build_san >/dev/null
    build_fuzz >/dev/null
    status=0
    meson test -C "$SAN_BUILD" --print-errorlogs --num-processes 1 --timeout-multiplier 4 --no-suite install \
        || status=$?
    run_fuzzers -max_total_time="${FUZZ_SECONDS:-30}" || status=1
    python3 tools/count_tests.py "$SAN_BUILD/meson-logs/testlog.json" "$FUZZ_BUILD/fuzz-results.json"
    exit $status
    ;;
  blis)
    install_missing "${PACKAGES[@]}" "${BLIS_PACKAGES[@]}"
    build_blis >/dev/null
    status=0
    meson test -C "$BLIS_BUILD" --no-rebuild --print-errorlogs --num-processes 1 "${BLIS_SUITES[@]}" || status=$?
    python3 tools/count_tests.py "$BLIS_BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  fuzz)
    install_missing "${PACKAGES[@]}" "${SAN_PACKAGES[@]}"
    build_fuzz >/dev/null
    run_fuzzers -runs="${2:-1000000}"
    ;;
  *)
    echo "usage: bash tools/dev.sh demo|test|sanitize|blis|fuzz [runs]" >&2
    exit 2
    ;;
esac
