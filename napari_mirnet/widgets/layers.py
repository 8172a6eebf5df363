"""Layer helpers shared by the widgets: a layer's axes, its pixel geometry as metadata, the slice on screen.

Every widget asks a layer what its dims are (``rgb``, axis labels) and maps the viewer's world
position to data pixels through the layer's own transform: never a guess from the shape, never
a viewer step taken as a data index. Imports no Qt (the napari writer uses :func:`layer_axes`).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "InputError",
    "add_qc_layers",
    "check_image_layer",
    "displayed_index",
    "displayed_slice",
    "layer_axes",
    "layer_meta",
    "left_right_pair",
    "level0",
    "result_layer_kwargs",
    "source_url",
]


class InputError(ValueError):
    """A bad choice in the widget; shown to the user as a message, never as a traceback."""


_SUFFIX = {
    "denoise": "denoised",
    "lowlight": "low-light enhanced",
    "enhance": "enhanced",
    "defocus": "deblurred",
}


def layer_axes(layer, ndim: int | None = None) -> str:
    """An engine axes string for an image layer: Y, X last, C for RGB, T/Z (then C) for leading dims.

    The layer says what its dims are, never the shape: ``rgb`` decides C, and axis labels that
    name axes (``t``/``time``, ``z``, ``c``/``channel``, ``y``, ``x``) are used as they are.
    """
    ndim = layer.ndim if ndim is None else ndim
    labelled = _axes_from_labels(layer, ndim)
    if labelled:
        return labelled
    lead = ndim - 2
    letters = {0: "", 1: "Z", 2: "TZ", 3: "TZC"}
    if lead not in letters or (lead == 3 and layer.rgb):
        raise InputError(
            f"layer {layer.name!r} has {ndim} dimensions; at most T, Z{'' if layer.rgb else ', C'} "
            "plus Y and X are supported. Slice it first, or use the preview option."
        )
    return letters[lead] + "YX" + ("C" if layer.rgb else "")


def _axes_from_labels(layer, ndim: int) -> str | None:
    """Axes from the layer's axis labels (napari >= 0.5) when each one names an axis; else None."""
    from ..xarrays import DIM_NAMES

    labels = tuple(getattr(layer, "axis_labels", ()) or ())
    if len(labels) != ndim:
        return None
    letters = "".join(DIM_NAMES.get(str(label).lower(), "?") for label in labels)
    axes = letters + ("C" if layer.rgb else "")
    ok = "?" not in letters and letters.endswith("YX") and len(set(axes)) == len(axes)
    return axes if ok else None


def layer_meta(layer, axes: str, offset=None):
    """What the layer's pixels mean (its scale, translate and units) as engine metadata for ``axes``.

    ``offset`` (data pixels per layer dim) is where a preview's crop starts.
    """
    from ..metadata import ImageMeta

    dims = [a for a in axes if not (a == "C" and layer.rgb)]  # one per layer dim
    scale = np.array(layer.scale, dtype=float)
    translate = np.array(layer.translate, dtype=float)
    if offset is not None:
        translate = translate + np.asarray(offset) * scale
    units = {}
    for a, unit in zip(dims, getattr(layer, "units", ()) or ()):
        text = str(unit)
        if text and text not in ("pixel", "px", "dimensionless"):
            units[a] = text
    return ImageMeta(
        axes=axes,
        scale={a: float(v) for a, v in zip(dims, scale) if a != "C"},
        translation={a: float(v) for a, v in zip(dims, translate) if a != "C"},
        units={a: u for a, u in units.items() if a != "C"},
        name=layer.name,
    )


def check_image_layer(layer, what: str = "input") -> None:
    from napari.layers import Image

    if layer is None:
        raise InputError(f"no {what} layer chosen: open or choose an image layer first")
    if not isinstance(layer, Image):
        kind = type(layer).__name__
        raise InputError(f"{what} {layer.name!r} is a {kind} layer; MIRNet restores images. Choose an image layer.")
    dtype = np.dtype(layer.dtype)
    if dtype.kind not in "uif":
        raise InputError(f"{what} {layer.name!r} has dtype {dtype}; convert it to uint8, uint16 or float32")


def level0(layer):
    data = layer.data[0] if layer.multiscale else layer.data
    return data


def displayed_index(layer, viewer) -> tuple[int, ...]:
    """The data index, in each of the layer's dims before Y and X, of the slice the canvas shows.

    The viewer's point is in world coordinates: the layer's own transform (scale, translate,
    affine) maps it to data pixels. A viewer step is not a data index once the layers differ in
    scale or translation.
    """
    lead = layer.ndim - 2
    if lead <= 0:
        return ()
    point = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, dtype=float)), dtype=float)
    shape = np.asarray(level0(layer).shape[:lead])
    return tuple(int(i) for i in np.clip(np.rint(point[:lead]).astype(int), 0, shape - 1))


def displayed_slice(layer, viewer) -> tuple[tuple[slice, ...], np.ndarray]:
    """Index of what the canvas shows of a layer: the current slice (leading dims kept at size 1),
    cropped to the visible Y/X region when zoomed in; and that index's offset in data pixels."""
    lead = layer.ndim - 2
    shape = level0(layer).shape
    idx = displayed_index(layer, viewer)
    offset = np.zeros(layer.ndim)
    offset[:lead] = idx[:lead]
    yx = [slice(None), slice(None)]
    box = _visible_yx(layer, viewer)
    if box is not None:
        (y0, x0), (y1, x1) = box
        yx = [slice(y0, y1), slice(x0, x1)]
        offset[-2:] = (y0, x0)
    slices = tuple(slice(i, i + 1) for i in idx[:lead]) + tuple(yx) + (slice(None),) * (len(shape) - layer.ndim)
    return slices, offset


def _visible_yx(layer, viewer, min_size: int = 32):
    """The level-0 (start, stop) of Y and X shown on a 2D canvas, or None when all of it is shown."""
    if viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed[-2:]) != (viewer.dims.ndim - 2, viewer.dims.ndim - 1):
        return None
    corners = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]
    if layer.multiscale:  # corner pixels are counted at the displayed level
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
    size = np.asarray(level0(layer).shape[layer.ndim - 2 : layer.ndim])
    start = np.clip(np.floor(corners[0]).astype(int), 0, size)
    stop = np.clip(np.ceil(corners[1]).astype(int) + 1, 0, size)
    if np.all(start == 0) and np.all(stop == size):
        return None
    # a tiny crop restores badly (the model sees too little context): widen it around its centre
    grow = np.maximum(min_size - (stop - start), 0)
    start = np.clip(start - grow // 2, 0, np.maximum(size - min_size, 0))
    stop = np.minimum(np.maximum(stop, start + min_size), size)
    return tuple(int(v) for v in start), tuple(int(v) for v in stop)


def source_url(layer) -> str | None:
    """The URL the layer was opened from (napari's ``layer.source.path``, as the user typed it, with
    any credentials), or None for a local file or a layer made in Python."""
    from ..io.urls import is_url

    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if is_url(str(path or "")) else None


def _redacted(value, url: str | None):
    """Layer metadata copied into a result: every URL in it redacted (the source's own URL above all)."""
    from ..io.urls import is_url, redact

    if isinstance(value, dict):
        return {k: _redacted(v, url) for k, v in value.items()}
    if type(value) in (list, tuple):  # not a namedtuple: its fields are not a sequence to rebuild
        return type(value)(_redacted(v, url) for v in value)
    if isinstance(value, str):
        value = value.replace(url, redact(url)) if url else value
        return redact(value) if is_url(value) else value
    return value


def result_layer_kwargs(layer, task: str, scale: int | None, offset=None, preview: bool = False) -> dict:
    """Name, scale, translate, axis labels, metadata ... of the result, from the input layer.

    A layer opened from a URL is named in the metadata (``mirnet.source``) by its redacted URL; no
    credential of it reaches the result's name or metadata.
    """
    from ..io.urls import redact
    from ..metadata import ImageMeta

    # copies: np.asarray would hand back the layer's own arrays, and the lines below would move
    # the input layer (silently, without a napari event) by each run's shift
    in_scale = np.array(layer.scale, dtype=float)
    translate = np.array(layer.translate, dtype=float)
    if offset is not None:
        translate = translate + np.asarray(offset) * in_scale
    out_scale = in_scale.copy()
    factor = scale or 1
    # the output grid covers the same extent: pixel size / factor, first centre moved by the
    # pixel-centre rule (the one ImageMeta.resampled applies to files and DataArrays)
    yx = ImageMeta(
        scale={"Y": in_scale[-2], "X": in_scale[-1]}, translation={"Y": translate[-2], "X": translate[-1]}
    ).resampled(factor)
    out_scale[-2:] = yx.scale["Y"], yx.scale["X"]
    translate[-2:] = yx.translation["Y"], yx.translation["X"]
    suffix = f"SR x{factor}" if task == "super_resolution" else _SUFFIX[task]
    url = source_url(layer)
    name = _redacted(f"{layer.name} {suffix}" + (" preview" if preview else ""), url)
    source = redact(url) if url else layer.name
    kwargs = dict(
        name=name,
        scale=tuple(out_scale),
        translate=tuple(translate),
        metadata={**_redacted(dict(layer.metadata), url), "mirnet": {"task": task, "source": source, "scale": factor}},
        rgb=layer.rgb,
        # explicit limits: napari would otherwise compute the lazy result to find them
        contrast_limits=tuple(layer.contrast_limits),
        blending=layer.blending,
    )
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap.name
    for attr in ("axis_labels", "units"):
        if hasattr(layer, attr):
            kwargs[attr] = tuple(getattr(layer, attr))
    return kwargs


_RIGHT = {"left": "right", "Left": "Right", "LEFT": "RIGHT"}


def left_right_pair(layers: list, prefer=None) -> tuple | None:
    """Two layers whose names differ only in 'left' / 'right' (e.g. 'dp left', 'dp right'): the pair
    that holds ``prefer`` if there is one, else the topmost; None without such a pair."""
    by_name = {lay.name: lay for lay in layers}
    pairs = []
    for lay in layers:
        for m in re.finditer("|".join(_RIGHT), lay.name):
            other = by_name.get(lay.name[: m.start()] + _RIGHT[m.group()] + lay.name[m.end() :])
            if other is not None and other is not lay:
                pairs.append((lay, other))
    if not pairs:
        return None
    return next((p for p in pairs if prefer is not None and any(prefer is x for x in p)), pairs[-1])


def add_qc_layers(viewer, report, out_kwargs: dict) -> list:
    """The residual (coolwarm, centred at 0) and the trust map (red to green, 0 to 1) of a result,
    placed like the result layer (the trust map's pixels are blocks: scaled and shifted to match)."""
    residual = np.asarray(report.residual, np.float32)
    if out_kwargs.get("rgb"):  # napari shows signed data per channel, not as colour: their mean
        residual = residual.mean(axis=-1)
    scale = np.array(out_kwargs["scale"], float)
    translate = np.array(out_kwargs["translate"], float)
    noise = report.summary["noise"]
    size = np.abs(residual[np.isfinite(residual)])  # nodata pixels are NaN in the residual too
    # 3 noise sigmas; where the input shows no noise, the residual's own range
    lim = 3 * float(noise["sigma"]) if noise["gain"] > 0 or noise["offset"] > 0 else 0.0
    lim = lim or (float(size.max()) if size.size else 0.0) or 1.0
    common = dict(metadata={"mirnet": {"qc": report.summary}}, blending="translucent")
    res = viewer.add_image(
        residual,
        name=f"{out_kwargs['name']} residual",
        scale=tuple(scale),
        translate=tuple(translate),
        colormap="coolwarm",
        contrast_limits=(-lim, lim),
        **common,
    )
    tscale, ttrans = scale.copy(), translate.copy()
    tscale[-2:] = scale[-2:] * report.block
    ttrans[-2:] = translate[-2:] + (report.block - 1) / 2 * scale[-2:]
    trust = viewer.add_image(
        report.trust,
        name=f"{out_kwargs['name']} trust",
        scale=tuple(tscale),
        translate=tuple(ttrans),
        colormap="RdYlGn",
        contrast_limits=(0.0, 1.0),
        opacity=0.5,
        **common,
    )
    return [res, trust]
