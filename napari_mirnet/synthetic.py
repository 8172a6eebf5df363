"""Procedural training images and camera noise: data that needs no licence and never runs out.

- :func:`dead_leaves`: the dead-leaves model (occluding discs with a power-law size distribution),
  whose images share the statistics that matter to denoisers with photographs: a ~1/f^2 power
  spectrum, sharp occlusion edges at every scale, and (here) leaves filled with flat colours, smooth
  gradients or oriented textures. Denoisers trained on it come close to ones trained on photographs
  (Baradad et al., NeurIPS 2021; Achddou et al., 2021).
- :func:`camera_noise`: noise as a camera makes it: a Bayer (RGGB) mosaic of the clean image, shot and
  read noise on the mosaic, then a bilinear demosaic, which leaves noise that is correlated across
  neighbouring pixels and between colour channels (unlike the i.i.d. Gaussian of most benchmarks).

Both are seeded (a ``numpy.random.Generator`` or a ``torch.Generator``) so training stays reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dead_leaves", "dead_leaves_batch", "camera_noise", "bayer_mosaic", "bilinear_demosaic"]


def _leaf_fill(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, channels: int) -> np.ndarray:
    """The colour of one leaf over its bounding box (h, w, C): flat, a gradient or a texture."""
    base = rng.random(channels).astype(np.float32)
    kind = rng.random()
    if kind < 0.4:  # flat
        return np.broadcast_to(base, yy.shape + (channels,))
    theta = rng.uniform(0, 2 * math.pi)
    u = (np.cos(theta) * xx + np.sin(theta) * yy).astype(np.float32)
    if kind < 0.75:  # smooth linear gradient to a second colour
        span = max(float(np.ptp(u)), 1.0)
        t = ((u - u.min()) / span)[..., None]
        other = rng.random(channels).astype(np.float32)
        return base * (1 - t) + other * t
    # oriented texture: a sinusoid of random period and contrast (stripes, weave, fine grain)
    period = rng.uniform(2.0, 16.0)
    amp = rng.uniform(0.05, 0.35)
    wave = np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5:  # a second direction makes a weave
        v = (-np.sin(theta) * xx + np.cos(theta) * yy).astype(np.float32)
        wave = 0.5 * (wave + np.sin(2 * math.pi * v / rng.uniform(2.0, 16.0)))
    return np.clip(base + amp * wave[..., None].astype(np.float32), 0, 1)


def dead_leaves(
    size: int | tuple[int, int],
    channels: int = 1,
    seed: int | np.random.Generator = 0,
    r_min: float = 1.5,
    r_max: float | None = None,
    alpha: float = 3.0,
    coverage: float = 4.0,
) -> np.ndarray:
    """A dead-leaves image (H, W, C) float32 in [0, 1].

    Parameters
    ----------
    size : int or (int, int)
        Height and width.
    channels : int
        1 (gray) or 3 (RGB: independent colours per leaf).
    seed : int or numpy Generator
        Everything random comes from it.
    r_min, r_max : float
        Leaf radii in pixels (``r_max`` defaults to half the larger side).
    alpha : float
        Radii follow ``p(r) ~ r**-alpha``; 3 gives a scale-invariant image (1/f^2 power spectrum).
    coverage : float
        Leaves drawn, as a multiple of the image area over the mean leaf area (more = fewer gaps of
        the background gradient).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    r_max = float(r_max if r_max is not None else max(h, w) / 2)
    # background: a gradient, so the rare uncovered pixels are not a flat colour either
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.ascontiguousarray(_leaf_fill(rng, yy, xx, channels), dtype=np.float32)
    # mean area of a disc with p(r) ~ r^-alpha on [r_min, r_max] (alpha = 3: closed form below)
    rs = _power_law(rng, 4096, r_min, r_max, alpha)
    n = int(coverage * h * w / float(np.mean(math.pi * rs * rs)))
    n = min(max(n, 16), 20000)
    radii = _power_law(rng, n, r_min, r_max, alpha)
    cy = rng.uniform(-r_max / 4, h + r_max / 4, n)
    cx = rng.uniform(-r_max / 4, w + r_max / 4, n)
    # painted front to back would need a mask of what is covered; back to front is simpler: each
    # leaf covers the earlier ones, with an anti-aliased (one-pixel) edge
    for r, y, x in zip(radii, cy, cx):
        y0, y1 = max(int(y - r - 1), 0), min(int(y + r + 2), h)
        x0, x1 = max(int(x - r - 1), 0), min(int(x + r + 2), w)
        if y0 >= y1 or x0 >= x1:
            continue
        by, bx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        d = np.sqrt((by - y) ** 2 + (bx - x) ** 2)
        a = np.clip(r - d + 0.5, 0.0, 1.0)[..., None]
        if not a.any():
            continue
        fill = _leaf_fill(rng, by - y, bx - x, channels)
        region = img[y0:y1, x0:x1]
        region += a * (fill - region)
    return img


def _power_law(rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float) -> np.ndarray:
    """``n`` samples of ``p(r) ~ r**-alpha`` on [lo, hi] (inverse transform)."""
    u = rng.random(n)
    k = 1.0 - alpha
    return (lo**k + u * (hi**k - lo**k)) ** (1.0 / k)


def dead_leaves_batch(n: int, size: int, channels: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` dead-leaves images as a float tensor (n, C, size, size), drawn from ``rng``."""
    imgs = [dead_leaves(size, channels, rng) for _ in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------ camera noise
def bayer_mosaic(rgb: torch.Tensor) -> torch.Tensor:
    """RGGB mosaic (B, 1, H, W) of an RGB batch (B, 3, H, W)."""
    b, _, h, w = rgb.shape
    m = torch.zeros(b, 1, h, w, dtype=rgb.dtype, device=rgb.device)
    m[:, 0, 0::2, 0::2] = rgb[:, 0, 0::2, 0::2]
    m[:, 0, 0::2, 1::2] = rgb[:, 1, 0::2, 1::2]
    m[:, 0, 1::2, 0::2] = rgb[:, 1, 1::2, 0::2]
    m[:, 0, 1::2, 1::2] = rgb[:, 2, 1::2, 1::2]
    return m


def bilinear_demosaic(mosaic: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of an RGGB mosaic (B, 1, H, W) to RGB (B, 3, H, W)."""
    b, _, h, w = mosaic.shape
    masks = torch.zeros(3, h, w, dtype=mosaic.dtype, device=mosaic.device)
    masks[0, 0::2, 0::2] = 1
    masks[1, 0::2, 1::2] = 1
    masks[1, 1::2, 0::2] = 1
    masks[2, 1::2, 1::2] = 1
    planes = mosaic * masks[None]  # (B, 3, H, W), zeros where a colour was not sampled
    k_rb = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], dtype=mosaic.dtype)
    k_g = torch.tensor([[0.0, 0.25, 0.0], [0.25, 1.0, 0.25], [0.0, 0.25, 0.0]], dtype=mosaic.dtype)
    k = torch.stack([k_rb, k_g, k_rb])[:, None].to(mosaic.device)
    # normalised convolution: exact at the image border too (the kernel weights that fall on samples)
    num = F.conv2d(F.pad(planes, (1, 1, 1, 1)), k, groups=3)
    den = F.conv2d(F.pad(masks[None].expand(b, -1, -1, -1), (1, 1, 1, 1)), k, groups=3)
    return num / den.clamp(min=1e-6)


def camera_noise(x: torch.Tensor, peak: torch.Tensor, sigma255: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noisy ``x`` (B, C, H, W) as a Bayer camera sees it: shot noise with ``peak`` photons at 1 and
    Gaussian read noise ``sigma255`` (0-255 scale) on the mosaic, then a bilinear demosaic.

    Gray batches (C = 1) go through the camera as gray RGB and come back as the channel mean, so
    their noise is spatially correlated too. ``peak`` <= 0 means no shot noise.
    """
    c = x.shape[1]
    rgb = x.expand(-1, 3, -1, -1) if c == 1 else x
    clean = bayer_mosaic(rgb.clamp(min=0))
    p = peak.view(-1, 1, 1, 1).to(clean.dtype)
    safe = p.clamp(min=1e-6)
    m = torch.where(p > 0, torch.poisson(clean * safe, generator=gen) / safe, clean)
    read = torch.randn(m.shape, generator=gen, device=m.device, dtype=m.dtype)
    m = m + read * (sigma255 / 255.0).view(-1, 1, 1, 1).to(m.dtype)
    # only the noise goes through the demosaic: the target keeps its detail, the input gets noise
    # with the camera's spatial and cross-channel correlation
    noise = bilinear_demosaic(m) - bilinear_demosaic(clean)
    if c == 1:
        noise = noise.mean(1, keepdim=True)
    return x + noise
