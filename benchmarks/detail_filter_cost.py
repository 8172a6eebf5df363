"""What the detail filter adds to a restore's time: a model restoring pixel-shuffle sub-images with
no filter, with one filter for the whole image (files of session 20) and with 32 px windows (session 21),
and what averaging the restorations at strides 3 and 4 costs (session 24).

The shipped gray denoiser at stride 4 restores one noisy plane through :func:`napari_mirnet.restore`
(tiles as the engine plans them), each variant three times in turn; the median times and their
ratios to the unfiltered restore are printed (measured in the same run, one torch thread).

    OMP_NUM_THREADS=1 python benchmarks/detail_filter_cost.py [--size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from napari_mirnet import restore
    from napari_mirnet.weights import locate, read_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    plane = np.clip(0.5 + 0.1 * rng.standard_normal((a.size, a.size)), 0, 1).astype(np.float32)
    sd, meta = read_checkpoint(locate("small-denoise-gray"))[:2]
    lags = {"vertical": [0.74, 0.3, 0.06], "horizontal": [0.74, 0.3, 0.06], "gain": 0.0, "floor": 0.002}
    variants = {
        "no filter": {},
        "whole image": {"detail_filter": lags},
        "32 px windows": {"detail_filter": {**lags, "window": 32}},
        "strides 3+4, 32 px windows": {"pixel_shuffle": [3, 4], "detail_filter": {**lags, "window": 32}},
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, extra in variants.items():
            paths[name] = Path(tmp) / f"{len(paths)}.pth"
            torch.save({"params": sd, "meta": {**meta, "pixel_shuffle": 4, **extra}}, paths[name])
        for _ in range(a.repeats):
            for name, path in paths.items():
                t = time.perf_counter()
                restore(plane, "denoise", weights=str(path), normalisation="fixed", device="cpu")
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["no filter"])
    print(f"restore of a {a.size}x{a.size} plane, shipped gray denoiser at stride 4 (or 3 and 4), 1 torch thread")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:26s} {m:7.2f} s  ratio {m / base:.3f}  (median of {len(ts)}, alternating)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
