#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine:
#   bash tools/dev.sh demo   install what is missing, build, run the demo
#   bash tools/dev.sh test   install what is missing, build, run every test suite
# It ends (test) with one line "N passed, N failed" counting test cases.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${XGRAD_BUILD_DIR:-build}
PACKAGES=(g++ meson ninja-build pkg-config python3 xtensor-dev libxtensor-blas-dev libxsimd-dev xtl-dev
          libfmt-dev doctest-dev libopenblas-dev libzip-dev)

install_missing() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
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

build() {
  [ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
  ninja -C "$BUILD"
}

case "${1:-}" in
  demo)
    install_missing
    build >/dev/null
    "$BUILD/examples/tiny_rnn"
    ;;
  test)
    install_missing
    build >/dev/null
    status=0
    meson test -C "$BUILD" --print-errorlogs --num-processes 1 || status=$?
    python3 tools/count_tests.py "$BUILD/meson-logs/testlog.json"
    exit $status
    ;;
  *)
    echo "usage: bash tools/dev.sh demo|test" >&2
    exit 2
    ;;
esac
