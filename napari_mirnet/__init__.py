"""napari-mirnet: MIRNet-v2 image restoration for napari, Python and the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names
from .version import __version__

if TYPE_CHECKING:
    from .api import restore, restore_lazy, restore_whole
    from .model import MIRNetV2
    from .model_config import MIRNetConfig
    from .tasks import TASKS
    from .training.self_supervised import finetune
    from .weights import WeightsError, available_weights, load_model

__all__ = [
    "MIRNetConfig",
    "MIRNetV2",
    "TASKS",
    "WeightsError",
    "__version__",
    "available_weights",
    "finetune",
    "load_model",
    "restore",
    "restore_lazy",
    "restore_whole",
]

# Each public name is imported on first use (PEP 562): importing the package, the CLI's parser and
# the napari reader must not pay for torch (about 1 s and 800 MB before the first line runs).
_HOMES = {
    "restore": ".api",
    "restore_lazy": ".api",
    "restore_whole": ".api",
    "load_model": ".weights",
    "available_weights": ".weights",
    "WeightsError": ".weights",
    "MIRNetV2": ".model",
    "MIRNetConfig": ".model_config",
    "TASKS": ".tasks",
    "finetune": ".training.self_supervised",
}


__getattr__, __dir__ = lazy_names(__name__, _HOMES)
