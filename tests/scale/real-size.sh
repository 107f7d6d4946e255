#!/bin/sh
# real-size.sh - a whole cluster on this machine serving real-size random weights (issue 13).
# Not part of CI: it writes ~16 GB (SD3-medium f16 with T5-XXL) or ~18 GB (SD3.5-large bf16
# without T5) of random weights and runs for 20-40 minutes on 2 cores.
#
#   tests/scale/real-size.sh medium    controller + encoder + 2 mmdit ranges + vae; 3 requests
#                                      512x512, 4 steps: one alone, then 3 in flight together;
#                                      every PNG byte-equal to `sd3ctl generate` in one process
#   tests/scale/real-size.sh large     SD3.5-large, 512x512, 2 steps, 3 ranges, encoder --no-t5
#
# Environment: MODELS (where the weights go, default /tmp/sd3-real), SD3_TOKENIZERS (the real
# tokenizer files; default ../shared/testdata/tokenizers), STEPS, PRECISION (passed to both
# sides when set). It prints per-stage compute time per step, hop latency and bytes per step,
# time to first step, totals, peak RSS per process and images per minute, from the logs.
set -eu
cd "$(dirname "$0")/../.."
root=$(pwd)
which=${1:-medium}
models=${MODELS:-/tmp/sd3-real}
tok=${SD3_TOKENIZERS:-$root/../shared/testdata/tokenizers}
[ -x build/sd3d ] && [ -x build/sd3ctl ] || { echo "real-size: build first (cmake --build build)"; exit 2; }
[ -d "$tok/clip" ] || { echo "real-size: no tokenizer files at $tok (set SD3_TOKENIZERS)"; exit 2; }
prec=""
[ -n "${PRECISION:-}" ] && prec="--precision $PRECISION"
case $which in
medium)
    arch=sd3-medium; dtype=f16; mkopts=""; steps=${STEPS:-4}; genopts=""
    nodes='[encoder enc0]
[mmdit dit0]
range = 0:12
[mmdit dit1]
range = 12:24
[vae vae0]'
    ;;
large)
    arch=sd3.5-large; dtype=bf16; mkopts="--no-t5"; steps=${STEPS:-2}; genopts="--no-t5"
    nodes='[encoder enc0]
[mmdit dit0]
range = 0:12
[mmdit dit1]
range = 12:25
[mmdit dit2]
range = 25:38
[vae vae0]'
    ;;
*) echo "usage: tests/scale/real-size.sh medium|large"; exit 2 ;;
esac
model=$models/$which
run=$models/run-$which
mkdir -p "$models" "$run/bin"
# A private copy of the binaries: a rebuild of build/ during the run cannot mix two builds
# in one comparison (sd3ctl up starts the sd3d beside it).
cp build/sd3d build/sd3ctl "$run/bin/"
bin=$run/bin
if [ ! -f "$model/.complete" ]; then
    echo "== writing random $arch weights ($dtype) to $model"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$bin/sd3ctl" mkmodel --arch $arch --layout sd3.5 --dtype $dtype $mkopts -o "$model"
    touch "$model/.complete"
    echo "   written in $(( $(date +%s) - t0 )) s: $(du -sh "$model" | cut -f1)"
fi

# The same three requests in both runs: one prompt (the encoder's cache serves the 2nd and
# 3rd in the cluster, as it would for users sharing an encoder), seeds 1..3.
prompt="a lovely cat sitting on a red sofa"
echo "== one process: sd3ctl generate, the reference bytes"
for s in 1 2 3; do
    [ "$which" = large ] && [ $s -gt 1 ] && break
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    /usr/bin/time -f "   peak RSS %M KiB" "$bin/sd3ctl" generate "$prompt" -o "$run/local-$s.png" \
        --model "$model" --tokenizers "$tok" --size 512x512 --steps "$steps" --seed $s \
        $genopts $prec --quiet
    echo "   seed $s: $(echo "$(date +%s.%N) - $t0" | bc) s"
done

cluster=$run/cluster.cluster
cat > "$cluster" <<EOF
[cluster]
model = $model
tokenizers = $tok
run_dir = $run/cluster
threads = 1
${PRECISION:+precision = $PRECISION}

[controller]
listen = tcp://127.0.0.1:*
stages = tcp://127.0.0.1:*
inflight = 4
client_timeout_ms = 600000

$nodes
EOF
echo "== cluster: $(grep -c '^\[' "$cluster") sections, threads = 1 per process"
t0=$(date +%s.%N)
SD3_LOG=info "$bin/sd3ctl" up "$cluster" --timeout 1800
echo "   up and ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
ctl=$(sed -n 's/^client=//p' "$run/cluster/controller.addr")
fail=0
gen() { # seed, request id
    # shellcheck disable=SC2086
    "$bin/sd3ctl" generate "$prompt" -o "$run/cluster-$2.png" --controller "$ctl" \
        --size 512x512 --steps "$steps" --seed "$1" --request-id "$2" --timeout 3600 $genopts \
        $prec --quiet
}
if [ "$which" = medium ]; then
    echo "== 1 request in flight"
    t0=$(date +%s.%N)
    gen 1 one-1
    t1=$(date +%s.%N)
    one=$(echo "$t1 - $t0" | bc)
    echo "   1 image in $one s: $(echo "scale=3; 60 / $one" | bc) images/min"
    echo "== 3 requests in flight"
    gen 1 three-1 & p1=$!
    gen 2 three-2 & p2=$!
    gen 3 three-3 & p3=$!
    wait $p1 || fail=1
    wait $p2 || fail=1
    wait $p3 || fail=1
    three=$(echo "$(date +%s.%N) - $t1" | bc)
    echo "   3 images in $three s: $(echo "scale=3; 180 / $three" | bc) images/min"
    ids="one-1 three-1 three-2 three-3"
else
    t0=$(date +%s.%N)
    gen 1 large-1 || fail=1
    echo "   1 image in $(echo "$(date +%s.%N) - $t0" | bc) s"
    ids="large-1"
fi
"$bin/sd3ctl" status --controller "$ctl" | tee "$run/status.txt"
for name in controller enc0 dit0 dit1 dit2 vae0; do
    pid=$(awk -v n=$name '$1 == n { print $2 }' "$run/cluster/pids" 2>/dev/null)
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] &&
        echo "   $name peak RSS $(awk '/VmHWM/ { print $2, $3 }' "/proc/$pid/status")"
done
"$bin/sd3ctl" down "$cluster" || true

echo "== bytes"
for id in $ids; do
    s=${id##*-} # the seed
    if cmp -s "$run/local-$s.png" "$run/cluster-$id.png"; then
        echo "   $id (seed $s): cluster PNG byte-identical to one process"
    else
        echo "   $id (seed $s): DIFFERS"; fail=1
    fi
done
echo "== from the logs"
log=$run/cluster
grep -h "warm: paged in" "$log"/*.log | sed 's/^/   /'
grep -h "dead:\|resumes from\|hung\|made no step" "$log/controller.log" | sed 's/^/   FAILOVER: /' || true
grep -h " start pipeline=\| done pipeline=\| dispatched \|step=[0-9]*/[0-9]* ms=" \
    "$log/controller.log" | sed 's/^/   /'
grep -h "encoded ms=\|decoded bytes=" "$log"/enc0.log "$log"/vae0.log | sed 's/^/   /'
for d in dit0 dit1 dit2; do
    [ -f "$log/$d.log" ] && grep -h "blocks=\[\|merged n=\|sent bytes=" "$log/$d.log" |
        sed "s/^/   $d: /"
done
# per range: mean compute ms per step (a merged batch counts once per request it held)
for d in dit0 dit1 dit2; do
    [ -f "$log/$d.log" ] && awk -v d=$d '/blocks=\[/ { for (i = 1; i <= NF; i++) if ($i ~ /^ms=/) {
        sub("ms=", "", $i); s += $i; n++ } } END { if (n) printf "   %s: %d steps alone, mean %.1f s of compute each\n", d, n, s / n / 1000 }' "$log/$d.log"
done
[ $fail = 0 ] && echo "real-size $which: PASS" || echo "real-size $which: FAIL"
exit $fail
