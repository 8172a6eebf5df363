"""Where a restoration's result goes: the output paths, the rule for existing outputs, and the writing.

One module for every front end: ``restore(..., out=path)``, the CLI's ``-o`` and anything else
that writes a result file. The format follows the suffix: ``.zarr`` (``.ome.zarr``) is a
resumable OME-Zarr store written chunk by chunk; ``.tif``/``.tiff`` (``.ome.tif``) is an OME-TIFF,
an ImageJ TIFF when the input was one, or a GeoTIFF (COG layout) when the input is
georeferenced; ``.png`` and ``.jpg`` hold 2-D pictures. Every file records the settings it was
made with (:func:`stored_record`), so that a re-run can tell a result of the same settings.

The rule on existing outputs (:func:`check_output`): a complete result of the same settings is
skipped; an unfinished zarr store (or the hidden store of a TIFF) of the same settings is
resumed; anything else is refused unless ``overwrite=True``; an input is never overwritten.

Messages are in Python words (``overwrite=True``, ``format=``); the CLI says them in flags.
Nothing here imports torch: the engine is imported where a run is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from . import io as mio

__all__ = [
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "check_output",
    "check_out_path",
    "input_name",
    "is_store",
    "plan_outputs",
    "quality_check_beside",
    "read_result",
    "resume_options",
    "stored_record",
    "tiff_work_store",
    "write_result",
    "write_run",
]

#: ``format=`` of folder outputs: "same" follows each input's suffix.
FORMATS = ("same", "zarr", "tif", "png")
#: Suffixes of an output file or store.
OUTPUT_SUFFIXES = (".zarr", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
# a folder output keeps each input's format; jpg inputs become png (no second lossy compression)
_SUFFIX_OUT = {".tif": ".tif", ".tiff": ".tif", ".png": ".png", ".jpg": ".png", ".jpeg": ".png", ".zarr": ".zarr"}


# ------------------------------------------------------------------------------------ planning
def is_store(path) -> bool:
    """Whether ``path`` is written as a zarr store (``.zarr``, or a path without a suffix)."""
    return Path(path).suffix.lower() in ("", ".zarr")


def check_out_path(out, image=None) -> Path:
    """``out`` of ``restore``: a suffix it can write, and not the input ``image`` (a path); checked
    before the model loads. A path without a suffix is a zarr store."""
    dst = Path(out)
    suffix = dst.suffix.lower()
    if suffix and suffix not in OUTPUT_SUFFIXES:
        raise mio.OutputError(
            f"out={os.fspath(out)!r}: cannot write {suffix} files; out must end in .zarr (.ome.zarr), "
            ".tif (.ome.tif), .png or .jpg"
        )
    paths = image if isinstance(image, (tuple, list)) else [image]
    mio.check_distinct([p for p in paths if isinstance(p, (str, os.PathLike))], dst)
    return dst


def plan_outputs(inputs, out, *, task: str, format: str = "same") -> list[tuple[object, Path]]:
    """(input, output path) pairs for ``inputs`` (files, folders, stores) written to ``out``.

    One input (or one defocus pair) goes to ``out`` itself when it has an image suffix; otherwise
    ``out`` is a folder that gets one output per input, named after it, in ``format``. Defocus
    inputs are (left, right) tuples.

    Raises
    ------
    ValueError
        ``out`` cannot be right whatever the data: a file for many inputs, an unknown suffix, an
        output that is an input (or would replace one), two outputs of one name.
    FileNotFoundError
        An input is missing, or a folder holds no images.
    """
    if task == "defocus":
        if len(inputs) != 2:
            raise ValueError("the defocus task takes two inputs: LEFT RIGHT (files or folders)")
        lefts, rights = mio.list_inputs([inputs[0]]), mio.list_inputs([inputs[1]])
        if len(lefts) != len(rights):
            raise ValueError(f"{len(lefts)} left views but {len(rights)} right views")
        items = list(zip(lefts, rights))
    else:
        items = mio.list_inputs(inputs)
    out = Path(out)
    suffix = out.suffix.lower()
    single = len(items) == 1 and (len(inputs) == 1 or task == "defocus")
    if single and suffix in OUTPUT_SUFFIXES:
        if format != "same" and suffix != "." + format:
            raise ValueError(f"format={format} does not match the output {out.name}")
        pairs = [(items[0], out)]
    elif single and suffix and not out.is_dir():
        raise ValueError(
            f"unknown output type {out.suffix!r}: use .zarr, .tif, .png or .jpg (or a folder name without a suffix)"
        )
    elif suffix in OUTPUT_SUFFIXES[1:] or (out.exists() and not out.is_dir()) or _holds_store(out):
        raise ValueError(
            f"{len(items)} inputs need an output folder, not the {'store' if _holds_store(out) else 'file'} {out}"
        )
    else:
        pairs = [(item, out / f"{_stem(item)}{_folder_suffix(format, item)}") for item in items]
    return _check_not_inputs(pairs)


def _holds_store(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def _first(item) -> Path:
    return item[0] if isinstance(item, tuple) else item


def _stem(item) -> str:
    src = _first(item)
    return src.stem if src.suffix else src.name


def _folder_suffix(format: str, item) -> str:
    if format != "same":
        return "." + format
    src = _first(item)
    return ".zarr" if src.is_dir() else _SUFFIX_OUT.get(src.suffix.lower(), ".zarr")


def input_name(src) -> str:
    """An input (or a defocus pair) as messages name it."""
    return " + ".join(map(str, src)) if isinstance(src, tuple) else str(src)


def _check_not_inputs(pairs: list) -> list:
    """Drop earlier results that a folder run lists as inputs; refuse outputs that are inputs.

    Paths are compared by what they name on disk (links, ``..``, another name of the same file).
    """
    from collections import Counter

    from .io.lock import file_identity

    def paths(item):
        return item if isinstance(item, tuple) else (item,)

    outs = [file_identity(d) for _, d in pairs]
    counts = Counter(outs)

    # 'restore fold -o fold --format zarr' run again lists fold/a.zarr, the result of fold/a.png:
    # a napari-mirnet result that another input writes is that input's output, not an input
    def earlier_result(i: int) -> bool:
        mine = {file_identity(p) for p in paths(pairs[i][0])}
        written = any(counts[k] > (k == outs[i]) for k in mine)
        return written and stored_record(paths(pairs[i][0])[0]) is not None

    keep = [i for i in range(len(pairs)) if not earlier_result(i)]
    pairs, outs = [pairs[i] for i in keep], [outs[i] for i in keep]
    inputs = {file_identity(p): p for s, _ in pairs for p in paths(s)}
    for (src, dst), same in zip(pairs, outs):
        if same in {file_identity(p) for p in paths(src)}:
            raise ValueError(f"the output {dst} is its input {input_name(src)}; choose another output")
        if same in inputs:
            raise ValueError(
                f"the output {dst} would replace the input {os.path.realpath(inputs[same])}; "
                "choose another output or format="
            )
    names = [d for _, d in pairs]
    if len(set(names)) != len(names):
        raise ValueError("two inputs would write the same output name; give them distinct names")
    return pairs


# ------------------------------------------------------------------------ existing outputs
def stored_record(path) -> dict | None:
    """The settings (run fingerprint) a napari-mirnet output at ``path`` records, or None."""
    from .io.geotiff import is_geotiff, stored_note

    p = Path(path)
    try:
        if p.is_dir():
            return mio.stored_fingerprint(p)
        suffix = p.suffix.lower()
        if suffix in (".tif", ".tiff") and is_geotiff(p):  # ours keep it in the GDAL metadata
            text = stored_note(p)
        elif suffix in (".tif", ".tiff"):
            from .io.tiff import stored_tiff_fingerprint

            return stored_tiff_fingerprint(p)  # OME MapAnnotation, ImageJ key or (older files) JSON description
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(p) as im:
                text = im.text.get(mio.ATTR) if suffix == ".png" else im.info.get("comment", b"").decode()
        else:
            return None
        return json.loads(text) if text else None
    except (OSError, ValueError, AttributeError):
        return None  # unreadable or not ours: not a result of these settings


def tiff_work_store(dst) -> Path:
    """The hidden store a TIFF output is computed into (hidden: folder runs do not list it as an input)."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.partial.zarr")


def resume_options(options, dst, overwrite: bool):
    """``options`` with the tile, halo and blend an existing output of ours was started with, where
    ``options`` leaves them to the default (the default follows free memory, which may have
    changed since: a resumed or repeated run must plan the same tiles). Unchanged with ``overwrite``."""
    if overwrite or None not in (options.tile, options.halo, options.blend):
        return options
    stored = stored_record(dst)
    if stored is None and Path(dst).suffix.lower() in (".tif", ".tiff"):
        stored = stored_record(tiff_work_store(dst))  # an unfinished TIFF run resumes like a store
    if not stored:
        return options
    keep = {k: stored[k] for k in ("tile", "halo", "blend") if getattr(options, k) is None and k in stored}
    return dataclasses.replace(options, **keep)


def check_output(run, dst, *, overwrite: bool) -> str:
    """``'run'`` or ``'skip'`` (``dst`` holds a complete result of ``run``'s settings).

    Checks, before anything is computed, that the format can hold the result and that ``dst`` can
    be written; an unfinished store of the same settings is ``'run'`` (resumed).

    Raises
    ------
    OutputError
        ``dst`` is (or holds, or lies inside) an input, cannot be written, is not a napari-mirnet
        result, or holds one of other settings
        (:class:`~napari_mirnet.io.FingerprintMismatch` for an unfinished one) and ``overwrite``
        is False.
    """
    import numpy as np

    dst = Path(dst)
    mio.check_distinct(run.source.paths, dst)  # also an array read lazily from a file or store
    zeros = np.broadcast_to(np.zeros((), run.imap.dtype), run.output_shape)
    mio.write_image(dst, zeros, run.axes, meta=run.output_meta, check=True)  # meta: units the format must hold
    parent = next(p for p in [dst.parent, *dst.parent.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise mio.OutputError(f"cannot write {dst}: {parent} is not a writable folder")
    if not (dst.exists() or dst.is_symlink()):
        return "run"
    stored = stored_record(dst)
    store = dst.suffix.lower() == ".zarr"
    if store and stored is None and any(dst.iterdir()):
        raise mio.OutputError(
            f"output {dst} exists and is not a napari-mirnet result; it is left alone: choose another path"
        )
    if overwrite or (stored is None and store):  # an empty folder
        return "run"
    if stored is None:
        raise mio.OutputError(
            f"output {dst} exists and was not written by napari-mirnet; pass overwrite=True to replace it"
        )
    now = json.loads(json.dumps(run.fingerprint))
    complete = mio.is_complete(dst) if store else True  # files are renamed into place whole
    if stored == now:
        return "skip" if complete else "run"  # unfinished: resumed
    keys = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    keys = [k for k in keys if k != "plan"] or keys  # the plan follows from tile, halo and blend
    diff = "; ".join(f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in keys[:4])
    if complete:
        raise mio.OutputExistsError(
            f"output {dst} holds a complete result of other settings ({diff}); pass overwrite=True to replace it",
            False,
        )
    raise mio.FingerprintMismatch(
        f"output {dst} holds an unfinished run (re-run with its settings to resume it) of other settings "
        f"({diff}); pass overwrite=True to replace it"
    )


# ------------------------------------------------------------------------------------ writing
def write_run(run, dst, *, overwrite: bool = False, client=None, progress=None, cancel=None) -> None:
    """Execute a prepared run into ``dst`` (checked with :func:`check_output`), in its format.

    A zarr store is written chunk by chunk (resumable). A TIFF of a lazy input is computed into a
    hidden resumable store beside it first (:func:`tiff_work_store`), so that the model runs once
    and an interrupted run resumes. Other files are computed, then written whole (renamed into
    place when complete). ``progress`` receives :class:`~napari_mirnet.progress.Progress` values
    (or ``(done, total)``, the older form); ``cancel`` stops the run with ``Cancelled``.
    """
    import dask

    from . import engine

    dst, report = Path(dst), progress  # the engine takes either form of callback
    if is_store(dst):
        engine.execute(
            run, out=str(dst), overwrite=overwrite, client=client, progress=report, cancel=cancel, read_back=False
        )
    elif dst.suffix.lower() in (".tif", ".tiff") and not run.source.eager:
        _write_tiff_via_store(run, dst, overwrite, client, report, cancel)
    else:
        arr = engine.execute(run, client=client, progress=report, cancel=cancel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with dask.config.set(engine.scheduler_config(run.device, client)):
            mio.write_image(dst, arr, run.axes, fingerprint=run.fingerprint, meta=run.output_meta)


def _write_tiff_via_store(run, dst: Path, overwrite: bool, client, report, cancel) -> None:
    """A lazy input's run into a TIFF: the model runs once, into a hidden resumable store beside
    ``dst``; the TIFF (tiles, pyramid levels) is then written from that store, and the store removed.

    An interruption leaves the hidden store (the same call resumes it) and no ``dst``.
    """
    import shutil

    import dask
    import dask.array as da

    from . import engine

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


def read_result(dst, axes: str):
    """A written output (zarr store or file) as a lazy dask array in ``axes`` (the run's input axes)."""
    import dask.array as da

    dst = Path(dst)
    if is_store(dst):
        arr, have = da.from_zarr(str(dst), component="0"), mio.ome_order(axes)
    else:
        src = mio.open_image(dst)
        arr, have = da.asarray(src.array), src.axes or axes
    if sorted(have) != sorted(axes):
        raise ValueError(f"{dst} has axes {have}, the run {axes}: it is not this run's output")
    return arr.transpose([have.index(a) for a in axes]) if have != axes else arr


def write_result(run, dst, *, overwrite: bool = False, client=None, progress=None, cancel=None):
    """``restore(..., out=dst)``: check ``dst``, write the run into it, return it read back lazily.

    A complete result of the same settings raises :class:`~napari_mirnet.io.OutputExistsError`
    with ``matches=True`` (the CLI skips it instead); a zarr store is checked as it is opened,
    under its lock.
    """
    if not is_store(dst) and check_output(run, dst, overwrite=overwrite) == "skip":
        raise mio.OutputExistsError(f"output {dst} is already complete; pass overwrite=True to replace it", True)
    write_run(run, dst, overwrite=overwrite, client=client, progress=progress, cancel=cancel)
    return read_result(dst, run.axes)


def quality_check_beside(run, dst, mode: str, client=None):
    """``qc``: check the output written at ``dst`` against the input and write the residual and
    trust map beside it (a zarr store's ``qc`` group; ``NAME.qc-*.tif`` and ``NAME.qc.json``
    beside a file). ``mode`` is ``'on'`` or ``'tta'``; returns the
    :class:`~napari_mirnet.engine.quality.QualityReport`."""
    from .engine import compute, quality

    output = read_result(dst, run.axes)
    out = dst if is_store(dst) else None
    report = quality.run_qc(run, output, tta=mode == "tta", out=out, compute=lambda c: compute(c, run, client))
    if out is None:
        quality.write_qc_tiffs(dst, report, run.axes)
    return report
