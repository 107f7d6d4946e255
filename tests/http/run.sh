#!/bin/bash
# run.sh - the HTTP API against a real controller: `sd3d --role all` on the embedded default
# tiny random model, HTTP on a free loopback port with a bearer token, then the real clients
# of clients.sh (curl, python3, the openai npm package, promtool), then 429 from a full
# queue (--queue 1 --inflight 1 and three requests at once) and 504 from --deadline-ms.
#
# usage: run.sh SD3D SD3CTL      (ctest: http_api, label cluster)
# Exit 0 pass, 1 fail, 77 skip (sd3d without --http, or no curl/python3).
set -u
sd3d=$1 sd3ctl=$2
here=$(cd "$(dirname "$0")" && pwd)
for tool in curl python3; do
    command -v $tool >/dev/null 2>&1 || { echo "http_api: $tool not installed; skipping"; exit 77; }
done
"$sd3d" --help 2>&1 | grep -q -- '--http' || { echo "http_api: sd3d has no --http; skipping"; exit 77; }
sh "$here/setup.sh" || true # the openai package; clients.sh skips it when absent

tmp=$(mktemp -d /tmp/sd3-http-api.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=tests/http/lib.sh
. "$here/lib.sh"
token=tok-$RANDOM$RANDOM
export SD3_HOME=$tmp/home SD3_HTTP_TOKEN=$token
# The embedded default model (tiny random SD3-medium with its tiny tokenizers): one local
# sd3ctl generate writes it into $SD3_HOME.
model=$SD3_HOME/tiny-sd3-medium
"$sd3ctl" generate "warm up" --size 64x64 --steps 1 -o "$tmp/warm.png" > "$tmp/warm.log" 2>&1 &&
    [ -f "$model/model_index.json" ] ||
    { echo "http_api: could not write the default model:"; tail -5 "$tmp/warm.log"; exit 1; }

# start NAME EXTRA-ARGS...: sd3d --role all with HTTP; sets $hport; waits for /healthz
start() {
    local name=$1
    shift
    local up=0
    sd3d_http_start "$tmp/$name.log" "$sd3d" --role all --model "$model" --threads 1 "$@" && up=1
    pids+=("$http_pid")
    [ $up = 1 ] && return 0
    echo "http_api: sd3d ($name) did not become healthy:"
    tail -20 "$tmp/$name.log"
    exit 1
}
stop_last() {
    kill "${pids[-1]}" 2>/dev/null
    wait "${pids[-1]}" 2>/dev/null
    unset 'pids[-1]'
}

fail=0
start main
HTTP_MODEL=sd3-medium bash "$here/clients.sh" "http://127.0.0.1:$hport" "$token" 64 48 || fail=1

# A client that hangs up mid-request: the server cancels it, the controller stops its work
# (counted "canceled", in flight back to 0 within about 6 s; 1000 steps take about 10 s on one
# thread, several times that under ASan).
curl -s -o /dev/null --max-time 1 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data '{"prompt":"long cat","size":"128x128","steps":1000}' "http://127.0.0.1:$hport/v1/images/generations"
t0=$(date +%s.%N)
canceled=0
for _ in $(seq 1 60); do
    curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$hport/metrics" > "$tmp/m.txt"
    if grep -q '^sd3_http_requests_total{endpoint="openai",outcome="canceled"} 1$' "$tmp/m.txt" &&
       grep -q '^sd3_inflight_requests 0$' "$tmp/m.txt"; then
        canceled=1
        break
    fi
    sleep 0.1
done
if [ $canceled = 1 ]; then
    echo "  ok   hang-up cancelled: in flight 0 after $(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))") s"
else
    echo "  FAIL hang-up: $(grep -E 'outcome="canceled"|^sd3_inflight' "$tmp/m.txt" | head -3)"; fail=1
fi
stop_last

# A full queue: one in flight, one waiting; the third request at once is refused with 429.
start full --queue 1 --inflight 1
for i in 1 2 3; do
    curl -s -o "$tmp/full$i.out" -D "$tmp/full$i.hdr" -w '%{http_code}' --max-time 120 \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "{\"prompt\":\"cat $i\",\"size\":\"128x128\",\"steps\":150}" \
        "http://127.0.0.1:$hport/v1/images/generations" > "$tmp/full$i.code" &
    sleep 0.2
done
wait_ok=0
for _ in $(seq 1 600); do
    [ -s "$tmp/full1.code" ] && [ -s "$tmp/full2.code" ] && [ -s "$tmp/full3.code" ] && { wait_ok=1; break; }
    sleep 0.2
done
codes=$(for f in "$tmp"/full*.code; do printf '%s ' "$(cat "$f")"; done)
if [ $wait_ok = 1 ] && echo "$codes" | grep -q 429 && echo "$codes" | grep -q 200 &&
   grep -l '^HTTP/1.1 429' "$tmp"/full*.hdr | xargs grep -qi '^retry-after:'; then
    echo "  ok   full queue -> codes $codes (429 with Retry-After)"
else
    echo "  FAIL full queue -> codes '$codes'"; fail=1
    for f in "$tmp"/full*.out; do head -c 300 "$f"; echo; done
fi
stop_last

# A deadline shorter than one request: 504.
start deadline --deadline-ms 1
code=$(curl -s -o "$tmp/dl.out" -w '%{http_code}' --max-time 120 -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' --data '{"prompt":"slow cat","width":64,"height":64,"steps":50}' \
    "http://127.0.0.1:$hport/sdapi/v1/txt2img")
if [ "$code" = 504 ]; then
    echo "  ok   deadline -> 504: $(head -c 200 "$tmp/dl.out")"
else
    echo "  FAIL deadline -> $code: $(head -c 300 "$tmp/dl.out")"; fail=1
fi
stop_last

[ $fail = 0 ] && echo "http_api: 4 passed, 0 failed" || echo "http_api: FAILED (logs in the output above)"
exit $fail
