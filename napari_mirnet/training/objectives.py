"""The self-supervised objectives of fine-tuning: Neighbor2Neighbor sub-sampling and blind-spot
masking, on the patches themselves or on their pixel-shuffle sub-images ("pd" modes), recorrupted
pairs drawn from the measured noise model, which one "auto" means for a mode, and the fixed
validation loss that tracks the run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import pixel_shuffle_split
from .config import FinetuneConfig
from .loop import augment
from .noise_shape import pd_stride

__all__ = ["ALPHA", "VARIANCE", "objective_loss", "resolve_objective", "validation_loss"]

#: recorrupted pairs: the input gets ``ALPHA`` times a noise draw added, the target the same draw
#: divided by ``ALPHA`` taken away (Pang et al., Recorrupted-to-Recorrupted, CVPR 2021, use 0.5)
ALPHA = 0.5
#: recorrupted pairs draw noise of this share of the measured variance: where the draw is stronger
#: than the noise the target's noise opposes the input's and the model learns to take away detail
#: (validation photographs: level read 1.25x too high in std, 28.2 dB where the true level gave 30.2),
#: where weaker it keeps a little noise; the measured level is 1.02-1.11x the truth on the validation
#: stacks (docs/finetune.md)
VARIANCE = 0.8


def resolve_objective(objective: str, pairs: str) -> tuple[str, str]:
    """The objective a run trains with, and why: ``"auto"`` is ``"recorrupted"`` for noise correlated
    in both directions (a pd mode) and ``"neighbor2neighbor"`` otherwise; any other is itself."""
    if objective != "auto":
        return objective, f"objective={objective!r} was given"
    if pd_stride(pairs) > 1:
        # validation stacks, 3 CPU minutes (docs/finetune.md): on noise std 0.05 recorrupted pairs at full
        # resolution beat the best sub-image restoration by 0.37 dB (photographs) and 0.49 (fluorescence);
        # on std 0.10 they had not caught up yet, and the check keeps the source's sub-images there
        # (on the photographs; on fluorescence it erred, by 0.46 dB)
        return "recorrupted", (
            "noise correlated in both directions: recorrupted pairs at full resolution, noise drawn from "
            "the measured level and correlation"
        )
    return "neighbor2neighbor", "neighbour pairs suit this noise"


# "any" (isotropic noise): 2x2 cell positions 0 1 / 2 3 and neighbour pairs (a, b) in both orders.
# "vertical" / "horizontal" (noise correlated along rows / columns): cells of two whole rows / columns,
# positions 0 and 1, so each sub-image keeps every pixel of the rows (columns) it takes.
_PAIRS = {"any": [(0, 1), (1, 0), (2, 3), (3, 2), (0, 2), (2, 0), (1, 3), (3, 1)]}
_LINE_PAIRS = [(0, 1), (1, 0)]


def _augment(x: torch.Tensor, k: int, pairs: str) -> torch.Tensor:
    # with direction-dependent noise only flips keep rows as rows; otherwise all 8 symmetries
    return augment(x, k, flips_only=pairs in ("vertical", "horizontal"))


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


def _subimages(x: torch.Tensor, pairs: str) -> tuple[torch.Tensor, str]:
    """For a "pd<s>" mode the pixel-shuffle sub-images of ``x`` (cropped to a multiple of 2s, so that
    each sub-image has 2x2 cells) and the pairs used within them ("any"); else ``x`` and ``pairs``."""
    s = pd_stride(pairs)
    if s == 1:
        return x, pairs
    h, w = x.shape[-2:]
    x = x[..., : h - h % (2 * s), : w - w % (2 * s)]
    return pixel_shuffle_split(x, s), "any"


def _recorrupted_loss(model, x: torch.Tensor, gen, noise) -> torch.Tensor:
    """Recorrupted pairs: ``x + a z`` to ``x - z / a``, ``z`` drawn from the noise model ``noise``
    (a :class:`~.selection.HeldOutCheck`). Where ``z`` has the noise's covariance the two sides' noise
    is uncorrelated, whatever its correlation between pixels: the loss is the error against the clean
    image plus a constant, at full resolution (so nothing is aliased) and pixel for pixel (so nothing
    is blurred, unlike pairs of neighbours whose signal differs)."""
    z = noise.draw(x, gen) * VARIANCE**0.5
    return F.mse_loss(model(x + ALPHA * z), x - z / ALPHA)


def objective_loss(cfg: FinetuneConfig, model, x, gen, pairs: str, noise=None):
    """The training loss of ``cfg.objective`` (resolved, not "auto") on the noisy batch ``x`` (B, C,
    H, W); ``noise`` is the run's noise model, which recorrupted pairs draw from."""
    if cfg.objective == "recorrupted":
        return _recorrupted_loss(model, x, gen, noise)
    x, pairs = _subimages(x, pairs)
    if cfg.objective == "neighbor2neighbor":
        return _n2n_loss(model, x, gen, pairs, cfg.gamma)
    return _blindspot_loss(model, x, gen, pairs, cfg.mask_spacing)


@torch.no_grad()
def validation_loss(cfg: FinetuneConfig, model, val: torch.Tensor, pairs: str, seed: int, noise=None) -> float:
    """The objective's main term on the held-out patches, with fixed draws (lower is better)."""
    # fixed sub-samplings / masks / noise draws, so that values compare across the run; the main term only
    n = val.shape[0]
    if cfg.objective == "recorrupted":
        cpu = torch.Generator().manual_seed(seed)  # the noise model draws on the CPU
        return sum(float(_recorrupted_loss(model, x[None], cpu, noise)) for x in val for _ in range(2)) / (2 * n)
    gen = torch.Generator(device=val.device)
    gen.manual_seed(seed)
    val, pairs_in = _subimages(val, pairs)
    total = 0.0
    for x in val.split(val.shape[0] // n):  # one held-out patch (its sub-images) at a time
        for _ in range(2):
            if cfg.objective == "neighbor2neighbor":
                g1, g2, _ = _subsample(x, gen, pairs_in)
                total += float(F.mse_loss(model(g1), g2))
            else:
                total += float(_blindspot_loss(model, x, gen, pairs_in, cfg.mask_spacing))
    return total / (2 * n)
