"""Training MIRNet-v2 restoration models: the loop, its data and its checkpoints (the command is in ``cli``).

The recipe follows the paper (L1 loss, Adam 2e-4, cosine decay, gradient-norm clipping, 8-way
flips/rotations, progressive patch sizes) with sizes fit for a CPU or a single GPU.

Reproducibility: the model is initialised from ``seed``, and every iteration draws its crops,
augmentations and synthetic noise from generators seeded with ``(seed, iteration)`` alone, so a run
resumed from a checkpoint follows the same loss curve as an uninterrupted one.

Checkpoints use the official layout ``{'params': state_dict}`` plus ``'meta'`` (task, network config,
normalisation, data, degradation, code version) and, for resuming, ``'optimizer'``, ``'scheduler'``,
``'rng'``, ``'iteration'``, ``'train_config'`` and ``'loss_window'``; with ``ema`` on, the moving
average of the weights is kept under ``'params_ema'`` (BasicSR's name). :func:`export_model` writes
the slim fp16 ``{'params', 'meta'}`` file that is shipped or shared (the average, when there is one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..degradations import degrade
from ..devices import resolve_device
from ..model import MIRNetV2
from ..weights import read_checkpoint
from .config import LOSS_NAMES, TrainConfig

__all__ = [
    "TrainResult",
    "train",
    "export_model",
    "load_images",
    "bundled_images",
    "is_colour",
    "training_images",
    "SKIMAGE_TRAIN_IMAGES",
    "PACKAGE_TRAIN_IMAGES",
    "TRAIN_IMAGES",
    "HELD_OUT_IMAGES",
    "VALIDATION_SOURCES",
    "TEST_IMAGES",
    "split_validation",
    "validation_images",
    "independent_test_images",
    "save_test_images",
    "validation_pairs",
    "best_path",
    "val_log_path",
    "centre_crop",
    "code_version",
]


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Minus the mean per-sample PSNR (data range 1): each patch weighs the same, whatever its noise
    level, where L2 lets the noisiest ones dominate (HINet's PSNR loss). ``eps`` caps a clean patch's
    weight at 50 dB."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10.0 * torch.log10(mse + eps).mean()


LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss, "psnr": psnr_loss}
assert tuple(LOSSES) == LOSS_NAMES

#: Images bundled with scikit-image that shipped models were trained on (those present on disk).
SKIMAGE_TRAIN_IMAGES = (
    "brick",
    "cell",
    "clock_motion",
    "coins",
    "color",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "ihc",
    "logo",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "page",
    "phantom",
    "retina",
    "rocket",
    "text",
)
#: Photographs bundled with other installable packages: name -> (package, path inside it). These add
#: natural colour scenes, which scikit-image's training images are short of.
PACKAGE_TRAIN_IMAGES = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
TRAIN_IMAGES = SKIMAGE_TRAIN_IMAGES + tuple(PACKAGE_TRAIN_IMAGES)
#: Bundled images never trained on; benchmarks and tests evaluate on these only.
HELD_OUT_IMAGES = ("camera", "astronaut", "chelsea", "coffee")

#: Training-source images whose bottom strip (:data:`VALIDATION_STRIP`, at least
#: :data:`VALIDATION_MIN_ROWS` rows) is the validation split: runs train on the rows above it
#: (:func:`split_validation`) and every choice (checkpoint, run, learning rate, what ships) is made on
#: the strips. Models trained before this split existed saw the strips too.
VALIDATION_SOURCES = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "cell",
    "microaneurysms",
    "hubble_deep_field",
    "retina",
    "rocket",
    "motorcycle_left",
    "ihc",
    "grace_hopper",
    "china",
    "flower",
)
VALIDATION_STRIP = 0.25
VALIDATION_MIN_ROWS = 96
#: The test split: images from installed packages that no run has trained on or been selected on.
#: Evaluate them once, at the end, and report; never choose anything by them. name -> (package,
#: path inside it, array key or loader, what it is, licence).
TEST_IMAGES = {
    "ascent": (
        "pywt",
        "data/ascent.npz",
        "data",
        "photograph, 8-bit gray 512x512 (people on a stair; scipy's 'ascent')",
        "public domain (public-domain-image.com, 'accent-to-the-top.jpg'); shipped with PyWavelets (MIT)",
    ),
    "aero": (
        "pywt",
        "data/aero.npz",
        "data",
        "aerial photograph, 8-bit gray 512x512",
        "shipped with PyWavelets (MIT) as demo data",
    ),
    "mri": (
        "matplotlib",
        "mpl-data/sample_data/s1045.ima.gz",
        "mri",
        "MRI slice of a head, 16-bit 256x256 (min-max scaled)",
        "matplotlib sample data (matplotlib licence, PSF-based)",
    ),
    "dem": (
        "matplotlib",
        "mpl-data/sample_data/jacksboro_fault_dem.npz",
        "elevation",
        "digital elevation model (Jacksboro fault), int16 344x403 (min-max scaled)",
        "matplotlib sample data (USGS DEM, public domain)",
    ),
    "minduka": (
        "matplotlib",
        "mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
        "image",
        "colour drawing of a present, RGBA 128x128 (alpha dropped)",
        "matplotlib sample data (Minduka, public domain clip art)",
    ),
}

NORMALISATION = {
    "input_range": [0.0, 1.0],
    "output_range": [0.0, 1.0],
    "integer_inputs": "divided by the dtype's maximum (uint8 / 255, uint16 / 65535)",
    "layout": "B,C,H,W",
}


def code_version() -> str:
    """napari-mirnet's version (installed metadata, else the source tree's pyproject.toml)."""
    from ..version import __version__

    return __version__


# --------------------------------------------------------------------------------------- images
def _to_float(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    if a.dtype == bool:
        return a.astype(np.float32)
    return a.astype(np.float32)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Float (H, W, C) image with ``channels`` channels (alpha dropped, gray<->RGB converted)."""
    a = _to_float(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2D gray or colour image, got shape {a.shape}")
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.shape[-1] == channels:
        return np.ascontiguousarray(a)
    if a.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(a, channels, axis=-1))
    if a.shape[-1] == 3 and channels == 1:
        # ITU-R 601 luma, as skimage.color.rgb2gray
        return np.ascontiguousarray(a @ np.array([0.2125, 0.7154, 0.0721], np.float32))[..., None]
    raise ValueError(f"cannot convert {a.shape[-1]} channels to {channels}")


def load_images(source) -> list[np.ndarray]:
    """Images from a folder, a file, a list of files, or arrays (returned as given)."""
    from skimage import io

    if isinstance(source, np.ndarray):
        return [source] if source.ndim in (2, 3) else list(source)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in exts)
            if not files:
                raise FileNotFoundError(f"no images in {p}")
            return [io.imread(f) for f in files]
        return [io.imread(p)]
    return [x if isinstance(x, np.ndarray) else io.imread(x) for x in source]


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (sklearn and matplotlib are heavy)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_images(names: Sequence[str], data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Images bundled with installed packages, by name, from disk only (nothing is downloaded).

    Names are scikit-image's data files (``camera``, ``astronaut``, ...) or keys of
    :data:`PACKAGE_TRAIN_IMAGES`; with ``data_dir`` every name is looked up there instead.
    Names not found on disk (e.g. the package is not installed) are left out.
    """
    from skimage import io

    out = {}
    for name in names:
        if data_dir is not None:
            folder, stem = Path(data_dir), name
        elif name in PACKAGE_TRAIN_IMAGES:
            package, rel = PACKAGE_TRAIN_IMAGES[name]
            root = _package_dir(package)
            if root is None:
                continue
            folder, stem = (root / rel).parent, Path(rel).stem
        else:
            folder, stem = _package_dir("skimage") / "data", name
        hits = [h for h in sorted(folder.glob(f"{stem}.*")) if h.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif")]
        if hits:
            out[name] = io.imread(hits[0])
    return out


def training_images(
    data_dir: str | os.PathLike | None = None, colour_only: bool = False, exclude_validation: bool = True
) -> dict[str, np.ndarray]:
    """The bundled training images (:data:`TRAIN_IMAGES` found on disk), optionally colour ones only;
    without their validation strips (:func:`split_validation`) unless ``exclude_validation`` is False."""
    imgs = bundled_images(TRAIN_IMAGES, data_dir)
    if exclude_validation:
        imgs = split_validation(imgs)[0]
    return {k: v for k, v in imgs.items() if is_colour(v)} if colour_only else imgs


def split_validation(images: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training part, validation part) of bundled images: the bottom strip of each
    :data:`VALIDATION_SOURCES` image is validation, the rows above it training; other images (and
    those too small to leave :data:`VALIDATION_MIN_ROWS` rows on both sides) train whole.
    """
    train_part, val_part = {}, {}
    for name, img in images.items():
        if name not in VALIDATION_SOURCES:
            train_part[name] = img
            continue
        h = img.shape[0]
        rows = max(VALIDATION_MIN_ROWS, int(round(h * VALIDATION_STRIP)))
        if h - rows < VALIDATION_MIN_ROWS:
            train_part[name] = img
            continue
        train_part[name] = img[: h - rows]
        val_part[name] = img[h - rows :]
    return train_part, val_part


def centre_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """The centre ``crop`` x ``crop`` pixels (or fewer, where the image is smaller)."""
    h, w = img.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])


def validation_images(
    channels: int, crop: int = 128, data_dir=None, colour_only: bool | None = None
) -> dict[str, np.ndarray]:
    """Centre crops (H, W, C) float32 of the validation strips; RGB models get colour sources only
    (``colour_only`` defaults to ``channels == 3``)."""
    colour_only = channels == 3 if colour_only is None else colour_only
    _, val = split_validation(bundled_images(VALIDATION_SOURCES, data_dir))
    return {k: centre_crop(to_channels(v, channels), crop) for k, v in val.items() if not colour_only or is_colour(v)}


def _load_test_image(name: str, test_dir=None) -> np.ndarray | None:
    if test_dir is not None:  # a copy made by save_test_images (machines without the packages)
        f = Path(test_dir) / f"{name}.npy"
        return np.load(f) if f.exists() else None
    package, rel, key, _, _ = TEST_IMAGES[name]
    root = _package_dir(package)
    path = root / rel if root is not None else None
    if path is None or not path.exists():
        return None
    if key == "mri":  # raw big-endian uint16, 256x256 (as matplotlib's own example reads it)
        import gzip

        with gzip.open(path) as f:
            a = np.frombuffer(f.read(), ">u2").reshape(256, 256).astype(np.float32)
    elif key == "image":
        from skimage import io

        return to_channels(io.imread(path), 3)
    else:
        with np.load(path) as z:
            a = z[key].astype(np.float32)
        if key == "data":
            return a / 255.0
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / max(hi - lo, 1e-12)


def independent_test_images(
    channels: int, crop: int = 256, colour_only: bool | None = None, test_dir=None
) -> dict[str, np.ndarray]:
    """Centre crops (H, W, C) float32 of the :data:`TEST_IMAGES` found on disk (in their packages, or
    in ``test_dir`` as written by :func:`save_test_images`). Gray models get every one (colour ones
    as luminance); RGB models the colour ones only (``colour_only``)."""
    colour_only = channels == 3 if colour_only is None else colour_only
    out = {}
    for name in TEST_IMAGES:
        img = _load_test_image(name, test_dir)
        if img is None or (colour_only and not is_colour(img)):
            continue
        out[name] = centre_crop(to_channels(img, channels), crop)
    return out


def save_test_images(folder: str | os.PathLike) -> list[str]:
    """Write the test images found in their packages to ``folder/<name>.npy`` (float32 in [0, 1]),
    for a machine that lacks those packages; returns the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TEST_IMAGES:
        img = _load_test_image(name)
        if img is not None:
            np.save(folder / f"{name}.npy", np.asarray(img, np.float32))
            done.append(name)
    return done


def is_colour(img: np.ndarray) -> bool:
    """True for images with three or more channels that are not all the same."""
    if img.ndim != 3 or img.shape[-1] < 3:
        return False
    rgb = img[..., :3]
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


@dataclass
class TrainResult:
    checkpoint: Path
    iteration: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False
    elapsed: float = 0.0
    #: the weights with the best validation PSNR (when validation pairs were given) and that PSNR
    best_checkpoint: Path | None = None
    best_val_psnr: float | None = None


# --------------------------------------------------------------------------------------- speed
class _BlockDiagonalConv2d(torch.nn.Conv2d):
    """A grouped convolution run as a dense one whose weight is zero outside the group blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        o, i = self.out_channels // g, self.in_channels // g
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, *self.weight.shape[2:])
        for k in range(g):
            dense[k * o : (k + 1) * o, k * i : (k + 1) * i] = self.weight[k * o : (k + 1) * o]
        return F.conv2d(x, dense, self.bias, self.stride, self.padding, self.dilation, 1)


def use_dense_groups(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a model's grouped convolutions to :class:`_BlockDiagonalConv2d`, in place.

    Parameters and state-dict keys stay as they are, so checkpoints are unchanged.
    """
    for m in model.modules():
        if type(m) is torch.nn.Conv2d and m.groups > 1 and m.padding_mode == "zeros":
            m.__class__ = _BlockDiagonalConv2d
    return model


# --------------------------------------------------------------------------------------- data
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
            crops = [_aug(c[:, y0 : y0 + patch, x0 : x0 + patch], k) for c in crops]
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
            out.append(_aug(img[:, y0 : y0 + patch, x0 : x0 + patch], int(rng.integers(0, 8)) if augment else 0))
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


def best_path(checkpoint: str | os.PathLike) -> Path:
    """Where a run keeps the weights with the best validation PSNR so far (next to its checkpoint)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".best.pth")


def val_log_path(checkpoint: str | os.PathLike) -> Path:
    """The JSON-lines validation log next to a checkpoint."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".val.jsonl")


def _aug(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the square."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


# --------------------------------------------------------------------------------------- schedule
def _progress(cfg: TrainConfig, it: int, elapsed: float) -> float:
    p = it / cfg.iters
    if cfg.time_budget:
        p = max(p, elapsed / cfg.time_budget)
    return min(p, 1.0)


def _lr(cfg: TrainConfig, p: float) -> float:
    if cfg.warmup > 0 and p < cfg.warmup:
        return cfg.lr * max(p / cfg.warmup, 1e-3)
    q = (p - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * q))


def _stage(cfg: TrainConfig, p: float) -> tuple[int, int]:
    return cfg.stages[min(int(p * len(cfg.stages)), len(cfg.stages) - 1)]


def _iteration_rngs(seed: int, it: int, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, it])
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rng.integers(0, 2**62)))
    return rng, gen


# --------------------------------------------------------------------------------------- checkpoints
def _meta(cfg: TrainConfig, data_desc: dict, it: int, elapsed: float, paired: bool, amp: bool) -> dict:
    meta = {
        "task": cfg.task,
        "config": cfg.model_config().to_dict(),
        "global_residual": True,
        "normalisation": dict(NORMALISATION),
        "training_data": data_desc,
        "degradation": {"kind": "paired"} if paired else cfg.degradation,
        "code_version": code_version(),
        "training": {
            "iterations": it,
            "elapsed_s": round(elapsed, 1),
            "loss": cfg.loss.upper(),
            "optimizer": f"Adam lr={cfg.lr} betas={list(cfg.betas)}",
            "schedule": f"cosine to {cfg.lr_min}, warm-up {cfg.warmup}",
            "grad_clip": cfg.grad_clip,
            "stages": [list(s) for s in cfg.stages],
            "augment": "8-way flips/rotations" if cfg.augment else None,
            "channel_shuffle": cfg.channel_shuffle,
            "precision": "bf16 autocast" if amp else "fp32",
            "ema": cfg.ema or None,
            "seed": cfg.seed,
        },
    }
    if cfg.task == "super_resolution":
        spec = cfg.degradation or {}
        meta["scale"] = int(spec.get("scale", 2))
    return meta


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, half: bool = True) -> Path:
    """Write the slim ``{'params', 'meta'}`` file (fp16 params by default) from a training checkpoint."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # a run with a moving average of its weights ships the average (what it was trained to give)
    source = ck.get("params_ema") or ck["params"]
    params = {k: (v.half() if half and v.is_floating_point() else v) for k, v in source.items()}
    meta = dict(ck["meta"])
    meta["exported_weights"] = "params_ema" if ck.get("params_ema") else "params"
    meta["params_dtype"] = "float16" if half else "float32"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, {"params": params, "meta": meta})
    return out


def loss_log_path(checkpoint: str | os.PathLike) -> Path:
    """The JSON-lines loss log that lives next to a checkpoint."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".loss.jsonl")


# --------------------------------------------------------------------------------------- training
def train(
    config: TrainConfig | None = None,
    clean=None,
    degraded=None,
    out: str | os.PathLike = "mirnet_train.pth",
    resume: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    data_description: dict | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    progress: bool = True,
    validation: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> TrainResult:
    """Train (or resume training) a MIRNet-v2 model and write checkpoints to ``out``.

    Parameters
    ----------
    config : TrainConfig, optional
        The run's settings; on resume, None takes the checkpoint's (default ``TrainConfig()``).
    clean : folder, file, list of files or arrays
        Clean target images.
    degraded : same as ``clean``, optional
        Matching inputs, or None to synthesise them with ``config.degradation``.
    out : path
        The training checkpoint to write; its loss log goes next to it (:func:`loss_log_path`).
    resume : path, optional
        A checkpoint written by this function, to continue from.
    init : path, optional
        A model file (any ``{'params': ...}`` file, fp16 included) to start a new run from
        (fine-tuning); ignored on resume.
    data_description : dict, optional
        Recorded in the metadata as ``training_data`` (with the image count and a fingerprint).
    callback : callable, optional
        ``callback(iteration, loss)`` after every step; returning False stops the run (a checkpoint
        is saved).
    progress : bool
        Show a progress bar.
    validation : dict, optional
        name -> (degraded, clean) float images (H, W, C), e.g. from :func:`validation_pairs`: measured
        every ``config.val_every`` iterations and at the end; the best weights go to
        :func:`best_path` and their log to :func:`val_log_path`. Select checkpoints by these, never by
        test images.

    Returns
    -------
    TrainResult
        The checkpoint, the iteration reached and the losses.
    """
    cfg, ck = _train_config(config, resume)
    if clean is None:
        raise ValueError("no training images given (clean=...)")
    device = resolve_device(cfg.device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _TrainRun.create(cfg, device, out, clean, degraded, data_description, init if ck is None else None)
    run.validation = validation or None
    if ck is not None:
        run.resume_from(ck, resume)
    else:
        for stale in (run.log_path, val_log_path(out), best_path(out)):
            stale.unlink(missing_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iters, initial=run.it, desc=f"train {cfg.task}", unit="it", dynamic_ncols=True)
    run.t0 = time.perf_counter()
    try:
        stopped = run.loop(callback, bar)
    except KeyboardInterrupt:
        run.checkpoint(run.elapsed())
        raise
    finally:
        if bar is not None:
            bar.close()
    elapsed = run.elapsed()
    if not stopped:
        run.checkpoint(elapsed)
    if run.validation and run.val_at != run.it:
        run.validate()
    return TrainResult(
        checkpoint=out,
        iteration=run.it,
        losses=run.losses,
        stopped_early=stopped,
        elapsed=elapsed,
        best_checkpoint=best_path(out) if run.validation else None,
        best_val_psnr=run.best_psnr if run.validation else None,
    )


def _train_config(config: TrainConfig | None, resume) -> tuple[TrainConfig, dict | None]:
    """The run's settings and, on resume, the checkpoint (whose settings stand in for a missing config)."""
    ck = None
    if resume is not None:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        stored = TrainConfig.from_dict(ck["train_config"])
        if config is None:
            config = stored
        else:
            diff = [
                k
                for k, v in asdict(stored).items()
                if k not in ("device", "save_every", "log_every") and asdict(config)[k] != v
            ]
            if diff:
                print(f"warning: resuming with changed settings: {', '.join(diff)}", file=sys.stderr)
    return (config if config is not None else TrainConfig()), ck


def _init_from(model: MIRNetV2, init, desc: dict) -> None:
    """Load ``init``'s weights into ``model`` and add its lineage to the data description."""
    params, prev = read_checkpoint(init)  # any convention; a moving average first, as for inference
    model.load_state_dict({k: v.float() for k, v in params.items()})
    desc["initialised_from"] = Path(init).name
    if prev:  # keep the lineage: a fine-tuned model says how its start was trained
        prev_data = prev.get("training_data", {})
        desc["earlier_runs"] = list(prev_data.get("earlier_runs", [])) + [
            {
                "file": Path(init).name,
                "training": prev.get("training"),
                "images": prev_data.get("images"),
                "degradation": prev.get("degradation"),
            }
        ]


@dataclass
class _TrainRun:
    """One training run: the model, optimiser and moving average, and what the loop counts and logs."""

    cfg: TrainConfig
    device: torch.device
    out: Path
    data: _Data
    desc: dict
    paired: bool
    model: MIRNetV2
    opt: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    use_amp: bool
    it: int = 0
    elapsed0: float = 0.0  # seconds spent before this session (resumed runs)
    t0: float = 0.0
    window: list[float] = field(default_factory=list)  # losses since the last log line
    losses: list[tuple[int, float]] = field(default_factory=list)
    leaves: _LeafBank | None = None
    validation: dict | None = None
    best_psnr: float = -math.inf
    val_at: int = -1  # the iteration last validated

    @classmethod
    def create(cls, cfg: TrainConfig, device, out: Path, clean, degraded, data_description, init) -> _TrainRun:
        """Load the images and build the seeded model (from ``init`` when given) and its optimiser."""
        clean_list = load_images(clean)
        degraded_list = load_images(degraded) if degraded is not None else None
        data = _Data(clean_list, degraded_list, cfg.channels, device)
        desc = dict(data_description or {"description": "user-supplied images"})
        desc.setdefault("n_images", len(clean_list))
        desc["fingerprint"] = data.fingerprint()

        torch.manual_seed(cfg.seed)
        model = MIRNetV2(cfg.model_config()).to(device)
        if init is not None:
            _init_from(model, init, desc)
        if cfg.dense_groups:
            use_dense_groups(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        ema = None
        if cfg.ema:
            ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        use_amp = (cfg.amp and device.type == "cuda") or (cfg.amp_cpu and device.type == "cpu")
        leaves = None
        if cfg.procedural and degraded_list is None:
            leaves = _LeafBank(cfg, device)
            desc["procedural"] = {
                "kind": "dead leaves (napari_mirnet.synthetic.dead_leaves): flat, gradient and textured "
                "discs, radii ~ r^-3; generated on the fly, no licence",
                "fraction_of_batch": cfg.procedural,
                "bank": cfg.procedural_bank,
                "size": cfg.procedural_size,
                "refresh_every": cfg.procedural_refresh,
            }
        run = cls(cfg, device, out, data, desc, degraded_list is not None, model, opt, ema, use_amp)
        run.leaves = leaves
        return run

    @property
    def log_path(self) -> Path:
        return loss_log_path(self.out)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def resume_from(self, ck: dict, resume) -> None:
        """Take the weights, optimiser, counters and random state from a training checkpoint."""
        if ck["meta"]["training_data"].get("fingerprint") != self.desc["fingerprint"]:
            print("warning: resuming on different training images than the checkpoint's", file=sys.stderr)
        self.model.load_state_dict(ck["params"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.ema is not None:
            if "params_ema" not in ck:
                raise ValueError(f"{resume} was trained without ema: resume it with ema=0")
            for k, v in ck["params_ema"].items():
                self.ema[k].copy_(v)
        self.it, self.elapsed0 = int(ck["iteration"]), float(ck["scheduler"]["elapsed"])
        self.window = [float(v) for v in ck.get("loss_window", [])]
        _set_rng_state(ck["rng"])
        _truncate_log(self.log_path, self.it)
        _truncate_log(val_log_path(self.out), self.it)
        best = best_path(self.out)
        if best.exists():
            sel = torch.load(best, map_location="cpu", weights_only=True)["meta"].get("selection", {})
            if sel.get("iteration", math.inf) <= self.it:
                self.best_psnr = float(sel.get("val_psnr", -math.inf))

    def checkpoint(self, elapsed: float) -> None:
        """Save everything a resume needs to ``out``."""
        cfg = self.cfg
        _save(
            self.out,
            {
                "params": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                **({"params_ema": {k: v.cpu() for k, v in self.ema.items()}} if self.ema is not None else {}),
                "meta": _meta(cfg, self.desc, self.it, elapsed, self.paired, self.use_amp),
                "optimizer": self.opt.state_dict(),
                "scheduler": {
                    "kind": "cosine",
                    "lr": cfg.lr,
                    "lr_min": cfg.lr_min,
                    "warmup": cfg.warmup,
                    "iters": cfg.iters,
                    "time_budget": cfg.time_budget,
                    "elapsed": elapsed,
                    "progress": _progress(cfg, self.it, elapsed),
                },
                "rng": _get_rng_state(),
                "iteration": self.it,
                "train_config": asdict(cfg),
                "loss_window": list(self.window),
            },
        )

    def loop(self, callback, bar) -> bool:
        """Step until the schedule ends (False) or ``callback`` returns False (True)."""
        cfg = self.cfg
        # state_dict() tensors share storage with the parameters, so these pairs follow the training
        ema = self.ema
        ema_pairs = [(ema[k], v) for k, v in self.model.state_dict().items() if k in ema] if ema is not None else []
        self.model.train()
        with self.log_path.open("a") as log:
            while True:
                p = _progress(cfg, self.it, self.elapsed())
                if p >= 1.0:
                    return False
                patch, bs = _stage(cfg, p)
                lr = _lr(cfg, p)
                lv = self.step(patch, bs, lr)
                if ema is not None:
                    _update_ema(ema_pairs, min(cfg.ema, (1 + self.it) / (10 + self.it)))
                self.record(log, lv, lr, patch, bs)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}", patch=patch)
                stop = callback is not None and callback(self.it, lv) is False
                if self.it % cfg.save_every == 0 or stop:
                    self.checkpoint(self.elapsed())
                if self.validation and cfg.val_every and self.it % cfg.val_every == 0:
                    self.validate()
                    self.model.train()
                if stop:
                    return True

    def step(self, patch: int, bs: int, lr: float) -> float:
        """One optimiser step on a batch drawn for this iteration alone; returns its loss."""
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = lr
        rng, gen = _iteration_rngs(cfg.seed, self.it, self.device)
        target, inp = self.data.batch(rng, patch, bs, cfg.augment, cfg.channel_shuffle)
        if self.leaves is not None:
            k = int(rng.binomial(bs, cfg.procedural))
            if k:
                target = torch.cat([self.leaves.crops(self.it, rng, k, patch, cfg.augment), target[k:]])
        if inp is None:
            inp = degrade(target, cfg.degradation, gen)
        if cfg.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            pred = self.model(inp)
        loss = LOSSES[cfg.loss](pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.it += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> float:
        """Mean PSNR on the validation pairs (of the moving average, when kept); keeps the best weights."""
        weights = self.ema if self.ema is not None else self.model.state_dict()
        model = MIRNetV2(self.cfg.model_config()).to(self.device)
        model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=self.ema is None)
        model.eval()
        per = {}
        for name, (inp, clean) in self.validation.items():
            x = torch.from_numpy(np.ascontiguousarray(inp, np.float32)).permute(2, 0, 1)[None].to(self.device)
            y = model(x).clamp(0, 1)[0].permute(1, 2, 0).cpu().double().numpy()
            mse = float(np.mean((y - clean.astype(np.float64)) ** 2))
            per[name] = round(10 * math.log10(1.0 / max(mse, 1e-12)), 3)
        val = float(np.mean(list(per.values())))
        elapsed = self.elapsed()
        rec = {"iter": self.it, "val_psnr": round(val, 4), "elapsed_s": round(elapsed, 3), "per_image": per}
        with val_log_path(self.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.val_at = self.it
        if val > self.best_psnr:
            self.best_psnr = val
            meta = _meta(self.cfg, self.desc, self.it, elapsed, self.paired, self.use_amp)
            meta["selection"] = {
                "split": "validation",
                "iteration": self.it,
                "val_psnr": round(val, 4),
                "images": sorted(self.validation),
                "weights": "params_ema" if self.ema is not None else "params",
            }
            params = {k: v.detach().float().cpu().clone() for k, v in weights.items()}
            _save(best_path(self.out), {"params": params, "meta": meta})
        return val

    def record(self, log, lv: float, lr: float, patch: int, bs: int) -> None:
        """Keep the step's loss and write a log line (the mean since the last one) every ``log_every``."""
        self.losses.append((self.it, lv))
        self.window.append(lv)
        if self.it % self.cfg.log_every == 0:
            rec = {
                "iter": self.it,
                "loss": sum(self.window) / len(self.window),
                "lr": lr,
                "patch": patch,
                "batch": bs,
                "elapsed_s": round(self.elapsed(), 3),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            self.window = []


@torch.no_grad()
def _update_ema(pairs, decay: float) -> None:
    # the decay ramps up over the first steps (1+t)/(10+t), so that the start weights fade quickly
    for avg, cur in pairs:
        avg.lerp_(cur, 1.0 - decay)


def _get_rng_state() -> dict:
    # plain types and tensors only, so that torch.load(weights_only=True) can read it back
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        # a different number of GPUs fails: the per-iteration generators do not need this state
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, upto: int) -> None:
    # entries after the checkpoint's iteration are re-run after a resume; drop them to avoid duplicates
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["iter"] <= upto]
    path.write_text("".join(ln + "\n" for ln in keep))
