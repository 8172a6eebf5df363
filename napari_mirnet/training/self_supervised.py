"""Self-supervised fine-tuning: adapt a trained MIRNet-v2 denoiser to your own noisy data, no clean images.

The default objective is neighbour sub-sampling (Huang et al., *Neighbor2Neighbor*, CVPR 2021): two
half-resolution images are drawn from each noisy patch by taking, in every 2x2 cell, one pixel and one
of its direct neighbours. Their noise is independent where the noise is independent from pixel to
pixel, so the model learns to map one to the other and can only predict the shared signal. A
consistency term ties the half-resolution outputs to the model's full-resolution output. Where the
noise is correlated along rows (or columns), only pixel pairs across the other direction are used
(``pairs='auto'`` measures this on the data). ``objective='blindspot'`` is the alternative
(Noise2Void / Noise2Self-style input masking); ``docs/finetune.md`` says why it is not the default.

Patches are read region by region from numpy, dask or zarr arrays and tif/zarr/png files, so inputs of
any size are never loaded whole. The run ends after ``minutes`` or ``steps``; the best model so far
(by a self-supervised loss on held-out patches) is written to ``out`` every time it improves, so a
cancelled or killed run leaves the best model behind; the state to resume from is kept in the user
cache (see :func:`state_path`), not beside the model. The ``minutes`` budget counts the whole run from
the call: reading patches, measuring the noise, loading and validating the model, and training.

The output is a model file in the official layout, ``{'params': fp16 state dict, 'meta': {...}}``,
that ``restore(..., weights=out)``, the CLI and the napari widgets load like any other.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..model import MIRNetV2
from ..weights import load_model, locate
from .config import MIN_EDGE, OBJECTIVES, FinetuneConfig
from .output import check_output, state_path
from .supervised import NORMALISATION, _save, code_version

__all__ = [
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneProgress",
    "OBJECTIVES",
    "state_path",
    "models_dir",
    "noise_correlation",
]

#: The share of a ``minutes`` budget that reading the validation and noise samples may use: past it,
#: set-up keeps the few patches it has (at least ``_MIN_SAMPLES``) and training starts.
SETUP_SHARE = 0.3
_MIN_SAMPLES = 4


def models_dir() -> Path:
    """Where the napari widget saves fine-tuned models: ``$NAPARI_MIRNET_MODELS`` or the user data folder."""
    env = os.environ.get("NAPARI_MIRNET_MODELS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-mirnet")) / "models"


@dataclass
class FinetuneProgress:
    """What a progress callback receives after each step (and after each validation)."""

    step: int
    loss: float
    fraction: float  # of the budget (time or steps) used
    elapsed: float
    val_loss: float | None = None  # set on steps that validated
    best_val: float | None = None
    best_step: int | None = None
    model: MIRNetV2 | None = None  # the weights being validated (the moving average); do not train it


@dataclass
class FinetuneResult:
    """Where the model went and how the run went."""

    path: Path
    steps: int
    best_step: int
    best_val: float
    source_val: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False
    elapsed: float = 0.0
    #: why the saved model is the source model unchanged ("" when a step improved it)
    unchanged: str = ""
    setup_s: float = 0.0  # of ``elapsed``: reading patches, measuring the noise, validating the source


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


# ------------------------------------------------------------------------------------------ data
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


def _as_sources(data, axes) -> list[tuple[object, str]]:
    """(array, axes) pairs from an array, a path (file, zarr, folder) or a list of these."""
    from ..axes import infer_axes, validate_axes
    from ..io import list_inputs, open_image

    items = data if isinstance(data, (list, tuple)) else [data]
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            for path in list_inputs([item]):
                src = open_image(path)
                out.append((src.array, axes or src.axes))
        else:
            arr = item
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                arr = np.asarray(arr)
            out.append((arr, axes))
    resolved = []
    for arr, ax in out:
        shape = tuple(arr.shape)
        if ax is None:
            try:
                ax = infer_axes(shape)
            except ValueError:
                # a stack with no axes metadata: every leading axis indexes planes
                if len(shape) > 5:
                    raise
                ax = "TZYX"[-len(shape) :] if len(shape) <= 4 else "TZCYX"
        resolved.append((arr, validate_axes(ax, shape)))
    return resolved


def _planes(sources, model_channels: int, normalisation: str) -> list[_Plane]:
    from itertools import product

    from ..processing import IntensityMap

    planes = []
    for arr, axes in sources:
        dtype = np.dtype(arr.dtype)
        if dtype.kind not in "uif" or dtype.itemsize > 8:
            raise TypeError(f"cannot fine-tune on data of dtype {dtype}; convert it to uint8, uint16 or float32")
        if normalisation == "fixed" and dtype.kind == "f":
            # training patches may stray a little outside [0, 1] (noise); restoring refuses that, training need not
            imap = IntensityMap(0.0, 1.0, dtype, "fixed")
        else:
            imap = IntensityMap.for_image(arr, normalisation)
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
        self.val = np.stack(self._read_some(self.val_boxes, 1))

    def _read_some(self, boxes, at_least: int) -> list[np.ndarray]:
        """Read ``boxes`` in order, stopping early (after ``at_least``) once set-up's time is used."""
        out = []
        for b in boxes:
            if len(out) >= at_least and self.setup.over():
                break
            out.append(self.setup.read(self._read, b))
        return out

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
            out.append((self._read(box), int(rng.integers(0, 8))))  # crop, symmetry (see _augment)
        return out

    def sample_pixels(self, rng, n_boxes: int = 16) -> np.ndarray:
        # all boxes are drawn first, so a sample cut short by the clock leaves ``rng`` where a full one would
        boxes = [self._draw(rng) for _ in range(n_boxes)]
        return np.stack(self._read_some(boxes, _MIN_SAMPLES))


def _fingerprint(sources, planes: list[_Plane], setup: _SetupClock | None = None) -> str:
    """A data fingerprint from shapes, dtypes and a fixed sample of pixels (never the whole data).

    Never cut short by the clock: a resumed run must find the same fingerprint."""
    setup = setup or _SetupClock(time.perf_counter, 0.0, None)
    h = hashlib.sha256()
    for arr, axes in sources:
        h.update(f"{tuple(arr.shape)}{np.dtype(arr.dtype).str}{axes}".encode())
    rng = np.random.default_rng(12345)
    for _ in range(min(16, len(planes) * 4)):
        p = planes[int(rng.integers(len(planes)))]
        e = min(16, *p.shape)
        y, x = int(rng.integers(0, p.shape[0] - e + 1)), int(rng.integers(0, p.shape[1] - e + 1))
        region = setup.read(lambda box, plane=p: plane.read(*box), (y, x, e, e))
        h.update(np.ascontiguousarray(region, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def noise_correlation(patches: np.ndarray) -> tuple[float, float]:
    """Correlation of the fine-scale residual between horizontal and between vertical neighbours.

    ``patches`` is (N, C, H, W). The residual is the image minus its 3x3 mean without the centre,
    which keeps mostly noise. Equal values mean isotropic noise (white noise gives -1/6, about
    -0.17, for both); a clearly higher horizontal value means noise correlated along rows (read-out stripes).
    """
    x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).flatten(0, 1)[:, None]
    k = torch.ones(1, 1, 3, 3) / 8.0
    k[0, 0, 1, 1] = 0.0
    r = x[..., 1:-1, 1:-1] - F.conv2d(x, k)  # the valid region of the 3x3 mean

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).mean() / (a.std() * b.std() + 1e-12))

    return corr(r[..., :, 1:], r[..., :, :-1]), corr(r[..., 1:, :], r[..., :-1, :])


def _choose_pairs(pairs: str, data: _Data, rng) -> tuple[str, dict]:
    sample = data.sample_pixels(rng)
    ch, cv = noise_correlation(sample)
    info = {"horizontal_neighbour_correlation": round(ch, 3), "vertical_neighbour_correlation": round(cv, 3)}
    if pairs != "auto":
        return pairs, info
    # white noise gives equal values; a margin of 0.1 keeps anisotropic signal from tipping the choice
    if ch - cv > 0.1:
        return "vertical", info
    if cv - ch > 0.1:
        return "horizontal", info
    return "any", info


def _check_not_uniform(data: _Data, rng) -> None:
    sample = data.sample_pixels(rng, 32)
    spread = float(np.std(sample))
    if not np.isfinite(spread):
        raise ValueError("the data contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")
    if spread < 1e-3 or np.unique(sample).size < 4:
        raise ValueError(
            f"the data is too uniform to learn from (intensity spread {spread:.2g} of the normalised range, "
            f"{np.unique(sample).size} distinct values in a sample): is it blank or saturated?"
        )


# ------------------------------------------------------------------------------------------ objectives
# "any" (isotropic noise): 2x2 cell positions 0 1 / 2 3 and neighbour pairs (a, b) in both orders.
# "vertical" / "horizontal" (noise correlated along rows / columns): cells of two whole rows / columns,
# positions 0 and 1, so each sub-image keeps every pixel of the rows (columns) it takes.
_PAIRS = {"any": [(0, 1), (1, 0), (2, 3), (3, 2), (0, 2), (2, 0), (1, 3), (3, 1)]}
_LINE_PAIRS = [(0, 1), (1, 0)]


def _augment(x: torch.Tensor, k: int, pairs: str) -> torch.Tensor:
    # with direction-dependent noise only flips keep rows as rows; otherwise all 8 symmetries
    if pairs != "any":
        x = x.flip(-1) if k & 1 else x
        return x.flip(-2) if k & 2 else x
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def _cells(x: torch.Tensor, pairs: str) -> torch.Tensor:
    """(B, C, H, W) as cells along the last axis: 2x2 cells for "any", 2x1 (row pairs) for "vertical",
    1x2 (column pairs) for "horizontal"."""
    b, c, h, w = x.shape
    if pairs == "vertical":
        return x.reshape(b, c, h // 2, 2, w).transpose(-1, -2)
    if pairs == "horizontal":
        return x.reshape(b, c, h, w // 2, 2)
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)


def _subsample(x: torch.Tensor, gen: torch.Generator, pairs: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two sub-images of neighbouring pixels whose noise is independent, and the chosen cell positions.

    For isotropic noise ("any") both are half-resolution images, one pixel of every 2x2 cell and one of
    its direct neighbours (Neighbor2Neighbor). For noise correlated along rows ("vertical") they are
    alternate rows, in a random order per row pair, at full horizontal resolution: the noise along
    each row is then exactly the noise the model meets at inference, where a 2x2 sub-sampling would
    halve the span of its correlation. "horizontal" is the same with columns.
    """
    cells = _cells(x, pairs)
    b, _, h2, w2, _ = cells.shape
    if pairs == "any":
        table = torch.tensor(_PAIRS["any"], device=x.device)
        pick = torch.randint(len(table), (b, 1, h2, w2), generator=gen, device=gen.device).to(x.device)
    else:
        # one choice per row pair (column pair): a row keeps its own noise from end to end
        table = torch.tensor(_LINE_PAIRS, device=x.device)
        shape = (b, 1, h2, 1) if pairs == "vertical" else (b, 1, 1, w2)
        pick = torch.randint(2, shape, generator=gen, device=gen.device).to(x.device)
    ab = table[pick]  # (b, 1, h2 or 1, w2 or 1, 2)
    return _gather(cells, ab[..., 0]), _gather(cells, ab[..., 1]), ab


def _gather(cells: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    idx = pos.expand(*cells.shape[:-1])[..., None]
    return cells.gather(-1, idx)[..., 0]


def _n2n_loss(model, x: torch.Tensor, gen, pairs: str, gamma: float, with_consistency: bool = True):
    g1, g2, ab = _subsample(x, gen, pairs)
    out1 = model(g1)
    loss = F.mse_loss(out1, g2)
    if gamma and with_consistency:
        with torch.no_grad():
            full = model(x)
        cells = _cells(full, pairs)
        f1, f2 = _gather(cells, ab[..., 0]), _gather(cells, ab[..., 1])
        loss = loss + gamma * F.mse_loss(out1 - g2, f1 - f2)
    return loss


def _blindspot_inputs(x: torch.Tensor, gen, pairs: str, spacing: int):
    """Mask one pixel per spacing x spacing cell (random offset) and the pixels its noise is correlated
    with; replace each by the mean of its neighbours across the uncorrelated direction."""
    b, c, h, w = x.shape
    oy, ox = (int(v) for v in torch.randint(spacing, (2,), generator=gen, device=gen.device))
    centre = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    centre[oy::spacing, ox::spacing] = True
    masked = centre.clone()
    if pairs == "vertical":  # noise correlated along rows: hide the row neighbours too
        masked |= centre.roll(1, 1) | centre.roll(-1, 1)
    elif pairs == "horizontal":
        masked |= centre.roll(1, 0) | centre.roll(-1, 0)
    pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up, down = pad[..., :-2, 1:-1], pad[..., 2:, 1:-1]
    left, right = pad[..., 1:-1, :-2], pad[..., 1:-1, 2:]
    if pairs == "vertical":
        fill = (up + down) / 2
    elif pairs == "horizontal":
        fill = (left + right) / 2
    else:
        fill = (up + down + left + right) / 4
    # masked neighbours of a centre are filled from their own unmasked neighbours; none of these
    # values carries the centre's noise, wherever the network looks (its receptive field is global)
    inp = torch.where(masked, fill, x)
    return inp, centre


def _blindspot_loss(model, x, gen, pairs: str, spacing: int):
    inp, centre = _blindspot_inputs(x, gen, pairs, spacing)
    out = model(inp)
    return (out - x).square()[..., centre].mean()


def _objective_loss(cfg: FinetuneConfig, model, x, gen, pairs: str):
    if cfg.objective == "neighbor2neighbor":
        return _n2n_loss(model, x, gen, pairs, cfg.gamma)
    return _blindspot_loss(model, x, gen, pairs, cfg.mask_spacing)


@torch.no_grad()
def _validate(cfg: FinetuneConfig, model, val: torch.Tensor, pairs: str, seed: int) -> float:
    # fixed sub-samplings / masks, so that values compare across the run; the main term only
    gen = torch.Generator(device=val.device)
    gen.manual_seed(seed)
    total = 0.0
    for i in range(val.shape[0]):
        x = val[i : i + 1]
        for _ in range(2):
            if cfg.objective == "neighbor2neighbor":
                g1, g2, _ = _subsample(x, gen, pairs)
                total += float(F.mse_loss(model(g1), g2))
            else:
                total += float(_blindspot_loss(model, x, gen, pairs, cfg.mask_spacing))
    return total / (2 * val.shape[0])


# ------------------------------------------------------------------------------------------ main
def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def finetune(
    data,
    out: str | os.PathLike,
    weights: str | os.PathLike = "small-denoise-gray",
    *,
    minutes: float | None = 10.0,
    steps: int | None = None,
    axes: str | None = None,
    normalisation: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    config: FinetuneConfig | None = None,
    callback: Callable[[FinetuneProgress], bool | None] | None = None,
    progress: bool = False,
    setup_callback: Callable[[int, int], None] | None = None,
    **options,
) -> FinetuneResult:
    """Fine-tune a MIRNet-v2 denoiser on noisy images alone (self-supervised) and save the best model.

    Parameters
    ----------
    data : array, path, or list of these
        Noisy images: numpy, dask or zarr arrays, tif/png/zarr files, or folders of them. Read patch
        by patch, so they may be larger than memory.
    out : path
        The model file to write (``.pth``); the resumable state goes to the user cache
        (:func:`state_path`), not beside it.
    weights : str or path
        The model to start from: a shipped name (default ``small-denoise-gray``), a file or a URL.
    minutes, steps : float, int
        Budget: the run ends at whichever comes first (``minutes=None`` for steps only). ``minutes``
        counts the whole call, set-up included (reading patches, measuring the noise, validating the
        source model): set-up samples fewer patches when it would use more than a third of it, and
        the run may overrun by the step or validation under way when the time is up.
    axes : str, optional
        Axes of array inputs, e.g. ``"ZYX"``, ``"TYX"``, ``"YXC"`` (default: from the file or shape).
    normalisation : {"auto", "fixed", "percentile"}
        Intensity mapping, as in :func:`napari_mirnet.restore`; restore with the same setting.
    resume : bool
        Continue the run saved for ``out`` (same data and settings; a cancelled, interrupted or
        finished run); ``minutes``/``steps`` are the whole run's budget.
    overwrite : bool
        Replace an existing ``out`` (and its saved run). Without it (or ``resume``) an existing ``out``
        is refused. An input image or the source model is never replaced.
    config : FinetuneConfig, optional
        All other settings; keyword ``options`` (``lr=``, ``patch=``, ``objective=`` ...) override it.
    callback : callable, optional
        Called with a :class:`FinetuneProgress` after every step; returning ``False`` stops the run,
        keeping the best model so far.
    progress : bool
        Show a progress bar.
    setup_callback : callable, optional
        Called with ``(patches_read, patches_to_read)`` as set-up reads each patch.

    Returns
    -------
    FinetuneResult
        ``unchanged`` says why, when the saved model is the source model unchanged.

    Raises
    ------
    ValueError
        Bad settings or data, or ``out`` names an input image or the source model.
    napari_mirnet.io.OutputExistsError
        ``out`` exists and neither ``overwrite`` nor ``resume`` was given.
    """
    cfg = _finetune_config(config, options, minutes, steps)
    t_call = _clock(cfg.clock)()  # the budget counts from here: set-up is part of the run
    setup = _SetupClock(_clock(cfg.clock), t_call, minutes, setup_callback)
    out = Path(out)
    source_path = locate(weights)
    # before anything is read or written: a model file must never land on the data or the model it came from
    check_output(out, data, source_path, overwrite=overwrite, resume=resume)
    run = _FinetuneRun.create(data, out, weights, source_path, cfg, minutes, steps, axes, normalisation, setup)
    run.t0 = t_call
    if resume:
        run.resume()
    else:
        run.validate_source()
        run.save_best(0, 0.0)  # the source model is the best so far: a cancel right away keeps it
        run.save_state(0, run.elapsed())  # and the saved run is this one's, not an earlier run's at the same out
    run.setup_s = run.elapsed() - run.elapsed0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc="fine-tune", unit="%", dynamic_ncols=True, file=sys.stderr)
    try:
        stopped = run.loop(callback, bar)
    except KeyboardInterrupt:
        run.save_state(run.step, run.elapsed())
        raise
    finally:
        if bar is not None:
            bar.close()
    return run.finish(stopped)


def _finetune_config(config: FinetuneConfig | None, options: dict, minutes, steps) -> FinetuneConfig:
    """The run's settings (``options`` override ``config``), with the budget checked."""
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        config = FinetuneConfig(**{**asdict(config), **options})
    if minutes is None and steps is None:
        raise ValueError("give a budget: minutes=..., steps=..., or both")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return config


def _source_model(weights, source_path: Path, device) -> tuple[MIRNetV2, dict]:
    """The denoiser to start from (``weights`` as the caller named it, found at ``source_path``) and its
    metadata; other kinds of model are refused."""
    model = load_model(source_path, device)
    source_meta = dict(getattr(model, "meta", {}) or {})
    if model.config.dual_pixel or model.config.in_channels != model.config.out_channels:
        raise ValueError(f"weights={weights!r} is not a denoiser (dual-pixel model); pick a denoising model")
    task = source_meta.get("task", "denoise")
    if task not in ("denoise", None):
        raise ValueError(f"weights={weights!r} is a {task} model; self-supervised fine-tuning is for denoisers")
    return model, source_meta


@dataclass
class _FinetuneRun:
    """One fine-tuning run: the model, optimiser and moving average, the data, and the best model so far."""

    cfg: FinetuneConfig
    out: Path
    weights: str | os.PathLike  # as the caller named them (recorded in the metadata)
    minutes: float | None
    steps: int | None
    normalisation: str
    device: torch.device
    model: MIRNetV2
    source_path: Path
    source_meta: dict
    source_sha: str
    sources: list
    dataset: _Data
    fingerprint: str
    pairs: str
    corr_info: dict
    val: torch.Tensor
    opt: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    eval_model: MIRNetV2  # the validated model: the moving average, else the raw weights themselves
    best_sd: dict[str, torch.Tensor]
    step: int = 0
    elapsed0: float = 0.0  # budget spent before this session (resumed runs)
    t0: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = 0
    source_val: float = math.inf
    setup_s: float = 0.0
    start_step: int = 0  # the step this session started from (resumed runs)

    @classmethod
    def create(
        cls, data, out: Path, weights, source_path: Path, cfg: FinetuneConfig, minutes, steps, axes, normalisation,
        setup: _SetupClock | None = None,
    ) -> _FinetuneRun:  # fmt: skip
        """Load the source model, index the data's planes, hold out validation patches, measure the noise."""
        device = resolve_device(cfg.device)
        model, source_meta = _source_model(weights, source_path, device)
        sources = _as_sources(data, axes)
        planes = _planes(sources, model.config.in_channels, normalisation)
        if setup is not None:
            # the uniformity, fingerprint and noise samples, after the validation patches
            setup.total += 32 + min(16, len(planes) * 4) + 16
        dataset = _Data(planes, cfg.patch, cfg.val_patches, cfg.seed, setup)
        rng0 = np.random.default_rng([cfg.seed, 1])
        _check_not_uniform(dataset, rng0)
        fingerprint = _fingerprint(sources, planes, setup)
        pairs, corr_info = _choose_pairs(cfg.pairs, dataset, rng0)
        val = torch.from_numpy(dataset.val).to(device)

        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        ema = None
        if cfg.ema:
            ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        eval_model = MIRNetV2(model.config).to(device).eval()
        for p in eval_model.parameters():
            p.requires_grad_(False)
        # the source model is the best so far until a validation beats it
        best_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(
            cfg=cfg, out=out, weights=weights, minutes=minutes, steps=steps, normalisation=normalisation,
            device=device, model=model, source_path=source_path, source_meta=source_meta,
            source_sha=model.weights_sha256, sources=sources, dataset=dataset, fingerprint=fingerprint,
            pairs=pairs, corr_info=corr_info, val=val, opt=opt, ema=ema, eval_model=eval_model, best_sd=best_sd,
        )  # fmt: skip

    # -------------------------------------------------------------------------------------- clock
    @property
    def clock(self) -> Callable[[], float]:
        return _clock(self.cfg.clock)

    def elapsed(self) -> float:
        return self.elapsed0 + self.clock() - self.t0

    def fraction(self, it: int, el: float) -> float:
        """The share of the budget (steps or time, whichever is further) used after ``it`` steps."""
        f = 0.0
        if self.steps is not None:
            f = max(f, it / self.steps)
        if self.minutes is not None:
            f = max(f, el / (60.0 * float(self.minutes)))
        return min(f, 1.0)

    # -------------------------------------------------------------------------------------- start
    def resume(self) -> None:
        """Take the run saved next to ``out``, refusing one made on other data or another source model."""
        spath = state_path(self.out)
        if not spath.is_file():
            raise FileNotFoundError(f"resume=True but there is no saved state at {spath}; start without resume")
        st = torch.load(spath, map_location="cpu", weights_only=True)
        if st["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"resume=True but the data differs from the run saved in {spath} "
                "(other images, axes or normalisation); start a new run or use the same data"
            )
        if st["source_sha256"] != self.source_sha:
            raise ValueError(f"resume=True but weights={self.weights!r} is not the model the saved run started from")
        self.model.load_state_dict(st["params"])
        self.opt.load_state_dict(st["optimizer"])
        if self.ema is not None and "ema" in st:
            for k, v in st["ema"].items():
                self.ema[k].copy_(v)
        self.step, self.elapsed0 = int(st["step"]), float(st["elapsed"])
        self.start_step = self.step
        self.losses = [tuple(v) for v in st["losses"]]
        self.val_losses = [tuple(v) for v in st["val_losses"]]
        self.best_val, self.best_step = float(st["best_val"]), int(st["best_step"])
        self.source_val = float(st["source_val"])
        self.best_sd = {k: v.to(self.device) for k, v in st["best_params"].items()}
        self.pairs = st["pairs"]

    def validate_source(self) -> None:
        """Measure the source model: the value later validations must beat."""
        self.sync_eval()
        self.source_val = _validate(self.cfg, self.eval_model, self.val, self.pairs, self.cfg.seed)
        self.best_val, self.best_step = self.source_val, 0
        self.val_losses.append((0, self.source_val))

    # -------------------------------------------------------------------------------------- loop
    def loop(self, callback, bar) -> bool:
        """Step until the budget is used (False) or ``callback`` returns False (True)."""
        cfg = self.cfg
        last_val_frac = self.fraction(self.step, self.elapsed())  # set-up's time is spent, not progress to validate
        self.model.train()
        ema = self.ema
        ema_pairs = [(ema[k], v) for k, v in self.model.state_dict().items() if k in ema] if ema is not None else []
        while True:
            frac = self.fraction(self.step, self.elapsed())
            if frac >= 1.0:
                return False
            lv = self.train_step(frac)
            if ema is not None:
                with torch.no_grad():
                    d = min(cfg.ema, (1 + self.step) / (10 + self.step))
                    for avg, cur in ema_pairs:
                        avg.lerp_(cur, 1.0 - d)
            self.losses.append((self.step, lv))
            elapsed = self.elapsed()
            frac = self.fraction(self.step, elapsed)
            info = FinetuneProgress(self.step, lv, frac, elapsed, best_val=self.best_val, best_step=self.best_step)
            if frac - last_val_frac >= cfg.val_every or frac >= 1.0:
                last_val_frac = frac
                info.val_loss = self.validate(self.step, elapsed)
                info.best_val, info.best_step, info.model = self.best_val, self.best_step, self.eval_model
            if bar is not None:
                bar.n = int(100 * frac)
                bar.set_postfix(step=self.step, loss=f"{lv:.3g}", best=f"{self.best_val:.3g}@{self.best_step}")
            if callback is not None and callback(info) is False:
                return True

    def train_step(self, frac: float) -> float:
        """One optimiser step (cosine learning rate at ``frac`` of the budget) on patches seeded by the step."""
        cfg = self.cfg
        lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * frac))
        for g in self.opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, self.step, 2])
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(rng.integers(0, 2**62)))
        x = torch.stack([_augment(torch.from_numpy(c), k, self.pairs) for c, k in self.dataset.batch(rng, cfg.batch)])
        x = x.to(self.device)
        loss = _objective_loss(cfg, self.model, x, gen, self.pairs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    def sync_eval(self) -> None:
        sd = self.model.state_dict()
        if self.ema is not None:
            sd = {**sd, **self.ema}
        self.eval_model.load_state_dict(sd)

    def validate(self, it: int, el: float) -> float:
        """Validate the current model; keep (and save) it when it is the best so far; save the state."""
        self.sync_eval()
        v = _validate(self.cfg, self.eval_model, self.val, self.pairs, self.cfg.seed)
        self.val_losses.append((it, v))
        if v < self.best_val:
            self.best_val, self.best_step = v, it
            self.best_sd = {k: t.detach().clone() for k, t in self.eval_model.state_dict().items()}
            self.save_best(it, el)
        self.save_state(it, el)
        return v

    def finish(self, stopped: bool) -> FinetuneResult:
        """Validate the last step (unless just done), write the final files and say how the run went."""
        elapsed = self.elapsed()
        if not self.val_losses or self.val_losses[-1][0] != self.step:
            self.validate(self.step, elapsed)
        self.save_best(self.step, elapsed)  # the final metadata (steps, curves), with the best weights
        self.save_state(self.step, elapsed)
        return FinetuneResult(
            self.out, self.step, self.best_step, self.best_val, self.source_val, self.losses, self.val_losses,
            stopped, elapsed, self.unchanged_reason(stopped, elapsed), self.setup_s,
        )  # fmt: skip

    def unchanged_reason(self, stopped: bool, elapsed: float) -> str:
        """Why the saved model is the source model unchanged, in words; "" when a step improved it."""
        if self.best_step > 0:
            return ""
        keep = "the saved model is the source model, unchanged"
        if self.step == 0:
            if stopped:
                return f"cancelled before the first training step: {keep}"
            return (
                f"the budget ran out before the first training step (set-up, reading patches and measuring "
                f"the noise, took {self.setup_s:.0f} s of {elapsed:.0f} s): {keep}; give more minutes"
            )
        n = self.step - self.start_step
        return (
            f"none of the {self.step} training steps ({n} in this run) lowered the validation loss below the "
            f"source model's ({self.source_val:.4g}; best {min(v for _, v in self.val_losses):.4g}): {keep}. "
            "Give it more minutes or steps (one step takes "
            f"{max(elapsed - self.setup_s, 0.0) / max(n, 1):.1f} s here), or it already suits this noise"
        )

    # -------------------------------------------------------------------------------------- files
    def save_best(self, it: int, el: float) -> None:
        """The best weights so far, in fp16, with the run's metadata, to ``out``."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        params = {
            k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in self.best_sd.items()
        }
        _save(self.out, {"params": params, "meta": self.meta(it, el)})

    def save_state(self, it: int, el: float) -> None:
        """Everything a resume needs, to :func:`state_path` of ``out``."""
        spath = state_path(self.out)
        spath.parent.mkdir(parents=True, exist_ok=True)
        ema = self.ema
        _save(
            spath,
            {
                "params": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                **({"ema": {k: v.cpu() for k, v in ema.items()}} if ema is not None else {}),
                "optimizer": self.opt.state_dict(),
                "best_params": {k: v.detach().cpu() for k, v in self.best_sd.items()},
                "best_val": self.best_val,
                "best_step": self.best_step,
                "source_val": self.source_val,
                "step": it,
                "elapsed": el,
                "losses": [list(v) for v in self.losses],
                "val_losses": [list(v) for v in self.val_losses],
                "fingerprint": self.fingerprint,
                "source_sha256": self.source_sha,
                "pairs": self.pairs,
                "config": asdict(self.cfg),
            },
        )

    def meta(self, it: int, el: float) -> dict:
        """The model file's metadata: the official keys plus the data's and the run's record."""
        return {
            "task": "denoise",
            "config": self.model.config.to_dict(),
            "global_residual": True,
            "normalisation": {
                **NORMALISATION,
                "mode": self.normalisation,
                "note": f"fine-tuned with normalisation={self.normalisation!r}: restore with the same",
            },
            "training_data": self._data_meta(),
            "degradation": {"kind": "self-supervised", "noise": "the data's own (unknown)"},
            "code_version": code_version(),
            "finetune": self._run_meta(it, el),
            "params_dtype": "float16",
        }

    def _data_meta(self) -> dict:
        prev_data = self.source_meta.get("training_data", {}) or {}
        return {
            "description": "the user's noisy images (self-supervised: no clean targets)",
            "fingerprint": self.fingerprint,
            "sources": [f"{type(a).__name__}{tuple(a.shape)} {np.dtype(a.dtype)} axes {ax}" for a, ax in self.sources],
            "n_planes": len(self.dataset.planes),
            "initialised_from": Path(str(self.weights)).name,
            "earlier_runs": list(prev_data.get("earlier_runs", []))
            + [
                {
                    "file": Path(str(self.source_path)).name,
                    "training": self.source_meta.get("training"),
                    "images": prev_data.get("images"),
                    "degradation": self.source_meta.get("degradation"),
                }
            ],
        }

    def _run_meta(self, it: int, el: float) -> dict:
        return {
            "source_model": str(self.weights),
            "source_sha256": self.source_sha,
            "objective": self.cfg.objective,
            "pairs": self.pairs,
            **self.corr_info,
            "steps": it,
            "best_step": self.best_step,
            "elapsed_s": round(el, 1),
            "clock": self.cfg.clock,
            "val_loss": {"source": self.source_val, "best": self.best_val},
            "loss_curve": [[s, round(v, 7)] for s, v in _thin(self.losses)],
            "val_curve": [[s, round(v, 7)] for s, v in self.val_losses],
            "settings": asdict(self.cfg),
            "budget": {"minutes": self.minutes, "steps": self.steps},
        }


def _thin(curve: list[tuple[int, float]], n: int = 500) -> list[tuple[int, float]]:
    """At most ``n`` points of a loss curve, each the mean of its stretch (metadata stays small)."""
    if len(curve) <= n:
        return curve
    edges = np.linspace(0, len(curve), n + 1).astype(int)
    return [(curve[b - 1][0], float(np.mean([v for _, v in curve[a:b]]))) for a, b in zip(edges[:-1], edges[1:])]
