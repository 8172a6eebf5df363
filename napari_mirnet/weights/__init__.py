"""MIRNet-v2 weights: the model catalogue, downloads, checked checkpoints and loaded models.

- :mod:`.catalogue`: which models exist (shipped, official, fine-tuned) and where; no torch.
- :mod:`.download`: a local file for any weights, downloading official assets and URLs once.
- :mod:`.checkpoint`: reading and checking a checkpoint's bytes (torch only when tensors are read).
- :mod:`.loading`: :func:`load_model` and the engine's :func:`cached_model` (imports torch).
- :mod:`.files`: which files are models, download records, caches keyed by file identity.
- :mod:`.meta`: a checkpoint's metadata read without torch; :mod:`.errors`: ``WeightsError``.

Importing this package does not import torch: the names that need it are loaded on first use.
"""

from __future__ import annotations

from ..lazy import lazy_names
from .catalogue import (
    OFFICIAL_ASSETS,
    OFFICIAL_BASE_URL,
    OFFICIAL_LICENCE,
    PUBLISHED_SHA256,
    SHIPPED_DIR,
    WeightsInfo,
    available_weights,
    cache_dir,
    cached_path,
    models_dir,
    official_url,
    shipped_meta,
    shipped_models,
    user_models,
)
from .checkpoint import (
    MAX_CHECKPOINT_BYTES,
    MAX_PARAMETERS,
    check_finite,
    check_official,
    check_state_dict,
    local_checkpoint,
    read_checkpoint,
)
from .download import fetch, locate
from .errors import OfficialWeightsNotice, WeightsError
from .files import (
    RACY_NS,
    FileCache,
    checkpoint_files,
    file_identity,
    file_sha256,
    is_model_file,
    read_record,
    record_path,
    write_record,
)

__all__ = [
    "FileCache",
    "MAX_CHECKPOINT_BYTES",
    "MAX_PARAMETERS",
    "OFFICIAL_ASSETS",
    "OFFICIAL_BASE_URL",
    "OFFICIAL_LICENCE",
    "OfficialWeightsNotice",
    "PUBLISHED_SHA256",
    "RACY_NS",
    "SHIPPED_DIR",
    "WeightsError",
    "WeightsInfo",
    "available_weights",
    "cache_dir",
    "cached_model",
    "cached_path",
    "check_finite",
    "check_official",
    "check_state_dict",
    "checkpoint_files",
    "fetch",
    "file_identity",
    "file_sha256",
    "is_model_file",
    "load_model",
    "local_checkpoint",
    "locate",
    "models_dir",
    "official_url",
    "read_checkpoint",
    "read_record",
    "record_path",
    "shipped_meta",
    "shipped_models",
    "user_models",
    "write_record",
]

# names that import torch, loaded on first use (the old weights.py imported them at its top)
_LAZY = {
    "load_model": ".loading",
    "cached_model": ".loading",
    "_model_cache": ".loading",
    "resolve_device": "..devices",
    "MIRNetConfig": "..model",
    "MIRNetV2": "..model",
    "config_from_state_dict": "..model",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, cache=False)
