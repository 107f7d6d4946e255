#!/bin/sh
# setup.sh - installs the real HTTP clients the http tests use: the official `openai` npm
# package (pinned in package-lock.json) into tests/http/node_modules. Idempotent: does
# nothing when the locked version is already there. Needs node + npm (Debian: nodejs, npm)
# and the npm registry. Exit 0 also when npm is missing (the tests then skip that client).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
want=$(sed -n 's/.*"openai": *"\([0-9.]*\)".*/\1/p' "$here/package.json" | head -n 1)
have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$here/node_modules/openai/package.json" \
       2>/dev/null | head -n 1 || true)
if [ -n "$want" ] && [ "$have" = "$want" ]; then
    echo "http/setup: openai $have already installed"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "http/setup: npm not found (Debian packages nodejs npm); openai client tests will skip" >&2
    exit 0
fi
npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
echo "http/setup: installed openai $want into $here/node_modules"
