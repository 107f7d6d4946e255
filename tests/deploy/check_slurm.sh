#!/bin/sh
# check_slurm - deploy/slurm/*.sbatch: `bash -n` and shellcheck with no finding; the
# #SBATCH lines come before the first command (sbatch ignores them after it).
# Self-test first: a script with an unquoted expansion must be flagged by shellcheck.
# Exit 0 pass, 1 fail, 77 skip (no shellcheck: Debian package shellcheck).
set -u
src=${SD3_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/slurm
command -v shellcheck >/dev/null 2>&1 || {
    echo "check_slurm: shellcheck not installed (apt-get install shellcheck); skipping"
    exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2016 # the $x is for the script under test
printf '#!/bin/bash\nx="a b"\nrm $x\n' > "$tmp/bad.sbatch"
if shellcheck "$tmp/bad.sbatch" > /dev/null 2>&1; then
    echo "check_slurm: FAIL: self-test: shellcheck missed an unquoted expansion"
    exit 1
fi
fail=0
for f in "$src"/*.sbatch; do
    if ! bash -n "$f"; then
        echo "check_slurm: FAIL: $f: bash -n"
        fail=1
    fi
    if ! shellcheck -s bash "$f"; then
        echo "check_slurm: FAIL: $f: shellcheck"
        fail=1
    fi
    late=$(awk '/^#SBATCH/ { if (cmd) print NR } !/^#/ && !/^[ \t]*$/ { cmd = 1 }' "$f")
    if [ -n "$late" ]; then
        echo "check_slurm: FAIL: $f: #SBATCH after the first command (line $late)"
        fail=1
    fi
    grep -q '^#SBATCH --nodes=' "$f" || { echo "check_slurm: FAIL: $f: no #SBATCH --nodes"; fail=1; }
done
[ $fail -eq 0 ] && echo "check_slurm: ok"
exit $fail
