# lib.sh - sourced by the HTTP test scripts (bash).
#
# sd3d_http_start LOG SD3D ARGS...: starts "SD3D ARGS... --listen tcp://127.0.0.1:*
# --http 127.0.0.1:0" in the background with its output in LOG; the OS picks both ports, so
# nothing can take them between a pick and the bind (as a probe-then-bind of a free port
# allows under ctest -j); SD3_LOG=info, since the port comes from a log line. Sets $http_pid, and $hport from the log's "http=... port=N" line
# once /healthz answers 200. Returns 1 when sd3d exits or stays unhealthy for 60 s.
sd3d_http_start() {
    local log=$1 bin=$2
    shift 2
    SD3_LOG=info "$bin" "$@" --listen 'tcp://127.0.0.1:*' --http 127.0.0.1:0 > "$log" 2>&1 &
    http_pid=$!
    hport=
    for _ in $(seq 1 300); do
        [ -n "$hport" ] || hport=$(sed -n 's/.* http=[^ ]* port=\([0-9][0-9]*\).*/\1/p' "$log" | tail -1)
        if [ -n "$hport" ] &&
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/healthz")" = 200 ]; then
            return 0
        fi
        kill -0 "$http_pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
