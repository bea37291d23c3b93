#!/usr/bin/env bash
# Installs what gradcam needs on Debian 12 (run as root, or with sudo available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q \
  g++ cmake ninja-build git \
  libtorch-dev libopencv-dev catch2 nlohmann-json3-dev libcli11-dev libbenchmark-dev zlib1g-dev \
  python3-torch python3-torchvision
