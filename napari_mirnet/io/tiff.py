"""TIFF: reading (OME-TIFF, ImageJ, plain; pyramids at full resolution) and writing results.

Results are written as OME-TIFF (physical sizes, units, axes, channel names and colours in the
OME-XML), or as an ImageJ hyperstack when the input was one and ImageJ can hold the result.
Planes larger than :data:`TILE` are tiled; every file is deflate-compressed (the TIFF codec that
libtiff, GDAL, Bio-Formats/Fiji, ImageJ and tifffile all read); planes larger than
:data:`PYRAMID_FROM` px get 2x-downsampled pyramid levels in sub-IFDs (OME-TIFF only). The
settings fingerprint of a run sits in an OME ``MapAnnotation`` (namespace :data:`NAMESPACE`) or
an ImageJ description key, where :func:`stored_tiff_fingerprint` finds it.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..metadata import Channel, ImageMeta
from .image import ImageSource, axes_from_letters

__all__ = ["NAMESPACE", "TILE", "PYRAMID_FROM", "normalise_unit", "open_tiff", "stored_tiff_fingerprint", "write_tiff"]

NAMESPACE = "https://github.com/napari-mirnet/fingerprint"  # of our OME MapAnnotation
TILE = 512  # tile side for planes larger than one tile
PYRAMID_FROM = 4096  # planes with a side above this get pyramid levels (sub-IFDs)
PYRAMID_TO = 1024  # ...halved until both sides are at most this
_BAND_BYTES = 64 * 2**20  # at most this much of a result is held at once while writing
_SMALL_BYTES = 512 * 2**20  # a lazy result up to this size is computed whole, larger ones go to a temporary store
_IMAGEJ_MAX = 2**32 - 2**25  # ImageJ reads classic (32-bit offset) TIFF only; keep a margin for the headers

# OME-XML unit symbols <-> OME-NGFF (UDUNITS-2) names
_OME_LENGTH = {
    "Å": "angstrom",
    "pm": "picometer",
    "nm": "nanometer",
    "µm": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "dm": "decimeter",
    "m": "meter",
    "km": "kilometer",
    "in": "inch",
    "ft": "foot",
    "yd": "yard",
    "mi": "mile",
}
_OME_TIME = {
    "ps": "picosecond",
    "ns": "nanosecond",
    "µs": "microsecond",
    "ms": "millisecond",
    "s": "second",
    "min": "minute",
    "h": "hour",
    "d": "day",
}
# what ImageJ (and people) write for the same units
_ALIASES = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "μm": "micrometer",  # Greek mu, not the micro sign
    "\\u00b5m": "micrometer",  # ImageJ escapes the micro sign in its ASCII description
    "nanometre": "nanometer",
    "micrometre": "micrometer",
    "millimetre": "millimeter",
    "centimetre": "centimeter",
    "metre": "meter",
    "sec": "second",
    "seconds": "second",
    "msec": "millisecond",
    "us": "microsecond",
    "μs": "microsecond",
    "\\u00b5s": "microsecond",
    "mins": "minute",
    "minutes": "minute",
    "hours": "hour",
    "hr": "hour",
}
_IMAGEJ_UNIT = {"micrometer": "micron", "microsecond": "us", "angstrom": "A"}  # ASCII spellings ImageJ understands
_TO_SECONDS = {"picosecond": 1e-12, "nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "second": 1.0}
_TO_SECONDS.update({"minute": 60.0, "hour": 3600.0, "day": 86400.0})


def normalise_unit(text) -> str | None:
    """The OME-NGFF name (``micrometer``, ``second``...) of a unit as OME, ImageJ or people write it; None if unknown."""
    if text is None:
        return None
    t = str(text).strip()
    if t in _OME_LENGTH or t in _OME_TIME:
        return _OME_LENGTH.get(t) or _OME_TIME[t]
    low = t.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    known = set(_OME_LENGTH.values()) | set(_OME_TIME.values())
    return low if low in known else None


def _ome_symbol(unit: str | None) -> str | None:
    for table in (_OME_LENGTH, _OME_TIME):
        for sym, name in table.items():
            if name == unit:
                return sym
    return None


def _color_from_ome(value) -> str | None:
    """``RRGGBB`` from an OME Color (a signed 32-bit RGBA integer)."""
    try:
        v = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    return f"{v >> 8:06X}"


def _color_to_ome(color: str) -> int:
    v = int(color[:6] + "FF", 16)
    return v - 2**32 if v >= 2**31 else v


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ------------------------------------------------------------------------------------------ reading
def _ome_meta(tif, axes: str | None) -> tuple[dict, dict, tuple[Channel, ...]]:
    """(scale, units, channels) from the OME-XML of the file's first image."""
    import tifffile

    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        pixels = _as_list(ome.get("Image"))[0]["Pixels"]
    except (KeyError, IndexError, TypeError, ValueError):
        return {}, {}, ()
    scale, units = {}, {}
    for a in "XYZ":
        size = pixels.get(f"PhysicalSize{a}")
        if size is not None and float(size) > 0:
            scale[a] = float(size)
            # the OME schema's default unit is the micrometre
            units[a] = normalise_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) or "micrometer"
    dt = pixels.get("TimeIncrement")
    if dt is not None and float(dt) > 0:
        scale["T"] = float(dt)
        units["T"] = normalise_unit(pixels.get("TimeIncrementUnit", "s")) or "second"
    channels = []
    for ch in _as_list(pixels.get("Channel")):
        if not isinstance(ch, dict):
            ch = {}
        name = ch.get("Name")
        color = _color_from_ome(ch["Color"]) if "Color" in ch else None
        spp = int(ch.get("SamplesPerPixel", 1) or 1)
        if spp > 1:  # one OME channel of RGB samples: our channels are the samples
            channels.extend(Channel(name=None) for _ in range(spp))
        else:
            channels.append(Channel(name=None if name is None else str(name), color=color))
    if not any(c.name or c.color for c in channels):
        channels = []
    return scale, units, tuple(channels)


def _imagej_meta(tif, ij: dict) -> tuple[dict, dict, tuple[Channel, ...]]:
    """(scale, units, channels) from an ImageJ hyperstack's description and resolution tags."""
    scale, units = {}, {}
    unit = normalise_unit(ij.get("unit"))
    calibrated = str(ij.get("unit", "")).lower() not in ("", "pixel", "pixels")
    page = tif.pages.first
    for a, name in (("X", "XResolution"), ("Y", "YResolution")):
        tag = page.tags.get(name)
        if tag is not None and tag.value[0] and tag.value[1]:
            size = tag.value[1] / tag.value[0]
            if calibrated or size != 1.0:
                scale[a] = size
                if unit:
                    units[a] = unit
    if "spacing" in ij and float(ij["spacing"]) > 0:
        scale["Z"] = float(ij["spacing"])
        if unit:
            units["Z"] = normalise_unit(ij.get("zunit")) or unit
    if "finterval" in ij and float(ij["finterval"]) > 0:
        scale["T"] = float(ij["finterval"])
        units["T"] = normalise_unit(ij.get("tunit", "sec")) or "second"
    n_c = int(ij.get("channels", 1))
    channels = [Channel() for _ in range(n_c)]
    luts = ij.get("LUTs")
    if luts is not None and len(luts) == n_c:
        # a channel's colour is the top of its lookup table (ImageJ's Red, Green, Cyan...)
        channels = [Channel(color="".join(f"{int(v):02X}" for v in np.asarray(lut)[:, -1])) for lut in luts]
    ranges = ij.get("Ranges")
    if ranges is not None and len(ranges) == 2 * n_c:
        channels = [
            Channel(color=c.color, window=(float(ranges[2 * i]), float(ranges[2 * i + 1])))
            for i, c in enumerate(channels)
        ]
    if not any(c.color or c.window for c in channels):
        channels = []
    return scale, units, tuple(channels)


def _plain_meta(tif) -> tuple[dict, dict]:
    """Resolution tags of a plain TIFF, only when they are in centimetres.

    Inches are ignored: 72, 96 or 300 dpi is what cameras and image programs write by default (a
    print size), not a physical pixel size; taking it would be silently wrong more often than right.
    """
    page = tif.pages.first
    unit = page.tags.get("ResolutionUnit")
    if unit is None or int(unit.value) != 3:
        return {}, {}
    scale = {}
    for a, name in (("X", "XResolution"), ("Y", "YResolution")):
        tag = page.tags.get(name)
        if tag is not None and tag.value[0] and tag.value[1]:
            scale[a] = 1e4 * tag.value[1] / tag.value[0]  # pixels per cm -> micrometres per pixel
    return scale, dict.fromkeys(scale, "micrometer")


def open_tiff(p: Path) -> ImageSource:
    """A TIFF's first series, read region by region through tifffile's zarr store, with its metadata."""
    import tifffile
    import zarr

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes = axes_from_letters(series.axes)
        scale, units, channels = {}, {}, ()
        fmt = "tiff"
        if tif.is_ome and tif.ome_metadata:
            fmt = "ome-tiff"
            scale, units, channels = _ome_meta(tif, axes)
        elif tif.is_imagej and tif.imagej_metadata is not None:
            fmt = "imagej-tiff"
            scale, units, channels = _imagej_meta(tif, tif.imagej_metadata)
        else:
            scale, units = _plain_meta(tif)
    if axes is not None:
        scale = {a: v for a, v in scale.items() if a in axes}
        units = {a: v for a, v in units.items() if a in scale}
        n_c = series.shape[axes.index("C")] if "C" in axes else 1
        if len(channels) != n_c:
            channels = ()
    z = zarr.open(tifffile.imread(p, aszarr=True), mode="r")
    if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
        z = z["0"]
    meta = ImageMeta(axes=axes, scale=scale, units=units, channels=channels, source_format=fmt)
    return ImageSource(z, axes, meta)


def stored_tiff_fingerprint(path) -> dict | None:
    """The run fingerprint a napari-mirnet TIFF records (OME MapAnnotation, ImageJ key, or JSON description)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        text = None
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            try:
                root = ET.fromstring(tif.ome_metadata)
            except ET.ParseError:
                return None
            for el in root.iter():
                if el.tag.endswith("MapAnnotation") and el.get("Namespace") == NAMESPACE:
                    for m in el.iter():
                        if m.tag.endswith("}M") and m.get("K") == _KEY:
                            text = m.text
        elif tif.is_imagej and tif.imagej_metadata:
            text = tif.imagej_metadata.get(_KEY)
        elif tif.shaped_metadata:  # files written before OME output (tifffile's JSON description)
            text = tif.shaped_metadata[0].get(_KEY)
    return json.loads(text) if text else None


_KEY = "napari_mirnet"  # == store.ATTR, kept here so that reading a TIFF needs no zarr store module


# ------------------------------------------------------------------------------------------ writing
class _Layout:
    """How an array of our axes is laid out in the file: tifffile's axis letters, transposition, RGB."""

    def __init__(self, shape: tuple, dtype: np.dtype, axes: str):
        self.rgb = axes.endswith("C") and shape[-1] in (3, 4)
        order = "TZYXC" if self.rgb else "TZCYX"
        self.axes = "".join(a for a in order if a in axes)
        self.perm = tuple(axes.index(a) for a in self.axes)
        self.shape = tuple(shape[i] for i in self.perm)
        self.letters = self.axes[:-1] + "S" if self.rgb else self.axes  # tifffile: interleaved samples are S
        self.n_lead = len(self.shape) - (3 if self.rgb else 2)
        self.dtype = dtype

    @property
    def plane(self) -> tuple[int, int]:
        return self.shape[self.n_lead], self.shape[self.n_lead + 1]

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1


def _imagej_problem(layout: _Layout) -> str | None:
    """Why ImageJ cannot hold this result (None: it can)."""
    if layout.dtype not in (np.uint8, np.uint16, np.float32):
        return f"ImageJ holds 8-bit, 16-bit and 32-bit float images, not {layout.dtype}"
    if layout.rgb and (layout.dtype != np.uint8 or layout.shape[-1] != 3):
        return "ImageJ holds RGB only as 8-bit, 3 samples"
    if math.prod(layout.plane) >= 2**31:  # ImageJ keeps a plane in one Java array
        return f"ImageJ holds planes of fewer than 2**31 pixels, not {layout.plane[0]} x {layout.plane[1]}"
    nbytes = math.prod(layout.shape) * layout.dtype.itemsize
    if nbytes > _IMAGEJ_MAX:
        return f"ImageJ reads classic TIFF only, which ends at 4 GB (this result is {nbytes / 2**30:.1f} GiB)"
    return None


def _levels(plane: tuple[int, int]) -> int:
    """How many 2x-downsampled levels a plane of this size gets (0: none)."""
    if max(plane) <= PYRAMID_FROM:
        return 0
    n, (h, w) = 0, plane
    while max(h, w) > PYRAMID_TO:
        h, w, n = -(-h // 2), -(-w // 2), n + 1
    return n


def _downsample(a, n_lead: int, rgb: bool):
    """A 2x2 mean of the Y, X axes of a dask array (odd sides keep their last row/column)."""
    import dask.array as da

    y, x = n_lead, n_lead + 1
    pad = [(0, 0)] * a.ndim
    pad[y], pad[x] = (0, a.shape[y] % 2), (0, a.shape[x] % 2)
    if any(p != (0, 0) for p in pad):
        a = da.pad(a, pad, mode="edge")
    # chunks even in Y and X so that coarsen sees whole 2x2 blocks
    a = a.rechunk({y: max(2, (a.chunksize[y] // 2) * 2), x: max(2, (a.chunksize[x] // 2) * 2)})
    dtype = a.dtype
    mean = da.coarsen(np.mean, a.astype(np.float64), {y: 2, x: 2})
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        mean = da.clip(da.round(mean), info.min, info.max)
    return mean.astype(dtype)


def _band_rows(layout: _Layout, tile: int) -> int:
    """Rows of a plane read at once: a multiple of the tile height, at most :data:`_BAND_BYTES`."""
    row = layout.plane[1] * (layout.shape[-1] if layout.rgb else 1) * layout.dtype.itemsize
    return max(tile, (_BAND_BYTES // max(row, 1)) // tile * tile)


def _segments(a, layout: _Layout, tile: int | None):
    """The file's segments in order: whole planes (``tile`` None) or tiles, read band by band from ``a``."""
    lead = a.shape[: layout.n_lead]
    h, w = a.shape[layout.n_lead], a.shape[layout.n_lead + 1]
    band = _band_rows(layout, tile) if tile else h
    for idx in np.ndindex(*lead):
        for y0 in range(0, h, band):
            block = np.asarray(a[idx + (slice(y0, min(h, y0 + band)),)])  # computes one band
            if not tile:
                yield block
                continue
            for ty in range(0, block.shape[0], tile):
                for tx in range(0, w, tile):
                    yield block[ty : ty + tile, tx : tx + tile]


def _ome_metadata(layout: _Layout, meta: ImageMeta, note: str | None, name: str | None) -> dict:
    md = {"axes": layout.letters}
    if name:
        md["Name"] = name
    for a in "XYZ":
        if a in layout.axes and a in meta.scale:
            md[f"PhysicalSize{a}"] = float(meta.scale[a])
            sym = _ome_symbol(meta.units.get(a))
            if sym:
                md[f"PhysicalSize{a}Unit"] = sym
    if "T" in layout.axes and "T" in meta.scale:
        md["TimeIncrement"] = float(meta.scale["T"])
        sym = _ome_symbol(meta.units.get("T"))
        if sym:
            md["TimeIncrementUnit"] = sym
    chans = meta.with_channel_count(layout.n_channels).channels if "C" in layout.axes else meta.channels[:1]
    if not layout.rgb and chans and len(chans) == layout.n_channels:
        names = [c.name or f"Channel {i}" for i, c in enumerate(chans)]
        md["Channel"] = {"Name": names}
        if all(c.color for c in chans):
            md["Channel"]["Color"] = [_color_to_ome(c.color) for c in chans]
    if note:
        md["MapAnnotation"] = {"Namespace": NAMESPACE, "Value": {_KEY: note}}
    return md


def _imagej_metadata(layout: _Layout, meta: ImageMeta, note: str | None) -> tuple[dict, tuple | None]:
    md = {"axes": layout.letters}
    unit = meta.units.get("X") or meta.units.get("Y")
    if unit:
        md["unit"] = _IMAGEJ_UNIT.get(unit) or _ome_symbol(unit) or unit
    if "Z" in layout.axes and "Z" in meta.scale:
        md["spacing"] = float(meta.scale["Z"])
    if "T" in layout.axes and "T" in meta.scale:
        t_unit = meta.units.get("T")
        md["finterval"] = float(meta.scale["T"]) * _TO_SECONDS.get(t_unit, 1.0)  # ImageJ's default: seconds
    chans = meta.with_channel_count(layout.n_channels).channels if "C" in layout.axes else ()
    if not layout.rgb and chans and len(chans) == layout.n_channels:
        if all(c.color for c in chans):
            ramp = np.arange(256, dtype=np.float64) / 255
            md["LUTs"] = [
                np.stack([np.round(ramp * int(c.color[i : i + 2], 16)) for i in (0, 2, 4)]).astype(np.uint8)
                for c in chans
            ]
            md["mode"] = "composite" if len(chans) > 1 else "color"
        if all(c.window for c in chans):
            md["Ranges"] = tuple(float(v) for c in chans for v in c.window)
    if note:
        md[_KEY] = note
    res = None
    if "X" in meta.scale and "Y" in meta.scale:
        res = (1.0 / float(meta.scale["X"]), 1.0 / float(meta.scale["Y"]))
    return md, res


def write_tiff(tmp: Path, arr, axes: str, meta: ImageMeta, note: str | None, *, stored: bool = False) -> None:
    """Write ``arr`` (numpy, zarr or dask) as an OME-TIFF, or ImageJ TIFF for an ImageJ input, at ``tmp``.

    Memory stays bounded: the file is written band by band (ImageJ files plane by plane: ImageJ
    itself holds whole images, and its files end at 4 GB). A dask ``arr`` is computed once: whole
    when small, else into a temporary zarr store beside ``tmp`` (removed afterwards), unless
    ``stored`` says it already reads from storage (the CLI's resumable store). Pyramid levels are
    computed from the written full-resolution data, never from a second run of the graph.
    """
    import dask.array as da
    import tifffile

    layout = _Layout(tuple(arr.shape), np.dtype(arr.dtype), axes)
    imagej = meta.source_format == "imagej-tiff"
    if imagej:
        problem = _imagej_problem(layout)
        if problem:
            shown = Path(tmp).name.removeprefix(".").removesuffix(".partial")  # the name the file will have
            warnings.warn(f"{shown}: written as OME-TIFF, not ImageJ TIFF: {problem}", stacklevel=3)
            imagej = False
    nbytes = math.prod(layout.shape) * layout.dtype.itemsize
    work = Path(tmp).with_name(Path(tmp).name + ".levels.zarr")
    try:
        if isinstance(arr, da.Array) and not stored:
            if nbytes <= _SMALL_BYTES:
                arr = arr.compute()
            else:  # compute once, to disk: the file and its pyramid are then read from there
                arr.to_zarr(str(work), component="0", overwrite=True)
                arr = da.from_zarr(str(work), component="0")
        a = arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=_chunks(arr))
        a = a.transpose(layout.perm) if layout.perm != tuple(range(a.ndim)) else a
        if imagej:
            md, res = _imagej_metadata(layout, meta, note)
            with tifffile.TiffWriter(tmp, imagej=True) as tw:
                tw.write(
                    _segments(a, layout, None),
                    shape=layout.shape,
                    dtype=layout.dtype,
                    photometric="rgb" if layout.rgb else "minisblack",
                    compression="zlib",
                    predictor=layout.dtype.kind in "iu",
                    resolution=res,
                    metadata=md,
                )
            return
        _write_ome(tmp, a, layout, meta, note, work, nbytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _chunks(arr) -> tuple:
    chunks = getattr(arr, "chunks", None)
    return tuple(chunks) if isinstance(chunks, tuple) and len(chunks) == arr.ndim else "auto"


def _write_ome(tmp: Path, a, layout: _Layout, meta: ImageMeta, note, work: Path, nbytes: int) -> None:
    import dask.array as da
    import tifffile

    tile = TILE if max(layout.plane) > TILE else None
    n_levels = _levels(layout.plane)
    name = Path(meta.name).name if meta.name else None
    opts = dict(
        dtype=layout.dtype,
        photometric="rgb" if layout.rgb else "minisblack",
        compression="zlib",
        predictor=layout.dtype.kind in "iu",  # horizontal differencing: integers only (ImageJ, GDAL, BF read it)
        tile=(tile, tile) if tile else None,
    )
    if tile is None:
        opts["rowsperstrip"] = max(1, (64 * 1024) // max(1, layout.plane[1] * layout.dtype.itemsize))
    # BigTIFF when the file may pass 4 GB (compression may not save us: noise does not compress)
    bigtiff = nbytes * 4 // 3 > 2**32 - 2**25
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tw:
        tw.write(
            _segments(a, layout, tile),
            shape=layout.shape,
            subifds=n_levels or None,
            metadata=_ome_metadata(layout, meta, note, name),
            **opts,
        )
        prev = a
        for level in range(1, n_levels + 1):
            # each level from the one above it, through a temporary store: read once, bounded memory
            down = _downsample(prev, layout.n_lead, layout.rgb)
            down.to_zarr(str(work), component=str(level), overwrite=True)
            prev = da.from_zarr(str(work), component=str(level))
            tw.write(_segments(prev, layout, tile), shape=prev.shape, subfiletype=1, metadata=None, **opts)
