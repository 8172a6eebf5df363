"""Patches of the user's noisy data for fine-tuning: planes read region by region, the held-out
validation patches, the data's fingerprint and the mode the measured noise correlation calls for."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

import numpy as np

from .config import MIN_EDGE
from .noise_shape import choose_pairs, noise_autocorrelation

__all__ = ["SETUP_SHARE", "noise_correlation"]

#: The share of a ``minutes`` budget that reading the validation and noise samples may use: past it,
#: set-up keeps the few patches it has (at least ``_MIN_SAMPLES``) and training starts.
SETUP_SHARE = 0.3
_MIN_SAMPLES = 4
# draws for a patch without nodata before giving up: data that is mostly nodata fails in seconds
_NODATA_TRIES = 200


class _SetupClock:
    """Set-up's share of the budget: sampling loops ask :meth:`over` and report each patch they read."""

    def __init__(self, clock: Callable[[], float], t0: float, minutes: float | None, report=None):
        self.clock, self.t0, self.report = clock, t0, report
        self.limit = None if minutes is None else SETUP_SHARE * 60.0 * float(minutes)
        self.done, self.total = 0, 0

    def over(self) -> bool:
        return self.limit is not None and self.clock() - self.t0 > self.limit

    def read(self, read, box):
        out = read(box)
        self.done += 1
        if self.report is not None:
            self.report(self.done, max(self.total, self.done))
        return out


class _Plane:
    """One 2D plane (C, H, W) of an array, read region by region and normalised on the fly."""

    def __init__(
        self,
        array,
        index: tuple,
        yx: tuple[int, int],
        channel_axis: int | None,
        channels: tuple[int, ...] | None,
        imap,
        model_channels: int,
    ):
        self.array, self.index, self.yx = array, index, yx
        self.channel_axis, self.channels, self.imap = channel_axis, channels, imap
        self.model_channels = model_channels
        self.shape = (int(array.shape[yx[0]]), int(array.shape[yx[1]]))

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        idx = list(self.index)
        idx[self.yx[0]], idx[self.yx[1]] = slice(y0, y0 + h), slice(x0, x0 + w)
        region = self.array[tuple(idx)]
        region = np.asarray(region.compute() if hasattr(region, "compute") else region)
        # the remaining axes are (C, Y, X) or (Y, X) in the array's order: make it (C, H, W)
        if self.channel_axis is None:
            chw = region[None]
        else:
            c_first = self.channel_axis < self.yx[0]
            chw = region if c_first else np.moveaxis(region, -1, 0)
            chw = chw[list(self.channels)]
        chw = self.imap.forward(chw)
        if chw.shape[0] == 1 and self.model_channels == 3:
            chw = np.repeat(chw, 3, axis=0)  # gray data through a colour model, as restore does
        return chw


def _as_sources(data, axes, nodata: float | None = None) -> list[tuple[object, str, float | None]]:
    """(array, axes, nodata) from an array, a path (file, zarr, folder) or a list of these.

    Axes are read by restore's rule: the caller's, else the file's, else :func:`~napari_mirnet.axes.infer_axes`,
    which refuses a shape with more than one plausible reading (a model fine-tuned on data that
    restore then refuses would help nobody). The nodata value is the caller's ``nodata``, else the
    file's, as restore reads it (None for arrays, whose NaN pixels are nodata in any case).
    """
    from ..axes import infer_axes, validate_axes
    from ..io import ImageSource, list_inputs, open_image

    items = data if isinstance(data, (list, tuple)) else [data]
    out = []
    for item in items:
        if isinstance(item, ImageSource):  # an image opened already (a URL, see open_urls): its own axes
            out.append((item.array, axes or item.axes, item.meta.nodata))
        elif isinstance(item, (str, os.PathLike)):
            for path in list_inputs([item]):
                src = open_image(path)
                out.append((src.array, axes or src.axes, src.meta.nodata))
        else:
            arr = item
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                arr = np.asarray(arr)
            out.append((arr, axes, None))
    return [
        (
            arr,
            validate_axes(ax, tuple(arr.shape)) if ax else infer_axes(tuple(arr.shape)),
            nd if nodata is None else nodata,
        )
        for arr, ax, nd in out
    ]


def open_urls(data, storage_options: dict | None = None):
    """``data`` with each URL item (``s3://``, ``https://`` ...) opened lazily with ``storage_options``
    (fsspec's) into an :class:`~napari_mirnet.io.ImageSource`; other items as given."""
    from ..io import list_inputs, open_image
    from ..io.urls import is_url

    def opened(item) -> list:  # a URL folder (ending in /) is every image in it
        if not is_url(item):
            return [item]
        return [open_image(u, storage_options=storage_options) for u in list_inputs([item], storage_options)]

    if isinstance(data, (list, tuple)):
        return [x for d in data for x in opened(d)]
    items = opened(data)
    return items[0] if len(items) == 1 and not str(data).endswith("/") else items


def _planes(sources, model_channels: int, normalisation: str) -> list[_Plane]:
    from itertools import product

    from ..processing import IntensityMap

    planes = []
    for arr, axes, nodata in sources:
        dtype = np.dtype(arr.dtype)
        if dtype.kind not in "uif" or dtype.itemsize > 8:
            raise TypeError(f"cannot fine-tune on data of dtype {dtype}; convert it to uint8, uint16 or float32")
        if normalisation == "fixed" and dtype.kind == "f":
            # training patches may stray a little outside [0, 1] (noise); restoring refuses that, training need not
            imap = IntensityMap(0.0, 1.0, dtype, "fixed", nodata)
        else:
            # the file's nodata as restore reads it: out of the percentiles, NaN in the patches (drawn again)
            imap = IntensityMap.for_image(arr, normalisation, nodata=nodata)
        yx = (axes.index("Y"), axes.index("X"))
        c_ax = axes.index("C") if "C" in axes else None
        lead = [i for i, a in enumerate(axes) if a not in "CYX"]
        n_c = int(arr.shape[c_ax]) if c_ax is not None else 1
        if model_channels == 3 and c_ax is not None and n_c in (3, 4):
            groups = [(0, 1, 2)]  # RGB(A): alpha is not denoised
        elif c_ax is not None:
            groups = [(c,) for c in range(n_c)]  # each channel is a gray plane
        else:
            groups = [None]
        for pos in product(*(range(int(arr.shape[i])) for i in lead)):
            index: list = [slice(None)] * len(axes)
            for i, p in zip(lead, pos):
                index[i] = p
            for g in groups:
                planes.append(_Plane(arr, tuple(index), yx, c_ax, g, imap, model_channels))
    return planes


class _Data:
    """Random patches from many planes, with a few held out for validation."""

    def __init__(self, planes: list[_Plane], patch: int, n_val: int, seed: int, setup: _SetupClock | None = None):
        if not planes:
            raise ValueError("the data holds no image planes")
        edge = min(min(p.shape) for p in planes)
        big = [p for p in planes if min(p.shape) >= patch]
        if not big:
            fit = (edge // 8) * 8
            if fit < MIN_EDGE:
                raise ValueError(
                    f"the images are too small to learn from: planes of {planes[0].shape[0]}x"
                    f"{planes[0].shape[1]} pixels; fine-tuning needs at least {MIN_EDGE}x{MIN_EDGE}"
                )
            patch, big = fit, [p for p in planes if min(p.shape) >= fit]
        area = np.array([p.shape[0] * p.shape[1] for p in big], np.float64)
        # on little data, smaller patches (down to MIN_EDGE) rather than too few of them
        while patch > MIN_EDGE and area.sum() / patch**2 < 16:
            patch -= 8
        self.patch, self.planes = patch, big
        n_patches = area.sum() / patch**2
        if n_patches < 4:
            raise ValueError(
                f"the data is too small to learn from: {int(area.sum())} pixels hold fewer than 4 patches of "
                f"{patch}x{patch}; give a larger image or more planes"
            )
        # hold out at most an eighth of the data for validation
        self.n_val = int(max(1, min(n_val, n_patches // 8)))
        self.weights = area / area.sum()
        rng = np.random.default_rng([seed, 7919])
        self.val_boxes: list[tuple[int, int, int]] = []
        for _ in range(self.n_val):
            for _try in range(50):
                box = self._draw(rng)
                if not any(self._overlap(box, b) for b in self.val_boxes):
                    break
            self.val_boxes.append(box)
        self.setup = setup or _SetupClock(time.perf_counter, 0.0, None)
        self.setup.total += self.n_val
        self.val = np.stack(self._read_some(self.val_boxes, 1, rng, apart=True))

    def _read_some(self, boxes, at_least: int, rng, apart: bool = False) -> list[np.ndarray]:
        """Read ``boxes`` in order, stopping early (after ``at_least``) once set-up's time is used;
        a box holding nodata is replaced (in ``boxes`` too) by one drawn from ``rng`` that holds
        none (``apart``: preferably one that overlaps none of the other boxes)."""
        out = []
        for k, b in enumerate(boxes):
            if len(out) >= at_least and self.setup.over():
                break
            others = [o for j, o in enumerate(boxes) if j != k] if apart else ()
            boxes[k], patch = self._with_data(b, rng, lambda box: self.setup.read(self._read, box), others)
            out.append(patch)
        return out

    def _with_data(self, box, rng, read, avoid=()) -> tuple[tuple[int, int, int], np.ndarray]:
        """(box, patch) for ``box``, or where its patch holds nodata (NaN: restore's nodata, which
        fine-tuning learns nothing from) for another box that holds none, preferably one that
        overlaps none of ``avoid`` (the first half of the draws insist on it)."""
        for k in range(_NODATA_TRIES):
            if k:
                box = self._draw(rng)
                if k < _NODATA_TRIES // 2 and any(self._overlap(box, b) for b in avoid):
                    continue
            patch = read(box)
            if not np.isnan(patch).any():
                return box, patch
        raise ValueError(
            f"no patch of {self.patch}x{self.patch} pixels without nodata (NaN) found in {_NODATA_TRIES} draws: "
            "fine-tuning needs parts of the image with data throughout; give the images (or crops of them) "
            "where the data is"
        )

    def _draw(self, rng) -> tuple[int, int, int]:
        i = int(rng.choice(len(self.planes), p=self.weights))
        h, w = self.planes[i].shape
        return i, int(rng.integers(0, h - self.patch + 1)), int(rng.integers(0, w - self.patch + 1))

    def _overlap(self, a, b) -> bool:
        return a[0] == b[0] and abs(a[1] - b[1]) < self.patch and abs(a[2] - b[2]) < self.patch

    def _read(self, box) -> np.ndarray:
        i, y, x = box
        return self.planes[i].read(y, x, self.patch, self.patch)

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            for _try in range(20):  # training patches avoid the held-out ones
                box = self._draw(rng)
                if not any(self._overlap(box, b) for b in self.val_boxes):
                    break
            _, patch = self._with_data(box, rng, self._read, self.val_boxes)
            out.append((patch, int(rng.integers(0, 8))))  # crop, symmetry (see _augment)
        return out

    def sample_pixels(self, rng, n_boxes: int = 16) -> np.ndarray:
        # all boxes are drawn first, so a sample cut short by the clock leaves ``rng`` where a full one would
        boxes = [self._draw(rng) for _ in range(n_boxes)]
        return np.stack(self._read_some(boxes, _MIN_SAMPLES, rng))


def _fingerprint(sources, planes: list[_Plane], setup: _SetupClock | None = None) -> str:
    """A data fingerprint from shapes, dtypes and a fixed sample of pixels (never the whole data).

    Never cut short by the clock: a resumed run must find the same fingerprint."""
    setup = setup or _SetupClock(time.perf_counter, 0.0, None)
    h = hashlib.sha256()
    for arr, axes, nodata in sources:
        # the nodata value only where there is one: fingerprints of runs without stay as they were (resume)
        h.update(f"{tuple(arr.shape)}{np.dtype(arr.dtype).str}{axes}{'' if nodata is None else nodata}".encode())
    rng = np.random.default_rng(12345)
    for _ in range(min(16, len(planes) * 4)):
        p = planes[int(rng.integers(len(planes)))]
        e = min(16, *p.shape)
        y, x = int(rng.integers(0, p.shape[0] - e + 1)), int(rng.integers(0, p.shape[1] - e + 1))
        region = setup.read(lambda box, plane=p: plane.read(*box), (y, x, e, e))
        h.update(np.ascontiguousarray(region, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def noise_correlation(patches: np.ndarray) -> tuple[float, float]:
    """Lag-1 autocorrelation of the noise along rows and along columns of (N, C, H, W) patches
    (about 0 for independent noise; see :func:`~.noise_shape.noise_autocorrelation`)."""
    corr = noise_autocorrelation(patches, 1)
    return corr["horizontal"][0], corr["vertical"][0]


def _choose_pairs(pairs: str, data: _Data, rng) -> tuple[str, dict, np.ndarray]:
    """The mode (``pairs`` itself unless "auto"), what was measured (for the model's metadata) and
    the patches it was measured on."""
    sample = data.sample_pixels(rng)
    corr = noise_autocorrelation(sample)
    mode, why = choose_pairs(corr)
    info = {
        "horizontal_neighbour_correlation": corr["horizontal"][0],
        "vertical_neighbour_correlation": corr["vertical"][0],
        "noise_autocorrelation": corr,
        "pairs_measured": mode,
        "pairs_reason": why
        if pairs == "auto"
        else f"pairs={pairs!r} was given; the measurement suggests {mode!r}: {why}",
    }
    return (mode if pairs == "auto" else pairs), info, sample


def _check_not_uniform(data: _Data, rng) -> None:
    sample = data.sample_pixels(rng, 32)
    spread = float(np.std(sample))
    if not np.isfinite(spread):
        raise ValueError("the data contains Inf pixels; replace them (e.g. np.nan_to_num) first")
    if spread < 1e-3 or np.unique(sample).size < 4:
        raise ValueError(
            f"the data is too uniform to learn from (intensity spread {spread:.2g} of the normalised range, "
            f"{np.unique(sample).size} distinct values in a sample): is it blank or saturated?"
        )
