"""Axis strings ('YX', 'YXC', 'TZCYX' ...): validation, inference, and moving to (..., C, Y, X)."""

from __future__ import annotations

import numpy as np

__all__ = ["ALLOWED", "infer_axes", "validate_axes", "to_cyx_order"]

#: T time, Z depth, C channel, Y/X the tiled plane.
ALLOWED = "TZCYX"


def validate_axes(axes: str, shape: tuple[int, ...]) -> str:
    """Upper-cased ``axes`` if it is a valid description of an array of ``shape``; else ValueError."""
    axes = axes.upper()
    bad = sorted(set(axes) - set(ALLOWED))
    if bad:
        raise ValueError(f"unknown axis letter(s) {''.join(bad)!r} in axes={axes!r}; use letters from {ALLOWED}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes={axes!r} repeats a letter; each axis may appear once")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes={axes!r} must contain both Y and X")
    if len(axes) != len(shape):
        raise ValueError(
            f"axes={axes!r} has {len(axes)} letters but the array has {len(shape)} dimensions {tuple(shape)}"
        )
    return axes


def infer_axes(shape: tuple[int, ...]) -> str:
    """Axes for a bare array (no file or caller says): only where the shape has one plausible reading.

    ``(H, W)`` is ``'YX'``; ``(H, W, 3)`` and ``(H, W, 4)`` (H, W > 4) are ``'YXC'``, RGB(A): the
    layout of every picture file and library, so it is read as one. Anything else, and in
    particular a small leading axis such as ``(3, H, W)`` (3 Z planes, 3 time points or 3
    channels, equally likely) is refused with the readings it could have: a guess would silently
    run a Z stack through the colour model or restore colour planes as unrelated grey images.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4 and shape[1] > 4:
        return "YXC"
    raise ValueError(f"cannot tell the axes of an array of shape {shape}: {_readings(shape)}")


def _readings(shape: tuple[int, ...]) -> str:
    """The plausible readings of an ambiguous shape and how to say which is meant."""
    how = "pass axes= with the one meant"
    if len(shape) == 3:
        n, last = shape[0], shape[-1]
        if last <= 4 and n > 4:  # (H, W, 2) or a 3/4 under a small height
            return f"{last} channels last (axes='YXC') or {last} planes last ('YXZ'); {how} (e.g. axes='YXC')"
        lead = f"{n} Z planes (axes='ZYX'), {n} time points ('TYX')"
        if n <= 4:
            lead += f" or {n} channels ('CYX')"
        else:
            lead = lead.replace(", ", " or ", 1)
        return f"it may be {lead}; {how} (e.g. axes='ZYX' for a Z stack)"
    if len(shape) == 4:
        return f"it may be e.g. time and Z (axes='TZYX'), Z and channels ('ZCYX') or time and channels ('TCYX'); {how}"
    if len(shape) > 5 or len(shape) < 2:
        return f"images have 2 to 5 axes from {ALLOWED}; reshape it or pass axes= with one letter per axis"
    return f"{how}, one letter per axis from {ALLOWED} with Y and X (e.g. axes='TZCYX')"


def to_cyx_order(axes: str) -> tuple[tuple[int, ...], str]:
    """The transpose that puts the iterated axes first, then C (if any), then Y, X."""
    lead = [a for a in axes if a not in "CYX"]
    order = lead + [a for a in "CYX" if a in axes]
    return tuple(axes.index(a) for a in order), "".join(order)


def inverse_order(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))
