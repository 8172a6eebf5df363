"""Where a run's output goes: a zarr store written chunk by chunk (resumable), read back in input order."""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from .. import io as mio
from ..metadata import ImageMeta

__all__ = ["ZarrSink", "open_zarr_sink", "output_scale"]


@dataclass(eq=False)
class ZarrSink:
    """An open napari-mirnet store and how canonical (lead..., C, Y, X) chunks map into it."""

    output: mio.ZarrOutput
    store_axes: str  # OME order (T, C, Z, Y, X)
    out_perm: tuple[int, ...]  # canonical -> store axis order
    has_channel: bool

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
        arr = da.from_zarr(str(self.output.path), component="0")
        return arr.transpose([self.store_axes.index(a) for a in axes]) if self.store_axes != axes else arr


def open_zarr_sink(run, out, overwrite: bool) -> ZarrSink:
    """Create the run's store at ``out`` or reopen an unfinished one with the same fingerprint."""
    axes, has_c = run.axes, "C" in run.axes
    # canonical order is (lead..., C, Y, X); the store is in OME order (T, C, Z, Y, X)
    canon_axes = "".join(a for a in axes if a not in "CYX") + ("CYX" if has_c else "YX")
    canon_shape = run.out_shape if has_c else run.out_shape[:-3] + run.out_shape[-2:]
    canon_chunks = run.out_chunks if has_c else run.out_chunks[:-3] + run.out_chunks[-2:]
    store_axes = mio.ome_order(axes)
    out_perm = tuple(canon_axes.index(a) for a in store_axes)
    shape = tuple(canon_shape[i] for i in out_perm)
    chunk_shape = tuple(max(canon_chunks[i]) for i in out_perm)
    output = mio.open_output(out, run.fingerprint, shape, chunk_shape, run.imap.dtype, store_axes, overwrite)
    return ZarrSink(output, store_axes, out_perm, has_c)


def output_scale(scale, axes: str, factor: int) -> tuple[float, ...]:
    """Pixel sizes of the output: Y and X divided by the super-resolution factor (``ImageMeta.resampled``)."""
    axes = axes.upper()
    meta = ImageMeta(scale={a: float(v) for a, v in zip(axes, scale)}).resampled(factor)
    return tuple(meta.scale[a] for a in axes)
