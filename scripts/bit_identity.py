"""Restore a fixed set of inputs and save the results, or compare two saved sets bit for bit.

Used to show that a refactor changes no output: run ``--save DIR`` with the code before and after
(e.g. ``PYTHONPATH=<old checkout> python scripts/bit_identity.py --save before``), then
``--compare before after``, which prints the max |difference| per case.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def _cases(tmp: Path):
    import torch

    import napari_mirnet as nm
    from napari_mirnet import api
    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    torch.manual_seed(0)
    dp_model = MIRNetV2(MIRNetConfig(in_channels=6, out_channels=3, n_feat=16, n_mrb=1, dual_pixel=True))
    dp_path = tmp / "dp.pth"
    torch.save({"params": dp_model.state_dict()}, dp_path)

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (100, 84), dtype=np.uint8)
    rgb = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    stack = rng.integers(0, 65536, (3, 72, 68), dtype=np.uint16)
    flt = rng.normal(100, 30, (76, 60)).astype(np.float32)
    small = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)
    left = rng.integers(0, 65536, (60, 52), dtype=np.uint16)
    right = rng.integers(0, 65536, (60, 52), dtype=np.uint16)
    tiled = dict(tile=48, halo=12, blend=8, device="cpu")
    yield "gray_tiled", lambda: nm.restore(gray, "denoise", **tiled)
    yield "gray_whole", lambda: api.restore_whole(gray, "denoise", device="cpu")
    yield "rgb_tiled", lambda: nm.restore(rgb, "denoise", **tiled)
    yield "rgb_whole", lambda: api.restore_whole(rgb, "denoise", device="cpu")
    yield "rgb_tiled_tta", lambda: nm.restore(rgb[:40, :48], "denoise", tta=True, **tiled)
    yield "zyx_tiled", lambda: nm.restore(stack, "denoise", axes="ZYX", **tiled)
    yield "zyx_whole", lambda: api.restore_whole(stack, "denoise", axes="ZYX", device="cpu")
    yield "float_tiled", lambda: nm.restore(flt, "denoise", **tiled)
    yield "float_whole", lambda: api.restore_whole(flt, "denoise", device="cpu")
    yield "sr2_tiled", lambda: nm.restore(small, "super_resolution", scale=2, **tiled)
    yield "sr2_whole", lambda: api.restore_whole(small, "super_resolution", scale=2, device="cpu")
    yield "dp_tiled", lambda: nm.restore((left, right), "defocus", str(dp_path), **tiled)
    yield "dp_whole", lambda: api.restore_whole((left, right), "defocus", str(dp_path), device="cpu")
    yield "rgb_zarr", lambda: np.asarray(nm.restore(rgb, "denoise", out=str(tmp / "rgb.zarr"), **tiled))
    yield (
        "zyx_zarr",
        lambda: np.asarray(nm.restore(stack, "denoise", axes="ZYX", out=str(tmp / "zyx.zarr"), **tiled)),
    )
    yield (
        "sr2_zarr",
        lambda: np.asarray(nm.restore(small, "super_resolution", scale=2, out=str(tmp / "sr.zarr"), **tiled)),
    )
    yield "api_rgb", lambda: np.asarray(nm.restore(rgb, "denoise", **tiled))


def save(out: Path) -> None:
    import torch

    torch.set_num_threads(1)  # CPU results depend in the last bit on the thread count
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in _cases(Path(tmp)):
            arr = np.asarray(fn())
            np.save(out / f"{name}.npy", arr)
            print(f"{name:14s} {arr.shape} {arr.dtype}")


def compare(a: Path, b: Path) -> int:
    worst = 0.0
    for fa in sorted(a.glob("*.npy")):
        fb = b / fa.name
        if not fb.exists():
            print(f"{fa.stem:14s} missing in {b}")
            worst = float("inf")
            continue
        x, y = np.load(fa), np.load(fb)
        if x.shape != y.shape or x.dtype != y.dtype:
            print(f"{fa.stem:14s} shape/dtype differ: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
            worst = float("inf")
            continue
        d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        worst = max(worst, d)
        print(f"{fa.stem:14s} {str(x.shape):16s} {x.dtype!s:8s} max |difference| = {d:g}")
    print(f"all cases: max |difference| = {worst:g}")
    return 0 if worst == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path, metavar="DIR")
    g.add_argument("--compare", type=Path, nargs=2, metavar=("DIR_A", "DIR_B"))
    args = p.parse_args()
    if args.save:
        save(args.save)
        return 0
    return compare(*args.compare)


if __name__ == "__main__":
    sys.exit(main())
