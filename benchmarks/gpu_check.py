"""GPU checks of the engine (needs CUDA): bf16 autocast, batched tiles, a real out-of-memory split.

python benchmarks/gpu_check.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet.api import restore_whole
from napari_mirnet.model import MIRNetV2
from napari_mirnet.weights import cached_model


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print("GPU:", torch.cuda.get_device_name(), f"{torch.cuda.mem_get_info()[1] / 2**30:.0f} GiB")
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    full = tmp / "full.pth"
    torch.save({"params": MIRNetV2().state_dict()}, full)
    model = cached_model(str(full), "cuda")
    for prec in ("fp32", "bf16"):
        bpp = engine.bytes_per_pixel(model, prec)
        print(
            f"full model {prec}: {bpp:.0f} bytes/pixel = {bpp * 2**20 / 2**30:.2f} GiB per MPix; "
            f"default tile {engine.default_tile(model, prec)}"
        )
    img = np.random.default_rng(0).integers(0, 256, (1536, 1536, 3), dtype=np.uint8)
    plan_tile, halo = 512, 64
    win_px = plan_tile * plan_tile
    print("default batch for 512^2 tiles (bf16):", engine.default_batch(model, win_px, "bf16", 1))
    sizes = []
    real = engine.forward.forward_with_retry

    def spy(m, x, precision, depth=0):
        sizes.append((x.shape[0], precision))
        return real(m, x, precision, depth)

    engine.forward.forward_with_retry = spy
    t0 = time.perf_counter()
    out = nm.restore(img, weights=str(full), device="cuda", tile=plan_tile, halo=halo)
    torch.cuda.synchronize()
    print(f"1536^2 tile 512: {time.perf_counter() - t0:.2f} s, batches {sorted(set(sizes))}")
    engine.forward.forward_with_retry = real
    out32 = nm.restore(img, weights=str(full), device="cuda", tile=plan_tile, halo=halo, precision="fp32")
    print(
        "bf16 vs fp32 output: max |diff|",
        int(np.abs(out.astype(int) - out32).max()),
        "mean",
        float(np.abs(out.astype(int) - out32).mean()),
    )
    whole = restore_whole(img, weights=str(full), device="cuda", precision="fp32")
    mse = np.mean((out32.astype(float) - whole) ** 2)
    print(f"tiled (512, halo 64, blend 16) vs whole fp32: PSNR {10 * np.log10(255**2 / mse):.2f} dB")
    # a real CUDA out-of-memory: cap this process's share of the GPU, then ask for one huge tile
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(6 * 2**30 / torch.cuda.mem_get_info()[1])
    big = np.random.default_rng(1).integers(0, 256, (3072, 3072, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = nm.restore(big, weights=str(full), device="cuda", tile=3072, halo=0, blend=0, precision="fp32")
    msgs = sorted({str(w.message)[:90] for w in rec if issubclass(w.category, RuntimeWarning)})
    print(f"OOM test (6 GiB cap, one 3072^2 fp32 tile): done in {time.perf_counter() - t0:.1f} s, shape {res.shape}")
    for m in msgs:
        print("   warning:", m)


if __name__ == "__main__":
    main()
