"""Whether a fine-tuned model restores the user's data better than the model it started from,
judged without clean images: Stein's unbiased risk estimate (SURE) on held-out patches at full
resolution, paired patch by patch.

For noise ``n`` of covariance ``S`` (Gaussian), the mean squared error of a restoration ``f(x)``
of ``x = y + n`` is, in expectation, ``|f(x) - x|^2 + 2 tr(S J_f) - tr(S)`` per pixel, with ``J_f``
the Jacobian of ``f`` at ``x``. The trace is estimated by Monte Carlo (a probe ``c`` drawn with
covariance ``S``: ``c . (f(x + e c) - f(x)) / e``), ``S`` from the data alone: a variance that may
grow with intensity (Poisson-Gaussian) and the measured correlation between neighbours. ``tr(S)``
is the same for both models and drops out of their difference. Each model is scored through its
own inference path (pixel-shuffle sub-images included), both with the same probes; each (patch,
probe) is one unit, and the fine-tuned model is kept only when its mean gain exceeds
:data:`MARGIN_SE` standard errors of the units' differences.

Unlike a validation loss of the training objective (half-resolution sub-images against their
neighbours), this scores the very output restore computes; unlike a blind-spot score, it does not
favour models that lean less on each pixel's own value (a blind-spot score rewards blur).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..detail_filter import line_spectrum
from .noise_shape import correlated_lags

__all__ = ["MARGIN_SE", "HeldOutCheck", "compare"]

#: the fine-tuned model must beat the source by this many standard errors of the paired difference
MARGIN_SE = 2.0
_PROBES = 2  # Monte Carlo probes per held-out patch
_EPS = 0.02  # probe step, as a fraction of the noise


def _kernel_1d(rhos: list[float], n: int = 64) -> np.ndarray:
    """A symmetric kernel whose autocorrelation is ``1, rhos[0], rhos[1] ...`` (the correlated lags
    only), unit energy: the square root of the power spectrum that autocorrelation implies."""
    k = correlated_lags(rhos)
    kern = np.real(np.fft.ifft(np.sqrt(line_spectrum(rhos[:k], n).numpy())))
    kern = np.fft.fftshift(kern)[n // 2 - k - 1 : n // 2 + k + 2]
    return kern / np.sqrt(np.sum(kern**2))


@dataclass(frozen=True)
class HeldOutCheck:
    """The noise model and the fixed probes of one run's check."""

    gain: float  # noise variance = gain * intensity + floor
    floor: float
    kernel_y: tuple[float, ...]
    kernel_x: tuple[float, ...]
    seed: int
    probes: int = _PROBES

    @classmethod
    def create(cls, corr: dict[str, list[float]], level: tuple[float, float], seed: int) -> HeldOutCheck:
        """For the autocorrelation ``corr`` (``noise_autocorrelation``) and ``level`` (``noise_level``)."""
        ky, kx = _kernel_1d(corr["vertical"]), _kernel_1d(corr["horizontal"])
        return cls(float(level[0]), float(level[1]), tuple(ky.tolist()), tuple(kx.tolist()), seed)

    def _probe(self, x: torch.Tensor, unit: int) -> torch.Tensor:
        """A draw of the noise model for the patch ``x`` (1, C, H, W), fixed by ``unit``."""
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, 5167, unit]).integers(2**62)))
        return self.draw(x, gen)

    def draw(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Noise as the model says it is in the patches ``x`` (B, C, H, W): correlated by the measured
        kernels, of the variance each pixel's local mean implies; random numbers from ``gen`` (CPU)."""
        ky = torch.tensor(self.kernel_y, dtype=x.dtype)
        kx = torch.tensor(self.kernel_x, dtype=x.dtype)
        py, px = len(ky) // 2, len(kx) // 2
        b, c, h, w = x.shape
        white = torch.randn(b * c, 1, h + 2 * py, w + 2 * px, generator=gen, dtype=x.dtype)
        colour = F.conv2d(F.conv2d(white, ky.view(1, 1, -1, 1)), kx.view(1, 1, 1, -1))
        return colour.view(b, c, h, w).to(x.device) * self.variance(x).sqrt()

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """The noise variance the model expects at each pixel of ``x`` (from its local mean)."""
        v = self.gain * F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + self.floor
        return v.clamp_min(max(self.floor, 0.0) + 1e-3 * self.gain)  # a dark pixel still has read noise

    @torch.no_grad()
    def scores(self, model, val: torch.Tensor) -> np.ndarray:
        """The estimated mean squared error of ``model`` per unit (patch, probe) on ``val`` (N, C, H, W)."""
        out = np.empty(len(val) * self.probes)
        for i in range(len(val)):
            x = val[i][None]
            fx = model(x)
            fit = float((fx - x).square().mean()) - float(self.variance(x).mean())
            for p in range(self.probes):
                u = i * self.probes + p
                c = self._probe(x, u)
                out[u] = fit + 2 * float((c * (model(x + _EPS * c) - fx)).mean()) / _EPS
        return out


def compare(candidate: np.ndarray, source: np.ndarray) -> dict:
    """The paired comparison of per-unit estimated errors: mean difference (candidate - source) in %
    of the source's, its standard error, the gain in dB it implies, and whether the candidate is
    better by the margin."""
    if not np.all(np.isfinite(candidate)):  # diverged training: NaN or Inf weights or outputs
        return {"delta_percent": float("inf"), "se_percent": 0.0, "estimated_gain_db": float("-inf"),
                "units": len(candidate), "margin_se": MARGIN_SE, "better": False, "finite": False}  # fmt: skip
    d = np.asarray(candidate, np.float64) - np.asarray(source, np.float64)
    src, cand = float(np.mean(source)), float(np.mean(candidate))
    ref = abs(src) or 1.0
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    gain_db = 10 * np.log10(src / cand) if src > 0 and cand > 0 else float("nan")
    return {
        "delta_percent": round(100 * mean / ref, 4),
        "se_percent": round(100 * se / ref, 4),
        "estimated_gain_db": round(float(gain_db), 3),
        "units": int(len(d)),
        "margin_se": MARGIN_SE,
        "better": bool(mean < -MARGIN_SE * se),
        "finite": True,
    }
