"""Self-supervised fine-tuning vs the shipped gray denoiser, Noise2Void (CAREamics) and (Anscombe +) BM3D.

Data: a synthetic fluorescence-like stack with known ground truth (nuclei with texture, filaments,
puncta, blurred by a 3D Gaussian PSF), made here from a seed, so that nothing is downloaded and the
project's held-out photographs stay held out. Three noise types:

- ``gaussian``: additive white Gaussian, sigma 25/255 of the signal range (the shipped model saw this);
- ``poisson_gain_offset``: camera model, 20 photons at the brightest pixel, gain 2.2 ADU per electron,
  offset 100 ADU, Gaussian read noise of 1.6 electrons (not in the shipped model's training);
- ``row_correlated``: read noise correlated along rows (a 5-pixel horizontal kernel, sigma 0.07),
  row offsets (sigma 0.02) and a little white noise (sigma 0.02) (not in its training).

Every trained method gets the same budget in CPU seconds of one thread (``torch.set_num_threads(1)``,
budgets counted by ``time.process_time``), so "10 CPU minutes" is exact even on a shared machine.
Inference and BM3D are not counted. All methods see the stack after one affine intensity map (its
0.1/99.9 percentiles); PSNR is computed on held-out planes against the ground truth, whose range is 1.

Run: ``python benchmarks/finetune.py`` (about an hour of one core per noise type: run them in
parallel with ``--noise NAME``), ``--quick`` for a smoke test, ``--compare-objectives`` for the
Neighbor2Neighbor vs blind-spot comparison of docs/finetune.md. Output:
``benchmarks/results/finetune[_NAME].txt`` and ``.json``; ``--figure`` writes docs/finetune_crops.png
from the saved crops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOISES = ("gaussian", "poisson_gain_offset", "row_correlated")
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
    raise ValueError(kind)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - y) ** 2)))


# ------------------------------------------------------------------------------------------ methods
def run_shipped(noisy_eval: np.ndarray, weights="small-denoise-gray") -> np.ndarray:
    from napari_mirnet import restore

    # the percentile map leaves 0.1% of the noisy pixels on each side outside [0, 1], which restore's
    # "fixed" map refuses (since issue 15) rather than clip silently: clip them here, as it used to
    x = np.clip(noisy_eval, 0.0, 1.0)
    return restore(x, "denoise", weights=str(weights), axes="ZYX", normalisation="fixed", device="cpu")


def run_finetune(
    noisy: np.ndarray, budget_s: float, workdir: Path, objective="neighbor2neighbor", **kw
) -> tuple[Path, dict]:
    from napari_mirnet import finetune

    out = workdir / f"ft-{objective}.pth"
    t = time.process_time()
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
        **kw,
    )
    info = {
        "steps": r.steps,
        "best_step": r.best_step,
        "source_val": r.source_val,
        "best_val": r.best_val,
        "cpu_s": round(time.process_time() - t, 1),
    }
    return out, info


def _careamics():
    """Import CAREamics without torchvision.

    careamics 0.3.5 pins torchvision<=0.26, i.e. torch 2.11, which conflicts with the torch this
    project pins; its Noise2Void path never calls torchvision (only its LVAE and BioImage.IO export
    modules import it), so stand-in modules satisfy those imports, also where a torchvision built for
    another torch is installed (it fails on import with a RuntimeError).
    """
    import importlib.abc
    import importlib.machinery
    import types

    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        # absent, or built for another torch ("operator torchvision::nms does not exist"): forget the
        # half-imported modules; every torchvision module becomes a stand-in whose names are callables
        # that fail when called (torchmetrics and lightning import some at import time, never call them)
        for n in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[n]

        class _Missing:
            def __init__(self, name):
                self.name = name

            def __call__(self, *a, **k):
                raise RuntimeError(f"{self.name}: torchvision is not usable here (stand-in module)")

        class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name == "torchvision" or name.startswith("torchvision."):
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
                return None

            def create_module(self, spec):
                m = types.ModuleType(spec.name)

                def attr(name, _n=spec.name):
                    if name.startswith("__"):  # introspection (inspect, dynamo) must see a plain module
                        raise AttributeError(name)
                    return _Missing(f"{_n}.{name}")

                m.__getattr__ = attr
                m.__path__ = []
                m.__version__ = "0+stand-in"
                return m

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, _StandIn())
    import careamics

    return careamics


def run_n2v(noisy: np.ndarray, eval_idx, budget_s: float, workdir: Path, struct: str | None) -> tuple[np.ndarray, dict]:
    """CAREamics Noise2Void (structN2V along ``struct`` when given) trained for ``budget_s`` CPU seconds."""
    _careamics()
    import lightning.pytorch as pl
    from careamics import CAREamist
    from careamics.config import create_n2v_config, create_structn2v_config

    class CpuBudget(pl.Callback):
        def __init__(self):
            self.t0 = time.process_time()
            self.steps = 0

        def on_train_batch_end(self, trainer, *args, **kwargs):
            self.steps += 1
            if time.process_time() - self.t0 >= budget_s:
                trainer.should_stop = True

    common = dict(
        experiment_name="n2v_bench",
        data_type="array",
        axes="SYX",
        patch_size=[64, 64],
        batch_size=16,
        num_epochs=10_000,
        n_val_patches=8 if noisy.size > 200_000 else 2,
    )
    if struct:
        cfg = create_structn2v_config(struct_n2v_axes=struct, struct_n2v_span=5, **common)
    else:
        cfg = create_n2v_config(**common)
    budget = CpuBudget()
    cwd = os.getcwd()
    os.chdir(workdir)  # lightning writes its logs and checkpoints into the working folder
    try:
        engine = CAREamist(cfg, work_dir=str(workdir), callbacks=[budget], enable_progress_bar=False)
        try:
            engine.trainer.fit_loop.max_epochs = 10_000
        except AttributeError:
            pass
        engine.train(train_data=noisy)
        pred, _ = engine.predict(noisy[eval_idx], axes="SYX", tile_size=(128, 128), tile_overlap=(48, 48))
    finally:
        os.chdir(cwd)
    out = np.squeeze(np.stack([np.squeeze(p) for p in pred])).astype(np.float32)
    return out.reshape(noisy[eval_idx].shape), {
        "steps": budget.steps,
        "cpu_s": round(time.process_time() - budget.t0, 1),
        "struct_n2v": struct,
    }


def run_bm3d(noisy_eval: np.ndarray, kind: str, params: dict, scale: tuple[float, float]) -> np.ndarray:
    """BM3D given the true noise parameters (an oracle, unlike the learned methods); Anscombe for Poisson."""
    import bm3d

    if not hasattr(np, "trapz"):  # bm3d 4.0.3 calls np.trapz for coloured noise; numpy 2.4 removed it
        np.trapz = np.trapezoid
    lo, span = scale
    out = []
    for plane in noisy_eval:
        if kind == "poisson_gain_offset":
            g, off, sig = params["gain"], params["offset"], params["read_noise_e"] * params["gain"]
            adu = plane * span + lo  # back to camera units
            # generalized Anscombe transform (Murtagh/Starck): unit-variance noise
            t = (2 / g) * np.sqrt(np.maximum(g * (adu - off) + 3 / 8 * g * g + sig * sig, 0))
            tlo, thi = t.min(), t.max()
            d = bm3d.bm3d((t - tlo) / (thi - tlo), sigma_psd=1.0 / (thi - tlo)) * (thi - tlo) + tlo
            # closed-form approximation of the exact unbiased inverse (Makitalo & Foi, 2013)
            d = np.maximum(d, 1e-3)
            inv = (
                0.25 * d**2
                + 0.25 * np.sqrt(1.5) / d
                - 11 / 8 / d**2
                + 5 / 8 * np.sqrt(1.5) / d**3
                - 1 / 8
                - sig**2 / g**2
            )
            e = np.maximum(inv, 0) * g + off
            out.append((e - lo) / span)
        elif kind == "gaussian":
            out.append(bm3d.bm3d(plane, sigma_psd=params["sigma"] / span))
        else:
            # the exact noise spectrum of the correlated, row and white parts
            h, w = plane.shape
            kx = np.zeros(w)
            kx[:5] = 1 / np.sqrt(5)
            psd_x = np.abs(np.fft.fft(kx)) ** 2 * params["correlated_sigma"] ** 2
            psd = np.tile(psd_x, (h, 1)) + params["white_sigma"] ** 2
            psd[:, 0] += params["row_sigma"] ** 2 * w  # constant along a row: all at x-frequency 0
            # bm3d's convention: white noise of variance v has a flat PSD of v * h * w
            out.append(bm3d.bm3d(plane, sigma_psd=psd * h * w / span**2))
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------ driver
def bench_noise(kind: str, budget_s: float, z: int, size: int, eval_planes: int, workdir: Path, methods) -> dict:
    import torch

    torch.set_num_threads(1)
    clean = clean_stack(z, size)
    noisy_raw, truth_raw, params = add_noise(clean, kind)
    lo, hi = np.percentile(noisy_raw, [0.1, 99.9])
    span = hi - lo
    noisy = ((noisy_raw - lo) / span).astype(np.float32)
    # ground truth on the same intensity map; PSNR relative to its own range
    t_lo, t_hi = truth_raw.min(), truth_raw.max()
    truth = ((truth_raw - lo) / span).astype(np.float32)
    rng_scale = (t_hi - t_lo) / span
    eval_idx = np.linspace(0, z - 1, eval_planes).round().astype(int)
    gt = truth[eval_idx]

    def score(x):
        return psnr(x / rng_scale, gt / rng_scale)

    res = {
        "noise": kind,
        "params": params,
        "budget_cpu_s": budget_s,
        "stack": [z, size, size],
        "eval_planes": eval_idx.tolist(),
        "methods": {},
    }
    crops = {"ground truth": gt[len(gt) // 2], "noisy": noisy[eval_idx][len(gt) // 2]}

    def record(name, out, info=None, t=None):
        res["methods"][name] = {"psnr": round(score(out), 3), **(info or {})}
        if t is not None:
            res["methods"][name]["cpu_s_total"] = round(time.process_time() - t, 1)
        crops[name] = out[len(gt) // 2]
        print(f"[{kind}] {name}: {res['methods'][name]}", flush=True)

    record("noisy", noisy[eval_idx])
    if "shipped" in methods:
        t = time.process_time()
        record("shipped", run_shipped(noisy[eval_idx]), t=t)
    if "finetuned" in methods:
        t = time.process_time()
        path, info = run_finetune(noisy, budget_s, workdir)
        record("finetuned", run_shipped(noisy[eval_idx], path), info, t=t)
    if "n2v" in methods:
        t = time.process_time()
        out, info = run_n2v(noisy, eval_idx, budget_s, workdir, "horizontal" if kind == "row_correlated" else None)
        record("n2v", out, info, t=t)
    if "bm3d" in methods:
        t = time.process_time()
        record("bm3d", run_bm3d(noisy[eval_idx], kind, params, (lo, span)), {"oracle_noise_parameters": True}, t=t)
    res["crops"] = {k: np.clip(v / rng_scale, -0.2, 1.2).round(4).tolist() for k, v in crops.items()}
    return res


def compare_objectives(budget_s: float, z: int, size: int, eval_planes: int, workdir: Path) -> dict:
    """Neighbor2Neighbor vs blind-spot masking, same budget, from the shipped model."""
    import torch

    torch.set_num_threads(1)
    out = {}
    for kind in ("row_correlated", "gaussian"):
        clean = clean_stack(z, size)
        noisy_raw, truth_raw, _ = add_noise(clean, kind)
        lo, hi = np.percentile(noisy_raw, [0.1, 99.9])
        noisy = ((noisy_raw - lo) / (hi - lo)).astype(np.float32)
        truth = ((truth_raw - lo) / (hi - lo)).astype(np.float32)
        r = (truth_raw.max() - truth_raw.min()) / (hi - lo)
        idx = np.linspace(0, z - 1, eval_planes).round().astype(int)
        row = {"shipped": round(psnr(run_shipped(noisy[idx]) / r, truth[idx] / r), 3)}
        for obj in ("neighbor2neighbor", "blindspot"):
            path, info = run_finetune(noisy, budget_s, workdir, objective=obj)
            row[obj] = {"psnr": round(psnr(run_shipped(noisy[idx], path) / r, truth[idx] / r), 3), **info}
            print(kind, obj, row[obj], flush=True)
        out[kind] = row
    return out


def write_report(results: list[dict], path: Path, quick: bool) -> None:
    lines = [
        "Self-supervised fine-tuning benchmark (benchmarks/finetune.py" + (" --quick" if quick else "") + ")",
        "PSNR (dB) on held-out planes of a synthetic fluorescence-like stack; every trained method had the",
        "same budget of CPU seconds on one thread. BM3D is told the true noise parameters (oracle).",
        "",
        f"{'noise':22s} {'seen':5s} {'noisy':>7s} {'shipped':>8s} {'finetuned':>10s} {'N2V':>7s} {'BM3D':>7s}",
    ]
    for r in results:
        m = r["methods"]

        def g(k):
            return f"{m[k]['psnr']:.2f}" if k in m else "-"

        lines.append(
            f"{r['noise']:22s} {'yes' if r['noise'] in SEEN else 'no':5s} {g('noisy'):>7s} {g('shipped'):>8s} "
            f"{g('finetuned'):>10s} {g('n2v'):>7s} {g('bm3d'):>7s}"
        )
    lines.append("")
    for r in results:
        m = r["methods"]
        if "finetuned" in m and "n2v" in m and "shipped" in m:
            d_n2v = m["finetuned"]["psnr"] - m["n2v"]["psnr"]
            d_sh = m["finetuned"]["psnr"] - m["shipped"]["psnr"]
            seen = r["noise"] in SEEN
            goal = (d_sh >= 0) if seen else (d_n2v >= 1 and d_sh > 0)
            lines.append(
                f"{r['noise']}: finetuned - N2V = {d_n2v:+.2f} dB, finetuned - shipped = {d_sh:+.2f} dB; "
                f"goal ({'>= shipped' if seen else '>= N2V + 1 dB and > shipped'}): {'met' if goal else 'MISSED'}"
            )
        lines.append(
            f"{r['noise']}: budget {r['budget_cpu_s']} CPU s; details: "
            + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "psnr"} for k, v in m.items() if k != "noisy"})
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def figure(results: list[dict], path: Path) -> None:
    """Crops of every method side by side (PIL only: no plotting library needed)."""
    from PIL import Image, ImageDraw

    names = ["ground truth", "noisy", "shipped", "finetuned", "n2v", "bm3d"]
    labels = {
        "ground truth": "ground truth",
        "noisy": "noisy",
        "shipped": "shipped gray",
        "finetuned": "shipped + fine-tuned",
        "n2v": "Noise2Void",
        "bm3d": "(Anscombe +) BM3D",
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny stack, 20 CPU seconds per method")
    ap.add_argument("--noise", choices=NOISES, action="append", help="noise type(s) to run (default: all)")
    ap.add_argument("--methods", default="shipped,finetuned,n2v,bm3d")
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU minutes per trained method")
    ap.add_argument("--compare-objectives", action="store_true")
    ap.add_argument("--figure", action="store_true", help="only draw docs/finetune_crops.png from saved results")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.figure:
        results = []
        for kind in NOISES:
            p = RESULTS / f"finetune_{kind}.json"
            if p.is_file():
                results.append(json.loads(p.read_text()))
        figure(results, ROOT / "docs" / "finetune_crops.png")
        write_report(results, RESULTS / "finetune.txt", quick=False)
        (RESULTS / "finetune.json").write_text(
            json.dumps([{k: v for k, v in r.items() if k != "crops"} for r in results], indent=1)
        )
        return 0
    budget = 20.0 if args.quick else 60.0 * args.minutes
    z, size, n_eval = (4, 96, 2) if args.quick else (16, 256, 6)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare_objectives:
            res = compare_objectives(budget, z, size, n_eval, Path(tmp))
            suffix = "_quick" if args.quick else ""
            (RESULTS / f"finetune_objectives{suffix}.json").write_text(json.dumps(res, indent=1))
            print(json.dumps(res, indent=1))
            return 0
        results = []
        for kind in args.noise or NOISES:
            r = bench_noise(kind, budget, z, size, n_eval, Path(tmp), args.methods.split(","))
            results.append(r)
            if not args.quick:
                (RESULTS / f"finetune_{kind}.json").write_text(json.dumps(r))
        suffix = "_quick" if args.quick else ("" if not args.noise else "_" + "_".join(args.noise))
        write_report(results, RESULTS / f"finetune{suffix}.txt", args.quick)
        if args.quick:
            figure(results, RESULTS / "finetune_quick.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
