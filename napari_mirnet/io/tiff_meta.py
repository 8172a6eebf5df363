"""Reading a TIFF's meaning: OME-XML, ImageJ and plain-TIFF metadata; which image, and how its pixels look.

A file of several images is refused with their list; metadata that does not fit the pages is
refused (tifffile would guess, or zero the missing planes); min-is-white and palette pixels are
turned into what viewers show; ExtraSamples say which channel is alpha. Units become OME-NGFF
names (:mod:`.units`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..metadata import Channel
from .units import UnitError, from_ome, normalise_unit, to_meters

__all__ = [
    "as_seen",
    "fit_to_axes",
    "imagej_meta",
    "ome_meta",
    "one_series",
    "oriented",
    "plain_meta",
    "sample_channels",
]


def _color_from_ome(value) -> str | None:
    """``RRGGBB`` from an OME Color (a signed 32-bit RGBA integer)."""
    try:
        v = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    return f"{v >> 8:06X}"


def _positive(x) -> float | None:
    """``x`` as a finite positive number, else None (metadata may hold text, 0, inf or NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def ome_meta(tif) -> dict:
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
        if size is None:
            continue
        if _positive(size) is None:
            warnings.warn(f"{shown}: {key} {size!r} is left out: not a positive number", stacklevel=4)
            continue
        try:
            value, unit = from_ome(_positive(size), pixels.get(key + "Unit", default))
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
    first = [p for p in planes if all(str(p.get(k, 0)).strip() in ("0", "") for k in ("TheC", "TheZ", "TheT"))]
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


def imagej_meta(tif, ij: dict) -> tuple[dict, dict, tuple[Channel, ...]]:
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
    if _positive(ij.get("spacing")):
        scale["Z"] = _positive(ij["spacing"])
        if unit:
            units["Z"] = normalise_unit(ij.get("zunit")) or unit
    if _positive(ij.get("finterval")):
        scale["T"] = _positive(ij["finterval"])
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


def plain_meta(tif) -> tuple[dict, dict]:
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


def fit_to_axes(fields: dict, axes: str, shape: tuple) -> dict:
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


def one_series(tif, p: Path):
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


def as_dask(z):
    """A zarr array (or a remote array with ``chunks``, io.retry.RetryArray) as a dask array of its chunks."""
    import dask.array as da
    import zarr

    return da.from_zarr(z) if isinstance(z, zarr.Array) else da.from_array(z, chunks=z.chunks)


def as_seen(z, axes: str | None, photometric: int, colormap, p: Path):
    """The pixels as a viewer shows them: min-is-white inverted, palette indices looked up (lazily, with dask)."""

    if photometric == 0 and np.dtype(z.dtype).kind == "u":  # min-is-white: 0 is white
        top = np.iinfo(z.dtype).max
        return top - as_dask(z), axes
    if photometric == 3 and colormap is not None and axes == "YX":
        lut = np.asarray(colormap).T  # (entries, 3)
        if np.all(lut % 257 == 0):  # 8-bit colours stored as 16 (tifffile, libtiff write them so)
            lut = (lut // 257).astype(np.uint8)
        d = as_dask(z)
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


def sample_channels(photometric: int, extras: tuple[int, ...], n: int) -> tuple[Channel, ...]:
    """Channel roles from TIFF ExtraSamples: colour samples first, then alpha (1, 2) or other bands (0)."""
    colours = [Channel(color=c) for c in ("FF0000", "00FF00", "0000FF")] if photometric == 2 else [Channel()]
    chans = colours + [Channel(alpha=e in (1, 2)) for e in extras]
    return tuple(chans) if len(chans) == n and any(c.alpha or c.color for c in chans) else ()


def oriented(z, axes: str | None, orientation: int, fields: dict, p: Path):
    """A 2-D image turned by its TIFF Orientation tag (EXIF's values), lazily; pixel sizes follow X and Y."""
    if orientation in (0, 1) or axes not in ("YX", "YXC"):
        return z, fields
    import dask.array as da

    from .pictures import exif_orient

    out = exif_orient(z if isinstance(z, da.Array) else as_dask(z), orientation)
    fields = dict(fields)
    if fields.get("translation"):  # the first pixel is another corner now
        warnings.warn(f"{p.name}: the position of the first pixel is left out: the image is turned", stacklevel=4)
        fields["translation"] = {}
    if orientation >= 5:  # rows and columns swap
        swap = {"X": "Y", "Y": "X"}
        for key in ("scale", "units"):
            fields[key] = {swap.get(a, a): v for a, v in fields.get(key, {}).items()}
    return out, fields
