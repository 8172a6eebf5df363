"""Pre- and post-processing around the model (numpy; torch only in :func:`upscale`, when it runs).

``intensity``: the map of an image's values to the model's [0, 1] and back (``sampling`` and
``wide`` are its percentile sample and its arithmetic past float32); ``channels``: how an image's
channels meet the model's; ``nodata``: holes filled before the model and marked after it;
``resample``: the super-resolution models' bicubic input.
"""

from __future__ import annotations

from .channels import ChannelAdapter, channel_layout, channel_order, finish_channels, prepare_channels
from .intensity import CLIP_MARGIN, IntensityMap, check_dtype, check_nodata
from .nodata import fill_nodata, mark_nodata
from .resample import upscale

__all__ = [
    "CLIP_MARGIN",
    "ChannelAdapter",
    "IntensityMap",
    "channel_layout",
    "channel_order",
    "check_dtype",
    "check_nodata",
    "fill_nodata",
    "finish_channels",
    "mark_nodata",
    "prepare_channels",
    "upscale",
]
