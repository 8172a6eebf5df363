"""Issue 18: end-to-end zarr -> zarr throughput of the full model on a GPU, four ways, one run.

    python benchmarks/gpu_throughput.py --out benchmarks/results      # a CUDA device, the full model
    python benchmarks/gpu_throughput.py --smoke                       # CPU, tiny sizes, stand-in model

Variants, on an RGB uint8 image (default 8192^2) and a uint16 stack (default 16 x 2048^2):
  new     the engine with ``accelerate=--accelerate`` (default "on"), run twice: the first run pays
          for measuring / compiling, the second shows what a run costs once that is cached;
  eager   the engine as it was (``accelerate="off"``: bf16 autocast, eager, blocking copies);
  overlap (optional) the eager forward with overlapped copies (``accelerate="overlap"``);
  raw     the model alone on the engine's tile windows, bf16 autocast, batch 1 (no reading,
          writing, blending: the forward's ceiling without batching);
  naive   the official demo's tiling: the whole image read into memory, tile 720 / overlap 32,
          uniform averaging, fp32, batch 1, written to zarr.
Each line: seconds, MPix/s of output pixels, peak GPU memory (torch), GPU utilisation (mean of
``nvidia-smi`` samples every 200 ms, or pynvml) and the largest memory.used sample. Then the
tiled-vs-whole PSNR (eager and new path) and the new path's difference from eager fp32.
Results go to ``--out`` (default ``$OUT`` or benchmarks/results) as gpu_throughput.txt / .json,
rewritten after every measurement so that a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import napari_mirnet as nm

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))


# ------------------------------------------------------------------------------------ inputs
def _smooth(size: int, channels: int, seed: int) -> np.ndarray:
    """Without scikit-image: smooth random structure (block means of noise, upsampled)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (size // 16 + 1, size // 16 + 1, channels))
    return np.kron(small, np.ones((16, 16, 1)))[:size, :size].astype(np.float32)


def _base_rgb(size: int) -> np.ndarray:
    try:
        from skimage import data, transform
    except ImportError:
        return _smooth(size, 3, 0)
    img = transform.resize(data.astronaut(), (size, size), order=1, preserve_range=True)
    return img.astype(np.float32)


def _base_gray(size: int) -> np.ndarray:
    try:
        from skimage import data, transform
    except ImportError:
        return _smooth(size, 1, 1)[..., 0]
    return transform.resize(data.camera(), (size, size), order=1, preserve_range=True)


def write_rgb(path: Path, size: int, chunk: int = 512) -> None:
    import zarr

    arr = zarr.create_array(str(path), shape=(size, size, 3), chunks=(chunk, chunk, 3), dtype="uint8", overwrite=True)
    base = _base_rgb(min(size, 2048))
    rng = np.random.default_rng(0)
    for y in range(0, size, base.shape[0]):
        for x in range(0, size, base.shape[1]):
            h, w = min(base.shape[0], size - y), min(base.shape[1], size - x)
            noisy = base[:h, :w] + rng.normal(0, 10, (h, w, 3))
            arr[y : y + h, x : x + w] = np.clip(noisy, 0, 255).astype(np.uint8)


def write_stack(path: Path, planes: int, size: int, chunk: int = 512) -> None:
    import zarr

    arr = zarr.create_array(
        str(path), shape=(planes, size, size), chunks=(1, chunk, chunk), dtype="uint16", overwrite=True
    )
    base = _base_gray(size) * 200.0
    rng = np.random.default_rng(1)
    for z in range(planes):
        arr[z] = np.clip(base + 300 * z + rng.normal(0, 2000, base.shape), 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------ sampling
class GpuSampler:
    """GPU utilisation and memory.used every 200 ms while a variant runs (nvidia-smi or pynvml)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        self._thread = None
        self._stop = threading.Event()

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                    "-i",
                    "0",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        else:
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception:  # noqa: BLE001 - no NVML: no samples
                return self

            def poll():
                while not self._stop.wait(0.2):
                    u = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    m = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                    self.samples.append((float(u), float(m)))

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                u, m = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((u, m))

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_mem_used_max_mib": None, "samples": 0}
        u = [s[0] for s in self.samples]
        return {
            "gpu_util_mean": float(np.mean(u)),
            "gpu_mem_used_max_mib": max(s[1] for s in self.samples),
            "samples": len(u),
        }


# ------------------------------------------------------------------------------------ variants
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, device: str, fn, pixels: int) -> dict:
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as sampler:
        t0 = time.perf_counter()
        extra = fn() or {}
        _sync(device)
        sec = time.perf_counter() - t0
    res = {"variant": name, "seconds": sec, "mpix_s": pixels / 1e6 / sec, **extra}
    res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    res.update(sampler.summary() if cuda else {})
    return res


def naive_plane(model, img: np.ndarray, device: str, tile: int = 720, overlap: int = 32) -> np.ndarray:
    """The official demo's tiling (fp32, batch 1, uniform averaging in full-size accumulators).

    ``img`` is H, W, C float32 in [0, 1]; a gray image is given to the RGB model as three
    equal channels and the output's channels averaged.
    """
    import torch

    gray = img.shape[-1] == 1
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(device)
    if gray:
        x = x.expand(-1, 3, -1, -1)
    _, c, h, w = x.shape
    tile = min(tile, h, w)
    stride = tile - overlap
    hs = list(range(0, h - tile, stride)) + [h - tile]
    ws = list(range(0, w - tile, stride)) + [w - tile]
    E = torch.zeros(1, c, h, w, device=device)
    W = torch.zeros_like(E)
    with torch.inference_mode():
        for i in hs:
            for j in ws:
                out = model(x[..., i : i + tile, j : j + tile].contiguous()).float()
                E[..., i : i + tile, j : j + tile] += out
                W[..., i : i + tile, j : j + tile] += 1
    y = (E / W).clamp(0, 1)[0]
    if gray:
        y = y.mean(0, keepdim=True)
    return y.permute(1, 2, 0).cpu().numpy()


def naive_zarr(model, src: str, dst: str, device: str, axes: str) -> None:
    import zarr

    arr = zarr.open_array(src, mode="r")
    img = arr[...]  # the demo reads the whole image
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    out = zarr.create_array(dst, shape=arr.shape, chunks=arr.chunks, dtype=arr.dtype, overwrite=True)
    planes = [img] if axes == "YXC" else [p[..., None] for p in img]
    res = []
    for p in planes:
        y = naive_plane(model, p.astype(np.float32) / scale, device)
        res.append(np.rint(y * scale).astype(img.dtype))
    out[...] = res[0] if axes == "YXC" else np.stack([r[..., 0] for r in res])


def raw_forward(model, src: str, weights: str, device: str, axes: str) -> dict:
    """The model alone on the engine's default windows (bf16 autocast as the engine's default)."""
    import torch
    import zarr

    from napari_mirnet import engine

    arr = zarr.open_array(src, mode="r")
    img = arr[...]
    run = engine.prepare(
        src, weights=weights, axes=axes, options=engine.RestoreOptions(device=device, accelerate="off")
    )
    plan, prec = run.plan, run.precision
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    planes = [img] if axes == "YXC" else [p[..., None] for p in img]
    wins = [
        (plan.window_range(0, i), plan.window_range(1, j)) for i in range(plan.grid[0]) for j in range(plan.grid[1])
    ]
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in planes:
            for (y0, y1), (x0, x1) in wins:
                x = torch.from_numpy(p[y0:y1, x0:x1].astype(np.float32) / scale).permute(2, 0, 1)[None].to(device)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                engine.forward.forward_plain(model, x, prec).cpu()
    _sync(device)
    # timed here, without reading the image: the forward's own throughput
    return {"forward_seconds": time.perf_counter() - t0, "window": list(plan.window), "tiles": len(wins) * len(planes)}


def engine_zarr(src: str, dst: str, weights: str, device: str, accelerate: str, axes: str) -> dict:
    from napari_mirnet import engine

    run = engine.prepare(
        src, weights=weights, axes=axes, options=engine.RestoreOptions(device=device, accelerate=accelerate)
    )
    engine.execute(run, out=dst, overwrite=True)
    from napari_mirnet.engine import accelerate as acc
    from napari_mirnet.weights import cached_model

    model = cached_model(weights, device)
    chosen = [d for k, d in acc.chosen(model).items() if k[1] == accelerate]
    return {"tile": run.options.tile, "window": list(run.plan.window), "forward": chosen[-1] if chosen else "eager"}


# ------------------------------------------------------------------------------------ quality
def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def quality(src: str, weights: str, device: str, accelerate: str, crop: int, tile: int) -> dict:
    import torch
    import zarr

    from napari_mirnet.engine import accelerate as acc
    from napari_mirnet.weights import cached_model

    img = zarr.open_array(src, mode="r")[:crop, :crop]
    res = {"crop": crop, "tile": tile}
    outs = {}
    for label, spec in (("eager", "off"), ("new", accelerate)):
        whole = nm.restore(img, weights=weights, device=device, tile=crop, halo=0, blend=0, accelerate=spec)
        tiled = nm.restore(img, weights=weights, device=device, tile=tile, accelerate=spec)
        res[f"psnr_tiled_vs_whole_{label}"] = psnr(tiled, whole, 255)
        outs[label] = tiled
    fp32 = nm.restore(img, weights=weights, device=device, tile=tile, precision="fp32", accelerate="off")
    for label in ("eager", "new"):
        d = np.abs(outs[label].astype(np.int32) - fp32)
        res[f"{label}_vs_fp32_lsb_max"] = int(d.max())
        res[f"{label}_vs_fp32_lsb_mean"] = float(d.mean())
    # the forward alone, in model units: the new path's forward vs eager fp32 on one window
    model = cached_model(weights, device)
    x = torch.from_numpy(np.asarray(img[:tile, :tile], np.float32) / 255).permute(2, 0, 1)[None].to(device)
    prec = "bf16" if device.startswith("cuda") else "fp32"
    fast = acc.accelerated(model, prec, accelerate, x)
    with torch.inference_mode():
        ref = model(x).float()
        y = fast(x)
    d = (y - ref).abs()
    res["forward_vs_fp32_max"] = float(d.max())
    res["forward_vs_fp32_mean"] = float(d.mean())
    res["forward"] = acc.describe(fast)
    return res


# ------------------------------------------------------------------------------------ report
class Report:
    def __init__(self, out: Path, header: str):
        self.out, self.lines, self.data = out, [header], {"rows": []}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, line: str, **data) -> None:
        print(line, flush=True)
        self.lines.append(line)
        if data:
            self.data["rows"].append(data)
        (self.out / "gpu_throughput.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_throughput.json").write_text(json.dumps(self.data, indent=1, default=str))


def _row(r: dict) -> str:
    gpu = ""
    if r.get("peak_gpu_mib") is not None:
        gpu = f"  peak {r['peak_gpu_mib']:7.0f} MiB"
    if r.get("gpu_util_mean") is not None:
        gpu += (
            f"  util {r['gpu_util_mean']:5.1f}%  used max {r['gpu_mem_used_max_mib']:6.0f} MiB ({r['samples']} samples)"
        )
    extra = "".join(f"  {k}={r[k]}" for k in ("forward", "tile") if k in r)
    return f"    {r['variant']:<12} {r['seconds']:8.2f} s  {r['mpix_s']:8.2f} MPix/s{gpu}{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU-sized: 256^2 RGB, 2 x 128^2 stack, stand-in model")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--rgb-size", type=int, default=8192)
    ap.add_argument("--stack", default="16x2048", help="PLANESxSIZE of the uint16 stack")
    ap.add_argument(
        "--accelerate",
        default=None,
        help="the new path's RestoreOptions.accelerate (default 'on'; --smoke: channels_last)",
    )
    ap.add_argument("--variants", default="new,eager,raw,naive", help="comma-separated; also: overlap")
    ap.add_argument("--images", default="rgb,stack")
    ap.add_argument("--crop", type=int, default=1024, help="quality crop (tiled vs whole)")
    ap.add_argument("--q-tile", type=int, default=512)
    ap.add_argument("--second-process", action="store_true", help="time the new path in a fresh process too")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE.parent / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.worker:  # a fresh process: what a second run of the new path costs with the on-disk caches
        spec = json.loads(args.worker)
        r = measure(
            "new, fresh process",
            spec["device"],
            lambda: engine_zarr(
                spec["src"], spec["dst"], spec["weights"], spec["device"], spec["accelerate"], spec["axes"]
            ),
            spec["pixels"],
        )
        print(json.dumps(r, default=str))
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.rgb_size, args.stack, args.crop, args.q_tile = 256, "2x128", 128, 64
        # compile works on CPU but costs minutes per shape on a small machine: not a smoke test
        args.accelerate = args.accelerate or "channels_last"
    args.accelerate = args.accelerate or "on"
    planes, ssize = (int(v) for v in args.stack.lower().split("x"))
    from napari_mirnet.model import MIRNetV2

    tmp = Path(tempfile.mkdtemp(prefix="gpu_tp_"))
    torch.manual_seed(0)
    model_desc = "stand-in: MIRNet-v2 n_feat 16, 1 MRB (random)" if args.smoke else "full: n_feat 80, 2 MRB (random)"
    weights = str(tmp / "model.pth")
    torch.save({"params": (MIRNetV2(n_feat=16, n_mrb=1) if args.smoke else MIRNetV2()).state_dict()}, weights)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    rep = Report(
        Path(args.out),
        f"# python {' '.join(sys.argv)}   ({name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n"
        f"issue 18 throughput: device {device} ({name}), model {model_desc}, accelerate={args.accelerate!r}",
    )
    from napari_mirnet.weights import cached_model

    model = cached_model(weights, device)
    images = {}
    if "rgb" in args.images:
        images["rgb"] = (tmp / "rgb.zarr", args.rgb_size * args.rgb_size, f"{args.rgb_size}^2 RGB uint8", "YXC")
        write_rgb(images["rgb"][0], args.rgb_size)
    if "stack" in args.images:
        images["stack"] = (tmp / "stack.zarr", planes * ssize * ssize, f"{planes} x {ssize}^2 uint16 stack", "ZYX")
        write_stack(images["stack"][0], planes, ssize)
    variants = args.variants.split(",")
    results: dict = {}
    for key, (src, pixels, label, axes) in images.items():
        rep.add(f"[{key}] {label}, zarr -> zarr, {pixels / 1e6:.1f} MPix of output:")
        dst = str(tmp / f"{key}_out.zarr")
        rows = results[key] = {}
        for v in variants:
            try:
                if v == "new":
                    for i in (1, 2):
                        r = measure(
                            f"new run {i}",
                            device,
                            lambda: engine_zarr(str(src), dst, weights, device, args.accelerate, axes),
                            pixels,
                        )
                        rows[f"new{i}"] = r
                        rep.add(_row(r), image=key, **r)
                    if args.second_process:
                        spec = dict(
                            src=str(src), dst=dst, weights=weights, device=device, accelerate=args.accelerate, axes=axes
                        )
                        out = subprocess.run(
                            [sys.executable, str(HERE), "--worker", json.dumps({**spec, "pixels": pixels})],
                            capture_output=True,
                            text=True,
                        )
                        if out.returncode:
                            rep.add(f"    new, fresh process: failed: {out.stderr[-800:]}")
                        else:
                            r = json.loads(out.stdout.strip().splitlines()[-1])
                            rep.add(_row(r), image=key, **r)
                elif v == "eager":
                    r = rows["eager"] = measure(
                        "eager", device, lambda: engine_zarr(str(src), dst, weights, device, "off", axes), pixels
                    )
                    rep.add(_row(r), image=key, **r)
                elif v == "overlap":  # the eager forward with overlapped copies: what the overlap alone buys
                    r = rows["overlap"] = measure(
                        "eager+overlap",
                        device,
                        lambda: engine_zarr(str(src), dst, weights, device, "overlap", axes),
                        pixels,
                    )
                    rep.add(_row(r), image=key, **r)
                elif v == "raw":
                    r = measure(
                        "raw (total)", device, lambda: raw_forward(model, str(src), weights, device, axes), pixels
                    )
                    r["variant"] = "raw forward"
                    r["seconds"] = r["forward_seconds"]
                    r["mpix_s"] = pixels / 1e6 / r["seconds"]
                    rows["raw"] = r
                    rep.add(
                        _row(r) + f"  (model alone, {r['tiles']} windows of {r['window']}, batch 1)", image=key, **r
                    )
                elif v == "naive":
                    r = rows["naive"] = measure(
                        "naive fp32", device, lambda: naive_zarr(model, str(src), dst, device, axes), pixels
                    )
                    rep.add(_row(r) + "  (tile 720, overlap 32, batch 1)", image=key, **r)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others
                rep.add(f"    {v}: FAILED {type(exc).__name__}: {str(exc)[:500]}")
        best_new = min((rows[k]["seconds"] for k in ("new1", "new2") if k in rows), default=None)
        if best_new and "naive" in rows:
            new_tp = pixels / 1e6 / best_new
            rep.add(
                f"    new (warm) {new_tp:.2f} MPix/s = {new_tp / rows['naive']['mpix_s']:.2f}x naive"
                + (f", {new_tp / rows['eager']['mpix_s']:.2f}x eager engine" if "eager" in rows else "")
                + f"; goal >= 25 MPix/s and >= 3x naive: {new_tp >= 25 and new_tp >= 3 * rows['naive']['mpix_s']}",
                image=key,
                goal_mpix_s=new_tp,
            )
    if "rgb" in images:
        try:
            q = quality(str(images["rgb"][0]), weights, device, args.accelerate, args.crop, args.q_tile)
            rep.add(
                f"[quality] {args.crop}^2 RGB crop, tile {args.q_tile}: tiled vs whole PSNR eager "
                f"{q['psnr_tiled_vs_whole_eager']:.2f} dB, new {q['psnr_tiled_vs_whole_new']:.2f} dB\n"
                f"    uint8 output vs eager fp32: eager (default precision: bf16 autocast on CUDA) max {q['eager_vs_fp32_lsb_max']} LSB "
                f"mean {q['eager_vs_fp32_lsb_mean']:.3f}; new max {q['new_vs_fp32_lsb_max']} LSB mean "
                f"{q['new_vs_fp32_lsb_mean']:.3f}\n"
                f"    forward ({q['forward']}) vs eager fp32 on one {args.q_tile}^2 window: max "
                f"{q['forward_vs_fp32_max']:.5f} mean {q['forward_vs_fp32_mean']:.6f} (model units, [0, 1])",
                quality=q,
            )
        except Exception as exc:  # noqa: BLE001
            rep.add(f"[quality] FAILED {type(exc).__name__}: {str(exc)[:500]}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
