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
# Two tests at a time (GRADCAM_TEST_JOBS): each already computes on every core through LibTorch's
# threads, so more would only oversubscribe; two overlap one test's single-threaded parts (Python
# exporting fixtures, loading models, writing images) with another's kernels. On the 2-core CI
# machine this took the suite from 609 s to 378 s (docs/reliability.md).
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${GRADCAM_TEST_JOBS:-2}" "$@"
