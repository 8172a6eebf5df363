"""The detail filter a model fine-tuned on correlated noise applies after restoring: an empirical
Wiener filter that gives back what the residual (input minus output) holds beyond the noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DetailFilter", "line_spectrum", "noise_spectrum", "return_detail"]


def line_spectrum(acf, n: int, device=None) -> torch.Tensor:
    """(n,) float64 power spectrum (``fft`` frequency order, negative parts clipped to 0) of a line of
    pixels whose autocorrelation is ``1, acf[0], acf[1] ...`` and 0 beyond."""
    f = torch.fft.fftfreq(n, device=device, dtype=torch.float64)
    p = torch.ones(n, device=device, dtype=torch.float64)
    for d, rho in enumerate(acf, 1):
        p = p + 2 * float(rho) * torch.cos(2 * torch.pi * f * d)
    return p.clamp_min(0)


def noise_spectrum(acf_y, acf_x, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h, w) power spectrum (mean 1, ``fft2`` frequency order) of noise whose autocorrelation along
    columns and rows is ``1, acf[0], acf[1] ...`` (separable: the product of the two axes' spectra)."""
    p = line_spectrum(acf_y, h, device)[:, None] * line_spectrum(acf_x, w, device)[None, :]
    return (p / p.mean().clamp_min(1e-12)).to(dtype)


@dataclass(frozen=True)
class DetailFilter:
    """The noise a fine-tuned model's :func:`return_detail` step assumes: its autocorrelation along
    columns (``vertical``) and rows (``horizontal``) at lags 1, 2 ..., and its variance
    ``gain * intensity + floor`` (in the model's normalised units)."""

    vertical: tuple[float, ...]
    horizontal: tuple[float, ...]
    gain: float
    floor: float

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, 1): the noise variance at each plane's mean intensity (at least a small floor)."""
        v = self.gain * x.mean(dim=(-2, -1), keepdim=True) + self.floor
        return v.clamp_min(max(self.floor, 0.0) + 1e-3 * abs(self.gain) + 1e-12)


def return_detail(x: torch.Tensor, y: torch.Tensor, noise: DetailFilter) -> torch.Tensor:
    """``y`` plus what the residual ``x - y`` holds beyond the ``noise``.

    An empirical Wiener filter on the residual, plane by plane: at each frequency, the share of the
    residual's (locally averaged) power above the noise's power there. Noise correlated over a few
    pixels is weak at the highest frequencies, where a model restoring pixel-shuffle sub-images
    loses the finest detail: this gives that detail back and keeps the noise out.
    """
    h, w = x.shape[-2:]
    spec = torch.fft.fft2((x - y).float())
    power = spec.real.square() + spec.imag.square()
    b, c = power.shape[:2]
    smooth = F.avg_pool2d(F.pad(power.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="circular"), 5, 1)
    noise_power = noise.variance(x.float()) * (h * w) * noise_spectrum(noise.vertical, noise.horizontal, h, w, x.device)
    gain = (1 - noise_power / smooth.reshape(b, c, h, w).clamp_min(1e-20)).clamp(0, 1)
    return y + torch.fft.ifft2(gain * spec).real.to(y.dtype)
