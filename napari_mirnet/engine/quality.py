"""``restore(..., qc=True)``: the residual and trust map of a finished run, and where they are written.

The signals themselves are in :mod:`napari_mirnet.qc` (numpy/scipy); this module reads the run's
input and output lazily (chunk by chunk, so a zarr -> zarr check stays in bounded memory), runs
the opt-in test-time passes, and writes the results beside the output: a ``qc`` group in the
output's OME-Zarr (``qc/residual`` and ``qc/trust``, each an NGFF image that ome-zarr-py reads,
the summary in ``qc``'s attributes), or sibling files of a TIFF output.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io as mio
from .. import qc
from ..axes import inverse_order, to_cyx_order
from ..io.omezarr import multiscales_attrs
from ..metadata import ImageMeta
from .source import canonical_dask

__all__ = ["QualityReport", "check_qc", "check_qc_run", "run_qc", "write_qc_tiffs"]

ATTR = "napari_mirnet_qc"


@dataclass(eq=False)
class QualityReport:
    """What ``restore(..., qc=True)`` found: the residual, the per-block signals and a verdict.

    Attributes
    ----------
    residual : numpy.ndarray or dask.array.Array
        Input minus output (float32), in the input's axes and grid.
    trust : numpy.ndarray
        Trust per block of ``block`` x ``block`` pixels, in (0, 1] (1: the residual looks like
        noise); axes ``trust_axes`` (the iterated axes, then Y, X; channels merged by their minimum).
    doubt : numpy.ndarray
        ``-log(trust)``: the sum of the signals' doubts (1 each at its threshold).
    signals : dict of numpy.ndarray
        Each signal's doubt per block (``noise``, ``structure``, ``detail``, ``left``, ``removed``;
        with ``qc='tta'`` ``disagreement``, and ``second`` where the second opinion ran).
    noise : napari_mirnet.qc.NoiseModel
        The noise model estimated from the input alone.
    summary : dict
        ``verdict`` ('cleared' or 'flagged'), ``text`` and the figures behind them (JSON-ready).
    block : int
        Block edge in input pixels.
    """

    residual: object
    trust: np.ndarray
    doubt: np.ndarray
    signals: dict
    noise: qc.NoiseModel
    summary: dict
    block: int
    trust_axes: str

    @property
    def text(self) -> str:
        return self.summary["text"]


def check_qc(qc_value, task_spec, tta: bool) -> str | None:
    """``qc`` as None, 'on' or 'tta', refused (before the model loads) where it means nothing."""
    if qc_value in (None, False):
        return None
    if qc_value not in (True, "tta"):
        raise ValueError(
            f"qc={qc_value!r}: give qc=True (residual and trust map) or qc='tta' (also the 8 flips' disagreement "
            "and a second opinion on correlated noise)"
        )
    if task_spec.name != "denoise":
        raise ValueError(
            f"qc=True checks a denoiser's output against its input on the same grid; task={task_spec.name!r} "
            "changes the image on purpose (use task='denoise', with any denoising model, or leave qc off)"
        )
    return "tta" if qc_value == "tta" else "on"


def check_qc_run(run, qc_mode) -> None:
    """Refuse, before any tile runs, a check that cannot measure the noise: planes under 8 x 8 px."""
    if qc_mode is None:
        return
    h, w = canonical_dask(run.source).shape[-2:]
    if min(h, w) < 8:
        raise ValueError(
            f"qc=True measures the noise from the image itself and needs planes of at least 8 x 8 pixels; "
            f"this image's are {h} x {w}: drop qc=True for it"
        )


def _canonical_out(result, axes: str):
    """The output (input axes) as a dask array (lead..., C, Y, X), like ``canonical_dask``."""
    import dask.array as da

    perm, _ = to_cyx_order(axes)
    arr = da.asarray(result).transpose(perm)
    return arr if "C" in axes else arr[..., None, :, :]


def _noise_crops(x, edge: int = 384) -> list[np.ndarray]:
    """Up to 15 crops of the canonical input (middle iterated plane, each channel, 5 places)."""
    lead = tuple(n // 2 for n in x.shape[:-3])
    h, w = x.shape[-2:]
    ch, cw = min(edge, h), min(edge, w)
    if h * w <= 4 * edge * edge:  # small planes whole: crops of a wide strip would favour its ends
        ch, cw = h, w
    # the corners and the centre: a round specimen on a black ground (a retina, a cell) has its
    # noise in the middle only
    places = {(0, 0), (h - ch, w - cw), (0, w - cw), (h - ch, 0), ((h - ch) // 2, (w - cw) // 2)}
    crops = [
        x[lead + (c, slice(y0, y0 + ch), slice(x0, x0 + cw))] for c in range(min(x.shape[-3], 3)) for y0, x0 in places
    ]
    import dask

    return [np.asarray(c, np.float64) for c in dask.compute(*crops)]


def run_qc(run, result, block: int = qc.BLOCK, tta: bool = False, out=None, compute=None) -> QualityReport:
    """The check of a finished run (``result``: its output in the input's axes); writes into ``out``.

    ``compute(collection)`` computes dask collections with the run's scheduler.
    """
    import dask

    compute = compute or (lambda c: dask.compute(c)[0])
    x = _no_data_as_nan(canonical_dask(run.source).astype(np.float32), run)
    y = _no_data_as_nan(_canonical_out(result, run.axes).astype(np.float32), run)
    y = y.rechunk(x.chunks) if y.chunks != x.chunks else y
    crops = _noise_crops(x)
    try:
        noise = qc.estimate_noise(crops)
    except ValueError as err:
        raise ValueError(f"qc=True cannot measure the input's noise: {err}; drop qc=True for this image") from None
    # the residual where the noise was measured: its spectrum against the noise's (summarize)
    res_var = qc.stride_variances([a - b for a, b in zip(crops, _noise_crops(y))])
    maps = qc.signal_maps(x, y, noise, block)
    level = _mean_level(_noise_crops(x, 64)) or _mean_level(crops)
    residual = _to_input_axes(x - y, run.axes)
    if out is not None:
        signals = _write_and_measure(out, residual, maps, run, compute)
    else:
        signals = compute(maps)
    spread = _spread(run, x, noise, block, compute) if tta else None
    second = _second_opinion(run, y, noise, signals, block, compute) if tta else None
    return _report(signals, spread, noise, block, level, residual if out is None else None, run, out, res_var, second)


def _no_data_as_nan(arr, run):
    """``arr`` with the run's nodata value (a file's -9999, a uint16 0) as NaN: the check reads
    only the pixels with data, whatever marks the others."""
    nodata = run.imap.nodata
    if nodata is None or np.isnan(nodata):
        return arr
    import dask.array as da

    return da.where(arr == np.float32(nodata), np.float32(np.nan), arr)


def _mean_level(crops) -> float:
    """The crops' mean intensity over their pixels with data (0.0 where they have none)."""
    data = np.concatenate([c[np.isfinite(c)] for c in crops])
    return float(data.mean()) if data.size else 0.0


def _to_input_axes(canon, axes: str):
    perm, _ = to_cyx_order(axes)
    arr = canon if "C" in axes else canon[..., 0, :, :]
    return arr.transpose(inverse_order(perm))


def _report(signals, spread, noise, block, level, residual, run, out, res_var=None, second=None) -> QualityReport:
    doubt, trust = qc.combine(signals, spread, second)
    summary = qc.summarize(signals, noise, block, spread, level, residual=res_var, second=second)
    lead = run.source.lead_axes
    report = QualityReport(
        residual=residual,
        trust=trust.min(axis=-3),  # channels merged: a place is as trustworthy as its worst channel
        doubt=doubt.max(axis=-3),
        signals={k: v.max(axis=-3) for k, v in qc.doubts(signals, spread, second).items()},
        noise=noise,
        summary=summary,
        block=block,
        trust_axes=lead + "YX",
    )
    if run.source.eager and residual is not None:
        report.residual = np.asarray(residual)
    if out is not None:
        _write_trust(out, report, run)
        import dask.array as da

        report.residual = da.from_zarr(str(out), component="qc/residual/0")
    return report


def _spread(run, x, noise, block, compute):
    """Disagreement per block over the 8 flips/rotations, each pass a run of its own (no TTA)."""
    import dask.array as da

    from .execution import execute
    from .run import prepare

    canon_axes = run.source.lead_axes + "CYX"
    options = dataclasses.replace(run.options, tta=False)
    passes = []
    for k in range(8):
        xt = _d4(x.astype(run.source.dtype), k)
        r = prepare(xt, run.task, run.weights, axes=canon_axes, options=options)
        passes.append(_d4_inverse(da.asarray(execute(r)).astype(np.float32), k))
    stack = da.stack(passes)
    return compute(_in_sigmas(stack.std(axis=0), stack.mean(axis=0), noise, block))


def _second_opinion(run, y, noise, signals, block, compute):
    """The output's distance per block (noise sigmas) from the same model restoring the noise's
    pixel-shuffle sub-images, or None where that says nothing new.

    Run only where the noise is correlated in both directions (its stride > 1) and the model,
    restoring whole images, left it in (median residual below :data:`qc.LEFT_IN` of the noise
    variance): a white-noise denoiser takes such noise for texture, but in sub-images of pixels
    ``stride`` apart neighbours' noise is nearly independent, as in its training. Where the two
    disagree, the output kept noise or lost detail (benchmarks/qc.py --tta, docs/qc.md).
    """
    import dask.array as da

    from .execution import execute

    if noise.stride <= 1 or float(np.nanmedian(np.asarray(signals)[..., 0, :, :])) >= qc.LEFT_IN:
        return None
    if not run.restores_whole:
        return None  # it already restores sub-images (a model fine-tuned on such noise)
    second = dataclasses.replace(
        run, subimage_stride=noise.stride, options=dataclasses.replace(run.options, tta=False), run_id=uuid.uuid4().hex
    )
    ref = _canonical_out(execute(second), run.axes).astype(np.float32).rechunk(y.chunks)
    return compute(_in_sigmas(da.absolute(y - ref), ref, noise, block))


def _in_sigmas(values, at, noise, block):
    """:func:`qc.in_sigmas` over lazy (lead..., C, Y, X) arrays, chunk by chunk: (lead..., C, rows, cols)."""
    import dask.array as da

    def blocks(v, a):
        flat_v, flat_a = v.reshape((-1,) + v.shape[-2:]), a.reshape((-1,) + a.shape[-2:])
        out = [qc.in_sigmas(p, q, noise, block) for p, q in zip(flat_v, flat_a)]
        return np.stack(out).reshape(v.shape[:-2] + out[0].shape)

    step = max(block, (1024 // block) * block)
    chunks = (1,) * (values.ndim - 2) + (step, step)
    values, at = values.rechunk(chunks), at.rechunk(chunks)
    out_chunks = values.chunks[:-2] + tuple(tuple(-(-c // block) for c in cs) for cs in values.chunks[-2:])
    return da.map_blocks(blocks, values, at, chunks=out_chunks, dtype=np.float32)


def _d4(a, k: int):
    """The k-th of the 8 flips/rotations of the last two axes."""
    import dask.array as da

    a = da.flip(a, -1) if k >= 4 else a
    return da.rot90(a, k % 4, axes=(-2, -1))


def _d4_inverse(a, k: int):
    import dask.array as da

    a = da.rot90(a, -(k % 4), axes=(-2, -1))
    return da.flip(a, -1) if k >= 4 else a


# ------------------------------------------------------------------------------------ writing
def _write_and_measure(out, residual, maps, run, compute):
    """Write the residual into ``out/qc/residual`` and compute the signals, in one pass over the data."""
    import dask.array as da
    import zarr

    store_axes = mio.ome_order(run.axes)
    res = residual.transpose([run.axes.index(a) for a in store_axes])
    root = zarr.open_group(str(out), mode="a")
    if "qc" in root:
        del root["qc"]  # a re-run replaces the check of the run before
    group = root.require_group("qc").require_group("residual")
    arr = group.create_array(
        "0", shape=res.shape, chunks=res.chunksize, dtype="float32", dimension_names=[a.lower() for a in store_axes]
    )
    write = da.store(res.rechunk(arr.chunks), arr, lock=False, compute=False)
    signals = compute([write, maps])[1]
    meta = run.output_meta.replace(axes=store_axes) if hasattr(run.output_meta, "replace") else ImageMeta()
    group.attrs.update({"ome": multiscales_attrs(store_axes, _float_meta(meta), name="qc residual")})
    return signals


def _float_meta(meta: ImageMeta) -> ImageMeta:
    """The output's geometry without its channel windows or nodata (the residual is signed float)."""
    return ImageMeta(scale=dict(meta.scale), translation=dict(meta.translation), units=dict(meta.units))


def trust_meta(meta: ImageMeta, axes: str, block: int) -> ImageMeta:
    """Geometry of the trust map: a block's pixel is ``block`` input pixels, centred on its block."""
    scale, shift = dict(meta.scale), dict(meta.translation)
    for a in "YX":
        s = float(scale.get(a, 1.0))
        scale[a] = s * block
        shift[a] = float(shift.get(a, 0.0)) + (block - 1) / 2 * s
    keep = set(axes)
    return ImageMeta(
        scale={k: v for k, v in scale.items() if k in keep},
        translation={k: v for k, v in shift.items() if k in keep},
        units={k: v for k, v in meta.units.items() if k in keep},
    )


def _write_trust(out, report: QualityReport, run) -> None:
    import zarr

    store_axes = mio.ome_order(report.trust_axes)
    trust = np.transpose(report.trust, [report.trust_axes.index(a) for a in store_axes])
    group = zarr.open_group(str(out), mode="a")["qc"].require_group("trust")
    group.create_array(
        "0",
        data=np.ascontiguousarray(trust, np.float32),
        overwrite=True,
        dimension_names=[a.lower() for a in store_axes],
    )
    meta = trust_meta(run.output_meta, store_axes, report.block)
    group.attrs.update({"ome": multiscales_attrs(store_axes, meta, name="qc trust")})
    zarr.open_group(str(out), mode="a")["qc"].attrs.update({ATTR: _json(report)})


def _json(report: QualityReport) -> dict:
    return {**report.summary, "trust_axes": report.trust_axes, "signals": sorted(report.signals)}


def write_qc_tiffs(path, report: QualityReport, axes: str, meta: ImageMeta | None = None) -> list[Path]:
    """``NAME.qc-residual.tif``, ``NAME.qc-trust.tif`` and ``NAME.qc.json`` beside a TIFF output.

    Beside a GeoTIFF (``meta`` georeferenced) the two images are GeoTIFFs on the output's CRS: the
    residual on its grid, the trust map on a grid of ``block``-pixel cells from the same corner
    (NaN: no data), so that a GIS lays them over the output.
    """
    import tifffile

    from ..io.geotiff_write import write_geotiff, writes_geotiff

    p = Path(path)
    stem = p.name[: -len("".join(p.suffixes))] if p.suffixes else p.name
    files = [
        p.with_name(f"{stem}.qc-residual.tif"),
        p.with_name(f"{stem}.qc-trust.tif"),
        p.with_name(f"{stem}.qc.json"),
    ]
    residual = np.asarray(report.residual, np.float32)
    # NaN marks no data in both (the output's own mask band, where it has one, is the output's)
    geo = dataclasses.replace(meta.geo, mask=False) if meta is not None and writes_geotiff(".tif", axes, meta) else None
    images = (
        (files[0], residual, axes, geo),
        (files[1], report.trust.astype(np.float32), report.trust_axes, _in_blocks(geo, report.block)),
    )
    for f, data, ax, grid in images:
        tmp = f.with_name(f.name + ".partial")
        where = ImageMeta(geo=grid, nodata=float("nan")) if grid is not None else None
        if where is not None and writes_geotiff(".tif", ax, where):
            write_geotiff(tmp, data, ax, where, note=None)
        else:
            tifffile.imwrite(tmp, data, metadata={"axes": ax}, compression="zlib")
        tmp.replace(f)  # complete or absent, never half-written under its final name
    files[2].write_text(json.dumps(_json(report), indent=2))
    return files


def _in_blocks(geo, block: int):
    """The georeferencing of a grid of ``block`` x ``block``-pixel cells from the same corner (None
    where the output is placed by ground control points, which name pixels of the full grid)."""
    if geo is None or geo.gcps:
        return None
    a, b, c, d, e, f = geo.transform[:6]
    return dataclasses.replace(geo, transform=(a * block, b * block, c, d * block, e * block, f))
