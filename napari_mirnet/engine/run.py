"""A restoration run: ``prepare`` decides everything once; ``execute`` drives it to numpy, dask or zarr.

The :class:`RestorationRun` is the single description of a run that every front end reads (axes,
weights, tile plan, output geometry, fingerprint); ``compute`` is the one place that picks the
dask scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from dataclasses import dataclass
from functools import cached_property

import dask
import numpy as np
import torch

from .. import io as mio
from ..devices import resolve_device, resolve_precision
from ..metadata import ImageMeta
from ..model_config import MIRNetConfig
from ..processing import ChannelAdapter, IntensityMap, channel_layout, channel_order
from ..tasks import choose_weights, get_task
from ..weights import cached_model
from . import accelerate, heap, memory
from .digest import SCHEME, verify_done
from .graph import WriteWindows, lazy_array
from .options import DEFAULT_BLEND, DEFAULT_HALO, RestoreOptions, scheduler_config
from .plan import TilePlan, plan_tiles, round_to_stride
from .sinks import open_array_sink, open_zarr_sink
from .source import Source, open_source
from .steps import Cancelled, RunControl, TileContext

__all__ = ["RestorationRun", "check_zarr_out", "compute", "execute", "prepare", "scheduler_config"]


@dataclass(frozen=True, eq=False)
class RestorationRun:
    """Everything decided about one run before any tile is computed (frozen, picklable)."""

    run_id: str
    task: str
    source: Source
    weights: str  # the name or path the model was loaded from
    weights_sha256: str | None
    model_config: MIRNetConfig
    device: str
    precision: str
    imap: IntensityMap
    channels: ChannelAdapter
    plan: TilePlan
    options: RestoreOptions
    batch: int  # tiles per forward pass
    threads: int | None  # torch threads of the caller, for the same last bit in every worker

    @property
    def axes(self) -> str:
        return self.source.axes

    @property
    def factor(self) -> int:
        return self.plan.factor

    @cached_property
    def keys(self) -> list[tuple]:
        """Tile keys (lead index, tile row, tile column) in row-major order."""
        grid = self.plan.grid
        return [
            (tuple(int(v) for v in lead), ty, tx)
            for lead in np.ndindex(*self.source.lead_shape)
            for ty in range(grid[0])
            for tx in range(grid[1])
        ]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Canonical output shape (lead..., C, Y, X)."""
        s = self.factor
        return self.source.lead_shape + (self.channels.channels_out, s * self.plan.height, s * self.plan.width)

    @property
    def out_chunks(self) -> tuple:
        """Canonical output chunks: one plane, all channels, one tile core."""
        out_y, out_x = self.plan.out_chunks()
        return tuple((1,) * n for n in self.source.lead_shape) + ((self.channels.channels_out,), out_y, out_x)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Output shape in the input's axis order."""
        s = self.factor
        return tuple(
            s * n if a in "YX" else (self.channels.channels_out if a == "C" else n)
            for a, n in zip(self.axes, self.source.shape)
        )

    @property
    def pixel_size(self) -> dict | None:
        """Physical pixel size per input axis: the file's, else the caller's ``pixel_size``."""
        if self.source.pixel_scale:
            return dict(self.source.pixel_scale)
        if self.options.pixel_size is not None:
            return dict(zip(self.axes, self.options.pixel_size))
        return None

    @property
    def output_meta(self) -> ImageMeta:
        """What the output's pixels mean: the input's metadata, resampled and with the output's channels."""
        meta = self.source.meta
        if not meta.scale and self.options.pixel_size is not None:
            meta = meta.replace(scale=dict(zip(self.axes, (float(v) for v in self.options.pixel_size))))
        if self.imap.nodata is not None:  # the caller's nodata= (or the file's) marks the output's holes
            meta = meta.replace(nodata=self.imap.nodata)
        return meta.replace(axes=self.axes).resampled(self.factor).with_channel_count(self.channels.channels_out)

    @property
    def fingerprint(self) -> dict:
        """What identifies this run's output in a store (resume only continues an identical run)."""
        from ..version import __version__

        src = self.source
        return {
            "version": __version__,
            "task": self.task,
            "scale": self.factor,
            "weights": os.path.basename(self.weights),
            "weights_sha256": self.weights_sha256,
            "model": self.model_config.to_dict(),
            "tile": int(self.options.tile),
            "halo": int(self.options.halo),
            "blend": int(self.options.blend),
            "plan": self.plan.to_dict(),
            "precision": self.precision,
            "tta": bool(self.options.tta),
            "normalisation": self.imap.to_dict(),
            # a path identifies the input of a re-run command; arrays are known by shape and dtype only
            "input": os.path.abspath(src.name) if src.name else None,
            # the content behind each finished chunk is checked on resume (see digest.py)
            "input_check": SCHEME,
            "input_shape": list(src.shape),
            "input_dtype": src.dtype.str,
            "axes": self.axes,
            # only when given, so that stores written before the option existed still resume
            **({} if self.options.rgb is None else {"rgb": self.options.rgb}),
        }

    def context(self, control: RunControl | None = None, sink=None) -> TileContext:
        """The small picklable part of the run that the graph's tasks carry."""
        return TileContext(
            weights=self.weights,
            device=self.device,
            precision=self.precision,
            imap=self.imap,
            channels=self.channels,
            plan=self.plan,
            axes=self.axes,
            lead_shape=self.source.lead_shape,
            arrays=None if self.source.kind == "dask" else self.source.arrays,
            threads=self.threads,
            tta=bool(self.options.tta),
            sink=sink,
            control=control or RunControl(),
            source_name=self.source.name,
            accelerate=self.options.accelerate,
        )


def prepare(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale=None,
    axes=None,
    options: RestoreOptions = RestoreOptions(),
    client=None,
    level=None,
) -> RestorationRun:
    """Open the input and decide the run: axes, weights, intensity mapping, channels, tile plan.

    With a dask.distributed ``client`` the model is loaded on the CPU here only to read its
    config; the workers own the devices. ``level`` picks a level of an OME-Zarr input.
    """
    spec = get_task(task)
    factor = spec.check_scale(scale if scale is not None else spec.scales[0])
    source = open_source(image, axes, spec.dual_pixel, client, level)
    n_c = source.size("C")
    layout = None if spec.dual_pixel else channel_layout(n_c, source.meta.channels, source.axes, options.rgb)
    order = None if spec.dual_pixel else channel_order(n_c, source.meta.channels)
    weights = str(
        choose_weights(task, factor, n_c, weights, colour=None if layout is None else layout in ("rgb", "rgba"))
    )
    model = cached_model(weights, "cpu" if client is not None else options.device)
    if client is None:
        dev = resolve_device(options.device)
        device, prec = str(dev), resolve_precision(options.precision, dev)
    else:
        device = str(options.device)
        prec = options.precision if options.precision == "auto" else resolve_precision(options.precision, "cpu")
    cfg = model.config
    _check_model_fits_task(task, weights, cfg)
    accelerate.parse(options.accelerate, device if client is None else "cpu", "fp32")  # bad names: refused now
    channels = ChannelAdapter.for_model(
        n_c * len(source.arrays), cfg.in_channels, cfg.out_channels, spec.dual_pixel, layout, order
    )
    options = _with_default_geometry(options, model, prec, (source.size("Y"), source.size("X")), factor)
    plan = plan_tiles(source.size("Y"), source.size("X"), options.tile, options.halo, options.blend, factor)
    nodata = options.nodata if options.nodata is not None else source.meta.nodata
    imap = _intensity_map(source, options.normalisation, channels, nodata)
    win_px = plan.window[0] * plan.window[1] * factor**2
    batch = (
        1
        if client is not None
        else memory.default_batch(model, win_px, prec if prec != "auto" else "bf16", channels.items)
    )
    return RestorationRun(
        run_id=uuid.uuid4().hex,
        task=task,
        source=source,
        weights=weights,
        weights_sha256=getattr(model, "weights_sha256", None),
        model_config=cfg,
        device=device,
        precision=prec,
        imap=imap,
        channels=channels,
        plan=plan,
        options=options,
        batch=batch,
        threads=torch.get_num_threads() if client is None else None,
    )


def _with_default_geometry(
    options: RestoreOptions, model, precision: str, shape: tuple | None = None, factor: int = 1
) -> RestoreOptions:
    tile, halo = options.tile, options.halo
    prec = precision if precision != "auto" else "fp32"
    if tile is None and shape is not None and next(model.parameters()).device.type == "cpu":
        # on the CPU the fastest tile for this image among those that fit memory (see memory.py)
        tile, halo = memory.default_geometry(model, prec, shape[0], shape[1], factor, halo)
    elif tile is None:
        tile = memory.default_tile(model, prec)
    halo = halo if halo is not None else min(DEFAULT_HALO, max(0, round_to_stride(tile / 4)))
    blend = options.blend if options.blend is not None else min(DEFAULT_BLEND, halo)
    return dataclasses.replace(options, tile=int(tile), halo=int(halo), blend=int(blend))


def _check_model_fits_task(task: str, weights: str, cfg: MIRNetConfig) -> None:
    """A dual-pixel model takes a (left, right) pair, any other an image: say so before torch does."""
    dual = get_task(task).dual_pixel
    if dual and not cfg.dual_pixel:
        raise ValueError(
            f"task='defocus' needs a dual-pixel model (6 input channels: left and right views), but "
            f"weights={weights!r} takes {cfg.in_channels}; pass dual-pixel weights or another task"
        )
    if cfg.dual_pixel and not dual:
        raise ValueError(
            f"weights={weights!r} is a dual-pixel defocus model; use task='defocus' with a (left, right) pair"
        )


#: Channel rules of the adapter under which the model restores each channel on its own.
_PER_CHANNEL = ("per_channel", "replicated_gray", "rgb+gray")


def _intensity_map(source: Source, normalisation: str, channels: ChannelAdapter, nodata=None) -> IntensityMap:
    """The run's intensity map; per channel where the model sees channels one by one (see IntensityMap)."""
    from .source import InputError

    per_channel = "C" in source.axes and source.size("C") > 1 and channels.how in _PER_CHANNEL
    axis = source.axes.index("C") if per_channel else None
    # integer images map by their dtype's range: no pixel is read, and no dask.array is needed
    sample = source.as_dask() if IntensityMap.reads_pixels(source.dtype, normalisation) else source.arrays[:1]
    if len(sample) == 1:
        image = sample[0]
    elif source.kind == "numpy":
        image = np.stack(sample)
        axis = None if axis is None else axis + 1
    else:
        import dask.array as da

        image = da.stack(sample)
        axis = None if axis is None else axis + 1
    try:
        imap = IntensityMap.for_image(image, normalisation, channel_axis=axis, nodata=nodata)
    except (ValueError, TypeError):
        raise
    except Exception as err:  # a damaged chunk met while sampling intensities
        raise InputError(
            f"reading the input {source.name or '(array)'} to sample its intensities failed "
            f"({type(err).__name__}: {err}); the file may be damaged or incomplete: check or re-create it"
        ) from err
    if source.kind == "numpy":
        for a in source.arrays:  # in memory: check every value, not just the sample
            imap.check_range(a)
    return imap


def compute(collection, run: RestorationRun, client=None):
    """Compute a collection of ``run`` with the scheduler :func:`scheduler_config` picks."""
    if client is not None:
        return client.compute(collection).result()
    config = scheduler_config(run.device, overlap=accelerate.overlaps(run.options.accelerate, run.device))
    # on CPU the forwards' freed maps are reused rather than page-faulted afresh (heap.py)
    keep = heap.keep_freed_memory() if run.device == "cpu" else contextlib.nullcontext()
    with dask.config.set(config), keep:
        return dask.compute(collection)[0]


def execute(
    run: RestorationRun, *, out=None, overwrite: bool = False, client=None, progress=None, cancel=None, read_back=True
):
    """Carry out a prepared run: numpy for numpy input, else a lazy dask array; with ``out``, a store.

    With ``out``, the store is returned as a dask array, or None with ``read_back=False`` (callers
    that only want the file skip importing dask.array, ~70 MB of resident memory with pandas).
    """
    if out is not None:
        check_zarr_out(out)
        mio.check_distinct(run.source.paths, out)
        sink = _to_zarr(run, out, overwrite, client, progress, cancel)
        return sink.read_back(run.axes) if read_back else None
    # on a cluster the client reports nothing per tile: the result comes back in one piece
    control = RunControl(progress if client is None else None, cancel, len(run.keys))
    if not run.source.eager:
        return lazy_array(run, run.context(control))  # the callbacks live as long as the array's graph
    if client is not None:
        return compute(lazy_array(run, run.context(control)), run, client)
    # numpy in, numpy out: each chunk goes into the result as soon as it is made, through the same
    # graph as a zarr run (so no dask array is built: dask.array's imports alone cost ~70 MB)
    sink = open_array_sink(run)
    _write(run, run.context(control, sink), run.keys, max(2, 2 * run.batch))
    return sink.array


def check_zarr_out(out) -> None:
    """``out`` is a zarr store: a path ending in .zarr (or without a suffix)."""
    suffix = os.path.splitext(os.fspath(out).rstrip("/\\"))[1].lower()
    if suffix not in ("", ".zarr"):
        raise mio.OutputError(
            f"out={os.fspath(out)!r}: restore writes a zarr store, so out must end in .zarr; for {suffix} "
            "write the returned array with napari_mirnet.io.write_image(path, result, axes), or use the CLI's -o"
        )


def _to_zarr(run: RestorationRun, out, overwrite: bool, client, progress, cancel):
    # one run per store: a second writer (other settings, --overwrite, or the same new store at the
    # same instant) would interleave chunks and leave a store marked complete that cannot be read
    with mio.store_lock(out):
        return _to_zarr_locked(run, out, overwrite, client, progress, cancel)


def _to_zarr_locked(run: RestorationRun, out, overwrite: bool, client, progress, cancel):
    sink = open_zarr_sink(run, out, overwrite)
    verify_done(run, sink)
    todo = sink.todo(run.keys)
    control = RunControl(progress if client is None else None, cancel, len(todo))
    workers = len(client.scheduler_info()["workers"]) if client is not None else 1
    try:
        _write(run, run.context(control, sink), todo, max(2, 2 * run.batch, 4 * workers), client, progress, cancel)
        sink.output.finalize(sink.store_axes, run.output_meta, name=_result_name(run, out))
    except OSError as err:
        raise mio.OutputError(
            f"writing {sink.output.path} failed ({err}); the store is left incomplete. Fix the cause (free disk "
            "space, permissions) and re-run the same command to resume."
        ) from err
    return sink


def _write(run: RestorationRun, ctx: TileContext, todo: list, lag: int, client=None, progress=None, cancel=None):
    """Compute the chunk writes of ``todo``, window after window (see :class:`.graph.WriteWindows`)."""
    from dask.delayed import Delayed

    windows, done = WriteWindows(run, ctx, todo, lag), 0
    ctx.control.planned()  # 0/N from now on, not only once the first (possibly long) tile is done
    for w in range(len(windows.windows)):
        graph, writes, final, exports = windows.graph(w)
        if client is None:
            values = compute(Delayed(final, graph, layer=final[0]), run)
        else:
            delayeds = [Delayed(k, graph, layer=final[0]) for k in (final, *writes)]
            values, done = _distributed_compute(client, delayeds, progress, cancel, done, len(todo))
        windows.keep(w, exports, values)


def _result_name(run: RestorationRun, out) -> str:
    """The image's own name (OME Image Name, a layer's name) where it has one; else the store's
    (``out`` for ``/data/out.zarr``): a file name like ``scene.png`` would name the result after its input."""
    own = run.output_meta.name
    if own and own != os.path.basename(str(run.source.name or "")):
        return own
    return mio.store_name(out)


def _distributed_compute(client, delayeds: list, progress, cancel, done: int, total: int) -> tuple:
    """(the value of the first of ``delayeds``, writes done); progress counts the others."""
    from distributed import as_completed

    futures = client.compute(delayeds)
    try:
        for fut in as_completed(futures[1:]):
            fut.result()
            done += 1
            if progress is not None:
                progress(done, total)
            if cancel is not None and cancel.is_set():
                raise Cancelled("restoration cancelled")
        return futures[0].result(), done
    except BaseException:
        client.cancel(futures)
        raise
