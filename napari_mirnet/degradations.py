"""Synthetic degradations used to make training pairs (and benchmark inputs) from clean images.

Every degradation is described by a small JSON-serialisable dict (a *spec*), so that it can be stored
in a checkpoint's metadata and re-applied exactly. Images are float tensors in [0, 1] of shape
(B, C, H, W); randomness comes only from the ``torch.Generator`` passed in, which keeps training
reproducible and resumable.

Specs (noise levels ``sigma`` are on the 0-255 scale, as in the denoising literature):

- ``{"kind": "gaussian", "sigma": 25}`` or ``{"kind": "gaussian", "sigma_range": [0, 50]}``
- ``{"kind": "poisson_gaussian", "peak_range": [5, 200], "sigma_range": [0, 10]}``: shot noise with
  ``peak`` photons at intensity 1, plus Gaussian read noise (microscopy).
- ``{"kind": "bicubic", "scale": 2}``: bicubic down-sampling, then bicubic up-sampling back to the
  original size (the network has no upsampler; it restores the re-enlarged image).
- ``{"kind": "lowlight", "factor_range": [.08, .2], "gamma_range": [1.2, 1.8], "peak_range": [...],
  "sigma_range": [...]}``: ``factor * x**gamma`` then shot and read noise, clipped and 8-bit quantised.
- ``{"kind": "camera", "peak_range": [20, 1000], "sigma_range": [1, 20]}``: shot and read noise on a
  Bayer mosaic, then a bilinear demosaic: spatially correlated noise as in camera photographs
  (:func:`napari_mirnet.synthetic.camera_noise`; no ``peak``: read noise only).
- ``{"kind": "mixture", "choices": [spec, ...], "weights": [w, ...]}``: one choice per sample.

A fixed value can be given instead of any range (``"sigma": 25``, ``"peak": 50``, ``"factor": .1``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .degradation_specs import DEGRADATION_KINDS, TASK_DEFAULTS

__all__ = ["degrade", "degrade_numpy", "bicubic_down_up", "DEGRADATION_KINDS", "TASK_DEFAULTS"]


def _draw(spec: dict, name: str, n: int, gen: torch.Generator, device, log: bool = False) -> torch.Tensor:
    """Per-sample values of parameter ``name``: fixed (``name``) or uniform in ``name_range``."""
    if name in spec:
        return torch.full((n,), float(spec[name]), device=device)
    lo, hi = (float(v) for v in spec[f"{name}_range"])
    u = torch.rand(n, generator=gen, device=device)
    if log:  # photon counts span decades; sample them evenly in log space
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def _gaussian(x: torch.Tensor, sigma255: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x + noise * (sigma255 / 255.0).view(-1, 1, 1, 1).to(x.dtype)


def _shot(x: torch.Tensor, peak: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    p = peak.view(-1, 1, 1, 1).to(x.dtype)
    return torch.poisson(x.clamp(min=0) * p, generator=gen) / p


def bicubic_down_up(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (anti-aliased) down-sampling by ``scale``, then bicubic up-sampling to the input size."""
    h, w = x.shape[-2:]
    small = F.interpolate(
        x,
        size=(max(1, round(h / scale)), max(1, round(w / scale))),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def degrade(x: torch.Tensor, spec: dict, gen: torch.Generator) -> torch.Tensor:
    """Apply the degradation ``spec`` to a clean batch ``x`` (B, C, H, W) in [0, 1]."""
    kind = spec["kind"]
    n, dev = x.shape[0], x.device
    if kind == "gaussian":
        return _gaussian(x, _draw(spec, "sigma", n, gen, dev), gen)
    if kind == "poisson_gaussian":
        y = _shot(x, _draw(spec, "peak", n, gen, dev, log=True), gen)
        return _gaussian(y, _draw(spec, "sigma", n, gen, dev), gen)
    if kind == "camera":
        from .synthetic import camera_noise

        has_peak = "peak" in spec or "peak_range" in spec
        peak = _draw(spec, "peak", n, gen, dev, log=True) if has_peak else torch.zeros(n, device=dev)
        return camera_noise(x, peak, _draw(spec, "sigma", n, gen, dev), gen)
    if kind == "bicubic":
        return bicubic_down_up(x, int(spec["scale"]))
    if kind == "lowlight":
        factor = _draw(spec, "factor", n, gen, dev).view(-1, 1, 1, 1)
        gamma = _draw(spec, "gamma", n, gen, dev).view(-1, 1, 1, 1)
        dark = factor * x.clamp(min=0) ** gamma
        if "peak" in spec or "peak_range" in spec:
            dark = _shot(dark, _draw(spec, "peak", n, gen, dev, log=True), gen)
        if "sigma" in spec or "sigma_range" in spec:
            dark = _gaussian(dark, _draw(spec, "sigma", n, gen, dev), gen)
        # a dark 8-bit photograph: clipping and quantisation lose information the network must guess
        return torch.round(dark.clamp(0, 1) * 255.0) / 255.0
    if kind == "mixture":
        choices, weights = spec["choices"], spec.get("weights") or [1.0] * len(spec["choices"])
        probs = torch.tensor(weights, dtype=torch.float64, device=dev)
        pick = torch.multinomial(probs, n, replacement=True, generator=gen)
        # every branch draws its random numbers for the whole batch, so the stream does not depend on
        # which samples picked which branch
        outs = [degrade(x, c, gen) for c in choices]
        out = outs[0].clone()
        for i in range(1, len(choices)):
            sel = pick == i
            out[sel] = outs[i][sel]
        return out
    raise ValueError(f"unknown degradation kind {kind!r}; expected one of {DEGRADATION_KINDS}")


def degrade_numpy(img: np.ndarray, spec: dict, seed: int = 0) -> np.ndarray:
    """Degrade one float image (H, W) or (H, W, C) in [0, 1]; returns float32 of the same shape."""
    a = np.asarray(img, dtype=np.float32)
    t = torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)[None].contiguous()
    gen = torch.Generator().manual_seed(int(seed))
    out = degrade(t, spec, gen)[0].permute(1, 2, 0).numpy()
    return out[..., 0] if a.ndim == 2 else out
