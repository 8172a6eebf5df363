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


#: Percentile-mapped model inputs are clipped to [-CLIP_MARGIN, 1 + CLIP_MARGIN]; see IntensityMap.
CLIP_MARGIN = 0.5


@dataclass(frozen=True)
class IntensityMap:
    """A linear map from the input's values to the model's [0, 1], and back to the input's dtype.

    The rule (``mode="auto"``):

    - 8- and 16-bit integers: the dtype's whole range (``fixed``), so every image of a series maps
      alike. Signed types map their whole range too (int16 -32768..32767), which is exactly the
      mapping of the same data shifted into the unsigned type.
    - floats and 32/64-bit integers: the 0.1 and 99.9 percentiles of a sample (``percentile``); a
      32-bit range would squeeze camera data into a millionth of the model's range. When the
      percentiles coincide (sparse images: mostly background) the sample's min and max are used.
    - ``fixed`` on floats means data in [0, 1]; data outside is refused (see :meth:`check_range`),
      since the result is clipped to [0, 1].

    Channels: ``channel_axis`` gives each channel its own percentiles (``low``/``high`` are then
    tuples, applied along axis 0 of a (C, Y, X) block). The engine does this when the model
    restores the channels one by one (fluorescence channels can differ by orders of magnitude)
    and maps jointly when it sees them together as one colour image (RGB, RGBA, dual-pixel views),
    so that colours keep their balance. Every channel is sampled either way.

    Percentile-mapped model inputs are clipped to [-CLIP_MARGIN, 1 + CLIP_MARGIN] (:meth:`clip_range`)
    so that a hot pixel cannot swamp the network (its global pooling spreads one huge value over
    the whole tile); the engine passes the clipped-away values through unrestored.
    """

    low: float | tuple
    high: float | tuple
    dtype: np.dtype
    mode: str  # "fixed" or "percentile"

    @classmethod
    def for_image(
        cls, image, mode: str = "auto", percentiles=(0.1, 99.9), channel_axis: int | None = None
    ) -> IntensityMap:
        """The map of ``image`` (numpy or dask; percentiles come from a bounded sample, never the whole)."""
        dtype = np.dtype(image.dtype)
        check_dtype(dtype)
        if mode == "auto":
            mode = "fixed" if dtype.kind in "ui" and dtype.itemsize <= 2 else "percentile"
        if mode == "fixed":
            if dtype.kind in "ui":
                info = np.iinfo(dtype)
                return cls(float(info.min), float(info.max), dtype, "fixed")
            imap = cls(0.0, 1.0, dtype, "fixed")
            imap.check_range(_sample(image, channel_axis=channel_axis))
            return imap
        if mode != "percentile":
            raise ValueError(f"normalisation must be 'auto', 'fixed' or 'percentile', not {mode!r}")
        if channel_axis is None:
            low, high = _percentiles(_sample(image), percentiles)
            return cls(low, high, dtype, "percentile")
        lows, highs = [], []
        for c in range(image.shape[channel_axis]):
            plane = image[(slice(None),) * (channel_axis % image.ndim) + (c,)]
            low, high = _percentiles(_sample(plane), percentiles)
            lows.append(low)
            highs.append(high)
        return cls(tuple(lows), tuple(highs), dtype, "percentile")

    def _lh(self, ndim: int, dtype=np.float32):
        if isinstance(self.low, tuple):  # per channel, along axis 0 of (C, Y, X)
            # in the computation's dtype, as a Python float scalar would be: same bits as one channel alone
            shape = (-1,) + (1,) * (ndim - 1)
            return np.reshape(np.asarray(self.low, dtype), shape), np.reshape(np.asarray(self.high, dtype), shape)
        return self.low, self.high

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        wide = x.dtype.itemsize > 2 and x.dtype.kind in "ui"
        low, high = self._lh(x.ndim, np.float64 if wide else np.float32)
        if wide:
            x = x.astype(np.float64)  # 32/64-bit integers lose digits in float32 before the shift
        return ((np.asarray(x, dtype=np.float32) - low) / (high - low)).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        wide = self.dtype.kind in "ui" and self.dtype.itemsize > 2
        low, high = self._lh(y.ndim, np.float64 if wide else np.float32)
        out = y.astype(np.float64) * (high - low) + low if wide else y * (high - low) + low
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(self.dtype)
        if self.mode == "fixed":
            out = np.clip(out, self.low, self.high)
        return out.astype(self.dtype)

    def clip_range(self) -> tuple[float, float] | None:
        """Bounds for the model input, or None where the map keeps it in [0, 1] anyway."""
        return (-CLIP_MARGIN, 1.0 + CLIP_MARGIN) if self.mode == "percentile" else None

    def check_range(self, values, where: str = "") -> None:
        """``fixed`` on floats means [0, 1]: refuse data outside (its result would be clipped)."""
        if self.mode != "fixed" or self.dtype.kind != "f":
            return
        v = np.asarray(values)
        v = v[np.isfinite(v)]  # NaN and Inf get their own error where the tile is read
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"normalisation='fixed' maps floats from [0, 1], but the image{where} holds values in "
                f"[{lo:g}, {hi:g}] (they would be clipped); use normalisation='percentile' or 'auto' "
                "(--normalisation percentile), or scale the image to [0, 1] first"
            )

    def to_dict(self) -> dict:
        low, high = (list(v) if isinstance(v, tuple) else v for v in (self.low, self.high))
        return {"low": low, "high": high, "dtype": self.dtype.str, "mode": self.mode}


def _percentiles(sample: np.ndarray, percentiles) -> tuple[float, float]:
    sample = np.asarray(sample, dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise ValueError("the image contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")
    if not sample.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        # sparse images (a few bright spots on a flat background): map the sample's whole range
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        high = low + 1.0
    return low, high


def check_dtype(dtype: np.dtype) -> None:
    """Raise a TypeError for dtypes the intensity mapping cannot handle (bool, complex, objects...)."""
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        what = {
            "b": "a mask (bool)",
            "c": "complex",
            "O": "Python objects",
            "U": "text",
            "S": "bytes",
            "M": "dates",
            "m": "time spans",
            "V": "records",
        }.get(dtype.kind, "not numbers")
        raise TypeError(
            f"images of dtype {dtype} ({what}) cannot be restored; convert to uint8, uint16 or float32 "
            "first (e.g. image.astype(np.float32))"
        )


def _sample(image, max_elements: int = 2_000_000, channel_axis: int | None = None):
    """A strided subsample of at most ~max_elements values (computed if the array is lazy).

    The stride never skips along ``channel_axis`` (nor along axes shorter than 8, such as a
    channel axis the caller did not name), so every channel is in the sample.
    """
    size = int(np.prod(image.shape))
    if size <= max_elements:
        sample = image
    else:
        keep = {i for i, n in enumerate(image.shape) if n < 8}
        if channel_axis is not None:
            keep.add(channel_axis % image.ndim)
        kept = int(np.prod([image.shape[i] for i in keep]))
        strided = image.ndim - len(keep)
        step = int(np.ceil((size / kept / max(1, max_elements // kept)) ** (1 / max(strided, 1))))
        sample = image[tuple(slice(None) if i in keep else slice(None, None, step) for i in range(image.ndim))]
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
    def for_model(cls, channels_in: int, model_in: int, model_out: int, dual_pixel: bool) -> ChannelAdapter:
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
