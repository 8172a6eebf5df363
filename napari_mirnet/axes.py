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
    """Guess axes where the shape leaves no doubt; otherwise ask for them."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        last_is_c = shape[-1] in (3, 4) and shape[0] > 4
        first_is_c = shape[0] <= 4 and shape[-1] > 4 and shape[1] > 4
        if last_is_c and not first_is_c:
            return "YXC"
        if first_is_c and not last_is_c:
            return "CYX"
    raise ValueError(
        f"cannot tell the axes of an array of shape {tuple(shape)}; pass axes=, e.g. 'ZYX', 'YXC', 'CYX' or 'TZCYX'"
    )


def to_cyx_order(axes: str) -> tuple[tuple[int, ...], str]:
    """The transpose that puts the iterated axes first, then C (if any), then Y, X."""
    lead = [a for a in axes if a not in "CYX"]
    order = lead + [a for a in "CYX" if a in axes]
    return tuple(axes.index(a) for a in order), "".join(order)


def inverse_order(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))
