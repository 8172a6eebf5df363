"""Does the trust map mean something? Rank correlation of each signal with the true error, per block.

On the test split (``training.TEST_IMAGES``: never trained on, clean truth known), with noise the
shipped denoiser saw (white Gaussian, sigma 25/255) and noise it did not (the same sigma, filtered
by a Gaussian of sigma 1 pixel: spatially correlated), the shipped gray denoiser restores each
image with ``qc=True``; the benchmark reports, per image x noise x signal, Spearman's rank
correlation between the signal's doubt and the true mean absolute error of each 32 x 32 block, and
the per-image summaries. Then a briefly fine-tuned model on one mismatched image (``pairs="auto"``,
a CPU-seconds budget on one thread, so that it repeats), the time overhead of the check (restores
with and without it, alternating), and the peak memory of a zarr -> zarr restore with the check
(subprocesses). ``--split validation`` runs the table on the validation strips instead (the whole
bottom strips of ``training.VALIDATION_SOURCES``, gray): the thresholds and the map's weights were
chosen there; the test table is reported once, at the end.

    python benchmarks/qc.py [--split test|validation] [--crop 256] [--tta] [--finetune-minutes 2.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from napari_mirnet import qc, restore
from napari_mirnet.training import TEST_IMAGES, _load_test_image, centre_crop, to_channels

SIGMA = 25 / 255
PEAK = 20.0
NOISES = ("gaussian", "correlated", "poisson")
ROOT = Path(__file__).resolve().parents[1]


def noisy(clean: np.ndarray, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.normal(0, 1, clean.shape)
    if kind == "correlated":
        n = ndimage.gaussian_filter(n, 1.0)
        n /= n.std()
    if kind == "poisson":  # photon counts: peak 20 photons at white (sigma 0.16 there, 0.05 at 0.05)
        return (rng.poisson(np.clip(clean, 0, None) * PEAK) / PEAK).astype(np.float32)
    return (clean + SIGMA * n).astype(np.float32)


def test_images(crop: int) -> dict[str, np.ndarray]:
    out = {}
    for name in TEST_IMAGES:
        img = _load_test_image(name)
        if img is not None:
            out[name] = centre_crop(to_channels(img, 1), crop)[..., 0].astype(np.float32)
    return out


def validation_images() -> dict[str, np.ndarray]:
    """The validation strips of the training sources, gray (what the thresholds were chosen on)."""
    from napari_mirnet.training import VALIDATION_SOURCES, split_validation
    from napari_mirnet.training.images import bundled_images

    _, val = split_validation(bundled_images(VALIDATION_SOURCES))
    return {k: to_channels(v, 1)[..., 0].astype(np.float32) for k, v in val.items()}


def block_error(y, clean, block: int = qc.BLOCK) -> np.ndarray:
    return qc._edge_blocks(np.abs(np.asarray(y, np.float64) - clean), block).mean(-1)


def cheap_doubt(report) -> np.ndarray:
    """The map that ``qc=True`` draws: the doubt without the opt-in passes' signals."""
    return qc.map_doubt({k: v for k, v in report.signals.items() if k not in ("disagreement", "second")})


def correlations(report, err: np.ndarray) -> dict[str, float]:
    # a signal that is 0 in every block (``removed`` where nothing was taken) has no rank: nan
    out = {k: float(stats.spearmanr(v.ravel(), err.ravel())[0]) for k, v in report.signals.items()}
    if "disagreement" in report.signals:  # qc="tta": also the map of qc=True, from the same run
        out["combined_on"] = float(stats.spearmanr(cheap_doubt(report).ravel(), err.ravel())[0])
    out["combined"] = float(stats.spearmanr(report.doubt.ravel(), err.ravel())[0])
    return out


def table(images, noises, tta: bool, weights=None, salt: str = "") -> tuple[list[str], dict]:
    lines, cases = [], {}
    for name, clean in images.items():
        for kind in noises:
            x = noisy(clean, kind, seed=zlib.crc32(f"{name}/{kind}{salt}".encode()))
            y, rep = restore(x, weights=weights, qc="tta" if tta else True, device="cpu")
            err = block_error(y, clean)
            rho = correlations(rep, err)
            psnr = 10 * np.log10(1 / np.mean((np.asarray(y, np.float64) - clean) ** 2))
            cases[(name, kind)] = (x, y, rep, err, clean)
            cells = "  ".join(f"{k} {v:+.2f}" for k, v in rho.items())
            lines.append(f"{name:8s} {kind:10s} PSNR {psnr:5.2f} dB  Spearman: {cells}")
            lines.append(f"{'':19s} {rep.text}")
            print(lines[-2], "\n", lines[-1], flush=True)
    return lines, cases


def pooled(cases: dict, kind: str) -> dict[str, float]:
    """Spearman over all blocks of all images with this noise."""
    reps = [(r, e) for (n, k), (_, _, r, e, _) in cases.items() if k == kind]
    err = np.concatenate([e.ravel() for _, e in reps])
    out = {}
    for key in reps[0][0].signals:
        out[key] = float(stats.spearmanr(np.concatenate([r.signals[key].ravel() for r, _ in reps]), err)[0])
    if "disagreement" in reps[0][0].signals:
        on = np.concatenate([cheap_doubt(r).ravel() for r, _ in reps])
        out["combined_on"] = float(stats.spearmanr(on, err)[0])
    out["combined"] = float(stats.spearmanr(np.concatenate([r.doubt.ravel() for r, _ in reps]), err)[0])
    return out


def finetuned(clean: np.ndarray, minutes: float, tmp: Path) -> tuple[str, float]:
    """Fine-tune the shipped gray denoiser on the correlated-noise image (pairs="auto", ``minutes`` of
    this process's CPU time on one thread: repeatable); its summary and PSNR."""
    import torch

    from napari_mirnet import finetune

    x = noisy(clean, "correlated", seed=7)
    model = tmp / "ft.pth"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = finetune(x, model, minutes=minutes, overwrite=True, device="cpu", pairs="auto", clock="cpu")
    finally:
        torch.set_num_threads(threads)
    y, rep = restore(x, weights=str(model), qc=True, device="cpu")
    psnr = 10 * np.log10(1 / np.mean((np.asarray(y, np.float64) - clean) ** 2))
    err = block_error(y, clean)
    rho = {k: round(v, 2) for k, v in correlations(rep, err).items()}
    how = f"pairs {res.pairs} ({res.pairs_reason}), {res.steps} steps, kept {res.kept or '?'}"
    return f"{how}; {rep.text}\n    Spearman: {rho}", float(psnr)


def overhead(image: np.ndarray, reps: int = 3) -> tuple[float, float, float]:
    """Median seconds without and with qc (alternating, same process) and their ratio."""
    restore(image, device="cpu")  # model load and first-call costs out of the timing
    plain, check = [], []
    for _ in range(reps):
        t = time.perf_counter()
        restore(image, device="cpu")
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        restore(image, device="cpu", qc=True)
        check.append(time.perf_counter() - t)
    a, b = float(np.median(plain)), float(np.median(check))
    return a, b, b / a


def check_cost(image: np.ndarray, reps: int = 3) -> tuple[float, float]:
    """Median seconds of the model run and of the check alone on its output (alternating): the
    check's share does not depend on how loaded the machine is between two whole restores."""
    from napari_mirnet import engine
    from napari_mirnet.engine import quality

    run = engine.prepare(image, "denoise", None, options=engine.RestoreOptions(device="cpu"))
    quality.run_qc(run, engine.execute(run))
    model, check = [], []
    for _ in range(reps):
        t = time.perf_counter()
        y = engine.execute(run)
        model.append(time.perf_counter() - t)
        t = time.perf_counter()
        quality.run_qc(run, y)
        check.append(time.perf_counter() - t)
    return float(np.median(model)), float(np.median(check))


_PEAK = """
import resource, sys, numpy as np, zarr
from napari_mirnet import restore
out = restore(sys.argv[1], out=sys.argv[2], device="cpu", tile=256, qc=sys.argv[3] == "1")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_memory(edge: int, tmp: Path) -> tuple[float, float]:
    """Peak RSS (MiB) of zarr -> zarr restores of an edge x edge image without and with qc."""
    import zarr

    src = tmp / "in.zarr"
    rng = np.random.default_rng(0)
    arr = zarr.create_array(str(src), shape=(edge, edge), chunks=(256, 256), dtype="float32")
    yy, xx = np.mgrid[:edge, :edge]
    arr[:] = (0.5 + 0.3 * np.sin(xx / 17) * np.cos(yy / 23) + rng.normal(0, SIGMA, (edge, edge))).astype(np.float32)
    peaks = []
    for flag in ("0", "1"):
        dst = tmp / f"out{flag}.zarr"
        res = subprocess.run(
            [sys.executable, "-c", _PEAK, str(src), str(dst), flag], capture_output=True, text=True, check=True
        )
        peaks.append(float(res.stdout.strip().splitlines()[-1]))
    return peaks[0], peaks[1]


def figure(cases: dict, path: Path) -> None:
    """Input, output, residual, trust map and true error of one matched and one mismatched case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [k for k in cases if k[1] == "gaussian"][:1] + [k for k in cases if k[1] == "correlated"][:1]
    fig, axs = plt.subplots(len(picks), 5, figsize=(15, 3.6 * len(picks)), squeeze=False)
    titles = ["input", "output", "residual (input - output)", "trust map (green: trust)", "true |error| per block"]
    for row, key in zip(axs, picks):
        x, y, rep, err, clean = cases[key]
        lim = 3 * SIGMA
        row[0].imshow(x, cmap="gray", vmin=0, vmax=1)
        row[1].imshow(np.asarray(y), cmap="gray", vmin=0, vmax=1)
        row[2].imshow(np.asarray(rep.residual), cmap="coolwarm", vmin=-lim, vmax=lim)
        row[3].imshow(rep.trust, cmap="RdYlGn", vmin=0, vmax=1)
        row[4].imshow(err, cmap="magma")
        for a, t in zip(row, titles):
            a.set_title(t, fontsize=10)
            a.axis("off")
        row[0].set_title(f"{key[0]}, {key[1]} noise: input", fontsize=10)
        text = rep.text if len(rep.text) < 150 else rep.text[:147] + "..."
        row[2].text(0.5, -0.08, text, transform=row[2].transAxes, fontsize=9, ha="center", va="top")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.06, wspace=0.05, hspace=0.25)
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--tta", action="store_true", help="qc='tta': also the 8 flips' disagreement and the second opinion")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--finetune-minutes", type=float, default=2.5, help="CPU minutes, one thread")
    p.add_argument("--memory-edge", type=int, default=1024)
    p.add_argument("--skip", default="", help="comma list of parts to skip: finetune,overhead,memory")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/qc.txt"))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=stats.ConstantInputWarning)
    torch_threads = os.environ.get("OMP_NUM_THREADS", "default")
    images = test_images(args.crop) if args.split == "test" else validation_images()
    lines = [
        f"qc benchmark ({args.split} split): shipped gray denoiser, CPU (torch threads {torch_threads}), crops {args.crop}, "
        f"block {qc.BLOCK}, noise sigma 25/255 white ('gaussian', seen), Gaussian-filtered ('correlated', not seen), or photon counts peak {PEAK:g} ('poisson', seen as Poisson-Gaussian in blind training)"
    ]
    rows, cases = table(images, NOISES, args.tta, salt="" if args.split == "test" else "/validation")
    lines += rows
    for kind in NOISES:
        lines.append(
            f"pooled over images, {kind}: " + json.dumps({k: round(v, 3) for k, v in pooled(cases, kind).items()})
        )
        per = [correlations(r, e)["combined"] for (_, k), (_, _, r, e, _) in cases.items() if k == kind]
        lines.append(
            f"    combined per image, {kind}: median {np.median(per):+.2f}, range {min(per):+.2f} to {max(per):+.2f}"
        )
    skip = set(args.skip.split(","))
    if args.split == "validation":
        skip |= {"finetune", "overhead", "memory"}
    elif not args.tta:  # with the second opinion the bad case's map is red throughout: the same picture
        figure(cases, ROOT / "docs/qc_crops.png")
    with tempfile.TemporaryDirectory() as tmp:
        if "finetune" not in skip:
            name = next(iter(images))
            text, psnr = finetuned(images[name], args.finetune_minutes, Path(tmp))
            lines.append(
                f"fine-tuned ({args.finetune_minutes} CPU minutes, one thread) on {name} correlated: PSNR {psnr:.2f} dB; {text}"
            )
        if "overhead" not in skip:
            a, b, r = overhead(noisy(next(iter(images.values())), "gaussian", 1))
            lines.append(
                f"overhead: restore {a:.2f} s, restore + qc {b:.2f} s, ratio {r:.3f} (median of 3, alternating)"
            )
            big = next(iter(test_images(512).values()))
            m, c = check_cost(noisy(big, "gaussian", 2))
            lines.append(
                f"check alone, {big.shape[0]}x{big.shape[1]}: model run {m:.2f} s, check {c:.3f} s, "
                f"ratio {c / m:.3f} (median of 3, alternating)"
            )
        if "memory" not in skip:
            m0, m1 = peak_memory(args.memory_edge, Path(tmp))
            lines.append(
                f"peak RSS zarr -> zarr {args.memory_edge}^2 float32, tile 256: without qc {m0:.0f} MiB, with qc {m1:.0f} MiB"
            )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
