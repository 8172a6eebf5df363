"""Pixels without data around the model: holes filled before it (pull-push), NaN put back after it."""

from __future__ import annotations

import numpy as np

__all__ = ["fill_nodata", "mark_nodata"]


def fill_nodata(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Fill the NaN (nodata) pixels of a mapped (C, Y, X) tile; returns (filled, hole mask or None).

    Holes are filled by pull-push (a pyramid of masked 2x2 means, coarse levels filling what fine
    levels cannot): each hole pixel gets the mean of the nearest valid pixels, smooth across the
    hole, so that the network sees no step at the edge and valid pixels next to a hole are restored
    as they would be without it (measured in tests/test_geo.py); then noise of the level the data
    show, so that the network does not take the whole tile for a cleaner one. A channel with no
    valid pixel in the tile gets 0.5, the middle of the model's range.
    """
    holes = np.isnan(x)
    if not holes.any():
        return x, None
    out = np.array(x, dtype=np.float32, copy=True)
    for c in range(x.shape[0]):
        if holes[c].any():
            out[c] = _with_noise(x[c], _pull_push(x[c], ~holes[c]), holes[c], seed=c)
    return out, holes


def _with_noise(v: np.ndarray, filled: np.ndarray, holes: np.ndarray, seed: int) -> np.ndarray:
    """The smooth fill plus noise of the level the plane's data show (none where they show none).

    The network pools over the whole tile (its attention weighs the tile's global statistics): a
    large noiseless fill makes it treat the data beside it as less noisy than they are. With 60% of
    a noisy tile filled smooth, the valid part came out 9-16 dB worse than without the hole; with
    the data's noise in the fill, within 0.2 dB (tests/test_geo.py). The fill is NaN again after
    the model; the seed makes a tile's fill the same on every run (resume, retries).
    """
    from ..noise_model import estimate_noise

    crops = _fullest_crops(v)
    if not crops:
        return filled
    try:
        noise = estimate_noise(crops)  # nodata-aware: the pixels with data only
    except ValueError:  # too little data to measure any noise: the smooth fill
        return filled
    sd = np.sqrt(noise.variance(filled[holes]))
    out = filled.copy()
    out[holes] += (sd * _unit_noise(filled.shape, noise.lags, seed)[holes]).astype(np.float32)
    return out


def _unit_noise(shape: tuple, lags, seed: int) -> np.ndarray:
    """Unit-variance Gaussian noise with the autocorrelation ``1, lags[0], lags[1] ...`` along
    both axes (white where the lags are 0): white noise shaped by the square root of that spectrum."""
    from ..noise_model import line_spectrum

    white = np.random.default_rng(seed).standard_normal(shape)
    if not any(lags):
        return white

    amp = np.sqrt(line_spectrum(lags, shape[0])[:, None] * line_spectrum(lags, shape[1])[None, :])
    shaped = np.fft.ifft2(np.fft.fft2(white) * amp).real
    return shaped / max(float(shaped.std()), 1e-12)


def _pull_push(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if not valid.any():
        return np.full(v.shape, 0.5, np.float32)
    w = valid.astype(np.float64)
    vw = np.where(valid, v, 0.0).astype(np.float64)
    levels = [(vw, w)]
    while not (w > 0).all() and min(w.shape) > 1:
        vw, w = _sum2x2(vw), _sum2x2(w)
        levels.append((vw, w))
    vw, w = levels[-1]
    est = np.where(w > 0, vw / np.maximum(w, 1e-12), (vw.sum() / w.sum()))
    for vw, w in reversed(levels[:-1]):
        up = np.repeat(np.repeat(est, 2, axis=0), 2, axis=1)[: w.shape[0], : w.shape[1]]
        est = np.where(w > 0, vw / np.maximum(w, 1e-12), up)
    return np.where(valid, v, est).astype(np.float32)


def _fullest_crops(v: np.ndarray, edge: int = 128, count: int = 4) -> list[np.ndarray]:
    """Up to ``count`` crops of ``edge`` px of a plane, those with the most data (the noise
    estimate's cost stays that of a small tile, however large the tile)."""
    h, w = v.shape
    if h * w <= count * edge * edge:
        return [v]
    rows, cols = max(h // edge, 1), max(w // edge, 1)
    ch, cw = min(edge, h), min(edge, w)
    starts = [(min(i * edge, h - ch), min(j * edge, w - cw)) for i in range(rows) for j in range(cols)]
    share = [np.isfinite(v[y : y + ch, x : x + cw]).mean() for y, x in starts]
    best = sorted(range(len(starts)), key=lambda k: -share[k])[:count]
    return [v[starts[k][0] : starts[k][0] + ch, starts[k][1] : starts[k][1] + cw] for k in best if share[k] > 0]


def _sum2x2(a: np.ndarray) -> np.ndarray:
    """Sums over 2x2 blocks (odd edges padded with zeros)."""
    h, w = a.shape
    a = np.pad(a, ((0, h % 2), (0, w % 2)))
    return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]


def mark_nodata(out: np.ndarray, holes: np.ndarray | None, factor: int = 1) -> np.ndarray:
    """NaN where the tile had no data: the (C, Y, X) hole mask, upsampled by nearest for ``factor``.

    When the output has other channels than the input (a dual-pixel pair), a pixel is nodata where
    any input channel was.
    """
    if holes is None:
        return out
    if factor > 1:
        holes = np.repeat(np.repeat(holes, factor, axis=-2), factor, axis=-1)
    if holes.shape[0] != out.shape[0]:
        holes = np.broadcast_to(holes.any(axis=0, keepdims=True), out.shape)
    return np.where(holes, np.float32(np.nan), out).astype(np.float32)
