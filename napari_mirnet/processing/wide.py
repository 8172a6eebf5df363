"""Arithmetic past float32 for the intensity map: 64-bit integers shifted exactly, values float32 cannot carry refused."""

from __future__ import annotations

import numpy as np

__all__ = ["F32", "F32_SAFE", "check_model_range", "int_offset", "minus_exact", "plus_saturating"]

F32 = np.finfo(np.float32)
#: Beyond this a float32 range is mapped in float64: float32 arithmetic on it could overflow to Inf.
F32_SAFE = float(F32.max) / 16


def check_model_range(y: np.ndarray, x: np.ndarray, low, high) -> None:
    """Refuse mapped values that float32 (the model's input, and what its output carries) cannot hold."""
    big = np.abs(y) > F32_SAFE  # NaN (nodata) compares False; the margin leaves room for blending and resizing
    if big.any():
        worst = float(np.asarray(x, np.float64)[big].flat[np.argmax(np.abs(y[big]))])
        raise ValueError(
            f"the image holds a value of {worst:g}, beyond 2e37 times its usual range [{_fmt(low)}, {_fmt(high)}] "
            "(0.1-99.9 percentiles): float32, which the model computes in, cannot carry it through. Clip such "
            "values (e.g. np.clip(image, lo, hi)) or mark them as missing (NaN, or nodata=) first"
        )


def _fmt(v) -> str:
    return ", ".join(f"{float(a):g}" for a in v) if isinstance(v, tuple) else f"{float(v):g}"


def _bias(v: np.ndarray) -> np.ndarray:
    """64-bit integers as uint64 in the same order (int64 shifted by 2**63): their differences never wrap."""
    v = np.asarray(v)
    if v.dtype == np.uint64:
        return v
    return v.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)


def int_offset(low, dtype: np.dtype) -> np.ndarray:
    """The whole number nearest to ``low`` (per channel), in ``dtype`` (whose range it is clipped to)."""
    info = np.iinfo(dtype)
    top = np.nextafter(float(info.max), -np.inf)  # float(info.max) is 2**63 or 2**64: it would wrap
    return np.clip(np.rint(np.asarray(low, np.float64)), float(info.min), top).astype(dtype)


def minus_exact(x: np.ndarray, low) -> np.ndarray:
    """``x - low`` in float64 for integers; 64-bit ones exactly before the difference is rounded."""
    if x.dtype.itemsize < 8:
        return x.astype(np.float64) - low  # float64 holds every 32-bit integer
    base = int_offset(low, x.dtype)
    a, b = _bias(x), _bias(base)
    diff = np.where(a >= b, (a - b).astype(np.float64), -(b - a).astype(np.float64))
    return diff + (base.astype(np.float64) - low)


def plus_saturating(base: np.ndarray, delta: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``base + delta`` (whole-number float64 deltas) in a 64-bit integer ``dtype``, clipped to its range."""
    b = np.broadcast_to(_bias(base), delta.shape)
    room_up, room_down = (~b).astype(np.float64), b.astype(np.float64)  # to the top (2**64 - 1) and to 0
    with np.errstate(invalid="ignore"):
        up = np.where(delta >= room_up, np.uint64(2**64 - 1), b + np.minimum(delta, room_up).clip(0).astype(np.uint64))
        down = np.where(-delta >= room_down, np.uint64(0), b - np.minimum(-delta, room_down).clip(0).astype(np.uint64))
    out = np.where(delta >= 0, up, down)
    if dtype == np.uint64:
        return out.astype(np.uint64)
    return (out ^ np.uint64(1 << 63)).view(np.int64)
