"""napari-mirnet: MIRNet-v2 image restoration for napari, Python and the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-mirnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .api import restore
from .model import MIRNetConfig, MIRNetV2
from .presets import TASKS
from .weights import WeightsError, available_weights, load_model

__all__ = [
    "MIRNetConfig",
    "MIRNetV2",
    "TASKS",
    "WeightsError",
    "__version__",
    "available_weights",
    "load_model",
    "restore",
]
