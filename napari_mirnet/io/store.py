"""The resumable output store: an OME-Zarr 0.5 pyramid written chunk by chunk, complete only when it says so.

Layout. ``out.zarr`` holds exactly the image: levels '0', '1', ... and, in its attributes, our
record (``napari_mirnet``: the run fingerprint and ``complete``). The resume bookkeeping lives
beside it in ``.out.zarr.mirnet`` (hidden, like the lock file): ``mirnet_done``, one byte per
level-0 chunk, set after that chunk and its pyramid blocks are written, and ``mirnet_input``, the
digest of the input behind it (:mod:`.bookkeeping`). Readers of the image (napari's own,
napari-ome-zarr, ome-zarr-py, bioio) never see it, and it is deleted once the store is complete. The OME-NGFF metadata and
``complete: true`` are written last, in one write, so a store looks incomplete until it is.

Pyramid. Level k has Y/X chunks of (level-0 chunk) / 2**k, so each level-0 chunk maps onto whole
level-k chunks and the task that writes a level-0 chunk writes its blocks of those levels too
(no two tasks share a zarr chunk). Levels where that stops (an odd chunk edge, or chunks under
``MIN_CHUNK`` pixels) are built when the run finishes, from the last chunk-written level, with
dask in bounded memory.

At a URL (``s3://bucket/out.zarr``; gs://, az:// alike) the same store is written through zarr's
fsspec store: chunks, bookkeeping (``s3://bucket/.out.zarr.mirnet/...``) and the completion marker are
objects, and an error while writing ends with an :class:`OutputError` that names the redacted URL and
says that the store is left resumable.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..metadata import ImageMeta
from .bookkeeping import DIGEST, DONE, bookkeeping_path, new_book, open_book, written_cells
from .errors import FingerprintMismatch, OutputError, OutputExistsError
from .location import display, found_at, has_entries, is_url, remove, writing, zarr_options
from .ngff import channel_windows, geo_attrs, multiscales_attrs
from .omezarr import downsample2, level_shape, pyramid_levels
from .record import ATTR

if TYPE_CHECKING:  # zarr is imported where a store is opened: numpy runs never load it
    import zarr

__all__ = [
    "ATTR",
    "DIGEST",
    "DONE",
    "ZarrOutput",
    "bookkeeping_path",
    "done_markers",
    "is_complete",
    "open_output",
    "stored_fingerprint",
    "write_chunk",
    "write_digest",
]

LAYOUT = 2  # 1: one level, bookkeeping inside the image group (before 0.2); 2: pyramid, bookkeeping beside
MIN_CHUNK = 32  # smallest Y/X chunk edge of a level written chunk by chunk


def _norm(obj):
    return json.loads(json.dumps(obj))


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}: {a.get(k)!r} (store) vs {b.get(k)!r} (now)" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(parts[:4])


def _stored_meta(path, storage_options: dict | None = None) -> dict | None:
    """Our metadata in the zarr store at ``path``; None if it is not a napari-mirnet store."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r", **zarr_options(path, storage_options)).attrs)
    except Exception:
        return None
    return attrs.get(ATTR)


def stored_fingerprint(path, storage_options: dict | None = None) -> dict | None:
    """The fingerprint of a napari-mirnet store at ``path`` (a path or URL), or None."""
    return (_stored_meta(path, storage_options) or {}).get("fingerprint")


def is_complete(path, storage_options: dict | None = None) -> bool:
    """Whether ``path`` is a napari-mirnet store whose run finished (its zarr.json says so)."""
    return bool((_stored_meta(path, storage_options) or {}).get("complete", False))


def store_name(path) -> str:
    """A store's name as people say it: its folder without ``.zarr`` (``out`` for ``/data/out.zarr``)."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    return name[: -len(".zarr")] if name.lower().endswith(".zarr") and len(name) > 5 else name


def done_markers(path, storage_options: dict | None = None) -> np.ndarray:
    """The done markers (one per level-0 chunk, store axis order) of an unfinished store; all set once complete."""
    import zarr

    kw = zarr_options(path, storage_options)
    if is_complete(path, storage_options):
        g = zarr.open_group(str(path), mode="r", **kw)
        grid = tuple(-(-n // c) for n, c in zip(g["0"].shape, g["0"].chunks))
        return np.ones(grid, np.uint8)
    arr = zarr.open_group(str(bookkeeping_path(path)), mode="r", **kw)[DONE]
    found = written_cells(arr, _book_part(path, DONE), read=False, storage_options=storage_options)
    if found is None:
        return np.asarray(arr[...])
    marks = np.zeros(arr.shape, np.uint8)
    marks[found[0]] = 1
    return marks


def _book_part(path, name: str):
    """One array of the bookkeeping of the store at ``path`` (a Path, or a URL for a URL)."""
    book = bookkeeping_path(path)
    return f"{book}/{name}" if is_url(path) else book / name


def _chunk_plan(shape, chunks, axes: str) -> tuple[int, list[tuple[int, ...]]]:
    """(levels written chunk by chunk, the chunk shape of every level)."""
    n = pyramid_levels(shape[axes.index("Y")], shape[axes.index("X")])
    per_chunk, out = 0, [tuple(chunks)]
    for k in range(1, n):
        lshape = level_shape(shape, axes, k)
        ok, ck = True, []
        for a, s, c, ls in zip(axes, shape, chunks, lshape):
            if a not in "YX":
                ck.append(c)
            elif c >= s:  # one chunk along this axis: the level is one chunk too
                ck.append(ls)
            elif c % 2**k == 0 and c // 2**k >= MIN_CHUNK:
                ck.append(c // 2**k)
            else:
                ok = False
                ck.append(min(ls, 512))
        if ok and per_chunk == k - 1:
            per_chunk = k
        else:
            ck = [min(ls, 512) if a in "YX" else (1 if a in "TZ" else c) for a, c, ls in zip(axes, chunks, lshape)]
        out.append(tuple(ck))
    return per_chunk, out


class ZarrOutput:
    """A napari-mirnet store being written: the image pyramid at '0', '1', ...; done markers beside it."""

    def __init__(
        self, path: Path | str, group: zarr.Group, book: zarr.Group, axes: str, storage_options: dict | None = None
    ):
        self.path = path  # a Path, or the URL as given (str)
        self.group = group
        self.book = book
        self.axes = axes
        self.storage_options = storage_options if is_url(path) else None
        ours = dict(group.attrs)[ATTR]
        self.levels = int(ours.get("levels", 1))
        self.per_chunk = int(ours.get("per_chunk_levels", 0))

    def done_mask(self) -> np.ndarray:
        """Per level-0 chunk, whether it is written (one directory listing, however many chunks)."""
        found = written_cells(self.book[DONE], _book_part(self.path, DONE), False, self.storage_options)
        if found is None:
            return np.asarray(self.book[DONE][...]).astype(bool)
        mask = np.zeros(self.book[DONE].shape, bool)
        mask[found[0]] = True  # only 1 is ever written to a marker, and zarr stores no all-fill chunk
        return mask

    def input_digests(self) -> np.ndarray:
        """Per output chunk, the digest of the input it was computed from (0: none recorded)."""
        arr = self.book[DIGEST]
        found = written_cells(arr, _book_part(self.path, DIGEST), True, self.storage_options)
        if found is None:
            return np.asarray(arr[...])
        out = np.zeros(arr.shape, arr.dtype)
        out[found[0]] = found[1]
        return out

    def finalize(self, axes: str, meta: ImageMeta, name: str | None = None) -> None:
        """Build the remaining levels, write the OME-NGFF metadata and mark the store complete (one write)."""
        with writing(self.path, self.storage_options):
            self._finalize(axes, meta, name)

    def _finalize(self, axes: str, meta: ImageMeta, name: str | None) -> None:
        for k in range(self.per_chunk + 1, self.levels):
            _build_level(self.group, axes, k)
        attrs = dict(self.group.attrs)
        ours = attrs[ATTR]
        ours["complete"] = True
        n_c = self.group["0"].shape[axes.index("C")] if "C" in axes else None
        smallest = self.group[str(self.levels - 1)]
        ome = multiscales_attrs(
            axes,
            meta,
            name=Path(name).name if name else "restored",
            n_channels=n_c,
            levels=self.levels,
            windows=channel_windows(smallest, axes, meta.nodata),
            dtype=smallest.dtype,
        )
        for k in range(self.levels):  # a GeoTIFF's CRS and each level's transform (GeoZarr; _CRS for GDAL)
            level = self.group[str(k)]
            level.attrs.update(geo_attrs(meta, level.shape, k, order=axes, group=False))
        # one write of zarr.json (atomic in LocalStore): metadata and the completion marker together
        self.group.attrs.update({"ome": ome, ATTR: ours, **geo_attrs(meta, self.group["0"].shape, 0, order=axes)})
        # a complete store needs none; it is complete already, so a leftover is harmless
        with contextlib.suppress(Exception):
            remove(str(bookkeeping_path(self.path)), self.storage_options, missing_ok=True)


def _build_level(group: zarr.Group, axes: str, k: int) -> None:
    """Level ``k`` from level ``k - 1``, one target chunk at a time (bounded memory, whole chunks).

    A thread pool rather than a dask graph: compression runs in parallel all the same, and a zarr run
    never needs dask.array (which brings pandas along: ~70 MiB of resident memory).
    """
    from concurrent.futures import ThreadPoolExecutor

    src, dst = group[str(k - 1)], group[str(k)]
    iy, ix = axes.index("Y"), axes.index("X")
    grid = [range(-(-n // c)) for n, c in zip(dst.shape, dst.chunks)]

    def one(index: tuple) -> None:
        out = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, dst.chunks, dst.shape))
        # each target chunk comes from the source block twice its size in Y and X (2x2 means)
        read = tuple(
            slice(2 * sl.start, min(2 * sl.stop, n)) if d in (iy, ix) else sl
            for d, (sl, n) in enumerate(zip(out, src.shape))
        )
        dst[out] = downsample2(src[read], axes)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, itertools.product(*grid)):
            pass


def open_output(
    path,
    fingerprint: dict,
    shape,
    chunks,
    dtype,
    axes: str,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> ZarrOutput:
    """Create the store at ``path`` (a local path, or a URL with ``storage_options`` for fsspec), or
    reopen an unfinished one with the same fingerprint (resume)."""
    remote = is_url(path)
    p = path.rstrip("/") if remote else Path(path)
    opts = storage_options if remote else None
    fingerprint = _norm(fingerprint)
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
    with writing(p, opts, opening=True):
        found = found_at(p, opts)
    if found == "file":
        what = "object" if remote else "file"
        raise OutputError(f"output {display(p)} is an existing {what}, not a zarr store; choose another path")
    if found:
        with writing(p, opts, opening=True):
            resumed = _reopen(p, fingerprint, shape, grid, axes, overwrite, opts)
        if resumed is not None:
            return resumed
    return _create(p, fingerprint, shape, chunks, dtype, axes, grid, opts)


def _reopen(
    p, fingerprint: dict, shape, grid: tuple, axes: str, overwrite: bool, opts: dict | None
) -> ZarrOutput | None:
    """The unfinished store at ``p`` to resume; None where a new one is to be created (ours removed).

    Refuses what must not be touched or resumed: a folder not ours, a complete result without
    ``overwrite``, an unfinished run with other settings, shape or store layout.
    """
    import zarr

    name = display(p)
    meta = _stored_meta(p, opts)
    if meta is None:
        if has_entries(p, opts):
            raise OutputError(
                f"output {name} exists and is not a napari-mirnet result; it is left alone: choose another path"
            )
        return None
    same = meta.get("fingerprint") == fingerprint
    if meta.get("complete") and not overwrite:
        raise OutputExistsError(
            f"output {name} is already complete"
            + ("" if same else " (from other settings)")
            + "; pass --overwrite (overwrite=True) to replace it",
            same,
        )
    if not meta.get("complete") and not overwrite:
        if not same:
            raise FingerprintMismatch(
                f"output {name} holds an unfinished run with other settings ({_diff(meta.get('fingerprint', {}), fingerprint)}); "
                "re-run with the original settings to resume it, or pass --overwrite to start again"
            )
        if meta.get("layout") != LAYOUT:
            raise FingerprintMismatch(
                f"output {name} holds an unfinished run written by an older napari-mirnet (another store "
                "layout); pass --overwrite to start again"
            )
        g = zarr.open_group(str(p), mode="r+", **zarr_options(p, opts))
        if tuple(g["0"].shape) != tuple(shape):
            raise FingerprintMismatch(f"output {name} has shape {g['0'].shape}, expected {tuple(shape)}")
        return ZarrOutput(p, g, open_book(p, g, grid, opts), axes, opts)
    remove(p, opts)  # overwrite a store we wrote ourselves
    return None


def _create(p, fingerprint: dict, shape, chunks, dtype, axes: str, grid: tuple, opts: dict | None) -> ZarrOutput:
    """A new, empty store at ``p``: its bookkeeping, our record (not complete) and every level's array."""
    import zarr

    try:
        with writing(p, opts, opening=True):  # nothing to resume yet
            if not is_url(p):  # object stores have no folders to make
                p.parent.mkdir(parents=True, exist_ok=True)
            per_chunk, level_chunks = _chunk_plan(shape, chunks, axes)
            token = uuid.uuid4().hex
            # the bookkeeping first: a stale one beside a deleted store must never vouch for this one
            book = new_book(p, grid, token, opts)
            g = zarr.create_group(str(p), overwrite=False, **{"zarr_format": 3, **zarr_options(p, opts)})
            g.attrs.update(
                {
                    ATTR: {
                        "fingerprint": fingerprint,
                        "complete": False,
                        "layout": LAYOUT,
                        "levels": len(level_chunks),
                        "per_chunk_levels": per_chunk,
                        "token": token,
                    }
                }
            )
            for k, ck in enumerate(level_chunks):
                g.create_array(
                    str(k),
                    shape=level_shape(shape, axes, k),
                    chunks=ck,
                    dtype=np.dtype(dtype),
                    fill_value=0,
                    dimension_names=[a.lower() for a in axes],
                )
    except OSError as err:
        raise OutputError(f"cannot create output {p}: {err.strerror or err} (is the location writable?)") from err
    return ZarrOutput(p, g, book, axes, opts)


def write_digest(output: ZarrOutput, chunk_index: tuple[int, ...], digest: int) -> None:
    """Record the input digest of a chunk (before its data and done marker are written)."""
    with writing(output.path, output.storage_options):
        output.book[DIGEST][tuple(chunk_index)] = np.uint64(digest)


def write_chunk(output: ZarrOutput, block: np.ndarray, chunk_index: tuple[int, ...]) -> None:
    """Write one chunk-aligned block and its pyramid blocks, then its done marker (never the other way round)."""
    with writing(output.path, output.storage_options):
        for k in range(output.per_chunk + 1):
            if k:
                block = downsample2(block, output.axes)
            data = output.group[str(k)]
            region = tuple(slice(i * c, i * c + n) for i, c, n in zip(chunk_index, data.chunks, block.shape))
            data[region] = block
        output.book[DONE][tuple(chunk_index)] = 1
