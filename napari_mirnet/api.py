"""The Python API: ``restore``, ``restore_lazy``, ``restore_whole`` and ``load_model``."""

from __future__ import annotations

import numbers
import weakref

import numpy as np

from . import outputs
from . import xarrays as _xr
from .engine import RestoreOptions, RunControl, compute, connect, execute, prepare, quality
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
    quality.check_qc_run(run, qc_mode)
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


def restore(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale: int | None = None,
    axes: str | None = None,
    tile: int | None = None,
    halo: int | None = None,
    blend: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    normalisation: str = "auto",
    tta: bool = False,
    pixel_size=None,
    nodata=None,
    out=None,
    overwrite: bool = False,
    client=None,
    progress=None,
    cancel=None,
    level=None,
    accelerate: str = "auto",
    rgb: bool | None = None,
    qc=False,
    storage_options: dict | None = None,
):
    """Restore an image of any size with MIRNet-v2, tile by tile, in the input's dtype and range.

    Parameters
    ----------
    image : array-like, path, URL, or (left, right) pair
        numpy, dask or zarr array, xarray DataArray, or a path (tif, png, jpg, zarr, OME-Zarr) or
        URL (``s3://``, ``gs://``, ``az://``, ``https://``); a ``(left, right)`` pair for
        ``task='defocus'``.
    task : str
        ``denoise``, ``super_resolution``, ``lowlight``, ``enhance`` or ``defocus``.
    weights : str or path, optional
        Shipped model name, official asset name, file or URL; default: the task's model.
    scale : int, optional
        Super-resolution factor (2, 3 or 4), an int: 2.5 or "2" are refused.
    axes : str, optional
        E.g. ``'YX'``, ``'YXC'``, ``'CYX'``, ``'ZYX'``, ``'TZCYX'``. Files that record their axes
        and DataArrays (dims) need none; a bare array is read as ``'YX'`` (2-D) or ``'YXC'``
        (``(H, W, 3 or 4)``) and any other shape must be given its axes. Y and X are tiled, other
        axes iterated.
    tile, halo, blend : int, optional
        Tile edge including the halo on both sides, and halo (model pixels, multiples of 4); the
        feathered blend margin. Default: the tile from memory, halo 64, blend 16.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
    precision : str
        ``auto`` (bf16 on CUDA, else fp32), ``fp32`` or ``bf16``.
    normalisation : str
        ``auto`` (fixed range for integers, percentiles for floats), ``fixed`` or ``percentile``.
    tta : bool
        Average each tile over its 8 flips/rotations (8x the compute; dual-pixel: 2 flips).
    pixel_size : sequence of float, optional
        Pixel size per input axis (one finite, positive value for each, in the input's axis order),
        written to zarr metadata when the input carries none.
    accelerate : str
        The forward's optimisations: "auto" (off on CPU; on CUDA the fastest variant measured on
        the first tile), "off", "on", or switch names such as ``"bf16_weights,channels_last"``
        (see :mod:`napari_mirnet.engine.accelerate`).
    rgb : bool, optional
        Whether 3 or 4 channels are a colour image. None (default): as the data says (channels
        last, as pictures are stored, or channels coloured red, green and blue); True: colour
        whatever the order of axes (e.g. a (3, H, W) photograph with ``axes="CYX"``); False:
        every channel restored alone, as a gray image.
    nodata : float, optional
        The value that marks missing pixels (NaN allowed); default: the file's nodata (GeoTIFF).
        NaN pixels of float images are always missing; Inf is refused. Missing pixels stay out of
        the intensity mapping, are filled from their valid neighbours before the model sees them,
        and come out as nodata again: the same pixels (for super-resolution each becomes a
        ``scale`` x ``scale`` block), and no restored pixel takes the nodata value.
    out : str or path, optional
        Where to write the result, in the format its suffix names, as the CLI's ``-o`` does (see
        :mod:`napari_mirnet.outputs`): ``.zarr`` (``.ome.zarr``; also a path without a suffix),
        an OME-Zarr pyramid written chunk by chunk (resumable: re-run the same call to continue);
        ``.tif`` (``.ome.tif``), an OME-TIFF (ImageJ TIFF for an ImageJ input, GeoTIFF/COG for a
        georeferenced one; a lazy input is computed into a hidden resumable store beside it
        first); ``.png`` or ``.jpg``, a 2-D picture. The input's metadata (pixel size, units,
        channels, georeferencing, nodata) and the settings are recorded in the file. A URL
        (``s3://``, ``gs://``, ``az://``; not ``http(s)://``, which cannot be written): a store is
        written there chunk by chunk (resumable); a file is written locally (in the cache) and
        uploaded once complete.
    storage_options : dict, optional
        fsspec options for every URL of the run, input and output (e.g. ``{"client_kwargs":
        {"endpoint_url": "http://127.0.0.1:9000"}, "key": ..., "secret": ...}``); default: the
        usual environment and profiles. Never recorded in the output or shown in a message.
    overwrite : bool
        Replace an existing output at ``out``. Without it, an output of other settings (or not
        written by napari-mirnet) is refused, and a complete result of the same settings raises
        :class:`~napari_mirnet.io.OutputExistsError` with ``matches=True``. An input is never
        overwritten.
    client : distributed.Client or str, optional
        A dask.distributed client or scheduler address to run the tiles on.
    progress : callable, optional
        Called after each tile with a :class:`~napari_mirnet.progress.Progress` (or, a callable of
        two arguments, with ``(done, total)``).
    cancel : threading.Event, optional
        Stops the run with :class:`Cancelled` once set.
    level : int or str, optional
        For an OME-Zarr path: the pyramid level to restore, as an index (0: full resolution) or a
        dataset path; default 0 (or the level the path points at, e.g. ``image.zarr/2``).
    qc : bool or 'tta'
        Denoising only: also check the output against the input (see docs/qc.md) and return
        ``(result, report)``, a :class:`~napari_mirnet.engine.quality.QualityReport` with the
        residual (input minus output), a trust map per 32 x 32 block and a verdict. ``'tta'`` adds
        the 8 flips/rotations' disagreement (8 more runs) and, where the noise is correlated in both
        directions and the model left it in, a second opinion (one more run, restoring the noise's
        pixel-shuffle sub-images). With ``out``, written beside the result: into a
        store (``qc/residual``, ``qc/trust``, summary in ``qc``'s attributes), or beside a file
        (``NAME.qc-residual.tif``, ``NAME.qc-trust.tif``, ``NAME.qc.json``). A lazy result is
        computed once for the check (and again when you compute it): use ``out`` for large images.

    Returns
    -------
    numpy.ndarray or dask.array.Array or xarray.DataArray
        numpy for numpy input; a lazy dask array for dask, zarr or path input; with ``out``, a dask
        array reading what was written (the store, or the file: a ``.jpg`` reads back its lossy
        pixels), in the input's axis order. An xarray DataArray in (dims ``t``/``time``, ``z``,
        ``c``/``channel``/``band``, ``y``, ``x``; coordinates give the pixel size and position)
        gives a DataArray out: same dims, name and attrs, Y/X coordinates of the output grid,
        holding numpy or a lazy dask array as above.

    Notes
    -----
    Channels, with an RGB model: without channel metadata (numpy, dask, PNG, plain TIFF) 3
    channels are RGB and 4 are RGBA, as image libraries hand them out: the 4th (alpha) is carried
    unrestored. With channel metadata (GeoTIFF, OME) the first three are a colour image only when
    marked red, green and blue, and a band is alpha only when marked alpha; other bands (a
    near-infrared band, say) are restored as gray images, never carried. The denoiser restores
    such multispectral images band by band with its gray model (one model per run).
    """
    options = RestoreOptions(
        tile,
        halo,
        blend,
        device,
        precision,
        normalisation,
        tta,
        pixel_size,
        nodata=nodata,
        accelerate=accelerate,
        rgb=rgb,
    )
    check_level(level)
    _check_storage_options(storage_options)
    dst = None if out is None else outputs.check_out_path(out, image)  # refused before the model loads
    qc_mode = quality.check_qc(qc, get_task(task), tta)
    if dst is not None:
        _check_qc_out(qc_mode, dst)
        options = outputs.resume_options(options, dst, overwrite, storage_options)
    template = _xarray_template(image, task, scale)
    client, own_client = connect(client)
    try:
        run = prepare(
            image, task, weights, scale=scale, axes=axes, options=options, client=client, level=level,
            storage_options=storage_options,
        )  # fmt: skip
        options.check_axes(run.axes)  # before anything is written
        quality.check_qc_run(run, qc_mode)
        if dst is not None:
            result = outputs.write_result(
                run, dst, overwrite=overwrite, client=client, progress=progress, cancel=cancel,
                storage_options=storage_options,
            )  # fmt: skip
            report = None if qc_mode is None else outputs.quality_check_beside(run, dst, qc_mode, client)
        else:
            result = execute(run, client=client, progress=progress, cancel=cancel)
            report = None
            if qc_mode is not None:
                report = quality.run_qc(run, result, tta=qc_mode == "tta", compute=lambda c: compute(c, run, client))
        result = result if template is None else _xr.to_dataarray(result, template, run.factor)
        return result if report is None else (result, report)
    finally:
        if own_client:
            client.close()


def restore_lazy(
    image,
    task: str = "denoise",
    weights=None,
    *,
    scale: int | None = None,
    axes: str | None = None,
    tile: int | None = None,
    halo: int | None = None,
    blend: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    normalisation: str = "auto",
    tta: bool = False,
    nodata=None,
    client=None,
    progress=None,
    cancel=None,
    out=None,
    level=None,
    rgb: bool | None = None,
    storage_options: dict | None = None,
):
    """Like :func:`restore`, but always return a lazy dask array: nothing runs until it is computed.

    Parameters are those of :func:`restore` (without ``out``: use ``restore(..., out=path)`` to
    write a store or file); ``storage_options`` open a URL input. ``progress`` and ``cancel`` stay attached for as long as the array (or one
    derived from it) exists; a ``client`` given as an address is closed with the last of them.
    An xarray DataArray in gives a DataArray holding the lazy array out (see :func:`restore`).
    """
    if out is not None:
        raise ValueError("restore_lazy returns a lazy array; use restore(..., out=path) to write a zarr store or file")
    template = _xarray_template(image, task, scale)
    options = RestoreOptions(tile, halo, blend, device, precision, normalisation, tta, nodata=nodata, rgb=rgb)
    check_level(level)
    _check_storage_options(storage_options)
    client, own_client = connect(client)
    try:
        run = prepare(
            image, task, weights, scale=scale, axes=axes, options=options, client=client, level=level,
            storage_options=storage_options,
        )  # fmt: skip
    except BaseException:
        if own_client:
            client.close()
        raise
    from .engine.graph import lazy_array  # dask.array: numpy runs never import it

    arr = lazy_array(run, run.context(RunControl(progress if client is None else None, cancel, len(run.keys))))
    if own_client:
        # the connection is needed until the last array that reads this graph is gone
        weakref.finalize(arr.dask.layers[arr.name] if arr.name in arr.dask.layers else arr.dask, client.close)
    return arr if template is None else _xr.to_dataarray(arr, template, run.factor)


def _check_storage_options(storage_options) -> None:
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict of fsspec options, not {type(storage_options).__name__}")


def _check_qc_out(qc_mode, dst) -> None:
    """``qc`` writes its maps beside a local output only (for now)."""
    from .io.urls import is_url, redact

    if qc_mode is not None and is_url(dst):
        raise ValueError(f"qc= with out={redact(dst)!r} (a URL) is not supported yet; write to a local path")


def check_level(level) -> None:
    """``level`` is None, a level index (0: full resolution) or a dataset path; a clear error otherwise.

    A float would be cut to an int (``level=1.5`` would restore level 1) and ``True`` taken as 1.
    """
    if level is None or isinstance(level, str):
        return
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Integral):
        raise TypeError(
            f"level={level!r} is not a level index or dataset path; pass an int (0 is full resolution) or a name like '2'"
        )


def _xarray_template(image, task: str, scale):
    """A DataArray input (the output is built like it), checked before the model loads; else None."""
    if not _xr.is_dataarray(image):
        return None
    spec = get_task(task)
    _xr.check_resamplable(image, spec.check_scale(scale if scale is not None else spec.scales[0]))
    return image
