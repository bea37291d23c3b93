#!/usr/bin/env bash
# The LibTorch 2.x leg of CI: builds gradcam in a Debian 13 ("trixie") root against its LibTorch
# 2.6, OpenCV 4.10 and Catch2 v3, and runs the whole CTest suite there, with every fixture exported
# by that root's torch 2.6. Needs root and Debian's debootstrap (scripts/install_deps.sh).
#
#   bash scripts/test_debian13.sh [ctest args...]
#   bash scripts/test_debian13.sh --root-only      makes (or checks) the root and stops: CI runs
#                                                  this in the background during the Debian 12 leg
#
# DEBIAN13_ROOT (default /var/tmp/gradcam-debian13) is kept, and reused while the package list is
# the same; the build folder inside it is made anew each run. Timings: docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/debian13.sh
ROOT=${DEBIAN13_ROOT:-/var/tmp/gradcam-debian13}
PACKAGES="g++ cmake ninja-build make libtorch-dev libopencv-dev libcatch2-dev nlohmann-json3-dev libcli11-dev zlib1g-dev
  python3-torch python3-torchvision"
d13_begin "$ROOT"
t0=$SECONDS
d13_make_root "$ROOT" "main" $PACKAGES
if [ "${1:-}" = "--root-only" ]; then
  echo "debian13: root ready in $((SECONDS - t0)) s"
  exit 0
fi
d13_mount "$ROOT" "$PWD"
echo "debian13: root ready in $((SECONDS - t0)) s"
d13_run "$ROOT" 'echo "debian13: $(dpkg-query -W -f "\${Package} \${Version}, " libtorch-dev libopencv-dev libcatch2-dev python3-torch g++)"'
t0=$SECONDS
d13_run "$ROOT" "rm -rf /build && cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCAM_WERROR=ON > /build.log \
  && cmake --build /build -j $(nproc) >> /build.log" || { tail -60 "$ROOT/build.log"; exit 1; }
grep -E "gradcam .*LibTorch|Catch2" "$ROOT/build.log" || true
echo "debian13: build $((SECONDS - t0)) s"
# Debian 13's oneDNN 3.7.2 computes wrong float32 convolution gradients on AVX-512 machines:
# PyTorch's own, not only ours (2026-12-02: a sample's input gradient alone and in a batch of 2
# differ by 57% of its size; 0 with oneDNN off). scripts/lib/onednn_check.py runs PyTorch alone.
# Where it fails, the test cases that compare float32 gradients of convolutions in batches with
# references (tagged [onednn]; the CTest entries test_gradcam_onednn and test_model_onednn) cannot
# tell our defects from LibTorch's: they still run and print their results, but do not fail the
# leg; every other test case must pass. Where the check passes, everything must pass.
# docs/reliability.md.
QUARANTINE='_onednn$'
t0=$SECONDS
J="-j ${GRADCAM_TEST_JOBS:-2}"  # two tests at a time, as scripts/test.sh says why
check=0
d13_run "$ROOT" "python3 /src/scripts/lib/onednn_check.py" || check=$?
if [ "$check" -eq 0 ]; then
  d13_run "$ROOT" "ctest --test-dir /build --output-on-failure $J $*"
elif [ "$check" -ne 3 ]; then
  echo "debian13: scripts/lib/onednn_check.py failed (exit $check)"
  exit 1
else
  echo "debian13: WARNING: this LibTorch's oneDNN gives wrong float32 gradients on this CPU (PyTorch alone"
  echo "debian13: shows it, above). The [onednn] test cases (test_gradcam_onednn, test_model_onednn) run but"
  echo "debian13: cannot fail this leg."
  d13_run "$ROOT" "ctest --test-dir /build --output-on-failure $J -E '$QUARANTINE' $*"
  d13_run "$ROOT" "ctest --test-dir /build --output-on-failure $J -R '$QUARANTINE' $*" \
    || echo "debian13: WARNING: quarantined test cases failed (above), as LibTorch's own gradients do here"
fi
echo "debian13: ctest $((SECONDS - t0)) s"
