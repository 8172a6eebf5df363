"""MIRNet-v2's hyper-parameters and input geometry without torch: what planning and a checkpoint's metadata need."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["STRIDE", "MIRNetConfig", "config_from_state_dict"]

#: Input height and width must be multiples of this (two 2x poolings inside every MRB).
STRIDE = 4


@dataclass(frozen=True)
class MIRNetConfig:
    """Hyper-parameters of one MIRNet-v2 network; the defaults are every official release's."""

    in_channels: int = 3
    out_channels: int = 3
    n_feat: int = 80
    chan_factor: float = 1.5
    n_mrb: int = 2
    bias: bool = False
    dual_pixel: bool = False

    def stream_channels(self) -> tuple[int, int, int]:
        """Channels of the full, 1/2 and 1/4 resolution streams."""
        mid = int(self.n_feat * self.chan_factor)
        return self.n_feat, mid, int(mid * self.chan_factor)

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_state_dict(sd: dict) -> MIRNetConfig:
    """Infer the network's configuration from parameter names and shapes."""
    try:
        conv_in, conv_out = sd["conv_in.weight"], sd["conv_out.weight"]
        mid = sd["body.0.body.0.dau_mid.body.0.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not a MIRNet-v2 state dict: key {err.args[0]!r} is missing") from None
    n_feat = int(conv_in.shape[0])
    n_mrb = 0
    while f"body.0.body.{n_mrb}.dau_top.body.0.weight" in sd:
        n_mrb += 1
    in_ch, out_ch = int(conv_in.shape[1]), int(conv_out.shape[0])
    return MIRNetConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        n_feat=n_feat,
        chan_factor=_round_factor(mid / n_feat),
        n_mrb=n_mrb,
        bias="conv_in.bias" in sd,
        # the only released multi-input model is the dual-pixel one, with its feature-level residual
        dual_pixel=in_ch != out_ch,
    )


def _round_factor(f: float) -> float:
    # mid = int(n_feat * cf) truncates, so recover the simplest factor that reproduces it
    for denom in (1, 2, 4, 8, 10, 100):
        cand = round(f * denom) / denom
        if math.isclose(cand, f, rel_tol=0.02):
            return cand
    return f
