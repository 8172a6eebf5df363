"""How well any second opinion could rank the blocks on correlated noise: BM3D given the *true*
noise spectrum (an oracle the check never has) as the reference, on the validation strips.

Where the shipped denoiser leaves the benchmark's correlated noise in (issue 33), each block's true
error is the noise realised in it, which varies little from block to block (printed: the block
errors' coefficient of variation). A trust map must then measure each block's noise to a few
percent. Printed per image: the oracle reference's PSNR, that variation, and the Spearman rank
correlation of the output's distance from the reference with the true block error; then pooled
over all images (compare ``second`` and ``combined`` in ``results/qc_validation_tta.txt``).

    python benchmarks/qc_oracle_bound.py
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qc as bench  # noqa: E402  (benchmarks/qc.py: the same images, noise and seeds)

from napari_mirnet import qc, restore  # noqa: E402


def main() -> int:
    import bm3d

    if not hasattr(np, "trapz"):  # bm3d 4.0.3 calls np.trapz for coloured noise; numpy 2.4 removed it
        np.trapz = np.trapezoid
    dist, errs = [], []
    print("qc oracle bound (validation strips, correlated noise): reference = BM3D with the true noise spectrum")
    for name, clean in bench.validation_images().items():
        x = bench.noisy(clean, "correlated", seed=zlib.crc32(f"{name}/correlated/validation".encode()))
        y, report = restore(x, qc=True, device="cpu")
        y = np.asarray(y)
        err = bench.block_error(y, clean)
        h, w = x.shape
        impulse = np.zeros((h, w))
        impulse[0, 0] = 1
        psd = np.abs(np.fft.fft2(ndimage.gaussian_filter(impulse, 1.0, mode="wrap"))) ** 2
        psd *= bench.SIGMA**2 / psd.mean()
        ref = bm3d.bm3d(x.astype(np.float64), sigma_psd=psd * h * w).astype(np.float32)  # bm3d's PSD scale
        d = qc.in_sigmas(np.abs(y - ref), ref, report.noise)
        dist.append(d.ravel())
        errs.append(err.ravel())
        psnr = 10 * np.log10(1 / np.mean((ref - clean) ** 2))
        rho = stats.spearmanr(d.ravel(), err.ravel())[0]
        print(
            f"{name:18s} reference PSNR {psnr:5.2f} dB  block error variation {err.std() / err.mean():.3f}  "
            f"Spearman {rho:+.2f}",
            flush=True,
        )
    print(f"pooled Spearman {stats.spearmanr(np.concatenate(dist), np.concatenate(errs))[0]:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
