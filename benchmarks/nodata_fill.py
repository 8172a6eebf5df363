"""What a nodata fill does to the pixels with data: the smooth fill alone (before session 23) against
the smooth fill plus noise of the data's own level and correlation (``processing.nodata``).

Photographs that scikit-image ships (gray, 512^2), white or correlated noise (sigma 0.08), and
nodata shaped as users meet it: a rotated scene's empty corners (a footprint turned by 12 degrees
and shrunk: 44% of the pixels) and the left 60% of the image. The shipped gray denoiser restores
each through :func:`napari_mirnet.restore` (tiles as the engine plans them). Printed: PSNR over the
pixels with data, for the image without holes, with the smooth fill and with the noise fill, and
the restore's time with each fill and its ratio (medians of ``--repeats``, in turn, same run).

    OMP_NUM_THREADS=2 python benchmarks/nodata_fill.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _masks(shape):
    import numpy as np
    from scipy import ndimage

    h, w = shape
    box = np.zeros(shape, bool)
    box[h // 8 : h - h // 8, w // 8 : w - w // 8] = True
    corners = ndimage.rotate(box.astype(float), 12, reshape=False, order=0) < 0.5  # outside the footprint
    left = np.zeros(shape, bool)
    left[:, : int(0.6 * w)] = True
    return {"rotated footprint": corners, "left 60%": left}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import numpy as np
    from scipy import ndimage
    from skimage import data

    import napari_mirnet.processing.nodata as nodata
    from napari_mirnet import restore

    noise_fill = nodata._with_noise

    def smooth_fill(v, filled, holes, seed):
        return filled

    def timed(x, fill):
        nodata._with_noise = fill
        try:
            t = time.perf_counter()
            y = np.asarray(restore(x, device="cpu"))
            return y, time.perf_counter() - t
        finally:
            nodata._with_noise = noise_fill

    rng = np.random.default_rng(0)
    print("nodata fill benchmark: shipped gray denoiser, CPU, sigma 0.08; PSNR (dB) over the pixels with data")
    ratios = []
    for name in ("camera", "moon"):
        clean = (getattr(data, name)()[:512, :512] / 255.0).astype(np.float32)
        for kind in ("white", "correlated"):
            n = rng.standard_normal(clean.shape)
            if kind == "correlated":
                n = ndimage.gaussian_filter(n, 1.0)
                n /= n.std()
            x = (clean + 0.08 * n).astype(np.float32)
            whole, _ = timed(x, noise_fill)
            for label, mask in _masks(clean.shape).items():
                holes = np.where(mask, np.float32(np.nan), x)
                ok = ~mask

                def psnr(y, ok=ok):
                    return 10 * np.log10(1 / np.mean((y[ok] - clean[ok]) ** 2))

                times = {"smooth": [], "noise": []}
                outs = {}
                for _ in range(a.repeats):
                    for key, fill in (("smooth", smooth_fill), ("noise", noise_fill)):
                        outs[key], dt = timed(holes, fill)
                        times[key].append(dt)
                t_s, t_n = statistics.median(times["smooth"]), statistics.median(times["noise"])
                ratios.append(t_n / t_s)
                print(
                    f"{name:7s} {kind:10s} {label:18s} ({100 * mask.mean():.0f}% nodata): no holes {psnr(whole):5.2f}"
                    f"  smooth fill {psnr(outs['smooth']):5.2f}  noise fill {psnr(outs['noise']):5.2f}"
                    f"  | time smooth {t_s:.2f} s, noise {t_n:.2f} s, ratio {t_n / t_s:.3f}",
                    flush=True,
                )
    print(f"time ratio noise fill / smooth fill: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
