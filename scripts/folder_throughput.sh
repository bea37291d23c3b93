#!/usr/bin/env bash
# Folder throughput (docs/performance.md): `gradcam explain` over a folder (Grad-CAM, overlays,
# maps and records written) against plain inference over the same files with the same reader,
# preprocessing and batch (`gradcam bench --images`), alternating the two for ROUNDS rounds and
# printing the medians of images/s and their ratio.
#
#   scripts/folder_throughput.sh MODEL DIR [ROUNDS] [flags for both, e.g. --layer layer4 --threads 2]
#
# GRADCAM: the command (default build/gradcam); BATCH: images per pass (default 8).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODEL DIR [ROUNDS] [flags...]" >&2; exit 2; }
MODEL=$1 DIR=$2 ROUNDS=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
G=${GRADCAM:-build/gradcam} B=${BATCH:-8}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
plain=() explain=()
for r in $(seq "$ROUNDS"); do
  p=$("$G" bench --model "$MODEL" --images "$DIR" --batch "$B" --json "$@" | sed 's/.*"images_per_s": \([0-9.]*\).*/\1/')
  rm -rf "$OUT/x"
  e=$("$G" explain --model "$MODEL" --images "$DIR" --out "$OUT/x" --batch "$B" "$@" 2>&1 >/dev/null |
      sed -n 's/.* \([0-9.]*\) images\/s; wrote.*/\1/p')
  echo "round $r: plain inference $p images/s, explain $e images/s"
  plain+=("$p") explain+=("$e")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
mp=$(median "${plain[@]}") me=$(median "${explain[@]}")
echo "median: plain inference $mp images/s, explain $me images/s, ratio $(awk -v a="$me" -v b="$mp" 'BEGIN {printf "%.3f", a / b}')"
