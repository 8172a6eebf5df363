"""Existing outputs: the record each output keeps, and the one rule (skip, resume, refuse, replace).

A path is a local file or store; a URL (``s3://...``) is read through fsspec with ``storage_options``
(see :mod:`.remote`). Messages name a URL in its redacted form only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .. import io as mio
from ..io.urls import redact
from . import remote

__all__ = ["check_output", "is_store", "resume_options", "shown", "stored_record", "suffix_of", "tiff_work_store"]


def suffix_of(path) -> str:
    """The suffix of a path or URL, lower case (``""`` for none)."""
    return remote.url_suffix(path) if remote.is_url(path) else Path(path).suffix.lower()


def is_store(path) -> bool:
    """Whether ``path`` (or URL) is written as a zarr store (``.zarr``, or no suffix)."""
    return suffix_of(path) in ("", ".zarr")


def shown(path) -> str:
    """A path, or a URL without its credentials, as messages name it."""
    return redact(path) if remote.is_url(path) else str(path)


def stored_record(path, storage_options: dict | None = None) -> dict | None:
    """The settings (run fingerprint) a napari-mirnet output at ``path`` (or URL) records, or None."""
    from ..io.geotiff import is_geotiff, stored_note

    if remote.is_url(path):
        return remote.stored_record(path, storage_options)
    p = Path(path)
    try:
        if p.is_dir():
            return mio.stored_fingerprint(p)
        suffix = p.suffix.lower()
        if suffix in (".tif", ".tiff") and is_geotiff(p):  # ours keep it in the GDAL metadata
            text = stored_note(p)
        elif suffix in (".tif", ".tiff"):
            from ..io.tiff import stored_tiff_fingerprint

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
    """The hidden store a TIFF output is computed into (hidden: folder runs do not list it as an input).

    For a URL, it lies beside the local file the TIFF is written to before its upload."""
    dst = remote.work_file(dst) if remote.is_url(dst) else Path(dst)
    return dst.with_name(f".{dst.name}.partial.zarr")


def resume_options(options, dst, overwrite: bool, storage_options: dict | None = None):
    """``options`` with the tile, halo and blend an existing output of ours was started with, where
    ``options`` leaves them to the default (the default follows free memory, which may have
    changed since: a resumed or repeated run must plan the same tiles). Unchanged with ``overwrite``."""
    if overwrite or None not in (options.tile, options.halo, options.blend):
        return options
    stored = stored_record(dst, storage_options)
    if stored is None and suffix_of(dst) in (".tif", ".tiff"):
        stored = stored_record(tiff_work_store(dst))  # an unfinished TIFF run resumes like a store
    if not stored:
        return options
    keep = {k: stored[k] for k in ("tile", "halo", "blend") if getattr(options, k) is None and k in stored}
    return dataclasses.replace(options, **keep)


def check_output(run, dst, *, overwrite: bool, storage_options: dict | None = None) -> str:
    """``'run'`` or ``'skip'`` (``dst`` holds a complete result of ``run``'s settings).

    Checks, before anything is computed, that the format can hold the result and that ``dst`` can
    be written; an unfinished store of the same settings is ``'run'`` (resumed). ``dst`` may be a
    URL (``s3://...``; ``storage_options`` are fsspec's): an object already there is an existing
    output under the same rule.

    Raises
    ------
    OutputError
        ``dst`` is (or holds, or lies inside) an input, cannot be written, is not a napari-mirnet
        result, or holds one of other settings
        (:class:`~napari_mirnet.io.FingerprintMismatch` for an unfinished one) and ``overwrite``
        is False.
    """
    import numpy as np

    zeros = np.broadcast_to(np.zeros((), run.imap.dtype), run.output_shape)
    if remote.is_url(dst):
        remote.check_writable(dst)
        check_distinct_url(run.source.paths, dst)
        # the format's limits, checked on the local file a file output is written to first
        mio.write_image(remote.work_file(dst), zeros, run.axes, meta=run.output_meta, check=True)
        if not remote.exists(dst, storage_options):
            return "run"
        stored = stored_record(dst, storage_options)
        complete = mio.is_complete(dst, storage_options) if is_store(dst) else True
        return _rule(run, dst, stored, complete, overwrite, empty=False)
    dst = Path(dst)
    mio.check_distinct(run.source.paths, dst)  # also an array read lazily from a file or store
    mio.write_image(dst, zeros, run.axes, meta=run.output_meta, check=True)  # meta: units the format must hold
    parent = next(p for p in [dst.parent, *dst.parent.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise mio.OutputError(f"cannot write {dst}: {parent} is not a writable folder")
    if not (dst.exists() or dst.is_symlink()):
        return "run"
    stored = stored_record(dst)
    complete = mio.is_complete(dst) if is_store(dst) else True  # files are renamed into place whole
    return _rule(run, dst, stored, complete, overwrite, empty=dst.is_dir() and not any(dst.iterdir()))


def _rule(run, dst, stored: dict | None, complete: bool, overwrite: bool, empty: bool) -> str:
    """The rule on an existing output ``dst`` that records ``stored`` (None: not ours)."""
    name, store = shown(dst), suffix_of(dst) == ".zarr" or (remote.is_url(dst) and is_store(dst))
    if store and stored is None and not empty:
        raise mio.OutputError(
            f"output {name} exists and is not a napari-mirnet result; it is left alone: choose another path"
        )
    if overwrite or (stored is None and store):  # an empty folder
        return "run"
    if stored is None:
        raise mio.OutputError(
            f"output {name} exists and was not written by napari-mirnet; pass overwrite=True to replace it"
        )
    now = json.loads(json.dumps(run.fingerprint))
    if stored == now:
        return "skip" if complete else "run"  # unfinished: resumed
    keys = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    keys = [k for k in keys if k != "plan"] or keys  # the plan follows from tile, halo and blend
    diff = "; ".join(f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in keys[:4])
    if complete:
        raise mio.OutputExistsError(
            f"output {name} holds a complete result of other settings ({diff}); pass overwrite=True to replace it",
            False,
        )
    raise mio.FingerprintMismatch(
        f"output {name} holds an unfinished run (re-run with its settings to resume it) of other settings "
        f"({diff}); pass overwrite=True to replace it"
    )


def check_distinct_url(inputs, out: str) -> None:
    """Refuse an output URL that is an input URL, lies inside one or holds one (compared as
    :func:`napari_mirnet.io.location.same_or_within` compares them: service, bucket, key; no request)."""
    from ..io.location import same_or_within

    for raw in inputs:
        if raw is None or not remote.is_url(str(raw)):
            continue
        if same_or_within(str(raw), out) or same_or_within(out, str(raw)):
            raise mio.OutputError(
                f"output {redact(out).rstrip('/')} is, holds or lies inside the input {redact(str(raw)).rstrip('/')}: "
                "writing it would destroy the input before it is read; choose another output"
            )
