"""Sample images for each task, made offline from images bundled with scikit-image (no downloads)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "dual_pixel_pair",
    "low_contrast_moon",
    "lowlight_coffee",
    "lowres_chelsea",
    "noisy_astronaut",
    "noisy_stack",
]


def _rng() -> np.random.Generator:
    # fixed seed: the same sample every time, so screenshots and tests are reproducible
    return np.random.default_rng(0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noisy_astronaut():
    """The astronaut with Gaussian noise (sigma 25 of 255): for Denoise."""
    from skimage import data

    clean = data.astronaut().astype(np.float32)
    noisy = _to_uint8(clean + _rng().normal(0, 25, clean.shape))
    return [(noisy, {"name": "noisy astronaut", "metadata": {"sample": "astronaut + N(0, 25)"}})]


def lowlight_coffee():
    """The coffee cup darkened (gain 0.12, gamma 1.6) with shot-like noise: for Low-light enhancement."""
    from skimage import data

    x = data.coffee().astype(np.float32) / 255
    dark = 0.12 * x**1.6
    dark = dark + _rng().normal(0, 1, x.shape) * np.sqrt(dark / 400 + 1e-5)
    return [(_to_uint8(dark * 255), {"name": "low-light coffee", "metadata": {"sample": "coffee, darkened"}})]


def lowres_chelsea():
    """The cat at half resolution (2x2 block means): for Super-resolution."""
    from skimage import data

    x = data.chelsea().astype(np.float32)
    h, w = (s // 2 * 2 for s in x.shape[:2])
    small = x[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return [(_to_uint8(small), {"name": "low-res chelsea", "metadata": {"sample": "chelsea, 2x downsampled"}})]


def low_contrast_moon():
    """The moon as RGB, a naturally flat, low-contrast image: for Contrast enhancement."""
    from skimage import data

    moon = data.moon()
    return [(np.repeat(moon[..., None], 3, axis=-1), {"name": "low-contrast moon"})]


def dual_pixel_pair():
    """Synthetic dual-pixel views: a defocused image seen through the left and right half-apertures.

    Each view is the image blurred by one half of a disc (so the two are shifted in opposite
    directions by an amount that grows with defocus), as a dual-pixel sensor records them.
    """
    from scipy import ndimage
    from skimage import data

    x = data.astronaut()[96:352, 96:352].astype(np.float32)
    r = 4
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy**2 + xx**2) <= r * r
    views = []
    for half in (xx <= 0, xx >= 0):
        k = (disc & half).astype(np.float32)
        k /= k.sum()
        views.append(np.stack([ndimage.convolve(x[..., c], k, mode="reflect") for c in range(3)], -1))
    # 16-bit, like the dual-pixel training data
    left, right = (np.clip(v * 257, 0, 65535).astype(np.uint16) for v in views)
    meta = {"sample": "synthetic dual-pixel pair, half-disc blur radius 4"}
    return [
        (left, {"name": "dual-pixel left", "metadata": meta}),
        (right, {"name": "dual-pixel right", "metadata": meta}),
    ]


def noisy_stack():
    """A noisy 3D (ZYX) stack of smooth blobs, with a pixel size: for nD processing."""
    from scipy import ndimage
    from skimage import data

    blobs = data.binary_blobs(length=128, n_dim=3, volume_fraction=0.2, rng=0)[:16].astype(np.float32)
    clean = ndimage.gaussian_filter(blobs, 1.5) * 180 + 30
    noisy = _to_uint8(clean + _rng().normal(0, 20, clean.shape))
    kwargs = {"name": "noisy stack", "scale": (2.0, 0.5, 0.5), "metadata": {"sample": "blobs + N(0, 20)"}}
    return [(noisy, kwargs)]
