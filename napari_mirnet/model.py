"""The MIRNet-v2 network in pure PyTorch, with state-dict names that match the official checkpoints.

Written from the paper (Zamir et al., TPAMI 2022) and the published checkpoint layout; the module
attribute names (``dau_top``, ``skff_mid``, ``gcnet`` ...) exist only so that official weights load
key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .detail_filter import DetailFilter, return_detail
from .model_config import STRIDE, MIRNetConfig, config_from_state_dict

__all__ = [
    "MIRNetConfig",
    "MIRNetV2",
    "STRIDE",
    "at_stride",
    "config_from_state_dict",
    "pixel_shuffle_split",
    "pixel_shuffle_merge",
    "shuffle_strides",
    "self_ensemble",
]

#: RCB 3x3 conv groups of the four RRGs; fixed in the released architecture.
RRG_GROUPS = (1, 2, 4, 4)
_SLOPE = 0.2


def _conv(cin: int, cout: int, k: int, bias: bool, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, groups=groups)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(_SLOPE)


def _lean() -> bool:
    # Without autograd nothing else reads a block's intermediate tensors, so the blocks may update
    # them in place: the same operations in the same order (bit-identical output), about half the
    # peak activation memory. With autograd the plain path keeps every tensor backward needs.
    return not torch.is_grad_enabled()


class ContextBlock(nn.Module):
    """Global context: a softmax-weighted mean over all positions, transformed and added back."""

    def __init__(self, c: int, bias: bool):
        super().__init__()
        self.conv_mask = _conv(c, 1, 1, bias)
        self.channel_add_conv = nn.Sequential(_conv(c, c, 1, bias), _act(), _conv(c, c, 1, bias))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """What is added to every position: a (B, C, 1, 1) tensor."""
        b, c, h, w = x.shape
        weights = self.conv_mask(x).view(b, 1, h * w).softmax(dim=-1)
        context = torch.bmm(x.view(b, c, h * w), weights.transpose(1, 2)).view(b, c, 1, 1)
        return self.channel_add_conv(context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


class RCB(nn.Module):
    """Residual contextual block: two (grouped) 3x3 convs, a context block, a residual."""

    def __init__(self, c: int, bias: bool, groups: int):
        super().__init__()
        self.body = nn.Sequential(_conv(c, c, 3, bias, groups), _act(), _conv(c, c, 3, bias, groups))
        self.gcnet = ContextBlock(c, bias)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _lean():
            conv1, _, conv2 = self.body
            y = conv2(F.leaky_relu_(conv1(x), _SLOPE))
            y += self.gcnet.delta(y)
            return F.leaky_relu_(y, _SLOPE).add_(x)
        return x + self.act(self.gcnet(self.body(x)))


class SKFF(nn.Module):
    """Selective kernel feature fusion of two or more same-shape streams."""

    def __init__(self, c: int, n_inputs: int = 2):
        super().__init__()
        d = max(int(c / 8), 4)
        self.conv_du = nn.Sequential(_conv(c, d, 1, False), _act())
        self.fcs = nn.ModuleList(_conv(d, c, 1, False) for _ in range(n_inputs))

    def _weights(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One (B, C, 1, 1) attention weight per stream, softmax-normalised across the streams."""
        # the sum of the streams' means, not the mean of their sum: equal up to rounding, and no
        # full-size temporary (one feature map less at the peak of every MRB)
        pooled = feats[0].mean(dim=(2, 3), keepdim=True)
        for f in feats[1:]:
            pooled = pooled + f.mean(dim=(2, 3), keepdim=True)
        z = self.conv_du(pooled)
        return torch.stack([fc(z) for fc in self.fcs], dim=1).softmax(dim=1).unbind(1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # sums and products stream by stream rather than over a stacked copy: the same arithmetic in
        # the same order (bit-identical), without two extra copies of every stream, and fast in
        # channels_last, where stacking is not
        weights = self._weights(feats)
        out = feats[0] * weights[0]
        for f, w in zip(feats[1:], weights[1:]):
            out = out + f * w
        return out

    def fuse_(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``forward([a, b])`` computed in place, overwriting ``a`` and ``b`` (inference only)."""
        w_a, w_b = self._weights([a, b])
        return a.mul_(w_a).add_(b.mul_(w_b))


class _Resample(nn.Module):
    # Holds ``body.0.bot`` so that the parameter names match the release.
    def __init__(self, bot: nn.Sequential):
        super().__init__()
        self.body = nn.Sequential(nn.Module())
        self.body[0].bot = bot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body[0].bot(x)


def _down(cin: int, cout: int) -> _Resample:
    pool = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
    return _Resample(nn.Sequential(pool, _conv(cin, cout, 1, False)))


def _up(cin: int, cout: int) -> _Resample:
    upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    return _Resample(nn.Sequential(_conv(cin, cout, 1, False), upsample))


class MRB(nn.Module):
    """Multi-scale residual block: three resolution streams, each RCB applied twice, SKFF fusion."""

    def __init__(self, cfg: MIRNetConfig, groups: int):
        super().__init__()
        top, mid, bot = cfg.stream_channels()
        self.dau_top = RCB(top, cfg.bias, groups)
        self.dau_mid = RCB(mid, cfg.bias, groups)
        self.dau_bot = RCB(bot, cfg.bias, groups)
        self.down2 = _down(top, mid)
        self.down4 = nn.Sequential(_down(top, mid), _down(mid, bot))
        self.up21_1 = _up(mid, top)
        self.up21_2 = _up(mid, top)
        self.up32_1 = _up(bot, mid)
        self.up32_2 = _up(bot, mid)
        self.conv_out = _conv(top, top, 1, cfg.bias)
        self.skff_top = SKFF(top)
        self.skff_mid = SKFF(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, mid, bot = x, self.down2(x), self.down4(x)
        lean = _lean()
        for up32, up21 in ((self.up32_1, self.up21_1), (self.up32_2, self.up21_2)):
            top, mid, bot = self.dau_top(top), self.dau_mid(mid), self.dau_bot(bot)
            if lean:  # the streams are fresh tensors of this block: fuse in place
                mid = self.skff_mid.fuse_(mid, up32(bot))
                top = self.skff_top.fuse_(top, up21(mid))
            else:
                mid = self.skff_mid([mid, up32(bot)])
                top = self.skff_top([top, up21(mid)])
        if lean:
            del mid, bot
            return self.conv_out(top).add_(x)
        return x + self.conv_out(top)


class RRG(nn.Module):
    """Recursive residual group: ``n_mrb`` MRBs and a 3x3 conv, with a residual."""

    def __init__(self, cfg: MIRNetConfig, groups: int):
        super().__init__()
        blocks: list[nn.Module] = [MRB(cfg, groups) for _ in range(cfg.n_mrb)]
        blocks.append(_conv(cfg.n_feat, cfg.n_feat, 3, cfg.bias))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _lean():
            return self.body(x).add_(x)
        return x + self.body(x)


def pixel_shuffle_split(x: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * s * s, C, H / s, W / s): the s x s sub-images of pixels ``s`` apart
    (pixel-shuffle down-sampling); H and W must be multiples of ``s``."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b * s * s, c, h // s, w // s)


def pixel_shuffle_merge(x: torch.Tensor, s: int) -> torch.Tensor:
    """The inverse of :func:`pixel_shuffle_split`."""
    bss, c, hs, ws = x.shape
    b = bss // (s * s)
    x = x.reshape(b, s, s, c, hs, ws).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, hs * s, ws * s)


def at_stride(forward, x: torch.Tensor, s: int) -> torch.Tensor:
    """``forward`` (a same-size restoration) applied to each pixel-shuffle sub-image of stride ``s``
    of ``x`` (B, C, H, W), put back together; ``s`` <= 1: ``forward(x)``."""
    if s <= 1:
        return forward(x)
    h, w = x.shape[-2:]
    return pixel_shuffle_merge(forward(pixel_shuffle_split(_pad_to(x, s), s)), s)[..., :h, :w]


def shuffle_strides(pixel_shuffle: int | tuple[int, ...]) -> tuple[int, ...]:
    """A model's ``pixel_shuffle`` as a tuple of strides: ``3`` -> ``(3,)``, ``(3, 4)`` -> ``(3, 4)``."""
    return tuple(int(k) for k in pixel_shuffle) if isinstance(pixel_shuffle, (tuple, list)) else (int(pixel_shuffle),)


class MIRNetV2(nn.Module):
    """MIRNet-v2. Takes (B, C, H, W) in [0, 1]; any H and W (reflection-padded to a multiple of 4).

    ``pixel_shuffle`` (an attribute, 1 by default; a fine-tuned model's file says its value) > 1
    restores each of the s x s sub-images of pixels ``s`` apart on its own and puts them back: a
    denoiser fine-tuned on noise correlated over a few pixels sees, in each sub-image, noise that
    is nearly independent between neighbours, as in its training. A tuple of strides averages the
    restorations at each (each stride aliases different detail; one pass per stride).
    """

    pixel_shuffle: int | tuple[int, ...] = 1
    #: the noise for :func:`return_detail` after restoring, or None (the default: the output as
    #: the network gives it); a fine-tuned model's file says which
    detail_filter: DetailFilter | None = None

    def __init__(self, config: MIRNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config if config is not None else MIRNetConfig(**kwargs)
        if config is not None and kwargs:
            raise TypeError("pass either a MIRNetConfig or keyword arguments, not both")
        top, mid, bot = cfg.stream_channels()
        if int(bot / cfg.chan_factor) != mid or int(mid / cfg.chan_factor) != top:
            raise ValueError(
                f"n_feat={cfg.n_feat} with chan_factor={cfg.chan_factor} gives streams of "
                f"{top}/{mid}/{bot} channels that do not scale back exactly; choose values where "
                "n_feat * chan_factor**2 is a whole number"
            )
        for g in RRG_GROUPS:
            if any(c % g for c in (top, mid, bot)):
                raise ValueError(f"stream channels {top}/{mid}/{bot} must all be divisible by {g}")
        self.config = cfg
        self.conv_in = _conv(cfg.in_channels, cfg.n_feat, 3, cfg.bias)
        self.body = nn.Sequential(*(RRG(cfg, g) for g in RRG_GROUPS))
        self.conv_out = _conv(cfg.n_feat, cfg.out_channels, 3, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strides = shuffle_strides(self.pixel_shuffle)
        y = at_stride(self._forward_full, x, strides[0])
        for k in strides[1:]:
            y = y + at_stride(self._forward_full, x, k)
        if len(strides) > 1:
            y = y / len(strides)
        if self.detail_filter is not None and y.shape == x.shape:
            y = return_detail(x, y, self.detail_filter)
        return y

    def _forward_full(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = _pad_to(x, STRIDE)
        if self.config.dual_pixel:
            shallow = self.conv_in(x)
            out = self.conv_out(self.body(shallow) + shallow)
        else:
            out = self.conv_out(self._deep_features(x)) + x[:, : self.config.out_channels]
        return out[..., :h, :w]

    def _deep_features(self, x: torch.Tensor) -> torch.Tensor:
        # one group at a time, rebinding: each group's input (the first is the full-resolution
        # shallow map) is freed once the group has run; ``self.body(self.conv_in(x))`` would hold
        # it until the last group is done (a caller's argument lives as long as the call)
        y = self.conv_in(x)
        for rrg in self.body:
            y = rrg(y)
        return y


def _pad_to(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x`` padded at the bottom and right to multiples of ``m``: reflection, and replicate for the
    1-3 px images reflection cannot pad."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % m, (-w) % m
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def self_ensemble(forward, x: torch.Tensor, dual_pixel: bool = False) -> torch.Tensor:
    """Test-time augmentation: the mean of ``forward`` over the 8 flips/rotations of ``x`` (B, C, H, W).

    Each output is mapped back before averaging, so any restoration (super-resolution included)
    can be averaged. Dual-pixel input gets only the vertical flip: its left/right views encode a
    horizontal disparity that rotations and horizontal flips would break.
    """
    if dual_pixel:
        views = [(False, 0, False), (False, 0, True)]
    else:
        views = [(t, k, False) for t in (False, True) for k in range(4)]
    total = None
    for transpose, k, vflip in views:
        v = x.transpose(-1, -2) if transpose else x
        v = torch.rot90(v, k, (-2, -1)) if k else v
        v = v.flip(-2) if vflip else v
        y = forward(v).float()
        y = y.flip(-2) if vflip else y
        y = torch.rot90(y, -k, (-2, -1)) if k else y
        y = y.transpose(-1, -2) if transpose else y
        # a running sum keeps memory near that of one forward; the copy keeps forward's output
        # (which may be its input) untouched
        total = y.clone() if total is None else total.add_(y)
    return total / len(views)
