"""Self-supervised fine-tuning vs the shipped gray denoiser, Noise2Void (CAREamics) and (Anscombe +) BM3D.

Data (``--images synthetic``, the default): a synthetic fluorescence-like stack with known ground truth
(nuclei with texture, filaments, puncta, blurred by a 3D Gaussian PSF), made here from a seed, so that
nothing is downloaded and the project's held-out photographs stay held out. ``--images packages``: the
gray 256x256 centre crops of the project's test images that installed packages ship
(``training.TEST_IMAGES``: never trained or selected on), every plane scored. Five noise types:

- ``gaussian``: additive white Gaussian, sigma 25/255 of the signal range (the shipped model saw this);
- ``poisson_gain_offset``: camera model, 20 photons at the brightest pixel, gain 2.2 ADU per electron,
  offset 100 ADU, Gaussian read noise of 1.6 electrons (not in the shipped model's training);
- ``row_correlated``: read noise correlated along rows (a 5-pixel horizontal kernel, sigma 0.07),
  row offsets (sigma 0.02) and a little white noise (sigma 0.02) (not in its training);
- ``correlated_weak`` / ``correlated_strong``: white Gaussian noise filtered (circularly, plane by
  plane) by a 2-D Gaussian of sigma 1 px scaled to unit energy, std 0.05 / 0.10 of the clean range:
  correlated over 2-3 px in both directions (0.78, 0.37, 0.11 at lags 1, 2, 3) (issue 37).

Every trained method gets the same budget in CPU seconds of one thread (``torch.set_num_threads(1)``,
budgets counted by ``time.process_time``), so "10 CPU minutes" is exact even on a shared machine.
Inference and BM3D are not counted. All methods see the stack after one affine intensity map (its
0.1/99.9 percentiles); PSNR is computed on held-out planes against the ground truth, whose range is 1.
BM3D is told the true noise: sigma, the Anscombe transform's parameters, or the exact power spectrum.
Methods (``--methods``): shipped, finetuned (the library's default mode), finetuned_any / finetuned_auto
(``pairs="any"`` / ``"auto"``), n2v, bm3d; each records its CPU and wall seconds and the git commit.

Run: ``python benchmarks/finetune.py`` (about an hour of one core per noise type: run them in
parallel with ``--noise NAME``), ``--quick`` for a smoke test, ``--compare-objectives`` for the
Neighbor2Neighbor vs blind-spot comparison of docs/finetune.md, ``--budgets 1,3,10`` for the table of
budgets x noise types (benchmarks/finetune_budgets.py). Output: ``benchmarks/results/finetune[_NAME].txt``
and one ``finetune[_packages]_KIND.json`` per noise type, merged into (methods run again replace theirs,
the others stay) so columns can be added later; ``--figure`` writes docs/finetune_crops.png and
finetune.txt/.json from the saved results.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from finetune_baselines import _careamics, correlated_noise, run_bm3d, run_n2v  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOISES = ("gaussian", "poisson_gain_offset", "row_correlated", "correlated_weak", "correlated_strong")
#: noise correlated over a few pixels in both directions (issue 37): std of the filtered noise
CORRELATED = {"correlated_weak": 0.05, "correlated_strong": 0.10}
#: the fine-tuned variants: method name -> finetune keyword arguments ("finetuned": the library's defaults)
FINETUNED = {"finetuned": {}, "finetuned_any": {"pairs": "any"}, "finetuned_auto": {"pairs": "auto"}}
#: noise types the shipped gray model was trained on
SEEN = {"gaussian"}


# ------------------------------------------------------------------------------------------ data
def clean_stack(z: int = 16, size: int = 256, seed: int = 0) -> np.ndarray:
    """A fluorescence-like (Z, Y, X) float32 volume in [0, 1]."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    vol = np.zeros((z, size, size), np.float32)
    zz, yy, xx = np.mgrid[0:z, 0:size, 0:size].astype(np.float32)
    # nuclei: ellipsoids with smooth internal texture (chromatin-like)
    texture = ndi.gaussian_filter(rng.normal(size=vol.shape).astype(np.float32), (1.5, 3, 3))
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    for _ in range(14):
        cz, cy, cx = rng.uniform(0, z), rng.uniform(0, size), rng.uniform(0, size)
        rz, ry, rx = rng.uniform(4, 8), rng.uniform(14, 30), rng.uniform(14, 30)
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        vol[inside] = np.maximum(vol[inside], rng.uniform(0.25, 0.5) * (0.6 + 0.8 * texture[inside]))
    # filaments: smooth random curves that drift slowly through z
    for _ in range(40):
        p = rng.uniform(0, size, 2)
        d = rng.normal(size=2)
        d /= np.linalg.norm(d)
        z0 = rng.uniform(0, z)
        bright = rng.uniform(0.4, 1.0)
        for _s in range(int(rng.uniform(80, 300))):
            d = d + rng.normal(scale=0.15, size=2)
            d /= np.linalg.norm(d)
            p = p + d
            z0 += rng.normal(scale=0.05)
            iy, ix, iz = int(p[0]), int(p[1]), int(round(z0))
            if 0 <= iy < size and 0 <= ix < size and 0 <= iz < z:
                vol[iz, iy, ix] = max(vol[iz, iy, ix], bright)
    # puncta
    for _ in range(300):
        iz, iy, ix = rng.integers(0, z), rng.integers(0, size), rng.integers(0, size)
        vol[iz, iy, ix] = max(vol[iz, iy, ix], rng.uniform(0.5, 1.0) * 3)
    vol = ndi.gaussian_filter(vol, (1.0, 1.2, 1.2)) + 0.04  # PSF and background
    vol /= np.percentile(vol, 99.95)
    return np.clip(vol, 0, 1).astype(np.float32)


def add_noise(clean: np.ndarray, kind: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """(noisy, ground truth in the same units, the noise parameters)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        s = 25 / 255
        return (clean + rng.normal(0, s, clean.shape)).astype(np.float32), clean, {"sigma": s}
    if kind == "poisson_gain_offset":
        photons, gain, offset, read = 20.0, 2.2, 100.0, 1.6
        electrons = rng.poisson(clean * photons).astype(np.float32) + rng.normal(0, read, clean.shape)
        noisy = gain * electrons + offset
        truth = gain * clean * photons + offset
        return (
            noisy.astype(np.float32),
            truth.astype(np.float32),
            {"photons": photons, "gain": gain, "offset": offset, "read_noise_e": read},
        )
    if kind == "row_correlated":
        k = np.ones(5, np.float32) / np.sqrt(5.0)  # unit gain for white input: the sigma is kept
        corr = ndi.convolve1d(rng.normal(0, 0.07, clean.shape).astype(np.float32), k, axis=-1, mode="wrap")
        rows = rng.normal(0, 0.02, clean.shape[:-1] + (1,)).astype(np.float32)
        white = rng.normal(0, 0.02, clean.shape).astype(np.float32)
        return (
            (clean + corr + rows + white).astype(np.float32),
            clean,
            {"correlated_sigma": 0.07, "kernel": "5-px box along rows", "row_sigma": 0.02, "white_sigma": 0.02},
        )
    if kind in CORRELATED:
        s, px = CORRELATED[kind], 1.0
        noise = correlated_noise(rng, clean.shape, s, px)
        return (clean + noise).astype(np.float32), clean, {"sigma": s, "kernel_sigma_px": px, "kernel": "2-D Gaussian"}
    raise ValueError(kind)


def package_stack(size: int = 256) -> tuple[np.ndarray, list[str]]:
    """Gray centre crops (N, size, size) in [0, 1] of the project's held-out test images that installed
    packages ship (as benchmarks/qc.py reads them); images smaller than ``size`` are left out."""
    from napari_mirnet.training import TEST_IMAGES, _load_test_image, centre_crop, to_channels

    planes, names = [], []
    for name in TEST_IMAGES:
        img = _load_test_image(name)
        if img is not None and min(img.shape[:2]) >= size:
            planes.append(centre_crop(to_channels(img, 1), size)[..., 0].astype(np.float32))
            names.append(name)
    if not planes:
        raise RuntimeError("none of training.TEST_IMAGES is installed (pywt, matplotlib): use --images synthetic")
    return np.stack(planes), names


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - y) ** 2)))


# ------------------------------------------------------------------------------------------ methods
def run_shipped(noisy_eval: np.ndarray, weights="small-denoise-gray") -> np.ndarray:
    from napari_mirnet import restore

    # the percentile map leaves 0.1% of the noisy pixels on each side outside [0, 1], which restore's
    # "fixed" map refuses (since issue 15) rather than clip silently: clip them here, as it used to
    x = np.clip(noisy_eval, 0.0, 1.0)
    return restore(x, "denoise", weights=str(weights), axes="ZYX", normalisation="fixed", device="cpu")


def run_finetune(noisy: np.ndarray, budget_s: float, workdir: Path, objective="auto", **kw) -> tuple[Path, dict]:
    """Fine-tune the shipped gray model for ``budget_s`` CPU seconds; (model path, what the run reported)."""
    from napari_mirnet import finetune

    out = workdir / f"ft-{objective}-{kw.get('pairs', 'default')}.pth"
    t, wall = time.process_time(), time.perf_counter()
    r = finetune(
        noisy,
        out,
        "small-denoise-gray",
        minutes=budget_s / 60,
        axes="ZYX",
        normalisation="fixed",
        clock="cpu",
        device="cpu",
        objective=objective,
        overwrite=True,
        **kw,
    )
    info = {
        "objective": r.objective,
        "steps": r.steps,
        "best_step": r.best_step,
        "source_val": r.source_val,
        "best_val": r.best_val,
        "cpu_s": round(time.process_time() - t, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    # issue 37's report (absent from older versions of the library): the mode used, which model was
    # kept, the held-out check that chose it, and the noise correlations that chose the mode
    for name in ("pairs", "kept", "selection", "noise_correlation", "unchanged", "setup_s"):
        if getattr(r, name, None) not in (None, "", {}):
            info[name] = _plain(getattr(r, name))
    return out, info


def _plain(v):
    """``v`` as JSON can hold it (numpy scalars and tuples made plain, floats rounded)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (float, np.floating)):  # NaN/inf as null: strict JSON readers refuse NaN
        return round(float(v), 5) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v if isinstance(v, (str, int, bool)) or v is None else str(v)


# ------------------------------------------------------------------------------------------ driver
def prepare(kind: str, clean: np.ndarray) -> dict:
    """The noisy stack after the benchmark's one intensity map, its ground truth on the same map, and a
    ``score`` function (PSNR relative to the ground truth's own range)."""
    noisy_raw, truth_raw, params = add_noise(clean, kind)
    lo, hi = np.percentile(noisy_raw, [0.1, 99.9])
    span = hi - lo
    truth = ((truth_raw - lo) / span).astype(np.float32)
    rng_scale = (truth_raw.max() - truth_raw.min()) / span
    return {
        "noisy": ((noisy_raw - lo) / span).astype(np.float32),
        "truth": truth,
        "params": params,
        "scale": (lo, span),
        "rng_scale": rng_scale,
        "score": lambda x, idx: psnr(x / rng_scale, truth[idx] / rng_scale),
    }


def make_clean(images: str, z: int, size: int, eval_planes: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(clean stack, planes to score, description): the synthetic stack, or the packages' test images
    (every plane scored: there are only a few)."""
    if images == "packages":
        clean, names = package_stack(size)
        return clean, np.arange(len(clean)), {"images": "packages", "names": names}
    idx = np.linspace(0, z - 1, eval_planes).round().astype(int)
    return clean_stack(z, size), idx, {"images": "synthetic"}


def bench_noise(kind: str, budget_s: float, clean, eval_idx, workdir: Path, methods, about: dict) -> dict:
    """Every method in ``methods`` on ``clean`` + noise ``kind``; PSNR, CPU and wall seconds of each."""
    import torch

    torch.set_num_threads(1)
    d = prepare(kind, clean)
    noisy, rng_scale, mid = d["noisy"], d["rng_scale"], len(eval_idx) // 2
    res = {
        "noise": kind,
        "params": d["params"],
        "budget_cpu_s": budget_s,
        "stack": list(clean.shape),
        "eval_planes": eval_idx.tolist(),
        **about,
        "methods": {},
    }
    crops = {"ground truth": d["truth"][eval_idx][mid], "noisy": noisy[eval_idx][mid]}

    def record(name, out, info=None, t=None):
        res["methods"][name] = {"psnr": round(d["score"](out, eval_idx), 3), **(info or {})}
        if t is not None:
            res["methods"][name]["cpu_s_total"] = round(time.process_time() - t[0], 1)
            res["methods"][name]["wall_s_total"] = round(time.perf_counter() - t[1], 1)
        res["methods"][name]["commit"] = git_commit()
        crops[name] = out[mid]
        print(f"[{kind}] {name}: {res['methods'][name]}", flush=True)

    def clock():
        return time.process_time(), time.perf_counter()

    record("noisy", noisy[eval_idx])
    if "shipped" in methods:
        t = clock()
        record("shipped", run_shipped(noisy[eval_idx]), t=t)
    for name, kw in FINETUNED.items():
        if name in methods:
            t = clock()
            path, info = run_finetune(noisy, budget_s, workdir, **kw)
            record(name, run_shipped(noisy[eval_idx], path), info, t=t)
    if "n2v" in methods:
        t = clock()
        out, info = run_n2v(noisy, eval_idx, budget_s, workdir, "horizontal" if kind == "row_correlated" else None)
        record("n2v", out, info, t=t)
    if "bm3d" in methods:
        t = clock()
        out = run_bm3d(noisy[eval_idx], kind, d["params"], d["scale"])
        record("bm3d", out, {"oracle_noise_parameters": True}, t=t)
    res["crops"] = {k: np.clip(v / rng_scale, -0.2, 1.2).round(4).tolist() for k, v in crops.items()}
    return res


@functools.cache
def git_commit() -> str:
    """HEAD's short hash, with "+dirty" where the package itself has uncommitted changes; read once, at the
    process's start (``main``), as the package is imported then, however many commits land meanwhile."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "napari_mirnet") else "")


def compare_objectives(budget_s: float, z: int, size: int, eval_planes: int, workdir: Path) -> dict:
    """Neighbor2Neighbor vs blind-spot masking, same budget, from the shipped model."""
    import torch

    torch.set_num_threads(1)
    out = {}
    idx = np.linspace(0, z - 1, eval_planes).round().astype(int)
    for kind in ("row_correlated", "gaussian"):
        d = prepare(kind, clean_stack(z, size))
        row = {"shipped": round(d["score"](run_shipped(d["noisy"][idx]), idx), 3)}
        for obj in ("neighbor2neighbor", "blindspot"):
            path, info = run_finetune(d["noisy"], budget_s, workdir, objective=obj)
            row[obj] = {"psnr": round(d["score"](run_shipped(d["noisy"][idx], path), idx), 3), **info}
            print(kind, obj, row[obj], flush=True)
        out[kind] = row
    return out


COLUMNS = {
    "noisy": "noisy",
    "shipped": "shipped",
    "finetuned": "finetuned",
    "finetuned_any": "ft:any",
    "finetuned_auto": "ft:auto",
    "n2v": "N2V",
    "bm3d": "BM3D",
}


def goal_line(r: dict) -> str | None:
    """Issue 37's goals for one result: correlated noise, fine-tuned >= noisy + 3 dB and >= N2V + 1 dB;
    elsewhere >= N2V + 1 dB and > shipped (unseen noise) or >= shipped (seen)."""
    m = r["methods"]
    ft = next((k for k in ("finetuned_auto", "finetuned") if k in m), None)
    if ft is None or "n2v" not in m or "shipped" not in m:
        return None
    p = m[ft]["psnr"]
    d_n2v, d_sh, d_noisy = p - m["n2v"]["psnr"], p - m["shipped"]["psnr"], p - m["noisy"]["psnr"]
    if r["noise"] in CORRELATED:
        goal, text = d_noisy >= 3 and d_n2v >= 1, ">= noisy + 3 dB and >= N2V + 1 dB"
    elif r["noise"] in SEEN:
        goal, text = d_sh >= 0, ">= shipped"
    else:
        goal, text = d_n2v >= 1 and d_sh > 0, ">= N2V + 1 dB and > shipped"
    return (
        f"{r['noise']}: {ft} - noisy = {d_noisy:+.2f} dB, - N2V = {d_n2v:+.2f} dB, - shipped = {d_sh:+.2f} dB; "
        f"goal ({text}): {'met' if goal else 'MISSED'}"
    )


def write_report(results: list[dict], path: Path, quick: bool) -> None:
    lines = [
        "Self-supervised fine-tuning benchmark (benchmarks/finetune.py" + (" --quick" if quick else "") + ")",
        "PSNR (dB) on held-out planes of a synthetic fluorescence-like stack (images 'synthetic') or on every",
        "plane of a stack of the test images that packages ship (images 'packages'); every trained method had",
        "the same budget of CPU seconds on one thread. BM3D is told the true noise parameters or spectrum",
        "(oracle). finetuned: the library's default mode; ft:any / ft:auto: pairs='any' / pairs='auto'.",
        "",
        f"{'noise':20s} {'images':10s} {'seen':4s} " + " ".join(f"{c:>9s}" for c in COLUMNS.values()),
    ]
    for r in results:
        m = r["methods"]
        cells = " ".join(f"{m[k]['psnr']:9.2f}" if k in m else f"{'-':>9s}" for k in COLUMNS)
        seen = "yes" if r["noise"] in SEEN else "no"
        lines.append(f"{r['noise']:20s} {r.get('images', 'synthetic'):10s} {seen:4s} {cells}")
    lines.append("")
    for r in results:
        m = r["methods"]
        g = goal_line(r)
        if g:
            lines.append(g)
        for k in FINETUNED:
            if k in m:
                keys = ("steps", "pairs", "kept", "selection", "noise_correlation")
                lines.append(f"{r['noise']}: {k}: " + json.dumps({x: m[k][x] for x in keys if x in m[k]}))
        lines.append(
            f"{r['noise']}: budget {r['budget_cpu_s']} CPU s; details: "
            + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "psnr"} for k, v in m.items() if k != "noisy"})
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def result_path(kind: str, images: str, minutes: float) -> Path:
    """Where one noise type's full run is kept (merged into by later runs with the same settings)."""
    tag = ("_packages" if images == "packages" else "") + ("" if minutes == 10 else f"_{minutes:g}min")
    return RESULTS / f"finetune{tag}_{kind}.json"


def merge_result(path: Path, r: dict) -> dict:
    """``r`` merged into the result saved at ``path`` when it has the same data and budget: methods run
    now replace those saved, the others are kept (so columns can be added without rerunning the rest)."""
    if path.is_file():
        old = json.loads(path.read_text())
        same = all(old.get(k) == r.get(k) for k in ("noise", "params", "budget_cpu_s", "stack", "eval_planes"))
        if same:
            old["methods"].update(r["methods"])
            old.setdefault("crops", {}).update(r.get("crops", {}))
            r = old
        else:
            print(f"{path.name}: other data or budget than saved; replacing it", flush=True)
    path.write_text(json.dumps(r))
    return r


def figure(results: list[dict], path: Path) -> None:
    """Crops of every method side by side (PIL only: no plotting library needed)."""
    from PIL import Image, ImageDraw

    names = ["ground truth", "noisy", "shipped", "finetuned", "finetuned_any", "finetuned_auto", "n2v", "bm3d"]
    labels = {
        "ground truth": "ground truth",
        "noisy": "noisy",
        "shipped": "shipped gray",
        "finetuned": "shipped + fine-tuned",
        "finetuned_any": "fine-tuned, pairs any",
        "finetuned_auto": "fine-tuned, pairs auto",
        "n2v": "Noise2Void",
        "bm3d": "BM3D (true noise)",
    }
    c, pad, head = 128, 4, 34
    rows = [r for r in results if "crops" in r]
    img = Image.new("L", (len(names) * (c + pad) + 150, len(rows) * (c + head) + 6), 255)
    draw = ImageDraw.Draw(img)
    for i, r in enumerate(rows):
        y = i * (c + head) + head
        draw.text((4, y + c // 2), r["noise"].replace("_", " "), fill=0)
        for j, n in enumerate(names):
            if n not in r["crops"]:
                continue
            a = np.asarray(r["crops"][n], np.float32)
            h, w = a.shape
            y0, x0 = (h - c) // 2, (w - c) // 2
            tile = np.clip(a[y0 : y0 + c, x0 : x0 + c], 0, 1) ** 0.7
            x = 150 + j * (c + pad)
            img.paste(Image.fromarray((tile * 255).astype(np.uint8)), (x, y))
            p = r["methods"].get(n, {}).get("psnr")
            draw.text((x, y - 26), labels[n], fill=0)
            if p is not None:
                draw.text((x, y - 14), f"{p:.2f} dB", fill=0)
    img.save(path)


METHODS = ("shipped", *FINETUNED, "n2v", "bm3d")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny stack, 20 CPU seconds per method")
    ap.add_argument("--noise", choices=NOISES, action="append", help="noise type(s) to run (default: all)")
    ap.add_argument("--methods", default="shipped,finetuned,n2v,bm3d", help=f"comma-separated, of {METHODS}")
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU minutes per trained method")
    ap.add_argument("--images", choices=("synthetic", "packages"), default="synthetic")
    ap.add_argument("--budgets", help="CPU minutes, e.g. 1,3,10: the budget table (benchmarks/finetune_budgets.py)")
    ap.add_argument("--compare-objectives", action="store_true")
    ap.add_argument("--figure", action="store_true", help="only draw docs/finetune_crops.png from saved results")
    args = ap.parse_args(argv)
    git_commit()  # the code this process runs: read before anything is imported or run
    methods = args.methods.split(",")
    if set(methods) - set(METHODS):
        ap.error(f"unknown method(s) {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.budgets:
        import finetune_budgets

        return finetune_budgets.run(args.budgets, args.noise or NOISES, methods, args.images, args.quick)
    if args.figure:
        return report_saved()
    budget = 20.0 if args.quick else 60.0 * args.minutes
    z, size, n_eval = (4, 96, 2) if args.quick else (16, 256, 6)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare_objectives:
            res = compare_objectives(budget, z, size, n_eval, Path(tmp))
            suffix = "_quick" if args.quick else ""
            (RESULTS / f"finetune_objectives{suffix}.json").write_text(json.dumps(res, indent=1))
            print(json.dumps(res, indent=1))
            return 0
        clean, eval_idx, about = make_clean(args.images, z, size, n_eval)
        results = []
        for kind in args.noise or NOISES:
            r = bench_noise(kind, budget, clean, eval_idx, Path(tmp), methods, about)
            if not args.quick:
                r = merge_result(result_path(kind, args.images, args.minutes), r)
            results.append(r)
        tag = "_packages" if args.images == "packages" else ""
        suffix = "_quick" if args.quick else ("" if not args.noise else "_" + "_".join(args.noise))
        write_report(results, RESULTS / f"finetune{tag}{suffix}.txt", args.quick)
        if args.quick:
            figure(results, RESULTS / f"finetune{tag}_quick.png")
    return 0


def report_saved() -> int:
    """finetune.txt/.json and docs/finetune_crops.png from every saved 10-minute result."""
    results = [
        json.loads(p.read_text())
        for images in ("synthetic", "packages")
        for kind in NOISES
        if (p := result_path(kind, images, 10.0)).is_file()
    ]
    figure([r for r in results if r.get("images", "synthetic") == "synthetic"], ROOT / "docs" / "finetune_crops.png")
    write_report(results, RESULTS / "finetune.txt", quick=False)
    (RESULTS / "finetune.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "crops"} for r in results], indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
