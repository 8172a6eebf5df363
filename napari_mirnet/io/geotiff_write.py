"""Writing a GeoTIFF through rasterio: the input's CRS, transform, nodata, bands and interleave out again.

Writing goes window by window from the lazy result into a tiled GeoTIFF; an image larger than one
block (:data:`OVERVIEW_MIN`) then gets overviews and is rewritten as a cloud-optimised GeoTIFF with
GDAL's GTiff driver (``COPY_SRC_OVERVIEWS=YES``: overviews and tile index ahead of the data). The
COG driver is not used because it cannot be written window by window and, before GDAL 3.11,
cannot write band-interleaved files; the GTiff copy keeps the input's interleave.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from ..metadata import GeoInfo, ImageMeta
from .geotiff import BLOCK, COLOUR_OF, NOTE_ITEM, require_rasterio

__all__ = ["OVERVIEW_MIN", "write_geotiff", "writes_geotiff"]

#: Images larger than this (either side) get overviews.
OVERVIEW_MIN = BLOCK


def writes_geotiff(suffix: str, axes: str, meta: ImageMeta | None) -> bool:
    """A tif result of a georeferenced input is written as a GeoTIFF."""
    return suffix in (".tif", ".tiff") and meta is not None and meta.geo is not None and axes in ("YX", "YXC", "CYX")


def _colorinterp(channels: tuple, count: int):
    from rasterio.enums import ColorInterp

    by_colour = {v: k for k, v in COLOUR_OF.items()}
    if len(channels) != count:
        return None
    out = []
    for c in channels:
        if c.alpha:
            out.append(ColorInterp.alpha)
        elif c.color and c.color.upper() in by_colour:
            out.append(getattr(ColorInterp, by_colour[c.color.upper()]))
        elif count == 1 or (c.color or "").upper() == "FFFFFF":
            out.append(ColorInterp.gray)
        else:
            out.append(ColorInterp.undefined)
    return out


def write_geotiff(tmp: Path, arr, axes: str, meta: ImageMeta, note: str | None) -> None:
    """Write ``arr`` (numpy or dask, YX / YXC / CYX) as a GeoTIFF at ``tmp``, window by window.

    Same CRS, transform (or ground control points), nodata (or mask band), band count,
    descriptions, units, scale/offset, metadata, colour interpretation and interleave as ``meta``
    says; the run fingerprint ``note`` goes into the GDAL metadata (item ``napari_mirnet``).
    """
    rasterio = require_rasterio(f"writing {Path(tmp).name.lstrip('.').removesuffix('.partial')} as a GeoTIFF")
    if axes == "CYX":
        arr = arr.transpose(1, 2, 0)
    elif axes == "YX":
        arr = arr[..., None]
    height, width, count = (int(n) for n in arr.shape)
    mask = meta.geo.mask and meta.nodata is not None  # nodata stands in for the input's mask band
    large = max(height, width) > OVERVIEW_MIN
    stage = Path(tmp).with_name(Path(tmp).name + ".stage") if large else Path(tmp)
    profile = _profile(height, width, count, np.dtype(arr.dtype), meta, mask)
    try:
        _write_windows(rasterio, stage, profile, arr, meta, note, mask)
        if large:
            _copy_with_overviews(stage, Path(tmp), profile)
    finally:
        if large and stage.exists():
            os.unlink(stage)


def _profile(height: int, width: int, count: int, dtype: np.dtype, meta: ImageMeta, mask: bool) -> dict:
    """rasterio's creation profile: size, georeferencing, nodata, interleave, tiles and compression."""
    return {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype.name,
        **_georeferencing(meta.geo),
        "nodata": None if mask else meta.nodata,
        "interleave": meta.geo.interleave,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "predictor": 3 if dtype.kind == "f" else 2,
        "BIGTIFF": "IF_SAFER",
        **_photometric(meta.channels, count),
    }


def _write_windows(rasterio, path: Path, profile: dict, arr, meta: ImageMeta, note: str | None, mask: bool) -> None:
    """Create ``path``, describe its bands and write ``arr`` (Y, X, C) into it, one computed chunk at a time."""
    import dask.array as da
    from rasterio.windows import Window

    height, width = profile["height"], profile["width"]
    # a mask band goes inside the TIFF (whatever the GDAL version defaults to: never a .msk file beside it)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        _describe(ds, meta, profile["count"], note)

        class Target:  # da.store writes each computed chunk through here (one at a time: lock)
            def __setitem__(self, key, value):
                ys, xs = key[0], key[1]
                win = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
                value = np.asarray(value)
                ds.write(np.moveaxis(value, -1, 0), window=win)
                if mask:
                    ds.write_mask(_valid_mask(value, meta.nodata), window=win)

        if isinstance(arr, da.Array):
            da.store(arr, Target(), lock=threading.Lock())
        else:
            Target()[slice(0, height), slice(0, width)] = np.asarray(arr)


def _copy_with_overviews(stage: Path, tmp: Path, profile: dict) -> None:
    """Add overviews to ``stage`` and copy it to ``tmp`` as a cloud-optimised GeoTIFF."""
    import rasterio.shutil

    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(stage, "r+") as ds:
        ds.build_overviews(_overview_factors(profile["height"], profile["width"]), _resampling())
        ds.update_tags(ns="rio_overview", resampling=_resampling().name)
    # creation options only: the copy takes georeferencing, nodata and mask from the stage file
    skip = ("driver", "height", "width", "count", "dtype", "crs", "transform", "gcps", "nodata")
    cog = {k: v for k, v in profile.items() if k not in skip}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        rasterio.shutil.copy(stage, tmp, driver="GTiff", COPY_SRC_OVERVIEWS="YES", **cog)


def _describe(ds, meta: ImageMeta, count: int, note: str | None) -> None:
    tags = dict(meta.geo.tags)
    if note:
        tags[NOTE_ITEM] = note
    if tags:
        ds.update_tags(**tags)
    chans = meta.channels
    if len(chans) != count:
        return
    for i, c in enumerate(chans, 1):
        if c.name:
            ds.set_band_description(i, c.name)
        if c.unit:
            ds.set_band_unit(i, c.unit)
        if c.tags:
            ds.update_tags(i, **dict(c.tags))
    if any(c.scale is not None or c.offset is not None for c in chans):
        ds.scales = [1.0 if c.scale is None else c.scale for c in chans]
        ds.offsets = [0.0 if c.offset is None else c.offset for c in chans]
    interp = _colorinterp(chans, count)
    if interp is not None:
        ds.colorinterp = interp


def _georeferencing(geo: GeoInfo) -> dict:
    """Creation options: CRS and transform, or ground control points and their CRS (GDAL keeps one)."""
    from rasterio import Affine

    if not geo.gcps:
        return {"crs": geo.crs, "transform": Affine(*geo.transform[:6])}
    from rasterio.control import GroundControlPoint

    points = [GroundControlPoint(r, c, x, y, z, i, info) for r, c, x, y, z, i, info in geo.gcps]
    return {"gcps": points, "crs": geo.gcp_crs or geo.crs}


def _valid_mask(value: np.ndarray, nodata: float) -> np.ndarray:
    """GDAL's mask of a (y, x, c) block: 255 where every band holds data, 0 where one is ``nodata``."""
    holes = np.isnan(value) if np.isnan(nodata) else value == np.asarray(nodata).astype(value.dtype)
    return np.where(holes.any(axis=-1), 0, 255).astype(np.uint8)


def _photometric(channels: tuple, count: int) -> dict:
    """TIFF photometric and extra-sample options: GDAL marks a 4th band of 8-bit data alpha by default."""
    interp = _colorinterp(channels, count) or []
    rgb = [c.name for c in interp[:3]] == ["red", "green", "blue"]
    alpha = any(c.name == "alpha" for c in interp)
    out = {"photometric": "RGB" if rgb else "MINISBLACK"}
    if count > (3 if rgb else 1):
        out["alpha"] = "YES" if alpha else "UNSPECIFIED"
    return out


def _overview_factors(height: int, width: int) -> list[int]:
    """2, 4, 8... until the smallest level fits in one block (as GDAL's COG driver does)."""
    levels = max(1, math.ceil(math.log2(max(height, width) / BLOCK)))
    return [2**i for i in range(1, levels + 1)]


def _resampling():
    from rasterio.enums import Resampling

    return Resampling.average  # GDAL's average leaves nodata out
