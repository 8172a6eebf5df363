"""Task presets (as data) and the shared pre/post-processing: intensity mapping and channel handling.

Everything here is numpy in, numpy out, except :func:`run_model`, which feeds prepared tiles to a
torch model. The engine, the CLI and the napari widgets all go through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .model import self_ensemble

__all__ = [
    "TASKS",
    "TaskPreset",
    "IntensityMap",
    "get_preset",
    "prepare_channels",
    "run_model",
    "upscale",
]


@dataclass(frozen=True)
class TaskPreset:
    """What one restoration task needs: its checkpoints, its input convention and its geometry."""

    name: str
    title: str
    official: dict[int, str]  # scale (1 for non-SR tasks) -> official asset
    shipped: dict[int, str]  # scale -> our default model, where we ship one
    scales: tuple[int, ...] = (1,)
    dual_pixel: bool = False
    # how the official model was trained to see its input; also what the output range means
    input_note: str = "8-bit sRGB / 255"
    extra: dict = field(default_factory=dict)

    def default_weights(self, scale: int = 1, shipped_available: set[str] | None = None) -> str:
        """Our shipped model for this scale when there is one, otherwise the official checkpoint."""
        ours = self.shipped.get(scale)
        if ours and (shipped_available is None or ours in shipped_available):
            return ours
        return self.official[scale if scale in self.official else 1]

    def check_scale(self, scale: int | None) -> int:
        scale = 1 if scale is None else int(scale)
        if scale not in self.scales:
            allowed = ", ".join(map(str, self.scales))
            raise ValueError(f"task {self.name!r} supports scale {allowed}, not {scale}")
        return scale


TASKS: dict[str, TaskPreset] = {
    p.name: p
    for p in (
        TaskPreset("denoise", "Denoise", {1: "real_denoising"}, {1: "small-denoise-rgb"}),
        TaskPreset(
            "super_resolution",
            "Super-resolution",
            {2: "sr_x2", 3: "sr_x3", 4: "sr_x4"},
            {2: "small-sr-x2"},
            scales=(2, 3, 4),
            input_note="low-res 8-bit / 255, bicubic-resized to the target size first",
        ),
        TaskPreset("lowlight", "Low-light enhancement", {1: "enhancement_lol"}, {1: "small-lowlight"}),
        TaskPreset("enhance", "Contrast enhancement", {1: "enhancement_fivek"}, {}),
        TaskPreset(
            "defocus",
            "Dual-pixel defocus deblur",
            {1: "dual_pixel_defocus_deblurring"},
            {},
            dual_pixel=True,
            input_note="16-bit left and right views / 65535, left first",
        ),
    )
}
#: Shipped gray denoiser, chosen over the RGB one for single-channel data.
SHIPPED_GRAY_DENOISER = "small-denoise-gray"


def get_preset(task: str) -> TaskPreset:
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class IntensityMap:
    """A linear map from the input's values to the model's [0, 1], and back to the input's dtype."""

    low: float
    high: float
    dtype: np.dtype
    mode: str  # "fixed" or "percentile"

    @classmethod
    def for_image(cls, image, mode: str = "auto", percentiles=(0.1, 99.9)) -> "IntensityMap":
        """Fixed range for 8/16-bit integers; percentiles of the data (sampled) for floats.

        ``image`` may be a numpy or dask array; percentiles come from a bounded sample so that huge
        inputs are never loaded whole.
        """
        dtype = np.dtype(image.dtype)
        check_dtype(dtype)
        if mode == "auto":
            mode = "fixed" if dtype.kind in "ui" else "percentile"
        if mode == "fixed":
            if dtype.kind in "ui":
                info = np.iinfo(dtype)
                return cls(float(max(info.min, 0)), float(info.max), dtype, "fixed")
            return cls(0.0, 1.0, dtype, "fixed")
        if mode != "percentile":
            raise ValueError(f"normalisation must be 'auto', 'fixed' or 'percentile', not {mode!r}")
        sample = np.asarray(_sample(image), dtype=np.float64)
        if not np.all(np.isfinite(sample)):
            raise ValueError("the image contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")
        low, high = np.percentile(sample, percentiles) if sample.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        return cls(float(low), float(high), dtype, "percentile")

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low)).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        out = np.asarray(y, dtype=np.float32) * (self.high - self.low) + self.low
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(self.dtype)
        if self.mode == "fixed":
            out = np.clip(out, self.low, self.high)
        return out.astype(self.dtype)

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "dtype": self.dtype.str, "mode": self.mode}


def check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise TypeError(
            f"images of dtype {dtype} cannot be restored; convert to uint8, uint16 or float32 first"
        )


def _sample(image, max_elements: int = 2_000_000):
    """A strided subsample of at most ~max_elements values (computed if the array is lazy)."""
    size = int(np.prod(image.shape))
    if size <= max_elements:
        sample = image
    else:
        step = int(np.ceil((size / max_elements) ** (1 / image.ndim)))
        sample = image[tuple(slice(None, None, step) for _ in image.shape)]
    return sample.compute() if hasattr(sample, "compute") else np.asarray(sample)


def prepare_channels(chw: np.ndarray, model_in: int, dual_pixel: bool = False) -> tuple[np.ndarray, str]:
    """Turn a (C, H, W) float image into a (B, model_in, H, W) batch, and say how to undo it.

    - 3-channel model: RGB passes as is; RGBA passes RGB and keeps alpha aside; any other channel
      count runs each channel as replicated gray.
    - 1-channel model: every channel is its own batch item.
    - dual-pixel model: ``chw`` holds left then right views (2 or 6 channels).
    """
    c = chw.shape[0]
    if dual_pixel:
        if c == 2:  # gray left/right
            return np.repeat(chw, 3, axis=0)[None], "dual_gray"
        if c == 6:
            return chw[None], "dual_rgb"
        raise ValueError(f"a dual-pixel pair needs 1 or 3 channels per view, got {c // 2 if c % 2 == 0 else c}")
    if model_in == 1:
        return chw[:, None], "per_channel"
    if model_in != 3:
        if c == model_in:
            return chw[None], "as_is"
        raise ValueError(f"the model takes {model_in} channels; the image has {c}")
    if c == 3:
        return chw[None], "rgb"
    if c == 4:
        return chw[None, :3], "rgba"
    return np.repeat(chw[:, None], 3, axis=1), "replicated_gray"


def finish_channels(out: np.ndarray, how: str, source: np.ndarray | None = None) -> np.ndarray:
    """Undo :func:`prepare_channels`: (B, C_out, H, W) model output back to (C, H, W)."""
    if how in ("rgb", "as_is", "dual_rgb"):
        return out[0]
    if how == "dual_gray":
        return out[0].mean(axis=0, keepdims=True)
    if how == "per_channel":
        return out[:, 0]
    if how == "replicated_gray":
        return out.mean(axis=1)
    if how == "rgba":
        # alpha is carried, not restored (``source`` is already at the output size)
        return np.concatenate([out[0], source[3:4]], axis=0)
    raise ValueError(how)


def upscale(chw: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic resize of a (C, H, W) float image by an integer factor (the SR models' input)."""
    if factor == 1:
        return chw
    t = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
    up = F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[0].numpy()


@torch.inference_mode()
def run_model(
    model: torch.nn.Module,
    batch: np.ndarray,
    *,
    precision: str = "fp32",
    max_batch: int = 8,
    tta: bool = False,
    dual_pixel: bool = False,
) -> np.ndarray:
    """Run a (B, C, H, W) float32 batch in [0, 1] through the model; returns float32 numpy on the CPU.

    ``tta``: average over flips/rotations (:func:`~napari_mirnet.model.self_ensemble`).
    """
    device = next(model.parameters()).device

    def forward(x):
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x)
        return model(x)

    outs = []
    for start in range(0, batch.shape[0], max_batch):
        x = torch.from_numpy(np.ascontiguousarray(batch[start : start + max_batch])).to(device)
        y = self_ensemble(forward, x, dual_pixel) if tta else forward(x)
        outs.append(y.float().cpu().numpy())
    return np.concatenate(outs, axis=0)


def restore_chw(
    model: torch.nn.Module,
    chw: np.ndarray,
    *,
    scale: int = 1,
    dual_pixel: bool = False,
    precision: str = "fp32",
    max_batch: int = 8,
    tta: bool = False,
) -> np.ndarray:
    """Restore one normalised (C, H, W) float image: upscale for SR, channel handling, the model."""
    up = upscale(chw, scale) if scale > 1 else chw
    batch, how = prepare_channels(up, model.config.in_channels, dual_pixel)
    out = run_model(model, batch, precision=precision, max_batch=max_batch, tta=tta, dual_pixel=dual_pixel)
    return finish_channels(out, how, up)
