"""Executing a prepared run: into numpy, a lazy dask array or a resumable zarr store, on dask's local
scheduler or a dask.distributed client (``compute`` is the one place that picks the scheduler)."""

from __future__ import annotations

import contextlib
import os
from urllib.parse import urlsplit

import dask

from .. import io as mio
from ..io.location import display, writable_url
from ..io.urls import is_url, redact
from . import heap
from .digest import verify_done
from .graph import WriteWindows, lazy_array
from .options import scheduler_config
from .run import RestorationRun
from .sinks import open_array_sink, open_zarr_sink
from .steps import RunControl, TileContext

__all__ = ["check_zarr_out", "compute", "execute"]


def compute(collection, run: RestorationRun, client=None):
    """Compute a collection of ``run`` with the scheduler :func:`scheduler_config` picks."""
    if client is not None:
        return client.compute(collection).result()
    from . import accelerate  # torch: only a run that computes needs it

    config = scheduler_config(run.device, overlap=accelerate.overlaps(run.options.accelerate, run.device))
    # on CPU the forwards' freed maps are reused rather than page-faulted afresh (heap.py)
    keep = heap.keep_freed_memory() if run.device == "cpu" else contextlib.nullcontext()
    with dask.config.set(config), keep:
        return dask.compute(collection)[0]


def execute(
    run: RestorationRun,
    *,
    out=None,
    overwrite: bool = False,
    client=None,
    progress=None,
    cancel=None,
    read_back=True,
    storage_options: dict | None = None,
    lease: bool = True,
):
    """Carry out a prepared run: numpy for numpy input, else a lazy dask array; with ``out``, a store.

    With ``out``, the store is returned as a dask array, or None with ``read_back=False`` (callers
    that only want the file skip importing dask.array, ~70 MB of resident memory with pandas).
    ``out`` may be a URL (``s3://bucket/out.zarr``; gs://, az://) written through fsspec with
    ``storage_options``; one run holds it by a lease object beside it (:mod:`napari_mirnet.io.lease`).
    ``lease=False`` writes a URL without one, where no conditional put is to be had (gs://, az://) and
    the caller makes sure that no other run writes the store.
    """
    if out is not None:
        check_zarr_out(out)
        mio.check_distinct(run.source.paths, out, storage_options)
        sink = _to_zarr(run, out, overwrite, client, progress, cancel, storage_options, lease)
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
    """``out`` is a zarr store: a path ending in .zarr (or without a suffix), or a writable URL
    (``s3://``, ``gs://``, ``az://``; not ``http(s)://``) ending so."""
    name = os.fspath(out)
    if is_url(name):
        try:
            writable_url(name)
        except ValueError as err:
            raise mio.OutputError(str(err)) from None
        name = urlsplit(name).path
    suffix = os.path.splitext(name.rstrip("/\\"))[1].lower()
    if suffix not in ("", ".zarr"):
        shown = redact(out) if is_url(out) else os.fspath(out)
        raise mio.OutputError(
            f"out={shown!r}: execute writes a zarr store, so out must end in .zarr; for {suffix} "
            "use napari_mirnet.restore(..., out=path), which writes every format"
        )


def _to_zarr(run: RestorationRun, out, overwrite: bool, client, progress, cancel, storage_options, lease):
    # one run per store: a second writer (other settings, --overwrite, or the same new store at the
    # same instant) would interleave chunks and leave a store marked complete that cannot be read
    with mio.store_lock(out, storage_options, lease=lease) as held:
        return _to_zarr_locked(run, out, overwrite, client, progress, cancel, storage_options, held)


def _to_zarr_locked(run: RestorationRun, out, overwrite: bool, client, progress, cancel, storage_options, held):
    sink = open_zarr_sink(run, out, overwrite, storage_options)
    verify_done(run, sink, client)
    todo = sink.todo(run.keys)
    control = RunControl(progress, cancel, len(todo))
    # on a cluster the tasks' copies of the control report nothing: here the client counts the writes
    local = control if client is None else RunControl(None, cancel, len(todo))
    workers = len(client.scheduler_info()["workers"]) if client is not None else 1
    try:
        _write(run, run.context(local, sink), todo, max(2, 2 * run.batch, 4 * workers), client, control)
        held.check()  # a run whose lease was taken over leaves the store to the run that took it
        sink.output.finalize(sink.store_axes, run.output_meta, name=_result_name(run, out))
    except OSError as err:
        raise mio.OutputError(
            f"writing {display(sink.output.path)} failed ({err}); the store is left incomplete. Fix the cause (free disk "
            "space, permissions) and re-run the same command to resume."
        ) from err
    return sink


def _write(run: RestorationRun, ctx: TileContext, todo: list, lag: int, client=None, control=None):
    """Compute the chunk writes of ``todo``, window after window (see :class:`.graph.WriteWindows`);
    with a ``client``, ``control`` counts the finished writes."""
    from dask.delayed import Delayed

    windows = WriteWindows(run, ctx, todo, lag)
    ctx.control.planned()  # 0/N from now on, not only once the first (possibly long) tile is done
    for w in range(len(windows.windows)):
        graph, writes, final, exports = windows.graph(w)
        if client is None:
            values = compute(Delayed(final, graph, layer=final[0]), run)
        else:
            delayeds = [Delayed(k, graph, layer=final[0]) for k in (final, *writes)]
            values = _distributed_compute(client, delayeds, control)
        windows.keep(w, exports, values)


def _result_name(run: RestorationRun, out) -> str:
    """The image's own name (OME Image Name, a layer's name) where it has one; else the store's
    (``out`` for ``/data/out.zarr``): a file name like ``scene.png`` would name the result after its input."""
    own = run.output_meta.name
    if own and own != os.path.basename(str(run.source.name or "")):
        return own
    return mio.store_name(out)


def _distributed_compute(client, delayeds: list, control: RunControl):
    """The value of the first of ``delayeds``; ``control`` counts the others as they finish."""
    from distributed import as_completed

    futures = client.compute(delayeds)
    try:
        for fut in as_completed(futures[1:]):
            fut.result()
            control.tiles_done(1)
            control.check()
        return futures[0].result()
    except BaseException:
        client.cancel(futures)
        raise


def connect(client, timeout: str = "20s"):
    """``(client, owned)``: a new Client for a scheduler address (owned: the caller closes it), or
    the client as given (None included); a clear error when dask.distributed is missing or the
    scheduler cannot be reached."""
    if not isinstance(client, str):
        return client, False
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(
            "client= needs dask.distributed: pip install distributed (in a clone: pip install -e '.[distributed]')"
        ) from None
    try:
        return Client(client, timeout=timeout), True
    except OSError as err:
        raise RuntimeError(f"cannot reach the scheduler at {client}: {err}") from None
