#!/usr/bin/env bash
# The README's first command: installs the dependencies (Debian 12), builds gradcam, and explains
# the shipped demo images with the shipped demo model. The overlays land in ./demo_out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  # the tests' fixtures need a Python with torch: Debian's (scripts/install_deps.sh), as test.sh
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCAM_PYTHON="${GRADCAM_PYTHON:-/usr/bin/python3}"
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" --target gradcam_cli
"$BUILD_DIR/gradcam" explain --model examples/demo/digits.pt --images examples/demo/images \
  --labels examples/demo/labels.txt --resize 0 --crop 0 \
  --method gradcam guided-gradcam --out demo_out
echo "Overlays written to $(pwd)/demo_out (for example demo_out/0003_zero_c0_gradcam.png)"
