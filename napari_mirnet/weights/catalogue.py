"""The model catalogue: which models exist (shipped, official, fine-tuned in a folder) and where each lives.

Listing is cheap enough for a widget to do on every change, and never imports torch: a shipped
file's metadata is read once per file identity (again only when the file changed on disk, see
:class:`~napari_mirnet.weights.files.FileCache`), without torch where the file allows
(:mod:`~napari_mirnet.weights.meta`); official assets are only looked up in the cache folder; a
fine-tuning run's resume file is never a model (:func:`~napari_mirnet.weights.files.is_model_file`).
What "auto" means for a task and an image is :func:`napari_mirnet.tasks.choose_weights`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .checkpoint import parse, read_bytes
from .files import FileCache, checkpoint_files
from .meta import peek_meta

__all__ = [
    "OFFICIAL_ASSETS",
    "OFFICIAL_BASE_URL",
    "OFFICIAL_LICENCE",
    "PUBLISHED_SHA256",
    "SHIPPED_DIR",
    "WeightsInfo",
    "available_weights",
    "cache_dir",
    "cached_path",
    "models_dir",
    "official_url",
    "shipped_meta",
    "shipped_models",
    "user_models",
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
#: SHA-256 of each official asset as its publisher states it, checked wherever one is known. The
#: release (v1.0.0) publishes no checksums and no sizes, and none were found in model zoos, so every
#: entry is None: a hash computed here from a download would only repeat that download, not check it.
#: What is checked instead: the structure every release shares (checkpoint.py), which catches a wrong
#: or damaged file though not a forged one of the same shape, and the SHA-256 recorded at download
#: time (files.py), which catches a cached file changed since.
PUBLISHED_SHA256: dict[str, str | None] = dict.fromkeys(OFFICIAL_ASSETS)
OFFICIAL_LICENCE = (
    "The official MIRNet-v2 weights (swz30/MIRNetv2) are released under the 'Academic Public "
    "License': non-commercial, academic use only. By using them you accept its terms."
)
SHIPPED_DIR = Path(__file__).parent.parent / "models"


@dataclass(frozen=True)
class WeightsInfo:
    """One named model of :func:`available_weights`.

    Attributes
    ----------
    name : str
        What ``weights=`` takes.
    kind : str
        ``"shipped"`` or ``"official"``.
    task : str
        The task it was trained for (``"?"`` when a shipped file does not say).
    location : str
        Its path or URL.
    available : bool
        Usable now without a download.
    licence : str
        Its licence's name.
    scale : int or None
        The super-resolution factor a shipped model says it was trained for.
    """

    name: str
    kind: str
    task: str
    location: str
    available: bool
    licence: str
    scale: int | None = None

    @property
    def label(self) -> str:
        """How a list of choices shows it."""
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


def models_dir() -> Path:
    """Where the napari widget saves fine-tuned models: ``$NAPARI_MIRNET_MODELS`` or the user data folder."""
    env = os.environ.get("NAPARI_MIRNET_MODELS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-mirnet")) / "models"


def official_url(name: str) -> str:
    """The download address of an official asset; ``$NAPARI_MIRNET_BASE_URL`` points at a mirror."""
    base = os.environ.get("NAPARI_MIRNET_BASE_URL", OFFICIAL_BASE_URL)
    return base.rstrip("/") + f"/{name}.pth"


def _url_file_name(url: str) -> str:
    # the hash keeps two URLs apart; the readable tail is sanitised so that no URL can name a path
    # outside the cache, an over-long file name or a hidden file
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(urlsplit(url).path).name)).strip("._")[:80]
    return f"{digest}-{tail or 'weights.pth'}"


def cached_path(name_or_url: str) -> Path:
    """Where :func:`~napari_mirnet.weights.fetch` keeps an official asset or a downloaded URL (whether it is there or not).

    Parameters
    ----------
    name_or_url : str
        An official asset name (see ``OFFICIAL_ASSETS``) or an http(s) URL.

    Returns
    -------
    Path
        The file in :func:`cache_dir`; offline users copy the file there by hand.
    """
    if name_or_url in OFFICIAL_ASSETS:
        return cache_dir() / f"{name_or_url}.pth"
    return cache_dir() / _url_file_name(name_or_url)


def shipped_models() -> dict[str, Path]:
    """The models that ship with the package: name (the file's stem) to ``.pth`` file."""
    return {p.stem: p for p in checkpoint_files(SHIPPED_DIR) if p.suffix == ".pth"}


def user_models(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """The ``.pth`` models in a folder (default :func:`models_dir`): name (the stem) to file.

    Never a fine-tuning run's resume file ``NAME.pth.state.pth``; an empty dict for a missing folder.
    """
    found = checkpoint_files(models_dir() if folder is None else folder)
    return {p.stem: p for p in found if p.suffix == ".pth"}


def _read_meta(path: Path) -> tuple[dict, str]:
    """(meta, SHA-256) of a file; torch reads it only where the light reader cannot."""
    data = read_bytes(path, str(path))
    meta = peek_meta(data)
    if meta is None:  # the full reader, which also says what is wrong with a broken file
        meta = parse(data, path, str(path))[1]
    return meta, hashlib.sha256(data).hexdigest()


_meta_cache: FileCache[dict] = FileCache()


def shipped_meta(name: str) -> dict:
    """The ``meta`` entry of a shipped model, read once per process (again if the file changed).

    Parameters
    ----------
    name : str
        A key of :func:`shipped_models`.

    Returns
    -------
    dict
        A copy: the caller may change it.
    """
    path = shipped_models()[name]
    return copy.deepcopy(_meta_cache.get(path, path, lambda: _read_meta(path)))


def _scale(meta: dict) -> int | None:
    try:
        return None if meta.get("scale") is None else int(meta["scale"])
    except (TypeError, ValueError):
        return None


def available_weights() -> list[WeightsInfo]:
    """Every named model: the shipped ones first, then the official assets.

    Cheap enough for a widget to call on every change: the shipped files' metadata is read once per
    process (see :func:`shipped_meta`) and the official ones are only looked up in the cache folder.
    """
    infos = []
    for name, path in shipped_models().items():
        meta = shipped_meta(name)
        infos.append(WeightsInfo(name, "shipped", meta.get("task", "?"), str(path), True, "BSD-3-Clause", _scale(meta)))
    for name, task in OFFICIAL_ASSETS.items():
        cached = cached_path(name).is_file()
        infos.append(WeightsInfo(name, "official", task, official_url(name), cached, "Academic Public License"))
    return infos
