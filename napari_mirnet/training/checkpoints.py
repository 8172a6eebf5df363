"""Checkpoint files of training runs: atomic saves, the exported model, the logs beside a checkpoint,
the random state a resume restores, and a model's lineage."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "NORMALISATION",
    "best_path",
    "code_version",
    "export_model",
    "lineage",
    "loss_log_path",
    "save_atomic",
    "train_meta",
    "val_log_path",
]

NORMALISATION = {
    "input_range": [0.0, 1.0],
    "output_range": [0.0, 1.0],
    "integer_inputs": "divided by the dtype's maximum (uint8 / 255, uint16 / 65535)",
    "layout": "B,C,H,W",
}


def code_version() -> str:
    """napari-mirnet's version (installed metadata, else the source tree's pyproject.toml)."""
    from ..version import __version__

    return __version__


def save_atomic(path: Path, obj: dict) -> None:
    """``torch.save`` to a temporary name, then rename: never a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, half: bool = True) -> Path:
    """Write the slim ``{'params', 'meta'}`` file (fp16 params by default) from a training checkpoint."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # a run with a moving average of its weights ships the average (what it was trained to give)
    source = ck.get("params_ema") or ck["params"]
    params = {k: (v.half() if half and v.is_floating_point() else v) for k, v in source.items()}
    meta = dict(ck["meta"])
    meta["exported_weights"] = "params_ema" if ck.get("params_ema") else "params"
    meta["params_dtype"] = "float16" if half else "float32"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(out, {"params": params, "meta": meta})
    return out


def loss_log_path(checkpoint: str | os.PathLike) -> Path:
    """The JSON-lines loss log that lives next to a checkpoint."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".loss.jsonl")


def best_path(checkpoint: str | os.PathLike) -> Path:
    """Where a run keeps the weights with the best validation PSNR so far (next to its checkpoint)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".best.pth")


def val_log_path(checkpoint: str | os.PathLike) -> Path:
    """The JSON-lines validation log next to a checkpoint."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".val.jsonl")


def get_rng_state() -> dict:
    """The global random state of torch, numpy and Python (and CUDA where started), for a checkpoint."""
    # plain types and tensors only, so that torch.load(weights_only=True) can read it back
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        # a different number of GPUs fails: the per-iteration generators do not need this state
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def truncate_log(path: Path, upto: int) -> None:
    """Keep the JSON-lines log entries up to iteration ``upto``."""
    # entries after the checkpoint's iteration are re-run after a resume; drop them to avoid duplicates
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["iter"] <= upto]
    path.write_text("".join(ln + "\n" for ln in keep))


def lineage(file: str | os.PathLike, meta: dict | None) -> list[dict]:
    """The ``earlier_runs`` of a model started from ``file`` (whose metadata is ``meta``): those of
    ``file`` itself, then ``file``'s own run, so that a fine-tuned model says how its start was trained."""
    prev_data = (meta or {}).get("training_data", {}) or {}
    return list(prev_data.get("earlier_runs", [])) + [
        {
            "file": Path(str(file)).name,
            "training": (meta or {}).get("training"),
            "images": prev_data.get("images"),
            "degradation": (meta or {}).get("degradation"),
        }
    ]


def train_meta(cfg: TrainConfig, data_desc: dict, it: int, elapsed: float, paired: bool, amp: bool) -> dict:
    """A checkpoint's metadata: the official keys plus the data's and the run's record."""
    meta = {
        "task": cfg.task,
        "config": cfg.model_config().to_dict(),
        "global_residual": True,
        "normalisation": dict(NORMALISATION),
        "training_data": data_desc,
        "degradation": {"kind": "paired"} if paired else cfg.degradation,
        "code_version": code_version(),
        "training": {
            "iterations": it,
            "elapsed_s": round(elapsed, 1),
            "loss": cfg.loss.upper(),
            "optimizer": f"Adam lr={cfg.lr} betas={list(cfg.betas)}",
            "schedule": f"cosine to {cfg.lr_min}, warm-up {cfg.warmup}",
            "grad_clip": cfg.grad_clip,
            "stages": [list(s) for s in cfg.stages],
            "augment": "8-way flips/rotations" if cfg.augment else None,
            "channel_shuffle": cfg.channel_shuffle,
            "precision": "bf16 autocast" if amp else "fp32",
            "ema": cfg.ema or None,
            "seed": cfg.seed,
        },
    }
    if cfg.task == "super_resolution":
        spec = cfg.degradation or {}
        meta["scale"] = int(spec.get("scale", 2))
    return meta
