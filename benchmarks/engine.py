"""Benchmark of the chunked engine; every figure printed is measured in this run.

    python benchmarks/engine.py                 # CPU, small random model (n_feat 16, 1 MRB), minutes
    python benchmarks/engine.py --full --device cuda   # the default 80-feature model on a GPU

Sections: (1) engine throughput vs the raw model forward on the same tile pixels; (2) the naive
approach (whole image in memory, tile 720 / overlap 32, uniform averaging with full-size accumulators,
as in the official demo) vs the engine, time and peak memory, each in its own process; (3) peak RSS of
zarr -> zarr at two sizes with the same tile, each in its own process; (4) PSNR between tiled and
whole-image output and a seam score; (5) a CLI run killed midway and resumed: time and bit-identity;
(6) everything at default settings, 2048^2 and 4096^2 (issue 19): naive vs the engine in memory and
zarr -> zarr vs the raw forward on the engine's windows, time and peak RSS, per-pixel growth.

    python benchmarks/engine.py --sections 6   # the issue-19 table, 8 repeats (about 37 min on 2 quiet cores)
Random weights: quality figures describe consistency, not restoration quality.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import napari_mirnet as nm

HERE = Path(__file__).resolve()
# issue 19's goals for the in-memory engine against naive tiling: time, peak RSS, per-pixel growth
GOAL_TIME, GOAL_PEAK, GOAL_GROWTH = 1.0, 0.5, 1.1


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB; None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _current_rss_mib() -> float:
    """RSS now: a job's floor (interpreter, imports, model, input) before it starts."""
    rss = _status_mib("VmRSS")
    return float("nan") if rss is None else rss


def _minor_faults() -> int:
    """Minor page faults of this process so far: pages the kernel had to map (and zero) for it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_mib() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork time
    into a child's ru_maxrss across exec, which would inflate every worker's figure."""
    peak = _status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak  # KiB on Linux


def make_weights(path: Path, full: bool, seed: int = 0) -> str:
    import torch

    from napari_mirnet.model import MIRNetV2

    torch.manual_seed(seed)
    model = MIRNetV2() if full else MIRNetV2(n_feat=16, n_mrb=1)
    torch.save({"params": model.state_dict()}, path)
    return str(path)


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """A natural-looking RGB uint8 image of size x size: the resized astronaut plus mild noise."""
    from skimage import data, transform

    # resized, not tiled: a tiled image has its own seams, which would pollute the seam score
    img = transform.resize(data.astronaut(), (size, size), order=1, preserve_range=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_zarr_input(path: Path, size: int, chunk: int = 512) -> None:
    import zarr

    arr = zarr.create_array(str(path), shape=(size, size, 3), chunks=(chunk, chunk, 3), dtype="uint8", overwrite=True)
    tile = test_image(min(size, 2048))
    for y in range(0, size, 2048):
        for x in range(0, size, 2048):
            h, w = min(2048, size - y), min(2048, size - x)
            arr[y : y + h, x : x + w] = tile[:h, :w]


# ---------------------------------------------------------------------------------- worker jobs
def naive_restore(model, img: np.ndarray, tile: int = 720, overlap: int = 32) -> np.ndarray:
    """The official demo's tiling: uniform averaging into full-size accumulators on the device."""
    import torch

    dev = next(model.parameters()).device
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).to(dev)
    b, c, h, w = x.shape
    tile = min(tile, h, w)
    stride = tile - overlap
    hs = list(range(0, h - tile, stride)) + [h - tile]
    ws = list(range(0, w - tile, stride)) + [w - tile]
    E = torch.zeros(b, c, h, w, device=dev)
    W = torch.zeros_like(E)
    with torch.inference_mode():
        for i in hs:
            for j in ws:
                patch = x[..., i : i + tile, j : j + tile]
                # same precision as the engine's default: bf16 autocast on CUDA, fp32 on CPU
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    out = model(patch).float()
                E[..., i : i + tile, j : j + tile] += out
                W[..., i : i + tile, j : j + tile] += 1
    y = (E / W).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return np.rint(y * 255).astype(np.uint8)


def _install_stub(engine, device: str) -> None:
    """Replace the model by a 3x3 convolution: what remains is the engine's own memory and I/O."""
    import torch

    from napari_mirnet.model import MIRNetConfig

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.config = MIRNetConfig()
            self.weights_sha256 = "stub"

        def forward(self, x):
            return x + 0.01 * self.conv(x)

    stub = Stub().eval().to(device)
    # the engine looks the model up in napari_mirnet.weights when a run prepares and runs its tiles
    import napari_mirnet.weights

    napari_mirnet.weights.cached_model = lambda weights, device="auto": stub


def _image(spec: dict) -> np.ndarray:
    """The job's input: made by the parent and saved, so that the float64 temporaries of making it
    (several times the image) do not enter the worker's peak RSS."""
    return np.load(spec["image"]) if spec.get("image") else test_image(spec["size"])


def save_image(tmp: Path, size: int) -> str:
    path = tmp / f"img{size}.npy"
    if not path.exists():
        np.save(path, test_image(size))
    return str(path)


def worker(spec: dict) -> dict:
    import torch

    from napari_mirnet import engine
    from napari_mirnet.weights import cached_model

    res = {}
    dev = spec["device"]
    if spec.get("stub"):
        _install_stub(engine, dev)
    forward_seconds = _time_forwards(engine) if spec["job"] in ("ours_memory", "zarr2zarr") else None
    t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
    if spec["job"] == "naive":
        img = _image(spec)
        model = cached_model(spec["weights"], dev)
        res["floor_rss_mib"] = _current_rss_mib()
        t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
        naive_restore(model, img)
    elif spec["job"] == "ours_memory":
        img = _image(spec)
        cached_model(spec["weights"], dev)
        res["floor_rss_mib"] = _current_rss_mib()
        t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
        opts = engine.RestoreOptions(tile=spec.get("tile"), halo=spec.get("halo"), blend=spec.get("blend"), device=dev)
        run = engine.prepare(img, weights=spec["weights"], options=opts)
        engine.execute(run)
        res["geometry"] = _geometry(run)
    elif spec["job"] == "zarr2zarr":
        cached_model(spec["weights"], dev)
        res["floor_rss_mib"] = _current_rss_mib()
        t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
        opts = engine.RestoreOptions(tile=spec.get("tile"), halo=spec.get("halo"), blend=spec.get("blend"), device=dev)
        run = engine.prepare(spec["input"], weights=spec["weights"], options=opts)
        engine.execute(run, out=spec["output"], overwrite=True, read_back=False)  # as the CLI: the file only
        res["geometry"] = _geometry(run)
    elif spec["job"] == "split":
        return _split_vs_whole(engine, spec)
    elif spec["job"] == "raw":
        # the model alone on the pixels the engine's default plan feeds it: same windows, no engine
        img = _image(spec)
        model = cached_model(spec["weights"], dev)
        run = engine.prepare(img, weights=spec["weights"], options=engine.RestoreOptions(device=dev))
        plan, prec = run.plan, run.precision
        # the forward the engine runs (on CPU by default channels_last), without the engine around it
        fwd = engine.accelerate.accelerated(model, prec, run.options.accelerate)
        res["forward"] = engine.accelerate.describe(fwd)
        d = next(model.parameters()).device
        xs = [
            (plan.window_range(0, i), plan.window_range(1, j)) for i in range(plan.grid[0]) for j in range(plan.grid[1])
        ]
        t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
        with torch.inference_mode():
            for (y0, y1), (x0, x1) in xs:
                x = torch.from_numpy(img[y0:y1, x0:x1]).permute(2, 0, 1)[None].float().div(255).to(d)
                engine.forward.forward_plain(fwd, x, prec).cpu()
        res["geometry"] = _geometry(run)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    res["minor_faults"] = _minor_faults() - f0
    if forward_seconds is not None:  # the engine's own time is the rest
        res["forward_seconds"] = sum(forward_seconds)
    res["peak_rss_mib"] = _rss_mib()
    if dev.startswith("cuda"):
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _split_vs_whole(engine, spec: dict) -> dict:
    """The same pixels restored as one image and as its four quadrants, alternating, in this process.

    Both arms do the same work at default settings, last about as long, and share the process (its
    allocator, its kernels) and the minute, so the host's drift, which makes separate processes differ
    by +-20% on identical work, falls on both alike. Each arm's forwards are timed too."""
    img = _image(spec)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    # contiguous copies, as a user's own 2048^2 arrays would be
    quads = [np.ascontiguousarray(img[y : y + h, x : x + w]) for y in (0, h) for x in (0, w)]
    forwards = _time_forwards(engine)
    opts = engine.RestoreOptions(device=spec["device"])

    def restore_all(images) -> tuple[float, float]:
        n, t0 = len(forwards), time.perf_counter()
        for im in images:
            engine.execute(engine.prepare(im, weights=spec["weights"], options=opts))
        return time.perf_counter() - t0, sum(forwards[n:])

    restore_all(quads[:1])  # warm-up: kernels, thread pool, the model; then both arms are warm
    res = {"whole": [], "quads": [], "whole_forward": [], "quads_forward": []}
    for rep in range(spec["pairs"]):
        for arm in ("whole", "quads") if rep % 2 == 0 else ("quads", "whole"):
            seconds, fwd = restore_all([img] if arm == "whole" else quads)
            res[arm].append(seconds)
            res[f"{arm}_forward"].append(fwd)
    res["peak_rss_mib"] = _rss_mib()
    return res


def _time_forwards(engine) -> list:
    """Time every batch the engine's tiles put through the model (the list fills as the run goes)."""
    times = []
    run_batch = engine.steps.forward.run_batch

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return run_batch(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - t)

    engine.steps.forward.run_batch = timed
    return times


def _geometry(run) -> dict:
    plan = run.plan
    return {
        "tile": run.options.tile,
        "halo": run.options.halo,
        "tiles": plan.grid[0] * plan.grid[1],
        "window": list(plan.window),
        "window_mpix": plan.grid[0] * plan.grid[1] * plan.window[0] * plan.window[1] / 1e6,
    }


def run_worker(spec: dict, env: dict | None = None) -> dict:
    import os

    out = subprocess.run(
        [sys.executable, str(HERE), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode:
        raise RuntimeError(f"worker {spec['job']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ sections
def throughput(args, weights: str, report: dict) -> None:
    import torch

    from napari_mirnet import engine
    from napari_mirnet.weights import cached_model

    model = cached_model(weights, args.device)
    img = test_image(args.tp_size)
    tile, halo = args.tp_tile, 32
    plan = engine.plan_tiles(img.shape[0], img.shape[1], tile, halo, 16)
    n_tiles = plan.grid[0] * plan.grid[1]
    win = plan.window
    dev = next(model.parameters()).device
    # the raw forward sees the engine's own tile windows (same pixels, same shapes)
    xs = [
        torch.from_numpy(img[slice(*plan.window_range(0, i)), slice(*plan.window_range(1, j))])
        .permute(2, 0, 1)[None]
        .float()
        .div(255)
        .to(dev)
        for i in range(plan.grid[0])
        for j in range(plan.grid[1])
    ]
    prec = "bf16" if dev.type == "cuda" else "fp32"

    def run_engine():
        t0 = time.perf_counter()
        nm.restore(img, weights=weights, device=args.device, tile=tile, halo=halo, blend=16)
        return time.perf_counter() - t0

    def run_raw():
        with torch.inference_mode():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x in xs:
                engine.forward.forward_plain(model, x, prec).cpu()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    run_engine(), run_raw()  # warm-up (first passes build kernels and thread pools)
    # best of three, alternating: the machine is shared, and the minimum is the least disturbed run
    t_engine, t_raw = float("inf"), float("inf")
    for _ in range(args.repeats):
        t_engine = min(t_engine, run_engine())
        t_raw = min(t_raw, run_raw())
    mpix = n_tiles * win[0] * win[1] / 1e6
    r = {
        "tile_pixels_mpix": mpix,
        "engine_s": t_engine,
        "raw_s": t_raw,
        "engine_mpix_s": mpix / t_engine,
        "raw_mpix_s": mpix / t_raw,
        "ratio": t_raw / t_engine,
        "tiles": n_tiles,
        "window": list(win),
    }
    report["throughput"] = r
    print(
        f"[1] throughput on {args.tp_size}x{args.tp_size}, {n_tiles} tiles of {win[0]}x{win[1]} ({mpix:.2f} MPix of tile "
        f"pixels), best of {args.repeats}:"
    )
    print(
        f"    engine {r['engine_mpix_s']:.4f} MPix/s ({t_engine:.1f} s) vs raw forward {r['raw_mpix_s']:.4f} MPix/s "
        f"({t_raw:.1f} s): ratio {r['ratio']:.3f}"
    )


def naive_vs_ours(args, weights: str, report: dict, tmp: Path) -> None:
    base = {"weights": weights, "device": args.device, "size": args.naive_size}
    base["image"] = save_image(tmp, args.naive_size)
    naive = run_worker({**base, "job": "naive"})
    ours = run_worker({**base, "job": "ours_memory", "tile": 720, "halo": 64, "blend": 16})
    report["naive_vs_ours"] = {"naive": naive, "ours": ours, "size": args.naive_size}
    print(
        f"[2] naive (tile 720, overlap 32, full-size accumulators) vs engine (tile 720, halo 64, blend 16), "
        f"{args.naive_size}x{args.naive_size} RGB, in-memory numpy:"
    )
    for name, r in (("naive", naive), ("engine", ours)):
        gpu = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""
        print(f"    {name:6s} {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB{gpu}")


def rss_scaling(args, weights: str, report: dict, tmp: Path) -> None:
    rows = {}
    stub = args.rss_model == "stub" or (args.rss_model == "auto" and args.device == "cpu" and not args.full)
    model_note = (
        "stand-in 3x3 conv model (engine memory only; stricter: no constant model term)" if stub else "the MIRNet model"
    )
    print(f"[3] zarr->zarr peak RSS, each size in its own process, {model_note}:")
    for size in args.rss_sizes:
        src = tmp / f"in{size}.zarr"
        write_zarr_input(src, size)
        r = run_worker(
            {
                "job": "zarr2zarr",
                "weights": weights,
                "device": args.device,
                "input": str(src),
                "output": str(tmp / f"out{size}.zarr"),
                "tile": args.rss_tile,
                "halo": 64,
                "blend": 16,
                "stub": stub,
            }
        )
        rows[size] = r
        shutil.rmtree(src)
        shutil.rmtree(tmp / f"out{size}.zarr")
        gpu = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""
        print(
            f"    {size}x{size} RGB uint8, tile {args.rss_tile}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB{gpu}"
        )
    a, b = args.rss_sizes[0], args.rss_sizes[-1]
    ratio = rows[b]["peak_rss_mib"] / rows[a]["peak_rss_mib"]
    report["rss"] = {"rows": rows, "ratio": ratio, "stub_model": stub}
    print(f"    peak RSS ratio {b}^2 / {a}^2 = {ratio:.3f} (target <= 1.3)")


def defaults(args, weights: str, report: dict, tmp: Path) -> None:
    """The issue-19 table: every job at default settings, each in its own process, in this one run.

    Every repeat runs every size and job, sizes and jobs in a rotating order, so that a slow spell
    of the machine falls on all of them alike rather than on one size."""
    import os

    from napari_mirnet.engine import memory
    from napari_mirnet.weights import cached_model

    # a private throughput cache: the defaults of a fresh install (the formula), or with --calibrate
    # the figures measured here first, as a user's cache would hold them
    env = {"NAPARI_MIRNET_THROUGHPUT": str(tmp / "cpu_throughput.json")}
    os.environ.update(env)
    if args.calibrate:
        t0 = time.perf_counter()
        table = memory.measure_cpu_throughput(cached_model(weights, args.device), "fp32")
        cal = ", ".join(f"{e}: {v:.3f}" for e, v in sorted(table.items()))
        print(f"[6] calibrated in {time.perf_counter() - t0:.0f} s, forward MPix/s by tile edge: {cal}")
    else:
        print("[6] defaults of a fresh install (no measured throughput: the last-level-cache formula)")
    sizes = sorted(args.default_sizes)
    specs = {}
    for size in sizes:
        src = tmp / f"d{size}.zarr"
        write_zarr_input(src, size)
        base = {"weights": weights, "device": args.device, "size": size, "image": save_image(tmp, size)}
        specs[size] = {
            "naive": {**base, "job": "naive"},
            "engine": {**base, "job": "ours_memory"},
            "zarr": {**base, "job": "zarr2zarr", "input": str(src), "output": str(tmp / f"d{size}-out.zarr")},
            "raw": {**base, "job": "raw"},
        }
    jobs = ["naive", "engine", "zarr", "raw"]
    runs = {size: {k: [] for k in jobs} for size in sizes}
    for rep in range(args.default_repeats):
        # rotate the order: no job always follows the same one, no size always comes first
        for size in sizes[rep % len(sizes) :] + sizes[: rep % len(sizes)]:
            for k in jobs[rep % len(jobs) :] + jobs[: rep % len(jobs)]:
                runs[size][k].append(run_worker(specs[size][k], env))
    rows = {}
    for size in sizes:
        shutil.rmtree(tmp / f"d{size}.zarr")
        shutil.rmtree(tmp / f"d{size}-out.zarr", ignore_errors=True)
        r = {}
        for k, rs in runs[size].items():
            # the least time is the least disturbed run; the peak RSS the largest seen
            r[k] = {**min(rs, key=lambda v: v["seconds"]), "peak_rss_mib": max(v["peak_rss_mib"] for v in rs)}
            for field in ("seconds", "cpu_seconds", "peak_rss_mib", "minor_faults"):
                r[k][f"all_{field}"] = [v[field] for v in rs]
            r[k]["median_seconds"] = statistics.median(r[k]["all_seconds"])
            r[k]["median_peak_rss_mib"] = statistics.median(r[k]["all_peak_rss_mib"])
        rows[size] = r
        _print_defaults_row(size, r, args.default_repeats)
    report["defaults"] = rows
    if len(rows) < 2:
        return
    a, b = sizes[0], sizes[-1]
    area = (b / a) ** 2
    growth = {}
    for job, label in (("engine", "in-memory"), ("zarr", "zarr->zarr"), ("naive", "naive"), ("raw", "raw forward")):
        best = rows[b][job]["seconds"] / (area * rows[a][job]["seconds"])
        med = rows[b][job]["median_seconds"] / (area * rows[a][job]["median_seconds"])
        cpu = statistics.median(rows[b][job]["all_cpu_seconds"]) / (
            area * statistics.median(rows[a][job]["all_cpu_seconds"])
        )
        growth[job] = {"best": best, "median": med, "median_cpu": cpu}
        print(
            f"    per-pixel time {b}^2 vs {a}^2, {label:11s}: median {med:.2f} (CPU seconds {cpu:.2f}), best {best:.2f}"
        )
    report["growth"] = growth
    # what the engine adds around the model, per megapixel: if this is flat, any growth is the forward's
    for job, label in (("engine", "in-memory"), ("zarr", "zarr->zarr")):
        own = [
            statistics.median(
                (v["seconds"] - v["forward_seconds"]) / (s * s / 1e6) for v in runs[s][job] if "forward_seconds" in v
            )
            for s in (a, b)
        ]
        print(
            f"    the engine's own time ({label}: total minus the model's forwards), median per megapixel: "
            f"{own[0]:.3f} s at {a}^2, {own[1]:.3f} s at {b}^2"
        )
    # the best of a few 10-s jobs is luckier than the best of a few 60-s jobs on a machine whose speed
    # drifts (a long job averages the drift out): the growth goal is judged on the medians
    speed = all(
        rows[s]["engine"][t] <= GOAL_TIME * rows[s]["naive"][t] for s in sizes for t in ("seconds", "median_seconds")
    )
    mem = all(
        rows[s]["engine"][m] <= GOAL_PEAK * rows[s]["naive"][m]
        for s in sizes
        for m in ("peak_rss_mib", "median_peak_rss_mib")
    )
    flat = growth["engine"]["median"] <= GOAL_GROWTH
    print(
        f"    goals, in memory: at least as fast as naive (best and median, every size): {speed}; at most half "
        f"its peak RSS (largest and median, every size): {mem}; per-pixel time within {GOAL_GROWTH}x (median): {flat}"
    )
    # what the medians hide: the same ratios repeat by repeat (a repeat's jobs run minutes apart at most)
    growth_runs = [vb["seconds"] / (area * va["seconds"]) for va, vb in zip(runs[a]["engine"], runs[b]["engine"])]
    per = {"growth": (growth_runs, GOAL_GROWTH)}
    for s in sizes:
        pairs = list(zip(runs[s]["engine"], runs[s]["naive"]))
        per[f"time {s}^2"] = ([e["seconds"] / n["seconds"] for e, n in pairs], GOAL_TIME)
        per[f"peak {s}^2"] = ([e["peak_rss_mib"] / n["peak_rss_mib"] for e, n in pairs], GOAL_PEAK)
    report["per_repeat"] = {k: vs for k, (vs, _) in per.items()}
    print(
        f"    repeat by repeat, not the yardstick (in memory vs naive; growth: the repeat's {b}^2 job over "
        f"{area:.0f}x its {a}^2 job):"
    )
    for k, (vs, limit) in per.items():
        over = sum(v > limit for v in vs)
        print(f"      {k:12s} {' '.join(f'{v:.2f}' for v in vs)}  (over {limit}: {over} of {len(vs)})")
    if args.growth_pairs:
        _split_growth(args, specs[b]["engine"], env, report)


def _split_growth(args, spec: dict, env: dict, report: dict) -> None:
    """Per-pixel growth from the same pixels restored whole and as four quadrants, paired in one process.

    A diagnostic, not the goal: it was meant to cancel the host's drift, and is no steadier (session
    14: 0.93-1.40 over 4 pairs, all of it in the forwards)."""
    size = spec["size"]
    r = run_worker({**spec, "job": "split", "pairs": args.growth_pairs}, env)
    ratios = [w / q for w, q in zip(r["whole"], r["quads"], strict=True)]
    fwd = [w / q for w, q in zip(r["whole_forward"], r["quads_forward"], strict=True)]
    mpix = size * size / 1e6
    own = {
        arm: statistics.median((t - f) / mpix for t, f in zip(r[arm], r[f"{arm}_forward"], strict=True))
        for arm in ("whole", "quads")
    }
    med = statistics.median(ratios)
    report["split_growth"] = {**r, "ratios": ratios, "forward_ratios": fwd, "median": med, "engine_own_s_per_mpix": own}
    print(
        f"    paired in one process, {args.growth_pairs} pairs alternating: the {size}^2 image whole vs as four "
        f"{size // 2}^2 quadrants (the same pixels), in-memory at defaults:"
    )
    print(
        f"      whole {', '.join(f'{t:.1f}' for t in r['whole'])} s; quadrants {', '.join(f'{t:.1f}' for t in r['quads'])} s"
    )
    print(
        f"      per-pixel growth (whole / quadrants) per pair: {', '.join(f'{v:.3f}' for v in ratios)}; median "
        f"{med:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; the forwards alone: median {statistics.median(fwd):.3f}; "
        f"the engine's own time per megapixel: {own['whole']:.3f} s whole, {own['quads']:.3f} s quadrants"
    )


def _print_defaults_row(size: int, r: dict, repeats: int) -> None:
    n, e, w = r["naive"], r["engine"], r["raw"]
    g = e["geometry"]
    print(
        f"    {size}x{size} RGB uint8: default tile {g['tile']} halo {g['halo']}, {g['tiles']} tiles of "
        f"{g['window'][0]}x{g['window'][1]} ({g['window_mpix'] / (size * size / 1e6):.2f}x the image's pixels)"
    )
    own = {k: v["peak_rss_mib"] - v.get("floor_rss_mib", float("nan")) for k, v in r.items()}
    print(
        f"      (best of {repeats} / median; floor = the RSS of the job's process with its imports, model and "
        f"input, {n.get('floor_rss_mib', float('nan')):.0f} MiB for naive, {e.get('floor_rss_mib', float('nan')):.0f} "
        f"for the engine; above it: naive {own['naive']:.0f} MiB, in-memory {own['engine']:.0f} MiB "
        f"({own['engine'] / own['naive']:.2f}x), zarr {own['zarr']:.0f} MiB)"
    )
    print(
        f"      {'':10s} {'best s':>7s} {'median s':>9s} {'peak MiB':>9s} {'median MiB':>11s}   vs naive (best / median)"
    )
    for k, label in (("naive", "naive"), ("engine", "in-memory"), ("zarr", "zarr->zarr"), ("raw", "raw fwd")):
        v = r[k]
        line = (
            f"      {label:10s} {v['seconds']:7.1f} {v['median_seconds']:9.1f} {v['peak_rss_mib']:9.0f} "
            f"{v['median_peak_rss_mib']:11.0f}"
        )
        if k in ("engine", "zarr"):
            line += (
                f"   time {v['seconds'] / n['seconds']:.2f}x / {v['median_seconds'] / n['median_seconds']:.2f}x, "
                f"peak RSS {v['peak_rss_mib'] / n['peak_rss_mib']:.2f}x / "
                f"{v['median_peak_rss_mib'] / n['median_peak_rss_mib']:.2f}x, "
                f"raw forward / engine {w['median_seconds'] / v['median_seconds']:.3f} (median)"
            )
        elif k == "raw":
            line += f"   on the engine's windows ({w.get('forward', 'eager')})"
        print(line)
    spread = ", ".join(
        f"{k} {min(r[k]['all_peak_rss_mib']):.0f}-{max(r[k]['all_peak_rss_mib']):.0f} MiB"
        for k in ("naive", "engine", "zarr")
    )
    times = ", ".join(f"{k} {min(r[k]['all_seconds']):.1f}-{max(r[k]['all_seconds']):.1f} s" for k in r)
    print(f"      spread over the {repeats} runs: peak RSS {spread}; times {times}")
    mpix = size * size / 1e6
    faults = ", ".join(f"{k} {statistics.median(r[k]['all_minor_faults']) / mpix:.0f}" for k in r)
    print(f"      minor page faults per megapixel of image (median): {faults}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def seam_score(img: np.ndarray, borders_y, borders_x) -> float:
    """Mean |difference| across tile borders over mean |difference| between other neighbours (1 = no seam)."""
    f = img.astype(np.float64)
    dy = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2))  # dy[i]: between rows i and i+1
    dx = np.abs(np.diff(f, axis=1)).mean(axis=(0, 2))
    by = [b - 1 for b in borders_y]
    bx = [b - 1 for b in borders_x]
    across = np.concatenate([dy[by], dx[bx]]).mean()
    inside = np.concatenate([np.delete(dy, by), np.delete(dx, bx)]).mean()
    return float(across / inside)


def quality(args, weights: str, report: dict) -> None:
    from napari_mirnet import engine
    from napari_mirnet.api import restore_whole

    img = test_image(args.q_size)
    whole = restore_whole(img, weights=weights, device=args.device)
    settings = [("default", None, None, None)] + [(f"tile {t}", t, None, None) for t in args.q_tiles]
    settings += [(f"tile {args.q_tiles[0]}, no blend", args.q_tiles[0], None, 0)]
    settings += [(f"tile {args.q_tiles[-1]}, halo 128", args.q_tiles[-1], 128, None)]
    # the CPU default halo (32) on the same cores as the tile-512 / halo-64 row
    settings += [(f"tile {args.q_tiles[-1] - 64}, halo 32", args.q_tiles[-1] - 64, 32, None)]
    rows = []
    print(
        f"[4] tiled vs whole-image output, {args.q_size}x{args.q_size} RGB, {'random model' if 'bench.pth' in weights else weights}:"
    )
    for label, tile, halo, blend in settings:
        run = engine.prepare(
            img, weights=weights, options=engine.RestoreOptions(tile=tile, halo=halo, blend=blend, device=args.device)
        )
        out = engine.execute(run)  # the defaults as prepare picks them for this image
        t, h, b = run.options.tile, run.options.halo, run.options.blend
        plan = engine.plan_tiles(img.shape[0], img.shape[1], t, h, b)
        by = [plan.core_range(0, i)[0] for i in range(1, plan.grid[0])]
        bx = [plan.core_range(1, i)[0] for i in range(1, plan.grid[1])]
        row = {
            "setting": label,
            "tile": t,
            "halo": h,
            "blend": b,
            "tiles": plan.grid[0] * plan.grid[1],
            "psnr_db": psnr(out, whole),
        }
        if by or bx:
            row["seam"] = seam_score(out, by, bx)
            row["seam_whole_same_lines"] = seam_score(whole, by, bx)
        rows.append(row)
        seam = (
            f"seam {row['seam']:.3f} (whole-image output at the same lines {row['seam_whole_same_lines']:.3f})"
            if "seam" in row
            else "one tile: no seams"
        )
        print(
            f"    {label:24s} tile {t} halo {h} blend {b}: {row['tiles']} tiles, PSNR {row['psnr_db']:.2f} dB, {seam}"
        )
    report["quality"] = rows


def kill_resume(args, weights: str, report: dict, tmp: Path) -> None:
    import zarr

    src = tmp / "kr_in.zarr"
    write_zarr_input(src, args.kr_size, chunk=256)
    cmd = [
        sys.executable,
        "-m",
        "napari_mirnet.cli",
        "restore",
        str(src),
        "--weights",
        weights,
        "--device",
        args.device,
        "--tile",
        str(args.kr_tile),
        "--halo",
        "32",
        "-q",
        "-o",
    ]
    from napari_mirnet import io as mio

    fresh = tmp / "kr_fresh.zarr"
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(fresh)], check=True)
    t_fresh = time.perf_counter() - t0
    killed = tmp / "kr_killed.zarr"
    proc = subprocess.Popen(cmd + [str(killed)])
    done_frac = 0.0
    while proc.poll() is None:
        time.sleep(0.2)
        try:
            done = mio.done_markers(killed)  # beside the store while it is unfinished
            done_frac = float(done.mean())
        except Exception:
            continue
        if done_frac >= 0.5:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(killed)], check=True)
    t_resume = time.perf_counter() - t0
    a = zarr.open_group(str(fresh), mode="r")["0"][...]
    b = zarr.open_group(str(killed), mode="r")["0"][...]
    identical = bool(np.array_equal(a, b))
    report["kill_resume"] = {
        "fresh_s": t_fresh,
        "resume_s": t_resume,
        "done_at_kill": done_frac,
        "identical": identical,
    }
    print(
        f"[5] CLI zarr->zarr {args.kr_size}x{args.kr_size}, tile {args.kr_tile}: fresh run {t_fresh:.1f} s; killed (SIGKILL) "
        f"at {done_frac:.0%} of chunks, resumed in {t_resume:.1f} s; bit-identical to the fresh run: {identical}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help="default 80-feature model (for GPUs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sections", default="1,2,3,4,5")
    ap.add_argument("--tp-size", type=int, default=1024)
    ap.add_argument("--tp-tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-size", type=int, default=2048)
    ap.add_argument("--rss-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 8192])
    ap.add_argument("--rss-tile", type=int, default=512)
    ap.add_argument(
        "--rss-model",
        choices=["auto", "stub", "mirnet"],
        default="auto",
        help="auto: the stand-in model on CPU without --full (MIRNet at 8192^2 takes ~30 min on 2 cores)",
    )
    ap.add_argument("--q-size", type=int, default=768)
    ap.add_argument("--q-tiles", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512])
    ap.add_argument("--kr-size", type=int, default=1536)
    ap.add_argument("--kr-tile", type=int, default=256)
    ap.add_argument("--default-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 4096])
    ap.add_argument(
        "--default-repeats",
        type=int,
        default=8,
        help="section 6: runs of each job (best and median printed; the goals are judged on medians, which "
        "need ~8 runs on a noisy 2-core VM: ~37 min)",
    )
    ap.add_argument(
        "--growth-pairs",
        type=int,
        default=0,
        help="section 6, diagnostic: pairs of (largest size whole, its four quadrants) timed in one process",
    )
    ap.add_argument("--calibrate", action="store_true", help="section 6: measure CPU throughput first (cached)")
    ap.add_argument("--weights", help="a model name or file instead of random weights (e.g. small-denoise-rgb)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="mirnet-bench-"))
    report = {
        "device": args.device,
        "full": args.full,
        "weights": args.weights,
        "torch_threads": torch.get_num_threads(),
    }
    model_desc = (
        f"{args.weights} (trained)"
        if args.weights
        else f"{'full n_feat=80 n_mrb=2' if args.full else 'small n_feat=16 n_mrb=1'} (random weights)"
    )
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    print(
        f"napari-mirnet engine benchmark: device {args.device}"
        f"{' (' + report['gpu'] + ')' if 'gpu' in report else ''}, model {model_desc}, "
        f"torch threads {report['torch_threads']}"
    )
    try:
        weights = args.weights or make_weights(tmp / "bench.pth", args.full)
        sections = set(args.sections.split(","))
        if "1" in sections:
            throughput(args, weights, report)
        if "2" in sections:
            naive_vs_ours(args, weights, report, tmp)
        if "3" in sections:
            rss_scaling(args, weights, report, tmp)
        if "4" in sections:
            quality(args, weights, report)
        if "5" in sections:
            kill_resume(args, weights, report, tmp)
        if "6" in sections:
            defaults(args, weights, report, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
