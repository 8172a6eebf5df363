"""Memory and speed: bytes per tile pixel of a forward pass, the memory budget, CPU throughput by
tile size, and the default tile, halo and batch."""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .plan import plan_tiles, round_to_stride

if TYPE_CHECKING:
    import torch

# torch (and the forward that runs the model) is imported in the functions that measure: the engine
# is imported by the CLI's parser and the napari reader, which never plan a tile

__all__ = [
    "MAX_DEFAULT_TILE",
    "bytes_per_pixel",
    "cpu_throughput",
    "default_batch",
    "default_geometry",
    "default_tile",
    "measure_cpu_throughput",
    "memory_budget",
    "throughput_cache_path",
]

#: Largest default tile edge; beyond this the gain in consistency is small and latency grows.
MAX_DEFAULT_TILE = 2048
# Peak bytes of live tensors per pixel and per feature channel of a CPU forward pass in fp32, as
# measured with a TorchDispatchMode over every storage (n_feat 16-80, any input channels and tile
# size, torch 2.13): 38.06 with one MRB per group, 42.06 with two or more. bf16 autocast halves it.
# Measured before the model's in-place inference path, which lowered the real peak: an upper bound.
_CPU_BYTES_PER_FEATURE = {1: 38.06, 2: 42.06}
# allocator slack and convolution workspaces on top of the live tensors (checked against the RSS)
_CPU_SLACK = 1.25
_cuda_cache: dict[tuple, float] = {}
_cuda_lock = threading.Lock()


def _stream_weight(chan_factor: float) -> float:
    """Relative size of the three streams (full, 1/2, 1/4 resolution) of an MRB."""
    return 1 + chan_factor / 4 + chan_factor**2 / 16


def bytes_per_pixel(model: torch.nn.Module, precision: str = "fp32", size: int = 96) -> float:
    """Peak bytes per tile pixel of one forward pass (one batch item).

    On the CPU (and MPS) this comes from the model's config (a formula fitted to measurements, so
    a new process plans at once, without a probe); on CUDA it is measured once per model, device
    and precision with the allocator's peak.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        cfg = model.config
        per_feature = _CPU_BYTES_PER_FEATURE[min(cfg.n_mrb, 2)] * _stream_weight(cfg.chan_factor) / _stream_weight(1.5)
        return _CPU_SLACK * per_feature * cfg.n_feat * (0.5 if precision == "bf16" else 1.0)
    import torch

    from .forward import forward_plain

    key = (getattr(model, "weights_sha256", id(model)), str(device), precision)
    with _cuda_lock:
        if key not in _cuda_cache:
            x = torch.rand(1, model.config.in_channels, size, size, device=device)
            with torch.inference_mode():
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                forward_plain(model, x, precision)
                torch.cuda.synchronize(device)
                peak = (torch.cuda.max_memory_allocated(device) - base) * 1.1
            _cuda_cache[key] = float(peak) / (size * size)
        return _cuda_cache[key]


def memory_budget(device: torch.device) -> float:
    """Bytes a run may spend on forward passes: most of the free GPU memory, a share of free RAM."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return 0.6 * free
    import psutil

    # well inside RAM: other processes (and dask's buffers) need the rest
    return min(0.25 * psutil.virtual_memory().available, 8 * 2**30)


def memory_tile(model: torch.nn.Module, precision: str = "fp32") -> int:
    """The largest square tile edge (a multiple of 32) whose forward pass fits the memory budget."""
    device = next(model.parameters()).device
    bpp = bytes_per_pixel(model, precision)
    edge = int(math.sqrt(memory_budget(device) / bpp)) // 32 * 32
    return max(64, min(edge, MAX_DEFAULT_TILE))


def default_tile(model: torch.nn.Module, precision: str = "fp32", shape: tuple | None = None, factor: int = 1) -> int:
    """The default tile edge: the largest that fits memory on a GPU; on the CPU also the fastest.

    On the CPU a forward pass slows down per pixel once a feature map outgrows the processor's
    last-level cache (a 2048 tile runs 3x slower per pixel than a 576 one with ``n_feat=16``), so
    the tile is the one with the least estimated time for the image (``shape``: its input height
    and width) among those that fit memory: see :func:`default_geometry`.
    """
    if shape is None or next(model.parameters()).device.type != "cpu":
        if next(model.parameters()).device.type != "cpu":
            return memory_tile(model, precision)
        shape = (4096, 4096)  # no image: a large one, so that the tile is the fastest sustained one
    return default_geometry(model, precision, shape[0], shape[1], factor)[0]


def default_batch(model: torch.nn.Module, tile_pixels: int, precision: str, items_per_tile: int) -> int:
    """Tiles per forward pass: one on CPU (no gain there), as many as fit on a GPU (up to 16)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 1
    per_tile = bytes_per_pixel(model, precision) * tile_pixels * items_per_tile
    return int(max(1, min(16, memory_budget(device) // max(per_tile, 1))))


# --------------------------------------------------------------------------- CPU speed by tile size
#: Smallest tile the CPU default considers: below it the per-pass overhead and the halo dominate.
MIN_CPU_TILE = 128
#: Default halo on the CPU as a share of the tile (at most DEFAULT_HALO): what a halo costs grows as
#: (tile / core)^2, and the CPU's fastest tiles are small.
CPU_HALO_SHARE = 1 / 32
# the share of the last-level cache one feature map may take before passes slow down (channels_last
# forward, n_feat 16 and 48: fastest at 384-512 and 256-384 px on a 2-core Xeon with 27 MiB, at
# 320-448 and 192-272 px on a 2-core EPYC with 32 MiB). A smaller share (0.35) fits n_feat 16 on the
# EPYC better but gives the shipped 48-feature models 212 px tiles, 10-25% slower than 272.
_LLC_SHARE = 0.5
#: the default tile is the smallest whose estimated time is within this factor of the fastest:
#: a little speed for a smaller peak (a pass's activations, and the heap they leave behind, grow with
#: the tile's area: 2048^2 in memory, small model, 408 windows vs 476: 0.92x the peak above the floor
#: for ~1.08x the time)
_TIME_SLACK = 1.10
_measured: dict[str, dict[int, float]] = {}
_measured_lock = threading.Lock()


def cpu_cache_bytes() -> int:
    """Size of this processor's last-level cache (32 MiB if the system does not say)."""
    best = (0, 0)
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            text = (d / "size").read_text().strip().upper()
            size = int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        except (OSError, ValueError):
            continue
        best = max(best, (level, size))
    return best[1] or 32 * 2**20


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _throughput_key(model: torch.nn.Module, precision: str) -> str:
    """What CPU speed depends on: the machine, torch and its threads, the model's shape, the precision."""
    import torch

    from . import accelerate

    cfg = model.config
    layout = accelerate.parse("auto", "cpu", precision).label()
    return (
        f"{_cpu_name()}|llc={cpu_cache_bytes()}|threads={torch.get_num_threads()}|torch={torch.__version__}|"
        f"{precision}|{layout}|n_feat={cfg.n_feat},cf={cfg.chan_factor},mrb={cfg.n_mrb},in={cfg.in_channels}"
    )


def throughput_cache_path() -> Path | None:
    """Where measured CPU throughputs are kept: ``$NAPARI_MIRNET_THROUGHPUT`` (a file, or ``off``), else
    ``cpu_throughput.json`` in the per-user cache folder. None when turned off."""
    env = os.environ.get("NAPARI_MIRNET_THROUGHPUT")
    if env:
        return None if env.lower() in ("off", "0", "none") else Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mirnet")) / "cpu_throughput.json"


def _read_cache() -> dict:
    path = throughput_cache_path()
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: the formula stands in


def _best_edge_formula(model: torch.nn.Module, precision: str) -> int:
    """The tile edge where one full-resolution feature map fills most of the last-level cache."""
    fmap_bpp = model.config.n_feat * (2 if precision == "bf16" else 4)
    return max(MIN_CPU_TILE, int(math.sqrt(_LLC_SHARE * cpu_cache_bytes() / fmap_bpp)) // 32 * 32)


def _shape(edge: float, best: float) -> float:
    """Relative throughput at a tile edge: a fixed cost per pass below ``best``, cache misses above.

    The fixed cost, (best / 6)^2 pixels' worth, fits forward passes measured on a 2-core EPYC (n_feat
    16: 0.44 / 0.49 / 0.56 / 0.60 MPix/s at 128 / 192 / 320 / 384; n_feat 48: flat within 14% from
    128 to 256).
    """
    px = edge * edge
    return px / (px + (best / 6) ** 2) * min(1.0, best / edge)


def cpu_throughput(model: torch.nn.Module, precision: str = "fp32"):
    """A function: tile edge (model pixels) -> forward throughput in MPix/s on this CPU.

    Measured figures (:func:`measure_cpu_throughput`, kept per model and machine) are interpolated;
    without them a formula gives relative figures with the same shape (only their ratios are used).
    """
    key = _throughput_key(model, precision)
    with _measured_lock:
        table = _measured.get(key)
    if table is None:
        entry = _read_cache().get(key)
        try:
            table = {int(e): float(v) for e, v in entry["mpix_s"].items()} if entry else {}
        except (KeyError, TypeError, ValueError, AttributeError):
            table = {}
        table = {e: v for e, v in table.items() if e > 0 and v > 0 and math.isfinite(v)}
        with _measured_lock:
            _measured[key] = table
    if len(table) < 2:
        best = _best_edge_formula(model, precision)
        return lambda edge: _shape(edge, best)
    edges = sorted(table)
    best = max(edges, key=table.get)

    def tp(edge: float) -> float:
        if edge <= edges[0]:
            return table[edges[0]] * _shape(edge, best) / _shape(edges[0], best)
        if edge >= edges[-1]:
            return table[edges[-1]] * _shape(edge, best) / _shape(edges[-1], best)
        for a, b in zip(edges, edges[1:]):
            if a <= edge <= b:
                return table[a] + (table[b] - table[a]) * (edge - a) / (b - a)
        return table[edges[-1]]

    return tp


def measure_cpu_throughput(
    model: torch.nn.Module, precision: str = "fp32", edges=None, repeats: int = 2, save: bool = True
) -> dict[int, float]:
    """Time forward passes on square tiles (best of ``repeats``, sizes interleaved): {edge: MPix/s}.

    The figures are kept for the rest of the process and, with ``save``, in
    :func:`throughput_cache_path` for later runs on this machine; default tiles on the CPU follow
    them. Takes seconds for small models and a minute or two for the 80-feature ones.
    """
    if edges is None:
        best = _best_edge_formula(model, precision)
        edges = sorted({max(MIN_CPU_TILE, round_to_stride(best * f) // 32 * 32) for f in (0.5, 0.75, 1, 1.25, 1.6)})
    import torch

    from . import accelerate
    from .forward import forward_plain

    dev = next(model.parameters()).device
    times = {int(e): float("inf") for e in edges}
    fwd = accelerate.accelerated(model, precision, "auto")  # what a default run calls
    with torch.inference_mode():
        forward_plain(fwd, torch.rand(1, model.config.in_channels, 64, 64, device=dev), precision)
        for _ in range(repeats):
            for e in times:
                x = torch.rand(1, model.config.in_channels, e, e, device=dev)
                t0 = time.perf_counter()
                forward_plain(fwd, x, precision)
                times[e] = min(times[e], time.perf_counter() - t0)
    table = {e: e * e / 1e6 / t for e, t in times.items()}
    key = _throughput_key(model, precision)
    with _measured_lock:
        _measured[key] = table
    path = throughput_cache_path() if save else None
    if path is not None:
        data = _read_cache()
        data[key] = {"mpix_s": {str(e): v for e, v in table.items()}, "measured": time.strftime("%Y-%m-%d %H:%M")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache costs only the figures for later processes
    return table


def cpu_halo(tile: int) -> int:
    """The CPU's default halo for a default tile: 32 pixels, a 32nd of tiles over 1024 (at most DEFAULT_HALO).

    Tiled vs whole-image PSNR at 768^2 with the same cores (benchmarks/engine.py section 4 setting):
    56.4 / 57.1 / 57.9 / 58.6 dB for halos 16 / 32 / 48 / 64, seam score equal to the whole image's in
    every case; 32 costs (1 + 64 / core)^2 in pixels, 64 twice that overhead.
    """
    from .options import DEFAULT_HALO

    return int(min(DEFAULT_HALO, max(32, round_to_stride(tile * CPU_HALO_SHARE))))


def estimated_seconds(tp, height: int, width: int, tile: int, halo: int, blend: int, factor: int = 1) -> float:
    """Estimated forward time (in units of ``tp``) of an image tiled with ``tile``/``halo``."""
    plan = plan_tiles(height, width, tile, halo, blend, factor)
    wy, wx = (factor * w for w in plan.window)
    n = plan.grid[0] * plan.grid[1]
    return n * wy * wx / 1e6 / tp(math.sqrt(wy * wx))


def default_geometry(
    model: torch.nn.Module, precision: str, height: int, width: int, factor: int = 1, halo: int | None = None
) -> tuple[int, int]:
    """(tile, halo) for an image of ``height`` x ``width`` input pixels on the CPU.

    Among tiles that fit the memory budget (multiples of 4 from MIN_CPU_TILE), the one with the
    least estimated time: tiles x window pixels / throughput at the window's size
    (:func:`cpu_throughput`). The smallest tile within 10% of the fastest wins: the peak memory of a
    pass grows with the tile's area. ``halo`` fixes the halo; otherwise it is :func:`cpu_halo` of
    the tile.
    """
    from .options import DEFAULT_BLEND

    cap = memory_tile(model, precision)
    tp = cpu_throughput(model, precision)
    costs = {}
    # steps of 4 (the stride), so that the cores can split the image evenly
    for tile in range(min(MIN_CPU_TILE, cap), cap + 1, 4):
        h = cpu_halo(tile) if halo is None else halo
        try:
            plan = plan_tiles(height, width, tile, h, min(DEFAULT_BLEND, h), factor)
        except ValueError:  # the halo leaves no core at this tile
            continue
        costs[tile] = (estimated_seconds(tp, height, width, tile, h, min(DEFAULT_BLEND, h), factor), h)
        if plan.grid == (1, 1):
            break  # larger tiles are the same single tile
    if not costs:
        return cap, halo if halo is not None else cpu_halo(cap)
    fastest = min(c for c, _ in costs.values())
    tile = min(t for t, (c, _) in costs.items() if c <= _TIME_SLACK * fastest)
    return tile, costs[tile][1]
