#!/usr/bin/python3
"""Builds the demo's detector: a small one-stage, YOLO-style grid detector trained on scenes of
real MNIST digits (several per image, on make_demo.py's clutter), traced to TorchScript with a
dense output in the layout yolo-nxbx(5+c), for docs/detection.md's picture.

Usage: /usr/bin/python3 examples/demo/make_demo_detector.py MNIST_DIGITS_DIR [OUTDIR]

Scenes: 128x128 grey, 2 to 4 digits each scaled to 24-40 px, placed without overlapping, on
clutter (fragments of other digits, noise). A box is the bounding box of a digit's ink.
Model: 4 conv stages (stride 8, a 16x16 grid of cells; layers backbone.stage1 .. stage4) and a
1x1 head. Each cell predicts one box: cx, cy (offsets in the cell, through a sigmoid), w, h
(exp of the output times 32 px), the objectness (sigmoid) and 10 class probabilities (softmax):
output [N, 256, 15], a box's score for class c being objectness x probability (YOLOv5's).
Input as digits.pt's: [N,3,128,128] RGB, pixel/255 normalised with ImageNet's mean and std
(run the gradcam command with --resize 0 --crop 0 and the default --mean/--std).

Writes into OUTDIR (default: this folder): digits_detector.pt and scenes/ (the first 40 test
scenes as PNGs, and annotations.csv: file,label,x0,y0,x1,y1, one row per digit). Prints the
test precision and recall of the boxes at score 0.5, IoU 0.5.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo import MEAN, NAMES, STD, load_digits, scale  # noqa: E402

SIZE, STRIDE, ANCHOR = 128, 8, 32.0
GRID = SIZE // STRIDE
EPOCHS = 10


def make_scene(rng, digits, pool):
    """(image [128,128], [(label, x0, y0, x1, y1)])."""
    canvas = rng.uniform(0.0, 0.15, (SIZE, SIZE)).astype(np.float32)
    for _ in range(rng.integers(10, 20)):  # clutter: 9x9 fragments of random digits
        d = rng.integers(10)
        src = digits[d][rng.choice(pool[d])]
        y, x = rng.integers(0, 28 - 9, 2)
        cy, cx = rng.integers(0, SIZE - 9, 2)
        canvas[cy:cy + 9, cx:cx + 9] = np.maximum(canvas[cy:cy + 9, cx:cx + 9], src[y:y + 9, x:x + 9] * rng.uniform(0.4, 0.9))
    objects, taken = [], []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(20):
            s = int(rng.integers(24, 41))
            y, x = (int(v) for v in rng.integers(0, SIZE - s + 1, 2))
            if all(x + s <= a or a + b <= x or y + s <= c or c + b <= y for a, c, b in taken):
                break
        else:
            continue
        label = int(rng.integers(10))
        digit = scale(digits[label][rng.choice(pool[label])], s)
        canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], digit)
        ys, xs = np.nonzero(digit >= 0.3)
        objects.append((label, x + int(xs.min()), y + int(ys.min()), x + int(xs.max()), y + int(ys.max())))
        taken.append((x, y, s))
    return np.clip(canvas, 0, 1), objects


def stage(cin, cout, pool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*(layers + ([nn.MaxPool2d(2)] if pool else [])))


class DigitDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential()
        for i, (cin, cout, pool) in enumerate([(3, 16, True), (16, 32, True), (32, 64, True), (64, 96, False)]):
            self.backbone.add_module(f"stage{i + 1}", stage(cin, cout, pool))
        self.head = nn.Conv2d(96, 5 + 10, 1)
        gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("cells", torch.stack([gx, gy], -1).reshape(1, GRID * GRID, 2).float())

    def raw(self, x):
        """[N, 256, 15] before the decoding: the training loss reads these."""
        return self.head(self.backbone(x)).flatten(2).transpose(1, 2)

    def forward(self, x):
        r = self.raw(x)
        xy = (torch.sigmoid(r[..., :2]) + self.cells) * STRIDE
        wh = torch.exp(r[..., 2:4].clamp(max=3.0)) * ANCHOR
        return torch.cat([xy, wh, torch.sigmoid(r[..., 4:5]), torch.softmax(r[..., 5:], -1)], -1)


def targets(objects):
    """Per image: objectness [256], and for the responsible cells (the one holding a box's
    centre) their index, box offsets [4] and class."""
    obj = torch.zeros(GRID * GRID)
    cells, boxes, labels = [], [], []
    for label, x0, y0, x1, y1 in objects:
        cx, cy, w, h = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, x1 - x0 + 1, y1 - y0 + 1
        gx, gy = int(cx // STRIDE), int(cy // STRIDE)
        cell = gy * GRID + gx
        obj[cell] = 1
        cells.append(cell)
        boxes.append([cx / STRIDE - gx, cy / STRIDE - gy, np.log(w / ANCHOR), np.log(h / ANCHOR)])
        labels.append(label)
    return obj, cells, torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


def loss_of(model, x, batch):
    r = model.raw(x)
    obj = torch.stack([t[0] for t in batch])
    loss = F.binary_cross_entropy_with_logits(r[..., 4], obj, reduction="sum")
    for n, (_, cells, boxes, labels) in enumerate(batch):
        p = r[n, cells]
        loss = loss + 5 * F.mse_loss(torch.cat([torch.sigmoid(p[:, :2]), p[:, 2:4]], 1), boxes, reduction="sum")
        loss = loss + F.cross_entropy(p[:, 5:], labels, reduction="sum")
    return loss / len(batch)


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def evaluate(model, x, scenes, threshold=0.5):
    """Precision and recall at the score threshold, IoU 0.5, with torchvision's batched NMS
    (0.45), boxes in continuous coordinates (a digit's pixels x0..x1 span x0 to x1 + 1)."""
    from torchvision.ops import batched_nms
    with torch.no_grad():
        out = model(x)
    tp = fp = total = 0
    for n, objects in enumerate(scenes):
        score, label = (out[n, :, 4:5] * out[n, :, 5:]).max(1)
        keep = score >= threshold
        c, s, lab = out[n, keep, :4], score[keep], label[keep]
        boxes = torch.cat([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1)
        kept = batched_nms(boxes, s, lab, 0.45)
        truth = [(lb, x0, y0, x1 + 1, y1 + 1) for lb, x0, y0, x1, y1 in objects]
        used = set()
        for k in kept.tolist():
            match = [i for i, t in enumerate(truth) if i not in used and t[0] == lab[k] and iou(boxes[k].tolist(), t[1:]) >= 0.5]
            tp += bool(match)
            fp += not match
            used.update(match[:1])
        total += len(truth)
    return tp / max(tp + fp, 1), tp / max(total, 1)


def to_input(gray):
    return (torch.from_numpy(gray)[:, None].repeat(1, 3, 1, 1) - MEAN) / STD


def main():
    digits = load_digits(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    train_pool, test_pool = [], []
    for d in range(10):
        idx = rng.permutation(len(digits[d]))
        train_pool.append(idx[:int(len(idx) * 0.8)])
        test_pool.append(idx[int(len(idx) * 0.8):])
    train_set = [make_scene(rng, digits, train_pool) for _ in range(4000)]
    test_set = [make_scene(rng, digits, test_pool) for _ in range(200)]
    xt = to_input(np.stack([s[0] for s in train_set]))
    tt = [targets(s[1]) for s in train_set]
    xv = to_input(np.stack([s[0] for s in test_set]))
    model = DigitDetector()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=EPOCHS * (len(xt) // 32))
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt) - 31, 32):
            b = perm[i:i + 32]
            loss = loss_of(model, xt[b], [tt[j] for j in b.tolist()])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        precision, recall = evaluate(model, xv, [s[1] for s in test_set])
        print(f"epoch {epoch}: loss {total / (len(xt) // 32):.3f}, test precision {precision:.3f}, "
              f"recall {recall:.3f}", flush=True)
    model.eval()
    torch.jit.trace(model, xv[:2]).save(os.path.join(out, "digits_detector.pt"))

    from PIL import Image  # python3-pil comes with python3-torchvision
    scenes = os.path.join(out, "scenes")
    os.makedirs(scenes, exist_ok=True)
    with open(os.path.join(scenes, "annotations.csv"), "w") as f:
        f.write("file,label,x0,y0,x1,y1\n")
        for i, (img, objects) in enumerate(test_set[:40]):
            name = f"scene_{i:02d}.png"
            Image.fromarray((img * 255).round().astype(np.uint8), mode="L").save(os.path.join(scenes, name))
            for label, x0, y0, x1, y1 in objects:
                f.write(f"{name},{NAMES[label]},{x0},{y0},{x1},{y1}\n")
    print(f"test precision {precision:.3f}, recall {recall:.3f} (score >= 0.5, IoU >= 0.5, 200 scenes)")


if __name__ == "__main__":
    main()
