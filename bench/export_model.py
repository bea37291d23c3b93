#!/usr/bin/python3
"""Exports a torchvision model with random weights (seed 0) to TorchScript for the benchmark.

Usage: /usr/bin/python3 bench/export_model.py OUT.pt [resnet50] [script|trace]
Random weights cost the same time as trained ones; no download is needed.
"""
import sys

import torch
import torchvision

out = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else "resnet50"
how = sys.argv[3] if len(sys.argv) > 3 else "script"
torch.manual_seed(0)
model = getattr(torchvision.models, name)().eval()
if how == "trace":
    model = torch.jit.trace(model, torch.randn(1, 3, 224, 224))
else:
    model = torch.jit.script(model)
model.save(out)
print("wrote", out)
