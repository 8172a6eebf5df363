"""Finding, downloading and safely loading MIRNet-v2 weights: shipped models, official assets, files, URLs.

Every checkpoint is treated as a stranger's file: it is read without running pickled code, its size,
structure and values are checked before a model is built, and a download only reaches the cache
after it passed those checks, with its SHA-256 recorded beside it; every later use checks the cached
file against that record. Loaded models are reused while their file is unchanged on disk and loaded
again when it changed. Nothing that this module did not write itself is ever deleted.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import sys
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import torch

from .devices import resolve_device
from .model import MIRNetConfig, MIRNetV2, config_from_state_dict
from .weights_files import FileCache, read_record, record_path, write_record

__all__ = [
    "OFFICIAL_ASSETS",
    "OFFICIAL_LICENCE",
    "OfficialWeightsNotice",
    "WeightsError",
    "WeightsInfo",
    "available_weights",
    "cache_dir",
    "cached_path",
    "check_finite",
    "check_official",
    "checkpoint_files",
    "fetch",
    "load_model",
    "local_checkpoint",
    "read_checkpoint",
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
#: What is checked instead: the structure every release shares (below), which catches a wrong or
#: damaged file though not a forged one of the same shape, and the SHA-256 recorded at download
#: time (weights_files.py), which catches a cached file changed since.
PUBLISHED_SHA256: dict[str, str | None] = dict.fromkeys(OFFICIAL_ASSETS)
_OFFICIAL_DUAL_PIXEL = "dual_pixel_defocus_deblurring"
_OFFICIAL_PARAMS = {False: 5_858_560, True: 5_860_720}  # 3 -> 3 and the dual-pixel 6 -> 3
OFFICIAL_LICENCE = (
    "The official MIRNet-v2 weights (swz30/MIRNetv2) are released under the 'Academic Public "
    "License': non-commercial, academic use only. By using them you accept its terms."
)
SHIPPED_DIR = Path(__file__).parent / "models"
# a moving average of the weights, where a checkpoint has one, is what its trainer evaluated
_STATE_KEYS = ("params_ema", "params", "state_dict", "model")
#: Largest checkpoint file read or downloaded. The official ones are 23 MB; a training checkpoint of
#: a 4x wider model with optimizer state stays far below this. Bigger is a wrong file (an image stack?).
MAX_CHECKPOINT_BYTES = 4 << 30
#: Largest network a checkpoint may describe; the shapes decide the size of the model that is built,
#: and a small file can declare huge shapes (stride-0 tensors), so this is checked before building.
MAX_PARAMETERS = 500_000_000
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
_licence_shown = False
_licence_lock = threading.Lock()


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or loaded; the message says what to do."""


class OfficialWeightsNotice(UserWarning):
    """The licence notice shown once per process when official (non-commercial) weights are used."""


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


def _url_file_name(url: str) -> str:
    # the hash keeps two URLs apart; the readable tail is sanitised so that no URL can name a path
    # outside the cache, an over-long file name or a hidden file
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(urlsplit(url).path).name)).strip("._")[:80]
    return f"{digest}-{tail or 'weights.pth'}"


def cached_path(name_or_url: str) -> Path:
    """Where :func:`fetch` keeps an official asset or a downloaded URL (whether it is there or not).

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


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The model files in a folder, sorted: ``.pth`` and the other checkpoint suffixes.

    A fine-tuning run's resume file (``NAME.pth.state.pth``: optimizer state, not a model to
    restore with) and download records are not listed.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to list (not recursively).

    Returns
    -------
    list of Path
        Regular files (or links to them); an empty list for a missing folder.
    """
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(
        q
        for q in p.iterdir()
        if q.suffix.lower() in _CHECKPOINT_SUFFIXES and not q.name.lower().endswith(".state.pth") and q.is_file()
    )


def shipped_models() -> dict[str, Path]:
    return {p.stem: p for p in checkpoint_files(SHIPPED_DIR) if p.suffix == ".pth"}


_meta_cache: FileCache[dict] = FileCache()


def shipped_meta(name: str) -> dict:
    """The ``meta`` entry of a shipped model, read once per process (again if the file changed)."""
    path = shipped_models()[name]

    def load() -> tuple[dict, str]:
        data = _slurp(path, str(path))
        return _parse(data, path, str(path))[1], hashlib.sha256(data).hexdigest()

    return copy.deepcopy(_meta_cache.get(path, path, load))  # callers may change their copy


def available_weights() -> list[WeightsInfo]:
    """Every named model: the shipped ones first, then the official assets.

    Cheap enough for a widget to call on every change: the shipped files' metadata is read once per
    process (see :func:`shipped_meta`) and the official ones are only looked up in the cache folder.
    """
    infos = [
        WeightsInfo(name, "shipped", shipped_meta(name).get("task", "?"), str(path), True, "BSD-3-Clause")
        for name, path in shipped_models().items()
    ]
    for name, task in OFFICIAL_ASSETS.items():
        cached = cached_path(name).is_file()
        infos.append(WeightsInfo(name, "official", task, official_url(name), cached, "Academic Public License"))
    return infos


def _show_licence_once() -> None:
    global _licence_shown
    with _licence_lock:
        if not _licence_shown:
            _licence_shown = True
            warnings.warn(OFFICIAL_LICENCE, OfficialWeightsNotice, stacklevel=3)


# ------------------------------------------------------------------------------ local files
def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise WeightsError(
            f"{url} names a file on another host ({parts.netloc}); mount it or copy it here and pass the local path"
        )
    from urllib.request import url2pathname

    return Path(url2pathname(parts.path))


def _size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def local_checkpoint(path: str | os.PathLike) -> Path:
    """Check that ``path`` (or a ``file://`` URL) is a regular, non-empty file of a plausible size.

    Nothing is read but the file system's entry, so this is cheap and never blocks (a FIFO or a
    device file is refused, not opened).

    Parameters
    ----------
    path : str or os.PathLike
        A local path or a ``file://`` URL.

    Returns
    -------
    Path
        The path, with ``~`` expanded.

    Raises
    ------
    WeightsError
        For a missing path, a folder (listing the checkpoints inside), a dangling or looping symbolic
        link, a special file, an empty file or one over ``MAX_CHECKPOINT_BYTES``.
    """
    text = str(path)
    p = _file_url_path(text) if text.lower().startswith("file:") else Path(text).expanduser()
    if p.is_symlink() and not p.exists():
        raise WeightsError(
            f"weights file {p} is a symbolic link that leads nowhere (its target is missing, or the "
            "links form a loop); point it at the real .pth file or pass that file's path"
        )
    if p.is_dir():
        found = [q.name for q in checkpoint_files(p)]
        inside = (
            f"it holds {', '.join(found[:10])}{', ...' if len(found) > 10 else ''}: pass one of them, "
            f"e.g. {p / found[0]}"
            if found
            else "it holds no .pth file"
        )
        raise WeightsError(f"weights {p} is a folder, not a checkpoint file; {inside}")
    if not p.exists():
        raise WeightsError(f"weights file {p} does not exist")
    if not p.is_file():
        raise WeightsError(f"weights {p} is not a regular file (a device, pipe or socket?); pass a .pth file")
    size = p.stat().st_size
    if size == 0:
        raise WeightsError(
            f"weights file {p} is empty (0 bytes): an interrupted copy or download? Copy or download it again"
        )
    if size > MAX_CHECKPOINT_BYTES:
        raise WeightsError(
            f"weights file {p} is {_size_text(size)}, more than any MIRNet-v2 checkpoint (at most "
            f"{_size_text(MAX_CHECKPOINT_BYTES)}; the official ones are 23 MB): is it the right file?"
        )
    return p


def _slurp(path: Path, source: str) -> bytes:
    """The file's bytes, read once: what is hashed is what is loaded, even if the file changes meanwhile."""
    local_checkpoint(path)
    try:
        return Path(path).read_bytes()
    except PermissionError as err:
        raise WeightsError(
            f"cannot read {source}: permission denied. If it sits in a shared cache, ask its owner to "
            f"make it readable (chmod a+r {path}); or point NAPARI_MIRNET_CACHE at a folder of your own"
        ) from err
    except OSError as err:
        raise WeightsError(f"cannot read {source}: {err.strerror or err}") from err


def _read(path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    return _parse(_slurp(path, source), path, source)


def _parse(data: bytes, path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt files
        raise WeightsError(f"cannot read {source}: {_why_unreadable(path)} ({type(err).__name__}: {err})") from err
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    return _extract_state_dict(obj, source), dict(meta) if isinstance(meta, dict) else {}


def _why_unreadable(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
            return "it looks like an HTML page, not a checkpoint (a login or error page saved as .pth?)"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                return (
                    f"it is a zip archive but not a PyTorch checkpoint (it holds {listed or 'nothing'}); "
                    "if the checkpoint is inside, unpack it and pass the .pth file"
                )
    except (OSError, zipfile.BadZipFile):
        pass
    return "it is truncated, corrupt, or contains objects that are not safe to unpickle"


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
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint without running any pickled code.

    Parameters
    ----------
    path : str or Path
        A local checkpoint file (``file://`` URLs too).

    Returns
    -------
    state_dict : dict of str to Tensor
        The parameters (a moving average first), without any ``module.`` prefix.
    meta : dict
        The checkpoint's ``"meta"`` entry, or an empty dict.

    Raises
    ------
    WeightsError
        Saying what is wrong with the file (see :func:`local_checkpoint`, plus unreadable, HTML, zip
        of something else, no state dict).
    """
    return _read(Path(path), str(path))


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
        raise WeightsError(f"{source} does not match a MIRNet-v2 of config {model.config}: " + "; ".join(problems))


def check_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict holding NaN or Inf, which would turn every output black or NaN.

    Parameters
    ----------
    sd : dict of str to Tensor
        The parameters.
    source : str
        The file or URL, for the message.

    Raises
    ------
    WeightsError
        Naming each tensor with non-finite values and how many it holds.
    """
    bad = []
    for k, v in sd.items():
        if not (v.is_floating_point() or v.is_complex()):
            continue
        # a float64 sum is non-finite when a value is, and is much faster than an element-wise test
        # on float16 weights; only a suspect tensor (or float64 data that overflowed) is counted
        if v.is_floating_point() and bool(torch.isfinite(v.sum(dtype=torch.float64))):
            continue
        n_nan = int(torch.isnan(v).sum())
        n_inf = int(torch.isinf(v).sum())
        if n_nan or n_inf:
            counts = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
            bad.append(f"{k} ({', '.join(counts)})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise WeightsError(
            f"{source} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): "
            f"{'; '.join(bad[:5])}{more}. A model with them gives black or NaN images. The file is "
            "damaged or comes from a diverged training run: use another checkpoint (from a training "
            "run, an earlier one)"
        )


def _official_config(name: str) -> MIRNetConfig:
    if name == _OFFICIAL_DUAL_PIXEL:
        return MIRNetConfig(in_channels=6, out_channels=3, dual_pixel=True)
    return MIRNetConfig()


def check_official(name: str, config: MIRNetConfig, sd: dict[str, torch.Tensor], source: str) -> None:
    """Check that a state dict has the structure of the official asset ``name``.

    No checksums of the official files are published, so the check is structural: channels in and
    out (3 -> 3, dual-pixel 6 -> 3), ``n_feat`` 80, ``chan_factor`` 1.5, 2 MRBs, no bias, and the
    parameter count (5,858,560; dual-pixel 5,860,720).

    Parameters
    ----------
    name : str
        An official asset name.
    config : MIRNetConfig
        The configuration inferred from ``sd``.
    sd : dict of str to Tensor
        The parameters.
    source : str
        The file or URL, for the message.

    Raises
    ------
    WeightsError
        Listing each difference from the official structure.
    """
    expected = _official_config(name)
    fields = ("in_channels", "out_channels", "n_feat", "chan_factor", "n_mrb", "bias", "dual_pixel")
    diffs = [
        f"{f} {getattr(config, f)!r} (official: {getattr(expected, f)!r})"
        for f in fields
        if getattr(config, f) != getattr(expected, f)
    ]
    n_params = sum(v.numel() for v in sd.values())
    want = _OFFICIAL_PARAMS[expected.dual_pixel]
    if n_params != want:
        diffs.append(f"{n_params:,} parameters (official: {want:,})")
    if diffs:
        raise WeightsError(f"{source} does not have the structure of the official {name}: {'; '.join(diffs)}")


def _build(sd: dict[str, torch.Tensor], source: str) -> MIRNetV2:
    """A model on the meta device (no memory) of the config the tensors describe, checked against them."""
    try:
        config = config_from_state_dict(sd)
        with torch.device("meta"):
            model = MIRNetV2(config)
    except Exception as err:  # odd shapes make the inference or the constructor fail in many ways
        raise WeightsError(f"{source} is not a usable MIRNet-v2 checkpoint: {err}") from None
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMETERS:
        raise WeightsError(
            f"{source} describes a MIRNet-v2 of {n_params:,} parameters ({config}), more than "
            f"{MAX_PARAMETERS:,}: a damaged or hostile checkpoint"
        )
    check_state_dict(model, sd, source)
    return model


def _load_checked(path: Path, source: str, official: str | None = None, advice: str = "", recorded: bool = False):
    """(state dict, meta, meta-device model, SHA-256) of a checkpoint that passed every check.

    ``recorded``: the file is a download in the cache, checked against the SHA-256 recorded then
    (and an official one against the published SHA-256, where one is known).
    """
    try:
        data = _slurp(path, source)
        digest = hashlib.sha256(data).hexdigest()
        if recorded:
            _check_sha256(path, digest, official)
        sd, meta = _parse(data, path, source)
        model = _build(sd, source)
        if official:
            check_official(official, model.config, sd, source)
        check_finite(sd, source)
    except WeightsError as err:
        if advice:
            raise WeightsError(f"{err}. {advice}") from err.__cause__
        raise
    return sd, meta, model, digest


def _check_sha256(path: Path, digest: str, official: str | None) -> None:
    """Refuse a cached file whose SHA-256 is not the published one, or not the one recorded at download."""
    published = PUBLISHED_SHA256.get(official) if official else None
    if published is not None and digest != published:
        raise WeightsError(
            f"{path} is not the official {official} checkpoint: its SHA-256 is {digest}, the published one is "
            f"{published}"
        )
    try:
        recorded = read_record(path)
    except ValueError as err:
        raise WeightsError(
            f"{err}; so {path} cannot be checked against its download. Delete both files and download it again"
        ) from None
    if recorded is not None and digest != recorded:
        again = f"`napari-mirnet weights fetch {official}`" if official else "the same command"
        raise WeightsError(
            f"{path} has changed since it was downloaded: its SHA-256 is {digest}, but {record_path(path).name} "
            f"recorded {recorded} at download time (the file was truncated, damaged or replaced). Delete "
            f"{path} and {record_path(path)} and run {again} to download it again; or, to use the file as it "
            f"is now, pass its path as the weights"
        )


def _replace_advice(name: str, path: Path) -> str:
    return (
        f"It is not the official {name} checkpoint: delete {path} and run `napari-mirnet weights fetch "
        f"{name}`, or copy the real file ({official_url(name)}) to {path}"
    )


# ------------------------------------------------------------------------------ downloads
def _umask() -> int:
    # /proc reads it without changing it; os.umask can only read it by setting it (racing other threads)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def fetch(name_or_url: str, *, progress: bool = True, verify: bool = True) -> Path:
    """A local file for an official asset name or a URL, downloading it into the cache once.

    A file already in the cache is used without writing anything (a shared, read-only cache works);
    a download's file is checked against the SHA-256 recorded when it came (``<file>.sha256``), a
    file copied in by hand (no record) by its structure. A download goes to a temporary file that is
    checked like :func:`load_model` does and only then renamed into place with its record,
    readable by others as the umask allows.

    Parameters
    ----------
    name_or_url : str
        An official asset name, an http(s) URL, or a ``file://`` URL (used in place, not copied).
    progress : bool
        Show a progress bar on stderr while downloading.
    verify : bool
        Also check a file that is already there (its recorded SHA-256, an official name's
        structure, finite values).

    Returns
    -------
    Path
        The local file.

    Raises
    ------
    WeightsError
        Saying what went wrong and what to do.
    """
    text = str(name_or_url)
    if text in OFFICIAL_ASSETS:
        official, url = text, official_url(text)
        _show_licence_once()
    elif "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme == "file":
            path = local_checkpoint(text)
            if verify:
                _load_checked(path, str(path))
            return path
        if scheme not in ("http", "https"):
            raise WeightsError(
                f"cannot download {text}: only http://, https:// and file:// addresses are supported; "
                "download it yourself and pass the local file"
            )
        official, url = None, text
    else:
        raise WeightsError(f"{text!r} is neither an official asset nor a URL")
    target = cached_path(text)
    advice = _replace_advice(official, target) if official else f"Delete {target} to download it again"
    if target.exists() or target.is_symlink():
        # what is there was put there by a download (with a SHA-256 record) or by hand: use it, never
        # write or delete it
        if verify:
            _load_checked(target, str(target), official, advice, recorded=True)
        else:
            local_checkpoint(target)
        return target
    return _download(url, target, official=official, progress=progress)


def _http_error_text(err, url: str, official: str | None, target: Path) -> str:
    from http import HTTPStatus

    code = err.response.status_code if err.response is not None else 0
    try:  # the standard phrase, not whatever reason text the server chose to send
        status = f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        status = f"HTTP {code}"
    if official and "NAPARI_MIRNET_BASE_URL" in os.environ:
        what = f"check NAPARI_MIRNET_BASE_URL ({os.environ['NAPARI_MIRNET_BASE_URL']})"
    elif official:
        what = (
            f"the release may have moved: download {official}.pth from "
            f"https://github.com/swz30/MIRNetv2/releases by hand and copy it to {target}"
        )
    else:
        what = "check the address"
    return f"cannot download {url}: the server answered {status}; {what}"


def _unreachable_text(err, url: str, target: Path) -> str:
    import requests

    host = urlsplit(url).hostname or url
    if isinstance(err, requests.exceptions.Timeout):
        why = f"{host} did not answer in time"
    elif isinstance(err, requests.exceptions.ConnectionError):
        why = f"no connection to {host}"
    else:
        why = f"{type(err).__name__} from {host}"
    return f"copy {url} to {target} by hand, or use a local file as the weights (could not download: {why})"


def _download(url: str, target: Path, *, official: str | None, progress: bool) -> Path:
    import requests
    from tqdm.auto import tqdm

    folder = target.parent
    offline = f"Without a network, download it elsewhere and copy it to {target}, or use a local file as the weights."
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as err:
        raise WeightsError(
            f"cannot download {url} into the weights cache {folder}: {err.strerror or err}. Set "
            "NAPARI_MIRNET_CACHE to a folder you can write, or (for a shared cache) ask its owner to "
            f"run `napari-mirnet weights fetch {official or url}`"
        ) from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                with requests.get(url, stream=True, timeout=(15, 60)) as resp:
                    resp.raise_for_status()
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    if total and total > MAX_CHECKPOINT_BYTES:
                        raise WeightsError(
                            f"{url} is {_size_text(total)}, more than any MIRNet-v2 checkpoint "
                            f"(at most {_size_text(MAX_CHECKPOINT_BYTES)}): not downloaded; check the address"
                        )
                    done = 0
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=target.name,
                        disable=not progress,
                        file=sys.stderr,
                    ) as bar:
                        for block in resp.iter_content(1 << 20):
                            done += len(block)
                            if done > MAX_CHECKPOINT_BYTES:
                                raise WeightsError(
                                    f"{url} sent more than {_size_text(MAX_CHECKPOINT_BYTES)}, more than any "
                                    "MIRNet-v2 checkpoint: stopped; check the address"
                                )
                            fh.write(block)
                            bar.update(len(block))
                    if total and done != total and "Content-Encoding" not in resp.headers:
                        raise WeightsError(
                            f"the download of {url} stopped after {done:,} of {total:,} bytes. Try again. {offline}"
                        )
            except requests.exceptions.HTTPError as err:
                raise WeightsError(_http_error_text(err, url, official, target)) from err
            except requests.exceptions.RequestException as err:
                # one short line, the action first: the library's ~600-character text stays in __cause__
                raise WeightsError(_unreachable_text(err, url, target)) from err
        try:
            digest = _load_checked(tmp, url, official)[3]
            published = PUBLISHED_SHA256.get(official) if official else None
            if published is not None and digest != published:
                raise WeightsError(f"its SHA-256 is {digest}, not the published {published}; check the address")
        except WeightsError as err:
            raise WeightsError(f"the download of {url} was not kept: {err}") from err.__cause__
        # mkstemp makes the file 0600; a shared cache needs the mode that a plain file would get
        mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        # the record first: a download in place always has one (trust on first download)
        write_record(target, digest, mode)
        os.replace(tmp, target)
    except OSError as err:
        raise WeightsError(
            f"cannot write the download of {url} to {folder}: {err.strerror or err}. Free some space, or "
            "set NAPARI_MIRNET_CACHE to another folder"
        ) from err
    finally:
        # only the temporary file that this call wrote is ever removed
        tmp.unlink(missing_ok=True)
    return target


def _resolve(weights: str | os.PathLike) -> tuple[Path, str | None, bool]:
    """(local file, the official asset it must be or None, whether it is a download in the cache)."""
    text = str(weights)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text], None, False
    if text in OFFICIAL_ASSETS:
        return fetch(text, verify=False), text, True
    if "://" in text:
        return fetch(text, verify=False), None, urlsplit(text).scheme.lower() != "file"
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink():
        return path, None, False
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES or os.sep in text or "/" in text:
        raise WeightsError(f"weights file {path} does not exist")
    names = ", ".join([*shipped, *OFFICIAL_ASSETS])
    raise WeightsError(f"weights {text!r} is not a file, a URL, or a known model name ({names})")


def locate(weights: str | os.PathLike) -> Path:
    """The local file for a shipped name, an official name, a URL or a path."""
    return _resolve(weights)[0]


def load_model(weights: str | os.PathLike, device: str | torch.device | None = "cpu") -> MIRNetV2:
    """Build a MIRNet-v2 from a checkpoint; the config is inferred from the tensors' names and shapes.

    Parameters
    ----------
    weights : str or os.PathLike
        A shipped model name, an official asset name, a local path, or an http(s) or ``file://`` URL.
    device : str, torch.device or None
        Where the model goes ('auto', 'cpu', 'cuda', ...).

    Returns
    -------
    MIRNetV2
        In eval mode and float32, with ``.meta`` (checkpoint metadata), ``.weights_name`` and
        ``.weights_sha256`` set.

    Raises
    ------
    WeightsError
        For a file that is missing, unreadable, of the wrong structure (an official name's included)
        or holds NaN/Inf, and for a downloaded file that changed since its download (its SHA-256 is
        not the one recorded then). The file is never deleted.
    """
    path, official, recorded = _resolve(weights)
    advice = _replace_advice(official, path) if official else ""
    sd, meta, model, digest = _load_checked(path, str(path), official, advice, recorded)
    # the model was built on the meta device: take the checked tensors as its parameters, which
    # skips a random initialisation that would be overwritten anyway
    model.load_state_dict({k: v.float().contiguous() for k, v in sd.items()}, assign=True)
    model.meta = meta
    model.weights_name = str(weights)
    model.weights_sha256 = digest  # of the very bytes the tensors came from
    return model.eval().to(resolve_device(device))


#: Loaded models by (weights, device), each reused while its file is unchanged (see FileCache).
_model_cache: FileCache[MIRNetV2] = FileCache()


def cached_model(
    weights: str | os.PathLike, device: str | torch.device | None = "auto", *, sha256: str | None = None
) -> MIRNetV2:
    """One model per (weights, device) and process, loaded again when the file changed on disk.

    Engine tasks call this instead of shipping models. A checkpoint replaced or rewritten since it
    was loaded (a new fine-tuning into the same file, a replaced download) is read again, so a run
    never uses weights other than the file's, and its fingerprint (``weights_sha256``) says which.

    Parameters
    ----------
    weights : str or os.PathLike
        As for :func:`load_model`.
    device : str, torch.device or None
        Where the model goes.
    sha256 : str, optional
        The SHA-256 the weights must have (a run's fingerprint): a file changed since is refused.

    Returns
    -------
    MIRNetV2
        Shared: callers must not change it.
    """
    dev = resolve_device(device)
    path = _resolve(weights)[0]

    def load() -> tuple[MIRNetV2, str]:
        model = load_model(weights, dev)
        return model, model.weights_sha256

    model = _model_cache.get((str(weights), str(dev)), path, load)
    if sha256 is not None and model.weights_sha256 != sha256:
        raise WeightsError(
            f"weights {weights} changed on disk during the run (SHA-256 {model.weights_sha256}, the run "
            f"started with {sha256}); the output would mix two models. Keep the file unchanged while a "
            "run uses it, and re-run"
        )
    return model
