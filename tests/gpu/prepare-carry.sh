#!/bin/sh
# prepare-carry.sh - fill gpu-carry/ (ignored by git) with what tests/gpu/run.sh needs on the
# device machine, which has nvcc, CMake and PyTorch but none of our Debian -dev packages and
# no network:
#   gpu-carry/debs/*.deb    every -dev package the build asks pkg-config for, the runtime
#                           libraries they link against (the closure of their Depends), and
#                           pkgconf and protoc-c with their libraries; fetched with
#                           `apt-get download`, nothing installed here
#   gpu-carry/testdata/     the golden files a GPU test reads (none today: every GPU test
#                           compares CUDA with the CPU backend on seeded random inputs)
# Run it here, from anywhere in the repository; it prints the sizes. The whole working tree
# plus gpu-carry must stay under 64 MiB (the device machine's transfer limit); the debs are
# about 30 MiB.
#   usage: sh tests/gpu/prepare-carry.sh [--list]    (--list: print the package list only)
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
carry="$repo/gpu-carry"

# The modules CMakeLists.txt asks pkg-config for (read from it, so a new dependency is carried
# without editing this file), mapped to the Debian packages that own their .pc files here;
# plus protoc-c's package and pkgconf (the device machine may have no pkg-config).
modules=$(sed -n 's/^ *pkg_check_modules([A-Z0-9_]* *REQUIRED *IMPORTED_TARGET *\([^)#]*\)).*/\1/p' \
    "$repo/CMakeLists.txt" | tr -s ' ' '\n' | grep -v '^$')
roots="pkgconf-bin libpkgconf3"
for m in $modules; do
    pc=$(pkg-config --path "$m" 2>/dev/null) || { echo "prepare-carry: no .pc for $m here" >&2; exit 1; }
    roots="$roots $(dpkg -S "$(readlink -f "$pc")" | cut -d: -f1)"
done
roots="$roots $(dpkg -S "$(readlink -f "$(command -v protoc-c)")" | cut -d: -f1)"

# Left out of the closure: the C runtime and toolchain pieces any machine with a working
# nvcc/gcc already has (and that must never shadow the system's own); the libraries that
# only optional parts of gnutls and krb5 pull in (DANE, ICU, XML, the kadmin libraries); and
# the -dev packages that only answer the .pc files' Requires.private (run.sh deletes those
# lines: we link the shared libraries, whose own dependencies need no headers). Their
# runtime libraries stay: the linker follows them (-rpath-link) and the tests load them.
exclude="libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt-dev libcrypt1 libgcc-s1
libstdc++6 gcc-12-base libnsl-dev libnsl2 libtirpc-common libtirpc-dev libtirpc3 rpcsvc-proto
libicu-dev libicu72 icu-devtools libxml2 libxml2-dev libunbound8 libgnutls-dane0
libgnutls-openssl27 libgnutlsxx30 libevent-2.1-7 libssl3 liblzma5 libkadm5clnt-mit12
libkadm5srv-mit12 libkdb5-10 libgssrpc4 libgmpxx4ldbl debconf dpkg perl-base
libkrb5-dev krb5-multidev comerr-dev libsodium-dev libpgm-dev libnorm-dev libbsd-dev libmd-dev
libgnutls28-dev nettle-dev libgmp-dev libidn2-dev libp11-kit-dev libtasn1-6-dev zlib1g-dev"

# GPU tests that read golden data list their files here (paths under the test-data folder).
testdata_files=""

# a root is never excluded (zlib1g-dev when CMakeLists.txt asks for zlib, say)
skip=$(printf '%s\n' $exclude | grep -v -x -F "$(printf '%s\n' $roots)")
list=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances $roots 2>/dev/null |
       grep -v '^ ' | grep -v '^<' | sort -u | grep -v -x -F "$skip")
if [ "${1:-}" = "--list" ]; then
    printf '%s\n' $list
    exit 0
fi

mkdir -p "$carry/debs" "$carry/testdata"
rm -f "$carry"/debs/*.deb
(cd "$carry/debs" && apt-get download $list)
n=$(ls "$carry"/debs/*.deb | wc -l)
echo "prepare-carry: $n packages, $(du -sh "$carry/debs" | cut -f1) in $carry/debs"

data="${SD3_TESTDATA:-$repo/../shared/testdata}"
for f in $testdata_files; do
    mkdir -p "$carry/testdata/$(dirname "$f")"
    cp "$data/$f" "$carry/testdata/$f"
done
echo "prepare-carry: $(echo $testdata_files | wc -w) golden files in $carry/testdata"

total=$(du -sk "$carry" | cut -f1)
tree=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "prepare-carry: carry ${total} KiB + working tree ${tree} KiB (limit 65536 KiB)"
if [ $((total + tree)) -gt 65536 ]; then
    echo "prepare-carry: over the 64 MiB the device machine accepts" >&2
    exit 1
fi
