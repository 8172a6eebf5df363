"""What the widgets offer to choose: weights from the model catalogue, fine-tuned models, devices.

One list of models serves the task widgets and the fine-tune widget, so that what counts as a
model (never a fine-tuning run's resume file ``NAME.pth.state.pth``) is decided once. Imports no
Qt and no torch at module level.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AUTO_WEIGHTS",
    "LOCAL_FILE",
    "auto_weights",
    "denoise_start_choices",
    "device_choices",
    "device_status",
    "finetuned_models",
    "models_dir",
    "official_to_download",
    "weights_choices",
    "weights_note",
]

AUTO_WEIGHTS = "auto"
LOCAL_FILE = "local file"


def models_dir() -> Path:
    """Where the Fine-tune widget saves models (``$NAPARI_MIRNET_MODELS`` or the user data folder)."""
    from ..weights.catalogue import models_dir

    return models_dir()


def finetuned_models(folder: str | Path | None = None) -> list[Path]:
    """The models the Fine-tune widget saved (``.pth`` files in :func:`models_dir`), sorted by name.

    A run's resume file (``NAME.pth.state.pth``) is optimiser state, not a model: never listed.
    """
    from ..weights.catalogue import user_models

    return list(user_models(folder).values())


def _finetuned_choices() -> list[tuple[str, str]]:
    return [(f"{p.stem} (fine-tuned)", str(p)) for p in finetuned_models()]


def _catalogue() -> list:
    from ..weights.catalogue import available_weights

    try:
        return list(available_weights())
    except Exception:  # a broken shipped file must not break a widget; it is reported when used
        return []


def weights_choices(task: str, scale: int = 1) -> list[tuple[str, str]]:
    """(label, value) pairs: auto, shipped models for the task, the official checkpoint, a local file.

    Parameters
    ----------
    task : str
        The task's name (``"denoise"``, ``"super_resolution"``...).
    scale : int
        The super-resolution factor the models must have been trained for.
    """
    from ..tasks import get_task

    preset = get_task(task)
    official = preset.official.get(scale, preset.official[min(preset.official)])
    choices = [(f"auto (default for {preset.title.lower()})", AUTO_WEIGHTS)]
    infos = _catalogue()
    for info in infos:
        if info.kind == "shipped" and info.task == task and _shipped_scale(info.name) in (None, scale):
            choices.append((info.label, info.name))
    for info in infos:
        if info.kind == "official" and info.name == official:
            choices.append((info.label, info.name))
    if task == "denoise":  # models saved by the Fine-tune widget
        choices += _finetuned_choices()
    choices.append(("local file…", LOCAL_FILE))
    return choices


def denoise_start_choices() -> list[tuple[str, str]]:
    """The models a fine-tuning run can start from: shipped denoisers and earlier fine-tuned models."""
    shipped = [(f"{i.name} (shipped)", i.name) for i in _catalogue() if i.kind == "shipped" and i.task == "denoise"]
    return shipped + _finetuned_choices()


def _shipped_scale(name: str) -> int | None:
    """The super-resolution factor a shipped model was trained for (None when it says none)."""
    from ..weights.catalogue import shipped_meta

    try:
        scale = shipped_meta(name).get("scale")
    except Exception:
        return None
    return None if scale is None else int(scale)


def auto_weights(task: str, scale: int | None, rgb: bool) -> str | None:
    """What 'auto' weights will be for this input (as the engine chooses them)."""
    from ..tasks import choose_weights

    try:
        return choose_weights(task, scale or 1, 3 if rgb else 1)
    except Exception:
        return None


def official_to_download() -> set[str]:
    """Official checkpoints not downloaded yet."""
    return {i.name for i in _catalogue() if i.kind == "official" and not i.available}


def weights_note(value: str, task: str, scale: int | None, rgb: bool) -> str:
    """A line for the widget when the weights chosen (or what 'auto' means here) are official ones:
    non-commercial, and downloaded on first use."""
    if value == LOCAL_FILE:
        return ""
    name = auto_weights(task, scale, rgb) if value == AUTO_WEIGHTS else value
    official = {i.name: i.available for i in _catalogue() if i.kind == "official"}
    if name not in official:
        return ""
    what = f"auto = official {name!r} weights" if value == AUTO_WEIGHTS else "official weights"
    download = "" if official[name] else ", downloaded on the first run"
    return f"{what}: non-commercial, academic use only{download}"


def device_choices() -> list[str]:
    """'auto' plus the devices PyTorch can actually use here."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def device_status(device: str) -> str:
    """One line saying which device a choice means, and why there is no GPU if there is none."""
    import torch

    from ..weights import resolve_device

    try:
        dev = resolve_device(device)
    except Exception as err:  # an unavailable device: say so instead of failing later
        return f"unavailable: {err}"
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        text = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    elif dev.type == "mps":
        text = "Apple GPU (MPS)"
    else:
        text = f"CPU, {torch.get_num_threads()} threads"
        if device == "auto":
            cuda = torch.version.cuda
            why = "a CPU-only build" if cuda is None else f"CUDA {cuda} build, no GPU visible"
            text += f" (no GPU: PyTorch {torch.__version__} is {why})"
    return ("auto: " if device == "auto" else "") + text
