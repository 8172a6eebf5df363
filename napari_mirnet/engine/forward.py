"""The model call: host-device copies, precision, test-time augmentation and the out-of-memory split."""

from __future__ import annotations

import itertools
import threading
import warnings

import torch

from ..model import STRIDE, at_stride, self_ensemble
from .plan import round_to_stride

__all__ = ["copies_overlap", "forward_plain", "forward_with_retry", "run_batch"]

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


def copies_overlap(model) -> bool:
    """Whether :func:`run_batch` overlaps host copies with the device's work (the ``overlap`` switch)."""
    switches = getattr(model, "switches", None)
    return bool(getattr(switches, "overlap", False)) and next(model.parameters()).is_cuda


def run_batch(model, x: torch.Tensor, precision: str, tta: bool = False, dual_pixel: bool = False, stride: int = 1):
    """Run a (B, C, H, W) batch on the model's device; returns float32 numpy on the CPU.

    ``x`` may be on the CPU: it is copied to the model's device here. ``tta`` averages over
    flips/rotations (:func:`~napari_mirnet.model.self_ensemble`); ``stride`` > 1 restores the
    pixel-shuffle sub-images of that stride (:func:`~napari_mirnet.model.at_stride`). With the ``overlap`` switch
    (CUDA, :mod:`.accelerate`) host work overlaps the device's: the upload from pinned memory and
    the copy of the result back into pinned memory are queued on the compute stream without
    blocking, and only the wait for that copy happens after the device lock is released, so
    another engine thread queues its batch meanwhile and the GPU does not wait for Python
    between batches. At most one batch per engine thread is in flight.
    """
    device = next(model.parameters()).device
    overlap = copies_overlap(model)
    if overlap and x.device.type == "cpu":
        # queued on the device's stream behind the batch now computing; the caching host
        # allocator keeps the pinned block until the copy has finished
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    with _device_lock(device), torch.inference_mode():
        if tta:
            y = self_ensemble(lambda v: forward_with_retry(model, v, precision), x, dual_pixel)
        else:
            y = at_stride(lambda v: forward_with_retry(model, v, precision), x, stride)
        if not overlap:
            return y.cpu().numpy()
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
        # on the stream of the model's device, not the thread's current one (cuda:1 in a worker
        # thread whose current device is cuda:0); blocking: the wait sleeps instead of spinning
        done = torch.cuda.Event(blocking=True)
        done.record(torch.cuda.current_stream(device))
    # waited for outside the lock: another thread launches its batch meanwhile
    done.synchronize()
    # a pageable copy, so that the pinned block goes back to torch's host cache for the next batch
    # instead of living on with the prediction in the graph
    return host.numpy().copy()
