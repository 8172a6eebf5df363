"""OME-Zarr (OME-NGFF): reading multiscale images (0.4 and 0.5), writing 0.5 pyramids and their metadata.

Reading takes NGFF 0.4 (``multiscales`` at the top of the attributes, zarr v2 or v3) and 0.5
(under ``ome``), a bioformats2raw root (image series 0, or the series folder given), a path that
points at one level of a pyramid (``image.zarr/s2``), or a ``level`` of a pyramid. Axes, units,
the per-level scale and translation (dataset and multiscale transforms composed) and the
``omero`` channels become the :class:`~napari_mirnet.metadata.ImageMeta` of the level read.

Writing: NGFF 0.5 with a pyramid. Each level halves Y and X of the one above (Z, T and C are
kept) by the **mean** of each 2x2 block: results are intensities, and the mean keeps the
average brightness and photometry of every region (a strided pick would alias noise and
single-pixel features into the overview; a median or mode suits labels, which these are not).
An odd edge averages the pixels there are (the last row/column is repeated), so level k has
``ceil(n / 2**k)`` pixels. Pixel centres: a level-k pixel is the mean of 2**k level-0 pixels, so
its centre lies ``(2**k - 1) / 2`` level-0 pixels past theirs, which is the translation written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metadata import RGB_COLOURS, Channel, ImageMeta
from .image import ImageSource, axes_from_letters
from .units import normalise_unit

__all__ = [
    "PYRAMID_MIN",
    "downsample2",
    "level_meta",
    "multiscales_attrs",
    "ome_order",
    "open_zarr",
    "pyramid_levels",
    "write_omezarr",
]

_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}

#: Levels are added until the larger of Y and X is at most this (a screenful: one overview tile).
PYRAMID_MIN = 512
#: napari's builtin reader sorts level names as strings ('10' < '2'): never more than ten levels.
MAX_LEVELS = 10


def ome_order(axes: str) -> str:
    """OME-NGFF wants time, channel, then space: T, C, Z, Y, X (those present)."""
    return "".join(a for a in "TCZYX" if a in axes)


# --------------------------------------------------------------------------------------- reading
def _multiscales(attrs: dict) -> list | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _omero_block(attrs: dict) -> dict | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "omero" in ome:
        return ome["omero"]
    return attrs.get("omero")


def _open_node(p: Path):
    import zarr

    try:
        return zarr.open(str(p), mode="r")
    except Exception as err:  # zarr raises several types for non-stores
        raise ValueError(f"cannot open {p} as a zarr store ({type(err).__name__}: {err})") from err


def _axes_of(m: dict, ndim: int) -> tuple[str | None, dict]:
    """Our axis letters and units from a multiscales entry (0.3: names only; 0.1/0.2: TCZYX)."""
    axes_meta = m.get("axes")
    if not axes_meta:
        return ("TCZYX" if ndim == 5 else None), {}
    letters = []
    for a in axes_meta:
        name = (a.get("name", "") if isinstance(a, dict) else str(a)).upper()
        kind = a.get("type") if isinstance(a, dict) else None
        if name in ("T", "C", "Z", "Y", "X"):
            letters.append(name)
        elif kind == "channel":
            letters.append("C")
        elif kind == "time":
            letters.append("T")
        else:
            letters.append(name[:1] or "?")
    axes = axes_from_letters("".join(letters))
    units = {}
    if axes:
        # symbols ('nm', 'µm') are not NGFF, but written: kept as the unit they name, not dropped later
        units = {
            a: normalise_unit(d["unit"]) or d["unit"]
            for a, d in zip(axes, axes_meta)
            if isinstance(d, dict) and d.get("unit")
        }
    return axes, units


def _transform(transforms: list, n: int) -> tuple[list[float], list[float]]:
    scale, shift = [1.0] * n, [0.0] * n
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = [float(v) for v in t["scale"]]
            scale = [a * b for a, b in zip(scale, s)]
            shift = [a * b for a, b in zip(shift, s)]
        elif t.get("type") == "translation" and "translation" in t:
            shift = [a + float(b) for a, b in zip(shift, t["translation"])]
    return scale, shift


def level_meta(attrs: dict, index: int, ndim: int) -> ImageMeta:
    """The metadata of dataset ``index`` of the (first) multiscale image in ``attrs``."""
    m = _multiscales(attrs)[0]
    axes, units = _axes_of(m, ndim)
    ds = m["datasets"][index]
    # dataset transforms first, then the multiscale-wide ones (NGFF), composed into one scale + shift
    scale, shift = _transform(ds.get("coordinateTransformations"), ndim)
    scale, shift = _transform(
        [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]
        + list(m.get("coordinateTransformations") or []),
        ndim,
    )
    channels = ()
    omero = _omero_block(attrs)
    if isinstance(omero, dict) and isinstance(omero.get("channels"), list):
        chans = []
        for c in omero["channels"]:
            win = c.get("window") or {}
            window = (float(win["start"]), float(win["end"])) if "start" in win and "end" in win else None
            color = c.get("color")
            chans.append(Channel(name=c.get("label"), color=str(color).upper() if color else None, window=window))
        channels = tuple(chans)
    if not axes:
        return ImageMeta(channels=channels, source_format="ome-zarr", name=m.get("name"))
    keep_scale = {a: v for a, v in zip(axes, scale) if a != "C"}
    keep_shift = {a: v for a, v in zip(axes, shift) if a != "C" and v != 0.0}
    if all(v == 1.0 for v in keep_scale.values()) and not units:
        keep_scale = {}  # the default unit scale says nothing about pixel size
    return ImageMeta(
        axes=axes,
        scale=keep_scale,
        units=units,
        translation=keep_shift,
        channels=channels,
        source_format="ome-zarr",
        name=m.get("name"),
    )


def _levels_text(group, m: dict) -> str:
    out = []
    for i, ds in enumerate(m["datasets"]):
        try:
            shape = "x".join(str(n) for n in group[ds["path"]].shape)
        except Exception:
            shape = "missing"
        out.append(f"{i} ('{ds['path']}', {shape})")
    return ", ".join(out)


def _pick_level(p: Path, group, m: dict, level) -> int:
    paths = [str(ds["path"]) for ds in m["datasets"]]
    if level is None:
        return 0
    if isinstance(level, str) and level in paths:
        return paths.index(level)
    try:
        i = int(level)
    except (TypeError, ValueError):
        i = None
    if i is not None and not isinstance(level, bool) and -len(paths) <= i < len(paths):
        return i % len(paths)
    raise ValueError(
        f"level={level!r} is not a level of {p}: its levels are {_levels_text(group, m)}; "
        "pass level= an index (0 is full resolution) or a dataset path"
    )


def _find_parent_multiscales(p: Path):
    """For a path inside a pyramid (``image.zarr/s2``): the image group, its attributes and the level index."""
    import zarr

    here = p.resolve()
    for parent in list(here.parents)[:3]:
        try:
            g = zarr.open_group(str(parent), mode="r")
        except Exception:
            continue
        attrs = dict(g.attrs)
        ms = _multiscales(attrs)
        if not ms:
            continue
        rel = here.relative_to(parent).as_posix()
        for i, ds in enumerate(ms[0].get("datasets", [])):
            if str(ds.get("path")).strip("/") == rel:
                return g, attrs, i
    return None


def _bioformats2raw_image(p: Path, node):
    """Image series 0 of a bioformats2raw root (other series: point at ``root.zarr/<n>``)."""
    import zarr

    series = None
    try:
        series = dict(zarr.open_group(str(p / "OME"), mode="r").attrs).get("series")
    except Exception:
        pass
    first = str(series[0]) if series else "0"
    try:
        image = node[first]
    except KeyError:
        raise ValueError(
            f"{p} is a bioformats2raw root without image series {first!r}; point at a series folder"
        ) from None
    return p / first, image, (len(series) if series else sum(1 for _ in node.group_keys()))


def open_zarr(p: Path, level=None) -> ImageSource:
    """A zarr array, an OME-Zarr image (``level``: index or dataset path; default 0), or a level path."""
    import zarr

    from .store import ATTR

    node = _open_node(p)
    if isinstance(node, zarr.Array):
        found = _find_parent_multiscales(p)
        if found is None:
            if level is not None:
                raise ValueError(f"{p} is a single zarr array without pyramid levels; leave level= out")
            return ImageSource(node, None)
        group, attrs, index = found
        if level is not None and _pick_level(p.parent, group, _multiscales(attrs)[0], level) != index:
            raise ValueError(
                f"{p} is level {index} of an OME-Zarr image already; pass the image folder with level=, or leave "
                "level= out"
            )
        meta = level_meta(attrs, index, node.ndim)
        return ImageSource(node, meta.axes, meta)
    attrs = dict(node.attrs)
    if ATTR in attrs and not attrs[ATTR].get("complete", False):
        raise ValueError(f"{p} is an unfinished napari-mirnet output; finish or remove it before reading it")
    if "bioformats2raw.layout" in attrs and not _multiscales(attrs):
        p, node, _ = _bioformats2raw_image(p, node)
        attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if not ms:
        arrays = [k for k, _ in node.arrays()]
        if len(arrays) == 1 and level is None:
            return ImageSource(node[arrays[0]], None)
        raise ValueError(f"{p} is a zarr group without OME-NGFF multiscales metadata; point at one array")
    index = _pick_level(p, node, ms[0], level)
    arr = node[ms[0]["datasets"][index]["path"]]
    meta = level_meta(attrs, index, arr.ndim)
    return ImageSource(arr, meta.axes, meta)


# --------------------------------------------------------------------------------------- writing
def pyramid_levels(ny: int, nx: int) -> int:
    """How many levels an image of ``ny`` x ``nx`` gets: halving until the larger side <= PYRAMID_MIN."""
    n = 1
    while max(ny, nx) > PYRAMID_MIN and n < MAX_LEVELS:
        ny, nx = -(-ny // 2), -(-nx // 2)
        n += 1
    return n


def level_shape(shape, axes: str, k: int) -> tuple[int, ...]:
    """The shape of level ``k``: Y and X divided by 2**k, rounded up."""
    return tuple(-(-n // 2**k) if a in "YX" else n for a, n in zip(axes, shape))


def downsample2(block: np.ndarray, axes: str) -> np.ndarray:
    """Halve Y and X by the mean of 2x2 blocks (an odd edge repeats its last row/column), in the same dtype."""
    a = np.asarray(block)
    iy, ix = axes.index("Y"), axes.index("X")
    pad = [(0, 0)] * a.ndim
    pad[iy], pad[ix] = (0, a.shape[iy] % 2), (0, a.shape[ix] % 2)
    if pad[iy][1] or pad[ix][1]:
        a = np.pad(a, pad, mode="edge")
    shape = list(a.shape)
    shape[ix : ix + 1] = [shape[ix] // 2, 2]
    shape[iy : iy + 1] = [shape[iy] // 2, 2]
    # float32 sums four uint16 values exactly; wider types need float64
    work = np.float32 if a.dtype.itemsize <= 2 or a.dtype == np.float32 else np.float64
    m = a.reshape(shape).astype(work).mean(axis=(iy + 1, ix + 2))
    if a.dtype.kind in "iu":
        m = np.rint(m)
    elif a.dtype.kind == "b":
        m = m >= 0.5
    return m.astype(a.dtype, copy=False)


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


def write_omezarr(tmp: Path, arr, axes: str, meta: ImageMeta, name: str) -> None:
    """Write a whole (small) image as an OME-Zarr 0.5 store with its pyramid at ``tmp``."""
    import zarr

    order = ome_order(axes)
    data = np.transpose(np.asarray(arr), [axes.index(a) for a in order])
    g = zarr.create_group(str(tmp), zarr_format=3, overwrite=True)
    n = pyramid_levels(data.shape[order.index("Y")], data.shape[order.index("X")])
    level = data
    for k in range(n):
        if k:
            level = downsample2(level, order)
        chunks = tuple(1 if a in "TZ" else (s if a == "C" else min(s, 1024)) for a, s in zip(order, level.shape))
        g.create_array(str(k), data=level, chunks=chunks, dimension_names=[a.lower() for a in order])
    n_c = data.shape[order.index("C")] if "C" in order else None
    windows = channel_windows(level, order, meta.nodata)
    for k in range(n):
        g[str(k)].attrs.update(geo_attrs(meta, level_shape(data.shape, order, k), k, group=False))
    g.attrs["ome"] = multiscales_attrs(
        order, meta, name=name, n_channels=n_c, levels=n, windows=windows, dtype=data.dtype
    )
    g.attrs.update(geo_attrs(meta, data.shape, 0, order=order))


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
