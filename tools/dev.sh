#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine:
#   bash tools/dev.sh demo   install what is missing, build, run the demo: a char-level LSTM
#                            learns to write C++ from xgrad's own sources (~3 minutes)
#   bash tools/dev.sh test   install what is missing, build, run every test suite
#   bash tools/dev.sh sanitize   the same suites built with clang under AddressSanitizer +
#                            UndefinedBehaviorSanitizer (any report fails the test), then
#                            each libFuzzer target for FUZZ_SECONDS (default 30) on its corpus
#   bash tools/dev.sh fuzz [RUNS]   each fuzz target for RUNS executions (default 1000000)
#   bash tools/dev.sh tsan   the engine suite (versions, tape memory, threads) built with
#                            clang under ThreadSanitizer, in build-tsan
#   bash tools/dev.sh blis   the library and the unit, modules and training suites built
#                            against BLIS instead of OpenBLAS (-Dblas=blis), in build-blis
# test, sanitize and blis end with one line "N passed, N failed, N skipped" counting test
# cases of that run; a failed build stops them with its error.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${XGRAD_BUILD_DIR:-build}
PACKAGES=(g++ meson ninja-build pkg-config python3 xtensor-dev libxtensor-blas-dev libxsimd-dev xtl-dev
          libfmt-dev doctest-dev libopenblas-dev libzip-dev libcli11-dev python3-numpy python3-torch
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


# configure_and_build DIR [meson options...]: configures DIR once, then builds the targets
# in NINJA_TARGETS (default: everything). The output goes to DIR/build.log; on failure its
# end is printed, so a broken build says why.
configure_and_build() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    local log
    log=$(mktemp)
    if ! meson setup "$dir" "$@" >"$log" 2>&1; then
      tail -40 "$log" >&2
      echo "dev.sh: meson setup $dir failed" >&2
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
  fi
  # shellcheck disable=SC2086  # NINJA_TARGETS is a word list (empty: everything)
  if ! ninja -C "$dir" ${NINJA_TARGETS:-} >"$dir/build.log" 2>&1; then
    grep -E -A12 'error|FAILED' "$dir/build.log" | head -80 >&2
    echo "dev.sh: build of $dir failed (full log: $dir/build.log)" >&2
    return 1
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
# The suite `gemm` still runs the AVX2 and AVX-512 GEMM tiles here: tests/meson.build builds
# its four backend files (no xtensor in them) with -mavx2 / -march=native.
build_san() {
  configure_and_build "$SAN_BUILD" -Db_sanitize=address,undefined -Dbench=false \
      -Doptimization=1 -Dnative=false \
      -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all
}
# The library and the engine suite (version counters, tape memory, threads) under
# ThreadSanitizer: clang, only what that suite needs. OpenBLAS's own threads are not
# instrumented, so it runs single-threaded there (OPENBLAS_NUM_THREADS below).
TSAN_BUILD=${XGRAD_TSAN_BUILD_DIR:-build-tsan}
build_tsan() {
  CXX=clang++ NINJA_TARGETS=tests/engine configure_and_build "$TSAN_BUILD" -Db_sanitize=thread -Db_lundef=false \
      -Doptimization=1 -Dnative=false -Dexamples=false -Dbench=false
}
# The library and the libFuzzer targets: clang, ASan + UBSan, coverage-instrumented.
build_fuzz() {
  CXX=clang++ configure_and_build "$FUZZ_BUILD" -Db_sanitize=address,undefined \
      -Db_lundef=false -Doptimization=1 -Dnative=false -Dfuzz=true -Dtests=false -Dexamples=false -Dbench=false \
      -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all
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

build() { configure_and_build "$BUILD"; }

# Only what the three suites need: no examples, benchmarks or xg::dist (whose tests need
# MPI ranks, and say nothing about the BLAS).
BLIS_SUITES=(unit modules training)
build_blis() {
  NINJA_TARGETS="${BLIS_SUITES[*]/#/tests/}" configure_and_build "$BLIS_BUILD" -Dblas=blis -Dexamples=false -Dbench=false
}

case "${1:-}" in
  demo)
    install_missing "${PACKAGES[@]}"
    build
    "$BUILD/examples/char_rnn/char_rnn"
    ;;
  test)
    install_missing "${PACKAGES[@]}"
    rm -f "$BUILD/meson-logs/testlog.json"  # the count below comes from this run only
    build
    status=0
    meson test -C "$BUILD" --print-errorlogs --num-processes 1 || status=$?
    python3 tools/count_tests.py "$BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  sanitize)
    install_missing "${PACKAGES[@]}" "${SAN_PACKAGES[@]}"
    rm -f "$SAN_BUILD/meson-logs/testlog.json" "$FUZZ_BUILD/fuzz-results.json"
    build_san
    build_fuzz
    status=0
    meson test -C "$SAN_BUILD" --print-errorlogs --num-processes 1 --timeout-multiplier 4 --no-suite install \
        || status=$?
    run_fuzzers -max_total_time="${FUZZ_SECONDS:-30}" || status=1
    python3 tools/count_tests.py "$SAN_BUILD/meson-logs/testlog.json" "$FUZZ_BUILD/fuzz-results.json"
    exit $status
    ;;
  tsan)
    install_missing "${PACKAGES[@]}" "${SAN_PACKAGES[@]}"
    rm -f "$TSAN_BUILD/meson-logs/testlog.json"
    build_tsan
    status=0
    OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
      meson test -C "$TSAN_BUILD" --no-rebuild --print-errorlogs --num-processes 1 --timeout-multiplier 4 engine \
      || status=$?
    python3 tools/count_tests.py "$TSAN_BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  blis)
    install_missing "${PACKAGES[@]}" "${BLIS_PACKAGES[@]}"
    rm -f "$BLIS_BUILD/meson-logs/testlog.json"
    build_blis
    status=0
    meson test -C "$BLIS_BUILD" --no-rebuild --print-errorlogs --num-processes 1 "${BLIS_SUITES[@]}" || status=$?
    python3 tools/count_tests.py "$BLIS_BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  fuzz)
    install_missing "${PACKAGES[@]}" "${SAN_PACKAGES[@]}"
    build_fuzz
    run_fuzzers -runs="${2:-1000000}"
    ;;
  *)
    echo "usage: bash tools/dev.sh demo|test|sanitize|tsan|blis|fuzz [runs]" >&2
    exit 2
    ;;
esac
