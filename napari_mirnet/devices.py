"""Device and precision policy: which torch device 'auto' means, and which precision runs on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "resolve_device", "resolve_precision"]


class DeviceError(RuntimeError):
    """The requested device is not available to this PyTorch build."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable device is a clear error."""
    import torch  # here, not above: the CLI's parser and the napari reader import this module

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:1 or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} was asked for, but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
            "use device='cpu' or install a CUDA build of PyTorch"
        )
    return dev


def resolve_precision(precision: str, device) -> str:
    """'auto' is bf16 on CUDA GPUs and fp32 elsewhere; otherwise 'fp32' or 'bf16' as given."""
    if precision == "auto":
        return "bf16" if resolve_device(device).type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
    return precision
