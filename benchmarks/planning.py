"""Planning and resume cost against tile count (issue 36, item 22).

A declared uint8 zarr input (``zarr.create_array``, no chunk written: every read is a fill, so no
input I/O hides the bookkeeping) and a stand-in model (n_feat 8, one block: its forward is a few
milliseconds) make planning the only thing that costs. For each tile count, in a fresh process:

- ``prepare``: :func:`napari_mirnet.engine.prepare` (input, weights, intensity map, tile plan);
- ``keys``: the run's tile keys;
- ``first tile (new)``: ``restore(..., out=store)`` from the call to its first progress report
  (store created, graph built, scheduler started, one batch restored), then cancelled;
- resume, with the first half of the tile rows marked done (and their true input digests):
  ``open store``, ``done markers`` (``done_mask`` and ``input_digests``: the bookkeeping),
  ``verify`` (:func:`~napari_mirnet.engine.digest.verify_done`: reads the done chunks' input
  windows again, I/O that grows with the work done, see digest.py), ``first tile (resume)``
  (``restore(..., out=store)`` to its first progress report, everything above included);
- ``restore_lazy``: the call that returns the lazy array, then ``lazy first chunk``: computing
  its first output chunk.

Each figure is the wall time and the peak resident memory above the step's start (sampled every
2 ms). Run old code with ``--compare OLD_CHECKOUT`` (``git worktree add /tmp/old <commit>``):
the same steps run against it (PYTHONPATH) and the table shows old/new.

    python benchmarks/planning.py [--tiles 100,1000,10000,100000] [--compare /tmp/old]
    python benchmarks/planning.py --shipped   # per-tile time of the shipped denoiser (CPU), 20k x 20k
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import napari_mirnet as nm

ROOT = Path(__file__).resolve().parents[1]
STEPS = (
    "prepare",
    "keys",
    "first tile (new)",
    "open store",
    "done markers",
    "verify",
    "first tile (resume)",
    "restore_lazy",
    "lazy first chunk",
)


class Peak:
    """Peak resident memory (MiB) above the level at ``start``, sampled by a thread."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._base = self._peak = self.rss()
        self._stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop:
            self._peak = max(self._peak, self.rss())
            time.sleep(0.002)

    def start(self) -> None:
        self._base = self._peak = self.rss()

    def mib(self) -> float:
        return (max(self._peak, self.rss()) - self._base) / 2**20


def _timed(peak: Peak, results: dict, name: str, fn):
    peak.start()
    t0 = time.perf_counter()
    value = fn()
    results[name] = (time.perf_counter() - t0, peak.mib())
    return value


def _tiny_weights(path: Path) -> str:
    import torch

    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    torch.manual_seed(0)
    model = MIRNetV2(MIRNetConfig(in_channels=1, out_channels=1, n_feat=8, n_mrb=1, chan_factor=2.0))
    torch.save({"params": model.state_dict()}, path)
    return str(path)


def _until_first_tile(restore, arr, weights, opts: dict, out: Path) -> float:
    """Seconds from the call to the first progress report; the run is cancelled there."""
    from napari_mirnet.engine import Cancelled

    stop, first = threading.Event(), []
    t0 = time.perf_counter()

    def progress(done, total):
        if done and not first:  # the first report may be 0/N, once the tiles are planned
            first.append(time.perf_counter() - t0)
            stop.set()

    try:
        restore(arr, "denoise", weights, out=str(out), progress=progress, cancel=stop, **opts)
    except Cancelled:
        pass
    return first[0]


def _mark_half_done(run, out: Path) -> int:
    """Mark the first half of the tile rows done, with the digests a real run would have stored."""
    import zarr

    from napari_mirnet import io as mio
    from napari_mirnet.engine.digest import chunk_digest, contributors, tile_digest
    from napari_mirnet.engine.source import read_window

    # every window of a declared (all-fill) input holds the same zeros, so one digest serves all
    d = tile_digest(read_window(run.source.arrays, run.axes, run.plan, run.keys[0], None))
    ny, nx = run.plan.grid
    rows = ny // 2
    digests = np.empty((rows, nx), np.uint64)
    for ty in range(rows):
        for tx in range(nx):
            digests[ty, tx] = chunk_digest([d] * len(contributors(run.plan, ((), ty, tx))))
    book = zarr.open_group(str(mio.bookkeeping_path(out)), mode="r+")
    book[mio.DIGEST][:rows, :] = digests
    book[mio.DONE][:rows, :] = 1
    return rows * nx


def child(n_tiles: int, tile: int, halo: int, blend: int) -> dict:
    import zarr

    from napari_mirnet import engine
    from napari_mirnet.engine.digest import verify_done
    from napari_mirnet.engine.options import RestoreOptions
    from napari_mirnet.engine.sinks import open_zarr_sink

    peak, res = Peak(), {}
    tmp = Path(tempfile.mkdtemp(prefix="planning-"))
    weights = _tiny_weights(tmp / "tiny.pth")
    core = tile - 2 * halo
    side = math.ceil(math.sqrt(n_tiles)) * core
    arr = zarr.create_array(str(tmp / "in.zarr"), shape=(side, side), chunks=(2048, 2048), dtype="uint8")
    opts = dict(tile=tile, halo=halo, blend=blend, device="cpu")
    options = RestoreOptions(tile, halo, blend, "cpu")
    warm = np.zeros((4 * core, 4 * core), np.uint8)  # imports and the model cache, outside the figures
    nm.restore(warm, "denoise", weights, out=str(tmp / "warm.zarr"), **opts)
    nm.restore_lazy(zarr.create_array(str(tmp / "w.zarr"), data=warm), "denoise", weights, **opts).compute()
    run = _timed(peak, res, "prepare", lambda: engine.prepare(arr, "denoise", weights, options=options))
    _timed(peak, res, "keys", lambda: run.keys)
    out = tmp / "out.zarr"
    res["first tile (new)"] = (_until_first_tile(nm.restore, arr, weights, opts, out), None)
    res["first tile (new)"] = (res["first tile (new)"][0], peak.mib())
    run = engine.prepare(arr, "denoise", weights, options=options)
    done = _mark_half_done(run, out)
    sink = _timed(peak, res, "open store", lambda: open_zarr_sink(run, str(out), False))
    _timed(peak, res, "done markers", lambda: (sink.output.done_mask(), sink.output.input_digests()))
    _timed(peak, res, "verify", lambda: verify_done(run, sink))
    peak.start()
    t = _until_first_tile(nm.restore, arr, weights, opts, out)
    res["first tile (resume)"] = (t, peak.mib())
    lazy = _timed(peak, res, "restore_lazy", lambda: nm.restore_lazy(arr, "denoise", weights, **opts))
    c = lazy.chunks
    _timed(peak, res, "lazy first chunk", lambda: lazy[: c[0][0], : c[1][0]].compute())
    return {"tiles": len(run.keys), "side": side, "done": done, "steps": res}


def _run_child(code: Path, n: int, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, __file__, "--child", str(n), "--tile", str(args.tile), "--halo", str(args.halo)]
    cmd += ["--blend", str(args.blend)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode:
        raise RuntimeError(f"{code} with {n} tiles failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], label: str) -> list[str]:
    lines = [f"{label}:", f"  {'step':22s}" + "".join(f"{r['tiles']:>22d}" for r in rows) + "   (tiles)"]
    for step in STEPS:
        cells = []
        for r in rows:
            t, m = r["steps"][step]
            cells.append(f"{t:9.3f} s {m:7.1f} MiB")
        lines.append(f"  {step:22s}" + "".join(f"{c:>22s}" for c in cells))
    big = rows[-1]
    for step in ("first tile (new)", "first tile (resume)", "restore_lazy"):
        t, m = big["steps"][step]
        lines.append(
            f"  {step} at {big['tiles']} tiles: {1e6 * t / big['tiles']:.1f} us/tile, {1e4 * m / big['tiles']:.2f} MiB per 10^4 tiles"
        )
    return lines


def _ratios(old: list[dict], new: list[dict]) -> list[str]:
    lines = ["old / new (time, peak memory):"]
    for step in STEPS:
        cells = []
        for o, n in zip(old, new):
            (to, mo), (tn, mn) = o["steps"][step], n["steps"][step]
            cells.append(f"{to / max(tn, 1e-6):7.1f}x {mo / max(mn, 0.1):7.1f}x")
        lines.append(f"  {step:22s}" + "".join(f"{c:>22s}" for c in cells))
    return lines


def shipped(size: int) -> list[str]:
    """Per-batch time of the shipped denoiser on the CPU for a size x size uint8 scene, and the estimate."""
    import zarr

    from napari_mirnet import engine
    from napari_mirnet.engine import Cancelled

    tmp = Path(tempfile.mkdtemp(prefix="planning-"))
    arr = zarr.create_array(str(tmp / "in.zarr"), shape=(size, size), chunks=(2048, 2048), dtype="uint8")
    run = engine.prepare(arr, "denoise", options=engine.RestoreOptions(device="cpu"))
    stamps, stop = [], threading.Event()
    t0 = time.perf_counter()

    def progress(done, total):
        if done:  # not the 0/N report made once the tiles are planned
            stamps.append((time.perf_counter() - t0, done))
        if len(stamps) == 3:
            stop.set()

    try:
        nm.restore(arr, "denoise", out=str(tmp / "o.zarr"), device="cpu", progress=progress, cancel=stop)
    except Cancelled:
        pass
    (t1, d1), (t3, d3) = stamps[0], stamps[2]  # from the first tile done to the third
    per_tile = (t3 - t1) / (d3 - d1)
    n = len(run.keys)
    return [
        f"shipped denoiser, CPU, {size}x{size} uint8: tile {run.options.tile} halo {run.options.halo}, batch "
        f"{run.batch}, {n} tiles; first tile after {t1:.2f} s; {per_tile:.3f} s per tile (tiles 2-3)",
        f"  estimated restore {per_tile * n:.0f} s; planning to the first tile is {100 * (t1 - per_tile) / (per_tile * n):.2f}% of it",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", default="100,1000,10000,100000")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--halo", type=int, default=16)
    p.add_argument("--blend", type=int, default=8)
    p.add_argument("--compare", type=Path, metavar="OLD_CHECKOUT")
    p.add_argument("--shipped", type=int, nargs="?", const=20000, metavar="SIZE")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tile, args.halo, args.blend)))
        return 0
    if args.shipped:
        print("\n".join(shipped(args.shipped)))
        return 0
    counts = [int(v) for v in args.tiles.split(",")]
    print(f"tile {args.tile}, halo {args.halo}, blend {args.blend}; declared uint8 zarr input, stand-in model, CPU")
    new = [_run_child(ROOT, n, args) for n in counts]
    print("\n".join(_table(new, f"this checkout ({ROOT})")), flush=True)
    if args.compare:
        old = [_run_child(args.compare, n, args) for n in counts]
        print("\n".join(_table(old, f"old ({args.compare})")))
        print("\n".join(_ratios(old, new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
