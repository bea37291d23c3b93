#!/usr/bin/env bash
# Optional, not run by CI: builds gradcam against Debian 13's CUDA build of LibTorch 2.6
# (libtorch-cuda-dev, contrib) with nvidia-cuda-toolkit 12.4 (non-free), in a Debian 13 root, and
# runs the whole CTest suite there. Without a GPU the CUDA tests skip with their message; the point
# is that the project configures, compiles and links against a CUDA LibTorch. Needs root.
#
#   bash scripts/build_debian13_cuda.sh [ctest args...]
#
# DEBIAN13_CUDA_ROOT defaults to /var/tmp/gradcam-debian13-cuda (12 GB: the CUDA toolkit).
# Measured times and results: docs/reliability.md.
#
# cuDNN: libtorch-cuda-2.6 depends on nvidia-cudnn, which is only a downloader: its install script
# fetches cuDNN from NVIDIA's site, which this machine and CI cannot reach. That script is
# diverted to a no-op, and libcudnn.so.9 is replaced by a stub that exports the 84 functions
# LibTorch imports (with cuDNN's symbol version), so that programs link and load. Nothing calls
# them without a GPU. On a machine with a GPU, install the real cuDNN instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/debian13.sh
ROOT=${DEBIAN13_CUDA_ROOT:-/var/tmp/gradcam-debian13-cuda}
PACKAGES="g++ cmake ninja-build make libtorch-cuda-dev nvidia-cuda-toolkit libopencv-dev libcatch2-dev
  nlohmann-json3-dev libcli11-dev zlib1g-dev python3-torch-cuda python3-torchvision"
d13_begin "$ROOT"
t0=$SECONDS
D13_PREPARE="dpkg-divert --local --rename --add /usr/sbin/update-nvidia-cudnn > /dev/null \
  && printf '#!/bin/sh\\necho cuDNN not downloaded: stubbed by build_debian13_cuda.sh\\n' > /usr/sbin/update-nvidia-cudnn \
  && chmod +x /usr/sbin/update-nvidia-cudnn"
d13_make_root "$ROOT" "main contrib non-free non-free-firmware" $PACKAGES
d13_mount "$ROOT" "$PWD"
d13_run "$ROOT" 'L=/usr/lib/x86_64-linux-gnu; [ -e $L/libcudnn.so.9 ] && exit 0
  nm -D --undefined-only $L/libtorch_cuda.so.2.6.0 $L/libtorch_python.so.2.6.0 | awk "{print \$NF}" \
    | grep "^cudnn.*@libcudnn.so.9" | sed "s/@.*//" | sort -u | sed "s/.*/void &(void) {}/" > /tmp/cudnn_stub.c
  echo "libcudnn.so.9 { global: *; };" > /tmp/cudnn_stub.map
  gcc -shared -fPIC -Wl,-soname,libcudnn.so.9 -Wl,--version-script=/tmp/cudnn_stub.map -o $L/libcudnn.so.9 /tmp/cudnn_stub.c
  ldconfig; echo "debian13-cuda: stub libcudnn.so.9 with $(wc -l < /tmp/cudnn_stub.c) functions"' 
echo "debian13-cuda: root ready in $((SECONDS - t0)) s"
d13_run "$ROOT" 'echo "debian13-cuda: $(dpkg-query -W -f "\${Package} \${Version}, " libtorch-cuda-dev nvidia-cuda-toolkit python3-torch-cuda g++)"'
t0=$SECONDS
d13_run "$ROOT" "rm -rf /build && cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCAM_WERROR=ON > /build.log 2>&1 \
  && cmake --build /build -j $(nproc) >> /build.log 2>&1" || { tail -60 "$ROOT/build.log"; exit 1; }
grep -E "gradcam .*LibTorch|Catch2|CUDA" "$ROOT/build.log" | head -5 || true
echo "debian13-cuda: build $((SECONDS - t0)) s"
d13_run "$ROOT" "ldd /build/gradcam | grep -E 'torch_cuda|cudart' || { echo 'gradcam does not link LibTorch CUDA'; exit 1; }"
t0=$SECONDS
d13_run "$ROOT" "ctest --test-dir /build --output-on-failure $*"
echo "debian13-cuda: ctest $((SECONDS - t0)) s"
