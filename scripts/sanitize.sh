#!/usr/bin/env bash
# Builds the library, the command and the tests with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs the test suite under them (GRADCAM_TEST_QUICK=1: the reference tests use resnet18 and
# mobilenet_v2 only). Not here: the examples and test_examples (programs over the library calls the
# other tests make), the benchmark, and test_package (packaging, not memory). -O1 -g1, as the
# sanitizers' own docs advise: the same findings with names and lines, and a build 2.5x faster than
# RelWithDebInfo's -O2 -g (explain.cpp: 50 s against 128 s). Precompiled headers as in every build
# (GRADCAM_PCH). Suppressions: tests/sanitizer/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${ASAN_BUILD_DIR:-build-asan}
FIXTURES=${GRADCAM_FIXTURE_DIR:-$PWD/build/tests/fixtures}
if [ ! -f "$B/build.ninja" ]; then
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DGRADCAM_SANITIZE=ON -DGRADCAM_BUILD_BENCH=OFF -DGRADCAM_BUILD_EXAMPLES=OFF \
    -DGRADCAM_INSTALL=OFF -DGRADCAM_FIXTURE_DIR="$FIXTURES" -DGRADCAM_PYTHON="${GRADCAM_PYTHON:-/usr/bin/python3}"
fi
cmake --build "$B" -j "$(nproc)"
S=$PWD/tests/sanitizer
ASAN_BASE="detect_leaks=1:detect_odr_violation=0:suppressions=$S/asan.supp:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$S/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="suppressions=$S/ubsan.supp:print_stacktrace=1:halt_on_error=1"
export GRADCAM_TEST_QUICK=1
# test_errors and test_model load corrupt or too-new models on purpose; LibTorch leaks on that path
# (see lsan.supp), and
# matching the suppression needs full (slow) stack unwinding on malloc: only for that test.
J=${GRADCAM_TEST_JOBS:-2}  # two tests at a time, as scripts/test.sh says why
ASAN_OPTIONS="$ASAN_BASE" ctest --test-dir "$B" --output-on-failure -j "$J" -E '^(test_errors|test_model)$'
ASAN_OPTIONS="$ASAN_BASE:fast_unwind_on_malloc=0" ctest --test-dir "$B" --output-on-failure -j "$J" -R '^(test_errors|test_model)$'

