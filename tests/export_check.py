"""Runs a model written by `gradcam export` the way a server would: plain torch.jit.load in a
Python process without gradcam, under torch.no_grad(). Used by test_cli's [export] case, which
compares what this writes with `gradcam explain`'s maps of the same image.

usage: export_check.py EXPORTED.pt INPUT.npy EXPLAIN_DIR OUT.pt
  INPUT.npy    the network input [1, C, H, W] (float32) the test made from the image
  EXPLAIN_DIR  `gradcam explain --out` of that image: records.jsonl and the maps it names
  OUT.pt       a scripted module whose buffers are the exported module's outputs (scores, maps,
               classes), explain's maps (explain_map_R) and classes (explain_classes), and whose
               attribute inference_mode_error is the message the module gives under
               torch.inference_mode()
"""
import json
import os
import sys

import numpy as np
import torch


class Store(torch.nn.Module):
    def __init__(self, tensors, message: str):
        super().__init__()
        for k, v in tensors.items():
            self.register_buffer(k, v.detach().contiguous().clone())
        self.inference_mode_error = message


def main():
    exported, input_npy, explain_dir, out = sys.argv[1:5]
    # nothing of gradcam in this process: no module, no library
    assert not any("gradcam" in m for m in sys.modules), "a gradcam Python module is loaded"
    with open("/proc/self/maps") as f:
        assert "libgradcam" not in f.read(), "libgradcam is mapped into this process"
    model = torch.jit.load(exported)
    x = torch.from_numpy(np.load(input_npy))
    with torch.no_grad():
        scores, maps, classes = model(x)
        assert not torch.is_grad_enabled(), "the module left grad mode on"
    message = ""
    try:
        with torch.inference_mode():
            model(x)
    except Exception as e:  # torch.jit.Error
        message = str(e)
    tensors = {"scores": scores, "maps": maps, "classes": classes}
    records = [json.loads(line) for line in open(os.path.join(explain_dir, "records.jsonl"))]
    records = [r for r in records if "rank" in r]
    records.sort(key=lambda r: r["rank"])
    for r in records:
        tensors[f"explain_map_{r['rank']}"] = torch.from_numpy(np.load(r["files"]["map"]))
        tensors[f"explain_up_{r['rank']}"] = torch.from_numpy(np.load(r["files"]["map_upsampled"]))
    tensors["explain_classes"] = torch.tensor([r["class"] for r in records])
    torch.jit.script(Store(tensors, message)).save(out)


if __name__ == "__main__":
    main()
