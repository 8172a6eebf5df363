"""Where a run's output goes, chunk by chunk: a numpy array in memory, or a resumable zarr store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import io as mio
from ..metadata import ImageMeta

if TYPE_CHECKING:  # dask.array is imported only where a lazy array is made (it costs ~70 MB)
    import dask.array as da

__all__ = ["ArraySink", "ZarrSink", "open_array_sink", "open_zarr_sink", "output_scale"]


@dataclass(eq=False)
class ArraySink:
    """The run's result in memory (input axis order); each assembled chunk is copied in as it is made."""

    array: np.ndarray
    canonical: np.ndarray  # a view of ``array`` in canonical (lead..., [C,] Y, X) order
    has_channel: bool
    factor: int
    plan: object  # the run's TilePlan: where each chunk lies
    keeps_digests = False  # nothing to resume in memory

    def write(self, key: tuple, block: np.ndarray, digest: int | None = None) -> None:
        """Copy one assembled chunk (canonical layout) into the result."""
        lead, ty, tx = key
        s = self.factor
        (y0, y1), (x0, x1) = self.plan.core_range(0, ty), self.plan.core_range(1, tx)
        where = tuple(slice(i, i + 1) for i in lead) + (slice(s * y0, s * y1), slice(s * x0, s * x1))
        if self.has_channel:
            where = where[:-2] + (slice(None),) + where[-2:]
        else:
            block = block[..., 0, :, :]
        self.canonical[where] = block


def open_array_sink(run) -> ArraySink:
    """An empty result array for ``run``, in the input's axis order."""
    axes, has_c = run.axes, "C" in run.axes
    canon_axes = "".join(a for a in axes if a not in "CYX") + ("CYX" if has_c else "YX")
    canon_shape = run.out_shape if has_c else run.out_shape[:-3] + run.out_shape[-2:]
    array = np.empty(tuple(canon_shape[canon_axes.index(a)] for a in axes), run.imap.dtype)
    canonical = array.transpose([axes.index(a) for a in canon_axes])
    return ArraySink(array, canonical, has_c, run.plan.factor, run.plan)


@dataclass(eq=False)
class ZarrSink:
    """An open napari-mirnet store and how canonical (lead..., C, Y, X) chunks map into it."""

    output: mio.ZarrOutput
    store_axes: str  # OME order (T, C, Z, Y, X)
    out_perm: tuple[int, ...]  # canonical -> store axis order
    has_channel: bool
    keeps_digests = True  # what each chunk was computed from, checked on resume

    def chunk_index(self, key: tuple) -> tuple[int, ...]:
        lead, ty, tx = key
        canon = tuple(lead) + ((0, ty, tx) if self.has_channel else (ty, tx))
        return tuple(canon[i] for i in self.out_perm)

    def write(self, key: tuple, block: np.ndarray, digest: int | None = None) -> None:
        """Write one assembled chunk (canonical layout) and its input digest, then mark it done."""
        if not self.has_channel:  # the store has no channel axis either
            block = block[..., 0, :, :]
        if digest is not None:
            mio.write_digest(self.output, self.chunk_index(key), digest)
        mio.write_chunk(self.output, np.transpose(block, self.out_perm), self.chunk_index(key))

    def todo(self, keys: list) -> list:
        """The tiles whose chunks are not written yet (all of them in a new store)."""
        done = self.output.done_mask()
        return [k for k in keys if not done[self.chunk_index(k)]]

    def read_back(self, axes: str) -> da.Array:
        """The written store as a dask array in the input's axis order."""
        import dask.array as da

        # a URL is read with the options it was written with (zarr's fsspec store, lazily)
        options = {"storage_options": self.output.storage_options} if self.output.storage_options else {}
        arr = da.from_zarr(str(self.output.path), component="0", **options)
        return arr.transpose([self.store_axes.index(a) for a in axes]) if self.store_axes != axes else arr


def open_zarr_sink(run, out, overwrite: bool, storage_options: dict | None = None) -> ZarrSink:
    """Create the run's store at ``out`` (a path or URL) or reopen an unfinished one with the same fingerprint."""
    axes, has_c = run.axes, "C" in run.axes
    # canonical order is (lead..., C, Y, X); the store is in OME order (T, C, Z, Y, X)
    canon_axes = "".join(a for a in axes if a not in "CYX") + ("CYX" if has_c else "YX")
    canon_shape = run.out_shape if has_c else run.out_shape[:-3] + run.out_shape[-2:]
    canon_chunks = run.out_chunks if has_c else run.out_chunks[:-3] + run.out_chunks[-2:]
    store_axes = mio.ome_order(axes)
    out_perm = tuple(canon_axes.index(a) for a in store_axes)
    shape = tuple(canon_shape[i] for i in out_perm)
    chunk_shape = tuple(max(canon_chunks[i]) for i in out_perm)
    output = mio.open_output(
        out, run.fingerprint, shape, chunk_shape, run.imap.dtype, store_axes, overwrite, storage_options=storage_options
    )
    return ZarrSink(output, store_axes, out_perm, has_c)


def output_scale(scale, axes: str, factor: int) -> tuple[float, ...]:
    """Pixel sizes of the output: Y and X divided by the super-resolution factor (``ImageMeta.resampled``)."""
    axes = axes.upper()
    meta = ImageMeta(scale={a: float(v) for a, v in zip(axes, scale)}).resampled(factor)
    return tuple(meta.scale[a] for a in axes)
