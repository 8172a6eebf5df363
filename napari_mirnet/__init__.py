"""napari-mirnet: MIRNet-v2 image restoration for napari, Python and the command line."""

from .api import restore, restore_lazy, restore_whole
from .finetune import finetune
from .model import MIRNetConfig, MIRNetV2
from .tasks import TASKS
from .version import __version__
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
