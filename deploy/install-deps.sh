#!/bin/sh
# install-deps.sh - installs the Debian 12 packages sd3d builds and tests with, and the
# real HTTP clients its tests use (the `openai` npm package, pinned in
# tests/http/package-lock.json). Idempotent and non-interactive: installs only what is
# missing. Run as root (or with sudo available). ARCHITECTURE.md "Dependencies" says why each.
set -eu
cd "$(dirname "$0")/.."
PKGS="build-essential cmake pkg-config git
libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libzstd-dev libopenblas-dev libdnnl-dev
libspng-dev libpng-dev libutf8proc-dev libpcre2-dev libsentencepiece-dev
libmicrohttpd-dev libcjson-dev libxxhash-dev libsqlite3-dev zlib1g-dev
clang curl python3 shellcheck yamllint systemd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js + npm for the openai client test (a machine may already have another Node.js,
# e.g. NodeSource's, whose package conflicts with Debian's npm: take npm from wherever).
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
# promtool (checks the /metrics output) comes with Debian's prometheus package.
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
if [ -n "$missing" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: run as root (missing:$missing)" >&2; exit 1; }
        SUDO="sudo -n"
    fi
    echo "install-deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing </dev/null
    # The prometheus package may start its server; the tests need only promtool.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
else
    echo "install-deps: all Debian packages present"
fi
sh tests/http/setup.sh
