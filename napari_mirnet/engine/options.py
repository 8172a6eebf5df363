"""How a run is carried out, as one value: tile geometry, device, precision, normalisation, TTA."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DEFAULT_BLEND", "DEFAULT_HALO", "RestoreOptions"]

#: Default halo and blend margin, in model (output) pixels; see docs and benchmarks/engine.py.
DEFAULT_HALO = 64
DEFAULT_BLEND = 16


@dataclass(frozen=True)
class RestoreOptions:
    """The settings of a restoration that do not change what is restored, only how.

    ``tile`` and ``halo`` are in model pixels (multiples of 4; ``tile`` includes the halo on both
    sides), ``blend`` is the feathered margin; None picks a default (the tile from memory).
    ``pixel_size`` (per axis of the input) is written to zarr metadata when the input has none.
    """

    tile: int | None = None
    halo: int | None = None
    blend: int | None = None
    device: str = "auto"
    precision: str = "auto"
    normalisation: str = "auto"
    tta: bool = False
    pixel_size: tuple | None = None

    def to_dict(self) -> dict:
        return asdict(self)
