#!/bin/bash
# role_all_threads.sh - `sd3d --role all` runs its three stages on one CPU backend, sized to
# the box: started pinned to one CPU (taskset) without --threads, it must log exactly one
# "cpu backend threads=1 (affinity 1, ...)" line (three stages, one pool), serve a request
# whose three stages compute on that shared pool from their own threads, and give the
# one-process image bit for bit.
#
# usage: role_all_threads.sh SD3D SD3CTL   (ctest: role_all_threads, label cluster)
# Exit 0 pass, 1 fail, 77 skip (no taskset).
set -u
sd3d=$1 sd3ctl=$2
command -v taskset >/dev/null 2>&1 || { echo "role_all_threads: no taskset; skipping"; exit 77; }
tmp=$(mktemp -d /tmp/sd3-role-all.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "role_all_threads: $*"
    [ -f "$tmp/sd3d.log" ] && tail -20 "$tmp/sd3d.log"
    exit 1
}
"$sd3ctl" mkmodel --arch tiny-sd3-medium --depth 2 --layout diffusers --dtype f16 \
    -o "$tmp/model" >/dev/null || fail "mkmodel failed"
first=$(taskset -pc $$ | sed 's/.*: *//; s/[-,].*//')
SD3_LOG=info taskset -c "$first" "$sd3d" --role all --listen 'tcp://127.0.0.1:*' \
    --model "$tmp/model" --addr-file "$tmp/addr" > "$tmp/sd3d.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
    [ -s "$tmp/addr" ] && grep -q "formed" "$tmp/sd3d.log" && break
    kill -0 "$pid" 2>/dev/null || fail "sd3d exited"
    sleep 0.1
done
grep -q "formed" "$tmp/sd3d.log" || fail "no pipeline formed within 60 s"
n=$(grep -c "cpu backend threads=" "$tmp/sd3d.log")
[ "$n" = 1 ] || fail "$n CPU backends logged, want 1 shared by the three stages"
grep -q "cpu backend threads=1 (affinity 1," "$tmp/sd3d.log" ||
    fail "pinned to one CPU, the pool is not 1 thread by affinity"
args=(--size 64x64 --steps 3 --seed 7 --quiet)
"$sd3ctl" generate "a red fox" "${args[@]}" --controller "$(sed -n "s/^client=//p" "$tmp/addr")" \
    -o "$tmp/cluster.png" > "$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log"; fail "generate failed"; }
"$sd3ctl" generate "a red fox" "${args[@]}" --model "$tmp/model" --threads 2 \
    -o "$tmp/local.png" > "$tmp/local.log" 2>&1 || { cat "$tmp/local.log"; fail "local failed"; }
cmp -s "$tmp/cluster.png" "$tmp/local.png" || fail "the shared-pool image differs from the local one"
echo "role_all_threads: one pool ($(grep -o 'threads=1 ([^)]*)' "$tmp/sd3d.log")), image identical"
exit 0
