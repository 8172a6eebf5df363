"""The detail filter a model fine-tuned on correlated noise applies after restoring: an empirical
Wiener filter that gives back what the residual (input minus output) holds beyond the noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import noise_model

__all__ = ["DetailFilter", "line_spectrum", "noise_spectrum", "return_detail"]


def line_spectrum(acf, n: int, device=None) -> torch.Tensor:
    """:func:`napari_mirnet.noise_model.line_spectrum` as a float64 tensor on ``device``."""
    return torch.from_numpy(noise_model.line_spectrum(acf, n)).to(device)


def noise_spectrum(acf_y, acf_x, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h, w) power spectrum (mean 1, ``fft2`` frequency order) of noise whose autocorrelation along
    columns and rows is ``1, acf[0], acf[1] ...`` (separable: the product of the two axes' spectra)."""
    p = line_spectrum(acf_y, h, device)[:, None] * line_spectrum(acf_x, w, device)[None, :]
    return (p / p.mean().clamp_min(1e-12)).to(dtype)


@dataclass(frozen=True)
class DetailFilter:
    """The noise a fine-tuned model's :func:`return_detail` step assumes: its autocorrelation along
    columns (``vertical``) and rows (``horizontal``) at lags 1, 2 ..., and its variance
    ``gain * intensity + floor`` (in the model's normalised units); ``window``: the side of the
    windows the filter adapts to (0: one filter for the whole image, as files of session 20 were)."""

    vertical: tuple[float, ...]
    horizontal: tuple[float, ...]
    gain: float
    floor: float
    window: int = 0

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 1, 1): the noise variance at the mean intensity of each plane (or window) of ``x``
        (at least a small floor)."""
        v = self.gain * x.mean(dim=(-2, -1), keepdim=True) + self.floor
        return v.clamp_min(max(self.floor, 0.0) + 1e-3 * abs(self.gain) + 1e-12)


def return_detail(x: torch.Tensor, y: torch.Tensor, noise: DetailFilter) -> torch.Tensor:
    """``y`` plus what the residual ``x - y`` holds beyond the ``noise``.

    An empirical Wiener filter on the residual, plane by plane: at each frequency, the share of the
    residual's (locally averaged) power above the noise's power there. Noise correlated over a few
    pixels is weak at the highest frequencies, where a model restoring pixel-shuffle sub-images
    loses the finest detail: this gives that detail back and keeps the noise out. With a
    ``noise.window``, the filter adapts to overlapping windows of that side (detail lost in a
    textured part of the image is not averaged with flat parts that lost none).
    """
    w = int(noise.window)
    if w and min(x.shape[-2:]) > w:
        return y + _windowed(x.float(), (x - y).float(), noise).to(y.dtype)
    return y + _wiener(x.float(), (x - y).float(), noise).to(y.dtype)


def _wiener(x: torch.Tensor, r: torch.Tensor, noise: DetailFilter, taper: torch.Tensor | None = None) -> torch.Tensor:
    """What the residual ``r`` (..., h, w) holds beyond the noise, each of its planes filtered whole
    (times ``taper`` first, whose energy the noise's power is scaled by)."""
    h, w = r.shape[-2:]
    spec = torch.fft.fft2(r if taper is None else r * taper)
    power = spec.real.square() + spec.imag.square()
    lead = power.shape[:-2]
    flat = power.reshape(-1, 1, h, w)
    smooth = F.avg_pool2d(F.pad(flat, (2, 2, 2, 2), mode="circular"), 5, 1).reshape(*lead, h, w)
    energy = h * w if taper is None else float(taper.square().sum())
    noise_power = noise.variance(x) * energy * noise_spectrum(noise.vertical, noise.horizontal, h, w, x.device)
    gain = (1 - noise_power / smooth.clamp_min(1e-20)).clamp(0, 1)
    return torch.fft.ifft2(gain * spec).real


def _windowed(x: torch.Tensor, r: torch.Tensor, noise: DetailFilter) -> torch.Tensor:
    """:func:`_wiener` in windows of ``noise.window`` px at half-window steps, put back together
    (sine tapers before and after: their squares at half-window steps add up to 1)."""
    b, c, h, w = r.shape
    n, hop = int(noise.window), int(noise.window) // 2
    # reflected margins of half a window, and up to whole steps, so every pixel lies under two windows a side
    pad = (hop, hop + (-w) % hop, hop, hop + (-h) % hop)
    rp = F.pad(r.reshape(b * c, 1, h, w), pad, mode="reflect")
    xp = F.pad(x.reshape(b * c, 1, h, w), pad, mode="reflect")
    size = rp.shape[-2:]

    def windows(t: torch.Tensor) -> torch.Tensor:  # (b*c, count, n, n)
        return F.unfold(t, n, stride=hop).transpose(1, 2).reshape(b * c, -1, n, n)

    line = torch.sin(torch.pi * (torch.arange(n, device=r.device, dtype=r.dtype) + 0.5) / n)
    taper = line[:, None] * line[None, :]
    out = _wiener(windows(xp), windows(rp), noise, taper) * taper
    out = F.fold(out.reshape(b * c, -1, n * n).transpose(1, 2), size, n, stride=hop)
    return out[..., hop : hop + h, hop : hop + w].reshape(b, c, h, w)
