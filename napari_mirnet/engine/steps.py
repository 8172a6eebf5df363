"""What the graph's tasks do: restore a group of tiles, assemble or write an output chunk, pass a blend strip.

Each task gets a small picklable :class:`TileContext` (the model is looked up per process, never
shipped). Progress and cancel travel in the context's :class:`RunControl`, which stays behind when
a context is pickled for dask.distributed workers (the client reports progress there).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..devices import resolve_precision
from ..processing import ChannelAdapter, IntensityMap, fill_nodata, mark_nodata, upscale
from ..progress import Cancelled, Reporter
from .plan import TilePlan, blend_ramp

__all__ = ["Cancelled", "RunControl", "TileContext", "assemble", "restore_tiles", "strip", "write"]


class RunControl:
    """Progress and cancel of one restore: counts finished tiles and reports them through a
    :class:`~napari_mirnet.progress.Reporter` (``Progress(job="restore", unit="tile")``).

    ``progress`` takes a :class:`~napari_mirnet.progress.Progress`, or is the older
    ``progress(done, total)`` (see :func:`~napari_mirnet.progress.as_callback`).
    """

    def __init__(self, progress=None, cancel: threading.Event | None = None, total: int = 0):
        self.reporter = Reporter("restore", progress, cancel)
        self.total = total
        self.done = 0
        self._lock = threading.Lock()

    @property
    def cancel(self) -> threading.Event | None:
        return self.reporter.cancel

    def __reduce__(self):
        # callbacks and events stay with the client: a worker gets a control that reports nothing
        return (RunControl, ())

    def check(self) -> None:
        """Raise :class:`~napari_mirnet.progress.Cancelled` once the cancel event is set."""
        if self.reporter.cancelled:
            raise Cancelled("restoration cancelled")

    def planned(self) -> None:
        """Report 0 of ``total`` once the tiles are planned: a front end shows 0/N from then on,
        not only when the first (possibly long) tile is finished."""
        if self.total:
            self.reporter.report(self.done, self.total)

    def tiles_done(self, n: int) -> None:
        """Count ``n`` more tiles done and report the count."""
        with self._lock:
            self.done += n
            done = self.done
        self.reporter.report(done, self.total)


@dataclass(eq=False)
class TileContext:
    """Everything a tile task needs; small and picklable."""

    weights: str
    device: str
    precision: str
    imap: IntensityMap
    channels: ChannelAdapter
    plan: TilePlan
    axes: str
    lead_shape: tuple[int, ...]
    arrays: tuple | None = None  # numpy/zarr sources read directly; None when tiles come from dask
    threads: int | None = None  # the caller's torch thread count, applied in the worker thread
    tta: bool = False  # average each tile over flips/rotations (model.self_ensemble)
    sink: object = None  # an ArraySink (numpy result) or a ZarrSink (zarr output); None for lazy output
    control: RunControl = field(default_factory=RunControl)
    source_name: str | None = None  # the input's path, for error messages
    accelerate: str = "auto"  # the forward's optimisations (accelerate.py): channels_last on CPU by default
    # the SHA-256 of the weights the run was prepared with: a worker that downloads a URL itself (no
    # shared disk) refuses other bytes instead of mixing two models into one output
    weights_sha256: str | None = None
    subimage_stride: int = 1  # > 1: the model restores the pixel-shuffle sub-images of this stride


def restore_tiles(ctx: TileContext, tiles: list, after: list, *blocks) -> dict:
    """Stage 1: restore a group of tiles in one batch. Returns {tile: (y0, x0, float32 C,H,W, digest)}.

    ``after`` holds results of earlier chunk writes: ordering edges only, their values are unused.
    ``blocks`` are the tiles' input windows when they come from a dask graph. ``digest`` is the
    hash of the tile's input window (see :mod:`.digest`).
    """
    import torch  # here: importing the engine (the CLI's parser, the napari reader) costs no torch

    from ..weights import cached_model
    from . import forward
    from .accelerate import accelerated

    ctx.control.check()
    plan, s = ctx.plan, ctx.plan.factor
    model = cached_model(ctx.weights, ctx.device, sha256=ctx.weights_sha256)
    device = next(model.parameters()).device
    if ctx.threads and torch.get_num_threads() != ctx.threads:
        # torch's thread setting is per thread: dask's pool threads would keep an older one, and
        # CPU results depend (in the last bit) on the thread count
        torch.set_num_threads(ctx.threads)
    bounds = ctx.imap.clip_range()
    items, ups, seen, digests, holes = _model_inputs(ctx, tiles, blocks, bounds)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(items)))  # run_batch copies it to the device
    # "auto" reaches here only on dask.distributed workers, where the device is known at last
    precision = resolve_precision(ctx.precision, device) if ctx.precision == "auto" else ctx.precision
    model = accelerated(model, precision, ctx.accelerate, x)  # the model itself when off
    y = forward.run_batch(model, x, precision, ctx.tta, ctx.channels.dual_pixel, ctx.subimage_stride)
    preds, start = {}, 0
    for (lead, ty, tx), item, up, clipped, digest, hole in zip(tiles, items, ups, seen, digests, holes):
        out = ctx.channels.finish(y[start : start + item.shape[0]], clipped)
        start += item.shape[0]
        if bounds is not None:
            out = _pass_through(out, up, bounds, ctx.channels.dual_pixel)
        out = mark_nodata(out, hole, s)
        (wy0, _), (wx0, _) = plan.window_range(0, ty), plan.window_range(1, tx)
        (py0, py1), (px0, px1) = plan.pred_range(0, ty), plan.pred_range(1, tx)
        crop = out[:, s * (py0 - wy0) : s * (py1 - wy0), s * (px0 - wx0) : s * (px1 - wx0)]
        preds[(lead, ty, tx)] = (s * py0, s * px0, np.ascontiguousarray(crop, dtype=np.float32), digest)
    ctx.control.tiles_done(len(tiles))
    return preds


def _model_inputs(ctx: TileContext, tiles: list, blocks: tuple, bounds) -> tuple[list, list, list, list, list]:
    """Read, check and map each tile's window: (model items, upscaled, as the model sees them,
    input digests, nodata holes), one entry per tile."""
    from .digest import tile_digest
    from .source import read_window

    plan, s = ctx.plan, ctx.plan.factor
    items, ups, seen, digests, holes = [], [], [], [], []
    for k, key in enumerate(tiles):
        lead, ty, tx = key
        (wy0, wy1), (wx0, wx1) = plan.window_range(0, ty), plan.window_range(1, tx)
        if blocks:
            raw = np.asarray(blocks[k])
        else:
            raw = read_window(ctx.arrays, ctx.axes, plan, key, ctx.source_name)
        where = f"plane {lead}, rows {wy0}-{wy1}, columns {wx0}-{wx1}"
        if raw.dtype.kind == "f" and np.isinf(raw).any():  # NaN is nodata (filled, then written back)
            raise ValueError(f"the image contains Inf pixels ({where}); replace them (e.g. np.nan_to_num) first")
        ctx.imap.check_range(raw, f" ({where})")
        digests.append(tile_digest(raw) if ctx.sink is not None and ctx.sink.keeps_digests else 0)
        x, hole = fill_nodata(ctx.imap.forward(raw))  # nodata: filled for the model, NaN again after it
        holes.append(hole)
        up = upscale(x, s) if s > 1 else x
        ups.append(up)
        if bounds is not None:
            # outliers (a hot pixel) would swamp the network, whose pooling spreads them over the
            # whole tile: the model sees them clipped, and they are put back after it
            up = np.clip(up, *bounds)
        seen.append(up)
        items.append(ctx.channels.prepare(up))
    return items, ups, seen, digests, holes


def _pass_through(out: np.ndarray, up: np.ndarray, bounds: tuple, dual_pixel: bool) -> np.ndarray:
    """Values the model input was clipped from come out as they went in (nothing silently lost)."""
    outside = (up < bounds[0]) | (up > bounds[1])
    if not outside.any():
        return out
    if dual_pixel:  # both views make one output: pass their mean where either was clipped
        value = up.reshape(2, -1, *up.shape[1:]).mean(axis=0)
        outside = outside.reshape(2, -1, *up.shape[1:]).any(axis=0)
        return np.where(outside, value, out).astype(np.float32) if value.shape == out.shape else out
    if out.shape[0] != up.shape[0]:
        return out
    return np.where(outside, up, out).astype(np.float32)


def assemble(ctx: TileContext, key: tuple, *groups) -> np.ndarray:
    """Stage 2: one output chunk from its tile and, when blending, the bands of the tiles above
    and to the left. ``groups`` are dicts {tile: (y0, x0, float32 prediction)}."""
    plan, s = ctx.plan, ctx.plan.factor
    lead, ty, tx = key
    (cy0, cy1), (cx0, cx1) = plan.core_range(0, ty), plan.core_range(1, tx)
    oy0, oy1, ox0, ox1 = s * cy0, s * cy1, s * cx0, s * cx1
    preds = {}
    for g in groups:
        preds.update(g)
    own = preds[key][2]
    if plan.margin == (0, 0):
        py0, px0, arr, _ = preds[key]
        acc = arr[:, oy0 - py0 : oy1 - py0, ox0 - px0 : ox1 - px0]
    else:
        acc = np.zeros((own.shape[0], oy1 - oy0, ox1 - ox0), dtype=np.float32)
        H, W = s * plan.height, s * plan.width
        for (ld, iy, ix), (py0, px0, arr, _) in preds.items():
            if ld != lead:
                continue
            # overlap of this tile's prediction with the chunk, in output pixels
            y0, y1 = max(oy0, py0), min(oy1, py0 + arr.shape[1])
            x0, x1 = max(ox0, px0), min(ox1, px0 + arr.shape[2])
            if y0 >= y1 or x0 >= x1:
                continue
            ty0, ty1 = (s * v for v in plan.core_range(0, iy))
            tx0, tx1 = (s * v for v in plan.core_range(1, ix))
            wy = blend_ramp(y0, y1, ty0, ty1, s * plan.margin[0], H)
            wx = blend_ramp(x0, x1, tx0, tx1, s * plan.margin[1], W)
            wgt = (wy[:, None] * wx[None, :]).astype(np.float32)
            acc[:, y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0] += wgt * arr[:, y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
    block = ctx.imap.inverse(acc)
    return block.reshape((1,) * len(ctx.lead_shape) + block.shape)


def strip(ctx: TileContext, key: tuple, *groups) -> dict:
    """The part of a tile's prediction the chunks below it blend with: its band past the core."""
    plan, s = ctx.plan, ctx.plan.factor
    for g in groups:
        if key in g:
            py0, px0, arr, digest = g[key]
            c1 = s * plan.core_range(0, key[1])[1]
            return {key: (c1, px0, arr[:, c1 - py0 :].copy(), digest)}  # a copy: a view would keep the tile
    raise KeyError(key)


def write(ctx: TileContext, key: tuple, *groups) -> dict:
    """Stage 2 into a sink (numpy or zarr): assemble, write the chunk-aligned region (zarr: then mark it done).

    Returns the tile's band for the chunks below, so that the full prediction is released at once.
    """
    from .digest import chunk_digest, contributors

    digest = None
    if ctx.sink.keeps_digests:
        digests = {k: v[3] for g in groups for k, v in g.items()}
        digest = chunk_digest([digests[t] for t in contributors(ctx.plan, key)])
    ctx.sink.write(key, assemble(ctx, key, *groups), digest)
    return strip(ctx, key, *groups) if ctx.plan.margin[0] else {}


def finish_window(n: int, *values) -> list:
    """The last task of a window of a run into a sink: depends on every chunk write in it, and hands
    back the first ``n`` values (what later windows read)."""
    return list(values[:n])


def held(box) -> object:
    """A value an earlier window computed (see :class:`.graph.WriteWindows`)."""
    return box.value
