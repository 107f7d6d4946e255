#!/bin/sh
# check_container - deploy/container/Containerfile: dockerfilelint (npm package
# dockerfilelint, when installed: PATH or $SD3_DOCKERFILELINT) and our own rules, which
# always run: every FROM pinned to a version (no :latest, no bare name), more than one
# stage, the last stage switches to a non-root USER, apt-get install with
# --no-install-recommends and the lists removed, no ADD of URLs, an ENTRYPOINT.
# A self-test first: a copy without USER and with :latest must be caught.
# Exit 0 pass, 1 fail (77 never: the own rules need only sh, grep and awk).
set -u
src=${SD3_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/container/Containerfile
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# rules FILE: prints each broken rule; exit 1 when any
rules() {
    awk '
    function bad(m) { print "  " FILENAME ":" NR ": " m; n++ }
    { line = $0; sub(/^[ \t]+/, "", line) }
    line ~ /^#/ { next }
    toupper(line) ~ /^FROM / {
        stages++; img = line; sub(/^[Ff][Rr][Oo][Mm] +/, "", img); sub(/ .*/, "", img)
        tag = img; sub(/.*\//, "", tag)
        if (tag !~ /[:@]/ || tag ~ /:latest$/) bad("FROM " img " is not pinned to a version")
        user = ""
    }
    toupper(line) ~ /^USER / { user = line; sub(/^[Uu][Ss][Ee][Rr] +/, "", user) }
    toupper(line) ~ /^ADD +https?:/ { bad("ADD of a URL: fetch in a RUN with a checksum") }
    toupper(line) ~ /^ENTRYPOINT/ { entry = 1 }
    /apt-get install/ && !/--no-install-recommends/ { bad("apt-get install without --no-install-recommends") }
    /apt-get update/ { apt = 1 }
    /rm -rf \/var\/lib\/apt\/lists/ { lists = 1 }
    END {
        if (stages < 2) bad("one stage: build and runtime must be separate stages")
        if (user == "" || user ~ /^(root|0)(:|$)/) bad("the runtime stage runs as root (no USER)")
        if (!entry) bad("no ENTRYPOINT")
        if (apt && !lists) bad("apt lists are left in the image")
        exit n > 0
    }' "$1"
}

sed -e '/^USER /d' -e 's/debian:12\.8-slim AS runtime/debian:latest AS runtime/' "$src" > "$tmp/bad"
if rules "$tmp/bad" > /dev/null; then
    echo "check_container: FAIL: self-test: a root, :latest image passed the rules"
    exit 1
fi
fail=0
if ! rules "$src"; then
    echo "check_container: FAIL: $src breaks the rules above"
    fail=1
fi
lint=${SD3_DOCKERFILELINT:-$(command -v dockerfilelint || true)}
if [ -n "$lint" ]; then
    if ! "$lint" "$src" > "$tmp/lint.out" 2>&1; then
        cat "$tmp/lint.out"
        echo "check_container: FAIL: dockerfilelint"
        fail=1
    else
        echo "check_container: dockerfilelint: no issues"
    fi
else
    echo "check_container: dockerfilelint not installed (npm install -g dockerfilelint); own rules only"
fi
[ $fail -eq 0 ] && echo "check_container: ok"
exit $fail
