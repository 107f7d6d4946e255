#!/bin/sh
# check.sh - installs the dependencies, builds, and runs every test that needs no GPU.
#   deploy/check.sh          plain build in build/, then `ctest -LE gpu`
#   deploy/check.sh --asan   the same under AddressSanitizer + UBSan, in build-asan/
#   deploy/check.sh --builds build only, every target, warnings as errors, in three more
#                            configurations: Release (-O3) in build-release/, Debug in
#                            build-debug/, clang in build-clang/ (CUDA off: the plain build
#                            compiles it; -Werror covers C and C++ only)
# Golden tests read ../shared/testdata (or $SD3_TESTDATA) and skip, saying so, without it.
set -eu
cd "$(dirname "$0")/.."
sh deploy/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
if [ "${1:-}" = "--builds" ]; then
    for b in release:Release:gcc debug:Debug:gcc clang:RelWithDebInfo:clang; do
        dir=build-${b%%:*}; type=${b#*:}; type=${type%:*}; cc=${b##*:}
        cxx=g++; [ "$cc" = clang ] && cxx=clang++
        start=$(date +%s)
        CC=$cc CXX=$cxx cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" -DSD3_WERROR=ON \
            -DSD3_CUDA=OFF >/dev/null
        cmake --build "$dir" -j "$jobs" >"$dir/build.log" 2>&1 || { cat "$dir/build.log"; exit 1; }
        echo "check: $dir ($type, $cc, -Werror) built in $(( $(date +%s) - start )) s"
    done
    exit 0
fi
dir=build; opts=""
if [ "${1:-}" = "--asan" ]; then
    dir=build-asan; opts="-DSD3_SANITIZE=ON"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
# shellcheck disable=SC2086
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo $opts >/dev/null
cmake --build "$dir" -j "$jobs"
cd "$dir"
ctest -LE gpu --output-on-failure --timeout 900 -j "$jobs"
