"""Supervised training of MIRNet-v2 restoration models from clean images: the objective and :func:`train`.

The recipe follows the paper (L1 loss, Adam 2e-4, cosine decay, gradient-norm clipping, 8-way
flips/rotations, progressive patch sizes) with sizes fit for a CPU or a single GPU; the loop itself
(budget, schedule, per-step seeds, moving average, progress) is :mod:`.loop`'s.

Checkpoints use the official layout ``{'params': state_dict}`` plus ``'meta'`` (task, network config,
normalisation, data, degradation, code version) and, for resuming, ``'optimizer'``, ``'scheduler'``,
``'rng'``, ``'iteration'``, ``'train_config'`` and ``'loss_window'``; with ``ema`` on, the moving
average of the weights is kept under ``'params_ema'`` (BasicSR's name).
:func:`~.checkpoints.export_model` writes the slim fp16 ``{'params', 'meta'}`` file that is shipped
or shared (the average, when there is one).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..degradations import degrade
from ..devices import resolve_device
from ..model import MIRNetV2
from ..weights import read_checkpoint
from .checkpoints import (
    best_path,
    get_rng_state,
    lineage,
    loss_log_path,
    save_atomic,
    set_rng_state,
    train_meta,
    truncate_log,
    val_log_path,
)
from .config import LOSS_NAMES, TrainConfig
from .dense_groups import use_dense_groups
from .images import load_images
from .loop import Loop, MovingAverage, budget_fraction, cosine_lr, cudnn_benchmark, reporter_for, step_rngs
from .supervised_data import _Data, _LeafBank, procedural_record
from .validation import validate_supervised

__all__ = ["LOSSES", "TrainResult", "psnr_loss", "train"]


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Minus the mean per-sample PSNR (data range 1): each patch weighs the same, whatever its noise
    level, where L2 lets the noisiest ones dominate (HINet's PSNR loss). ``eps`` caps a clean patch's
    weight at 50 dB."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10.0 * torch.log10(mse + eps).mean()


LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss, "psnr": psnr_loss}
assert tuple(LOSSES) == LOSS_NAMES


@dataclass
class TrainResult:
    """Where the checkpoint went and how the run went (``stopped_early``: a callback or cancel ended it)."""

    checkpoint: Path
    iteration: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False
    elapsed: float = 0.0
    #: the weights with the best validation PSNR (when validation pairs were given) and that PSNR
    best_checkpoint: Path | None = None
    best_val_psnr: float | None = None


def train(
    config: TrainConfig | None = None,
    clean=None,
    degraded=None,
    out: str | os.PathLike = "mirnet_train.pth",
    resume: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    data_description: dict | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    progress: bool | Callable = True,
    validation: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train (or resume training) a MIRNet-v2 model and write checkpoints to ``out``.

    Parameters
    ----------
    config : TrainConfig, optional
        The run's settings; on resume, None takes the checkpoint's (default ``TrainConfig()``).
    clean : folder, file, list of files or arrays
        Clean target images.
    degraded : same as ``clean``, optional
        Matching inputs, or None to synthesise them with ``config.degradation``.
    out : path
        The training checkpoint to write; its loss log goes next to it (:func:`loss_log_path`).
    resume : path, optional
        A checkpoint written by this function, to continue from.
    init : path, optional
        A model file (any ``{'params': ...}`` file, fp16 included) to start a new run from
        (fine-tuning); ignored on resume.
    data_description : dict, optional
        Recorded in the metadata as ``training_data`` (with the image count and a fingerprint).
    callback : callable, optional
        ``callback(iteration, loss)`` after every step; returning False stops the run (a checkpoint
        is saved).
    progress : bool or callable
        True shows a progress bar; a callable receives a :class:`napari_mirnet.progress.Progress`
        after every step (its ``detail`` is the step's loss).
    validation : dict, optional
        name -> (degraded, clean) float images (H, W, C), e.g. from :func:`validation_pairs`: measured
        every ``config.val_every`` iterations and at the end; the best weights go to
        :func:`best_path` and their log to :func:`val_log_path`. Select checkpoints by these, never by
        test images.
    cancel : threading.Event, optional
        Set it to stop the run as a callback returning False does (the checkpoint is saved).

    Returns
    -------
    TrainResult
        The checkpoint, the iteration reached and the losses.
    """
    cfg, ck = _train_config(config, resume)
    if clean is None:
        raise ValueError("no training images given (clean=...)")
    device = resolve_device(cfg.device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _TrainRun.create(cfg, device, out, clean, degraded, data_description, init if ck is None else None)
    run.validation, run.callback = validation or None, callback
    if ck is not None:
        run.resume_from(ck, resume)
    else:
        for stale in (run.log_path, val_log_path(out), best_path(out)):
            stale.unlink(missing_ok=True)
    with cudnn_benchmark(device):
        reporter, bar = reporter_for(
            "train", progress, cancel, desc=f"train {cfg.task}", total=cfg.iters, initial=run.step
        )
        run.t0 = time.perf_counter()
        try:
            stopped = run.run(reporter)
        except KeyboardInterrupt:
            run.checkpoint(run.elapsed())
            raise
        finally:
            if bar is not None:
                bar.close()
        elapsed = run.elapsed()
        if not stopped:
            run.checkpoint(elapsed)
        if run.validation and run.val_at != run.step:
            run.validate()
    return TrainResult(
        checkpoint=out,
        iteration=run.step,
        losses=run.losses,
        stopped_early=stopped,
        elapsed=elapsed,
        best_checkpoint=best_path(out) if run.validation else None,
        best_val_psnr=run.best_psnr if run.validation else None,
    )


def _train_config(config: TrainConfig | None, resume) -> tuple[TrainConfig, dict | None]:
    """The run's settings and, on resume, the checkpoint (whose settings stand in for a missing config)."""
    ck = None
    if resume is not None:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        stored = TrainConfig.from_dict(ck["train_config"])
        if config is None:
            config = stored
        else:
            diff = [
                k
                for k, v in asdict(stored).items()
                if k not in ("device", "save_every", "log_every") and asdict(config)[k] != v
            ]
            if diff:
                print(f"warning: resuming with changed settings: {', '.join(diff)}", file=sys.stderr)
    return (config if config is not None else TrainConfig()), ck


def _init_from(model: MIRNetV2, init, desc: dict) -> None:
    """Load ``init``'s weights into ``model`` and add its lineage to the data description."""
    params, prev = read_checkpoint(init)  # any convention; a moving average first, as for inference
    model.load_state_dict({k: v.float() for k, v in params.items()})
    desc["initialised_from"] = Path(init).name
    if prev:  # keep the lineage: a fine-tuned model says how its start was trained
        desc["earlier_runs"] = lineage(init, prev)


@dataclass
class _TrainRun(Loop):
    """One training run: the model, optimiser and moving average, and what the loop counts and logs."""

    cfg: TrainConfig
    device: torch.device
    out: Path
    data: _Data
    desc: dict
    paired: bool
    model: MIRNetV2
    opt: torch.optim.Optimizer
    ema: MovingAverage | None
    use_amp: bool
    step: int = 0
    elapsed0: float = 0.0  # seconds spent before this session (resumed runs)
    t0: float = 0.0
    window: list[float] = field(default_factory=list)  # losses since the last log line
    losses: list[tuple[int, float]] = field(default_factory=list)
    leaves: _LeafBank | None = None
    validation: dict | None = None
    callback: Callable[[int, float], bool | None] | None = None
    best_psnr: float = -math.inf
    val_at: int = -1  # the iteration last validated
    log: object = None  # the open loss log while the loop runs
    last: tuple[float, int, int] = (0.0, 0, 0)  # the last step's learning rate, patch and batch size

    @classmethod
    def create(cls, cfg: TrainConfig, device, out: Path, clean, degraded, data_description, init) -> _TrainRun:
        """Load the images and build the seeded model (from ``init`` when given) and its optimiser."""
        clean_list = load_images(clean)
        degraded_list = load_images(degraded) if degraded is not None else None
        data = _Data(clean_list, degraded_list, cfg.channels, device)
        desc = dict(data_description or {"description": "user-supplied images"})
        desc.setdefault("n_images", len(clean_list))
        desc["fingerprint"] = data.fingerprint()

        torch.manual_seed(cfg.seed)
        model = MIRNetV2(cfg.model_config()).to(device)
        if init is not None:
            _init_from(model, init, desc)
        if cfg.dense_groups:
            use_dense_groups(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        ema = MovingAverage(model, cfg.ema) if cfg.ema else None
        use_amp = (cfg.amp and device.type == "cuda") or (cfg.amp_cpu and device.type == "cpu")
        leaves = None
        if cfg.procedural and degraded_list is None:
            leaves = _LeafBank(cfg, device)
            desc["procedural"] = procedural_record(cfg)
        run = cls(cfg, device, out, data, desc, degraded_list is not None, model, opt, ema, use_amp)
        run.leaves = leaves
        return run

    @property
    def log_path(self) -> Path:
        return loss_log_path(self.out)

    def resume_from(self, ck: dict, resume) -> None:
        """Take the weights, optimiser, counters and random state from a training checkpoint."""
        if ck["meta"]["training_data"].get("fingerprint") != self.desc["fingerprint"]:
            print("warning: resuming on different training images than the checkpoint's", file=sys.stderr)
        self.model.load_state_dict(ck["params"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.ema is not None:
            if "params_ema" not in ck:
                raise ValueError(f"{resume} was trained without ema: resume it with ema=0")
            for k, v in ck["params_ema"].items():
                self.ema.avg[k].copy_(v)
        self.step, self.elapsed0 = int(ck["iteration"]), float(ck["scheduler"]["elapsed"])
        self.window = [float(v) for v in ck.get("loss_window", [])]
        set_rng_state(ck["rng"])
        truncate_log(self.log_path, self.step)
        truncate_log(val_log_path(self.out), self.step)
        best = best_path(self.out)
        if best.exists():
            sel = torch.load(best, map_location="cpu", weights_only=True)["meta"].get("selection", {})
            if sel.get("iteration", math.inf) <= self.step:
                self.best_psnr = float(sel.get("val_psnr", -math.inf))

    def meta(self, elapsed: float) -> dict:
        return train_meta(self.cfg, self.desc, self.step, elapsed, self.paired, self.use_amp)

    def checkpoint(self, elapsed: float) -> None:
        """Save everything a resume needs to ``out``."""
        cfg = self.cfg
        save_atomic(
            self.out,
            {
                "params": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                **({"params_ema": {k: v.cpu() for k, v in self.ema.avg.items()}} if self.ema is not None else {}),
                "meta": self.meta(elapsed),
                "optimizer": self.opt.state_dict(),
                "scheduler": {
                    "kind": "cosine",
                    "lr": cfg.lr,
                    "lr_min": cfg.lr_min,
                    "warmup": cfg.warmup,
                    "iters": cfg.iters,
                    "time_budget": cfg.time_budget,
                    "elapsed": elapsed,
                    "progress": self.fraction(self.step, elapsed),
                },  # fmt: skip
                "rng": get_rng_state(),
                "iteration": self.step,
                "train_config": asdict(cfg),
                "loss_window": list(self.window),
            },
        )

    # ------------------------------------------------------------------------------------ the loop
    def fraction(self, step: int, elapsed: float) -> float:
        return budget_fraction(step, elapsed, self.cfg.iters, self.cfg.time_budget)

    @contextlib.contextmanager
    def session(self):
        """The loss log stays open while the loop runs."""
        with self.log_path.open("a") as self.log:
            yield

    def on_cancel(self) -> None:
        self.checkpoint(self.elapsed())

    def train_step(self, frac: float) -> float:
        """One optimiser step on a batch drawn for this iteration alone; returns its loss."""
        cfg = self.cfg
        patch, bs = cfg.stages[min(int(frac * len(cfg.stages)), len(cfg.stages) - 1)]
        lr = cosine_lr(frac, cfg.lr, cfg.lr_min, cfg.warmup)
        self.last = (lr, patch, bs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        rng, gen = step_rngs(cfg.seed, self.step, self.device)
        target, inp = self.data.batch(rng, patch, bs, cfg.augment, cfg.channel_shuffle)
        if self.leaves is not None:
            k = int(rng.binomial(bs, cfg.procedural))
            if k:
                target = torch.cat([self.leaves.crops(self.step, rng, k, patch, cfg.augment), target[k:]])
        if inp is None:
            inp = degrade(target, cfg.degradation, gen)
        if cfg.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            pred = self.model(inp)
        loss = LOSSES[cfg.loss](pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    def after_step(self, loss: float, reporter) -> bool:
        """Log the loss, report, checkpoint every ``save_every`` steps (and when stopped), validate."""
        cfg = self.cfg
        self.record(loss)
        lr, patch, _ = self.last
        reporter.report(
            self.step, cfg.iters, unit="step", detail=loss, note=f"loss={loss:.4f}, lr={lr:.2e}, patch={patch}"
        )
        stop = (self.callback is not None and self.callback(self.step, loss) is False) or reporter.cancelled
        if self.step % cfg.save_every == 0 or stop:
            self.checkpoint(self.elapsed())
        if self.validation and cfg.val_every and self.step % cfg.val_every == 0:
            self.validate()
            self.model.train()
        return stop

    def validate(self) -> float:
        """Mean PSNR on the validation pairs (of the moving average, when kept); keeps the best weights."""
        return validate_supervised(self)

    def record(self, lv: float) -> None:
        """Keep the step's loss and write a log line (the mean since the last one) every ``log_every``."""
        self.losses.append((self.step, lv))
        self.window.append(lv)
        if self.step % self.cfg.log_every == 0:
            lr, patch, bs = self.last
            rec = {
                "iter": self.step, "loss": sum(self.window) / len(self.window), "lr": lr, "patch": patch,
                "batch": bs, "elapsed_s": round(self.elapsed(), 3),
            }  # fmt: skip
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
            self.window = []
