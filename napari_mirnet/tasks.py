"""The restoration tasks as data: their checkpoints, input conventions and scales, and weights choice."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SHIPPED_GRAY_DENOISER", "TASKS", "Task", "check_weights", "choose_weights", "get_task"]


@dataclass(frozen=True)
class Task:
    """What one restoration task needs: its checkpoints, its input convention and its geometry."""

    name: str
    title: str
    official: dict[int, str]  # scale (1 for non-SR tasks) -> official asset
    shipped: dict[int, str]  # scale -> our default model, where we ship one
    scales: tuple[int, ...] = (1,)
    dual_pixel: bool = False
    # how the official model was trained to see its input; also what the output range means
    input_note: str = "8-bit sRGB / 255"
    extra: dict = field(default_factory=dict)

    def default_weights(self, scale: int = 1, shipped_available: set[str] | None = None) -> str:
        """Our shipped model for this scale when there is one, otherwise the official checkpoint."""
        ours = self.shipped.get(scale)
        if ours and (shipped_available is None or ours in shipped_available):
            return ours
        return self.official[scale if scale in self.official else 1]

    def check_scale(self, scale: int | None) -> int:
        """``scale`` as an int if this task supports it (None: 1); a ValueError says which do.

        Only whole numbers pass: ``int(2.5)`` would run a x2.5 request as x2, and ``"2"`` or
        ``True`` are not factors.
        """
        allowed = ", ".join(map(str, self.scales))
        if scale is not None and (isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Integral)):
            raise ValueError(
                f"scale={scale!r} is not a whole number; task {self.name!r} supports scale {allowed} (pass an int)"
            )
        scale = 1 if scale is None else int(scale)
        if scale not in self.scales:
            raise ValueError(f"task {self.name!r} supports scale {allowed}, not {scale}")
        return scale


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("denoise", "Denoise", {1: "real_denoising"}, {1: "small-denoise-rgb"}),
        Task(
            "super_resolution",
            "Super-resolution",
            {2: "sr_x2", 3: "sr_x3", 4: "sr_x4"},
            {2: "small-sr-x2"},
            scales=(2, 3, 4),
            input_note="low-res 8-bit / 255, bicubic-resized to the target size first",
        ),
        Task("lowlight", "Low-light enhancement", {1: "enhancement_lol"}, {1: "small-lowlight"}),
        Task("enhance", "Contrast enhancement", {1: "enhancement_fivek"}, {}),
        Task(
            "defocus",
            "Dual-pixel defocus deblur",
            {1: "dual_pixel_defocus_deblurring"},
            {},
            dual_pixel=True,
            input_note="16-bit left and right views / 65535, left first",
        ),
    )
}
#: Shipped gray denoiser, chosen over the RGB one for single-channel data.
SHIPPED_GRAY_DENOISER = "small-denoise-gray"


def get_task(task: str) -> Task:
    """The :class:`Task` called ``task``; a ValueError lists the valid names."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None


def choose_weights(task: str, scale: int, n_channels: int, weights=None, *, colour: bool | None = None) -> str:
    """The weights a run uses: the caller's, else the shipped model for the task, else the official one.

    Every front end asks this one function (the engine when it prepares a run, the widgets when they
    say what 'auto' means). ``colour`` says whether the image is RGB(A) (see
    ``processing.channel_layout``); None: 3 or 4 channels are. A multispectral image (RGB plus a
    near-infrared band, say) is denoised band by band with the gray model: one model per run.
    """
    if weights is not None:
        return check_weights(weights)
    from .weights import shipped_models  # here: the task table is read where the catalogue is not needed

    shipped = set(shipped_models())
    colour = n_channels in (3, 4) if colour is None else colour
    if task == "denoise" and not colour and SHIPPED_GRAY_DENOISER in shipped:
        return SHIPPED_GRAY_DENOISER
    return get_task(task).default_weights(scale, shipped)


def check_weights(weights):
    """``weights`` if it can name a model (a non-empty name, path or URL); a clear error otherwise.

    Anything else would be turned into a string and looked up: ``weights=''`` as the current
    folder, ``weights=True`` as a model called 'True'.
    """
    if isinstance(weights, os.PathLike):
        return weights
    if not isinstance(weights, str):
        raise TypeError(
            f"weights={weights!r} is a {type(weights).__name__}; pass a model name, a checkpoint path or a URL "
            "(or none for the task's model)"
        )
    if not weights.strip():
        raise ValueError(
            f"weights={weights!r} is empty; pass a model name, a checkpoint path or a URL (or none for the task's model)"
        )
    return weights
