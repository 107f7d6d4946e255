#!/bin/sh
# check_systemd - deploy/systemd/*.service pass `systemd-analyze verify` with no complaint
# at all, carry the hardening every sd3d unit must have, and score at most 3.0 ("OK") in
# `systemd-analyze security --offline`. ExecStart's /usr/local/bin/sd3d is pointed at a stub
# in a temporary folder (verify checks that the binary exists); the template is checked as
# instance 0:12 (escaped 0\x3a12, as systemd-escape writes it).
# A self-test first: a unit with an unknown key must be caught, else the check could not fail.
# Exit 0 pass, 1 fail, 77 skip (no systemd-analyze: Debian package systemd).
set -u
src=${SD3_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/systemd
command -v systemd-analyze >/dev/null 2>&1 || {
    echo "check_systemd: systemd-analyze not installed (apt-get install systemd); skipping"
    exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' > "$tmp/sd3d"
chmod 755 "$tmp/sd3d"
fail=0

# verify FILE: 0 when systemd-analyze is silent and happy
verify() {
    out=$(cd "$tmp" && systemd-analyze verify "./$1" 2>&1)
    rc=$?
    [ $rc -eq 0 ] && [ -z "$out" ] && return 0
    echo "$out" | sed "s|^|  $1: |"
    return 1
}

sed "s|/usr/local/bin/sd3d|$tmp/sd3d|" "$src/sd3d-controller.service" > "$tmp/selftest.service"
echo 'Bogus=1' >> "$tmp/selftest.service"
if verify selftest.service > /dev/null; then
    echo "check_systemd: FAIL: an unknown key went unnoticed; the check cannot fail"
    exit 1
fi
rm -f "$tmp/selftest.service"

for f in "$src"/*.service; do
    name=$(basename "$f")
    case $name in
    *@.service) unit=$(echo "$name" | sed 's/@\.service$/@0\\x3a12.service/') ;;
    *) unit=$name ;;
    esac
    sed "s|/usr/local/bin/sd3d|$tmp/sd3d|" "$f" > "$tmp/$unit"
    if ! verify "$unit"; then
        echo "check_systemd: FAIL: $name: systemd-analyze verify complained"
        fail=1
    fi
    for want in 'DynamicUser=yes' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' \
        'NoNewPrivileges=yes' 'CapabilityBoundingSet=$' \
        'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$' 'SystemCallFilter=@system-service' \
        'MemoryDenyWriteExecute=' 'EnvironmentFile=/etc/sd3d/sd3d.env' \
        'ExecStart=/usr/local/bin/sd3d ' '--curve-secret %d/node.key' 'LoadCredential=node.key:'; do
        grep -q -- "^$want\|[ ]$want" "$f" || { echo "check_systemd: FAIL: $name lacks '$want'"; fail=1; }
    done
    case $name in
    *controller*) ;;
    *) grep -q '^DeviceAllow=char-nvidia' "$f" ||
        { echo "check_systemd: FAIL: $name (a GPU role) lacks DeviceAllow for /dev/nvidia*"; fail=1; } ;;
    esac
    score=$(cd "$tmp" && systemd-analyze security --offline=yes "./$unit" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
        echo "check_systemd: FAIL: $name exposure '${score:-?}' (want <= 3.0)"
        fail=1
    else
        echo "check_systemd: $name: verify ok, exposure $score"
    fi
done
[ $fail -eq 0 ] && echo "check_systemd: ok"
exit $fail
