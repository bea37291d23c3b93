"""Times a model written by `gradcam export` against the plain model it was made from, both loaded
with torch.jit.load and called under torch.no_grad() as a server calls them, interleaved
(docs/deploy.md). Uses /usr/bin/python3's torch; no gradcam in the process.

usage: time_exported.py MODEL.pt EXPLAINED.pt [--batches 1 8] [--threads 2] [--size 224] [--channels 3]
"""
import argparse
import time

import torch


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("explained")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    plain = torch.jit.load(a.model).eval()
    explained = torch.jit.load(a.explained)
    for b in a.batches:
        x = torch.randn(b, a.channels, a.size, a.size)
        rounds = 5 if b == 1 else 3
        tp, te = [], []
        with torch.no_grad():
            for _ in range(a.warmup):
                plain(x)
                explained(x)
            for _ in range(rounds):
                t = time.perf_counter()
                plain(x)
                tp.append(time.perf_counter() - t)
                t = time.perf_counter()
                explained(x)
                te.append(time.perf_counter() - t)
        print(f"batch {b}: forward {median(tp) * 1000:.1f} ms, exported explainer {median(te) * 1000:.1f} ms, "
              f"ratio {median(te) / median(tp):.2f} (medians of {rounds})")


if __name__ == "__main__":
    main()
