"""Chunked MIRNet-v2 restoration of images of any size on dask: prepare a run once, then execute it.

A run is prepared once (:func:`prepare` -> :class:`RestorationRun`) and executed into numpy, a lazy
dask array or a resumable zarr store (:func:`execute`). The modules, in the order data flows:
``source`` (reading the input), ``plan`` (the tile grid), ``memory`` (default tile and batch),
``forward`` (the model call), ``steps`` (what each graph task does), ``graph`` (the dask graph),
``sinks`` (where chunks go: a numpy array or a zarr store), ``digest`` (what a resumed store was
computed from), ``run`` (prepare), ``execution`` (execute, the scheduler). Writing result files in
every format, and the rule on existing outputs, is :mod:`napari_mirnet.outputs`' (above the engine);
``restore`` and ``restore_lazy`` are the front-end API's (:mod:`napari_mirnet.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

# where each public name lives: the package imports a module when a name is first used, so that
# reading the options (the CLI's parser) does not import dask, the planner or the scheduler
_HOMES = {
    "check_zarr_out": "execution",
    "compute": "execution",
    "connect": "execution",
    "execute": "execution",
    "bytes_per_pixel": "memory",
    "default_batch": "memory",
    "default_tile": "memory",
    "DEFAULT_BLEND": "options",
    "DEFAULT_HALO": "options",
    "RestoreOptions": "options",
    "TilePlan": "plan",
    "plan_tiles": "plan",
    "RestorationRun": "run",
    "prepare": "run",
    "scheduler_config": "run",
    "output_scale": "sinks",
    "Cancelled": "steps",
    "RunControl": "steps",
}

if TYPE_CHECKING:
    from .execution import check_zarr_out, compute, connect, execute
    from .memory import bytes_per_pixel, default_batch, default_tile
    from .options import DEFAULT_BLEND, DEFAULT_HALO, RestoreOptions
    from .plan import TilePlan, plan_tiles
    from .run import RestorationRun, prepare, scheduler_config
    from .sinks import output_scale
    from .steps import Cancelled, RunControl

__all__ = [
    "DEFAULT_BLEND",
    "DEFAULT_HALO",
    "Cancelled",
    "RestorationRun",
    "RestoreOptions",
    "RunControl",
    "TilePlan",
    "bytes_per_pixel",
    "check_zarr_out",
    "compute",
    "connect",
    "default_batch",
    "default_tile",
    "execute",
    "output_scale",
    "plan_tiles",
    "prepare",
    "scheduler_config",
]


__getattr__, __dir__ = lazy_names(__name__, {k: f".{v}" for k, v in _HOMES.items()}, submodules=True)
