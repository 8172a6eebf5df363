"""Pre- and post-processing around the model: the intensity mapping and the channel adapter (numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclass_replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ChannelAdapter",
    "IntensityMap",
    "channel_layout",
    "channel_order",
    "check_dtype",
    "fill_nodata",
    "finish_channels",
    "mark_nodata",
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

    Nodata: pixels equal to ``nodata`` and, in float images, NaN pixels are no data. They are left
    out of the percentile sample, :meth:`forward` maps them to NaN (:func:`fill_nodata` fills them
    before the model sees a tile, :func:`mark_nodata` puts NaN back into the prediction), and
    :meth:`inverse` writes NaN as ``nodata`` (NaN when there is none). A restored valid pixel that
    would land on the nodata value is moved one step off it, so the output's nodata mask is exactly
    the input's.
    """

    low: float | tuple
    high: float | tuple
    dtype: np.dtype
    mode: str  # "fixed" or "percentile"
    nodata: float | None = None  # NaN allowed (float images); NaN is nodata in float images anyway

    @staticmethod
    def reads_pixels(dtype, mode: str = "auto") -> bool:
        """Whether :meth:`for_image` samples pixel values for ``dtype`` under ``mode`` (else only the dtype)."""
        dtype = np.dtype(dtype)
        return not (mode in ("auto", "fixed") and dtype.kind in "ui" and (mode == "fixed" or dtype.itemsize <= 2))

    @classmethod
    def for_image(
        cls,
        image,
        mode: str = "auto",
        percentiles=(0.1, 99.9),
        channel_axis: int | None = None,
        nodata: float | None = None,
    ) -> IntensityMap:
        """The map of ``image`` (numpy or dask; percentiles come from a bounded sample, never the whole).

        ``nodata`` (a value; NaN in float images always) is left out of the sample.
        """
        dtype = np.dtype(image.dtype)
        check_dtype(dtype)
        nodata = check_nodata(nodata, dtype)
        if not cls.reads_pixels(dtype, mode):  # integers by their full range, from the dtype alone
            info = np.iinfo(dtype)
            return cls(float(info.min), float(info.max), dtype, "fixed", nodata)
        if mode == "auto":
            mode = "percentile"
        if mode == "fixed":
            imap = cls(0.0, 1.0, dtype, "fixed", nodata)
            imap.check_range(_sample(image, channel_axis=channel_axis))
            return imap
        if mode != "percentile":
            raise ValueError(f"normalisation must be 'auto', 'fixed' or 'percentile', not {mode!r}")
        if channel_axis is None:
            low, high = _percentiles(_valid(_sample(image), nodata), percentiles)
            return cls(low, high, dtype, "percentile", nodata)
        lows, highs = [], []
        for c in range(image.shape[channel_axis]):
            plane = image[(slice(None),) * (channel_axis % image.ndim) + (c,)]
            low, high = _percentiles(_valid(_sample(plane), nodata), percentiles)
            lows.append(low)
            highs.append(high)
        return cls(tuple(lows), tuple(highs), dtype, "percentile", nodata)

    def is_nodata(self, x: np.ndarray) -> np.ndarray | None:
        """Where ``x`` (in the input's values) holds no data; None when nowhere (the common case, cheap)."""
        x = np.asarray(x)
        mask = None
        if x.dtype.kind == "f":
            nan = np.isnan(x)
            mask = nan if nan.any() else None
        if self.nodata is not None and not np.isnan(self.nodata):
            eq = x == np.asarray(self.nodata).astype(x.dtype)
            if eq.any():
                mask = eq if mask is None else (mask | eq)
        return mask

    def _lh(self, ndim: int, dtype=np.float32):
        if isinstance(self.low, tuple):  # per channel, along axis 0 of (C, Y, X)
            # in the computation's dtype, as a Python float scalar would be: same bits as one channel alone
            shape = (-1,) + (1,) * (ndim - 1)
            return np.reshape(np.asarray(self.low, dtype), shape), np.reshape(np.asarray(self.high, dtype), shape)
        return self.low, self.high

    def computes_wide(self, dtype) -> bool:
        """Whether values of ``dtype`` are mapped in float64 rather than float32.

        32/64-bit integers and float64 (float32 would round their digits away: a uint32 image
        near 4e9 in steps of 256, a float64 value of 1e300 to Inf), and float32 images whose
        range float32 cannot hold (a span past its largest value, or below its smallest normal).
        """
        dtype = np.dtype(dtype)
        if dtype.kind in "ui" or dtype.itemsize > 4:
            return dtype.itemsize > 2
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        span = high - low
        bound = _F32_SAFE
        return not (np.all(span >= _F32.tiny) and np.all(np.maximum(np.abs(low), np.abs(high)) <= bound))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        wide = self.computes_wide(x.dtype)
        low, high = self._lh(x.ndim, np.float64 if wide else np.float32)
        holes = self.is_nodata(x)
        if not wide:
            y = ((np.asarray(x, dtype=np.float32) - low) / (high - low)).astype(np.float32)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                diff = _minus_exact(x, low) if x.dtype.kind in "ui" else x.astype(np.float64) - low
                y = diff / (np.asarray(high, np.float64) - low)
            if holes is not None:  # a nodata of -1e300 is no value to carry
                y[holes] = np.nan
            _check_model_range(y, x, self.low, self.high)
            y = y.astype(np.float32)
        if holes is not None:
            y[holes] = np.nan
        return y

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        holes = np.isnan(y)
        holes = holes if holes.any() else None
        if self.dtype.kind in "ui" and self.dtype.itemsize == 8:
            return self._put_nodata(self._inverse_int64(y, holes), holes)
        wide = self.computes_wide(self.dtype)
        low, high = self._lh(y.ndim, np.float64 if wide else np.float32)
        out = y.astype(np.float64) * (high - low) + low if wide else y * (high - low) + low
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            if holes is not None:
                out[holes] = 0
            out = np.clip(np.rint(out), info.min, info.max).astype(self.dtype)
        else:
            if self.mode == "fixed":
                out = np.clip(out, self.low, self.high)
            if wide or self.dtype.itemsize < 4:  # past the dtype's largest saturates, as integers do, not Inf
                limit = np.finfo(self.dtype).max
                out = np.clip(out, -limit, limit)
            out = out.astype(self.dtype)
        return self._put_nodata(out, holes)

    def _inverse_int64(self, y: np.ndarray, holes: np.ndarray | None) -> np.ndarray:
        """:meth:`inverse` for 64-bit integers: rounded near the map's low end, then added exactly.

        ``y * span + low`` in float64 is off by up to 2048 near 2**63, and a value past the top
        (saturated pixels) would wrap to 0 or -2**63 when cast back: it saturates instead.
        """
        low, high = self._lh(y.ndim, np.float64)
        base = _int_offset(low, self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            delta = np.rint(y.astype(np.float64) * (high - low) + (low - base.astype(np.float64)))
        if holes is not None:
            delta[holes] = 0
        return _plus_saturating(base, delta, self.dtype)

    def _put_nodata(self, out: np.ndarray, holes: np.ndarray | None) -> np.ndarray:
        """Holes become ``nodata``; valid pixels that landed on it move one step off (same mask as the input)."""
        if self.nodata is None or np.isnan(self.nodata):
            return out  # float holes are NaN already
        value = np.asarray(self.nodata).astype(self.dtype)
        clash = out == value
        if holes is not None:
            clash &= ~holes
        if clash.any():
            if self.dtype.kind in "ui":
                info = np.iinfo(self.dtype)
                step = value + 1 if value < info.max else value - 1
            else:
                step = np.nextafter(value, np.inf if value < np.finfo(self.dtype).max else -np.inf, dtype=self.dtype)
            out[clash] = step
        if holes is not None:
            out[holes] = value
        return out

    def clip_range(self) -> tuple[float, float] | None:
        """Bounds for the model input, or None where the map keeps it in [0, 1] anyway."""
        return (-CLIP_MARGIN, 1.0 + CLIP_MARGIN) if self.mode == "percentile" else None

    def check_range(self, values, where: str = "") -> None:
        """Refuse float data the map cannot carry: outside [0, 1] under ``fixed`` (its result would be
        clipped), or too far outside the percentiles for float32 (see :meth:`forward`)."""
        if self.mode == "percentile" and self.dtype.kind == "f" and self.computes_wide(self.dtype):
            self._check_carried(values)
        if self.mode != "fixed" or self.dtype.kind != "f":
            return
        v = np.asarray(values)
        v = v[np.isfinite(v)]  # NaN is nodata; Inf gets its own error where the tile is read
        if self.nodata is not None and not np.isnan(self.nodata):
            v = v[v != self.nodata]
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"normalisation='fixed' maps floats from [0, 1], but the image{where} holds values in "
                f"[{lo:g}, {hi:g}] (they would be clipped); use normalisation='percentile' or 'auto' "
                "(--normalisation percentile), or scale the image to [0, 1] first"
            )

    def _check_carried(self, values) -> None:
        """The refusal of :meth:`forward` for a whole array, from its extremes, before any tile runs."""
        v = np.asarray(values)
        if self.nodata is not None and not np.isnan(self.nodata):
            v = np.where(v == self.nodata, np.nan, v)
        if v.size == 0 or np.isnan(v).all():
            return
        extremes = np.array([np.nanmin(v), np.nanmax(v)], np.float64)
        lows = np.atleast_1d(np.asarray(self.low, np.float64))[:, None]
        spans = np.atleast_1d(np.asarray(self.high, np.float64))[:, None] - lows
        with np.errstate(over="ignore"):
            y = (extremes[None, :] - lows) / spans  # every channel's map, conservatively
        _check_model_range(y, np.broadcast_to(extremes, y.shape), self.low, self.high)

    def to_dict(self) -> dict:
        low, high = (list(v) if isinstance(v, tuple) else v for v in (self.low, self.high))
        out = {"low": low, "high": high, "dtype": self.dtype.str, "mode": self.mode}
        if self.nodata is not None:  # absent when unset: fingerprints of earlier runs stay the same
            out["nodata"] = "nan" if np.isnan(self.nodata) else float(self.nodata)
        return out


def check_nodata(nodata, dtype: np.dtype) -> float | None:
    """``nodata`` as a float the dtype can hold exactly (None: none); a clear error otherwise."""
    if nodata is None:
        return None
    if isinstance(nodata, (bool, np.bool_)):
        raise ValueError(
            f"nodata={nodata!r} is a truth value, not a pixel value; pass the value that marks missing pixels"
        )
    try:
        value = float(nodata)
    except (TypeError, ValueError):
        raise ValueError(f"nodata={nodata!r} is not a number; pass the value that marks missing pixels") from None
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if np.isnan(value) or value != int(value) or not info.min <= value <= info.max:
            raise ValueError(
                f"nodata={nodata!r} cannot occur in a {dtype} image (whole numbers {info.min}..{info.max}); "
                "pass a value of that range, or none (NaN marks missing pixels in float images)"
            )
    elif np.isinf(value):
        raise ValueError(f"nodata={nodata!r}: Inf cannot mark missing pixels; use NaN or a finite value")
    elif abs(value) > float(np.finfo(dtype).max):  # it would become Inf in the image's dtype, and be written as Inf
        raise ValueError(
            f"nodata={nodata!r} cannot occur in a {dtype} image (largest {np.finfo(dtype).max:g}); "
            "pass a value of that range, or none (NaN marks missing pixels in float images)"
        )
    return value


_F32 = np.finfo(np.float32)
#: Beyond this a float32 range is mapped in float64: float32 arithmetic on it could overflow to Inf.
_F32_SAFE = float(_F32.max) / 16


def _check_model_range(y: np.ndarray, x: np.ndarray, low, high) -> None:
    """Refuse mapped values that float32 (the model's input, and what its output carries) cannot hold."""
    big = np.abs(y) > _F32_SAFE  # NaN (nodata) compares False; the margin leaves room for blending and resizing
    if big.any():
        worst = float(np.asarray(x, np.float64)[big].flat[np.argmax(np.abs(y[big]))])
        raise ValueError(
            f"the image holds a value of {worst:g}, beyond 2e37 times its usual range [{_fmt(low)}, {_fmt(high)}] "
            "(0.1-99.9 percentiles): float32, which the model computes in, cannot carry it through. Clip such "
            "values (e.g. np.clip(image, lo, hi)) or mark them as missing (NaN, or nodata=) first"
        )


def _fmt(v) -> str:
    return ", ".join(f"{float(a):g}" for a in v) if isinstance(v, tuple) else f"{float(v):g}"


def _bias(v: np.ndarray) -> np.ndarray:
    """64-bit integers as uint64 in the same order (int64 shifted by 2**63): their differences never wrap."""
    v = np.asarray(v)
    if v.dtype == np.uint64:
        return v
    return v.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)


def _int_offset(low, dtype: np.dtype) -> np.ndarray:
    """The whole number nearest to ``low`` (per channel), in ``dtype`` (whose range it is clipped to)."""
    info = np.iinfo(dtype)
    top = np.nextafter(float(info.max), -np.inf)  # float(info.max) is 2**63 or 2**64: it would wrap
    return np.clip(np.rint(np.asarray(low, np.float64)), float(info.min), top).astype(dtype)


def _minus_exact(x: np.ndarray, low) -> np.ndarray:
    """``x - low`` in float64 for integers; 64-bit ones exactly before the difference is rounded."""
    if x.dtype.itemsize < 8:
        return x.astype(np.float64) - low  # float64 holds every 32-bit integer
    base = _int_offset(low, x.dtype)
    a, b = _bias(x), _bias(base)
    diff = np.where(a >= b, (a - b).astype(np.float64), -(b - a).astype(np.float64))
    return diff + (base.astype(np.float64) - low)


def _plus_saturating(base: np.ndarray, delta: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``base + delta`` (whole-number float64 deltas) in a 64-bit integer ``dtype``, clipped to its range."""
    b = np.broadcast_to(_bias(base), delta.shape)
    room_up, room_down = (~b).astype(np.float64), b.astype(np.float64)  # to the top (2**64 - 1) and to 0
    with np.errstate(invalid="ignore"):
        up = np.where(delta >= room_up, np.uint64(2**64 - 1), b + np.minimum(delta, room_up).clip(0).astype(np.uint64))
        down = np.where(-delta >= room_down, np.uint64(0), b - np.minimum(-delta, room_down).clip(0).astype(np.uint64))
    out = np.where(delta >= 0, up, down)
    if dtype == np.uint64:
        return out.astype(np.uint64)
    return (out ^ np.uint64(1 << 63)).view(np.int64)


def _valid(sample: np.ndarray, nodata: float | None) -> np.ndarray:
    """The sample's values that are data (NaN and ``nodata`` left out)."""
    sample = np.asarray(sample, dtype=np.float64).ravel()
    keep = ~np.isnan(sample)
    if nodata is not None and not np.isnan(nodata):
        keep &= sample != nodata
    return sample[keep]


def _percentiles(sample: np.ndarray, percentiles) -> tuple[float, float]:
    sample = np.asarray(sample, dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise ValueError("the image contains Inf pixels; replace them (e.g. np.nan_to_num) first (NaN marks nodata)")
    if not sample.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        # sparse images (a few bright spots on a flat background): map the sample's whole range
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        # a constant image: a span of 1, or a millionth of the value where 1 would vanish (3e38 + 1 == 3e38)
        high = low + max(1.0, abs(low) * 2.0**-20)
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


#: metadata.RGB_COLOURS (same layer: processing may not import metadata)
_RGB = ("FF0000", "00FF00", "0000FF")


def channel_layout(n: int, channels=(), axes: str | None = None, rgb: bool | None = None) -> str:
    """How an RGB model meets ``n`` channels: ``rgb``, ``rgba``, ``rgb+bands`` or ``bands``.

    ``channels`` are the image's :class:`~napari_mirnet.metadata.Channel` descriptions; ``axes``
    its axes as given (None: a picture's, channels last). ``rgb`` overrides the data: True, 3 or 4
    channels are RGB(A) whatever their order of axes; False, never colour; None, as below.

    - Without descriptions only a picture is colour: 3 or 4 channels stored last (``YXC``: a PNG,
      an RGB TIFF, an (H, W, 3) array as image libraries hand them out) are RGB or RGBA (the 4th,
      alpha, is carried unrestored). Channels stored ahead of Y and X (``CYX``: fluorescence
      channels, a band stack) are ``bands``: each restored as a gray image, since an RGB model
      would mix them as colours.
    - With descriptions (GeoTIFF, OME, ...) the bands coloured red, green and blue, in any
      position, are a colour image; bands marked alpha (GDAL colour interpretation, TIFF
      ExtraSamples, PNG mode) are carried unchanged wherever they are (see :func:`channel_order`);
      other bands (a near-infrared band, say) make it ``rgb+bands``: restored as gray images.
    """
    if rgb is False:
        return "bands"
    described = len(channels) == n and any(c.name or c.color or c.alpha for c in channels)
    if rgb and (not described or _colour_roles(channels)[0] is None):
        return {3: "rgb", 4: "rgba"}.get(n, "bands")  # the caller says so: the bands as they come
    if not described:
        picture = axes is None or axes.upper().endswith("C")
        return {3: "rgb", 4: "rgba"}.get(n, "bands") if picture else "bands"
    rgb, others, alpha = _colour_roles(channels)
    if rgb is None:
        return "bands"
    if not others:
        return {0: "rgb", 1: "rgba"}.get(len(alpha), "rgb+bands")
    return "rgb+bands"


def _colour_roles(channels) -> tuple[tuple[int, ...] | None, tuple[int, ...], tuple[int, ...]]:
    """(red, green, blue positions or None, other bands, alpha bands) of described channels."""
    alpha = tuple(i for i, c in enumerate(channels) if c.alpha)
    rest = [i for i, c in enumerate(channels) if not c.alpha]
    found = [[i for i in rest if (channels[i].color or "").upper() == col] for col in _RGB]
    if any(len(f) != 1 for f in found):
        return None, tuple(rest), alpha
    rgb = tuple(f[0] for f in found)
    return rgb, tuple(i for i in rest if i not in rgb), alpha


def channel_order(n: int, channels=()) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(restored, carried) channel positions where the image's order is not the model's; else None.

    Restored: red, green, blue first (a GeoTIFF may store blue, green, red), then the other bands;
    carried: the bands marked alpha, passed through unchanged wherever they are. None where
    :func:`prepare_channels` meets the channels as they are (no alpha, or RGBA in that order).
    """
    if len(channels) != n or not any(c.alpha or c.color for c in channels):
        return None
    rgb, others, alpha = _colour_roles(channels)
    restored = (rgb or ()) + others
    if rgb is not None and restored == (0, 1, 2) and alpha in ((), (3,)):
        return None
    if rgb is None and not alpha:
        return None
    return restored, alpha


def prepare_channels(
    chw: np.ndarray, model_in: int, dual_pixel: bool = False, layout: str | None = None
) -> tuple[np.ndarray, str]:
    """Turn a (C, H, W) float image into a (B, model_in, H, W) batch, and say how to undo it.

    - 3-channel model (``layout`` from :func:`channel_layout`; None: by the channel count): RGB
      passes as is; RGBA passes RGB and keeps alpha aside; RGB plus other bands passes RGB as one
      item and each other band as replicated gray; any other image runs each channel as
      replicated gray.
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
    layout = layout or channel_layout(c)
    if layout == "rgb" and c == 3:
        return chw[None], "rgb"
    if layout == "rgba" and c == 4:
        return chw[None, :3], "rgba"
    if layout == "rgb+bands" and c > 3:
        return np.concatenate([chw[None, :3], np.repeat(chw[3:, None], 3, axis=1)]), "rgb+gray"
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
    if how == "rgb+gray":
        return np.concatenate([out[0], out[1:].mean(axis=1)], axis=0)
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
    layout: str | None = None  # channel_layout of the image (None: by the channel count)
    order: tuple[int, ...] | None = None  # channels restored, in the model's order (None: all, as they are)
    carried: tuple[int, ...] = ()  # channels passed through unchanged (alpha), see channel_order

    @classmethod
    def for_model(
        cls,
        channels_in: int,
        model_in: int,
        model_out: int,
        dual_pixel: bool,
        layout: str | None = None,
        order: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> ChannelAdapter:
        """Apply the rules of :func:`prepare_channels` / :func:`finish_channels` to a 4x4 probe.

        ``order``: (restored, carried) positions from :func:`channel_order`; None: as they are.
        """
        restored, carried = (None, ()) if order is None else (tuple(order[0]), tuple(order[1]))
        sub = layout
        if restored is not None and layout in ("rgba", "rgb+bands") and len(restored) == 3:
            sub = "rgb"  # alpha goes round the model: the colour bands alone are an RGB image
        adapter = cls(channels_in, model_in, model_out, dual_pixel, "", 0, 0, sub, restored, carried)
        probe = np.zeros((channels_in, 4, 4), np.float32)
        batch = adapter.prepare(probe)
        how = prepare_channels(probe if restored is None else probe[list(restored)], model_in, dual_pixel, sub)[1]
        adapter = dataclass_replace(adapter, how=how, items=batch.shape[0])
        out = adapter.finish(np.zeros((batch.shape[0], model_out, 4, 4), np.float32), probe)
        return dataclass_replace(adapter, channels_out=out.shape[0])

    def prepare(self, chw: np.ndarray) -> np.ndarray:
        if self.order is not None:
            chw = chw[list(self.order)]
        return prepare_channels(chw, self.model_in, self.dual_pixel, self.layout)[0]

    def finish(self, out: np.ndarray, source: np.ndarray) -> np.ndarray:
        if self.order is None:
            return finish_channels(out, self.how, source)
        restored = finish_channels(out, self.how, source[list(self.order)])
        full = np.empty((len(self.order) + len(self.carried),) + restored.shape[1:], restored.dtype)
        full[list(self.order)] = restored
        full[list(self.carried)] = source[list(self.carried)]  # ``source`` is at the output size
        return full


def fill_nodata(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Fill the NaN (nodata) pixels of a mapped (C, Y, X) tile; returns (filled, hole mask or None).

    Holes are filled by pull-push (a pyramid of masked 2x2 means, coarse levels filling what fine
    levels cannot): each hole pixel gets the mean of the nearest valid pixels, smooth across the
    hole, so that the network sees no step at the edge and valid pixels next to a hole are restored
    as they would be without it (measured in tests/test_geo.py). A channel with no valid pixel in
    the tile gets 0.5, the middle of the model's range.
    """
    holes = np.isnan(x)
    if not holes.any():
        return x, None
    out = np.array(x, dtype=np.float32, copy=True)
    for c in range(x.shape[0]):
        if holes[c].any():
            out[c] = _pull_push(x[c], ~holes[c])
    return out, holes


def _pull_push(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if not valid.any():
        return np.full(v.shape, 0.5, np.float32)
    w = valid.astype(np.float64)
    vw = np.where(valid, v, 0.0).astype(np.float64)
    levels = [(vw, w)]
    while not (w > 0).all() and min(w.shape) > 1:
        vw, w = _sum2x2(vw), _sum2x2(w)
        levels.append((vw, w))
    vw, w = levels[-1]
    est = np.where(w > 0, vw / np.maximum(w, 1e-12), (vw.sum() / w.sum()))
    for vw, w in reversed(levels[:-1]):
        up = np.repeat(np.repeat(est, 2, axis=0), 2, axis=1)[: w.shape[0], : w.shape[1]]
        est = np.where(w > 0, vw / np.maximum(w, 1e-12), up)
    return np.where(valid, v, est).astype(np.float32)


def _sum2x2(a: np.ndarray) -> np.ndarray:
    """Sums over 2x2 blocks (odd edges padded with zeros)."""
    h, w = a.shape
    a = np.pad(a, ((0, h % 2), (0, w % 2)))
    return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]


def mark_nodata(out: np.ndarray, holes: np.ndarray | None, factor: int = 1) -> np.ndarray:
    """NaN where the tile had no data: the (C, Y, X) hole mask, upsampled by nearest for ``factor``.

    When the output has other channels than the input (a dual-pixel pair), a pixel is nodata where
    any input channel was.
    """
    if holes is None:
        return out
    if factor > 1:
        holes = np.repeat(np.repeat(holes, factor, axis=-2), factor, axis=-1)
    if holes.shape[0] != out.shape[0]:
        holes = np.broadcast_to(holes.any(axis=0, keepdims=True), out.shape)
    return np.where(holes, np.float32(np.nan), out).astype(np.float32)


def upscale(chw: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic resize of a (C, H, W) float image by an integer factor (the SR models' input)."""
    if factor == 1:
        return chw
    t = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
    up = F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[0].numpy()
