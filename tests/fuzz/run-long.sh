#!/bin/sh
# run-long.sh - builds every libFuzzer target with clang (-fsanitize=fuzzer,address,undefined,
# tests/cmake/fuzz.cmake) and runs each for a given time on a copy of its corpus, printing
# executions and coverage; new crashers land in BUILD/fuzz-out/<target>/crash-* (copy them
# into tests/fuzz/corpus-<x>/ with the fix, so ctest replays them from then on).
#   tests/fuzz/run-long.sh [SECONDS] [TARGET...]      default 600 s each, every target
#   BUILD=/tmp/b JOBS=2 NICE=10 tests/fuzz/run-long.sh 120 fuzz_png
#   NO_BUILD=1: run the binaries already in BUILD/tests as they are
# Exit 0 when no target found a crash, 1 otherwise, 2 when the build failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
secs=${1:-600}
[ $# -gt 0 ] && shift
build=${BUILD:-$src/build-fuzz}
jobs=${JOBS:-2}
nice=${NICE:-10}

command -v clang >/dev/null 2>&1 || { echo "run-long: clang not installed" >&2; exit 2; }
if [ $# -gt 0 ]; then
    targets="$*"
else
    targets=$(for f in "$here"/fuzz_*.c; do basename "$f" .c; done)
fi
if [ -z "${NO_BUILD:-}" ]; then
    CC=clang CXX=clang++ cmake -S "$src" -B "$build" -DSD3_FUZZ=ON -DSD3_CUDA=OFF \
        -DSD3_WERROR=OFF > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 2; }
    lf=""
    for t in $targets; do lf="$lf ${t}_lf"; done
    # shellcheck disable=SC2086 # one word per target
    nice -n "$nice" cmake --build "$build" -j"$jobs" --target $lf > "$build.build.log" 2>&1 ||
        { tail -30 "$build.build.log"; exit 2; }
fi

# The corpus folder of a target (the areas named some of theirs in short).
corpus_of() {
    case $1 in
    fuzz_tokenizers) echo "$here/corpus-tok" ;;
    fuzz_http_body) echo "$here/corpus-http" ;;
    fuzz_cluster_file) echo "$here/corpus-cluster" ;;
    *) echo "$here/corpus-${1#fuzz_}" ;;
    esac
}

status=0
printf '%-20s %8s %12s %10s %8s %8s %s\n' target seconds executions exec/s cov ft crashes
for t in $targets; do
    out=$build/fuzz-out/$t
    rm -rf "$out"
    mkdir -p "$out/corpus"
    seeds=$(corpus_of "$t")
    # The first folder is the working corpus (new inputs go there); the seeds stay as they are.
    nice -n "$nice" "$build/tests/${t}_lf" -max_total_time="$secs" -print_final_stats=1 \
        -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$out/" "$out/corpus" "$seeds" \
        > "$out/log" 2>&1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$out/log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$out/log" | tail -1 | cut -d' ' -f2)
    crashes=$(find "$out" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
        -o -name 'oom-*' \) | wc -l)
    printf '%-20s %8s %12s %10s %8s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "$crashes"
    if [ "$crashes" -gt 0 ]; then
        status=1
        grep -m3 -E 'ERROR: |SUMMARY: |runtime error' "$out/log" | sed 's/^/    /'
        find "$out" -maxdepth 1 -name '*-*' -type f | sed 's/^/    artifact: /'
    fi
done
exit $status
