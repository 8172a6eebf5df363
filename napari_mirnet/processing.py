"""Pre- and post-processing around the model: the intensity mapping and the channel adapter (numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ChannelAdapter",
    "IntensityMap",
    "check_dtype",
    "finish_channels",
    "prepare_channels",
    "upscale",
]


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
    """Raise a TypeError for dtypes the intensity mapping cannot handle (bool, complex, objects...)."""
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


@dataclass(frozen=True)
class ChannelAdapter:
    """How an image's channels meet the model's: the batch items per tile and the output channels."""

    channels_in: int  # image channels (both views together for dual-pixel)
    model_in: int
    model_out: int
    dual_pixel: bool
    how: str  # the rule of prepare_channels
    items: int  # batch items per tile
    channels_out: int

    @classmethod
    def for_model(cls, channels_in: int, model_in: int, model_out: int, dual_pixel: bool) -> "ChannelAdapter":
        """Apply the rules of :func:`prepare_channels` / :func:`finish_channels` to a 4x4 probe."""
        probe = np.zeros((channels_in, 4, 4), np.float32)
        batch, how = prepare_channels(probe, model_in, dual_pixel)
        out = finish_channels(np.zeros((batch.shape[0], model_out, 4, 4), np.float32), how, probe)
        return cls(channels_in, model_in, model_out, dual_pixel, how, batch.shape[0], out.shape[0])

    def prepare(self, chw: np.ndarray) -> np.ndarray:
        return prepare_channels(chw, self.model_in, self.dual_pixel)[0]

    def finish(self, out: np.ndarray, source: np.ndarray) -> np.ndarray:
        return finish_channels(out, self.how, source)


def upscale(chw: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic resize of a (C, H, W) float image by an integer factor (the SR models' input)."""
    if factor == 1:
        return chw
    t = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
    up = F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[0].numpy()
