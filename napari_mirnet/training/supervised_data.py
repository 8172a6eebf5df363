"""The data of supervised training: clean targets with paired or synthesised inputs, procedural
dead-leaves images, and the fixed validation pairs that select checkpoints."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .images import to_channels
from .loop import augment as symmetry

__all__ = ["procedural_record", "validation_pairs"]


class _Data:
    """Clean targets and optional paired inputs, as float tensors (C, H, W) on the device."""

    def __init__(self, clean: list[np.ndarray], degraded: list[np.ndarray] | None, channels: int, device):
        self.targets = [torch.from_numpy(to_channels(c, channels)).permute(2, 0, 1).contiguous() for c in clean]
        self.inputs = None
        if degraded is not None:
            if len(degraded) != len(clean):
                raise ValueError(f"{len(degraded)} degraded images for {len(clean)} clean ones")
            self.inputs = []
            for d, t in zip(degraded, self.targets):
                x = torch.from_numpy(to_channels(d, channels)).permute(2, 0, 1).contiguous()
                if x.shape[-2:] != t.shape[-2:]:
                    # low-res super-resolution inputs: the network restores them at the target size
                    x = F.interpolate(x[None], size=t.shape[-2:], mode="bicubic", align_corners=False)[0]
                    x = x.clamp(0, 1)
                self.inputs.append(x.to(device))
        self.targets = [t.to(device) for t in self.targets]
        areas = np.array([t.shape[-1] * t.shape[-2] for t in self.targets], np.float64)
        # cap the weight of huge images so that one does not dominate the sampling
        self.weights = np.minimum(areas, 512.0 * 512.0)
        self.sizes = [tuple(t.shape[-2:]) for t in self.targets]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in self.targets + (self.inputs or []):
            h.update(str(tuple(t.shape)).encode())
            h.update(np.float64(t.double().sum().item()).tobytes())
        return h.hexdigest()[:16]

    def batch(self, rng: np.random.Generator, patch: int, bs: int, augment: bool, shuffle: bool = False):
        ok = np.array([min(s) >= patch for s in self.sizes])
        if not ok.any():
            raise ValueError(f"no training image is at least {patch}x{patch} pixels")
        w = self.weights * ok
        idx = rng.choice(len(self.targets), size=bs, p=w / w.sum())
        tgt, inp = [], []
        for i in idx:
            h, wd = self.sizes[i]
            y0, x0 = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, wd - patch + 1))
            k = int(rng.integers(0, 8)) if augment else 0
            crops = [self.targets[i]] + ([self.inputs[i]] if self.inputs is not None else [])
            crops = [symmetry(c[:, y0 : y0 + patch, x0 : x0 + patch], k) for c in crops]
            if shuffle and crops[0].shape[0] == 3:
                perm = torch.from_numpy(rng.permutation(3)).to(crops[0].device)
                crops = [c[perm] for c in crops]
            tgt.append(crops[0])
            if self.inputs is not None:
                inp.append(crops[1])
        return torch.stack(tgt), (torch.stack(inp) if inp else None)


class _LeafBank:
    """Dead-leaves images for training, a bank of ``n`` of which one is replaced every ``refresh``
    iterations. What the bank holds at an iteration depends on (seed, iteration) alone, so a resumed
    run sees the same images as an uninterrupted one."""

    def __init__(self, cfg: TrainConfig, device):
        self.cfg, self.device = cfg, device
        self.n, self.refresh = cfg.procedural_bank, cfg.procedural_refresh
        self.images: list[torch.Tensor | None] = [None] * self.n
        self.keys: list[tuple | None] = [None] * self.n

    def _key(self, slot: int, it: int) -> tuple:
        q = it // self.refresh  # refreshes so far; refresh q' rewrote slot q' % n
        last = q - ((q - slot) % self.n)
        return (self.cfg.seed, 7919, 1, last) if last >= 1 else (self.cfg.seed, 7919, 0, slot)

    def at(self, it: int) -> list[torch.Tensor]:
        from ..synthetic import dead_leaves

        for j in range(self.n):
            key = self._key(j, it)
            if key != self.keys[j]:
                img = dead_leaves(self.cfg.procedural_size, self.cfg.channels, np.random.default_rng(key))
                self.images[j] = torch.from_numpy(img).permute(2, 0, 1).contiguous().to(self.device)
                self.keys[j] = key
        return self.images  # type: ignore[return-value]

    def crops(self, it: int, rng: np.random.Generator, k: int, patch: int, augment: bool) -> torch.Tensor:
        bank = self.at(it)
        out = []
        for _ in range(k):
            img = bank[int(rng.integers(0, self.n))]
            h, w = img.shape[-2:]
            y0, x0 = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            out.append(symmetry(img[:, y0 : y0 + patch, x0 : x0 + patch], int(rng.integers(0, 8)) if augment else 0))
        return torch.stack(out)


def validation_pairs(
    images: dict[str, np.ndarray], spec: dict | list[dict], seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed (degraded, clean) pairs for checkpoint selection: each image degraded by each spec
    (e.g. Gaussian at sigma 15, 25 and 50) with a fixed seed. Keys are ``name`` or ``name@i``."""
    from ..degradations import degrade_numpy

    specs = [spec] if isinstance(spec, dict) else list(spec)
    out = {}
    for i, (name, clean) in enumerate(images.items()):
        for j, sp in enumerate(specs):
            key = name if len(specs) == 1 else f"{name}@{j}"
            out[key] = (degrade_numpy(clean, sp, seed=seed + 1000 * j + i), clean)
    return out


def procedural_record(cfg: TrainConfig) -> dict:
    """What a run's metadata says of its dead-leaves images."""
    return {
        "kind": "dead leaves (napari_mirnet.synthetic.dead_leaves): flat, gradient and textured "
        "discs, radii ~ r^-3; generated on the fly, no licence",
        "fraction_of_batch": cfg.procedural,
        "bank": cfg.procedural_bank,
        "size": cfg.procedural_size,
        "refresh_every": cfg.procedural_refresh,
    }
