"""Model rows only (no baselines) of benchmarks/quality.py on one split, for gray denoiser files:
the same crops, noise seeds and PSNR as quality.py, so the rows compare with its baseline rows."""

import json
import sys

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
import quality

from napari_mirnet.degradations import degrade

torch.set_num_threads(1)
split, files = sys.argv[1], sys.argv[2:]
imgs = quality.split_images(split, 1, quality.CROP, ".traindata")
cleans = list(imgs.values())
inputs = {}
for s in quality.SIGMAS:
    inputs[f"sigma {s}"] = [
        quality.degrade_for_bench(c, "denoise", s, quality._seed(i, s)) for i, c in enumerate(cleans)
    ]
for peak, sig in quality.MICROSCOPY_LEVELS:
    spec = {"kind": "poisson_gaussian", "peak": peak, "sigma": sig}
    inputs[f"PG peak {peak:g}"] = [
        quality._np(degrade(quality._t(c), spec, torch.Generator().manual_seed(5000 + int(peak) + i)))
        for i, c in enumerate(cleans)
    ]
out = {"split": split, "images": list(imgs), "rows": {}}
for f in files:
    model, _ = quality.load_model(f)
    for setting, xs in inputs.items():
        ps = [quality.psnr(quality.restore(model, x), c) for x, c in zip(xs, cleans)]
        out["rows"].setdefault(setting, {})[f] = {"psnr": float(np.mean(ps)), "per_image": [round(p, 2) for p in ps]}
        print(f"{setting:<12} {f:<60} {np.mean(ps):.3f}", flush=True)
print(json.dumps(out))
