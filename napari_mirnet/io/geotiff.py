"""Reading a GeoTIFF through rasterio (the ``[geo]`` extra): CRS, transform, nodata, mask and bands in.

Reading is lazy (:class:`GeoArray` reads windows, so the engine slices it per tile). Writing the
same back out lives in :mod:`.geotiff_write`; what both share (the rasterio check, the block
edge, the colour names, the metadata item of our record) is here.
"""

from __future__ import annotations

import functools
import html
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..metadata import RGB_COLOURS, Channel, GeoInfo, ImageMeta
from .image import ImageSource
from .record import ATTR

__all__ = ["GeoArray", "is_geotiff", "open_geotiff", "stored_note"]

#: GeoTIFF tags: GeoKeyDirectory, ModelPixelScale, ModelTiepoint, ModelTransformation.
GEO_TAGS = (34735, 33550, 33922, 34264)
#: Block edge of written GeoTIFFs (and of read ones that do not say).
BLOCK = 512
#: The GDAL metadata item holding the run fingerprint.
NOTE_ITEM = ATTR

COLOUR_OF = {"red": RGB_COLOURS[0], "green": RGB_COLOURS[1], "blue": RGB_COLOURS[2], "gray": "FFFFFF"}
MISSING = (
    "{what} needs rasterio to keep its georeferencing (CRS, transform, nodata, band descriptions); "
    "install it with: pip install rasterio (in a clone of napari-mirnet: pip install -e '.[geo]')"
)


def require_rasterio(what: str):
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

    def __init__(self, path, shape: tuple, dtype, block: tuple[int, int], masked=None, level=None, env=None):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)
        # a remote file: its GDAL path (/vsicurl/, /vsis3/...) and GDAL config; level: an overview
        self.level, self.env = level, env
        # the file's mask band: masked pixels read as this stand-in value (None: no mask)
        self.masked = masked
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
        with _gdal_env(self.env), rasterio.open(self.path, **_overview(self.level)) as ds:
            data = np.moveaxis(ds.read(bands, window=win), 0, -1)  # (y, x, c)
            if self.masked is not None:
                data = _apply_mask(data, ds.dataset_mask(window=win) == 0, self.masked)
        data = np.take(data, iy - y0, axis=0)
        data = np.take(data, ix - x0, axis=0 if iy.ndim == 0 else 1)
        return data[..., 0] if ic.ndim == 0 else data


def open_geotiff(p, level=None, *, env: dict | None = None, name: str | None = None) -> ImageSource:
    """A GeoTIFF as a lazy (Y, X[, C]) array and its georeferencing, nodata and bands.

    Band descriptions, units, scale/offset and band metadata are read as the file has them (no
    name is made up: the colour interpretation says red, green, blue or alpha). A mask band (an
    internal or ``.msk`` GDAL mask) without a nodata value becomes nodata for the run: masked
    pixels read as a stand-in value (:func:`_stand_in`), written back as the output's mask band.
    ``level`` picks an overview (0: full resolution, 1: the first overview...). A remote file is
    a GDAL path (``/vsicurl/...``, ``/vsis3/...``) read with the GDAL config ``env``; ``name`` is
    what messages call it (the redacted URL).
    """
    name = name or Path(p).name
    rasterio = require_rasterio(f"{name} is a GeoTIFF: reading it")
    with _gdal_env(env):
        level = _checked_level(rasterio, p, name, level)
        with rasterio.open(p, **_overview(level)) as ds:
            if len(set(ds.dtypes)) != 1:
                raise ValueError(
                    f"{name}: bands of different types ({', '.join(ds.dtypes)}) cannot be restored together"
                )
            count, height, width = ds.count, ds.height, ds.width
            dtype = np.dtype(ds.dtypes[0])
            block = ds.block_shapes[0] if ds.block_shapes else (BLOCK, BLOCK)
            geo, nodata, has_mask = _geo_info(ds)
            channels = tuple(_channel(ds, i) for i in ds.indexes)
            if not has_mask:
                masked = None
            elif env is None and level is None:
                masked = _stand_in_of(str(p), os.stat(p).st_mtime_ns, dtype.str)
            else:  # remote, or an overview: counted here (no file time to key a cache on)
                masked = _stand_in(ds, dtype)
    if count == 1 and not any((c.name, c.unit, c.scale, c.offset, c.tags) != (None,) * 4 + ((),) for c in channels):
        channels = ()
    shape = (height, width) if count == 1 else (height, width, count)
    axes = "YX" if count == 1 else "YXC"
    meta = ImageMeta(
        axes=axes,
        channels=channels,
        nodata=masked if masked is not None else (None if nodata is None else float(nodata)),
        geo=geo,
        source_format="geotiff",
    )
    return ImageSource(GeoArray(p, shape, dtype, block, masked, level, env), axes, meta)


def _geo_info(ds) -> tuple:
    """(GeoInfo, nodata, whether a mask band stands for nodata) of an open dataset."""
    interleave = (ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") or "PIXEL").lower()
    gcps, gcp_crs = ds.gcps
    nodata = ds.nodata
    has_mask = nodata is None and _has_mask_band(ds)
    geo = GeoInfo(
        crs=ds.crs.to_wkt() if ds.crs and not gcps else None,
        transform=tuple(float(v) for v in tuple(ds.transform)[:6]),
        interleave="band" if interleave == "band" else "pixel",
        tags=_kept(ds.tags()),
        gcps=tuple((g.row, g.col, g.x, g.y, g.z, g.id, g.info) for g in gcps),
        gcp_crs=gcp_crs.to_wkt() if gcps and gcp_crs else None,
        mask=has_mask,
    )
    return geo, nodata, has_mask


def _gdal_env(env: dict | None):
    """GDAL config options for a remote read (thread-local in rasterio); nothing for a local file."""
    if env is None:
        import contextlib

        return contextlib.nullcontext()
    import rasterio
    from rasterio.session import Session

    class _Given(Session):
        """Credentials from storage_options (rasterio refuses AWS keys as plain config options)."""

        def __init__(self, creds: dict):
            self._creds = creds

        @property
        def credentials(self) -> dict:
            return dict(self._creds)

        def get_credential_options(self) -> dict:
            return dict(self._creds)

    creds = {k: v for k, v in env.items() if k in _CREDENTIALS}
    rest = {k: v for k, v in env.items() if k not in _CREDENTIALS}
    return rasterio.Env(session=_Given(creds), **rest) if creds else rasterio.Env(**rest)


_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _overview(level) -> dict:
    """rasterio.open's argument for pyramid ``level`` (0 or None: full resolution)."""
    return {"overview_level": level - 1} if level else {}


def _checked_level(rasterio, p, name: str, level):
    """``level`` (an int from 0, full resolution, to the number of overviews) or an error listing them."""
    if level is None:
        return None
    with rasterio.open(p) as ds:
        factors = ds.overviews(1) if ds.count else []
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) <= len(factors):
        have = ", ".join(f"{i + 1} (1/{f})" for i, f in enumerate(factors)) or "none"
        raise ValueError(
            f"level={level!r}: {name} has full resolution (level 0) and overviews {have}; pick one of those"
        )
    return int(level) or None


def _kept(tags: dict) -> tuple:
    """Metadata items a restoration leaves true: not statistics (the values change), not our fingerprint."""
    return tuple((k, v) for k, v in tags.items() if not k.startswith("STATISTICS_") and k != NOTE_ITEM)


def _channel(ds, i: int) -> Channel:
    ci = ds.colorinterp[i - 1]
    scale, offset = ds.scales[i - 1], ds.offsets[i - 1]
    return Channel(
        name=ds.descriptions[i - 1] or None,  # as the file says: GDAL shows what is written here
        color=COLOUR_OF.get(ci.name),
        alpha=ci.name == "alpha",
        unit=ds.units[i - 1] or None,
        scale=None if scale == 1.0 else float(scale),
        offset=None if offset == 0.0 else float(offset),
        tags=_kept(ds.tags(i)),
    )


def _has_mask_band(ds) -> bool:
    """Whether GDAL gives the bands a mask band of the dataset's own (internal or ``.msk``), not alpha."""
    from rasterio.enums import MaskFlags

    flags = ds.mask_flag_enums
    return bool(flags) and all(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags)


@functools.lru_cache(maxsize=16)
def _stand_in_of(path: str, mtime_ns: int, dtype: str) -> float:
    """:func:`_stand_in` of a file, counted once per file version (a run opens its input more than once)."""
    import rasterio

    with rasterio.open(path) as ds:
        return _stand_in(ds, np.dtype(dtype))


def _stand_in(ds, dtype: np.dtype) -> float:
    """A value to mark masked pixels with: NaN for floats, else one no valid pixel holds.

    8- and 16-bit files are counted (every valid pixel, block by block) for a value they do not
    use; when all are used, and for wider integers, the least used value (or the type's extreme)
    is taken and valid pixels holding it are moved one step off (:func:`_apply_mask`), the same
    step the intensity map takes when a restored pixel lands on nodata.
    """
    if dtype.kind == "f":
        return float("nan")
    info = np.iinfo(dtype)
    if dtype.itemsize > 2:
        return float(info.min if dtype.kind == "i" else info.max)
    counts = np.zeros(int(info.max) - int(info.min) + 1, np.int64)
    from rasterio.windows import Window

    rows = max(1, 4_000_000 // max(1, ds.width * ds.count))  # whole rows, ~4 M values a read
    for y in range(0, ds.height, rows):
        win = Window(0, y, ds.width, min(rows, ds.height - y))
        data = ds.read(window=win)
        valid = np.broadcast_to(ds.dataset_mask(window=win) != 0, data.shape)
        counts += np.bincount((data[valid].astype(np.int64) - int(info.min)), minlength=counts.size)
    # prefer the type's top value, then its bottom, then the least used one
    for value in (int(info.max), int(info.min)):
        if counts[value - int(info.min)] == 0:
            return float(value)
    return float(int(np.argmin(counts)) + int(info.min))


def _apply_mask(data: np.ndarray, masked: np.ndarray, value: float) -> np.ndarray:
    """Masked pixels (a (y, x) mask) become ``value``; valid pixels holding it move one step off."""
    if np.isnan(value):
        data = data.astype(data.dtype, copy=True)
        data[masked] = np.nan
        return data
    v = np.asarray(value).astype(data.dtype)
    clash = (data == v) & ~masked[..., None]
    if clash.any():
        data = data.copy()
        data[clash] = v - 1 if v == np.iinfo(data.dtype).max else v + 1
    data[masked] = v
    return data


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
