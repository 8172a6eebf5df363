"""Training MIRNet-v2 models: supervised from clean images, or self-supervised on the user's noisy data.

The names of the former ``napari_mirnet.training`` and ``napari_mirnet.finetune`` modules live here.
Each is imported on first use (PEP 562), so that ``napari_mirnet.training.config``, which the
command line's parser reads, imports no torch.
"""

from __future__ import annotations

from ..lazy import lazy_names

# name -> the submodule that defines it
_HOMES: dict[str, str] = {}


def _home(module: str, *names: str) -> None:
    for n in names:
        _HOMES[n] = module


_home(
    "config",
    "TrainConfig", "FinetuneConfig", "parse_stages", "degradation_from_args",
    "TRAINABLE_TASKS", "LOSS_NAMES", "OBJECTIVES", "PAIRS", "MIN_EDGE",
)  # fmt: skip
_home(
    "images",
    "load_images", "bundled_images", "is_colour", "training_images", "SKIMAGE_TRAIN_IMAGES",
    "PACKAGE_TRAIN_IMAGES", "TRAIN_IMAGES", "HELD_OUT_IMAGES", "VALIDATION_SOURCES", "VALIDATION_STRIP",
    "VALIDATION_MIN_ROWS", "TEST_IMAGES", "split_validation", "validation_images", "independent_test_images",
    "save_test_images", "centre_crop", "to_channels", "_package_dir", "_load_test_image",
)  # fmt: skip
_home("checkpoints", "export_model", "best_path", "val_log_path", "loss_log_path", "code_version", "NORMALISATION")
_home("supervised_data", "validation_pairs", "_Data", "_LeafBank")
_home("dense_groups", "use_dense_groups", "_BlockDiagonalConv2d")
_home("supervised", "TrainResult", "train", "psnr_loss", "LOSSES")
_home("self_supervised", "finetune", "models_dir")
_home("finetune_run", "FinetuneResult", "FinetuneProgress")
_home("patches", "noise_correlation")
_home("output", "state_path", "check_output")

__all__ = [n for n in _HOMES if not n.startswith("_")]


__getattr__, __dir__ = lazy_names(__name__, {k: f".{v}" for k, v in _HOMES.items()})
