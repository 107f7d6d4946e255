#!/bin/bash
# token_file.sh - `sd3d --http-token-file FILE`: the HTTP API behind the bearer token of a file.
#
# sd3d --role all on the embedded default tiny model with --http and a token file written as
# a person would ("TOKEN  \n": the newline and trailing blanks are not part of it), and with
# SD3_HTTP_TOKEN set to another value, which the file overrides. Checked: /healthz needs no
# token (200); a generation without Authorization, with the environment's token and with a
# token that only differs by its last byte gets 401 (3 counted in /metrics); with the
# file's token 200 and a PNG of the requested size; /metrics likewise, also with tabs and
# spaces around the token (not part of the value), but 401 with "TOKEN x"; a missing file and
# an empty file make sd3d exit 2 naming the file, before anything listens.
#
# usage: token_file.sh SD3D SD3CTL      (ctest: http_token_file, label cluster)
# Exit 0 pass, 1 fail, 77 skip (no curl/python3, or sd3d without --http-token-file).
set -u
sd3d=$1 sd3ctl=$2
for tool in curl python3; do
    command -v $tool >/dev/null 2>&1 || { echo "http_token_file: $tool not installed; skipping"; exit 77; }
done
"$sd3d" --help 2>&1 | grep -q -- '--http-token-file' ||
    { echo "http_token_file: sd3d has no --http-token-file; skipping"; exit 77; }

tmp=$(mktemp -d /tmp/sd3-http-token.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=tests/http/lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
pass=0 fail=0
ok() { echo "  ok   $1"; pass=$((pass + 1)); }
no() { echo "  FAIL $1"; fail=$((fail + 1)); }

export SD3_HOME=$tmp/home SD3_HTTP_TOKEN=env-token-$RANDOM
model=$SD3_HOME/tiny-sd3-medium
"$sd3ctl" generate "warm up" --size 64x64 --steps 1 -o "$tmp/warm.png" > "$tmp/warm.log" 2>&1 &&
    [ -f "$model/model_index.json" ] ||
    { echo "http_token_file: could not write the default model:"; tail -5 "$tmp/warm.log"; exit 1; }

# ---- bad token files: exit 2 naming the file, nothing served --------------------------------
: > "$tmp/empty.token"
for f in "$tmp/missing.token" "$tmp/empty.token"; do
    timeout 20 "$sd3d" --role all --model "$model" --listen 'tcp://127.0.0.1:*' \
        --http 127.0.0.1:0 --threads 1 --http-token-file "$f" > "$tmp/bad.log" 2>&1
    rc=$?
    if [ $rc = 2 ] && grep -q -- "--http-token-file $f" "$tmp/bad.log"; then
        ok "$(basename "$f") -> exit 2: $(head -1 "$tmp/bad.log")"
    else
        no "$(basename "$f") -> exit $rc (want 2 naming the file): $(head -3 "$tmp/bad.log")"
    fi
done

# ---- a good one -------------------------------------------------------------------------------
token=file-token-$RANDOM$RANDOM
printf '%s  \n' "$token" > "$tmp/http.token"
chmod 600 "$tmp/http.token"
healthy=0
sd3d_http_start "$tmp/sd3d.log" "$sd3d" --role all --model "$model" --threads 1 \
    --http-token-file "$tmp/http.token" && healthy=1
pid=$http_pid
base=http://127.0.0.1:$hport
if [ $healthy = 1 ]; then
    ok "GET /healthz without a token -> 200"
else
    no "sd3d did not become healthy: $(tail -5 "$tmp/sd3d.log")"
    echo "http_token_file: $pass passed, $fail failed"
    exit 1
fi

body='{"prompt":"a cat","size":"64x48","steps":2,"seed":5,"response_format":"b64_json"}'
# gen NAME [curl args...]: POST a generation; the status into $code, the body in $tmp/NAME
gen() {
    local name=$1
    shift
    code=$(curl -s -o "$tmp/$name" -w '%{http_code}' --max-time 120 -H 'Content-Type: application/json' \
        --data "$body" "$@" "$base/v1/images/generations")
}
gen none
[ "$code" = 401 ] && ok "no Authorization -> 401" || no "no Authorization -> $code: $(head -c 200 "$tmp/none")"
gen env -H "Authorization: Bearer $SD3_HTTP_TOKEN"
[ "$code" = 401 ] && ok "\$SD3_HTTP_TOKEN's token (the file overrides it) -> 401" ||
    no "environment token -> $code (want 401): $(head -c 200 "$tmp/env")"
gen near -H "Authorization: Bearer ${token%?}X"
[ "$code" = 401 ] && ok "last byte wrong -> 401" || no "last byte wrong -> $code: $(head -c 200 "$tmp/near")"
gen good -H "Authorization: Bearer $token"
if [ "$code" = 200 ] && python3 - "$tmp/good" <<'EOF'
import base64, json, struct, sys
reply = json.load(open(sys.argv[1]))
png = base64.b64decode(reply["data"][0]["b64_json"])
assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", png[16:24])
assert (w, h) == (64, 48), "PNG is %dx%d, want 64x48" % (w, h)
EOF
then
    ok "the file's token -> 200 with a 64x48 PNG"
else
    no "the file's token -> $code: $(head -c 300 "$tmp/good")"
fi
code=$(curl -s -o "$tmp/m" -w '%{http_code}' "$base/metrics")
[ "$code" = 401 ] && ok "GET /metrics without a token -> 401" || no "GET /metrics without a token -> $code"
code=$(curl -s -o "$tmp/m" -w '%{http_code}' -H "Authorization: Bearer $token" "$base/metrics")
if [ "$code" = 200 ] && grep -q '^sd3_http_requests_total{endpoint="openai",outcome="unauthorized"} 3$' "$tmp/m"; then
    ok "GET /metrics with the token -> 200, 3 unauthorized generations counted"
else
    no "GET /metrics with the token -> $code: $(grep unauthorized "$tmp/m" | head -3)"
fi
# Spaces after the scheme (1*SP) and whitespace after the value (OWS) are not part of the
# token; inside it, they are.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer   $token  	" "$base/metrics")
[ "$code" = 200 ] && ok "token with spaces before and spaces and a tab after it -> 200" || no "token with whitespace around it -> $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token x" "$base/metrics")
[ "$code" = 401 ] && ok "token followed by ' x' -> 401" || no "token followed by ' x' -> $code"

echo "http_token_file: $pass passed, $fail failed"
[ $fail = 0 ]
