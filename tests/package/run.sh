#!/usr/bin/env bash
# Installs the build tree into a temporary prefix, builds tests/package against it with
# find_package(gradcam), and runs the result on a fixture model.
set -euo pipefail
BUILD=$1; SRC=$2; MODEL=$3; FLAGS=${4:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cmake --install "$BUILD" --prefix "$WORK/prefix" > /dev/null
cmake -S "$SRC/tests/package" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$WORK/prefix" -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="$FLAGS" > /dev/null
cmake --build "$WORK/build" > /dev/null
"$WORK/build/consumer" "$MODEL"
