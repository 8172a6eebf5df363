"""Reading and checking a checkpoint: its bytes, state dict and metadata, shapes, values and the official structure.

Every checkpoint is treated as a stranger's file: it is read without running pickled code, and its
size, structure and values are checked before a model is built. torch is imported only when a
file's tensors are read, so that the catalogue and the CLI's help stay light.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import WeightsError
from .files import checkpoint_files
from .meta import STATE_KEYS
from .restore_meta import detail_filter, pixel_shuffle

if TYPE_CHECKING:
    import torch

    from ..model import MIRNetConfig, MIRNetV2

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_PARAMETERS",
    "check_finite",
    "check_official",
    "check_state_dict",
    "checked",
    "local_checkpoint",
    "read_bytes",
    "read_checkpoint",
]

#: Largest checkpoint file read or downloaded. The official ones are 23 MB; a training checkpoint of
#: a 4x wider model with optimizer state stays far below this. Bigger is a wrong file (an image stack?).
MAX_CHECKPOINT_BYTES = 4 << 30
#: Largest network a checkpoint may describe; the shapes decide the size of the model that is built,
#: and a small file can declare huge shapes (stride-0 tensors), so this is checked before building.
MAX_PARAMETERS = 500_000_000
_OFFICIAL_DUAL_PIXEL = "dual_pixel_defocus_deblurring"
_OFFICIAL_PARAMS = {False: 5_858_560, True: 5_860_720}  # 3 -> 3 and the dual-pixel 6 -> 3


# ------------------------------------------------------------------------------ local files
def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise WeightsError(
            f"{url} names a file on another host ({parts.netloc}); mount it or copy it here and pass the local path"
        )
    from urllib.request import url2pathname

    return Path(url2pathname(parts.path))


def size_text(n: int) -> str:
    """A byte count for a message: GiB from 1 GiB up, MiB below."""
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
            f"weights file {p} is {size_text(size)}, more than any MIRNet-v2 checkpoint (at most "
            f"{size_text(MAX_CHECKPOINT_BYTES)}; the official ones are 23 MB): is it the right file?"
        )
    return p


def read_bytes(path: Path, source: str) -> bytes:
    """The file's bytes after :func:`local_checkpoint`'s checks, read once.

    What is hashed is what is loaded, even if the file changes meanwhile; ``source`` names the
    file (or the URL it came from) in the messages.
    """
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


def parse(data: bytes, path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of a checkpoint's bytes, read by torch without running pickled code."""
    import torch

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
    import torch

    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{source} holds no state dict: expected tensors at the top level or under one of "
            f"{', '.join(map(repr, STATE_KEYS))}"
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
    return parse(read_bytes(Path(path), str(path)), Path(path), str(path))


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
    import torch

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
    from ..model import MIRNetConfig

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
    import torch

    from ..model import MIRNetV2, config_from_state_dict

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


def checked(data: bytes, path: Path, source: str, official: str | None = None):
    """(state dict, meta, model on the meta device) of a checkpoint's bytes that pass every check.

    The checks, in order: readable without pickled code, a state dict, a MIRNet-v2 of at most
    ``MAX_PARAMETERS`` whose tensors all match, the official structure where ``official`` names an
    asset, finite values. A :class:`WeightsError` names the first that fails.
    """
    sd, meta = parse(data, path, source)
    model = _build(sd, source)
    if official:
        check_official(official, model.config, sd, source)
    check_finite(sd, source)
    model.pixel_shuffle = pixel_shuffle(meta, source)
    model.detail_filter = detail_filter(meta, source)
    return sd, meta, model
