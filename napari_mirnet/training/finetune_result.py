"""What a fine-tuning run reports: the progress after each step and the result, with the mode it
trained in and which model its file holds, in words for the command line and the widget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..model import MIRNetV2, shuffle_strides

__all__ = ["FinetuneProgress", "FinetuneResult"]


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
    #: the mode trained in ("any", "vertical", "horizontal", "pd2"...), and why ("auto" measured it)
    pairs: str = ""
    pairs_reason: str = ""
    #: "fine-tuned", "source weights" (restoring another way) or "source": which model the file holds,
    #: and the held-out check that decided
    kept: str = ""
    selection: dict = field(default_factory=dict)
    #: the noise's autocorrelation along rows ("horizontal") and columns ("vertical") at lags 1-4
    noise_correlation: dict = field(default_factory=dict)
    #: how the file's model restores: the pixel-shuffle stride (a tuple: the strides whose
    #: restorations it averages), and whether it gives detail back after
    #: (:func:`napari_mirnet.detail_filter.return_detail`)
    pixel_shuffle: int | tuple[int, ...] = 1
    detail_filter: bool = False
    #: the objective trained with ("neighbor2neighbor", "blindspot", "recorrupted"), and why
    objective: str = ""
    objective_reason: str = ""

    def summary(self) -> str:
        """What the file holds and why, in one paragraph (the command line and the widget print it)."""
        mode = f"mode {self.pairs}: {self.pairs_reason}" if self.pairs else ""
        if self.objective == "recorrupted":
            mode += f"; trained on recorrupted pairs ({self.objective_reason})"
        if self.unchanged:
            return f"{self.unchanged}. {mode}".strip()
        sel = self.selection
        gain = sel.get("estimated_gain_db", float("nan"))
        about = f"about {gain:+.2f} dB, " if math.isfinite(gain) else ""
        what = f"the fine-tuned model of step {self.best_step}" if self.best_step else "the source model's weights"
        strides = shuffle_strides(self.pixel_shuffle)
        if len(strides) > 1:
            what += (
                f", restoring pixel-shuffle sub-images of strides {', '.join(map(str, strides[:-1]))} and "
                f"{strides[-1]} and averaging them (one pass each)"
            )
        elif strides[0] > 1:
            what += f", restoring pixel-shuffle sub-images of stride {strides[0]}"
        if self.detail_filter:
            what += " and giving back the detail the residual holds beyond the noise"
        return (
            f"kept {what}: the held-out check (SURE) finds it better than the source model as it was "
            f"({about}error {sel.get('delta_percent', 0):+.3g}% +- {sel.get('se_percent', 0):.2g}%). {mode}"
        ).strip()
