#!/usr/bin/python3
"""Builds the demo's Vision Transformer: torchvision's VisionTransformer, small, trained on the same
cluttered digits as digits.pt (make_demo.py: the same seed gives the same images), exported to
TorchScript (scripted), for docs/transformers.md's picture and examples/explain_transformer.cpp.

Usage: /usr/bin/python3 examples/demo/make_demo_vit.py MNIST_DIGITS_DIR [OUTDIR]

Model: 64x64 input, patch 8 (an 8x8 grid of tokens and a class token), 3 encoder layers, 4 heads,
hidden size 48. Input as digits.pt's: [N,3,64,64] RGB, pixel/255 normalised with ImageNet's mean
and std (run the gradcam command with --resize 0 --crop 0). Writes digits_vit.pt into OUTDIR
(default: this folder) and prints the test accuracy: 64.7% after 24 epochs on the CPU (about 25
minutes on 2 cores); a ViT this small learns far less from 12,000 images than digits.pt's CNN
(98.3%), but enough for its maps to find the digit (docs/transformers.md).
"""
import os
import sys

import torch
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo import SIZE, load_digits, splits, train  # noqa: E402

EPOCHS = 24


def main():
    xtr, ytr, xte, yte, _ = splits(load_digits(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    model = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=3, num_heads=4, hidden_dim=48,
                              mlp_dim=96, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=EPOCHS * (len(xtr) // 64))
    acc = train(model, opt, sched, EPOCHS, xtr, ytr, xte, yte)
    torch.jit.script(model).save(os.path.join(out, "digits_vit.pt"))
    print("test accuracy", acc)


if __name__ == "__main__":
    main()
