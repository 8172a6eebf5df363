"""The OME-NGFF 0.5 and GeoZarr attributes an image is written with: axes, pyramid transforms, channels, CRS.

Used by the whole-file OME-Zarr writer (:mod:`.omezarr`) and the resumable store (:mod:`.store`),
so that both describe their pyramids alike.
"""

from __future__ import annotations

import numpy as np

from ..metadata import RGB_COLOURS, Channel, ImageMeta

__all__ = ["GEO_CONVENTIONS", "channel_windows", "geo_attrs", "multiscales_attrs", "ome_order"]

_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def ome_order(axes: str) -> str:
    """OME-NGFF wants time, channel, then space: T, C, Z, Y, X (those present)."""
    return "".join(a for a in "TCZYX" if a in axes)


def multiscales_attrs(
    axes: str,
    meta: ImageMeta,
    name: str = "restored",
    n_channels: int | None = None,
    levels: int = 1,
    windows: list | None = None,
    dtype=None,
) -> dict:
    """The ``ome`` attributes (NGFF 0.5) of an image with ``levels`` levels at paths '0', '1', ...

    Level k halves Y and X k times: its scale is 2**k that of level 0, its translation moves by
    ``(2**k - 1) / 2`` level-0 pixels (the centre of the block it averages).
    """
    axes_json = []
    for a in axes:
        entry = {"name": a.lower(), "type": _AXIS_TYPES[a]}
        if a in meta.units and a != "C":
            entry["unit"] = meta.units[a]
        axes_json.append(entry)
    datasets = []
    base = [1.0 if a == "C" else float(meta.scale.get(a, 1.0)) for a in axes]
    shift0 = [0.0 if a == "C" else float(meta.translation.get(a, 0.0)) for a in axes]
    for k in range(levels):
        f = [2.0**k if a in "YX" else 1.0 for a in axes]
        scale = [s * g for s, g in zip(base, f)]
        shift = [t + (g - 1) / 2 * s for t, g, s in zip(shift0, f, base)]
        transforms = [{"type": "scale", "scale": scale}]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    ome = {"version": "0.5", "multiscales": [{"name": name, "axes": axes_json, "datasets": datasets}]}
    omero = _omero(meta, n_channels, windows, dtype, name)
    if omero is not None:
        ome["omero"] = omero
    return ome


def _omero(meta: ImageMeta, n_channels: int | None, windows: list | None, dtype, name: str) -> dict | None:
    """The ``omero`` block: the input's channels, else red/green/blue (RGB) or white; windows from the data."""
    n = n_channels or 1
    chans = list(meta.channels) if len(meta.channels) == n else []
    if not chans:
        if n == 3:
            chans = [Channel(name=c, color=col) for c, col in zip("RGB", RGB_COLOURS)]
            if dtype is not None and np.dtype(dtype).kind in "iu":
                windows = None  # a colour photo: the full range keeps its colour balance
        elif n == 1 and not n_channels:
            chans = [Channel(name=name, color="FFFFFF")]
        else:
            chans = [Channel(name=f"channel {i}", color="FFFFFF") for i in range(n)]
    lo, hi = _dtype_range(dtype, windows)
    out = []
    for i, c in enumerate(chans):
        if c.window:
            start, end = c.window
        elif windows and i < len(windows):
            start, end = windows[i]
        else:
            start, end = lo, hi
        out.append(
            {
                "label": c.name or f"channel {i}",
                "color": (c.color or "FFFFFF").upper(),
                "active": True,
                "window": {
                    "min": float(min(lo, start)),
                    "max": float(max(hi, end)),
                    "start": float(start),
                    "end": float(end),
                },
            }
        )
    return {"channels": out, "version": "0.5"} if out else None


def _dtype_range(dtype, windows) -> tuple[float, float]:
    if dtype is not None and np.dtype(dtype).kind in "iu":
        info = np.iinfo(np.dtype(dtype))
        return float(info.min), float(info.max)
    if windows:
        return float(min(w[0] for w in windows)), float(max(w[1] for w in windows))
    return 0.0, 1.0


def channel_windows(arr, axes: str, nodata: float | None = None) -> list[tuple[float, float]]:
    """Per channel, the 0.1-99.9 percentile range of a (small) level: a contrast window to open with.

    ``nodata`` pixels (and NaN) are left out: a DEM's -9999 is no elevation to open the display at.
    """
    # planes of T and Z sampled so that a long stack's smallest level is never read whole
    lead = [i for i, a in enumerate(axes) if a in "TZ"]
    plane = int(np.prod([n for i, n in enumerate(arr.shape) if i not in lead]))
    idx = [slice(None)] * len(axes)
    budget = max(1, 4_000_000 // max(plane, 1))
    for i in lead:
        step = max(1, -(-arr.shape[i] // budget))
        idx[i] = slice(None, None, step)
        budget = max(1, budget // -(-arr.shape[i] // step))
    a = np.asarray(arr[tuple(idx)])
    if "C" in axes:
        a = np.moveaxis(a, axes.index("C"), 0).reshape(a.shape[axes.index("C")], -1)
    else:
        a = a.reshape(1, -1)
    out = []
    for ch in a.astype(np.float64):
        ch = ch[np.isfinite(ch)]
        if nodata is not None and not np.isnan(nodata):
            ch = ch[ch != float(np.asarray(nodata).astype(a.dtype))]
        if ch.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(ch, [0.1, 99.9])
        out.append((float(lo), float(hi if hi > lo else lo + 1)))
    return out


#: GeoZarr conventions (zarr-conventions/proj and /spatial) the georeferencing attributes follow.
GEO_CONVENTIONS = (
    {
        "name": "proj",
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
        "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    },
    {
        "name": "spatial",
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
        "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    },
)


def geo_attrs(meta: ImageMeta, shape: tuple, level: int = 0, *, order: str | None = None, group: bool = True) -> dict:
    """GeoZarr attributes of a georeferenced image (a GeoTIFF's CRS and transform); {} for others.

    ``proj:wkt2`` / ``proj:code`` (the CRS) and ``spatial:transform`` (the affine of ``level``:
    level k's pixels are 2**k level-0 pixels from the same corner), after the zarr-conventions
    ``proj`` and ``spatial``; on arrays (``group=False``) also GDAL's ``_CRS``. ``shape`` is the
    level's shape (``order`` its axes, else the last two are Y, X).
    """
    geo = meta.geo
    if geo is None or geo.gcps or not geo.crs:
        return {}  # ground control points have no affine; they stay in GeoTIFF outputs
    a, b, c, d, e, f = geo.transform[:6]
    k = 2.0**level
    h, w = (shape[order.index("Y")], shape[order.index("X")]) if order else shape[-2:]
    wkt2, code = _crs_texts(geo.crs)
    out = {
        "proj:wkt2": wkt2,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [a * k, b * k, c, d * k, e * k, f],
        "spatial:shape": [int(h), int(w)],
    }
    if code:
        out["proj:code"] = code
    if group:
        out["zarr_conventions"] = [dict(c) for c in GEO_CONVENTIONS]
    else:
        out["_CRS"] = {"wkt": geo.crs}  # what GDAL's Zarr driver reads
    return out


def _crs_texts(crs: str) -> tuple[str, str | None]:
    """The CRS as WKT2 and as 'EPSG:32618' (None without an authority code), through rasterio's GDAL.

    Only GeoTIFF inputs carry a CRS, and they were read with rasterio.
    """
    from rasterio.crs import CRS

    c = CRS.from_user_input(crs)
    auth = c.to_authority()
    return c.to_wkt(version="WKT2_2019"), (f"{auth[0]}:{auth[1]}" if auth else None)
