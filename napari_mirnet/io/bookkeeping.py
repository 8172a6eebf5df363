"""The resume bookkeeping beside a store (``.NAME.mirnet``): per level-0 chunk, a done marker and an input digest.

One cell per chunk, one file each, so that concurrent writers never share a file; written cells
are found by one walk of the folders (:func:`written_cells`), never one store request per chunk.
Beside a store at a URL the bookkeeping is objects (``s3://bucket/.out.zarr.mirnet/...``), found
with one listing of their prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .location import fs_and_root, is_url, sibling, zarr_options
from .record import ATTR

if TYPE_CHECKING:  # zarr is imported where a store is opened: numpy runs never load it
    import zarr

__all__ = ["DIGEST", "DONE", "bookkeeping_path", "new_book", "open_book", "written_cells"]

DONE = "mirnet_done"
DIGEST = "mirnet_input"  # per output chunk: a digest of the input it was computed from (see engine.digest)


def bookkeeping_path(path) -> Path | str:
    """Where the resume bookkeeping of the store at ``path`` lives: ``.NAME.mirnet`` beside it (a URL
    for a URL)."""
    if is_url(path):
        return sibling(path, ".{name}.mirnet")
    p = Path(path)
    return p.parent / f".{p.name}.mirnet"


def written_cells(
    arr: zarr.Array, folder: Path | str, read: bool, storage_options: dict | None = None
) -> tuple[tuple, np.ndarray | None] | None:
    """The cells written to a one-cell-per-chunk bookkeeping array: (index arrays, values or None).

    Reading such an array through zarr costs one store request per chunk, written or not (minutes
    for 10^5 chunks); here one walk of the chunk folders finds the written ones, and only those
    (uncompressed, a few bytes each) are read. None when the array is not laid out as we create it
    (the caller then reads it through zarr). At a URL: one listing of the array's prefix, and the
    written cells fetched together.
    """
    remote = is_url(folder)
    if remote:
        fs, root = fs_and_root(folder, storage_options)
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json") if remote else (folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    plain = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if (
        meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") != [1] * arr.ndim
        or meta.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}
        or meta.get("codecs") not in (plain, [{"name": "bytes"}])
        or meta.get("storage_transformers")
    ):
        return None
    if remote:
        return _listed_cells(arr, fs, root, read)
    cells, files = [], []
    stack = [(folder / "c", ())]
    while stack:  # depth-first over c/<i>/<j>/...: one scandir per folder, none per cell
        path, prefix = stack.pop()
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            continue
        for e in entries:
            if not e.name.isdigit():
                continue
            index = prefix + (int(e.name),)
            if len(index) == arr.ndim and e.is_file():
                cells.append(index)
                files.append(e.path)
            elif len(index) < arr.ndim and e.is_dir():
                stack.append((Path(e.path), index))
    return _cells(arr, cells, files, read, lambda names: [Path(f).read_bytes() for f in names])


def _cells(arr: zarr.Array, cells: list, files: list, read: bool, fetch) -> tuple[tuple, np.ndarray | None] | None:
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    index = tuple(np.array(cells, dtype=np.intp).reshape(-1, arr.ndim).T)
    if not read:
        return index, None
    values = np.frombuffer(b"".join(fetch(files)), dtype=dtype)
    if values.size != len(files):  # a cell that is not one plain value: let zarr read the array
        return None
    return index, values


def _listed_cells(arr: zarr.Array, fs, root: str, read: bool) -> tuple[tuple, np.ndarray | None] | None:
    """:func:`written_cells` of an array at a URL: one (paginated) listing of ``c/``, no request per cell."""
    prefix = f"{root}/c/"
    fs.invalidate_cache(root)  # the chunks were written through zarr's own filesystem instance
    try:
        names = fs.find(prefix.rstrip("/"))
    except FileNotFoundError:
        names = []
    cells, files = [], []
    for name in names:
        parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
        if len(parts) == arr.ndim and all(p.isdigit() for p in parts):
            cells.append(tuple(int(p) for p in parts))
            files.append(name)

    def fetch(names: list) -> list[bytes]:
        got = fs.cat(names) if names else {}  # one batch of concurrent GETs
        return [got[n] for n in names] if isinstance(got, dict) else [got]

    return _cells(arr, cells, files, read, fetch)


def new_book(p: Path | str, grid: tuple[int, ...], token: str, storage_options: dict | None = None) -> zarr.Group:
    import zarr

    options = {"zarr_format": 3, **zarr_options(p, storage_options)}
    book = zarr.create_group(str(bookkeeping_path(p)), overwrite=True, **options)
    book.attrs.update({"store": token})
    # one byte per output chunk, one file each: concurrent writers never share a chunk
    book.create_array(DONE, shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0, compressors=None)
    book.create_array(DIGEST, shape=grid, chunks=(1,) * len(grid), dtype="uint64", fill_value=0, compressors=None)
    return book


def open_book(p: Path | str, g: zarr.Group, grid: tuple[int, ...], storage_options: dict | None = None) -> zarr.Group:
    """The bookkeeping of an unfinished store; a missing or foreign one starts afresh (every chunk redone)."""
    import zarr

    token = dict(g.attrs)[ATTR].get("token")
    try:
        book = zarr.open_group(str(bookkeeping_path(p)), mode="r+", **zarr_options(p, storage_options))
        if dict(book.attrs).get("store") == token and tuple(book[DONE].shape) == tuple(grid):
            return book
    except Exception:
        pass
    return new_book(p, grid, token, storage_options)
