"""The settings of training and fine-tuning runs, and the names they accept (imports no torch).

The command line builds its flags from these dataclasses' fields, so this module must stay light:
whatever needs torch (the network's config, the loss functions, the default degradations) is
imported inside the method that uses it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..degradation_specs import TASK_DEFAULTS

__all__ = [
    "FinetuneConfig",
    "LOSS_NAMES",
    "MIN_EDGE",
    "OBJECTIVES",
    "PAIRS",
    "TRAINABLE_TASKS",
    "TrainConfig",
    "degradation_from_args",
    "parse_stages",
]

#: Tasks that can be trained from clean images with a synthetic degradation.
TRAINABLE_TASKS = ("denoise", "super_resolution", "lowlight")
#: The supervised losses (``napari_mirnet.training.supervised.LOSSES`` holds their functions).
LOSS_NAMES = ("l1", "l2", "psnr")
#: The self-supervised objectives and neighbour pairings of fine-tuning.
OBJECTIVES = ("auto", "neighbor2neighbor", "blindspot", "recorrupted")
PAIRS = ("auto", "any", "vertical", "horizontal", "pd2", "pd3", "pd4")
#: the learning rate of each objective unless ``lr`` is given: recorrupted pairs learn the correlated
#: noise the source model never saw (validation photographs, 3 CPU minutes: 1e-4 29.2 dB, 3e-4 30.0,
#: 6e-4 29.7); the others adjust a model that already denoises
LR = {"neighbor2neighbor": 1e-4, "blindspot": 1e-4, "recorrupted": 3e-4}
#: The smallest plane edge we fine-tune on: a patch's half-resolution sub-images must be at least 16 px.
MIN_EDGE = 32


def _task_default(task: str) -> dict:
    """A fresh copy of the synthetic degradation ``task`` trains with unless told otherwise."""

    return json.loads(json.dumps(TASK_DEFAULTS[task]))


@dataclass
class TrainConfig:
    """Everything that defines a training run (besides the images)."""

    task: str = "denoise"
    channels: int = 3
    n_feat: int = 32
    chan_factor: float = 1.5
    n_mrb: int = 1
    bias: bool = False
    #: synthetic degradation spec (see napari_mirnet.degradations); None = the task's default,
    #: ignored when degraded images are given
    degradation: dict | None = None
    iters: int = 2000
    lr: float = 2e-4
    lr_min: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    #: gradient-norm clipping threshold (the paper's 0.01; Adam rescales steps anyway)
    grad_clip: float = 0.01
    #: fraction of the run with a linear learning-rate warm-up before the cosine decay
    warmup: float = 0.0
    #: progressive training: (patch size, batch size) stages, each for an equal share of the run
    stages: tuple[tuple[int, int], ...] = ((64, 8), (96, 4), (128, 2))
    augment: bool = True
    #: also permute the colour channels of each crop at random (3-channel models; noise that is
    #: independent per channel looks the same after any permutation)
    channel_shuffle: bool = False
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    #: decay of an exponential moving average of the weights, kept beside them and exported instead
    #: of them (0 = off; 0.999 is usual): it evens out the step-to-step noise of small batches
    ema: float = 0.0
    #: "l1" (the paper's), "l2", or "psnr" (minus the mean per-patch PSNR) for a last fine-tune
    loss: str = "l1"
    #: stop by wall clock after this many seconds (schedule then follows elapsed time, not bit-exact)
    time_budget: float | None = None
    device: str = "auto"
    #: bf16 autocast on CUDA
    amp: bool = True
    #: bf16 autocast on the CPU too: about 1.5x faster per step where the CPU has native bf16
    #: (AVX512-BF16 or AMX; measured with channels_last on a 2-core EPYC), slower elsewhere
    amp_cpu: bool = False
    #: NHWC memory layout (1.2x faster on this 2-core EPYC, 10-30% slower on an H200: time it)
    channels_last: bool = False
    #: fraction of each batch drawn from procedural dead-leaves images instead of the photographs
    #: (:func:`napari_mirnet.synthetic.dead_leaves`; synthetic degradations only)
    procedural: float = 0.0
    #: the dead-leaves images are kept in a bank of this many, of this size, and one of them is
    #: replaced by a new one every ``procedural_refresh`` iterations (an endless supply at a bounded cost)
    procedural_bank: int = 64
    procedural_size: int = 256
    procedural_refresh: int = 4
    #: measure the validation PSNR every this many iterations (and at the end) when validation pairs
    #: are given; the best weights so far go to ``<out>.best.pth`` (0 = only at the end)
    val_every: int = 0
    #: compute the grouped 3x3 convolutions as dense ones with block-diagonal weights (same result
    #: and parameters; more arithmetic, but GPUs may run dense kernels much faster)
    dense_groups: bool = False

    def __post_init__(self):
        if self.task not in TRAINABLE_TASKS:
            raise ValueError(f"task must be one of {TRAINABLE_TASKS}, got {self.task!r}")
        self.stages = tuple((int(p), int(b)) for p, b in self.stages)
        if not self.stages or any(p < 8 or b < 1 for p, b in self.stages):
            raise ValueError(f"stages must be (patch >= 8, batch >= 1) pairs, got {self.stages}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {sorted(LOSS_NAMES)}, got {self.loss!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema is a decay per step in [0, 1) (0 = off, e.g. 0.999), got {self.ema}")
        self.betas = tuple(float(b) for b in self.betas)
        if not 0.0 <= self.procedural <= 1.0:
            raise ValueError(
                f"procedural is the fraction of each batch from dead leaves, in [0, 1], got {self.procedural}"
            )
        if self.procedural and self.procedural_size < max(p for p, _ in self.stages):
            raise ValueError(
                f"procedural_size ({self.procedural_size}) must be at least the largest patch "
                f"({max(p for p, _ in self.stages)})"
            )
        if self.procedural and (self.procedural_bank < 1 or self.procedural_refresh < 1):
            raise ValueError("procedural_bank and procedural_refresh must be at least 1")
        if self.degradation is None:
            self.degradation = _task_default(self.task)

    def model_config(self):
        """The network's :class:`~napari_mirnet.model.MIRNetConfig`."""
        from ..model_config import MIRNetConfig

        return MIRNetConfig(
            in_channels=self.channels,
            out_channels=self.channels,
            n_feat=self.n_feat,
            chan_factor=self.chan_factor,
            n_mrb=self.n_mrb,
            bias=self.bias,
        )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config a checkpoint stored (keys this version lacks are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run. Defaults suit 2 CPU cores and 10 minutes."""

    #: "neighbor2neighbor", "blindspot", "recorrupted" (pairs drawn from the measured noise model), or
    #: "auto": recorrupted for noise correlated in both directions, else neighbor2neighbor
    objective: str = "auto"
    #: which neighbour pairs have independent noise: "auto" measures it, "vertical" pairs pixels of
    #: adjacent rows (for noise correlated along rows), "horizontal" the converse, "any" both,
    #: "pd2"/"pd3"/"pd4" pixels 2/3/4 apart (pixel-shuffle sub-images, for noise correlated over a
    #: few pixels in every direction; the model then restores those sub-images too)
    pairs: str = "auto"
    #: patch edge at full resolution (a multiple of 8) and patches per step
    patch: int = 96
    batch: int = 2
    #: None: the objective's own (1e-4; 3e-4 for recorrupted pairs)
    lr: float | None = None
    lr_min: float = 1e-6
    #: weight of Neighbor2Neighbor's consistency term (ties the half- to the full-resolution output)
    gamma: float = 1.0
    #: blind-spot objective: one masked pixel per ``mask_spacing`` x ``mask_spacing`` cell
    mask_spacing: int = 4
    #: moving average of the weights (validated and saved instead of the raw weights; 0 = off)
    ema: float = 0.98
    #: held-out validation patches (fewer on small data) and how often to validate (fraction of the run)
    val_patches: int = 6
    val_every: float = 0.05
    #: "wall" seconds, or "cpu" seconds of this process (exact CPU cost for benchmarks)
    clock: str = "wall"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {self.pairs!r}")
        if self.patch < MIN_EDGE or self.patch % 8:
            raise ValueError(f"patch must be a multiple of 8 and at least {MIN_EDGE}, got {self.patch}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.lr is not None and not 0 <= self.lr < float("inf"):  # NaN too; 0 trains nothing, as asked
            raise ValueError(f"lr must be a finite learning rate >= 0, got {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {self.clock!r}")
        if self.mask_spacing < 3:
            raise ValueError(f"mask_spacing must be >= 3, got {self.mask_spacing}")

    def with_objective(self, objective: str) -> FinetuneConfig:
        """These settings for the resolved ``objective``; an ``lr`` of None becomes that objective's own."""
        return dataclasses.replace(self, objective=objective, lr=LR[objective] if self.lr is None else self.lr)


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """``"64:8,96:4"`` -> ((64, 8), (96, 4)): (patch, batch) stages, as the command line gives them."""
    try:
        return tuple(tuple(int(v) for v in s.split(":")) for s in text.split(","))  # type: ignore[misc]
    except ValueError:
        raise ValueError("stages look like 64:8,96:4,128:2 (patch:batch,...)") from None


def degradation_from_args(task: str, noise: str | None, sigma_max: float, scale: int) -> dict:
    """The synthetic degradation spec for the CLI's options."""
    if task == "super_resolution":
        return {"kind": "bicubic", "scale": int(scale)}
    if task == "lowlight":
        return _task_default("lowlight")
    gauss = {"kind": "gaussian", "sigma_range": [0.0, float(sigma_max)]}
    pg = {"kind": "poisson_gaussian", "peak_range": [5.0, 300.0], "sigma_range": [0.0, 10.0]}
    if noise == "poisson_gaussian":
        return pg
    if noise == "mixed":
        return {"kind": "mixture", "choices": [gauss, pg], "weights": [0.75, 0.25]}
    return gauss
