"""Writing a prepared run into its output (a store, a file, or either at a URL) and reading it back."""

from __future__ import annotations

import json
from pathlib import Path

from .. import io as mio
from . import remote
from .existing import check_output, is_store, shown, stored_record, tiff_work_store

__all__ = ["quality_check_beside", "read_result", "write_result", "write_run"]


def write_run(
    run, dst, *, overwrite: bool = False, client=None, progress=None, cancel=None, storage_options: dict | None = None
) -> None:
    """Execute a prepared run into ``dst`` (checked with :func:`check_output`), in its format.

    A zarr store is written chunk by chunk (resumable), also at a URL (``storage_options`` are
    fsspec's). A TIFF of a lazy input is computed into a hidden resumable store beside it first
    (:func:`tiff_work_store`), so that the model runs once and an interrupted run resumes. Other
    files are computed, then written whole (renamed into place when complete). A file at a URL is
    written so to a local file in the cache, then uploaded once complete (:mod:`.remote`).
    ``progress`` receives :class:`~napari_mirnet.progress.Progress` values (or ``(done, total)``,
    the older form); ``cancel`` stops the run with ``Cancelled``.
    """
    from .. import engine

    url = remote.is_url(dst)
    if url:
        remote.check_writable(dst)
    if is_store(dst):  # local or at a URL: the engine writes it chunk by chunk
        engine.execute(
            run,
            out=str(dst),
            storage_options=storage_options,
            overwrite=overwrite,
            client=client,
            progress=progress,
            cancel=cancel,
            read_back=False,
        )
    elif url:
        _write_then_upload(run, dst, overwrite, client, progress, cancel, storage_options)
    else:
        _write_file(run, Path(dst), overwrite, client, progress, cancel)


def _write_file(run, dst: Path, overwrite: bool, client, report, cancel) -> None:
    import dask

    from .. import engine

    if dst.suffix.lower() in (".tif", ".tiff") and not run.source.eager:
        _write_tiff_via_store(run, dst, overwrite, client, report, cancel)
    else:
        arr = engine.execute(run, client=client, progress=report, cancel=cancel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with dask.config.set(engine.scheduler_config(run.device, client)):
            mio.write_image(dst, arr, run.axes, fingerprint=run.fingerprint, meta=run.output_meta)


def _write_then_upload(run, url: str, overwrite: bool, client, report, cancel, storage_options) -> None:
    """A file output at ``url``: written to its local work file (resumable there), then put whole.

    A complete local file of these settings (its upload failed) is uploaded again without a new run.
    """
    import shutil

    local = remote.work_file(url)
    now = json.loads(json.dumps(run.fingerprint))
    if overwrite or not (local.exists() and stored_record(local) == now):
        # a local file of other settings is replaced (the rule on existing outputs is the URL's, see
        # check_output); an unfinished hidden store of these settings beside it is resumed
        _write_file(run, local, overwrite, client, report, cancel)
    remote.upload(local, url, storage_options)
    shutil.rmtree(local.parent, ignore_errors=True)


def _write_tiff_via_store(run, dst: Path, overwrite: bool, client, report, cancel) -> None:
    """A lazy input's run into a TIFF: the model runs once, into a hidden resumable store beside
    ``dst``; the TIFF (tiles, pyramid levels) is then written from that store, and the store removed.

    An interruption leaves the hidden store (the same call resumes it) and no ``dst``.
    """
    import shutil

    import dask
    import dask.array as da

    from .. import engine

    work = tiff_work_store(dst)
    now = json.loads(json.dumps(run.fingerprint))
    with mio.store_lock(dst):  # one writer per TIFF: the store below has its own lock, taken by the engine
        if not overwrite and dst.exists() and stored_record(dst) == now:
            raise mio.OutputExistsError(f"output {dst} is already complete", True)  # another run finished it
        same = work.is_dir() and mio.stored_fingerprint(work) == now
        if same and not overwrite and mio.is_complete(work):  # stopped while the TIFF was written
            arr = da.from_zarr(str(work), component="0")
            store_axes = mio.ome_order(run.axes)
            arr = arr.transpose([store_axes.index(a) for a in run.axes])
        else:  # a hidden store of other settings is ours to replace: the rule on existing outputs is dst's
            arr = engine.execute(
                run, out=str(work), overwrite=overwrite or not same, client=client, progress=report, cancel=cancel
            )
        with dask.config.set(engine.scheduler_config(run.device, client)):
            mio.write_image(dst, arr, run.axes, fingerprint=run.fingerprint, meta=run.output_meta, stored=True)
        shutil.rmtree(work, ignore_errors=True)


def read_result(dst, axes: str, storage_options: dict | None = None):
    """A written output (zarr store or file, or either at a URL) as a lazy dask array in ``axes``
    (the run's input axes)."""
    import dask.array as da

    url = remote.is_url(dst)
    if is_store(dst):
        arr = da.from_zarr(dst if url else str(dst), component="0", storage_options=storage_options if url else None)
        have = mio.ome_order(axes)
    else:
        src = mio.open_image(dst, storage_options=storage_options) if url else mio.open_image(Path(dst))
        arr, have = da.asarray(src.array), src.axes or axes
    if sorted(have) != sorted(axes):
        raise ValueError(f"{shown(dst)} has axes {have}, the run {axes}: it is not this run's output")
    return arr.transpose([have.index(a) for a in axes]) if have != axes else arr


def write_result(
    run, dst, *, overwrite: bool = False, client=None, progress=None, cancel=None, storage_options: dict | None = None
):
    """``restore(..., out=dst)``: check ``dst``, write the run into it, return it read back lazily
    (from the URL, for an output at a URL).

    A complete result of the same settings raises :class:`~napari_mirnet.io.OutputExistsError`
    with ``matches=True`` (the CLI skips it instead); a zarr store is checked as it is opened,
    under its lock.
    """
    if not is_store(dst) and check_output(run, dst, overwrite=overwrite, storage_options=storage_options) == "skip":
        raise mio.OutputExistsError(f"output {shown(dst)} is already complete; pass overwrite=True to replace it", True)
    write_run(
        run, dst, overwrite=overwrite, client=client, progress=progress, cancel=cancel, storage_options=storage_options
    )
    return read_result(dst, run.axes, storage_options)


def quality_check_beside(run, dst, mode: str, client=None):
    """``qc``: check the output written at ``dst`` against the input and write the residual and
    trust map beside it (a zarr store's ``qc`` group; ``NAME.qc-*.tif`` and ``NAME.qc.json``
    beside a file). ``mode`` is ``'on'`` or ``'tta'``; returns the
    :class:`~napari_mirnet.engine.quality.QualityReport`. Not for an output at a URL (yet)."""
    from ..engine import compute, quality

    if remote.is_url(dst):
        raise mio.OutputError(f"qc= beside an output at a URL ({shown(dst)}) is not supported yet; write locally")
    output = read_result(dst, run.axes)
    out = dst if is_store(dst) else None
    report = quality.run_qc(run, output, tta=mode == "tta", out=out, compute=lambda c: compute(c, run, client))
    if out is None:
        quality.write_qc_tiffs(dst, report, run.axes, run.output_meta)
    return report
