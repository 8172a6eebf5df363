"""napari's File menu for our outputs: save an image layer as a pyramidal OME-Zarr (npe2 writer).

No reader is contributed: napari's builtin reader (and napari-ome-zarr) open our OME-Zarr
stores as one multiscale image with their scale and translation (``tests/test_omezarr.py``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .io import write_image
from .metadata import Channel
from .widgets import layer_axes, layer_meta


def write_ome_zarr(path: str, data, attributes: dict) -> list[str]:
    """Save one image layer as an OME-Zarr 0.5 store with its pyramid (the npe2 writer).

    Parameters
    ----------
    path
        Where the ``.zarr`` store goes; an existing store there is replaced as a whole.
    data
        The layer's data (an array, or the levels of a multiscale layer: level 0 is written).
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
