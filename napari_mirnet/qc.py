"""What a denoiser took away, and where not to trust it: residual signals that need no clean image.

Pure numpy/scipy (dask only to run the block signals chunk by chunk). Signals per block of
``block`` x ``block`` input pixels, against the noise model estimated from the input alone
(:mod:`napari_mirnet.noise_model`: Gaussian or Poisson-Gaussian, white or spatially correlated):

- **noise consistency** (``noise``): the residual's (input minus output) mean square over the
  noise variance, as ``|log2(ratio)|``; ``removed``: the part of it above 1.5x (signal taken);
- **structure**: the residual's correlation with the output's own detail (its negative Laplacian),
  signal removed (a blur) or added (a hallucination) rather than noise;
- **detail**: the output's mean gradient over the noise sigma: where the image has fine structure
  the model had to tell it from noise, and errors are likelier;
- **left**: the output's fine content (minus a 4-px smooth background; median square per block) in
  noise variances: noise the model left in, and detail it kept;
- **disagreement** (opt-in, 8 passes): the spread of the 8 flips/rotations' outputs over the noise
  sigma;
- **second** (opt-in, one more pass, only where the noise is correlated in both directions and the
  model left it in): the output's mean distance, in noise sigmas, from the same model restoring the
  pixel-shuffle sub-images of the noise's stride, in which neighbours' noise is nearly independent
  (a second opinion that sees the noise as the model was trained to).

:func:`combine` turns them into a doubt score and a trust map in [0, 1] (detail, left, removed,
disagreement and second); :func:`summarize` into a verdict per image (noise ratio, structure, disagreement and
the residual's spectrum against the noise's). See docs/qc.md for how to read them and where they fail.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .noise_model import (
    NoiseModel,
    _lags,
    correlation_profile,
    estimate_noise,
    estimate_sigma,
    fill_gaps,
    noise_samples,
    stride_variances,
)


def _ndimage():
    # scipy (~40 MiB, 400 modules) only when a check runs: the engine imports this module, and a
    # plain restore must not pay for it (tests/test_engine.py::test_numpy_runs_never_import_dask_array)
    from scipy import ndimage

    return ndimage


__all__ = [
    "BLOCK",
    "SIGNALS",
    "NoiseModel",
    "block_signals",
    "combine",
    "estimate_noise",
    "estimate_sigma",
    "in_sigmas",
    "map_doubt",
    "noise_samples",
    "signal_maps",
    "stride_variances",
    "summarize",
]

#: Default block edge (input pixels) of the trust map.
BLOCK = 32
#: The signal names, in the order :func:`block_signals` returns them.
SIGNALS = ("noise", "structure", "detail", "left")
#: context pixels each side that the block filters need (the smoothing of "left" reaches 4 sigma)
HALO = 16
_LEFT_SIGMA = 4.0
# thresholds at which a signal counts as "not noise" (doubt 1 each): ratio 2x / 0.5x; the part of the
# residual that follows the output's detail half the noise sigma (rms); spread 0.5 sigma; output
# detail (mean gradient) 1 noise sigma per pixel; fine content 1 noise variance. Chosen on synthetic
# images and the validation strips (benchmarks/qc.py --split validation), not the test images
_STRUCTURE_AT = 0.5
# the map: detail + left + 2 removed (+ disagreement). The noise ratio's two-sided doubt and the
# structure doubt ranked blocks worse on the validation strips (benchmarks/qc.py --split
# validation): they flag an image (summarize), they do not shape the map
# The second opinion's weight, 2, was chosen on the validation strips' correlated noise (pooled
# Spearman 0.69 with it; 0.68 at weight 1 and 0.68 at 4; benchmarks/qc.py --split validation --tta)
_MAP_WEIGHT = {"noise": 0.0, "structure": 0.0, "removed": 2.0, "second": 2.0}
_REMOVED_AT = 1.5  # a block whose residual is 1.5x the noise variance lost signal with the noise
_SPREAD_AT = 0.5
_SECOND_AT = 0.5
_LEFT_AT = 1.0
#: a median residual below this share of the noise variance: the model left noise in
LEFT_IN = 0.7


# ---------------------------------------------------------------------------- per-block signals
def _blocks(a: np.ndarray, block: int) -> np.ndarray:
    """(H, W) -> (H // block, W // block, block * block), full blocks only."""
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    a = a[:h, :w].reshape(h // block, block, w // block, block)
    return a.transpose(0, 2, 1, 3).reshape(h // block, w // block, block * block)


def _edge_blocks(a: np.ndarray, block: int) -> np.ndarray:
    """Like :func:`_blocks`, a last partial block in each direction kept (padded by edge values)."""
    ph, pw = -a.shape[0] % block, -a.shape[1] % block
    return _blocks(np.pad(a, ((0, ph), (0, pw)), mode="edge") if ph or pw else a, block)


def block_signals(x, y, noise: NoiseModel, block: int = BLOCK, halo: int = 0) -> np.ndarray:
    """Signals (``SIGNALS`` order) per block of a 2-D input ``x`` and output ``y`` (float32).

    ``halo`` pixels on each side are context for the filters only; the blocks tile the rest (a
    last partial block counts as a block). Returns shape (len(SIGNALS), rows, cols).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    known = np.isfinite(x) & np.isfinite(y)
    core = (slice(halo, x.shape[0] - halo), slice(halo, x.shape[1] - halo))
    hole = None  # per block pixel: no data
    mean, total, median = np.mean, np.sum, np.median
    if not known.all():  # nodata (NaN): filters run over a fill, the blocks' figures use data only
        x, y = fill_gaps(np.where(known, x, np.nan)), fill_gaps(np.where(known, y, np.nan))
        hole = ~_edge_blocks(known[core].astype(np.float64), block).astype(bool)
        mean, total, median = np.nanmean, np.nansum, np.nanmedian

    def blocks(a):  # (rows, cols, block * block) of the core, NaN where no data
        b = _edge_blocks(np.asarray(a, np.float64)[core], block)
        return b if hole is None else np.where(hole, np.nan, b)

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks without data: NaN, said in the map
        var = mean(blocks(noise.variance(y)), -1)
        rb = blocks(x - y)
        ratio = mean(rb**2, -1) / var
        lb = blocks(-_ndimage().gaussian_laplace(y, 1.0, mode="nearest"))
        rc = rb - mean(rb, -1, keepdims=True)
        lc = lb - mean(lb, -1, keepdims=True)
        den = np.sqrt(total(rc**2, -1) * total(lc**2, -1))
        corr = np.where(den > 0, total(rc * lc, -1) / np.where(den > 0, den, 1.0), 0.0)
        detail = mean(blocks(_ndimage().gaussian_gradient_magnitude(y, 1.0, mode="nearest")), -1) / np.sqrt(var)
        # the output's fine content (all but a 4-px smooth background): noise it left and detail it
        # kept; the median square, so that a few edge pixels do not outweigh the noise spread over the block
        left = median(blocks(y - _ndimage().gaussian_filter(y, _LEFT_SIGMA, mode="nearest")) ** 2, -1) / var
    out = np.stack([ratio, corr, detail, left])
    if hole is not None:
        out[:, np.all(hole, -1)] = np.nan  # a block without data has no figures (corr would read 0)
    return out.astype(np.float32)


def in_sigmas(values, at, noise: NoiseModel, block: int = BLOCK) -> np.ndarray:
    """Per block, the mean of ``values`` (a 2-D plane: the passes' standard deviation, or a
    distance between two outputs) over the noise sigma at the intensity ``at``."""
    sigma = np.sqrt(noise.variance(np.asarray(at, np.float64)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a block without data (NaN) stays NaN
        v = np.nanmean(_edge_blocks(np.asarray(values, np.float64), block), -1)
        return (v / np.nanmean(_edge_blocks(sigma, block), -1)).astype(np.float32)


def signal_maps(x, y, noise: NoiseModel, block: int = BLOCK, chunk: int = 1024):
    """:func:`block_signals` over dask (or numpy) arrays (..., Y, X), chunk by chunk.

    Returns a dask array (..., len(SIGNALS), rows, cols): bounded memory (a chunk of input and
    output plus a halo at a time), whatever the image's size.
    """
    import dask.array as da

    x, y = da.asarray(x), da.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"input shape {x.shape} and output shape {y.shape} differ: the check needs the same grid")
    step = max(block, (chunk // block) * block)
    lead = x.ndim - 2
    chunks = (1,) * lead + (step, step)
    halo = HALO
    depth = {lead: halo, lead + 1: halo}
    xo = da.overlap.overlap(x.rechunk(chunks), depth=depth, boundary="reflect")
    yo = da.overlap.overlap(y.rechunk(chunks), depth=depth, boundary="reflect")

    def one(xb, yb):
        shape = xb.shape[:-2]
        flat_x = xb.reshape((-1,) + xb.shape[-2:])
        flat_y = yb.reshape((-1,) + yb.shape[-2:])
        out = [block_signals(a, b, noise, block, halo) for a, b in zip(flat_x, flat_y)]
        return np.stack(out).reshape(shape + out[0].shape)

    rows = tuple(-(-c // block) for c in x.rechunk(chunks).chunks[lead])
    cols = tuple(-(-c // block) for c in x.rechunk(chunks).chunks[lead + 1])
    out_chunks = xo.chunks[:lead] + ((len(SIGNALS),), rows, cols)
    return da.map_blocks(one, xo, yo, chunks=out_chunks, new_axis=lead, dtype=np.float32)


# ---------------------------------------------------------------------------- trust and summary
def doubts(
    signals: np.ndarray, spread: np.ndarray | None = None, second: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Each signal as a doubt (0: like noise; 1: at its threshold), from (..., SIGNALS, rows, cols)
    and the opt-in passes' blocks (``spread``: the 8 flips' disagreement; ``second``: the second
    opinion's distance), both in noise sigmas (:func:`in_sigmas`)."""
    s = np.asarray(signals, np.float64)
    ratio = np.maximum(s[..., 0, :, :], 1e-6)
    out = {
        "noise": np.abs(np.log2(ratio)),
        # the rms of the residual's part that follows the output's detail, in noise sigmas
        "structure": np.abs(s[..., 1, :, :]) * np.sqrt(ratio) / _STRUCTURE_AT,
        "detail": s[..., 2, :, :],
        "left": s[..., 3, :, :] / _LEFT_AT,
        # more taken than noise: 0 up to 1.5x the noise variance (sampling), then 1 per doubling
        "removed": np.maximum(np.log2(ratio / _REMOVED_AT), 0.0),
    }
    if spread is not None:
        out["disagreement"] = np.asarray(spread, np.float64) / _SPREAD_AT
    if second is not None:
        out["second"] = np.asarray(second, np.float64) / _SECOND_AT
    return out


def combine(
    signals: np.ndarray, spread: np.ndarray | None = None, second: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(doubt, trust) per block: doubt the weighted sum of the signals' doubts; trust ``exp(-doubt)`` in (0, 1]."""
    doubt = map_doubt(doubts(signals, spread, second))
    return doubt.astype(np.float32), np.exp(-doubt).astype(np.float32)


def map_doubt(per: dict[str, np.ndarray]) -> np.ndarray:
    """The map's doubt per block: the signals' doubts (:func:`doubts`) weighted and summed."""
    return sum(v * _MAP_WEIGHT.get(k, 1.0) for k, v in per.items())


def summarize(
    signals: np.ndarray,
    noise: NoiseModel,
    block: int = BLOCK,
    spread=None,
    level: float = 0.0,
    residual=None,
    second=None,
) -> dict:
    """A verdict per image: cleared (the residual looks like the input's noise) or flagged, and why.

    ``level`` is the image's mean intensity (for the noise sigma of a Poisson-Gaussian model);
    ``residual``: :func:`stride_variances` of residual crops (input minus output where the noise was
    measured), to compare the residual's spectrum with the noise's. A block has lost structure
    where its residual exceeds 1.5x the noise variance or follows the output's detail (structure
    doubt >= 1). Flagged: more than 10% of such blocks, a median residual outside 0.7-1.5x the
    noise variance (below: the model left noise in), disagreeing passes, or a residual whose
    lag-1 correlation is 0.3 off the noise's (it took only part of the noise's spectrum, or
    image content). Cleared: none of these, whatever the noise's spectrum. ``second`` (the second
    opinion's blocks, at the noise's stride) is reported where it is over half a noise sigma.
    """
    per = doubts(signals, spread, second)
    ratio = np.asarray(signals, np.float64)[..., 0, :, :]
    have = np.isfinite(ratio)  # blocks with data (the rest are nodata, NaN in the map)
    if not have.any():
        raise ValueError("the check found no block with data (the input is all NaN): nothing to check")

    def share(flags) -> float:
        return float((flags & have).sum() / have.sum())

    median_ratio = float(np.median(ratio[have]))
    # detail and left are where errors are likely, not evidence of one: they shape the map only
    suspect = {k: share(v >= 1) for k, v in per.items() if k not in ("detail", "left")}
    suspect["removed"] = share((ratio > _REMOVED_AT) | (per["structure"] >= 1))
    doubt, _ = combine(signals, spread, second)
    worst = np.unravel_index(int(np.argmax(np.where(np.isfinite(doubt), doubt, -np.inf))), doubt.shape)
    at = (int(worst[-2]) * block + block // 2, int(worst[-1]) * block + block // 2)
    reasons = []
    quiet = noise.gain <= 0 and noise.offset <= 0  # the input shows no noise at all (a render, a constant)
    rms = math.sqrt(median_ratio * float(noise.variance(level)))
    if quiet:
        # no noise to compare with: the residual itself says whether the model changed anything
        if rms > 1e-6 * max(abs(level), 1.0):
            reasons.append(f"the input shows no noise, yet the output differs from it (median residual rms {rms:.3g})")
    elif median_ratio < LEFT_IN:
        reasons.append(f"the residual is {math.sqrt(median_ratio):.2f}x the noise sigma the input shows: noise left in")
    elif median_ratio > 1.5:
        reasons.append(f"the residual is {math.sqrt(median_ratio):.2f}x the noise sigma the input shows")
    if suspect["removed"] > 0.1 and not quiet:
        reasons.append(f"structure removed in {100 * suspect['removed']:.0f}% of the image")
    if suspect.get("disagreement", 0.0) > 0.1:
        reasons.append(f"the 8 passes disagree in {100 * suspect['disagreement']:.0f}% of the image")
    if suspect.get("second", 0.0) > 0.1:
        reasons.append(
            f"restoring the pixel-shuffle sub-images of stride {noise.stride} (where the noise is nearly "
            f"independent) differs by over half a noise sigma in {100 * suspect['second']:.0f}% of the image"
        )
    lag1 = _residual_lag1(residual, noise)
    if lag1 is not None and abs(lag1 - noise.correlation) > 0.3:
        reasons.append(f"the residual's lag-1 correlation is {lag1:.2f}, the noise's {noise.correlation:.2f}")
    sigma = noise.sigma_at(level)
    if reasons:
        text = "flagged: " + "; ".join(reasons) + f"; largest doubt at (y, x) = {at}; noise: {noise.describe(level)}"
    elif quiet:
        text = "cleared: the input shows no noise and the output keeps it as it was"
    else:
        text = f"cleared: residual consistent with noise of sigma {sigma:.4g} ({noise.describe(level)})"
    return {
        "verdict": "flagged" if reasons else "cleared",
        "text": text,
        "noise": {"gain": noise.gain, "offset": noise.offset, "sigma": sigma, "lags": list(noise.lags)},
        "median_ratio": median_ratio,
        "residual_lag1": lag1,
        "suspect_fraction": suspect,
        "largest_doubt_at": list(at),
        "block": block,
    }


def _residual_lag1(v, noise: NoiseModel) -> float | None:
    """Lag-1 correlation of the residual from its :func:`stride_variances` ``v``, at the noise's stride
    (white noise: the residual's own plateau); None without ``v`` or where the residual is ~0."""
    if v is None or not np.all(np.isfinite(v[:4])) or v[0] <= 0:
        return None
    stride = noise.stride if noise.stride > 1 else correlation_profile(v)[0]
    return _lags(np.asarray(v), stride)[0] if stride > 1 else 0.0
