#!/bin/sh
# install-deps.sh - installs the Debian 12 packages sd3d builds and tests with.
# Idempotent and non-interactive: does nothing when every package is already there.
# Run as root (or with sudo available). See ARCHITECTURE.md "Dependencies" for why each.
set -eu
PKGS="build-essential cmake pkg-config git
libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libzstd-dev libopenblas-dev
libspng-dev libpng-dev libutf8proc-dev libpcre2-dev libsentencepiece-dev
libmicrohttpd-dev libcjson-dev libxxhash-dev libsqlite3-dev zlib1g-dev
clang curl python3"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi
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
