#!/bin/sh
# quickstart.sh - installs the dependencies, builds sd3d, and runs the main job on the
# embedded default: a tiny random model (written once by `sd3ctl mkmodel` into .cache/),
# served by a whole local cluster (controller, encoder, mmdit ranges, vae as separate
# processes on loopback) that writes an image, then stops the cluster.
set -eu
cd "$(dirname "$0")/.."
sh deploy/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs" --target sd3d sd3ctl   # the tests are check.sh's
mkdir -p out
build/sd3ctl up deploy/local/tiny-4stage.cluster
trap 'build/sd3ctl down deploy/local/tiny-4stage.cluster >/dev/null 2>&1 || true' EXIT
build/sd3ctl generate "a photo of a cat" --controller tcp://127.0.0.1:7710 --seed 42 \
    --steps 8 --size 128x128 -o out/quickstart.png
build/sd3ctl status --controller tcp://127.0.0.1:7710
echo "quickstart: wrote out/quickstart.png"
