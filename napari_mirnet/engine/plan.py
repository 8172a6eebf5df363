"""The tile plan: which input pixels each tile reads, predicts and owns, and the blend ramps (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model_config import STRIDE

__all__ = ["TilePlan", "blend_ramp", "plan_tiles", "round_to_stride", "whole_image_plan"]


def round_to_stride(n: float, up: bool = False) -> int:
    """``n`` rounded down (or up) to a multiple of the model's stride."""
    return int(math.ceil(n / STRIDE) if up else n // STRIDE) * STRIDE


@dataclass(frozen=True)
class TilePlan:
    """Tiles on the input's Y/X plane; core, halo and margin in input pixels (multiples of 4)."""

    height: int
    width: int
    factor: int  # super-resolution factor: output pixels per input pixel
    core: tuple[int, int]
    halo: tuple[int, int]
    margin: tuple[int, int]  # blend margin on each side of a core

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(-(-n // c) for n, c in zip((self.height, self.width), self.core))

    @property
    def window(self) -> tuple[int, int]:
        return tuple(min(c + 2 * h, n) for c, h, n in zip(self.core, self.halo, (self.height, self.width)))

    def core_range(self, axis: int, i: int) -> tuple[int, int]:
        n, c = (self.height, self.width)[axis], self.core[axis]
        return i * c, min((i + 1) * c, n)

    def window_range(self, axis: int, i: int) -> tuple[int, int]:
        n, h, w = (self.height, self.width)[axis], self.halo[axis], self.window[axis]
        c0, _ = self.core_range(axis, i)
        start = min(max(c0 - h, 0), n - w)
        return start, start + w

    def pred_range(self, axis: int, i: int) -> tuple[int, int]:
        """Rows (or columns) a tile's prediction covers: its core and the blend band after it."""
        n, m = (self.height, self.width)[axis], self.margin[axis]
        c0, c1 = self.core_range(axis, i)
        return c0, min(c1 + m, n)

    def out_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(
            tuple(self.factor * (b - a) for a, b in (self.core_range(ax, i) for i in range(self.grid[ax])))
            for ax in (0, 1)
        )

    def to_dict(self) -> dict:
        return {"core": list(self.core), "halo": list(self.halo), "margin": list(self.margin), "factor": self.factor}


def plan_tiles(height: int, width: int, tile: int, halo: int, blend: int, factor: int = 1) -> TilePlan:
    """Turn a tile edge, halo and blend margin (model pixels) into an input-pixel plan.

    ``tile`` is the model's input edge including the halo on both sides. For super-resolution the
    core and halo are divided by the factor and kept multiples of 4 on the input, so the model's
    input stays a multiple of 4 too.
    """
    for name, v in (("tile", tile), ("halo", halo), ("blend", blend)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative whole number, got {v!r}")
    if tile % STRIDE or halo % STRIDE:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of {STRIDE}")
    if blend > halo:
        raise ValueError(f"blend ({blend}) cannot exceed the halo ({halo}): the margin must be predicted")
    core_model = tile - 2 * halo
    if core_model < blend or core_model < STRIDE * factor:
        raise ValueError(
            f"tile {tile} leaves a core of {core_model} px after a halo of {halo} on each side; "
            f"use a larger tile or a smaller halo (the core must be >= blend and >= {STRIDE * factor})"
        )
    core = max(STRIDE, round_to_stride(core_model / factor))
    h = round_to_stride(halo / factor, up=True)
    m = int(math.ceil(blend / factor))
    m = min(m, h, core)
    cores, halos, margins = [], [], []
    for n in (height, width):
        # one tile when the image fits: then the output equals whole-image inference
        if n <= core + 2 * h:
            cores.append(n)
            halos.append(0)
            margins.append(0)
        else:
            cores.append(core)
            halos.append(h)
            margins.append(m)
    return TilePlan(height, width, factor, tuple(cores), tuple(halos), tuple(margins))


def whole_image_plan(height: int, width: int, factor: int = 1) -> TilePlan:
    """One tile covering the image: whole-image inference through the tiled path."""
    return TilePlan(height, width, factor, (height, width), (0, 0), (0, 0))


def blend_ramp(lo: int, hi: int, c0: int, c1: int, m: int, n: int) -> np.ndarray:
    """1-D blend weights on [lo, hi) for a tile with core [c0, c1).

    The blend band of a border b is [b, b + m), just after it: there the previous tile's weight falls
    from 1 to 0 while this tile's rises, so each band needs only tiles at or before it (row-major),
    and a chunk can be written as soon as its own tile is done.
    """
    p = np.arange(lo, hi, dtype=np.float64) + 0.5
    w = np.ones(hi - lo, dtype=np.float64)
    if m > 0 and c0 > 0:
        w = np.minimum(w, np.clip((p - c0) / m, 0, 1))
    if m > 0 and c1 < n:
        w = np.where(p >= c1, np.clip(1 - (p - c1) / m, 0, 1), w)
    return w
