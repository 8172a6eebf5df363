"""Input chunks read from a URL, kept a short while in memory so that neighbouring tiles do not fetch them again.

A tile's window (with its halo) reads every input chunk it touches, whole: with 1024-pixel input
chunks and 512-pixel tiles, each chunk was fetched about 4 times, 7.6 times in
``benchmarks/remote.py``. Each process (the client, each dask.distributed worker) keeps the chunks
it fetched in an LRU of at most :data:`BUDGET` bytes, each for at most :data:`MAX_AGE` seconds:
neighbouring tiles run close together in time, and an entry that old is read again, so a long-lived
process (napari) never serves a chunk of an input that has since changed for long. The cache is
module state: it is never pickled into a task.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict

import numpy as np

__all__ = ["BUDGET", "MAX_AGE", "cached_region", "clear"]

#: Bytes of chunks kept per process; ``NAPARI_MIRNET_CHUNK_CACHE_MB`` sets it (0 turns the cache off).
BUDGET = int(float(os.environ.get("NAPARI_MIRNET_CHUNK_CACHE_MB", "256")) * 2**20)
#: Seconds a chunk is served from memory before it is fetched again.
MAX_AGE = 120.0

_lock = threading.Lock()
_entries: OrderedDict = OrderedDict()  # key -> (time, array)
_pending: dict = {}  # key -> Event set when the fetch under way ends
_size = 0


def clear() -> None:
    """Forget every cached chunk."""
    global _size
    with _lock:
        _entries.clear()
        _size = 0  # fetches under way finish and store their blocks as usual


def _fresh(key):
    """The block of ``key`` if it is young enough (call under ``_lock``)."""
    hit = _entries.get(key)
    if hit is None:
        return None
    if time.monotonic() - hit[0] > MAX_AGE:
        _drop(key)
        return None
    _entries.move_to_end(key)
    return hit[1]


def _drop(key) -> None:
    global _size
    _size -= _entries.pop(key)[1].nbytes


def _put(key, block: np.ndarray) -> None:
    global _size
    with _lock:
        if key in _entries:
            _drop(key)
        _entries[key] = (time.monotonic(), block)
        _size += block.nbytes
        while _size > BUDGET and _entries:
            _drop(next(iter(_entries)))


def _fetch_once(key, fetch) -> np.ndarray:
    """The cached block of ``key``, else ``fetch()``: one fetch per key at a time (threads of a
    worker that want the same chunk wait for the first one's, rather than fetching it again)."""
    while True:
        with _lock:
            block = _fresh(key)
            if block is not None:
                return block
            waiting = _pending.get(key)
            if waiting is None:
                _pending[key] = threading.Event()
        if waiting is None:
            break
        waiting.wait()
    try:
        block = fetch()
        _put(key, block)
        return block
    finally:
        with _lock:
            _pending.pop(key).set()


def _plain_slices(key, shape: tuple) -> tuple[list[slice], list[int]] | None:
    """``key`` as one slice (positive step) per axis and the axes an integer index drops; None for anything else."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    slices, dropped = [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            a, b, step = k.indices(n)
            if step < 1:
                return None
            slices.append(slice(a, max(a, b), step))
        elif isinstance(k, (int, np.integer)):
            i = int(k) + (n if k < 0 else 0)
            if not 0 <= i < n:
                return None
            slices.append(slice(i, i + 1, 1))
            dropped.append(axis)
        else:
            return None
    return slices, dropped


def cached_region(name: str, array, key, fetch):
    """``array[key]`` assembled from whole chunks, each fetched once by ``fetch(chunk_slices)`` and
    kept for later calls (``name`` tells arrays apart); None where ``key`` is not plain slicing or
    integers, where ``array`` has no regular chunks, or where one chunk is too big to keep."""
    chunks, shape = getattr(array, "chunks", None), tuple(array.shape)
    plain = _plain_slices(key, shape)
    if BUDGET <= 0 or plain is None or not isinstance(chunks, tuple) or len(chunks) != len(shape):
        return None
    if not all(isinstance(c, (int, np.integer)) and c > 0 for c in chunks):
        return None
    dtype = np.dtype(array.dtype)
    if int(np.prod(chunks)) * dtype.itemsize > BUDGET // 4:
        return None
    slices, dropped = plain
    picked = [np.arange(sl.start, sl.stop, sl.step) for sl in slices]  # the indices read, per axis
    out = np.empty(tuple(len(p) for p in picked), dtype)
    # strided reads (a sample of every k-th pixel) touch only the chunks that hold a picked index
    ranges = [np.unique(p // c) for p, c in zip(picked, chunks)]
    for index in itertools.product(*ranges):
        where = tuple(slice(int(i) * c, min((int(i) + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
        key = (name, getattr(array, "path", ""), tuple(int(i) for i in index))
        block = _fetch_once(key, lambda w=where: np.asarray(fetch(w)))
        src, dst = [], []
        for p, w, sl in zip(picked, where, slices):
            inside = p[(p >= w.start) & (p < w.stop)]
            src.append(slice(int(inside[0]) - w.start, int(inside[-1]) - w.start + 1, sl.step))
            first = (int(inside[0]) - sl.start) // sl.step
            dst.append(slice(first, first + len(inside)))
        out[tuple(dst)] = block[tuple(src)]
    return out.squeeze(axis=tuple(dropped)) if dropped else out
