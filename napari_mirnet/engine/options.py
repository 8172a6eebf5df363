"""How a run is carried out, as one value: tile geometry, device, precision, normalisation, TTA."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["DEFAULT_BLEND", "DEFAULT_HALO", "NORMALISATIONS", "PRECISIONS", "RestoreOptions", "scheduler_config"]

#: Default halo and blend margin, in model (output) pixels; see docs and benchmarks/engine.py.
DEFAULT_HALO = 64
DEFAULT_BLEND = 16
#: ``precision`` and ``normalisation`` values ("auto": bf16 on CUDA, fp32 elsewhere; the full range
#: for integers, percentiles for floats)
PRECISIONS = ("auto", "fp32", "bf16")
NORMALISATIONS = ("auto", "fixed", "percentile")


@dataclass(frozen=True)
class RestoreOptions:
    """The settings of a restoration that do not change what is restored, only how.

    ``tile`` and ``halo`` are in model pixels (multiples of 4; ``tile`` includes the halo on both
    sides), ``blend`` is the feathered margin; None picks a default (the tile from memory).
    ``pixel_size`` (per axis of the input) is written to zarr metadata when the input has none.
    ``nodata`` marks missing pixels (the file's nodata when None; NaN in float images always):
    they stay out of the intensity mapping, are filled before the model sees them, and come out
    as nodata again.
    ``rgb`` says whether 3 or 4 channels are a colour image: None reads it from the data (channels
    last as pictures are stored, or channels coloured red, green, blue), True makes them colour in
    any order of axes, False restores every channel alone.
    ``accelerate`` picks the forward's optimisations (bf16 weights, channels_last, cudnn.benchmark,
    torch.compile): "auto" (channels_last on CPUs with oneDNN, measured on CUDA), "off", "on" or switch names; see
    :mod:`napari_mirnet.engine.accelerate`.
    """

    # metadata["help"] (and "choices") say each setting once for every front end: the CLI's flags
    # are made from these fields (napari_mirnet.cli.fields)
    tile: int | None = field(
        default=None, metadata={"help": "tile edge in model pixels, halo included (default: from memory)"}
    )
    halo: int | None = field(
        default=None,
        metadata={
            "help": "halo on each side of a tile, in pixels (default: 32 with the CPU's automatic tile, "
            f"else a quarter of the tile, at most {DEFAULT_HALO})"
        },
    )
    blend: int | None = field(
        default=None,
        metadata={"help": f"feathered blend margin at tile borders, in pixels; 0: none (default: {DEFAULT_BLEND})"},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    precision: str = field(
        default="auto", metadata={"help": "auto: bf16 on CUDA, fp32 elsewhere", "choices": PRECISIONS}
    )
    normalisation: str = field(
        default="auto",
        metadata={"help": "auto: the full range for integers, percentiles for floats", "choices": NORMALISATIONS},
    )
    tta: bool = field(
        default=False,
        metadata={"help": "test-time augmentation: average over 8 flips/rotations (8x slower, slightly better)"},
    )
    pixel_size: tuple | None = None
    nodata: float | None = field(
        default=None,
        metadata={
            "help": "value that marks missing pixels (nan allowed): left out of the intensity mapping, filled for "
            "the model, written back as nodata (default: the file's nodata; NaN in float images always)"
        },
    )
    accelerate: str = "auto"
    rgb: bool | None = field(
        default=None,
        metadata={
            "help": "3 or 4 channels are a colour image (--rgb) or separate bands, each restored alone (--no-rgb); "
            "default: as the data says (channels last, as pictures are stored, or channels coloured red, green, blue)"
        },
    )

    @classmethod
    def from_mapping(cls, values: Mapping) -> RestoreOptions:
        """The options named in ``values`` (a front end's settings, ``vars`` of parsed arguments).

        Keys that are not options (the task, the output...) are left out, so every front end builds
        its options here, from whatever it holds.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def __post_init__(self):
        # refused here, in the keyword arguments' words, before a model is loaded or a tile planned:
        # a float tile or a tta='no' would otherwise run as something else without a word
        for name, least in (("tile", 1), ("halo", 0), ("blend", 0)):
            object.__setattr__(self, name, _whole(name, getattr(self, name), least))
        object.__setattr__(self, "device", _device(self.device))
        if not isinstance(self.tta, (bool, np.bool_)):
            raise TypeError(f"tta={self.tta!r} is not True or False; pass tta=True to average over flips")
        object.__setattr__(self, "tta", bool(self.tta))
        if not isinstance(self.accelerate, str):
            raise TypeError(
                f"accelerate={self.accelerate!r} is not a name; use 'auto', 'off', 'on' or switch names joined by ','"
            )
        if self.pixel_size is not None:
            object.__setattr__(self, "pixel_size", _pixel_sizes(self.pixel_size))
        if self.rgb is not None and not isinstance(self.rgb, (bool, np.bool_)):
            raise TypeError(f"rgb={self.rgb!r} is not True, False or None (None: as the data says)")
        object.__setattr__(self, "rgb", None if self.rgb is None else bool(self.rgb))

    def check_axes(self, axes: str) -> None:
        """``pixel_size`` has one value per axis of the input (``axes``); a ValueError otherwise."""
        if self.pixel_size is not None and len(self.pixel_size) != len(axes):
            raise ValueError(
                f"pixel_size={self.pixel_size!r} has {len(self.pixel_size)} values, but the image has "
                f"{len(axes)} axes ({axes}); pass one size per axis, in that order"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(name: str, value, least: int) -> int | None:
    """A tile, halo or blend as an int (None: the default); bools, fractions and too small values refused."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} is not a whole number of pixels; pass an int (a multiple of 4)")
    if value < least:
        what = "positive" if least else "zero or positive"
        raise ValueError(f"{name}={value!r} must be {what}; pass a number of pixels (a multiple of 4)")
    return int(value)


_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")


def _device(device) -> str:
    """The device name (None: auto); a name torch knows but the engine does not run on is refused."""
    if device is None:
        return "auto"
    name = str(device) if type(device).__name__ == "device" else device  # a torch.device
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"device={device!r} is not a device name; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'")
    return name


def _pixel_sizes(pixel_size) -> tuple:
    """Sizes as floats, each finite and positive: 0, negative or NaN would be written into the metadata."""
    if isinstance(pixel_size, (str, bytes)) or not hasattr(pixel_size, "__iter__"):
        raise TypeError(f"pixel_size={pixel_size!r} is not a sequence; pass one size per axis, e.g. (0.5, 0.5)")
    sizes = []
    for v in pixel_size:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"pixel_size={tuple(pixel_size)!r} holds {v!r}, not a number; pass sizes such as 0.5")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"pixel_size={tuple(pixel_size)!r} holds {v!r}; pixel sizes must be finite and positive")
        sizes.append(float(v))
    return tuple(sizes)


def scheduler_config(device: str, client=None, overlap: bool = False) -> dict:
    """The dask scheduler for a run on ``device``, as a ``dask.config.set`` mapping.

    On CPU torch already uses every core inside a forward pass and concurrent tiles would only add
    memory: tasks run in the calling thread (no second malloc arena, same torch threads). On a GPU
    threads take turns, one forward launched at a time: two (one on the device while the other
    reads, blends and writes), or three with ``overlap`` (the run overlaps copies with compute:
    :func:`.accelerate.overlaps`), where the lock is let go before a batch's result is waited for
    (:func:`.forward.run_batch`) and a third thread keeps the next batch ready. The threads bound
    the batches in flight, and so the host memory. With a dask.distributed client, the client's
    scheduler.
    """
    if client is not None:
        return {}
    # the schedulers as functions, not names: for a name dask imports dask.distributed to look for
    # a client (12 MiB of resident memory in a run that has none)
    if device.startswith("cuda"):
        from dask.threaded import get

        return {"scheduler": get, "num_workers": 3 if overlap else 2}
    from dask.local import get_sync

    return {"scheduler": get_sync}
