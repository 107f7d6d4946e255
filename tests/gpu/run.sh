#!/bin/sh
# run.sh - the one script the device machine runs: build with CUDA, run the gpu tests, bench
#
# The device machine has nvcc, CMake and PyTorch but none of the Debian -dev packages the
# build needs, and no network. tests/gpu/prepare-carry.sh (run beforehand, on a machine with
# apt) puts those packages in gpu-carry/debs; this script unpacks them with `dpkg -x` into
# gpu-carry/root (a private prefix, nothing touches /), rewrites their pkg-config files to
# point there, and builds against it:
#   pkg-config    PKG_CONFIG_LIBDIR = only the unpacked .pc folders (the system's are not
#                 consulted); the carried pkgconf when the machine has no pkg-config
#   headers/libs  from the rewritten .pc files (-I/-L into the root), CPATH/LIBRARY_PATH as
#                 a fallback, -rpath-link for the libraries' own dependencies
#   programs      protoc-c through a wrapper that finds its libraries
#   run time      our binaries carry DT_RPATH to the root's library folders (RPATH, not
#                 RUNPATH: it also serves the libraries' own dependencies, libsodium for
#                 libzmq say), so no LD_LIBRARY_PATH is set: cmake, ctest, nvcc and the
#                 compiler keep the system's libraries (the carried bookworm ones are older)
# Then: cmake -DSD3_CUDA=ON (sm_80 and sm_90 as the top CMakeLists.txt sets), build,
# `ctest -L gpu --output-on-failure`, and the GPU benchmarks, whose figures it prints.
#
#   usage: sh tests/gpu/run.sh [--configure-only] [--quick]
#   env:   SD3_GPU_BUILD  build folder (default build-gpu), OUT  where logs are copied if set,
#          SD3_GPU_CARRIED_PKGCONF=1  use the carried pkgconf even where pkg-config exists
# Exit status: ctest's (the benchmarks' failures are printed but do not change it).
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
carry="$repo/gpu-carry"
root="$carry/root"
build="${SD3_GPU_BUILD:-$repo/build-gpu}"
configure_only=0
quick=""
for arg in "$@"; do
    case "$arg" in
    --configure-only) configure_only=1 ;;
    --quick) quick=--quick ;;
    *) echo "usage: $0 [--configure-only] [--quick]" >&2; exit 2 ;;
    esac
done
jobs=$(nproc 2>/dev/null || echo 4)
say() { echo "run.sh: $*"; }

# ---- 1. unpack the carried packages into a private root --------------------------------------
if ! ls "$carry"/debs/*.deb >/dev/null 2>&1; then
    echo "run.sh: no $carry/debs/*.deb: run tests/gpu/prepare-carry.sh first and carry gpu-carry" >&2
    exit 2
fi
rm -rf "$root"
mkdir -p "$root" "$carry/bin"
for deb in "$carry"/debs/*.deb; do
    if command -v dpkg >/dev/null 2>&1; then
        dpkg -x "$deb" "$root"
    else # no dpkg: a .deb is an ar archive holding data.tar.*
        tmp=$(mktemp -d)
        (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$root")
        rm -rf "$tmp"
    fi
done
say "unpacked $(ls "$carry"/debs/*.deb | wc -l) packages into $root"

multiarch=x86_64-linux-gnu
libdirs="$root/usr/lib/$multiarch:$root/lib/$multiarch:$root/usr/lib/$multiarch/openblas-pthread"

# Absolute symlinks inside the packages point at /usr/...: make them point into the root.
find "$root" -type l | while read -r link; do
    target=$(readlink "$link")
    case "$target" in
    /*) ln -sf "$root$target" "$link" ;;
    esac
done
# What maintainer scripts would have made: the openblas alternative's pkg-config file.
mkdir -p "$root/usr/lib/$multiarch/pkgconfig"
if [ -f "$root/usr/lib/$multiarch/openblas-pthread/pkgconfig/openblas.pc" ]; then
    ln -sf "$root/usr/lib/$multiarch/openblas-pthread/pkgconfig/openblas.pc" \
        "$root/usr/lib/$multiarch/pkgconfig/openblas.pc"
fi

# The .pc files say prefix=/usr (and some spell /usr/... out): rewrite them to the root.
# Requires.private only matters for static linking, and naming packages whose -dev files we
# do not carry (norm -> libxml2 -> icu, gnutls -> nettle, ...) would make pkg-config refuse
# the whole module: drop those lines.
pcdirs="$root/usr/lib/$multiarch/pkgconfig:$root/usr/share/pkgconfig:$root/usr/lib/pkgconfig"
pcdirs="$pcdirs:$root/usr/lib/$multiarch/openblas-pthread/pkgconfig"
find "$root" -name '*.pc' -type f | while read -r pc; do
    sed -i -e '/^Requires.private:/d' -e "s|=/usr\$|=$root/usr|" -e "s|=/usr/|=$root/usr/|" \
        -e "s| -I/usr/| -I$root/usr/|g" -e "s| -L/usr/| -L$root/usr/|g" "$pc"
done

# ---- 2. tools: pkg-config and protoc-c ---------------------------------------------------------
if command -v pkg-config >/dev/null 2>&1 && [ -z "${SD3_GPU_CARRIED_PKGCONF:-}" ]; then
    pkgconfig=$(command -v pkg-config)
else
    pkgconfig="$carry/bin/pkg-config"
    cat >"$pkgconfig" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/usr/bin/pkgconf" "\$@"
EOF
    chmod +x "$pkgconfig"
fi
protoc="$carry/bin/protoc-c"
cat >"$protoc" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/usr/bin/protoc-c" "\$@"
EOF
chmod +x "$protoc"

export PKG_CONFIG_LIBDIR="$pcdirs"
unset PKG_CONFIG_PATH || true
export CPATH="$root/usr/include:$root/usr/include/$multiarch${CPATH:+:$CPATH}"
export LIBRARY_PATH="$libdirs${LIBRARY_PATH:+:$LIBRARY_PATH}"
say "pkg-config: $pkgconfig (libdir $PKG_CONFIG_LIBDIR)"
modules=$(sed -n 's/^ *pkg_check_modules([A-Z0-9_]* *REQUIRED *IMPORTED_TARGET *\([^)#]*\)).*/\1/p' \
    "$repo/CMakeLists.txt")
for m in $modules; do
    "$pkgconfig" --exists "$m" || { echo "run.sh: pkg-config cannot find $m" >&2; exit 1; }
done

# ---- 3. configure and build -------------------------------------------------------------------
rpath_link="-Wl,--disable-new-dtags"
for d in "$root/usr/lib/$multiarch" "$root/lib/$multiarch" "$root/usr/lib/$multiarch/openblas-pthread"; do
    rpath_link="$rpath_link -Wl,-rpath-link,$d -Wl,-rpath,$d"
done
cmake -S "$repo" -B "$build" -DSD3_CUDA=ON -DSD3_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PREFIX_PATH="$root/usr" \
    -DPKG_CONFIG_EXECUTABLE="$pkgconfig" -DPROTOC_C="$protoc" \
    -DCMAKE_EXE_LINKER_FLAGS="$rpath_link" -DCMAKE_SHARED_LINKER_FLAGS="$rpath_link"
if [ $configure_only = 1 ]; then
    say "configured in $build (--configure-only: stopping here)"
    exit 0
fi
# only what `ctest -L gpu` runs (the test names are their targets) and the bench: a
# half-written file elsewhere in the tree cannot cost the GPU run
targets=$(ctest --test-dir "$build" -N -L gpu | sed -n 's/^ *Test *#[0-9]*: *//p')
say "building: $(echo $targets) bench_cuda_ops"
cmake --build "$build" -j"$jobs" --target $targets bench_cuda_ops

# ---- 4. tests and benchmarks ------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || true
status=0
ctest --test-dir "$build" -L gpu --output-on-failure --timeout 600 2>&1 | tee "$build/gpu-ctest.log" ||
    status=1
# tee hides ctest's status: read the summary line
grep -q "100% tests passed" "$build/gpu-ctest.log" || status=1
# a gpu test skips only where there is no device: on a machine with one, a skip is a failure
if grep -q "(Skipped)" "$build/gpu-ctest.log" && nvidia-smi -L >/dev/null 2>&1; then
    say "gpu tests skipped although nvidia-smi sees a GPU"
    status=1
fi
say "benchmarks (tests/gpu/bench_cuda_ops.c)"
"$build/tests/bench_cuda_ops" $quick 2>&1 | tee "$build/gpu-bench.log" || say "bench failed"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$build/gpu-ctest.log" "$build/gpu-bench.log" "$OUT/" 2>/dev/null || true
    cp "$build/Testing/Temporary/LastTest.log" "$OUT/gpu-lasttest.log" 2>/dev/null || true
fi
say "ctest -L gpu: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
