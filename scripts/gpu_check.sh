#!/usr/bin/env bash
# GPU check, for a machine like the lent H100 one: CUDA, CMake, ninja and pip's torch (with its
# bundled LibTorch), no OpenCV C++ headers, no Catch2, no internet. Configures against the pip
# LibTorch, builds the core and its tests with OpenCV off, runs the CUDA tests and the benchmark,
# and prints a table. Fits in one device call of under 10 minutes.
#
# Before the call, here (where Debian's catch2 is installed):
#   mkdir -p .device/catch2 && cp /usr/include/catch2/catch.hpp .device/catch2/
#   (.device/ is git-ignored; carry it: run(command="bash scripts/gpu_check.sh", carry=[".device"]))
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_VERSION=$($PY -c 'import torch; print(torch.__version__)')
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo unknown)
B=build-gpu
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCAM_WITH_OPENCV=OFF \
  -DGRADCAM_BUILD_EXAMPLES=OFF -DCMAKE_PREFIX_PATH="$PREFIX" -DGRADCAM_PYTHON="$(command -v $PY)" \
  -DGRADCAM_CATCH2_INCLUDE="$PWD/.device" 2>&1 | tail -3
cmake --build $B -j "$(nproc)" --target test_cuda test_gradcam gradcam_bench 2>&1 | tail -3
$PY tests/fixtures/make_fixtures.py $B/tests/fixtures resnet18 vgg16 2>&1 | grep -v Warning | tail -2
GRADCAM_FIXTURES=$B/tests/fixtures $B/tests/test_cuda 2>&1 | tee "$OUT/test_cuda.txt" | tail -5
$PY bench/export_model.py $B/resnet50.pt resnet50 2>&1 | tail -1
# DEVICE=cpu QUICK=1 checks every step on a machine without a GPU (tiny batch, few repeats)
DEVICE=${DEVICE:-cuda}
if [ "${QUICK:-0}" = 1 ]; then R1=2; R64=1; BIG=4; W=1; else R1=50; R64=10; BIG=64; W=10; fi
run_bench() { $B/bench/gradcam_bench --model $B/resnet50.pt --layer layer4 --device "$DEVICE" --threads 4 --warmup $W "$@"; }
run_bench --batch 1 --repeat $R1 | tee "$OUT/bench_b1.json"
run_bench --batch $BIG --repeat $R64 --no-guided | tee "$OUT/bench_b64.json"
$PY - "$OUT" "$CARD" "$TORCH_VERSION" <<'PYEOF'
import json, sys
out, card, tv = sys.argv[1:4]
b1 = json.load(open(f"{out}/bench_b1.json")); b64 = json.load(open(f"{out}/bench_b64.json"))
print(f"\nGPU: {card}, LibTorch {tv}, resnet50 224x224, layer4")
print("| row | forward ms | method ms | ratio | images/s |")
print("| --- | --- | --- | --- | --- |")
print(f"| Grad-CAM, batch 1 | {b1['forward_ms']:.2f} | {b1['gradcam_ms']:.2f} | {b1['ratio']:.2f} | {b1['gradcam_images_per_s']:.0f} |")
print(f"| Guided Grad-CAM, batch 1 | {b1['forward_ms']:.2f} | {b1['guided_gradcam_ms']:.2f} | {b1['guided_ratio']:.2f} | |")
print(f"| Grad-CAM, batch {b64['batch']} | {b64['forward_ms']:.2f} | {b64['gradcam_ms']:.2f} | {b64['ratio']:.2f} | {b64['gradcam_images_per_s']:.0f} |")
for b in (b1, b64):  # each mode in its own process: GPU memory in use after its calls (bench_core.cpp)
    mem = b.get("memory", {})
    print(f"memory at batch {b['batch']} ({mem.get('kind', b.get('memory_note', 'not measured'))}): " +
          ", ".join(f"{k} {v['peak_mib']:.0f} MiB ({v['peak_ratio']:.2f}x)" for k, v in mem.items() if k != "kind"))
PYEOF
