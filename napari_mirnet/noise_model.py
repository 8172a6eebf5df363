"""The noise an image shows, from the image alone: the noise model the residual check compares with.

Immerkaer's operator (the difference of two Laplacians, unit gain) cancels flat and linear image
content and leaves the noise; a robust (median) variance of it over the smoothest pixels estimates
the noise variance (Immerkaer 1996), and a robust line through (local mean, local variance) over
intensity bins a Poisson-Gaussian ``variance = gain * mean + offset`` (in the spirit of Foi et al.
2008). Spatially correlated noise hides from the plain operator (it sees only the noise's fine
part), so the operator is also applied with its taps 2..6 pixels apart: the variance rises with the
stride until the taps are further apart than the correlation reaches, and is read there; how much of
it each shorter stride sees gives the autocorrelation at lags 1..4. Used by :mod:`napari_mirnet.qc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NoiseModel",
    "correlation_profile",
    "estimate_noise",
    "estimate_sigma",
    "fill_gaps",
    "line_spectrum",
    "noise_samples",
    "stride_variances",
]

_MAD = 0.6744897501960817  # median |N(0, 1)|
#: strides at which the noise variance is measured (correlated noise reaching up to ~4 px)
STRIDES = 6
_PLATEAU = 2.0  # a rise of 2x from one stride to the next: noise correlation, not image content
# the line fit weighs intensity bins by 1 / variance**2, but never as if a bin's variance were under a
# quarter of the median bin's: the median-based variance of a few photons per pixel is biased low, and
# such dark bins pulled the gain 30% low (a retina on black, validation strips)
_WEIGHT_FLOOR = 0.25
# fewer samples than this measure no variance worth the name (an image almost without data)
_MIN_SAMPLES = 16


def _ndimage():
    # scipy (~40 MiB, 400 modules) only when a check runs: the engine imports napari_mirnet.qc, and
    # a plain restore must not pay for it (tests/test_engine.py::test_numpy_runs_never_import_dask_array)
    from scipy import ndimage

    return ndimage


@dataclass(frozen=True)
class NoiseModel:
    """Noise variance ``gain * mean + offset`` (Poisson-Gaussian; ``gain`` 0: Gaussian), input units.

    ``lags``: the noise's autocorrelation at lags 1..4 px (zeros: white), ``stride``: the spacing of
    the operator that measured the variance (1 for white noise; wider for correlated noise).
    """

    gain: float
    offset: float
    lags: tuple = (0.0, 0.0, 0.0, 0.0)
    stride: int = 1

    @property
    def correlation(self) -> float:
        """Lag-1 autocorrelation of the noise (0: white)."""
        return float(self.lags[0]) if self.lags else 0.0

    def variance(self, mean) -> np.ndarray:
        # never 0 (the ratio divides by it), and for photon counts never below one photon's variance:
        # a fit's negative offset must not make dark backgrounds look noiseless
        floor = max(self.offset, 0.0) * 1e-3 + self.gain**2 + 1e-12
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
        if self.stride > 1:
            text += f"; spatially correlated (lag-1 {self.correlation:.2f}, lag-2 {self.lags[1]:.2f})"
        return text


def _highpass(x: np.ndarray, k: int = 1) -> np.ndarray:
    """Immerkaer's operator with its taps ``k`` pixels apart, valid pixels only (``k`` trimmed per side).

    The operator is separable, ``[1, -2, 1] x [1, -2, 1] / 6``: two passes of shifted slices (the
    wider the stride, the less of a correlated noise's variance it misses).
    """
    x = np.asarray(x, np.float64)
    rows = x[: -2 * k] - 2 * x[k:-k] + x[2 * k :]
    return (rows[:, : -2 * k] - 2 * rows[:, k:-k] + rows[:, 2 * k :]) / 6.0


def line_spectrum(acf, n: int) -> np.ndarray:
    """(n,) float64 power spectrum (``fft`` frequency order, negative parts clipped to 0) of a line of
    pixels whose autocorrelation is ``1, acf[0], acf[1] ...`` and 0 beyond."""
    f = np.fft.fftfreq(n)
    p = np.ones(n)
    for d, rho in enumerate(acf, 1):
        p = p + 2 * float(rho) * np.cos(2 * np.pi * f * d)
    return np.clip(p, 0, None)


def fill_gaps(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """A 2-D plane with its NaN (nodata) pixels filled, so that filters can run over it (the caller
    leaves the filled pixels out of its statistics): near data by a normalised Gaussian average of
    the pixels with data (sigma, then 4 sigma), further away by their mean (filters reaching a few
    sigma see no difference). A plane without data is all zeros."""
    x = np.asarray(x, np.float64)
    valid = np.isfinite(x)
    if valid.all():
        return x
    if not valid.any():
        return np.zeros_like(x)
    data = np.where(valid, x, 0.0)
    out = np.where(valid, x, float(data.sum() / valid.sum()))
    todo = ~valid
    for s in (sigma, 4 * sigma):
        num = _ndimage().gaussian_filter(data, s, mode="nearest")
        den = _ndimage().gaussian_filter(valid.astype(np.float64), s, mode="nearest")
        reach = todo & (den > 1e-3)
        out[reach] = num[reach] / den[reach]
        todo &= ~reach
    return out


def _gradient(x: np.ndarray) -> np.ndarray:
    """Smoothed gradient magnitude; NaN where the plane has no data."""
    g = _ndimage().gaussian_gradient_magnitude(fill_gaps(x), 2.0)
    return np.where(np.isfinite(x), g, np.nan)


def _flat(x: np.ndarray, keep: float = 0.8, k: int = 1, grad: np.ndarray | None = None) -> np.ndarray:
    """Mask (valid pixels at stride ``k``) of the ``keep`` fraction with the weakest smoothed gradient.

    Edges leak into the high-pass; leaving out the strongest fifth keeps them from the estimate.
    Pixels without data (NaN) are never flat.
    """
    g = _gradient(x) if grad is None else grad
    known = np.isfinite(g)
    if not known.any():
        return np.zeros((g.shape[0] - 2 * k, g.shape[1] - 2 * k), bool)
    with np.errstate(invalid="ignore"):
        return g[k:-k, k:-k] <= np.quantile(g[known], keep)


def estimate_sigma(image) -> float:
    """Gaussian noise sigma of a 2-D image, from the image alone (Immerkaer 1996, robust form).

    The Laplacian-difference operator cancels flat and linear image content; the median absolute
    deviation of what is left, over the smoothest 80% of pixels, estimates sigma. Spatially
    correlated noise is measured at the stride where it looks white (see :func:`estimate_noise`).
    """
    return math.sqrt(estimate_noise(_plane(image), poisson=False).offset)


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


def noise_samples(image, k: int = 1, grad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(local mean, stride-``k`` high-pass value) of the smooth pixels of a 2-D image."""
    x = _plane(image)
    # the local mean over a fill of any nodata (NaN would spread along whole rows in the running
    # sums); the high-pass only where its taps all have data
    mean = _ndimage().uniform_filter(fill_gaps(x), 2 * k + 3, mode="nearest")[k:-k, k:-k]
    high = _highpass(x, k)
    flat = _flat(x, k=k, grad=grad) & np.isfinite(high)
    return mean[flat], high[flat]


def stride_variances(planes, strides: int = STRIDES, grads=None) -> np.ndarray:
    """Robust variance of Immerkaer's operator at strides 1..``strides``, pooled over 2-D planes.

    For white noise all equal the noise variance; for correlated noise they rise with the stride
    until its taps are further apart than the correlation reaches (image content also adds a little
    more at each stride, most in textures).
    """
    grads = grads or [_gradient(p) for p in planes]  # once per plane: the costly part
    out = []
    for k in range(1, strides + 1):
        parts = [_highpass(p, k)[_flat(p, k=k, grad=g)] for p, g in zip(planes, grads) if min(p.shape) > 4 * k + 4]
        samples = np.concatenate([q[np.isfinite(q)] for q in parts]) if parts else np.zeros(0)
        out.append(_robust_var(samples) if samples.size else np.nan)
    return np.asarray(out)


def correlation_profile(v: np.ndarray) -> tuple[int, tuple]:
    """(stride, lags 1..4) from :func:`stride_variances` ``v``: the noise variance is read at the
    stride after the last one where ``v`` still rose by 2x (1: white); the lags from how much of
    it each shorter stride sees (isotropic, separable correlation assumed)."""
    k = 1
    while k < len(v) and np.isfinite(v[k]) and v[k - 1] > 0 and v[k] >= _PLATEAU * v[k - 1]:
        k += 1
    stride = 1 if k == 1 else min(k + 1, int(np.isfinite(v).sum()))
    return stride, _lags(v, stride) if stride > 1 else (0.0, 0.0, 0.0, 0.0)


def _lags(v: np.ndarray, stride: int) -> tuple:
    """Noise autocorrelation at lags 1..4 from stride variances, the variance read at ``stride``."""
    # the stride-j operator's noise variance over the true one is F(j)**2, F(j) = 1 - 4/3 rho(j) +
    # 1/3 rho(2j): solved from lag 4 down, rho beyond 4 taken as 0
    f = np.sqrt(np.clip(v[:4] / v[stride - 1], 0.0, 1.0))
    rho = [0.0] * 9
    for j in (4, 3, 2, 1):
        rho[j] = float(np.clip(0.75 * (1 - f[j - 1] + rho[2 * j] / 3), 0.0, 1.0))
    return tuple(round(r, 4) for r in rho[1:5])


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
    planes = [_plane(p) for p in planes]
    grads = [_gradient(p) for p in planes]
    stride, lags = correlation_profile(stride_variances(planes, grads=grads))
    parts = [noise_samples(p, stride, g) for p, g in zip(planes, grads) if min(p.shape) > 4 * stride + 4]
    mean = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    d = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    if d.size < _MIN_SAMPLES:
        raise ValueError(
            f"the noise estimate found {d.size} pixels with data and smooth surroundings, too few to measure "
            f"the noise (at least {_MIN_SAMPLES} needed): the image is too small or mostly without data (NaN)"
        )
    const = _robust_var(d)
    if poisson is False or mean.size < bins * 50:
        return NoiseModel(0.0, const, lags, stride)
    gain, offset = _fit_line(mean, d, bins)
    span = np.quantile(mean, [0.05, 0.95])
    explained = gain * (span[1] - span[0]) / max(gain * span[1] + offset, 1e-12)
    if poisson is None and (gain <= 0 or explained < 0.2):
        return NoiseModel(0.0, const, lags, stride)
    return NoiseModel(max(gain, 0.0), offset, lags, stride)


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
    w = ws / np.maximum(vs, max(float(np.median(vs)) * _WEIGHT_FLOOR, 1e-30)) ** 2
    a = np.vstack([xs, np.ones_like(xs)]).T
    coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], vs * np.sqrt(w), rcond=None)[0]
    return float(coef[0]), float(coef[1])
