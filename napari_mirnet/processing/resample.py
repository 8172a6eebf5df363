"""Resampling for the super-resolution models: the bicubic upscale of their input (torch, imported when used)."""

from __future__ import annotations

import numpy as np

__all__ = ["upscale"]


def upscale(chw: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic resize of a (C, H, W) float image by an integer factor (the SR models' input)."""
    if factor == 1:
        return chw
    import torch  # here, not at the top: reading and writing images never needs torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
    up = F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[0].numpy()
