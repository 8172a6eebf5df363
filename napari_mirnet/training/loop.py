"""The training loop that supervised training and self-supervised fine-tuning share, and its parts.

One implementation of each: the budget (steps and/or time) as a fraction of the run, the cosine
learning rate with warm-up, the per-step random generators, the 8 flips/rotations, the moving
average of the weights, the cuDNN autotuner switch, and progress and cancelling through
:mod:`napari_mirnet.progress`. An objective subclasses :class:`Loop` with its own step and its own
bookkeeping after each step (logs, validation, checkpoints).

Reproducibility: every step draws its patches, augmentations and noise from generators seeded with
``(seed, step)`` alone, so a run resumed from its saved state follows the same loss curve as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..progress import Bar, Reporter

__all__ = [
    "Loop",
    "MovingAverage",
    "augment",
    "budget_fraction",
    "cosine_lr",
    "cudnn_benchmark",
    "reporter_for",
    "step_rngs",
]


def budget_fraction(step: int, elapsed: float, steps: int | None = None, seconds: float | None = None) -> float:
    """The share of the budget used after ``step`` steps and ``elapsed`` seconds: whichever of the
    step and time budgets (None = none) is further along, at most 1."""
    f = 0.0
    if steps:
        f = max(f, step / steps)
    if seconds:
        f = max(f, elapsed / seconds)
    return min(f, 1.0)


def cosine_lr(p: float, lr: float, lr_min: float, warmup: float = 0.0) -> float:
    """The learning rate at fraction ``p`` of the run: a linear warm-up over the first ``warmup``
    share, then a cosine decay from ``lr`` to ``lr_min``."""
    if warmup > 0 and p < warmup:
        return lr * max(p / warmup, 1e-3)
    q = (p - warmup) / max(1e-12, 1.0 - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * q))


def step_rngs(seed: int, step: int, device, *stream: int) -> tuple[np.random.Generator, torch.Generator]:
    """The generators of one step: numpy's for crops and choices, torch's (on ``device``) for noise.

    ``stream`` keeps the draws of different uses of one step apart.
    """
    rng = np.random.default_rng([seed, step, *stream])
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rng.integers(0, 2**62)))
    return rng, gen


def augment(x: torch.Tensor, k: int, flips_only: bool = False) -> torch.Tensor:
    """Symmetry ``k`` (0-7) of the square: the 8 flips/rotations, or with ``flips_only`` the 4 flips
    that keep rows as rows (noise that differs along rows and columns must stay as it is)."""
    if flips_only:
        x = x.flip(-1) if k & 1 else x
        return x.flip(-2) if k & 2 else x
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


class MovingAverage:
    """An exponential moving average of a model's floating-point weights (validated and saved instead of them)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def follow(self, model: torch.nn.Module) -> None:
        """Pair the average with ``model``'s weights (state_dict() tensors share storage with the parameters)."""
        self._pairs = [(self.avg[k], v) for k, v in model.state_dict().items() if k in self.avg]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the weights after ``step`` steps."""
        # the decay ramps up over the first steps (1+t)/(10+t), so that the start weights fade quickly
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, cur in self._pairs:
            avg.lerp_(cur, 1.0 - d)


@contextlib.contextmanager
def cudnn_benchmark(device) -> Iterator[None]:
    """cuDNN's autotuner on while a CUDA run trains (few patch sizes: the tuning pays), and the
    process's own setting back afterwards, whatever happens."""
    old = torch.backends.cudnn.benchmark
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def reporter_for(
    job: str, progress, cancel: threading.Event | None, *, desc: str, total: int | None = None, unit: str = "step",
    initial: int = 0,
) -> tuple[Reporter, Bar | None]:  # fmt: skip
    """The run's :class:`~napari_mirnet.progress.Reporter` from what the caller passed: ``progress=True``
    a tqdm bar (returned, to be closed), False or None nothing, a callable receives each Progress."""
    bar = None
    if progress is True:
        bar = Bar(desc, total=total, unit=unit, initial=initial)
        callback = bar
    elif progress is False or progress is None:
        callback = None
    else:
        callback = progress
    return Reporter(job, callback, cancel), bar


class Loop:
    """The loop of a run: steps until the budget is used or the run is stopped.

    A subclass holds ``model``, ``ema`` (a :class:`MovingAverage` or None), ``step``, ``elapsed0``
    (budget spent before this session) and ``t0``, and defines :meth:`fraction`,
    :meth:`train_step` and :meth:`after_step`.
    """

    model: torch.nn.Module
    ema: MovingAverage | None
    step: int
    elapsed0: float
    t0: float
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def elapsed(self) -> float:
        """Seconds of budget used, earlier sessions included."""
        return self.elapsed0 + self.clock() - self.t0

    def fraction(self, step: int, elapsed: float) -> float:
        """The share of the budget used (see :func:`budget_fraction`)."""
        raise NotImplementedError

    def train_step(self, frac: float) -> float:
        """One optimiser step at ``frac`` of the budget (``self.step`` counts it); returns its loss."""
        raise NotImplementedError

    def after_step(self, loss: float, reporter: Reporter) -> bool:
        """Record, report and save after a step; True stops the run (a callback said so, or cancel)."""
        raise NotImplementedError

    def session(self) -> contextlib.AbstractContextManager:
        """What stays open while the loop runs (a log file)."""
        return contextlib.nullcontext()

    def on_cancel(self) -> None:
        """Called when the run is cancelled before a step (a subclass saves its state)."""

    def run(self, reporter: Reporter) -> bool:
        """Step until the budget is used (False) or the run is stopped (True)."""
        if self.ema is not None:
            self.ema.follow(self.model)
        self.model.train()
        with self.session():
            while True:
                frac = self.fraction(self.step, self.elapsed())
                if frac >= 1.0:
                    return False
                if reporter.cancelled:
                    self.on_cancel()
                    return True
                loss = self.train_step(frac)
                if self.ema is not None:
                    self.ema.update(self.step)
                if self.after_step(loss, reporter):
                    return True
