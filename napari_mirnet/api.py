"""The Python API: ``restore`` and ``restore_lazy`` (the engine's), ``restore_whole``, ``load_model``."""

from __future__ import annotations

import numpy as np

from . import xarrays as _xr
from .engine import RestoreOptions, execute, prepare, quality, restore, restore_lazy
from .engine.plan import round_to_stride
from .processing import check_dtype
from .tasks import get_task
from .weights import load_model

__all__ = ["load_model", "restore", "restore_lazy", "restore_whole"]


def restore_whole(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale: int | None = None,
    axes: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    normalisation: str = "auto",
    tta: bool = False,
    nodata=None,
    qc=False,
    rgb: bool | None = None,
):
    """Whole-image inference of an in-memory image: one tile, no halo (the reference for tiled output).

    Parameters are those of :func:`napari_mirnet.restore`; the image must fit in memory. A
    DataArray in gives a (numpy-backed) DataArray out, as :func:`napari_mirnet.restore` does.
    ``qc=True`` (denoising) returns ``(result, report)`` as :func:`napari_mirnet.restore` does.
    """
    spec = get_task(task)
    qc_mode = quality.check_qc(qc, spec, tta)
    factor = spec.check_scale(scale if scale is not None else spec.scales[0])
    template = image if _xr.is_dataarray(image) else None
    if template is not None:
        _xr.check_resamplable(template, factor)
        image = template.copy(data=_as_array(template.data))  # dims and coordinates travel with it
    elif spec.dual_pixel and isinstance(image, (tuple, list)) and len(image) == 2:
        image = tuple(_as_array(v, n) for v, n in zip(image, ("left view", "right view")))
    else:
        image = _as_array(image)
    largest = max(image[0].shape if isinstance(image, tuple) else image.shape)
    # a tile as large as the image (a multiple of 4, in model pixels) plans a single tile
    options = RestoreOptions(
        tile=round_to_stride(largest, up=True) * factor,
        halo=0,
        blend=0,
        device=device,
        precision=precision,
        normalisation=normalisation,
        tta=tta,
        nodata=nodata,
        rgb=rgb,
    )
    run = prepare(image, task, weights, scale=scale, axes=axes, options=options)
    result = execute(run)
    report = None if qc_mode is None else quality.run_qc(run, result, tta=qc_mode == "tta")
    result = result if template is None else _xr.to_dataarray(result, template, run.factor)
    return result if report is None else (result, report)


def _as_array(image, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    check_dtype(arr.dtype)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); nothing to restore")
    return arr
