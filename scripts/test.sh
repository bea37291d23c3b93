#!/usr/bin/env bash
# Configures and builds gradcam in ./build (if needed), then runs every test with CTest.
# The first run also builds the test fixtures (TorchScript models and PyTorch references).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
# The fixtures' Python: Debian's, which has python3-torch (scripts/install_deps.sh); a python3 found
# first on PATH (pyenv, a venv) may not have torch.
PYTHON=${GRADCAM_PYTHON:-/usr/bin/python3}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCAM_PYTHON="$PYTHON" ${CMAKE_ARGS:-}
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure "$@"
