"""What a denoiser took away, and where not to trust it: residual signals that need no clean image.

Pure numpy/scipy (dask only to run the block signals chunk by chunk). Three signals per block of
``block`` x ``block`` input pixels, each 0 where the residual (input minus output) looks like the
noise the input shows, growing where it does not:

- **noise consistency**: the residual's mean square against the variance a noise model estimated
  from the input alone predicts (:func:`estimate_noise`: Immerkaer's Laplacian-difference operator,
  a median absolute deviation, and for Poisson-Gaussian noise a robust line through local variance
  against local mean, in the spirit of Foi et al. 2008), as ``|log2(ratio)|``;
- **structure**: the residual's correlation with the output's own detail (its negative Laplacian),
  signal removed (a blur) or added (a hallucination) rather than noise;
- **detail**: the output's mean gradient over the noise sigma: where the image has fine structure
  the model had to tell it from noise, and errors are likelier (it shapes the map, not the verdict);
- **disagreement** (opt-in, 8 passes): the spread of the 8 flips/rotations' outputs over the noise
  sigma.

:func:`combine` turns them into a doubt score and a trust map in [0, 1]; :func:`summarize` into a
verdict per image. See docs/qc.md for how to read them and where they fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
    "noise_samples",
    "signal_maps",
    "summarize",
]

#: Default block edge (input pixels) of the trust map.
BLOCK = 32
#: The signal names, in the order :func:`block_signals` returns them.
SIGNALS = ("noise", "structure", "detail")
# Immerkaer's operator (difference of two Laplacians), scaled to unit gain for white noise: its
# output on flat or linearly varying patches is the noise alone, with the noise's variance
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64) / 6.0
_MAD = 0.6744897501960817  # median |N(0, 1)|
# thresholds at which a signal counts as "not noise" (doubt 1 each): ratio 2x / 0.5x; the part of the
# residual that follows the output's detail half the noise sigma (rms); spread 0.5 sigma; output
# detail (mean gradient) 1 noise sigma per pixel. Set on synthetic images and the matched-noise rows
# of benchmarks/qc.py; the mismatched rows were not used to choose them
_STRUCTURE_AT = 0.5
_MAP_WEIGHT = {"structure": 1 / 3}
_REMOVED_AT = 1.5  # a block whose residual is 1.5x the noise variance lost signal with the noise
_SPREAD_AT = 0.5


@dataclass(frozen=True)
class NoiseModel:
    """Noise variance ``gain * mean + offset`` (Poisson-Gaussian; ``gain`` 0: Gaussian), input units."""

    gain: float
    offset: float
    correlation: float = 0.0  # lag-1 correlation of the noise (0: white), from the input alone

    def variance(self, mean) -> np.ndarray:
        floor = max(self.offset, 0.0) * 1e-3 + 1e-12  # never 0: the ratio divides by it
        return np.maximum(self.gain * np.asarray(mean, np.float64) + self.offset, floor)

    def sigma_at(self, mean: float) -> float:
        return float(np.sqrt(self.variance(mean)))

    def describe(self, mean: float | None = None) -> str:
        if self.gain <= 0:
            text = f"Gaussian, sigma {math.sqrt(max(self.offset, 0.0)):.4g}"
        else:
            text = f"Poisson-Gaussian, variance {self.gain:.4g} * mean + {self.offset:.4g}"
            if mean is not None:
                text += f" (sigma {self.sigma_at(mean):.4g} at the mean {mean:.4g})"
        if self.correlation > 0.2:
            text += f"; spatially correlated (lag-1 {self.correlation:.2f})"
        return text


def _highpass(x: np.ndarray) -> np.ndarray:
    """Immerkaer's operator, valid pixels only (one pixel trimmed per side)."""
    return _ndimage().correlate(np.asarray(x, np.float64), _IMMERKAER, mode="nearest")[1:-1, 1:-1]


def _flat(x: np.ndarray, keep: float = 0.8) -> np.ndarray:
    """Mask (valid pixels) of the ``keep`` fraction with the weakest smoothed gradient.

    Edges leak into the high-pass; leaving out the strongest fifth keeps them from the estimate.
    """
    g = _ndimage().gaussian_gradient_magnitude(np.asarray(x, np.float64), 2.0)[1:-1, 1:-1]
    return g <= np.quantile(g, keep)


def estimate_sigma(image) -> float:
    """Gaussian noise sigma of a 2-D image, from the image alone (Immerkaer 1996, robust form).

    The Laplacian-difference operator cancels flat and linear image content; the median absolute
    deviation of what is left, over the smoothest 80% of pixels, estimates sigma.
    """
    x = _plane(image)
    return math.sqrt(_robust_var(_highpass(x)[_flat(x)]))


def _robust_var(d: np.ndarray) -> float:
    """Variance of zero-mean noise samples: from the median absolute value, or where more than half
    are exactly 0 (dark photon-counting backgrounds) from the mean absolute value."""
    med = float(np.median(np.abs(d))) if d.size else 0.0
    if med > 0:
        return (med / _MAD) ** 2
    return float(np.pi / 2 * np.mean(np.abs(d)) ** 2) if d.size else 0.0


def _plane(image) -> np.ndarray:
    x = np.asarray(image, np.float64)
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"the noise estimate needs a 2-D image of at least 8 x 8 pixels, got shape {x.shape}")
    return x


def noise_samples(image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local mean, high-pass value, lag-1 product pairs) of the smooth pixels of a 2-D image."""
    x = _plane(image)
    d = _highpass(x)
    mean = _ndimage().uniform_filter(x, 5, mode="nearest")[1:-1, 1:-1]
    flat = _flat(x)
    # neighbouring pixels of the noise itself: the image minus a 3x3 median leaves mostly noise
    n = (x - _ndimage().median_filter(x, 3, mode="nearest"))[1:-1, 1:-1]
    pairs = np.stack([n[:, :-1][flat[:, :-1]], n[:, 1:][flat[:, :-1]]])
    return mean[flat], d[flat], pairs


def estimate_noise(images, poisson: bool | None = None, bins: int = 16) -> NoiseModel:
    """Noise model of 2-D image(s), from the images alone.

    Parameters
    ----------
    images : array or list of arrays
        2-D planes (or crops) of the same image, in its units.
    poisson : bool, optional
        Fit ``variance = gain * mean + offset`` (True), a constant (False) or decide (None: keep
        the gain when it explains at least a fifth of the variance across the intensity range).
    bins : int
        Intensity bins of the robust line fit.

    Returns
    -------
    NoiseModel
    """
    planes = [images] if isinstance(images, np.ndarray) and images.ndim == 2 else list(images)
    parts = [noise_samples(p) for p in planes]
    mean = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    pairs = np.concatenate([p[2] for p in parts], axis=1)
    corr = _lag1(pairs)
    const = _robust_var(d)
    if poisson is False or mean.size < bins * 50:
        return NoiseModel(0.0, const, corr)
    gain, offset = _fit_line(mean, d, bins)
    span = np.quantile(mean, [0.05, 0.95])
    explained = gain * (span[1] - span[0]) / max(gain * span[1] + offset, 1e-12)
    if poisson is None and (gain <= 0 or explained < 0.2):
        return NoiseModel(0.0, const, corr)
    return NoiseModel(max(gain, 0.0), offset, corr)


def _lag1(pairs: np.ndarray) -> float:
    """Robust lag-1 correlation of the noise (median-based: edges that survive do not dominate)."""
    a, b = pairs
    s, t = a + b, a - b
    vs, vt = np.median(np.abs(s)) ** 2, np.median(np.abs(t)) ** 2
    # the 3x3 median takes part of the noise with it and pulls the product negative: ~-0.2 on white
    # noise, so correlations are reported above that floor
    raw = (vs - vt) / max(vs + vt, 1e-30)
    return float(np.clip((raw + 0.2) / 1.2, 0.0, 1.0))


def _fit_line(mean: np.ndarray, d: np.ndarray, bins: int) -> tuple[float, float]:
    """Weighted least-squares line through (bin mean, robust variance) of intensity bins."""
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    xs, vs, ws = [], [], []
    for k in range(len(edges) - 1):
        sel = idx == k
        if sel.sum() < 50:
            continue
        xs.append(mean[sel].mean())
        vs.append(_robust_var(d[sel]))
        ws.append(sel.sum())
    if len(xs) < 3:
        return 0.0, _robust_var(d)
    xs, vs, ws = map(np.asarray, (xs, vs, ws))
    # relative errors: the variance of a variance estimate grows with the variance itself
    w = ws / np.maximum(vs, 1e-30) ** 2
    a = np.vstack([xs, np.ones_like(xs)]).T
    coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], vs * np.sqrt(w), rcond=None)[0]
    return float(coef[0]), float(coef[1])


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
    r = x - y
    lap = -_ndimage().gaussian_laplace(y, 1.0, mode="nearest")
    core = (slice(halo, x.shape[0] - halo), slice(halo, x.shape[1] - halo))
    rb = _edge_blocks(r[core], block)
    ratio = (rb**2).mean(-1) / _edge_blocks(noise.variance(y[core]), block).mean(-1)
    lb = _edge_blocks(lap[core], block)
    rc = rb - rb.mean(-1, keepdims=True)
    lc = lb - lb.mean(-1, keepdims=True)
    den = np.sqrt((rc**2).sum(-1) * (lc**2).sum(-1))
    corr = np.where(den > 0, (rc * lc).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
    grad = _ndimage().gaussian_gradient_magnitude(y, 1.0, mode="nearest")[core]
    detail = _edge_blocks(grad, block).mean(-1) / np.sqrt(_edge_blocks(noise.variance(y[core]), block).mean(-1))
    return np.stack([ratio, corr, detail]).astype(np.float32)


def spread_blocks(sd, mean_out, noise: NoiseModel, block: int = BLOCK) -> np.ndarray:
    """Disagreement per block: the passes' standard deviation ``sd`` over the noise sigma at the
    passes' mean output ``mean_out`` (2-D planes)."""
    sigma = np.sqrt(noise.variance(np.asarray(mean_out, np.float64)))
    return (_edge_blocks(np.asarray(sd, np.float64), block).mean(-1) / _edge_blocks(sigma, block).mean(-1)).astype(
        np.float32
    )


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
    halo = 4  # the Laplacian of Gaussian (sigma 1) reaches ~4 pixels
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
def doubts(signals: np.ndarray, spread: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each signal as a doubt (0: like noise; 1: at its threshold), from (..., SIGNALS, rows, cols)."""
    s = np.asarray(signals, np.float64)
    ratio = np.maximum(s[..., 0, :, :], 1e-6)
    out = {
        "noise": np.abs(np.log2(ratio)),
        # the rms of the residual's part that follows the output's detail, in noise sigmas
        "structure": np.abs(s[..., 1, :, :]) * np.sqrt(ratio) / _STRUCTURE_AT,
        "detail": s[..., 2, :, :],
    }
    if spread is not None:
        out["disagreement"] = np.asarray(spread, np.float64) / _SPREAD_AT
    return out


def combine(signals: np.ndarray, spread: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(doubt, trust) per block: doubt the weighted sum of the signals' doubts; trust ``exp(-doubt)`` in (0, 1]."""
    per = doubts(signals, spread)
    # structure counts a third in the map: at full weight it ranked blocks worse on the matched-noise
    # rows of benchmarks/qc.py (it still flags an image at doubt 1, see summarize)
    doubt = sum(v * _MAP_WEIGHT.get(k, 1.0) for k, v in per.items())
    return doubt.astype(np.float32), np.exp(-doubt).astype(np.float32)


def summarize(signals: np.ndarray, noise: NoiseModel, block: int = BLOCK, spread=None, level: float = 0.0) -> dict:
    """A verdict per image: cleared (the residual looks like the input's noise) or flagged, and why.

    ``level`` is the image's mean intensity (for the noise sigma of a Poisson-Gaussian model).
    A block has lost structure where its residual exceeds 1.5x the noise variance or follows the
    output's detail (structure doubt >= 1); more than 10% of such blocks, a median residual outside
    0.7-1.5x the noise variance, disagreeing passes, or spatially correlated input noise (which a
    model trained on white noise leaves behind) flag the image.
    """
    per = doubts(signals, spread)
    ratio = np.asarray(signals, np.float64)[..., 0, :, :]
    median_ratio = float(np.median(ratio))
    # detail is where errors are likely, not evidence of one: it shapes the map, not the verdict
    suspect = {k: float((v >= 1).mean()) for k, v in per.items() if k != "detail"}
    removed = (ratio > _REMOVED_AT) | (per["structure"] >= 1)
    suspect["removed"] = float(removed.mean())
    doubt, _ = combine(signals, spread)
    worst = np.unravel_index(int(np.argmax(doubt)), doubt.shape)
    at = (int(worst[-2]) * block + block // 2, int(worst[-1]) * block + block // 2)
    reasons = []
    if not 0.7 <= median_ratio <= 1.5:
        reasons.append(f"the residual is {math.sqrt(median_ratio):.2f}x the noise sigma the input shows")
    if suspect["removed"] > 0.1:
        reasons.append(f"structure removed in {100 * suspect['removed']:.0f}% of the image")
    if suspect.get("disagreement", 0.0) > 0.1:
        reasons.append(f"the 8 passes disagree in {100 * suspect['disagreement']:.0f}% of the image")
    if noise.correlation > 0.3:
        reasons.append(f"the input's noise is spatially correlated (lag-1 {noise.correlation:.2f})")
    sigma = noise.sigma_at(level)
    if reasons:
        text = "flagged: " + "; ".join(reasons) + f"; largest doubt at (y, x) = {at}"
    else:
        text = f"cleared: residual consistent with noise of sigma {sigma:.4g} ({noise.describe(level)})"
    return {
        "verdict": "flagged" if reasons else "cleared",
        "text": text,
        "noise": {"gain": noise.gain, "offset": noise.offset, "sigma": sigma, "correlation": noise.correlation},
        "median_ratio": median_ratio,
        "suspect_fraction": suspect,
        "largest_doubt_at": list(at),
        "block": block,
    }
