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
from .errors import OutputError
from .image import ImageSource, axes_from_letters
from .units import UnitError, from_ome, normalise_unit, ome_symbol, to_meters, to_seconds

__all__ = [
    "NAMESPACE",
    "TILE",
    "PYRAMID_FROM",
    "check_tiff",
    "normalise_unit",
    "open_tiff",
    "stored_tiff_fingerprint",
    "write_tiff",
]

NAMESPACE = "https://github.com/napari-mirnet/fingerprint"  # of our OME MapAnnotation
TILE = 512  # tile side for planes larger than one tile
PYRAMID_FROM = 4096  # planes with a side above this get pyramid levels (sub-IFDs)
PYRAMID_TO = 1024  # ...halved until both sides are at most this
_BAND_BYTES = 64 * 2**20  # at most this much of a result is held at once while writing
_SMALL_BYTES = 512 * 2**20  # a lazy result up to this size is computed whole, larger ones go to a temporary store
_IMAGEJ_MAX = 2**32 - 2**25  # ImageJ reads classic (32-bit offset) TIFF only; keep a margin for the headers

_IMAGEJ_UNIT = {"micrometer": "micron", "microsecond": "us", "angstrom": "A"}  # ASCII spellings ImageJ understands


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
def _ome_meta(tif) -> dict:
    """ImageMeta fields (scale, units, translation, channels, name) from the OME-XML of the file's first image."""
    import tifffile

    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        image = _as_list(ome.get("Image"))[0]
        pixels = image["Pixels"]
    except (KeyError, IndexError, TypeError, ValueError):
        return {}
    scale, units = _ome_sizes(pixels, tif.filehandle.name)
    translation = _ome_positions(pixels, scale, units)
    units.update({a: u for a, u in translation.pop("units").items() if a not in units})
    name = image.get("Name")
    return {
        "scale": scale,
        "units": units,
        "translation": translation,
        "channels": _ome_channels(pixels),
        "name": None if name in (None, "") else str(name),
    }


def _ome_sizes(pixels: dict, shown: str) -> tuple[dict, dict]:
    """Physical pixel sizes and time increment, in NGFF units; a size in an unknown unit is left out, with a warning."""
    scale, units = {}, {}
    # the OME schema's default units: micrometre, second
    keys = [(a, f"PhysicalSize{a}", "µm") for a in "XYZ"] + [("T", "TimeIncrement", "s")]
    for a, key, default in keys:
        size = pixels.get(key)
        if size is None or not float(size) > 0:
            continue
        try:
            value, unit = from_ome(float(size), pixels.get(key + "Unit", default))
        except UnitError as err:
            warnings.warn(f"{shown}: {key} {size} is left out: {err}", stacklevel=4)
            continue
        scale[a] = value
        if unit:
            units[a] = unit
    return scale, units


def _ome_positions(pixels: dict, scale: dict, units: dict) -> dict:
    """The first plane's PositionX/Y/Z as a translation in the units of the pixel sizes (key 'units': those of the rest)."""
    planes = [p for p in _as_list(pixels.get("Plane")) if isinstance(p, dict)]
    first = [p for p in planes if all(int(p.get(k, 0) or 0) == 0 for k in ("TheC", "TheZ", "TheT"))]
    out, own = {}, {}
    for a in "XYZ" if first else "":
        value = first[0].get(f"Position{a}")
        if value is None:
            continue
        try:  # the schema's default unit is the stage's 'reference frame': no physical unit
            value, unit = from_ome(float(value), first[0].get(f"Position{a}Unit", "reference frame"))
        except (UnitError, ValueError):
            continue
        if unit and units.get(a):
            factor = (to_meters(unit) or math.nan) / (to_meters(units[a]) or math.nan)
            if math.isfinite(factor):  # both lengths: in the pixel size's unit
                out[a] = value * factor
        elif unit and a not in scale:
            out[a], own[a] = value, unit
        elif not unit and not units.get(a):  # both without unit: pixels and positions alike
            out[a] = value
    return {**{a: v for a, v in out.items() if v != 0.0}, "units": own}


def _ome_channels(pixels: dict) -> tuple[Channel, ...]:
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
    return tuple(channels)


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
    """A TIFF's image, read region by region through tifffile's zarr store, with its metadata.

    A file of several images (pages of different sizes, OME images) is refused with their list:
    taking the first alone would drop the others without a word. Pixels are given as they look:
    a min-is-white file is inverted, a palette file becomes RGB; CMYK and CIELab are refused.
    """
    import tifffile
    import zarr

    with tifffile.TiffFile(p) as tif:
        index = _one_series(tif, p)
        series = tif.series[index]
        page = series.pages[0] if series.pages else tif.pages.first
        axes = axes_from_letters(series.axes)
        fields: dict = {}
        fmt = "tiff"
        if tif.is_ome and tif.ome_metadata:
            fmt = "ome-tiff"
            fields = _ome_meta(tif)
        elif tif.is_imagej and tif.imagej_metadata is not None:
            fmt = "imagej-tiff"
            fields = dict(zip(("scale", "units", "channels"), _imagej_meta(tif, tif.imagej_metadata)))
        else:
            fields = dict(zip(("scale", "units"), _plain_meta(tif)))
        photometric, extras = int(page.photometric), tuple(int(e) for e in page.extrasamples or ())
        colormap = page.colormap if photometric == 3 else None
    z = zarr.open(tifffile.imread(p, aszarr=True, series=index), mode="r")
    if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
        z = z["0"]
    z, axes = _as_seen(z, axes, photometric, colormap, p)
    if axes is not None:
        fields = _fit_to_axes(fields, axes, z.shape)
        last = axes.endswith("C")  # planar RGB (C first) says it is colour by photometric alone (issue 36, 17)
        if not fields.get("channels") and "C" in axes and ((extras and last) or (photometric == 2 and not last)):
            fields["channels"] = _sample_channels(photometric, extras, z.shape[axes.index("C")])
    meta = ImageMeta(axes=axes, source_format=fmt, **fields)
    return ImageSource(z, axes, meta)


def _fit_to_axes(fields: dict, axes: str, shape: tuple) -> dict:
    """The metadata fields of the axes there are; channel descriptions only when their count fits."""
    out = dict(fields)
    out["scale"] = {a: v for a, v in fields.get("scale", {}).items() if a in axes}
    out["translation"] = {a: v for a, v in fields.get("translation", {}).items() if a in axes}
    kept = set(out["scale"]) | set(out["translation"])
    out["units"] = {a: v for a, v in fields.get("units", {}).items() if a in kept}
    n_c = shape[axes.index("C")] if "C" in axes else 1
    if len(fields.get("channels", ())) != n_c:
        out["channels"] = ()
    return out


def _one_series(tif, p: Path):
    """The file's one image; several (reduced-resolution and mask pages aside) are refused, each named."""
    full = [i for i, s in enumerate(tif.series) if not all(pg.subfiletype & 0b101 for pg in s.pages if pg is not None)]
    for kind in ("ome", "imagej"):
        if getattr(tif, f"is_{kind}") and tif.series and tif.series[0].kind != kind:  # tifffile fell back
            held = tif.series[0]
            raise ValueError(_mismatch(tif, kind, f"its pages hold {' x '.join(map(str, held.shape))} {held.dtype}"))
    missing = sum(pg is None for pg in tif.series[0].pages) if tif.series else 0
    if missing:  # tifffile would fill them with zeros
        kind = "ome" if tif.is_ome else "imagej"
        raise ValueError(_mismatch(tif, kind, f"{missing} of the planes it describes are not in the file"))
    if len(full) <= 1:
        return full[0] if full else 0
    listed = ", ".join(
        f"{'image ' + str(i) if tif.is_ome else 'page ' + str(tif.series[i].pages[0].index)}: "
        + " x ".join(map(str, tif.series[i].shape))
        + f" {tif.series[i].dtype}"
        for i in full[:8]
    )
    more = f" and {len(full) - 8} more" if len(full) > 8 else ""
    raise ValueError(
        f"this TIFF holds {len(full)} images ({listed}{more}); napari-mirnet restores one image per file, "
        "and taking the first alone would drop the others: save each as a file of its own "
        "(e.g. tifffile.imwrite(f'page{i}.tif', tifffile.imread(path, series=i))) and restore those"
    )


def _mismatch(tif, kind: str, held: str) -> str:
    """Why the file's OME-XML or ImageJ description cannot be trusted: what it says, what the file holds."""
    import tifffile

    said = "its ImageJ description"
    try:
        if kind == "ome":
            pix = _as_list(tifffile.xml2dict(tif.ome_metadata)["OME"].get("Image"))[0]["Pixels"]
            said = "its OME-XML describes " + ", ".join(f"{k}={pix.get(k)}" for k in ("SizeT", "SizeC", "SizeZ"))
        else:
            md = tif.imagej_metadata or {}
            said = "its ImageJ description says " + ", ".join(
                f"{k}={md[k]}" for k in ("images", "channels", "slices", "frames") if k in md
            )
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return (
        f"this {'OME-' if kind == 'ome' else 'ImageJ '}TIFF does not match its own metadata: {said}, but {held} "
        f"({len(tif.pages)} pages); which planes are Z, C or T cannot be told, and missing ones are not zeros. "
        "Rewrite it with metadata that fits (e.g. tifffile.imwrite('fixed.tif', "
        f"tifffile.imread(path, is_{kind}=False), metadata={{'axes': 'ZYX'}}) for a Z stack)"
    )


def _as_seen(z, axes: str | None, photometric: int, colormap, p: Path):
    """The pixels as a viewer shows them: min-is-white inverted, palette indices looked up (lazily, with dask)."""
    import dask.array as da

    if photometric == 0 and np.dtype(z.dtype).kind == "u":  # min-is-white: 0 is white
        top = np.iinfo(z.dtype).max
        return top - da.from_zarr(z), axes
    if photometric == 3 and colormap is not None and axes == "YX":
        lut = np.asarray(colormap).T  # (entries, 3)
        if np.all(lut % 257 == 0):  # 8-bit colours stored as 16 (tifffile, libtiff write them so)
            lut = (lut // 257).astype(np.uint8)
        d = da.from_zarr(z)
        rgb = d.map_blocks(lambda b: lut[b], new_axis=2, chunks=d.chunks + ((3,),), dtype=lut.dtype)
        return rgb, "YXC"
    refused = {0: "min-is-white floating point", 3: "palette", 5: "CMYK (separated)", 8: "CIELab", 9: "ICCLab"}
    refused.update({10: "ITULab", 32844: "LogL", 32845: "LogLuv"})
    if photometric in refused:
        raise ValueError(
            f"{p.name} is a {refused[photometric]} TIFF: its values are not gray or RGB intensities, so "
            "restoring them would be wrong; convert it to gray or RGB first (e.g. with PIL: "
            "Image.open(path).convert('RGB').save('rgb.tif'))"
        )
    return z, axes


def _sample_channels(photometric: int, extras: tuple[int, ...], n: int) -> tuple[Channel, ...]:
    """Channel roles from TIFF ExtraSamples: colour samples first, then alpha (1, 2) or other bands (0)."""
    colours = [Channel(color=c) for c in ("FF0000", "00FF00", "0000FF")] if photometric == 2 else [Channel()]
    chans = colours + [Channel(alpha=e in (1, 2)) for e in extras]
    return tuple(chans) if len(chans) == n and any(c.alpha or c.color for c in chans) else ()


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
    for a, key in (("X", "PhysicalSizeX"), ("Y", "PhysicalSizeY"), ("Z", "PhysicalSizeZ"), ("T", "TimeIncrement")):
        if a in layout.axes and a in meta.scale:
            md[key] = float(meta.scale[a])
            sym = ome_symbol(meta.units.get(a))
            if sym:
                md[key + "Unit"] = sym
    planes = _plane_positions(layout, meta)
    if planes:
        md["Plane"] = planes
    chans = meta.with_channel_count(layout.n_channels).channels if "C" in layout.axes else meta.channels[:1]
    if not layout.rgb and chans and len(chans) == layout.n_channels:
        names = [c.name or f"Channel {i}" for i, c in enumerate(chans)]
        md["Channel"] = {"Name": names}
        if all(c.color for c in chans):
            md["Channel"]["Color"] = [_color_to_ome(c.color) for c in chans]
    if note:
        md["MapAnnotation"] = {"Namespace": NAMESPACE, "Value": {_KEY: note}}
    return md


def _plane_positions(layout: _Layout, meta: ImageMeta) -> dict | None:
    """OME Plane PositionX/Y/Z of every plane (the translation: first pixel's centre; Z moves plane by plane)."""
    found = [a for a in "XYZ" if a in layout.axes and a in meta.translation]
    if not found:
        return None
    lead = layout.shape[: layout.n_lead]
    z_of = [0] * math.prod(lead)
    if "Z" in layout.axes[: layout.n_lead]:
        z_of = list(np.unravel_index(np.arange(math.prod(lead)), lead)[layout.axes.index("Z")])
    out = {}
    for a in found:
        step = float(meta.scale.get(a, 1.0)) if a == "Z" else 0.0
        out[f"Position{a}"] = [float(meta.translation[a]) + step * int(k) for k in z_of]
        sym = ome_symbol(meta.units.get(a))
        if sym:
            out[f"Position{a}Unit"] = [sym] * len(z_of)
    return out


def check_tiff(p: Path, dtype, meta: ImageMeta | None) -> None:
    """Refuse, before anything is computed, what an OME-TIFF cannot hold: its data types, units it has no symbol for."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uifb" or dtype.itemsize > 8 or (dtype.kind in "iu" and dtype.itemsize > 4):
        raise OutputError(
            f"{p.name}: OME-TIFF holds 8- to 32-bit integers and 32- or 64-bit floats; this image is {dtype}: "
            "write .zarr, or convert the image (e.g. to float64) first"
        )
    for a, unit in (meta.units if meta else {}).items():
        if unit and ome_symbol(unit) is None:
            raise OutputError(
                f"{p.name}: the unit {unit!r} of axis {a} has no OME-TIFF symbol (OME knows units of length and "
                "time such as nm, µm, mm, s, ms); write .zarr, which keeps any unit, or give the pixel size in one OME knows"
            )


def _imagej_metadata(layout: _Layout, meta: ImageMeta, note: str | None) -> tuple[dict, tuple | None]:
    md = {"axes": layout.letters}
    unit = meta.units.get("X") or meta.units.get("Y")
    if unit:
        md["unit"] = _IMAGEJ_UNIT.get(unit) or ome_symbol(unit) or unit
    if "Z" in layout.axes and "Z" in meta.scale:
        md["spacing"] = float(meta.scale["Z"])
    if "T" in layout.axes and "T" in meta.scale:
        t_unit = meta.units.get("T")
        md["finterval"] = float(meta.scale["T"]) * (to_seconds(t_unit) or 1.0)  # ImageJ's default: seconds
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

    if np.dtype(arr.dtype) == np.float16:  # TIFF readers (OME, ImageJ, GDAL) take float32: every value is kept
        warnings.warn(
            f"{_shown(tmp)}: written as float32 (TIFF readers have no 16-bit float); values unchanged", stacklevel=3
        )
        arr = (arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=_chunks(arr))).astype(np.float32)
    layout = _Layout(tuple(arr.shape), np.dtype(arr.dtype), axes)
    imagej = meta.source_format == "imagej-tiff"
    if imagej:
        problem = _imagej_problem(layout)
        if problem:
            warnings.warn(f"{_shown(tmp)}: written as OME-TIFF, not ImageJ TIFF: {problem}", stacklevel=3)
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


def _shown(tmp: Path) -> str:
    return Path(tmp).name.removeprefix(".").removesuffix(".partial")  # the name the file will have


def _chunks(arr) -> tuple:
    chunks = getattr(arr, "chunks", None)
    return tuple(chunks) if isinstance(chunks, tuple) and len(chunks) == arr.ndim else "auto"


def _write_ome(tmp: Path, a, layout: _Layout, meta: ImageMeta, note, work: Path, nbytes: int) -> None:
    import dask.array as da
    import tifffile

    tile = TILE if max(layout.plane) > TILE else None
    n_levels = _levels(layout.plane)
    name = meta.name  # the input's OME image name, else its file name (io.open_image)
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
