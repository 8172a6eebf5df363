"""What a fine-tuning run writes: the model file (the kept weights in fp16 with the run's metadata)
and the state a resume needs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from .checkpoints import NORMALISATION, code_version, lineage, save_atomic
from .finetune_choice import stride_meta
from .output import state_path

__all__ = ["RunFiles"]


class RunFiles:
    """The files of a :class:`~.finetune_run._FinetuneRun` (a mixin: it reads the run's fields)."""

    def save_best(self, it: int, el: float) -> None:
        """The best weights so far, in fp16, with the run's metadata, to ``out``."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        params = {
            k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in self.best_sd.items()
        }
        save_atomic(self.out, {"params": params, "meta": self.meta(it, el)})

    def save_state(self, it: int, el: float) -> None:
        """Everything a resume needs, to :func:`state_path` of ``out``."""
        spath = state_path(self.out)
        spath.parent.mkdir(parents=True, exist_ok=True)
        ema = self.ema
        save_atomic(
            spath,
            {
                "params": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                **({"ema": {k: v.cpu() for k, v in ema.avg.items()}} if ema is not None else {}),
                "optimizer": self.opt.state_dict(),
                "best_params": {k: v.detach().cpu() for k, v in self.best_sd.items()},
                "best_val": self.best_val,
                "best_step": self.best_step,
                "source_val": self.source_val,
                "step": it,
                "elapsed": el,
                "losses": [list(v) for v in self.losses],
                "val_losses": [list(v) for v in self.val_losses],
                "fingerprint": self.fingerprint,
                "source_sha256": self.source_sha,
                "pairs": self.pairs,
                "source_scores": [float(v) for v in self.source_scores],
                "check_s": self.check_s,
                "config": asdict(self.cfg),
            },
        )

    def meta(self, it: int, el: float) -> dict:
        """The model file's metadata: the official keys plus the data's and the run's record."""
        return {
            "task": "denoise",
            "config": self.model.config.to_dict(),
            "global_residual": True,
            "normalisation": {
                **NORMALISATION,
                "mode": self.normalisation,
                "note": f"fine-tuned with normalisation={self.normalisation!r}: restore with the same",
            },
            "training_data": self._data_meta(),
            "degradation": {"kind": "self-supervised", "noise": "the data's own (unknown)"},
            "code_version": code_version(),
            "finetune": self._run_meta(it, el),
            "params_dtype": "float16",
            # how the kept weights restore (the model's file is all restore reads)
            "pixel_shuffle": stride_meta(self.restore_shuffle),
            **({"detail_filter": _plain(asdict(self.restore_filter))} if self.restore_filter is not None else {}),
        }

    def _data_meta(self) -> dict:
        return {
            "description": "the user's noisy images (self-supervised: no clean targets)",
            "fingerprint": self.fingerprint,
            "sources": [
                f"{type(a).__name__}{tuple(a.shape)} {np.dtype(a.dtype)} axes {ax}" for a, ax, _ in self.sources
            ],
            "n_planes": len(self.dataset.planes),
            "initialised_from": Path(str(self.weights)).name,
            "earlier_runs": lineage(self.source_path, self.source_meta),
        }

    def _run_meta(self, it: int, el: float) -> dict:
        return {
            "source_model": str(self.weights),
            "source_sha256": self.source_sha,
            "objective": self.cfg.objective,
            "pairs": self.pairs,
            **self.corr_info,
            "steps": it,
            "best_step": self.best_step,
            "elapsed_s": round(el, 1),
            "clock": self.cfg.clock,
            "val_loss": {"source": self.source_val, "best": self.best_val},
            "kept": self.kept or "source",
            "selection": self.selection,
            "loss_curve": [[s, round(v, 7)] for s, v in _thin(self.losses)],
            "val_curve": [[s, round(v, 7)] for s, v in self.val_losses],
            "settings": asdict(self.cfg),
            "budget": {"minutes": self.minutes, "steps": self.steps},
        }


def _thin(curve: list[tuple[int, float]], n: int = 500) -> list[tuple[int, float]]:
    """At most ``n`` points of a loss curve, each the mean of its stretch (metadata stays small)."""
    if len(curve) <= n:
        return curve
    edges = np.linspace(0, len(curve), n + 1).astype(int)
    return [(curve[b - 1][0], float(np.mean([v for _, v in curve[a:b]]))) for a, b in zip(edges[:-1], edges[1:])]


def _plain(d: dict) -> dict:
    """The detail filter's fields as the file stores them (lists of floats, floats, the window an int)."""
    return {
        k: [float(x) for x in v] if isinstance(v, tuple) else v if isinstance(v, int) else float(v)
        for k, v in d.items()
    }
