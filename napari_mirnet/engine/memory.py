"""Memory: bytes per tile pixel of a forward pass, the memory budget, and the default tile and batch."""

from __future__ import annotations

import math
import threading

import torch

from .forward import forward_plain

__all__ = ["bytes_per_pixel", "default_batch", "default_tile", "memory_budget", "MAX_DEFAULT_TILE"]

#: Largest default tile edge; beyond this the gain in consistency is small and latency grows.
MAX_DEFAULT_TILE = 2048
# Peak bytes of live tensors per pixel and per feature channel of a CPU forward pass in fp32, as
# measured with a TorchDispatchMode over every storage (n_feat 16-80, any input channels and tile
# size, torch 2.13): 38.06 with one MRB per group, 42.06 with two or more. bf16 autocast halves it.
_CPU_BYTES_PER_FEATURE = {1: 38.06, 2: 42.06}
# allocator slack and convolution workspaces on top of the live tensors (checked against the RSS)
_CPU_SLACK = 1.25
_cuda_cache: dict[tuple, float] = {}
_cuda_lock = threading.Lock()


def _stream_weight(chan_factor: float) -> float:
    """Relative size of the three streams (full, 1/2, 1/4 resolution) of an MRB."""
    return 1 + chan_factor / 4 + chan_factor**2 / 16


def bytes_per_pixel(model: torch.nn.Module, precision: str = "fp32", size: int = 96) -> float:
    """Peak bytes per tile pixel of one forward pass (one batch item).

    On the CPU (and MPS) this comes from the model's config (a formula fitted to measurements, so
    a new process plans at once, without a probe); on CUDA it is measured once per model, device
    and precision with the allocator's peak.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        cfg = model.config
        per_feature = _CPU_BYTES_PER_FEATURE[min(cfg.n_mrb, 2)] * _stream_weight(cfg.chan_factor) / _stream_weight(1.5)
        return _CPU_SLACK * per_feature * cfg.n_feat * (0.5 if precision == "bf16" else 1.0)
    key = (getattr(model, "weights_sha256", id(model)), str(device), precision)
    with _cuda_lock:
        if key not in _cuda_cache:
            x = torch.rand(1, model.config.in_channels, size, size, device=device)
            with torch.inference_mode():
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                forward_plain(model, x, precision)
                torch.cuda.synchronize(device)
                peak = (torch.cuda.max_memory_allocated(device) - base) * 1.1
            _cuda_cache[key] = float(peak) / (size * size)
        return _cuda_cache[key]


def memory_budget(device: torch.device) -> float:
    """Bytes a run may spend on forward passes: most of the free GPU memory, a share of free RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return 0.6 * free
    import psutil

    # well inside RAM: other processes (and dask's buffers) need the rest
    return min(0.25 * psutil.virtual_memory().available, 8 * 2**30)


def default_tile(model: torch.nn.Module, precision: str = "fp32") -> int:
    """The largest square tile edge (a multiple of 32) whose forward pass fits the memory budget."""
    device = next(model.parameters()).device
    bpp = bytes_per_pixel(model, precision)
    edge = int(math.sqrt(memory_budget(device) / bpp)) // 32 * 32
    return max(64, min(edge, MAX_DEFAULT_TILE))


def default_batch(model: torch.nn.Module, tile_pixels: int, precision: str, items_per_tile: int) -> int:
    """Tiles per forward pass: one on CPU (no gain there), as many as fit on a GPU (up to 16)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 1
    per_tile = bytes_per_pixel(model, precision) * tile_pixels * items_per_tile
    return int(max(1, min(16, memory_budget(device) // max(per_tile, 1))))
