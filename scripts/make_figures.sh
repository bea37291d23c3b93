#!/usr/bin/env bash
# Regenerates the figures and tables in docs/ from the demo model (after a build in ./build):
#   docs/localization_boxes.png  Grad-CAM boxes (red) against ground truth (green), demo test split
#   the eval-loc tables printed on stdout (pasted into docs/localization.md)
#   docs/transformers_vit.png, docs/detection_digits.png (and the detector's pointing game, printed)
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

# docs/detection_digits.png: the demo detector (examples/demo/digits_detector.pt, a YOLO-style
# grid detector, make_demo_detector.py) on four scenes of handwritten digits. Row 1: every box
# above 0.5, each with its own Grad-CAM map at backbone.stage4 (16x16) shown inside it. Rows 2 and
# 3: the whole map of each scene's first box, by Grad-CAM and by HiResCAM. Then the pointing game
# per box on the 40 shipped scenes (printed, for docs/detection.md)
S=$D/scenes
NORM="--mean 0.485 0.456 0.406 --std 0.229 0.224 0.225"  # as digits.pt; --task detection defaults to none
mkdir -p "$TMP/det"
"$G" explain --task detection --layout 'yolo-nxbx(5+c)' --model $D/digits_detector.pt --labels $D/labels.txt \
  --image $S/scene_00.png $S/scene_01.png $S/scene_02.png $S/scene_03.png $NORM \
  --layer backbone.stage4 --method gradcam hirescam --quiet --out "$TMP/det" > /dev/null
/usr/bin/python3 - "$TMP/det" docs/detection_digits.png <<'PY'
import glob, sys
from PIL import Image
d = sys.argv[1]
rows = [sorted(glob.glob(d + "/*_boxes_gradcam.png")), sorted(glob.glob(d + "/*_box0_*_gradcam.png")),
        sorted(glob.glob(d + "/*_box0_*_hirescam.png"))]
rows = [[Image.open(f).convert("RGB") for f in r] for r in rows]
rows = [[i.resize((i.width * 2, i.height * 2), Image.NEAREST) for i in r] for r in rows]
w, h = rows[0][0].size
out = Image.new("RGB", (4 * w + 18, 3 * h + 12), "white")
for y, r in enumerate(rows):
    for x, i in enumerate(r):
        out.paste(i, (x * (w + 6), y * (h + 6)))
out.save(sys.argv[2], optimize=True)
PY
echo "wrote docs/detection_digits.png"
"$G" eval-loc --task detection --layout 'yolo-nxbx(5+c)' --model $D/digits_detector.pt --labels $D/labels.txt \
  --annotations $S/annotations.csv --images $S $NORM --layer backbone.stage4 --quiet \
  --report "$TMP/det_loc.json"
/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in r.items() if k != "records"}, indent=1))' "$TMP/det_loc.json"
