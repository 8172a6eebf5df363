"""Checkpoint selection in supervised training: PSNR on fixed validation pairs, and the best weights kept."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from ..model import MIRNetV2
from .checkpoints import best_path, save_atomic, val_log_path

__all__ = ["pairs_psnr", "validate_supervised"]


@torch.no_grad()
def pairs_psnr(model: torch.nn.Module, pairs: dict, device) -> dict[str, float]:
    """name -> PSNR (dB, 3 decimals) of ``model`` on each (degraded, clean) pair of (H, W, C) images."""
    per = {}
    for name, (inp, clean) in pairs.items():
        x = torch.from_numpy(np.ascontiguousarray(inp, np.float32)).permute(2, 0, 1)[None].to(device)
        y = model(x).clamp(0, 1)[0].permute(1, 2, 0).cpu().double().numpy()
        mse = float(np.mean((y - clean.astype(np.float64)) ** 2))
        per[name] = round(10 * math.log10(1.0 / max(mse, 1e-12)), 3)
    return per


@torch.no_grad()
def validate_supervised(run) -> float:
    """Mean PSNR of a training run on its validation pairs (of the moving average, when kept); the
    best weights so far go to :func:`best_path` and every value to :func:`val_log_path`."""
    weights = run.ema.avg if run.ema is not None else run.model.state_dict()
    model = MIRNetV2(run.cfg.model_config()).to(run.device)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=run.ema is None)
    model.eval()
    per = pairs_psnr(model, run.validation, run.device)
    val = float(np.mean(list(per.values())))
    elapsed = run.elapsed()
    rec = {"iter": run.step, "val_psnr": round(val, 4), "elapsed_s": round(elapsed, 3), "per_image": per}
    with val_log_path(run.out).open("a") as f:
        f.write(json.dumps(rec) + "\n")
    run.val_at = run.step
    if val > run.best_psnr:
        run.best_psnr = val
        meta = run.meta(elapsed)
        meta["selection"] = {
            "split": "validation",
            "iteration": run.step,
            "val_psnr": round(val, 4),
            "images": sorted(run.validation),
            "weights": "params_ema" if run.ema is not None else "params",
        }
        params = {k: v.detach().float().cpu().clone() for k, v in weights.items()}
        save_atomic(best_path(run.out), {"params": params, "meta": meta})
    return val
