#!/bin/sh
# check.sh - installs the dependencies, builds, and runs every test that needs no GPU.
#   deploy/check.sh          plain build in build/, then `ctest -LE gpu`
#   deploy/check.sh --asan   the same under AddressSanitizer + UBSan, in build-asan/
# Golden tests read ../shared/testdata (or $SD3_TESTDATA) and skip, saying so, without it.
set -eu
cd "$(dirname "$0")/.."
sh deploy/install-deps.sh
dir=build; opts=""
if [ "${1:-}" = "--asan" ]; then
    dir=build-asan; opts="-DSD3_SANITIZE=ON"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
jobs=$(nproc 2>/dev/null || echo 2)
# shellcheck disable=SC2086
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo $opts >/dev/null
cmake --build "$dir" -j "$jobs"
cd "$dir"
ctest -LE gpu --output-on-failure --timeout 900 -j "$jobs"
