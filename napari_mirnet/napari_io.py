"""napari's File menu for our outputs: open an OME-Zarr image, save an image layer as one (npe2).

A reader of our own because napari's builtin reader shows an OME-Zarr pyramid as one multiscale
image but at scale 1 with no translation or units, and napari-ome-zarr 0.10 drops the translation
and shows an RGB store as three channels. This one gives the layer the store's scale,
translation, units, axis names, channel names, colours and contrast windows; a store whose three
channels are red, green, blue (an RGB image written by us) opens as an RGB layer.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .io import open_image, store_name, write_image
from .io.urls import is_url, redact
from .metadata import RGB_COLOURS, Channel
from .widgets.layers import layer_axes, layer_meta


def write_ome_zarr(path: str, data, attributes: dict) -> list[str]:
    """Save one image layer as an OME-Zarr 0.5 store with its pyramid (the npe2 writer).

    Parameters
    ----------
    path
        Where the ``.zarr`` store goes; an existing store there is replaced as a whole.
    data
        The layer's data (an array, or the levels of a multiscale layer: level 0 is written, and
        the pyramid made again from it). It is read whole into memory (a lazy layer is computed):
        for results larger than memory, choose the widgets' zarr output instead.
    attributes
        The layer's state as napari passes it: ``scale``, ``translate``, ``units``,
        ``axis_labels``, ``rgb``, ``name``, ``contrast_limits``...

    Returns
    -------
    list of str
        The path written.
    """
    if attributes.get("multiscale") or isinstance(data, list | tuple):
        data = data[0]
    rgb = bool(attributes.get("rgb"))
    ndim = np.ndim(data) - (1 if rgb else 0)  # the layer's dims: an RGB layer's colour axis is not one
    layer = SimpleNamespace(
        ndim=ndim,
        rgb=rgb,
        name=attributes.get("name") or "image",
        scale=attributes.get("scale", (1.0,) * ndim),
        translate=attributes.get("translate", (0.0,) * ndim),
        units=attributes.get("units", ()),
        axis_labels=attributes.get("axis_labels", ()),
    )
    axes = layer_axes(layer)
    meta = layer_meta(layer, axes)
    limits = attributes.get("contrast_limits")
    if "C" not in axes and limits is not None:
        # one grey channel: it opens again with the contrast it was saved with
        meta = meta.replace(channels=(Channel(name=layer.name, color="FFFFFF", window=tuple(map(float, limits))),))
    out = write_image(path, np.asarray(data), axes, meta=meta)
    return [str(out)]


_COLOURMAPS = {"FF0000": "red", "00FF00": "green", "0000FF": "blue", "FF00FF": "magenta", "00FFFF": "cyan"}
_COLOURMAPS.update({"FFFF00": "yellow", "FFFFFF": "gray"})


def get_reader(path):
    """The npe2 reader: a function for an OME-Zarr image store (NGFF multiscales), else None."""
    if not isinstance(path, str) or not path.rstrip("/").endswith(".zarr"):
        return None
    import zarr

    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # not a group (an array, not a store): other readers may take it
        return None
    ome = attrs.get("ome", attrs)
    if not (isinstance(ome, dict) and ome.get("multiscales")):
        return None
    return read_ome_zarr


def read_ome_zarr(path: str) -> list[tuple]:
    """One image layer: every level of the store's first multiscale image (lazy), with its metadata.

    ``path`` may be a URL (``https://``, ``s3://``...): read chunk by chunk as napari views it, with
    credentials from the environment (napari passes no storage options).
    """
    import dask.array as da

    first = open_image(path)
    axes, meta = first.axes, first.meta
    levels = [first.array]
    while True:
        try:
            levels.append(open_image(path, level=len(levels)).array)
        except ValueError:  # no such level: that was the last
            break
    # a zarr array, or (from a URL) one wrapped to retry failed reads: read chunk by chunk either way
    levels = [a if isinstance(a, da.Array) else da.from_array(a, chunks=a.chunks) for a in levels]
    chans = list(meta.channels)
    rgb = "C" in axes and [c.color for c in chans[:3]] == list(RGB_COLOURS) and len(chans) in (3, 4)
    # a store without an image name is named by its folder, never by its whole path or URL (the
    # reader names a remote image by its redacted URL)
    name = meta.name if meta.name and not is_url(meta.name) else store_name(redact(path) if is_url(path) else path)
    kwargs: dict = {"name": name, "multiscale": len(levels) > 1}
    if rgb:  # napari wants the colour axis last
        c = axes.index("C")
        levels = [da.moveaxis(lv, c, -1) for lv in levels]
        axes = axes.replace("C", "") + "C"
        kwargs["rgb"] = True
    elif "C" in axes:
        kwargs["channel_axis"] = axes.index("C")
        if chans:
            kwargs["name"] = [ch.name or f"channel {i}" for i, ch in enumerate(chans)]
            kwargs["colormap"] = [_COLOURMAPS.get(ch.color or "", "gray") for ch in chans]
            if all(ch.window for ch in chans):
                kwargs["contrast_limits"] = [list(ch.window) for ch in chans]
    elif len(chans) == 1 and chans[0].window:
        kwargs["contrast_limits"] = list(chans[0].window)
    dims = [a for a in axes if a != "C"]
    kwargs["scale"] = [float(meta.scale.get(a, 1.0)) for a in dims]
    kwargs["translate"] = [float(meta.translation.get(a, 0.0)) for a in dims]
    kwargs["axis_labels"] = [a.lower() for a in dims]
    kwargs["units"] = [meta.units.get(a, "pixel") for a in dims]
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]
