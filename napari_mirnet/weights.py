"""Finding, downloading and safely loading MIRNet-v2 weights: shipped models, official assets, files, URLs."""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import MIRNetV2, config_from_state_dict

__all__ = [
    "OFFICIAL_ASSETS",
    "OFFICIAL_LICENCE",
    "WeightsError",
    "WeightsInfo",
    "available_weights",
    "cache_dir",
    "fetch",
    "load_model",
    "read_checkpoint",
    "resolve_device",
]

OFFICIAL_BASE_URL = "https://github.com/swz30/MIRNetv2/releases/download/v1.0.0/"
#: Official release assets and the task each was trained for.
OFFICIAL_ASSETS = {
    "real_denoising": "denoise",
    "sr_x2": "super_resolution",
    "sr_x3": "super_resolution",
    "sr_x4": "super_resolution",
    "enhancement_lol": "lowlight",
    "enhancement_fivek": "enhance",
    "dual_pixel_defocus_deblurring": "defocus",
}
OFFICIAL_LICENCE = (
    "The official MIRNet-v2 weights (swz30/MIRNetv2) are released under the 'Academic Public "
    "License': non-commercial, academic use only. By using them you accept its terms."
)
SHIPPED_DIR = Path(__file__).parent / "models"
# a moving average of the weights, where a checkpoint has one, is what its trainer evaluated
_STATE_KEYS = ("params_ema", "params", "state_dict", "model")
_licence_shown = False
_licence_lock = threading.Lock()


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or loaded; the message says what to do."""


@dataclass(frozen=True)
class WeightsInfo:
    name: str
    kind: str  # "shipped" or "official"
    task: str
    location: str  # path or URL
    available: bool  # usable now without a download
    licence: str

    @property
    def label(self) -> str:
        if self.kind == "official":
            suffix = "" if self.available else ", download"
            return f"{self.name} (official, non-commercial{suffix})"
        return f"{self.name} (shipped)"


def cache_dir() -> Path:
    """Where downloaded weights live: ``$NAPARI_MIRNET_CACHE`` or the per-user cache folder."""
    env = os.environ.get("NAPARI_MIRNET_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mirnet")) / "weights"


def official_url(name: str) -> str:
    """The download address of an official asset; ``$NAPARI_MIRNET_BASE_URL`` points at a mirror."""
    base = os.environ.get("NAPARI_MIRNET_BASE_URL", OFFICIAL_BASE_URL)
    return base.rstrip("/") + f"/{name}.pth"


def shipped_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.pth"))}


def shipped_meta(name: str) -> dict:
    return read_checkpoint(shipped_models()[name])[1]


def available_weights() -> list[WeightsInfo]:
    """Every named model: the shipped ones first, then the official assets."""
    infos = [
        WeightsInfo(name, "shipped", shipped_meta(name).get("task", "?"), str(path), True, "BSD-3-Clause")
        for name, path in shipped_models().items()
    ]
    for name, task in OFFICIAL_ASSETS.items():
        cached = (cache_dir() / f"{name}.pth").is_file()
        infos.append(WeightsInfo(name, "official", task, official_url(name), cached, "Academic Public License"))
    return infos


def _show_licence_once() -> None:
    global _licence_shown
    with _licence_lock:
        if not _licence_shown:
            _licence_shown = True
            warnings.warn(OFFICIAL_LICENCE, UserWarning, stacklevel=3)


def fetch(name_or_url: str, *, progress: bool = True) -> Path:
    """Return a local path for an official asset name or a URL, downloading it into the cache once."""
    if name_or_url in OFFICIAL_ASSETS:
        url, fname = official_url(name_or_url), f"{name_or_url}.pth"
        _show_licence_once()
    elif "://" in name_or_url:
        url = name_or_url
        digest = hashlib.sha256(url.encode()).hexdigest()[:10]
        fname = f"{digest}-{Path(url.split('?')[0]).name or 'weights.pth'}"
    else:
        raise WeightsError(f"{name_or_url!r} is neither an official asset nor a URL")
    target = cache_dir() / fname
    if target.is_file():
        return target
    import pooch
    import requests

    try:
        # pooch writes to a temporary file and renames it: an interrupted download leaves nothing
        path = pooch.retrieve(
            url, known_hash=None, fname=fname, path=cache_dir(), progressbar=progress
        )
    except (requests.exceptions.RequestException, OSError) as err:
        raise WeightsError(
            f"could not download {url} ({type(err).__name__}: {err}). Without a network, download "
            f"it elsewhere and copy it to {target}, or pass weights=<local path>."
        ) from err
    return Path(path)


def _extract_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{source} holds no state dict: expected tensors at the top level or under one of "
            f"{', '.join(map(repr, _STATE_KEYS))}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read (state dict, metadata) from a checkpoint without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt files
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip().lower()
        hint = (
            "it looks like an HTML page, not a checkpoint (a login or error page saved as .pth?)"
            if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<"))
            else "it is truncated, corrupt, or contains objects that are not safe to unpickle"
        )
        raise WeightsError(f"cannot read {path}: {hint} ({type(err).__name__}: {err})") from err
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    return _extract_state_dict(obj, str(path)), dict(meta) if isinstance(meta, dict) else {}


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise a WeightsError naming missing, unexpected or mis-shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s), e.g. {', '.join(extra[:3])}")
    for k, v in expected.items():
        if k in sd and sd[k].shape != v.shape:
            problems.append(f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    if problems:
        raise WeightsError(
            f"{source} does not match a MIRNet-v2 of config {model.config}: " + "; ".join(problems)
        )


def _discard_if_cached(path: Path) -> None:
    if cache_dir().resolve() in path.resolve().parents:
        path.unlink(missing_ok=True)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable device is a clear error."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(
            f"device {device!r} was asked for, but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
            "use device='cpu' or install a CUDA build of PyTorch"
        )
    return dev


def locate(weights: str | os.PathLike) -> Path:
    """The local file for a shipped name, an official name, a URL or a path."""
    text = str(weights)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text]
    if text in OFFICIAL_ASSETS or "://" in text:
        return fetch(text)
    path = Path(text).expanduser()
    if not path.exists():
        names = ", ".join([*shipped, *OFFICIAL_ASSETS])
        raise WeightsError(f"weights {text!r} is not a file, a URL, or a known model name ({names})")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(weights: str | os.PathLike, device: str | torch.device | None = "cpu") -> MIRNetV2:
    """Build a MIRNet-v2 from a checkpoint; the config is inferred from the tensors' names and shapes.

    ``weights`` is a shipped model name, an official asset name, a local path or a URL. The result is
    in eval mode, in float32, with ``.meta`` (checkpoint metadata), ``.weights_name`` and
    ``.weights_sha256`` set.
    """
    path = locate(weights)
    try:
        sd, meta = read_checkpoint(path)
        try:
            config = config_from_state_dict(sd)
            model = MIRNetV2(config)
        except ValueError as err:
            raise WeightsError(f"{path} is not a usable MIRNet-v2 checkpoint: {err}") from None
        check_state_dict(model, sd, str(path))
    except WeightsError:
        # never leave a bad download in the cache, where it would be picked up again
        _discard_if_cached(path)
        raise
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.meta = meta
    model.weights_name = str(weights)
    model.weights_sha256 = file_sha256(path)
    return model.eval().to(resolve_device(device))


_model_cache: dict[tuple[str, str], MIRNetV2] = {}
_model_cache_lock = threading.Lock()


def cached_model(weights: str | os.PathLike, device: str | torch.device | None = "auto") -> MIRNetV2:
    """One model per (weights, device) and process: engine tasks call this instead of shipping models."""
    dev = resolve_device(device)
    key = (str(weights), str(dev))
    with _model_cache_lock:
        if key not in _model_cache:
            _model_cache[key] = load_model(weights, dev)
        return _model_cache[key]
