#!/usr/bin/env bash
# Regenerates the figures and tables in docs/ from the demo model (after a build in ./build):
#   docs/localization_boxes.png  Grad-CAM boxes (red) against ground truth (green), demo test split
#   the eval-loc tables printed on stdout (pasted into docs/localization.md)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${BUILD_DIR:-build}/gradcam
D=examples/demo
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for m in gradcam counterfactual; do
  "$G" eval-loc --model $D/digits.pt --annotations $D/test/annotations.csv --labels $D/labels.txt \
    --resize 0 --crop 0 --sweep --method $m --quiet --report "$TMP/$m.json"
done
mkdir -p "$TMP/img"
for f in 0010_zero 0021_one 0042_two 0063_three 0104_five 0125_six 0186_seven 0227_eight; do
  ls $D/test/${f%%_*}_*.png
done > "$TMP/list" 2>/dev/null || true
"$G" explain --model $D/digits.pt --image $(head -8 "$TMP/list") --labels $D/labels.txt --resize 0 --crop 0 \
  --threshold 0.55 --json --quiet --out "$TMP/img" > "$TMP/records.jsonl"
/usr/bin/python3 - "$TMP/records.jsonl" $D/test/annotations.csv docs/localization_boxes.png <<'PY'
import csv, json, os, sys
from PIL import Image, ImageDraw
records = [json.loads(l) for l in open(sys.argv[1])]
truth = {r["file"]: r for r in csv.DictReader(open(sys.argv[2]))}
S = 4
tiles = []
for rec in records:
    img = Image.open(rec["image"]).convert("RGB").resize((64 * S, 64 * S), Image.NEAREST)
    d = ImageDraw.Draw(img)
    t = truth[os.path.basename(rec["image"])]
    d.rectangle([int(t["x0"]) * S, int(t["y0"]) * S, (int(t["x1"]) + 1) * S - 1, (int(t["y1"]) + 1) * S - 1], outline=(0, 220, 0), width=3)
    if rec["box"]:
        b = rec["box"]
        d.rectangle([b[0] * S, b[1] * S, (b[2] + 1) * S - 1, (b[3] + 1) * S - 1], outline=(255, 40, 40), width=3)
    d.text((6, 6), f'{rec["label"]} ({rec["prob"]:.2f})', fill=(255, 255, 0))
    tiles.append(img)
out = Image.new("RGB", (len(tiles) * (64 * S + 6), 64 * S), "white")
for i, t in enumerate(tiles):
    out.paste(t, (i * (64 * S + 6), 0))
out.save(sys.argv[3])
print("wrote", sys.argv[3])
PY

# docs/transformers_vit.png: the demo ViT (examples/demo/digits_vit.pt) on the first four test images
# it classifies correctly: image | Grad-CAM | attention rollout (examples/explain_transformer.cpp)
E=${BUILD_DIR:-build}/examples/example_explain_transformer
mkdir -p "$TMP/vit"
names=(zero one two three four five six seven eight nine)
n=0
for p in $D/test/*.png; do
  cls=$("$E" $D/digits_vit.pt "$p" 64 "$TMP/vit/$(basename "$p")" | sed -n 's/^class \([0-9]*\);.*/\1/p')
  label=$(basename "$p" .png | cut -d_ -f2)
  if [ "${names[$cls]}" = "$label" ]; then n=$((n + 1)); else rm -f "$TMP/vit/$(basename "$p")"; fi
  [ $n -ge 4 ] && break
done
/usr/bin/python3 - "$TMP/vit" docs/transformers_vit.png <<'PY'
import glob, sys
from PIL import Image
ims = [Image.open(f) for f in sorted(glob.glob(sys.argv[1] + "/*.png"))]
out = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims) + 6 * (len(ims) - 1)), "white")
y = 0
for i in ims:
    out.paste(i, (0, y))
    y += i.height + 6
out.resize((out.width * 2 // 3, out.height * 2 // 3)).save(sys.argv[2], optimize=True)
PY
echo "wrote docs/transformers_vit.png"
