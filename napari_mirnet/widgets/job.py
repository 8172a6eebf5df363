"""A restoration job of the task widgets: what a run needs, gathered on the GUI thread, and its run.

:func:`run_job` calls the library (the engine for a layer computed now, :func:`napari_mirnet.api.restore`
for an OME-Zarr output, :func:`napari_mirnet.api.restore_lazy` for a lazy layer); :func:`work` is
the worker's body, which turns every failure into a message. Imports no Qt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .layers import InputError

__all__ = [
    "OUTPUT_LAZY",
    "OUTPUT_NOW",
    "OUTPUT_ZARR",
    "Job",
    "check_fits_in_memory",
    "lazy_pyramid",
    "run_job",
    "work",
]

OUTPUT_NOW = "new layer, computed now"
OUTPUT_LAZY = "lazy layer, computed as you view"
OUTPUT_ZARR = "OME-Zarr file"
#: A lazy output of a plane larger than this (pixels per side) gets a lazy pyramid, so that napari
#: shows a zoomed-out view from a coarse level instead of restoring the whole full-resolution plane.
PYRAMID_ABOVE = 4096
PYRAMID_TOP = 1024


@dataclass
class Job:
    """Everything one run needs, gathered on the GUI thread so the worker never touches layers."""

    task: str
    image: object  # array or ImageSource (with the layer's metadata), (left, right) pair, or pyramid levels
    axes: str
    output: str
    weights: str | None
    scale: int | None
    layer_kwargs: dict
    options: dict = field(default_factory=dict)
    zarr_path: str | None = None
    overwrite: bool = False
    pixel_size: tuple | None = None
    pyramid: bool = False
    qc: bool = False  # also the residual and trust map (denoise): run_job returns (data, QualityReport)


def _engine():
    from .. import engine

    return engine


def _api():
    from .. import api

    return api


def run_job(job: Job, progress=None, cancel: threading.Event | None = None):
    """Run a job with the engine (in the calling thread); returns the data for the result layer."""
    eng = _engine()
    common = dict(task=job.task, weights=job.weights, scale=job.scale, axes=job.axes, **job.options)
    if job.output == OUTPUT_ZARR:
        common["pixel_size"] = job.pixel_size
    if job.output == OUTPUT_LAZY:
        levels = job.image if job.pyramid else [job.image]
        out = [_api().restore_lazy(level, **common) for level in levels]
        return out if job.pyramid else out[0]
    if job.output == OUTPUT_ZARR:
        out = _api().restore(
            job.image, **common, out=job.zarr_path, overwrite=job.overwrite, progress=progress, cancel=cancel, qc=job.qc
        )
        # the engine hands back a lazy array reading the written store, in the input's axis order
        return out
    run = eng.prepare(
        job.image,
        job.task,
        job.weights,
        scale=job.scale,
        axes=job.axes,
        options=eng.RestoreOptions.from_mapping(job.options),
    )
    out = eng.execute(run, progress=progress, cancel=cancel)
    if hasattr(out, "dask") and hasattr(out, "compute"):
        # a lazy input gives a lazy result; "computed now" means the tiles run here, in the worker,
        # on the scheduler the engine picks for the device
        out = eng.compute(out, run)
    if job.qc:
        from ..engine import quality

        out = np.asarray(out)
        return out, quality.run_qc(run, out, compute=lambda c: eng.compute(c, run))
    return np.asarray(out)


def check_fits_in_memory(shape, dtype: np.dtype, axes: str, factor: int = 1) -> None:
    """Refuse a computed-now result that would not fit in half the free memory: offer lazy or zarr."""
    import psutil

    nbytes = float(np.prod(shape, dtype=float)) * dtype.itemsize * factor**2
    free = psutil.virtual_memory().available
    if nbytes > free / 2:
        raise InputError(
            f"the result would take {nbytes / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB of memory is "
            f"free; choose output '{OUTPUT_LAZY}' or '{OUTPUT_ZARR}', or the preview option"
        )


def lazy_pyramid(data, axes: str) -> list:
    """Strided views of a big plane, full resolution first, for a lazy multiscale result."""
    import dask.array as da

    if not hasattr(data, "dask"):
        data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))
    y, x = axes.index("Y"), axes.index("X")
    levels, step = [data], 2
    while max(data.shape[y], data.shape[x]) / (step // 2) > PYRAMID_TOP:
        index = [slice(None)] * data.ndim
        index[y] = index[x] = slice(None, None, step)
        levels.append(data[tuple(index)])
        step *= 2
    return levels


def work(job: Job, report, cancel: threading.Event):
    """The worker body: never raises, so napari shows our message, not a traceback dialog.

    ``report`` receives the engine's tile counts as :class:`~napari_mirnet.progress.Progress`;
    returns ``("ok", data)``, ``("cancelled", None)`` or ``("error", text or (text, detail))``.
    """
    from ..progress import Cancelled, Progress

    def progress(done: int, total: int) -> None:  # the engine's (done, total) form
        report(Progress("restore", "run", done, total, "tile"))

    try:
        return "ok", run_job(job, progress, cancel)
    except BaseException as err:  # noqa: BLE001 - every failure becomes a message
        if isinstance(err, (Cancelled, _engine().Cancelled)) or cancel.is_set():
            return "cancelled", None
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
            return "error", f"out of memory ({err}); choose a smaller tile under advanced options"
        return "error", (_error_line(err), _error_detail(err))


def _error_line(err: BaseException) -> str:
    """The status line: our own errors' messages are written for users; others get their type."""
    from ..weights import WeightsError

    return str(err) if isinstance(err, (ValueError, WeightsError)) else f"{type(err).__name__}: {err}"


def _error_detail(err: BaseException) -> str | None:
    """What caused it (e.g. urllib3's whole connection error), for the tooltip and the log."""
    causes, cause = [], err.__cause__ or err.__context__
    while cause is not None and len(causes) < 5:
        causes.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "\n".join(["caused by:", *causes]) if causes else None
