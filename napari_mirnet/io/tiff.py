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

from ..metadata import ImageMeta
from .errors import OutputError
from .image import ImageSource, axes_from_letters
from .record import ATTR
from .tiff_meta import as_seen, fit_to_axes, imagej_meta, ome_meta, one_series, oriented, plain_meta, sample_channels
from .units import normalise_unit, ome_symbol, to_seconds

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


def _color_to_ome(color: str) -> int:
    v = int(color[:6] + "FF", 16)
    return v - 2**32 if v >= 2**31 else v


# ------------------------------------------------------------------------------------------ reading
def open_tiff(p: Path, remote=None) -> ImageSource:
    """A TIFF's image, read region by region through tifffile's zarr store, with its metadata.

    A file of several images (pages of different sizes, OME images) is refused with their list:
    taking the first alone would drop the others without a word. Pixels are given as they look:
    a min-is-white file is inverted, a palette file becomes RGB; CMYK and CIELab are refused.
    ``remote`` (io.remote_tiff.RemoteTiff) reads a file at a URL; ``p`` then only names it.
    """
    import tifffile
    import zarr

    with tifffile.TiffFile(p if remote is None else remote.handle()) as tif:
        index = one_series(tif, p)
        series = tif.series[index]
        page = series.pages[0] if series.pages else tif.pages.first
        axes = axes_from_letters(series.axes)
        fields: dict = {}
        fmt = "tiff"
        if tif.is_ome and tif.ome_metadata:
            fmt = "ome-tiff"
            fields = ome_meta(tif)
        elif tif.is_imagej and tif.imagej_metadata is not None:
            fmt = "imagej-tiff"
            fields = dict(zip(("scale", "units", "channels"), imagej_meta(tif, tif.imagej_metadata)))
        else:
            fields = dict(zip(("scale", "units"), plain_meta(tif)))
        photometric, extras = int(page.photometric), tuple(int(e) for e in page.extrasamples or ())
        colormap = page.colormap if photometric == 3 else None
        orientation = int(page.tags["Orientation"].value) if "Orientation" in page.tags else 1
    z = zarr.open(tifffile.imread(p, aszarr=True, series=index), mode="r") if remote is None else remote.array(index)
    if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
        z = z["0"]
    z, axes = as_seen(z, axes, photometric, colormap, p)
    z, fields = oriented(z, axes, orientation, fields, p)
    if axes is not None:
        fields = fit_to_axes(fields, axes, z.shape)
        last = axes.endswith("C")  # planar RGB (C first) says it is colour by photometric alone (issue 36, 17)
        if not fields.get("channels") and "C" in axes and ((extras and last) or (photometric == 2 and not last)):
            fields["channels"] = sample_channels(photometric, extras, z.shape[axes.index("C")])
    meta = ImageMeta(axes=axes, source_format=fmt, **fields)
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
                        if m.tag.endswith("}M") and m.get("K") == ATTR:
                            text = m.text
        elif tif.is_imagej and tif.imagej_metadata:
            text = tif.imagej_metadata.get(ATTR)
        elif tif.shaped_metadata:  # files written before OME output (tifffile's JSON description)
            text = tif.shaped_metadata[0].get(ATTR)
    return json.loads(text) if text else None


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
        md["MapAnnotation"] = {"Namespace": NAMESPACE, "Value": {ATTR: note}}
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
        md[ATTR] = note
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
