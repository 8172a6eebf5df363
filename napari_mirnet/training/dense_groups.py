"""Grouped convolutions computed as dense ones (block-diagonal weights): a speed switch for GPUs whose
dense kernels are much faster; results, parameters and checkpoints are unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["use_dense_groups"]


class _BlockDiagonalConv2d(torch.nn.Conv2d):
    """A grouped convolution run as a dense one whose weight is zero outside the group blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        o, i = self.out_channels // g, self.in_channels // g
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, *self.weight.shape[2:])
        for k in range(g):
            dense[k * o : (k + 1) * o, k * i : (k + 1) * i] = self.weight[k * o : (k + 1) * o]
        return F.conv2d(x, dense, self.bias, self.stride, self.padding, self.dilation, 1)


def use_dense_groups(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a model's grouped convolutions to :class:`_BlockDiagonalConv2d`, in place.

    Parameters and state-dict keys stay as they are, so checkpoints are unchanged.
    """
    for m in model.modules():
        if type(m) is torch.nn.Conv2d and m.groups > 1 and m.padding_mode == "zeros":
            m.__class__ = _BlockDiagonalConv2d
    return model
