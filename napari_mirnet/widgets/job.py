"""A restoration job of the task widgets: what a run needs, gathered on the GUI thread, and its run.

:func:`run_job` calls the library (the engine for a layer computed now, :func:`napari_mirnet.api.restore`
for an OME-Zarr output, :func:`napari_mirnet.api.restore_lazy` for a lazy layer); :func:`work` is
the worker's body, which turns every failure into a message. Imports no Qt.
"""

from __future__ import annotations

import json
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
    "check_not_input",
    "job_urls",
    "lazy_pyramid",
    "parse_nodata",
    "parse_storage_options",
    "run_job",
    "scrub",
    "work",
    "zarr_output",
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
    # also the residual and trust map (denoise; "tta": with more model passes): run_job returns (data, QualityReport)
    qc: bool | str = False
    # fsspec options for a URL output (None: from the environment); kept out of repr, which logs may show
    storage_options: dict | None = field(default=None, repr=False)
    urls: tuple = ()  # the job's URLs (input layer's source, output), as messages must redact them


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
        from ..io.urls import is_url

        if job.storage_options is not None or is_url(job.zarr_path):
            common["storage_options"] = job.storage_options
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
    if job.qc:
        from ..engine import quality

        quality.check_qc_run(run, job.qc)
    out = eng.execute(run, progress=progress, cancel=cancel)
    if hasattr(out, "dask") and hasattr(out, "compute"):
        # a lazy input gives a lazy result; "computed now" means the tiles run here, in the worker,
        # on the scheduler the engine picks for the device
        out = eng.compute(out, run)
    if job.qc:
        from ..engine import quality

        out = np.asarray(out)
        return out, quality.run_qc(run, out, tta=job.qc == "tta", compute=lambda c: eng.compute(c, run))
    return np.asarray(out)


def zarr_output(value) -> str:
    """The OME-Zarr output field's value (a ``Path``, or a ``str`` URL) as ``restore(out=...)`` takes it.

    An http(s) URL (read-only) and a path that is not a store are refused before any work.
    """
    from ..io.urls import is_url, redact
    from ..outputs import is_store

    text = str(value or "").strip()
    if not text or text == ".":
        raise InputError("choose a path for the OME-Zarr output (e.g. result.zarr or s3://bucket/result.zarr)")
    url = is_url(text)
    if url and text.split("://", 1)[0].lower() in ("http", "https"):
        raise InputError(
            f"cannot write the OME-Zarr output to {redact(text)}: http(s) URLs are read-only; "
            "choose a local path or an s3://, gs:// or az:// URL"
        )
    if not is_store(text):  # restore(out=...) would write that format instead of the store chosen
        raise InputError(f"the OME-Zarr output's path must end in .zarr (got {redact(text) if url else text!r})")
    return text if url else str(value)


def check_not_input(out: str | None, layers) -> None:
    """Refuse an output URL that is, holds or lies in the store an input layer was opened from.

    The layer's dask data reads that store chunk by chunk while the run replaces it; the engine
    tells local stores apart by their folder, but not a store at a URL behind a dask array.
    """
    from ..io.location import same_or_within
    from ..io.urls import is_url, redact
    from .layers import source_url

    if not out or not is_url(out):
        return
    for src in filter(None, (source_url(layer) for layer in layers)):
        if is_url(src) and (same_or_within(out, src) or same_or_within(src, out)):
            raise InputError(
                f"the output {redact(out)} would write into the store the input layer reads from "
                f"({redact(src)}); choose another output"
            )


def job_urls(layers, out: str | None) -> tuple:
    """The URLs a job's messages must redact: the input layers' sources and the output."""
    from ..io.urls import is_url
    from .layers import source_url

    return tuple(u for u in [*(source_url(layer) for layer in layers), out] if u and is_url(u))


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
            return "error", scrub(f"out of memory ({err}); choose a smaller tile under advanced options", job)
        # a library's message may quote a URL or an option: the status line, tooltip and log must not
        return "error", (scrub(_error_line(err), job), scrub(_error_detail(err), job))


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


def scrub(text: str | None, job: Job) -> str | None:
    """``text`` with the job's URLs redacted and no secret of its storage options (messages, logs)."""
    from ..io.secrets import scrub as scrub_secrets

    return scrub_secrets(text, job.urls, job.storage_options)


def parse_storage_options(text: str | None) -> dict | None:
    """The widget's storage options: a JSON object, or ``KEY=VALUE`` lines; None when empty.

    A dotted key nests (``client_kwargs.endpoint_url=http://127.0.0.1:9000``); values are JSON
    where they parse, text under a key that names a secret (:func:`napari_mirnet.io.secrets.parse_items`).
    Empty: fsspec reads the environment (``AWS_*``, profiles). Errors name the key, never a value.
    """
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"storage options are not valid JSON (line {err.lineno}, column {err.colno}); "
                "write a JSON object or KEY=VALUE lines"
            ) from None
        if not isinstance(value, dict):
            raise InputError("storage options must be a JSON object ({...}) or KEY=VALUE lines")
        return value
    from ..io.secrets import parse_items

    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    try:
        return parse_items([line for _, line in lines], "storage options:", [f"line {n}" for n, _ in lines])
    except ValueError as err:
        raise InputError(f"{err}; write KEY=VALUE lines or a JSON object") from None


def parse_nodata(text: str | None, dtype) -> float | None:
    """The 'nodata' field as restore's ``nodata=`` (None when empty), checked against the layer's
    ``dtype`` now, in the field's words, not from the worker after the model loaded."""
    from ..processing.intensity import check_nodata

    text = str(text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"nodata: give the value that marks missing pixels, a number or 'nan' (got {text!r})"
        ) from None
    try:
        return check_nodata(value, np.dtype(dtype))
    except ValueError as err:
        raise InputError(str(err).replace("nodata=", "nodata ")) from None
