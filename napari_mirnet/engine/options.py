"""How a run is carried out, as one value: tile geometry, device, precision, normalisation, TTA."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DEFAULT_BLEND", "DEFAULT_HALO", "RestoreOptions", "scheduler_config"]

#: Default halo and blend margin, in model (output) pixels; see docs and benchmarks/engine.py.
DEFAULT_HALO = 64
DEFAULT_BLEND = 16


@dataclass(frozen=True)
class RestoreOptions:
    """The settings of a restoration that do not change what is restored, only how.

    ``tile`` and ``halo`` are in model pixels (multiples of 4; ``tile`` includes the halo on both
    sides), ``blend`` is the feathered margin; None picks a default (the tile from memory).
    ``pixel_size`` (per axis of the input) is written to zarr metadata when the input has none.
    ``nodata`` marks missing pixels (the file's nodata when None; NaN in float images always):
    they stay out of the intensity mapping, are filled before the model sees them, and come out
    as nodata again.
    ``accelerate`` picks the forward's optimisations (bf16 weights, channels_last, cudnn.benchmark,
    torch.compile): "auto" (channels_last on CPUs with oneDNN, measured on CUDA), "off", "on" or switch names; see
    :mod:`napari_mirnet.engine.accelerate`.
    """

    tile: int | None = None
    halo: int | None = None
    blend: int | None = None
    device: str = "auto"
    precision: str = "auto"
    normalisation: str = "auto"
    tta: bool = False
    pixel_size: tuple | None = None
    nodata: float | None = None
    accelerate: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


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
