"""Pixels without data around the model: holes filled before it (pull-push), NaN put back after it."""

from __future__ import annotations

import numpy as np

__all__ = ["fill_nodata", "mark_nodata"]


def fill_nodata(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Fill the NaN (nodata) pixels of a mapped (C, Y, X) tile; returns (filled, hole mask or None).

    Holes are filled by pull-push (a pyramid of masked 2x2 means, coarse levels filling what fine
    levels cannot): each hole pixel gets the mean of the nearest valid pixels, smooth across the
    hole, so that the network sees no step at the edge and valid pixels next to a hole are restored
    as they would be without it (measured in tests/test_geo.py). A channel with no valid pixel in
    the tile gets 0.5, the middle of the model's range.
    """
    holes = np.isnan(x)
    if not holes.any():
        return x, None
    out = np.array(x, dtype=np.float32, copy=True)
    for c in range(x.shape[0]):
        if holes[c].any():
            out[c] = _pull_push(x[c], ~holes[c])
    return out, holes


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
