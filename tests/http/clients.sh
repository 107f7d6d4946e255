#!/bin/bash
# clients.sh - real clients against a running sd3d HTTP API: curl, python3's json module,
# the official `openai` npm package (node), promtool (Debian package prometheus).
#
# usage: clients.sh BASE TOKEN WIDTH HEIGHT [--fake]
#   BASE    http://127.0.0.1:PORT     TOKEN  the bearer token the server wants ("" = none)
#   --fake  the controller is tests/http/test_http_server.c's fake: prompts "full", "slow",
#           "mute" make it answer RESOURCE_EXHAUSTED, never finish, never ACK.
# Prints one line per check and "N passed, N failed"; exit 0 when nothing failed.
set -u
base=$1 token=$2 W=$3 H=$4 fake=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/sd3-http-clients.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { echo "  ok   $1"; pass=$((pass + 1)); }
no() { echo "  FAIL $1"; fail=$((fail + 1)); }
auth=()
[ -n "$token" ] && auth=(-H "Authorization: Bearer $token")

# req METHOD PATH BODY-FILE|'' [curl args...]: status into $code, body in $tmp/out, headers
# in $tmp/hdr
req() {
    local method=$1 path=$2 body=$3
    shift 3
    local data=()
    [ -n "$body" ] && data=(--data-binary "@$body" -H "Content-Type: application/json")
    code=$(curl -s -o "$tmp/out" -D "$tmp/hdr" -w '%{http_code}' -X "$method" --max-time 120 \
        "${data[@]}" "$@" "$base$path")
}
expect() { # expect CODE WHAT [grep-pattern in body]
    if [ "$code" = "$1" ] && { [ -z "${3:-}" ] || grep -q -- "$3" "$tmp/out"; }; then
        ok "$2 -> $code"
    else
        no "$2 -> $code (want $1${3:+ with '$3'}): $(head -c 300 "$tmp/out")"
    fi
}
body() { printf '%s' "$1" > "$tmp/body.json"; echo "$tmp/body.json"; }

echo "http clients: $base (token ${token:+set}) ${W}x${H} ${fake}"

# ---- health and metrics -------------------------------------------------------------------
req GET /healthz ''
expect 200 "GET /healthz" '^ok'
# /readyz: 200 once a whole pipeline, an encoder and a vae are ready (the nodes page their
# weights in first); the fake controller has no nodes: 503 naming what is missing.
if [ -n "$fake" ]; then
    req GET /readyz ''
    expect 503 "GET /readyz with no nodes" '^not ready pipelines=0 encoders=0 vaes=0'
else
    for _ in $(seq 1 60); do
        req GET /readyz ''
        [ "$code" = 200 ] && break
        sleep 0.5
    done
    expect 200 "GET /readyz" '^ready pipelines=1 encoders=1 vaes=1'
fi
req GET /metrics '' "${auth[@]}"
expect 200 "GET /metrics" 'sd3_queue_depth'
grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/hdr" && ok "metrics content type" ||
    no "metrics content type: $(grep -i content-type "$tmp/hdr")"
if command -v promtool >/dev/null 2>&1; then
    if promtool check metrics < "$tmp/out" > "$tmp/prom" 2>&1; then
        ok "promtool check metrics"
    else
        no "promtool check metrics: $(cat "$tmp/prom")"
    fi
else
    echo "  skip promtool not installed (Debian package prometheus)"
fi

# ---- OpenAI-style, with curl + python3 ------------------------------------------------------
req POST /v1/images/generations "$(body "{\"prompt\":\"a photo of a cat\",\"size\":\"${W}x${H}\",\"seed\":7,\"steps\":2,\"n\":1}")" "${auth[@]}"
expect 200 "POST /v1/images/generations"
if python3 - "$tmp/out" "$W" "$H" <<'EOF'; then ok "openai reply: b64 PNG of ${W}x${H}"; else no "openai reply shape"; fi
import base64, json, struct, sys
r = json.load(open(sys.argv[1]))
w, h = int(sys.argv[2]), int(sys.argv[3])
assert isinstance(r["created"], int), r.get("created")
assert len(r["data"]) == 1
png = base64.b64decode(r["data"][0]["b64_json"], validate=True)
assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
assert png[12:16] == b"IHDR"
assert struct.unpack(">II", png[16:24]) == (w, h), struct.unpack(">II", png[16:24])
assert r["data"][0]["revised_prompt"] == "a photo of a cat"
EOF

# ---- A1111-style ------------------------------------------------------------------------------
req POST /sdapi/v1/txt2img "$(body "{\"prompt\":\"a red fox\",\"negative_prompt\":\"blurry\",\"steps\":2,\"cfg_scale\":4.5,\"width\":$W,\"height\":$H,\"seed\":42,\"sampler_name\":\"Euler\",\"batch_size\":2}")" "${auth[@]}"
expect 200 "POST /sdapi/v1/txt2img"
if python3 - "$tmp/out" "$W" "$H" <<'EOF'; then ok "a1111 reply: images, parameters, info (seed, all_seeds, infotexts)"; else no "a1111 reply shape"; fi
import base64, json, struct, sys
r = json.load(open(sys.argv[1]))
w, h = int(sys.argv[2]), int(sys.argv[3])
assert set(r) >= {"images", "parameters", "info"}, list(r)
assert len(r["images"]) == 2
for b in r["images"]:
    png = base64.b64decode(b, validate=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (w, h)
p = r["parameters"]
assert p["prompt"] == "a red fox" and p["seed"] == 42 and p["batch_size"] == 2, p
assert isinstance(r["info"], str), type(r["info"])
info = json.loads(r["info"])
assert info["seed"] == 42 and info["all_seeds"] == [42, 43], (info["seed"], info["all_seeds"])
assert info["prompt"] == "a red fox" and info["negative_prompt"] == "blurry"
assert info["width"] == w and info["height"] == h, (info["width"], info["height"])
assert len(info["infotexts"]) == 2
t0, t1 = info["infotexts"]
assert t0.startswith("a red fox\nNegative prompt: blurry\n"), t0
assert "Seed: 42" in t0 and "Seed: 43" in t1 and "Sampler: Euler" in t0 and "CFG scale: 4.5" in t0, (t0, t1)
assert ("Size: %dx%d" % (w, h)) in t0, t0
EOF

# ---- the official openai npm package ------------------------------------------------------------
if [ -f "$here/node_modules/openai/package.json" ] && command -v node >/dev/null 2>&1; then
    flags=""
    [ -n "$token" ] && flags="--errors"
    if node "$here/openai_client.mjs" "$base/v1" "${token:-none}" "$W" "$H" $flags > "$tmp/node" 2>&1; then
        ok "openai npm package: images.generate ($(grep -c 'bytes PNG' "$tmp/node") PNGs decoded)"
    else
        no "openai npm package: $(cat "$tmp/node")"
    fi
else
    echo "  skip openai npm package not installed (run tests/http/setup.sh)"
fi

# ---- refusals ------------------------------------------------------------------------------
python3 -c "import json; print(json.dumps({'prompt': 'x' * (1100 * 1024)}))" > "$tmp/big.json"
req POST /v1/images/generations "$tmp/big.json" "${auth[@]}"
expect 413 "1.1 MiB body" 'request_too_large'
req POST /v1/images/generations "$(body '{"prompt": "x",')" "${auth[@]}"
expect 400 "malformed JSON" 'malformed JSON at byte'
req POST /v1/images/generations "$(body '{"prompt": "x", "n": "2"}')" "${auth[@]}"
expect 400 "n as a string" "'n' must be an integer"
req POST /v1/images/generations "$(body '{"prompt": "x", "response_format": "url"}')" "${auth[@]}"
expect 400 "response_format url" 'stores no files'
req POST /sdapi/v1/txt2img "$(body '{"width": 500}')" "${auth[@]}"
expect 400 "A1111 width 500" '"detail"'
req GET /v1/nothing-here '' "${auth[@]}"
expect 404 "unknown path" 'not_found'
req GET /v1/images/generations '' "${auth[@]}"
expect 405 "GET on generations" 'method_not_allowed'
grep -qi '^allow: POST' "$tmp/hdr" && ok "405 names Allow: POST" || no "405 without Allow"
req POST /metrics "$(body '{}')" "${auth[@]}"
expect 405 "POST on /metrics"
if [ -n "$token" ]; then
    req POST /v1/images/generations "$(body '{"prompt": "x"}')"
    expect 401 "no token" 'authentication_error'
    req POST /sdapi/v1/txt2img "$(body '{"prompt": "x"}')" -H "Authorization: Bearer wrong"
    expect 401 "wrong token" 'invalid_api_key'
    req GET /metrics ''
    expect 401 "metrics without token"
fi

if [ "$fake" = "--fake" ]; then
    req POST /v1/images/generations "$(body '{"prompt": "full"}')" "${auth[@]}"
    expect 429 "controller queue full" 'queue_full'
    grep -qi '^retry-after: [0-9]' "$tmp/hdr" && ok "429 has Retry-After" || no "429 without Retry-After"
    req POST /sdapi/v1/txt2img "$(body '{"prompt": "slow"}')" "${auth[@]}"
    expect 504 "request past its deadline" 'timeout'
    req POST /v1/images/generations "$(body '{"prompt": "mute"}')" "${auth[@]}"
    expect 502 "controller that never answers" 'did not answer'
    req POST /v1/images/generations "$(body '{"prompt": "fail"}')" "${auth[@]}"
    expect 500 "controller failure" 'mmdit-0 exploded'
fi

req GET /metrics '' "${auth[@]}"
if grep -q '^sd3_http_requests_total{endpoint="openai",outcome="ok"} [1-9]' "$tmp/out" &&
   grep -q '^sd3_http_requests_total{endpoint="openai",outcome="bad_request"} [1-9]' "$tmp/out"; then
    ok "metrics count the requests above by outcome"
else
    no "metrics counters: $(grep sd3_http_requests_total "$tmp/out" | head -5)"
fi
if command -v promtool >/dev/null 2>&1; then
    promtool check metrics < "$tmp/out" > "$tmp/prom" 2>&1 && ok "promtool check metrics (after traffic)" ||
        no "promtool after traffic: $(cat "$tmp/prom")"
fi

echo "http clients: $pass passed, $fail failed"
[ "$fail" = 0 ]
