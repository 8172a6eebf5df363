"""Building models from checkpoints: :func:`load_model`, and :func:`cached_model` for the engine, one per file content.

A model is built on the meta device from tensors that passed every check and takes them as its
parameters. The engine's models are reused while their file is unchanged on disk and loaded again
when it changed (keyed by the file's identity, see :class:`~napari_mirnet.weights.files.FileCache`):
fine-tuning again into the same file serves the new model in the same process.
"""

from __future__ import annotations

import os

import torch

from ..devices import resolve_device
from ..model import MIRNetV2
from .download import load_checked, replace_advice, resolve
from .errors import WeightsError
from .files import FileCache

__all__ = ["cached_model", "load_model"]


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
    path, official, recorded = resolve(weights)
    advice = replace_advice(official, path) if official else ""
    sd, meta, model, digest = load_checked(path, str(path), official, advice, recorded)
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
    path = resolve(weights)[0]

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
