#!/bin/sh
# run_eval.sh SD3CTL COMPONENT --model REL --vectors REL [opts]
# Runs `sd3ctl eval` on golden data. REL paths are relative to the test-data folder:
# $SD3_TESTDATA, or ../shared/testdata beside the source tree. Exit 77 (skip) when absent.
sd3ctl=$1; shift
data=${SD3_TESTDATA:-${SD3_SOURCE_DIR:-.}/../shared/testdata}
if [ ! -d "$data" ]; then
    echo "skip: golden data not found at $data (set SD3_TESTDATA)" >&2
    exit 77
fi
args=""
for a in "$@"; do
    case "$a" in
        @*) a="$data/${a#@}" ;;
    esac
    args="$args '$a'"
done
eval exec "'$sd3ctl'" eval $args
