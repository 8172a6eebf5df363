"""One fine-tuning run: its model, optimiser, moving average and best candidate, its steps on the
shared :class:`~.loop.Loop`, the held-out checks of :mod:`.selection` that the final choice
(:mod:`.finetune_choice`) compares, and what it reports."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..detail_filter import DetailFilter
from ..devices import resolve_device
from ..model import MIRNetV2
from ..weights import load_model
from .config import FinetuneConfig
from .finetune_choice import FinalChoice
from .finetune_files import RunFiles
from .finetune_result import FinetuneProgress, FinetuneResult
from .loop import Loop, MovingAverage, budget_fraction, cosine_lr, step_rngs
from .noise_shape import band_noise_level, noise_level, pd_stride
from .objectives import _augment, objective_loss, resolve_objective, validation_loss
from .output import state_path
from .patches import _as_sources, _check_not_uniform, _choose_pairs, _Data, _fingerprint, _planes, _SetupClock
from .selection import HeldOutCheck

__all__ = ["FinetuneProgress", "FinetuneResult", "process_clock"]


def process_clock(kind: str) -> Callable[[], float]:
    """The clock a budget counts: "cpu" seconds of this process, else wall seconds."""
    return time.process_time if kind == "cpu" else time.perf_counter


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
class _FinetuneRun(Loop, RunFiles, FinalChoice):
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
    ema: MovingAverage | None
    eval_model: MIRNetV2  # the validated model: the moving average, else the raw weights themselves
    best_sd: dict[str, torch.Tensor]
    source_sd: dict[str, torch.Tensor]
    source_shuffle: int | tuple[int, ...]  # the source model's own pixel-shuffle stride(s) (1 unless fine-tuned so)
    source_filter: DetailFilter | None  # and its own detail filter (None unless it was fine-tuned so)
    check: HeldOutCheck
    source_scores: np.ndarray | None = None  # of the held-out check, per unit
    check_s: float = 0.0  # seconds one model's held-out check takes
    val_s: float = 0.0  # seconds one validation takes
    step_s: float = 0.0  # seconds the last training step took
    kept: str = ""
    selection: dict = field(default_factory=dict)
    #: how the weights in ``out`` restore: the pixel-shuffle stride and the detail filter (the source's
    #: until the final choice keeps another)
    restore_shuffle: int | tuple[int, ...] = 1
    restore_filter: DetailFilter | None = None
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
    callback: Callable[[FinetuneProgress], bool | None] | None = None
    last_val_frac: float = 0.0  # the budget used at the last validation

    @classmethod
    def create(
        cls, data, out: Path, weights, source_path: Path, cfg: FinetuneConfig, minutes, steps, axes, normalisation,
        setup: _SetupClock | None = None, nodata: float | None = None,
    ) -> _FinetuneRun:  # fmt: skip
        """Load the source model, index the data's planes, hold out validation patches, measure the noise."""
        device = resolve_device(cfg.device)
        model, source_meta = _source_model(weights, source_path, device)
        sources = _as_sources(data, axes, nodata)
        planes = _planes(sources, model.config.in_channels, normalisation)
        if setup is not None:
            # the uniformity, fingerprint and noise samples, after the validation patches
            setup.total += 32 + min(16, len(planes) * 4) + 16
        dataset = _Data(planes, cfg.patch, cfg.val_patches, cfg.seed, setup)
        rng0 = np.random.default_rng([cfg.seed, 1])
        _check_not_uniform(dataset, rng0)
        fingerprint = _fingerprint(sources, planes, setup)
        pairs, corr_info, sample = _choose_pairs(cfg.pairs, dataset, rng0)
        val = torch.from_numpy(dataset.val).to(device)
        corr = corr_info["noise_autocorrelation"]
        # noise correlated in both directions is read in the band where it stands out from texture: the
        # quietest blocks of photographs read it at 1.2-2.4x its variance, this at 1.1-1.4x
        level = band_noise_level(sample, corr) if pd_stride(pairs) > 1 else noise_level(dataset.val, corr)
        check = HeldOutCheck.create(corr, level, cfg.seed)
        objective, corr_info["objective_reason"] = resolve_objective(cfg.objective, pairs)
        # the run and its files hold the resolved settings
        cfg = cfg.with_objective(objective)
        source_shuffle, model.pixel_shuffle = model.pixel_shuffle, 1  # training splits patches itself
        source_filter, model.detail_filter = model.detail_filter, None

        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        ema = MovingAverage(model, cfg.ema) if cfg.ema else None
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
            source_sd=best_sd, source_shuffle=source_shuffle, source_filter=source_filter, check=check,
            restore_shuffle=source_shuffle, restore_filter=source_filter,
        )  # fmt: skip

    # -------------------------------------------------------------------------------------- clock
    @property
    def clock(self) -> Callable[[], float]:
        return process_clock(self.cfg.clock)

    def fraction(self, it: int, el: float) -> float:
        """The share of the budget (steps or time, whichever is further) used after ``it`` steps; the
        time for the last step, a validation and the final held-out checks is kept back from a
        ``minutes`` budget."""
        reserve = self.final_checks() * self.check_s + self.val_s + self.step_s
        seconds = None if self.minutes is None else max(60.0 * float(self.minutes) - reserve, 1e-3)
        return budget_fraction(it, el, self.steps, seconds)

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
                self.ema.avg[k].copy_(v)
        self.step, self.elapsed0 = int(st["step"]), float(st["elapsed"])
        self.start_step = self.step
        self.losses = [tuple(v) for v in st["losses"]]
        self.val_losses = [tuple(v) for v in st["val_losses"]]
        self.best_val, self.best_step = float(st["best_val"]), int(st["best_step"])
        self.source_val = float(st["source_val"])
        self.best_sd = {k: v.to(self.device) for k, v in st["best_params"].items()}
        self.pairs = st["pairs"]
        saved = st.get("config", {}).get("objective", self.cfg.objective)
        if saved != self.cfg.objective:  # a resume continues the saved run as it trained
            self.cfg = dataclasses.replace(self.cfg, lr=st["config"].get("lr")).with_objective(saved)
            self.corr_info["objective_reason"] = f"as the resumed run trained ({saved})"
        if "source_scores" in st:
            self.source_scores, self.check_s = np.asarray(st["source_scores"]), float(st["check_s"])
        else:  # saved by a version without the held-out check
            self.check_source()

    def validate_source(self) -> None:
        """Measure the source model: its validation loss (the run's first point) and its held-out
        check through its own inference path (what the fine-tuned model must beat at the end)."""
        self.sync_eval()
        t = self.clock()
        self.source_val = validation_loss(self.cfg, self.eval_model, self.val, self.pairs, self.cfg.seed, self.check)
        self.val_s = self.clock() - t
        self.best_val, self.best_step = self.source_val, 0
        self.val_losses.append((0, self.source_val))
        self.check_source()

    def check_source(self) -> None:
        """The source model's held-out check, and how long one check takes (kept back from the budget)."""
        t = self.clock()
        self.source_scores = self.check_scores(self.source_sd, self.source_shuffle, self.source_filter)
        self.check_s = self.clock() - t

    def check_scores(
        self, sd: dict[str, torch.Tensor], shuffle: int | tuple[int, ...], detail: DetailFilter | None = None
    ) -> np.ndarray:
        """The held-out check of the weights ``sd`` restoring at pixel-shuffle stride ``shuffle`` (a
        tuple: averaged over those strides), with the detail filter ``detail`` (None: none)."""
        self.eval_model.load_state_dict(sd)
        self.eval_model.pixel_shuffle, self.eval_model.detail_filter = shuffle, detail
        try:
            return self.check.scores(self.eval_model, self.val)
        finally:
            self.eval_model.pixel_shuffle, self.eval_model.detail_filter = 1, None

    # -------------------------------------------------------------------------------------- loop
    @contextlib.contextmanager
    def session(self):
        """Set-up's time is spent, not progress towards the first validation."""
        self.last_val_frac = self.fraction(self.step, self.elapsed())
        yield

    def train_step(self, frac: float) -> float:
        """One optimiser step (cosine learning rate at ``frac`` of the budget) on patches seeded by the step."""
        cfg, t = self.cfg, self.clock()
        lr = cosine_lr(frac, cfg.lr, cfg.lr_min)
        for g in self.opt.param_groups:
            g["lr"] = lr
        rng, gen = step_rngs(cfg.seed, self.step, "cpu", 2)
        x = torch.stack([_augment(torch.from_numpy(c), k, self.pairs) for c, k in self.dataset.batch(rng, cfg.batch)])
        x = x.to(self.device)
        loss = objective_loss(cfg, self.model, x, gen, self.pairs, self.check)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.step_s = self.clock() - t
        return float(loss.detach())

    def after_step(self, loss: float, reporter) -> bool:
        """Record the loss, validate every ``val_every`` of the budget (and at its end), report."""
        self.losses.append((self.step, loss))
        elapsed = self.elapsed()
        frac = self.fraction(self.step, elapsed)
        info = FinetuneProgress(self.step, loss, frac, elapsed, best_val=self.best_val, best_step=self.best_step)
        if frac - self.last_val_frac >= self.cfg.val_every or frac >= 1.0:
            self.last_val_frac = frac
            info.val_loss = self.validate(self.step, elapsed)
            info.best_val, info.best_step, info.model = self.best_val, self.best_step, self.eval_model
        note = f"step={self.step}, loss={loss:.3g}, best={self.best_val:.3g}@{self.best_step}"
        reporter.report(int(100 * frac), 100, unit="%", detail=info, note=note)
        return (self.callback is not None and self.callback(info) is False) or reporter.cancelled

    def sync_eval(self) -> None:
        sd = self.model.state_dict()
        if self.ema is not None:
            sd = {**sd, **self.ema.avg}
        self.eval_model.load_state_dict(sd)

    def validate(self, it: int, el: float) -> float:
        """Validate the current model; keep (and save) it when it is the best so far; save the state."""
        self.sync_eval()
        v = validation_loss(self.cfg, self.eval_model, self.val, self.pairs, self.cfg.seed, self.check)
        self.val_losses.append((it, v))
        if v < self.best_val:  # the best candidate so far; ``out`` keeps the source until the final check
            self.best_val, self.best_step = v, it
            self.best_sd = {k: t.detach().clone() for k, t in self.eval_model.state_dict().items()}
        self.save_state(it, el)
        return v

    def finish(self, stopped: bool) -> FinetuneResult:
        """Validate the last step (unless just done), write the final files and say how the run went."""
        elapsed = self.elapsed()
        if not self.val_losses or self.val_losses[-1][0] != self.step:
            self.validate(self.step, elapsed)
        self.select(stopped)
        elapsed = self.elapsed()
        self.save_best(self.step, elapsed)  # the final metadata (steps, curves), with the kept weights
        self.save_state(self.step, elapsed)
        return FinetuneResult(
            self.out, self.step, self.best_step, self.best_val, self.source_val, self.losses, self.val_losses,
            stopped, elapsed, self.unchanged_reason(stopped, elapsed), self.setup_s, self.pairs,
            self.corr_info.get("pairs_reason", ""), self.kept, self.selection,
            self.corr_info.get("noise_autocorrelation", {}), self.restore_shuffle, self.restore_filter is not None,
            self.cfg.objective, self.corr_info.get("objective_reason", ""),
        )  # fmt: skip
