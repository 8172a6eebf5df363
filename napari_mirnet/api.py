"""The Python API: ``restore`` (routed through the chunked engine) and whole-image helpers."""

from __future__ import annotations

import numpy as np

from .axes import infer_axes, inverse_order, to_cyx_order, validate_axes
from .presets import SHIPPED_GRAY_DENOISER, IntensityMap, check_dtype, get_preset, restore_chw
from .weights import cached_model, resolve_device, shipped_models

__all__ = ["restore", "restore_whole", "choose_weights", "resolve_precision"]


def choose_weights(task: str, scale: int, n_channels: int, weights=None) -> str:
    """The weights to use: the caller's, else the shipped model for the task, else the official one."""
    if weights is not None:
        return weights
    shipped = set(shipped_models())
    if task == "denoise" and n_channels not in (3, 4) and SHIPPED_GRAY_DENOISER in shipped:
        return SHIPPED_GRAY_DENOISER
    return get_preset(task).default_weights(scale, shipped)


def resolve_precision(precision: str, device) -> str:
    if precision == "auto":
        return "bf16" if resolve_device(device).type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
    return precision


def _as_array(image, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    check_dtype(arr.dtype)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); nothing to restore")
    return arr


def restore(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale: int | None = None,
    axes: str | None = None,
    device="auto",
    precision: str = "auto",
    normalisation: str = "auto",
    **engine_options,
):
    """Restore an image with MIRNet-v2, in the input's dtype and range.

    ``image`` is a numpy, dask or zarr array or a path (tif, png, jpg, zarr, OME-Zarr); ``task`` is
    one of ``denoise``, ``super_resolution`` (with ``scale`` 2, 3 or 4), ``lowlight``, ``enhance``
    or ``defocus`` (then ``image`` is a ``(left, right)`` pair). ``weights`` defaults to the shipped
    model for the task. ``axes`` (e.g. ``'YXC'``, ``'TZCYX'``) is inferred when unambiguous; Y and X
    are tiled, other axes iterated. Numpy in gives numpy out; dask, zarr or path in gives a lazy
    dask array. Further options (``tile``, ``halo``, ``blend``, ``out``, ``overwrite``, ``client``,
    ``progress``, ``cancel``, ``pixel_size``, ``tta``) are those of :func:`napari_mirnet.engine.restore`.
    """
    from . import engine

    return engine.restore(
        image, task, weights, scale=scale, axes=axes, device=device, precision=precision,
        normalisation=normalisation, **engine_options,
    )


def restore_whole(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale: int | None = None,
    axes: str | None = None,
    device="auto",
    precision: str = "auto",
    normalisation: str = "auto",
    tta: bool = False,
) -> np.ndarray:
    """Whole-image inference of an in-memory image, without tiling (the reference for tiled output)."""
    preset = get_preset(task)
    scale = preset.check_scale(scale if scale is not None else preset.scales[0])
    views = _views(image, preset.dual_pixel)
    axes = validate_axes(axes, views[0].shape) if axes else infer_axes(views[0].shape)
    if views[0].dtype.kind == "f" and not all(np.all(np.isfinite(v)) for v in views):
        raise ValueError("the image contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")
    imap = IntensityMap.for_image(np.stack(views) if len(views) > 1 else views[0], normalisation)
    # dual-pixel views are joined along C, left first, as the official model expects
    planes = np.concatenate([to_planes(v, axes)[0] for v in views], axis=1)
    model = cached_model(choose_weights(task, scale, planes.shape[1] // len(views), weights), device)
    prec = resolve_precision(precision, device)
    out = np.stack(
        [
            restore_chw(model, imap.forward(p), scale=scale, dual_pixel=preset.dual_pixel, precision=prec, tta=tta)
            for p in planes
        ]
    )
    return from_planes(imap.inverse(out), axes, views[0].shape)


def _views(image, dual_pixel: bool) -> list[np.ndarray]:
    if not dual_pixel:
        return [_as_array(image)]
    if not isinstance(image, (tuple, list)) or len(image) != 2:
        raise ValueError("the defocus task takes a (left, right) pair of images")
    left, right = (_as_array(v, n) for v, n in zip(image, ("left view", "right view")))
    if left.shape != right.shape or left.dtype != right.dtype:
        raise ValueError(
            f"left and right views must match: {left.shape} {left.dtype} vs {right.shape} {right.dtype}"
        )
    return [left, right]


def to_planes(arr: np.ndarray, axes: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Reshape an array with ``axes`` to (N, C, Y, X) planes (C=1 when there is no C axis)."""
    perm, ordered = to_cyx_order(axes)
    moved = np.transpose(arr, perm)
    if "C" not in axes:
        moved = moved[..., None, :, :]
    return moved.reshape((-1,) + moved.shape[-3:]), moved.shape[:-3]


def from_planes(planes: np.ndarray, axes: str, in_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`to_planes` for restored planes, whose Y/X (and C) may differ from the input."""
    perm, ordered = to_cyx_order(axes)
    lead = tuple(in_shape[i] for i in perm[: len(perm) - len([a for a in axes if a in "CYX"])])
    out = planes.reshape(lead + planes.shape[1:])
    if "C" not in axes:
        out = out[..., 0, :, :]
    return np.transpose(out, inverse_order(perm))
