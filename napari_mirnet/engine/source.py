"""The input as the engine sees it: one or two arrays with axes, opened lazily and read region by region."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import io as mio
from .. import xarrays as _xr
from ..axes import infer_axes, to_cyx_order, validate_axes
from ..io.retry import RemoteReadError
from ..io.urls import is_url, redact
from ..metadata import ImageMeta
from ..processing import check_dtype

if TYPE_CHECKING:  # dask.array costs ~70 MB of imports: loaded only for dask and zarr inputs
    import dask.array as da

__all__ = ["InputError", "Source", "open_source", "read_region", "read_window"]


@dataclass(frozen=True, eq=False)
class Source:
    """An image (or a dual-pixel pair) ready to be read tile by tile."""

    arrays: tuple  # numpy, zarr, dask or array-like; dual-pixel pairs have two
    axes: str
    meta: ImageMeta = ImageMeta()  # what the pixels mean, as the file (or the caller) says
    kind: str = "numpy"  # numpy, dask, zarr (anything sliceable without loading it whole)
    name: str | None = None  # the path it came from
    eager: bool = False  # numpy in: numpy out
    paths: tuple = ()  # files or stores the arrays are read from (to refuse writing over them)

    @property
    def pixel_scale(self) -> dict | None:
        """Axis letter -> physical pixel size, when the file says."""
        return self.meta.pixel_scale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arrays[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.arrays[0].dtype)

    def size(self, axis: str) -> int:
        """Length of ``axis`` (1 for an axis the image does not have)."""
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    @property
    def lead_axes(self) -> str:
        """The iterated axes (all but C, Y, X), in the input's order."""
        return "".join(a for a in self.axes if a not in "CYX")

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.size(a) for a in self.lead_axes)

    def as_dask(self) -> list[da.Array]:
        """The arrays as dask arrays (for sampling intensities without loading them whole)."""
        if self.kind == "zarr":
            import dask.array as da

            # chunks None: an unchunked array-like (an h5py contiguous dataset); dask picks them
            return [da.from_array(a, chunks=getattr(a, "chunks", None) or "auto") for a in self.arrays]
        return list(self.arrays)


def open_source(
    image, axes: str | None, dual_pixel: bool, client=None, level=None, storage_options: dict | None = None
) -> Source:
    """Accept numpy, dask, zarr, array-likes, paths and URLs (or a pair of those for dual-pixel).

    ``level`` picks the level of an OME-Zarr pyramid a path points at (see ``io.open_image``);
    ``storage_options`` go to fsspec/GDAL for a URL. A URL's name is its redacted form (no credentials).
    """
    if dual_pixel:
        return _open_pair(image, axes, client, level, storage_options)
    meta, name = ImageMeta(), None
    if _xr.is_dataarray(image):  # dims say the axes, coordinates the pixel size and position
        image, axes, meta = _xr.from_dataarray(image, axes)
    elif isinstance(image, mio.ImageSource):  # an array with what its pixels mean (napari layers)
        image, meta, axes = image.array, image.meta, axes or image.axes
    if isinstance(image, (str, os.PathLike)):
        src = mio.open_image(image, level=level, storage_options=storage_options)
        # a URL's name feeds messages and the fingerprint: never its credentials
        name = redact(image) if is_url(image) else str(image)
        image, meta = src.array, src.meta
        if axes is None:
            axes = src.axes
    elif level is not None:
        raise ValueError(f"level={level!r} picks a level of an OME-Zarr path; the image here is an array, not a path")
    image = _from_torch(image)
    paths = (name,) if name else _store_paths(image)
    image, kind = _array_kind(image)
    axes = _checked_axes(image, kind, axes)
    eager = kind == "numpy"
    if client is not None and kind == "numpy":
        import dask.array as da

        kind, image = "dask", da.from_array(image)  # scattered through the graph, not a closure
    return Source((image,), axes, meta.replace(axes=axes), kind, name, eager, paths)


def _open_pair(image, axes: str | None, client, level, storage_options=None) -> Source:
    """The (left, right) views of a dual-pixel input as one source of two arrays."""
    if not isinstance(image, (tuple, list)) or len(image) != 2:
        raise ValueError("the defocus task takes a (left, right) pair of images")
    lv, rv = (open_source(v, axes, False, client, level, storage_options) for v in image)
    if lv.shape != rv.shape or lv.dtype != rv.dtype:
        raise ValueError(f"left and right views must match: {lv.shape} {lv.dtype} vs {rv.shape} {rv.dtype}")
    kinds = {lv.kind, rv.kind}
    arrays = (lv.arrays[0], rv.arrays[0])
    kind = "dask" if "dask" in kinds else ("zarr" if "zarr" in kinds else "numpy")
    if kind == "dask":
        import dask.array as da

        arrays = tuple(a if is_dask_array(a) else da.from_array(a) for a in arrays)
    return Source(arrays, lv.axes, lv.meta, kind, lv.name, lv.eager and rv.eager, lv.paths + rv.paths)


def _array_kind(image) -> tuple:
    """(the image, how tiles are read from it: ``"dask"``, ``"numpy"`` or ``"zarr"``, any sliceable store)."""
    if is_dask_array(image):
        if any(np.isnan(c) for dim in image.chunks for c in dim):
            raise ValueError(
                f"the dask array has unknown chunk sizes (NaN in chunks, shape {image.shape}), e.g. after "
                "boolean indexing; call image.compute_chunk_sizes() first (or pass numpy)"
            )
        return image, "dask"
    if isinstance(image, np.ndarray):
        return image, "numpy"
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        return image, "zarr"  # zarr arrays, tifffile stores, h5py datasets: sliced per tile
    return np.asarray(image), "numpy"


def _checked_axes(image, kind: str, axes: str | None) -> str:
    """The image's axes (given or inferred) once its dtype, shape and (in memory) values can be restored."""
    shape = tuple(image.shape)
    check_dtype(np.dtype(image.dtype))
    if not shape:
        raise ValueError(
            f"the image is a single value (a 0-d array: {image!r}), not an image; pass a 2-D or larger array"
        )
    if any(n == 0 for n in shape):
        raise ValueError(f"the image is empty (shape {shape}); nothing to restore")
    axes = validate_axes(axes, shape) if axes else infer_axes(shape)
    ny, nx = shape[axes.index("Y")], shape[axes.index("X")]
    if ny < 2 or nx < 2:
        raise ValueError(f"the image is {ny}x{nx} pixels (Y x X); restoration needs at least 2x2")
    if kind == "numpy" and image.dtype.kind == "f" and np.isinf(image).any():  # NaN is nodata
        raise ValueError("the image contains Inf pixels; replace them (e.g. np.nan_to_num) first")
    return axes


def is_dask_array(x) -> bool:
    """Whether ``x`` is a dask array (without importing dask.array: if it is not loaded, none exists)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, getattr(da, "Array", ()))


def _from_torch(image):
    """A torch tensor as numpy on the CPU (the result is numpy too); bf16 has no numpy twin: float32."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(image, torch.Tensor):
        return image
    t = image.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def _store_paths(image) -> tuple:
    """The local stores the image reads from: a zarr array's, or those of the zarr arrays in a dask graph.

    A dask array read from the output store itself (``da.from_zarr(out)``) must be refused like the
    path is: replacing the output would delete the pixels before they are read.
    """
    arrays = _graph_arrays(image) if is_dask_array(image) else [image]
    roots = (_local_store_root(getattr(a, "store", None)) for a in arrays)
    return tuple(dict.fromkeys(r for r in roots if r is not None))


def _local_store_root(store) -> str | None:
    """The folder of a store on the local disk (zarr's LocalStore, or an FsspecStore on 'file'), the
    URL of one on object storage, else None."""
    if store is None:
        return None
    root = getattr(store, "root", None)
    if root is not None:
        return str(root)
    # da.from_zarr(path) opens an FsspecStore on the local file system, not a LocalStore
    protocol = getattr(getattr(store, "fs", None), "protocol", None)
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())
    path = getattr(store, "path", None)
    if not path or not protocols:
        return None
    if {"file", "local"} & set(protocols):
        return str(path)
    # a store at a URL (s3://bucket/x.zarr): compared with URL outputs by io.check_distinct
    return f"{protocols[0]}://{str(path).lstrip('/')}" if protocols[0] not in ("http", "https") else str(path)


#: A dask layer of more tasks than this holds chunk tasks, not the arrays they read.
_SMALL_LAYER = 64


def _graph_arrays(image) -> list:
    """The source objects a dask array's graph reads from (the arrays ``da.from_array`` wraps).

    ``from_array`` keeps its array either as the one value of a small layer of its own
    (``inline_array=False``, the default) or as a literal argument of its blockwise layer; chunk
    tasks are not walked, so a graph of a million chunks costs no more than one of ten.
    """
    found = []
    for layer in image.dask.layers.values():
        for value, index in getattr(layer, "indices", ()) or ():
            if index is None:
                found.append(value)
        mapping = getattr(layer, "mapping", None)
        if isinstance(mapping, dict) and len(mapping) <= _SMALL_LAYER:
            found.extend(getattr(v, "value", v) if type(v).__name__ == "DataNode" else v for v in mapping.values())
    return [a for a in map(_unwrap_zarr, found) if a is not None]


def _unwrap_zarr(value, depth: int = 8):
    """The zarr array inside ``value``: itself, or inside xarray's lazy wrappers (``.array``/``._array``)."""
    for _ in range(depth):
        if hasattr(value, "store") and hasattr(value, "shape"):
            return value
        inner = getattr(value, "array", None)
        value = inner if inner is not None else getattr(value, "_array", None)
        if value is None:
            return None
    return None


def _region_index(axes: str, lead: tuple[int, ...], ys: slice, xs: slice) -> tuple:
    lead_axes = [a for a in axes if a not in "CYX"]
    idx = []
    for a in axes:
        if a == "Y":
            idx.append(ys)
        elif a == "X":
            idx.append(xs)
        elif a == "C":
            idx.append(slice(None))
        else:
            idx.append(lead[lead_axes.index(a)])
    return tuple(idx)


def _to_cyx(block: np.ndarray, axes: str) -> np.ndarray:
    """A region read with _region_index (lead axes dropped) to (C, Y, X)."""
    rest = [a for a in axes if a in "CYX"]
    block = np.transpose(block, [rest.index(a) for a in "CYX" if a in rest])
    return block if "C" in rest else block[None]


def read_region(arrays, axes: str, lead: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
    """One plane's (C, Y, X) region of numpy/zarr arrays; dual-pixel views are joined along C."""
    idx = _region_index(axes, lead, ys, xs)
    parts = [_to_cyx(np.asarray(a[idx]), axes) for a in arrays]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def read_window(arrays, axes: str, plan, key: tuple, name: str | None = None) -> np.ndarray:
    """A tile's input window (C, Y, X); a failed read (a corrupt or missing chunk) names the input and region."""
    lead, ty, tx = key
    (wy0, wy1), (wx0, wx1) = plan.window_range(0, ty), plan.window_range(1, tx)
    try:
        return read_region(arrays, axes, lead, slice(wy0, wy1), slice(wx0, wx1))
    except Exception as err:
        where = f"plane {lead}, " if lead else ""
        # a remote read that failed after its retries (io.retry) is the server's or the network's doing
        remote = isinstance(err, RemoteReadError)
        hint = (
            "the server or the connection failed there: run again (a resumable output continues where it stopped)"
            if remote
            else "the file may be damaged or incomplete there: check or re-create it"
        )
        raise InputError(
            f"reading the input {name or '(array)'} failed at {where}rows {wy0}-{wy1}, columns {wx0}-{wx1} "
            f"({type(err).__name__}: {err}); {hint}"
        ) from err


class InputError(RuntimeError):
    """The input could not be read (a damaged file or store); the message names the region."""


# ------------------------------------------------------------------ dask inputs: regions from chunks
def canonical_dask(source: Source) -> da.Array:
    """The dask input as (lead..., C, Y, X), views joined along C, one chunk along C."""
    import dask.array as da

    perm, _ = to_cyx_order(source.axes)
    parts = []
    for a in source.arrays:
        arr = (a if isinstance(a, da.Array) else da.from_array(a)).transpose(perm)
        parts.append(arr if "C" in source.axes else arr[..., None, :, :])
    src = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=len(source.lead_shape))
    # whole channel axis per chunk, so that a tile needs one chunk per Y/X position
    return src.rechunk({src.ndim - 3: -1})


def chunk_span(bounds: np.ndarray, lo: int, hi: int) -> tuple[list[int], slice]:
    """Chunk indices covering [lo, hi) and the slice of their concatenation that is [lo, hi)."""
    first = int(np.searchsorted(bounds, lo, side="right")) - 1
    last = int(np.searchsorted(bounds, hi, side="left")) - 1
    return list(range(first, last + 1)), slice(lo - int(bounds[first]), hi - int(bounds[first]))


def pick_plane(block: np.ndarray, lead_off: tuple) -> np.ndarray:
    """The plane at ``lead_off`` inside a chunk that may hold several planes."""
    return block[lead_off] if lead_off else block


def gather(grid_shape, slices, *blocks) -> np.ndarray:
    """Concatenate dask source chunks (C, Y, X, as a flat list) and cut the tile's region out."""
    rows = [np.concatenate(blocks[i * grid_shape[1] : (i + 1) * grid_shape[1]], axis=-1) for i in range(grid_shape[0])]
    out = np.concatenate(rows, axis=-2) if len(rows) > 1 else rows[0]
    return out[..., slices[0], slices[1]]
