"""TIFF: reading (ImageJ, OME-TIFF, plain; pyramids at full resolution) and writing results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..metadata import ImageMeta
from .image import ImageSource, axes_from_letters

__all__ = ["open_tiff", "write_tiff"]


def open_tiff(p: Path) -> ImageSource:
    """A TIFF's first series, read region by region through tifffile's zarr store."""
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes = axes_from_letters(series.axes)
        scale = {}
        fmt = "tiff"
        if tif.is_imagej and tif.imagej_metadata:
            fmt = "imagej-tiff"
            if "spacing" in tif.imagej_metadata:
                scale["Z"] = float(tif.imagej_metadata["spacing"])
            tag = tif.pages[0].tags.get("XResolution")
            if tag is not None and tag.value[0]:
                scale["X"] = scale["Y"] = tag.value[1] / tag.value[0]
    z = zarr.open(tifffile.imread(p, aszarr=True), mode="r")
    if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
        z = z["0"]
    return ImageSource(z, axes, ImageMeta(axes=axes, scale=scale, source_format=fmt))


def write_tiff(tmp: Path, arr, axes: str, meta: ImageMeta, note: str | None) -> None:
    """Write ``arr`` (numpy or dask, written chunk by chunk) as a TIFF at ``tmp``."""
    import dask.array as da
    import tifffile

    from .store import ATTR

    shape, dtype = tuple(arr.shape), np.dtype(arr.dtype)
    # imagej-style axes only for the layouts it knows; plain tif otherwise
    photometric = "rgb" if axes.endswith("C") and shape[-1] in (3, 4) else "minisblack"
    description = {"axes": axes, **({ATTR: note} if note else {})}
    mm = tifffile.memmap(tmp, shape=shape, dtype=dtype, photometric=photometric, metadata=description)
    if isinstance(arr, da.Array):
        da.store(arr, mm, lock=False)
    else:
        mm[...] = arr
    mm.flush()
    del mm
