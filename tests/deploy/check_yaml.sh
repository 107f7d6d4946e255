#!/bin/sh
# check_yaml - deploy/k8s/*.yaml: yamllint (syntax and style) then tests/deploy/check_k8s.py
# (the schema rules: required fields, pinned images, resources, GPUs, probes, references).
# Exit 0 pass, 1 fail, 77 skip (no yamllint: Debian package yamllint; no PyYAML).
set -u
root=${SD3_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
command -v yamllint >/dev/null 2>&1 || {
    echo "check_yaml: yamllint not installed (apt-get install yamllint); skipping"
    exit 77
}
conf='{extends: default, rules: {line-length: {max: 100}, document-start: disable, truthy: {check-keys: false}}}'
printf 'a: 1\na: 2\n' > "${TMPDIR:-/tmp}/sd3-yaml-selftest.$$.yaml"
if yamllint -d "$conf" "${TMPDIR:-/tmp}/sd3-yaml-selftest.$$.yaml" > /dev/null 2>&1; then
    rm -f "${TMPDIR:-/tmp}/sd3-yaml-selftest.$$.yaml"
    echo "check_yaml: FAIL: self-test: yamllint passed a duplicate key"
    exit 1
fi
rm -f "${TMPDIR:-/tmp}/sd3-yaml-selftest.$$.yaml"
if ! yamllint -s -d "$conf" "$root"/deploy/k8s/*.yaml; then
    echo "check_yaml: FAIL: yamllint"
    exit 1
fi
echo "check_yaml: yamllint ok"
# yamllint is Python with PyYAML: the same interpreter has what check_k8s.py needs.
py=$(head -1 "$(command -v yamllint)" | sed -n 's/^#! *\([^ ]*python[0-9.]*\).*/\1/p')
for p in "$py" python3 /usr/bin/python3; do
    [ -n "$p" ] && "$p" -c 'import yaml' 2>/dev/null && exec "$p" "$root/tests/deploy/check_k8s.py"
done
echo "check_yaml: no python3 with PyYAML; schema check skipped"
exit 77
