"""The intensity mapping around the model: an image's values to the model's [0, 1] and back (numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import bounded_sample, percentile_range, valid_values
from .wide import F32, F32_SAFE, check_model_range, int_offset, minus_exact, plus_saturating

__all__ = ["CLIP_MARGIN", "IntensityMap", "check_dtype", "check_nodata"]


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
            imap.check_range(bounded_sample(image, channel_axis=channel_axis))
            return imap
        if mode != "percentile":
            raise ValueError(f"normalisation must be 'auto', 'fixed' or 'percentile', not {mode!r}")
        if channel_axis is None:
            low, high = percentile_range(valid_values(bounded_sample(image), nodata), percentiles)
            return cls(low, high, dtype, "percentile", nodata)
        lows, highs = [], []
        for c in range(image.shape[channel_axis]):
            plane = image[(slice(None),) * (channel_axis % image.ndim) + (c,)]
            low, high = percentile_range(valid_values(bounded_sample(plane), nodata), percentiles)
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
        bound = F32_SAFE
        return not (np.all(span >= F32.tiny) and np.all(np.maximum(np.abs(low), np.abs(high)) <= bound))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        wide = self.computes_wide(x.dtype)
        low, high = self._lh(x.ndim, np.float64 if wide else np.float32)
        holes = self.is_nodata(x)
        if not wide:
            y = ((np.asarray(x, dtype=np.float32) - low) / (high - low)).astype(np.float32)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                diff = minus_exact(x, low) if x.dtype.kind in "ui" else x.astype(np.float64) - low
                y = diff / (np.asarray(high, np.float64) - low)
            if holes is not None:  # a nodata of -1e300 is no value to carry
                y[holes] = np.nan
            check_model_range(y, x, self.low, self.high)
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
        base = int_offset(low, self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            delta = np.rint(y.astype(np.float64) * (high - low) + (low - base.astype(np.float64)))
        if holes is not None:
            delta[holes] = 0
        return plus_saturating(base, delta, self.dtype)

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
        check_model_range(y, np.broadcast_to(extremes, y.shape), self.low, self.high)

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
                f"nodata={value:g} cannot occur in a {dtype} image (whole numbers {info.min}..{info.max}); "
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
