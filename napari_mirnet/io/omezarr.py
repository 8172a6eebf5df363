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
The attributes written (multiscales, omero channels, GeoZarr) come from :mod:`.ngff`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metadata import Channel, ImageMeta
from .image import ImageSource, axes_from_letters
from .ngff import channel_windows, geo_attrs, multiscales_attrs, ome_order
from .record import ATTR
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


#: Levels are added until the larger of Y and X is at most this (a screenful: one overview tile).
PYRAMID_MIN = 512
#: napari's builtin reader sorts level names as strings ('10' < '2'): never more than ten levels.
MAX_LEVELS = 10


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


def _bioformats2raw_image(name, node):
    """Image series 0 of a bioformats2raw root (other series: point at ``root.zarr/<n>``); ``name``
    (a path or a URL's printable form) names it in messages."""
    series = None
    try:
        series = dict(node["OME"].attrs).get("series")
    except Exception:
        pass
    first = str(series[0]) if series else "0"
    try:
        image = node[first]
    except KeyError:
        raise ValueError(
            f"{name} is a bioformats2raw root without image series {first!r}; point at a series folder"
        ) from None
    joined = name / first if isinstance(name, Path) else f"{str(name).rstrip('/')}/{first}"
    return joined, image, (len(series) if series else sum(1 for _ in node.group_keys()))


def open_zarr(p: Path, level=None) -> ImageSource:
    """A zarr array, an OME-Zarr image (``level``: index or dataset path; default 0), or a level path."""
    import zarr

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
    return image_of_group(p, node, level)


def image_of_group(name, node, level=None) -> ImageSource:
    """The image of an opened zarr group (local or at a URL): an OME-Zarr's level (``level``: index
    or dataset path; default 0), a bioformats2raw root's first series, or a group's one array.
    ``name`` (a path, or a redacted URL) names it in messages."""
    attrs = dict(node.attrs)
    if ATTR in attrs and not attrs[ATTR].get("complete", False):
        raise ValueError(f"{name} is an unfinished napari-mirnet output; finish or remove it before reading it")
    if "bioformats2raw.layout" in attrs and not _multiscales(attrs):
        name, node, _ = _bioformats2raw_image(name, node)
        attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if not ms:
        arrays = [k for k, _ in node.arrays()]
        if len(arrays) == 1 and level is None:
            return ImageSource(node[arrays[0]], None)
        raise ValueError(f"{name} is a zarr group without OME-NGFF multiscales metadata; point at one array")
    index = _pick_level(name, node, ms[0], level)
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
