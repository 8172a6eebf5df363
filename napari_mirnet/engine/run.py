"""A restoration run: :func:`prepare` decides everything once, into a frozen :class:`RestorationRun`.

The :class:`RestorationRun` is the single description of a run that every front end reads (axes,
weights, tile plan, output geometry, fingerprint); :mod:`.execution` carries it out.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..devices import resolve_device, resolve_precision
from ..io.urls import is_url
from ..metadata import ImageMeta
from ..model_config import MIRNetConfig
from ..processing import ChannelAdapter, IntensityMap, channel_layout, channel_order
from ..tasks import choose_weights, get_task
from . import memory
from .digest import SCHEME
from .options import DEFAULT_BLEND, DEFAULT_HALO, RestoreOptions, scheduler_config
from .plan import TilePlan, plan_tiles, round_to_stride
from .source import Source, open_source
from .steps import RunControl, TileContext

__all__ = ["RestorationRun", "prepare", "scheduler_config"]


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
    # > 1: the model (one that restores whole images) restores the pixel-shuffle sub-images of this
    # stride instead: the check's second opinion on noise correlated over a few pixels (quality.py)
    subimage_stride: int = 1
    # False where the model's file restores otherwise (pixel-shuffle sub-images, a detail filter):
    # the check's second opinion is for models that restore whole images
    restores_whole: bool = True

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
            # a URL is the same wherever the run starts (abspath would make it a path below the cwd)
            "input": (src.name if is_url(src.name) else os.path.abspath(src.name)) if src.name else None,
            # the content behind each finished chunk is checked on resume (see digest.py)
            "input_check": SCHEME,
            "input_shape": list(src.shape),
            "input_dtype": src.dtype.str,
            "axes": self.axes,
            # only when given, so that stores written before the option existed still resume
            **({} if self.options.rgb is None else {"rgb": self.options.rgb}),
            **({} if self.subimage_stride == 1 else {"subimage_stride": self.subimage_stride}),
        }

    def context(self, control: RunControl | None = None, sink=None) -> TileContext:
        """The small picklable part of the run that the graph's tasks carry."""
        return TileContext(
            weights=self.weights,
            weights_sha256=self.weights_sha256,
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
            subimage_stride=self.subimage_stride,
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
    storage_options: dict | None = None,
) -> RestorationRun:
    """Open the input and decide the run: axes, weights, intensity mapping, channels, tile plan.

    With a dask.distributed ``client`` the model is loaded on the CPU here only to read its
    config; the workers own the devices. ``level`` picks a level of an OME-Zarr input;
    ``storage_options`` (fsspec options) open an input URL.
    """
    from ..weights import cached_model  # torch: the model is loaded here, not when the engine is imported
    from . import accelerate

    spec = get_task(task)
    factor = spec.check_scale(scale if scale is not None else spec.scales[0])
    source = open_source(image, axes, spec.dual_pixel, client, level, storage_options)
    n_c = source.size("C")
    layout = None if spec.dual_pixel else channel_layout(n_c, source.meta.channels, source.axes, options.rgb)
    order = None if spec.dual_pixel else channel_order(n_c, source.meta.channels)
    weights = str(
        choose_weights(task, factor, n_c, weights, colour=None if layout is None else layout in ("rgb", "rgba"))
    )
    model = cached_model(weights, "cpu" if client is not None else options.device)
    if client is not None and not isinstance(client, str):
        from ..weights.download import check_workers_see

        # a local weights file the workers lack (no shared disk) is refused before an output exists
        check_workers_see(weights, client)
    device, prec = _device_and_precision(options, client)
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
        threads=_torch_threads() if client is None else None,
        restores_whole=model.pixel_shuffle == 1 and model.detail_filter is None,
    )


def _device_and_precision(options: RestoreOptions, client) -> tuple[str, str]:
    """The run's device and precision; with a ``client`` the workers own the devices ("auto" stays)."""
    if client is None:
        dev = resolve_device(options.device)
        device, prec = str(dev), resolve_precision(options.precision, dev)
    else:
        device = str(options.device)
        prec = options.precision if options.precision == "auto" else resolve_precision(options.precision, "cpu")
    return device, prec


def _torch_threads() -> int:
    """The caller's torch thread count: every tile runs with it (CPU results depend on it in the last bit)."""
    import torch

    return torch.get_num_threads()


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
