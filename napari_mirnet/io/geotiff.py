"""GeoTIFF through rasterio (the ``[geo]`` extra): CRS, transform, nodata, bands in; the same out.

Reading is lazy (:class:`GeoArray` reads windows, so the engine slices it per tile). Writing goes
window by window from the lazy result into a tiled GeoTIFF; an image larger than one block
(:data:`OVERVIEW_MIN`) then gets overviews and is rewritten as a cloud-optimised GeoTIFF with
GDAL's GTiff driver (``COPY_SRC_OVERVIEWS=YES``: overviews and tile index ahead of the data). The
COG driver is not used because it cannot be written window by window and, before GDAL 3.11,
cannot write band-interleaved files; the GTiff copy keeps the input's interleave.
"""

from __future__ import annotations

import html
import math
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..metadata import RGB_COLOURS, Channel, GeoInfo, ImageMeta
from .image import ImageSource

__all__ = ["GeoArray", "is_geotiff", "open_geotiff", "stored_note", "write_geotiff", "writes_geotiff"]

#: GeoTIFF tags: GeoKeyDirectory, ModelPixelScale, ModelTiepoint, ModelTransformation.
GEO_TAGS = (34735, 33550, 33922, 34264)
#: Block edge of written GeoTIFFs; images larger than this (either side) get overviews.
BLOCK = 512
OVERVIEW_MIN = BLOCK
#: The GDAL metadata item holding the run fingerprint (see ``io.store.ATTR``).
NOTE_ITEM = "napari_mirnet"

_COLOUR_OF = {"red": RGB_COLOURS[0], "green": RGB_COLOURS[1], "blue": RGB_COLOURS[2]}
MISSING = (
    "{what} needs rasterio to keep its georeferencing (CRS, transform, nodata, band descriptions); "
    "install it with: pip install 'napari-mirnet[geo]'"
)


def _rasterio(what: str):
    try:
        import rasterio
    except ImportError:
        rasterio = None
    if rasterio is None:  # also when sys.modules["rasterio"] is None
        # refused, not read as a plain TIFF: that output would lose its CRS and transform without a
        # word, and nodata would enter the intensity mapping (the bugs of issue 14)
        raise RuntimeError(MISSING.format(what=what))
    return rasterio


def is_geotiff(path) -> bool:
    """Whether a TIFF carries GeoTIFF tags (read with tifffile, so without rasterio)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            return any(t in tags for t in GEO_TAGS)
    except Exception:
        return False  # not a TIFF tifffile reads: the TIFF reader gives the error


class GeoArray:
    """A GeoTIFF's bands as a lazy (Y, X, C) array (or (Y, X) for one band), read window by window.

    Picklable (it holds the path): every read opens the file, since a rasterio dataset must not
    be shared between threads.
    """

    def __init__(self, path, shape: tuple, dtype, block: tuple[int, int]):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        # chunks for dask (from_array): whole bands, whole blocks (strips too), at least 512 pixels a side
        by, bx = (min(n, b * max(1, -(-512 // b))) for n, b in zip(self.shape[:2], block))
        self.chunks = (by, bx) + self.shape[2:]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        import rasterio
        from rasterio.windows import Window

        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        # positions along each axis (a slice, an index or a list): read their bounding window
        iy, ix = (np.arange(n)[k] for k, n in zip(key[:2], self.shape[:2]))
        ic = np.arange(self.shape[2])[key[2]] if self.ndim == 3 else np.int64(0)
        bands = [int(c) + 1 for c in np.atleast_1d(ic)]
        if 0 in (iy.size, ix.size, len(bands)):
            shape = tuple(v.size for v in (iy, ix, ic) if v.ndim)
            return np.zeros(shape[: self.ndim], self.dtype)
        y0, x0 = int(iy.min()), int(ix.min())
        win = Window(x0, y0, int(ix.max()) + 1 - x0, int(iy.max()) + 1 - y0)
        with rasterio.open(self.path) as ds:
            data = np.moveaxis(ds.read(bands, window=win), 0, -1)  # (y, x, c)
        data = np.take(data, iy - y0, axis=0)
        data = np.take(data, ix - x0, axis=0 if iy.ndim == 0 else 1)
        return data[..., 0] if ic.ndim == 0 else data


def open_geotiff(p: Path) -> ImageSource:
    """A GeoTIFF as a lazy (Y, X[, C]) array and its georeferencing, nodata and bands."""
    rasterio = _rasterio(f"{p.name} is a GeoTIFF: reading it")
    with rasterio.open(p) as ds:
        if len(set(ds.dtypes)) != 1:
            raise ValueError(f"{p.name}: bands of different types ({', '.join(ds.dtypes)}) cannot be restored together")
        count, height, width = ds.count, ds.height, ds.width
        dtype = np.dtype(ds.dtypes[0])
        block = ds.block_shapes[0] if ds.block_shapes else (BLOCK, BLOCK)
        interleave = (ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") or "PIXEL").lower()
        tags = tuple((k, v) for k, v in ds.tags().items() if k in ("AREA_OR_POINT",))
        geo = GeoInfo(
            crs=ds.crs.to_wkt() if ds.crs else None,
            transform=tuple(float(v) for v in tuple(ds.transform)[:6]),
            interleave="band" if interleave == "band" else "pixel",
            tags=tags,
        )
        channels = tuple(
            Channel(
                name=desc or ci.name,
                color=_COLOUR_OF.get(ci.name),
                alpha=ci.name == "alpha",
            )
            for desc, ci in zip(ds.descriptions, ds.colorinterp)
        )
        nodata = ds.nodata
    shape = (height, width) if count == 1 else (height, width, count)
    axes = "YX" if count == 1 else "YXC"
    meta = ImageMeta(
        axes=axes,
        channels=channels if count > 1 else (),
        nodata=None if nodata is None else float(nodata),
        geo=geo,
        source_format="geotiff",
    )
    return ImageSource(GeoArray(p, shape, dtype, block), axes, meta)


def writes_geotiff(suffix: str, axes: str, meta: ImageMeta | None) -> bool:
    """A tif result of a georeferenced input is written as a GeoTIFF."""
    return suffix in (".tif", ".tiff") and meta is not None and meta.geo is not None and axes in ("YX", "YXC", "CYX")


def _colorinterp(channels: tuple, count: int):
    from rasterio.enums import ColorInterp

    by_colour = {v: k for k, v in _COLOUR_OF.items()}
    if len(channels) != count:
        return None
    out = []
    for c in channels:
        if c.alpha:
            out.append(ColorInterp.alpha)
        elif c.color and c.color.upper() in by_colour:
            out.append(getattr(ColorInterp, by_colour[c.color.upper()]))
        elif count == 1:
            out.append(ColorInterp.gray)
        else:
            out.append(ColorInterp.undefined)
    return out


def write_geotiff(tmp: Path, arr, axes: str, meta: ImageMeta, note: str | None) -> None:
    """Write ``arr`` (numpy or dask, YX / YXC / CYX) as a GeoTIFF at ``tmp``, window by window.

    Same CRS, transform, nodata, band count, descriptions, colour interpretation and interleave as
    ``meta`` says; the run fingerprint ``note`` goes into the GDAL metadata (item ``napari_mirnet``).
    """
    import dask.array as da

    rasterio = _rasterio(f"writing {Path(tmp).name.lstrip('.').removesuffix('.partial')} as a GeoTIFF")
    from rasterio.windows import Window

    if axes == "CYX":
        arr = arr.transpose(1, 2, 0)
    elif axes == "YX":
        arr = arr[..., None]
    height, width, count = (int(n) for n in arr.shape)
    dtype = np.dtype(arr.dtype)
    geo = meta.geo
    large = max(height, width) > OVERVIEW_MIN
    stage = Path(tmp).with_name(Path(tmp).name + ".stage") if large else Path(tmp)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype.name,
        "crs": geo.crs,
        "transform": rasterio.Affine(*geo.transform[:6]),
        "nodata": meta.nodata,
        "interleave": geo.interleave,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "predictor": 3 if dtype.kind == "f" else 2,
        "BIGTIFF": "IF_SAFER",
        **_photometric(meta.channels, count),
    }
    try:
        with rasterio.open(stage, "w", **profile) as ds:
            _describe(ds, meta, count, note)

            class Target:  # da.store writes each computed chunk through here (one at a time: lock)
                def __setitem__(self, key, value):
                    ys, xs = key[0], key[1]
                    win = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
                    ds.write(np.moveaxis(np.asarray(value), -1, 0), window=win)

            if isinstance(arr, da.Array):
                da.store(arr, Target(), lock=threading.Lock())
            else:
                Target()[slice(0, height), slice(0, width)] = np.asarray(arr)
        if large:
            with rasterio.open(stage, "r+") as ds:
                ds.build_overviews(_overview_factors(height, width), _resampling())
                ds.update_tags(ns="rio_overview", resampling=_resampling().name)
            cog = {k: v for k, v in profile.items() if k not in ("driver", "height", "width", "count", "dtype")}
            cog.pop("crs"), cog.pop("transform"), cog.pop("nodata")
            import rasterio.shutil

            rasterio.shutil.copy(stage, tmp, driver="GTiff", COPY_SRC_OVERVIEWS="YES", **cog)
    finally:
        if large and stage.exists():
            os.unlink(stage)


def _describe(ds, meta: ImageMeta, count: int, note: str | None) -> None:
    tags = dict(meta.geo.tags)
    if note:
        tags[NOTE_ITEM] = note
    if tags:
        ds.update_tags(**tags)
    if len(meta.channels) == count:
        for i, c in enumerate(meta.channels, 1):
            if c.name:
                ds.set_band_description(i, c.name)
        interp = _colorinterp(meta.channels, count)
        if interp is not None:
            ds.colorinterp = interp


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


def stored_note(path) -> str | None:
    """The run fingerprint a GeoTIFF of ours records (GDAL metadata), read with tifffile; None if none."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(42112)  # GDAL_METADATA
        if tag is None:
            return None
        root = ET.fromstring(tag.value)
    for item in root.iter("Item"):
        if item.get("name") == NOTE_ITEM and item.get("sample") is None:
            # GDAL escapes the value once more than XML does (rasterio's tags() read it back alike)
            return html.unescape(item.text or "")
    return None
