"""The model call: precision, batching of tiles, test-time augmentation and the out-of-memory split."""

from __future__ import annotations

import itertools
import threading
import warnings

import torch

from ..model import STRIDE, self_ensemble
from .plan import round_to_stride

__all__ = ["forward_plain", "forward_with_retry", "run_batch"]

# One forward pass at a time per device in this process: GPU memory is a process-wide resource.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def forward_plain(model, x: torch.Tensor, precision: str) -> torch.Tensor:
    """One forward pass in fp32 or under bf16 autocast; the result is float32."""
    if precision == "bf16":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return model(x).float()
    return model(x).float()


def forward_with_retry(model, x: torch.Tensor, precision: str, depth: int = 0) -> torch.Tensor:
    """Model forward that survives CUDA out-of-memory by halving the batch, then splitting the tile."""
    b, _, h, w = x.shape
    try:
        return forward_plain(model, x, precision)
    except torch.cuda.OutOfMemoryError:
        if depth >= 6 or (b == 1 and min(h, w) < 8 * STRIDE):
            raise
    # Retry only after leaving the except block: while the exception is being handled its traceback
    # keeps the failed forward's activations alive, and every retry would run out of memory too.
    if x.is_cuda:
        torch.cuda.empty_cache()
    if b > 1:
        warnings.warn(
            f"out of GPU memory on a batch of {b} tiles of {h}x{w}; retrying in batches of {b - b // 2}",
            RuntimeWarning,
            stacklevel=2,
        )
        half = b - b // 2
        return torch.cat(
            [
                forward_with_retry(model, x[:half], precision, depth + 1),
                forward_with_retry(model, x[half:], precision, depth + 1),
            ]
        )
    warnings.warn(
        f"out of GPU memory on a {h}x{w} tile; splitting it into 4 overlapping parts and retrying "
        "(pass a smaller tile to avoid this; split tiles are less consistent with their neighbours)",
        RuntimeWarning,
        stacklevel=2,
    )
    return _split_forward(model, x, precision, depth + 1)


def _split_forward(model, x: torch.Tensor, precision: str, depth: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    # the parts overlap by a little context each side; the seam is cut in the middle of it
    ov = min(16 * STRIDE, max(STRIDE, round_to_stride(min(h, w) / 8)))
    hm, wm = round_to_stride(h / 2), round_to_stride(w / 2)
    out = None
    for (y0, y1, oy0, oy1), (x0, x1, ox0, ox1) in itertools.product(
        [(0, min(hm + ov, h), 0, hm), (max(hm - ov, 0), h, hm, h)],
        [(0, min(wm + ov, w), 0, wm), (max(wm - ov, 0), w, wm, w)],
    ):
        part = forward_with_retry(model, x[..., y0:y1, x0:x1], precision, depth)
        if out is None:
            out = torch.empty(x.shape[0], part.shape[1], h, w, dtype=part.dtype, device=part.device)
        out[..., oy0:oy1, ox0:ox1] = part[..., oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
    return out


def _device_lock(device: torch.device) -> threading.Lock:
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


def run_batch(model, x: torch.Tensor, precision: str, tta: bool = False, dual_pixel: bool = False):
    """Run a (B, C, H, W) batch already on the model's device; returns float32 numpy on the CPU.

    ``tta`` averages over flips/rotations (:func:`~napari_mirnet.model.self_ensemble`).
    """
    with _device_lock(x.device), torch.inference_mode():
        if tta:
            return self_ensemble(lambda v: forward_with_retry(model, v, precision), x, dual_pixel).cpu().numpy()
        return forward_with_retry(model, x, precision).cpu().numpy()
