"""OME-Zarr (OME-NGFF): reading multiscale images, and the NGFF metadata our stores are written with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..metadata import RGB_COLOURS, ImageMeta
from .image import ImageSource, axes_from_letters

__all__ = ["multiscales_attrs", "ome_order", "open_zarr", "write_omezarr"]

_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def ome_order(axes: str) -> str:
    """OME-NGFF wants time, channel, then space: T, C, Z, Y, X (those present)."""
    return "".join(a for a in "TCZYX" if a in axes)


def _multiscales(attrs: dict) -> list | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def open_zarr(p: Path) -> ImageSource:
    """A zarr array or an OME-Zarr image group (level 0)."""
    from .store import ATTR

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # zarr raises several types for non-stores
        raise ValueError(f"cannot open {p} as a zarr store ({type(err).__name__}: {err})") from err
    if isinstance(node, zarr.Array):
        return ImageSource(node, None)
    attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if ATTR in attrs and not attrs[ATTR].get("complete", False):
        raise ValueError(f"{p} is an unfinished napari-mirnet output; finish or remove it before reading it")
    if not ms:
        arrays = [k for k, _ in node.arrays()]
        if len(arrays) == 1:
            return ImageSource(node[arrays[0]], None)
        raise ValueError(f"{p} is a zarr group without OME-NGFF multiscales metadata; point at one array")
    m = ms[0]
    ds = m["datasets"][0]
    axes_meta = m.get("axes")
    axes = None
    units = {}
    if axes_meta:
        names = [(a["name"] if isinstance(a, dict) else a).upper() for a in axes_meta]
        axes = axes_from_letters("".join(n[0] for n in names))
        if axes:
            units = {a: d["unit"] for a, d in zip(axes, axes_meta) if isinstance(d, dict) and d.get("unit")}
    scale, translation = {}, {}
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale" and axes:
            scale = dict(zip(axes, (float(v) for v in t["scale"])))
        if t.get("type") == "translation" and axes:
            translation = dict(zip(axes, (float(v) for v in t["translation"])))
    meta = ImageMeta(axes=axes, scale=scale, units=units, translation=translation, source_format="ome-zarr")
    return ImageSource(node[ds["path"]], axes, meta)


def multiscales_attrs(axes: str, meta: ImageMeta, name: str = "restored", n_channels: int | None = None) -> dict:
    """The ``ome`` attributes (NGFF 0.5) of a single-level image at path '0' with axes ``axes``."""
    axes_json = []
    for a in axes:
        entry = {"name": a.lower(), "type": _AXIS_TYPES[a]}
        if a in meta.units and a != "C":
            entry["unit"] = meta.units[a]
        axes_json.append(entry)
    transforms = [{"type": "scale", "scale": [float(meta.scale.get(a, 1.0)) for a in axes]}]
    if any(meta.translation.get(a, 0.0) for a in axes):
        transforms.append({"type": "translation", "translation": [float(meta.translation.get(a, 0.0)) for a in axes]})
    ome = {
        "version": "0.5",
        "multiscales": [
            {"name": name, "axes": axes_json, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
        ],
    }
    omero = _omero(meta, n_channels)
    if omero is not None:
        ome["omero"] = omero
    return ome


def _omero(meta: ImageMeta, n_channels: int | None) -> dict | None:
    """The ``omero`` channel block: the file's channels, else red/green/blue for an RGB image."""
    chans = list(meta.channels)
    if not chans and n_channels == 3:
        return {"channels": [{"label": n, "color": c, "active": True} for n, c in zip("RGB", RGB_COLOURS)]}
    if not chans:
        return None
    out = []
    for i, c in enumerate(chans):
        entry = {"label": c.name or f"channel {i}", "active": True}
        if c.color:
            entry["color"] = c.color
        if c.window:
            entry["window"] = {"start": float(c.window[0]), "end": float(c.window[1])}
        out.append(entry)
    return {"channels": out}


def write_omezarr(tmp: Path, arr, axes: str, meta: ImageMeta, name: str) -> None:
    """Write a whole (small) image as an OME-Zarr store at ``tmp``."""
    order = ome_order(axes)
    data = np.transpose(np.asarray(arr), [axes.index(a) for a in order])
    g = zarr.create_group(str(tmp), zarr_format=3, overwrite=True)
    g.create_array("0", data=data, dimension_names=[a.lower() for a in order])
    n_c = data.shape[order.index("C")] if "C" in order else None
    g.attrs["ome"] = multiscales_attrs(order, meta, name=name, n_channels=n_c)
