"""The end of a fine-tuning run: the candidates the held-out check scores (the fine-tuned weights and,
for correlated noise, the source's own weights, at the training stride and one below, the best of
them with the detail filter, and the best of all averaged over both strides), which one the model
file keeps, and why in words when it keeps the source unchanged."""

from __future__ import annotations

import numpy as np

from ..detail_filter import DetailFilter
from ..model import shuffle_strides
from .noise_shape import correlated_part, pd_stride
from .selection import compare

__all__ = ["WINDOW", "FinalChoice", "stride_meta"]

#: the side of the windows the detail filter adapts to (validation stacks, the source's weights at
#: stride 3 and 4: 32 px gained up to 0.25 dB over one filter for the whole image on photographs, and
#: lost at most 0.15 dB where the filter does not help; 64 px did within 0.05 dB of it, 16 px lost
#: up to 1 dB on fluorescence)
WINDOW = 32


class FinalChoice:
    """The final choice of a :class:`~.finetune_run._FinetuneRun` (a mixin: it reads the run's fields
    and calls its ``check_scores`` and ``sync_eval``)."""

    def restore_strides(self) -> list[int]:
        """The strides the final check tries the source's weights (and weights trained on sub-images)
        at: in a pd mode the training stride ``s`` and ``s - 1`` (at least 2); else 1."""
        # Pixel-shuffle sub-images alias the finest detail: on photographs (validation strips) a model
        # trained at stride 4 restored better at stride 3 (benchmarks/finetune_stride.py); on smooth
        # fluorescence it was 0.3-0.7 dB better at 3 too, on other data 4 may win. The check decides.
        s = pd_stride(self.pairs)
        return [1] if s == 1 else sorted({s, max(s - 1, 2)}, reverse=True)

    def strides_for(self, step: int) -> list[int]:
        """The strides the check tries the weights of ``step`` at (0: the source's): weights trained on
        recorrupted pairs learnt the noise at full resolution and restore there."""
        return [1] if step and self.cfg.objective == "recorrupted" else self.restore_strides()

    def detail_filter(self) -> DetailFilter | None:
        """The detail filter for the measured noise, in a pd mode; else None."""
        if pd_stride(self.pairs) == 1:
            return None
        lags = correlated_part(self.corr_info["noise_autocorrelation"])
        return DetailFilter(*lags, self.check.gain, self.check.floor, WINDOW)

    def final_checks(self) -> int:
        """How many held-out checks :meth:`select` runs at most: two candidates (and the source's
        weights in a pd mode) at each of their strides, in a pd mode the best at each stride with the
        detail filter, and the best at the pd strides averaged over them (one pass per stride)."""
        if pd_stride(self.pairs) == 1:
            return 2
        trained, source = self.strides_for(1), self.restore_strides()
        n = len(source)
        return 2 * len(trained) + n + len({*trained, *source}) + n * (n > 1)

    def select(self, stopped: bool = False) -> None:
        """Keep the best of the candidates by the held-out check (the best weights by validation loss
        and the last weights, and in a pd mode the source's weights, each at every stride of
        :meth:`restore_strides`, then the best of them at each stride with the detail filter too,
        then the best at the pd strides averaged over them), and only if it is better than the source by
        the margin; else the source as it was. A run ``stopped`` before its first step checks nothing."""
        cands = {}
        if self.best_step > 0:
            cands[self.best_step] = self.best_sd
        if self.step > 0 and self.step != self.best_step:
            # the validation loss tracks the training objective, not restoration: on photographs with
            # correlated noise it picked step 10-18 of 160-180; the last weights get checked too
            self.sync_eval()
            cands[self.step] = {k: t.detach().clone() for k, t in self.eval_model.state_dict().items()}
        if pd_stride(self.pairs) > 1 and (cands or not stopped):
            # the source's own weights restoring sub-images: on photographs the shipped model at stride 3
            # beat every 3-minute fine-tuned model (benchmarks/finetune_stride.py). Checked even when no
            # training step fitted the budget (set-up and the checks' reserve took it: the reserve is for these)
            cands[0] = self.source_sd
        if not cands:
            self.kept, self.selection, self.best_sd, self.best_step = "source", {}, self.source_sd, 0
            return

        def mean(k) -> float:
            return float(np.mean(scored[k])) if np.all(np.isfinite(scored[k])) else np.inf

        scored = {
            (step, r, None): self.check_scores(sd, r) for step, sd in cands.items() for r in self.strides_for(step)
        }
        detail = self.detail_filter()
        if detail is not None:
            # the filter for the best candidate at each stride: on the validation stacks it helped (or not)
            # every candidate at a stride alike, but the strides differently (photographs, noise std 0.1:
            # +0.3 dB at stride 3, +1.4 at stride 4, which then won)
            for r in sorted({k[1] for k in scored}, reverse=True):
                at_r = min((k for k in scored if k[1] == r), key=mean)
                if np.isfinite(mean(at_r)):
                    scored[(at_r[0], r, detail)] = self.check_scores(cands[at_r[0]], r, detail)
        strides = tuple(sorted(self.restore_strides()))
        top = min((k for k in scored if k[1] in strides), key=mean, default=None)
        if len(strides) > 1 and top is not None and np.isfinite(mean(top)):
            # each stride aliases different detail: the best candidate's restorations at both strides,
            # averaged (validation stacks, source weights: +0.10 to +0.24 dB over the best single stride
            # on three of four, and where it lost 0.29 dB the check ranked it below; one pass per stride)
            scored[(top[0], strides, top[2])] = self.check_scores(cands[top[0]], strides, top[2])
        best = min(scored, key=mean)
        step, shuffle, detail = best
        self.selection = {
            "candidate": _label(best), "candidate_step": step, "pixel_shuffle": stride_meta(shuffle),
            "detail_filter": detail is not None,
            **compare(scored[best], self.source_scores),
            "candidates": {_label(k): round(float(np.mean(v)), 7) for k, v in scored.items()},
            "source": round(float(np.mean(self.source_scores)), 7),
        }  # fmt: skip
        if self.selection["better"]:
            self.kept = "fine-tuned" if step else "source weights"
            self.best_sd, self.best_step = cands[step], step
            self.restore_shuffle, self.restore_filter = shuffle, detail
        else:
            self.kept, self.best_sd, self.best_step = "source", self.source_sd, 0

    def changed(self) -> bool:
        """Whether the file holds anything but the source model as it was."""
        return self.kept in ("fine-tuned", "source weights")

    def unchanged_reason(self, stopped: bool, elapsed: float) -> str:
        """Why the saved model is the source model unchanged, in words; "" when it is not."""
        if self.changed():
            return ""
        keep = "the saved model is the source model, unchanged"
        if self.step == 0:
            if stopped:
                return f"cancelled before the first training step: {keep}"
            checked = (
                f" (the held-out check found the source's weights restoring sub-images no better: "
                f"{self.selection['delta_percent']:+.3g}% of its score)"
                if self.selection.get("finite")
                else ""
            )
            return (
                f"the budget ran out before the first training step (set-up, reading patches and measuring "
                f"the noise, took {self.setup_s:.0f} s of {elapsed:.0f} s){checked}: {keep}; give more minutes"
            )
        n = self.step - self.start_step
        per_step = f"one step takes {max(elapsed - self.setup_s, 0.0) / max(n, 1):.1f} s here"
        sel = self.selection
        if not sel.get("finite", True):
            return (
                f"training diverged (the fine-tuned model's output is not finite after {self.step} steps): {keep}. "
                "Give a smaller learning rate (lr)"
            )
        return (
            f"after {self.step} training step{'s' * (self.step != 1)} ({n} in this run) the held-out check found "
            f"its best candidate ({sel['candidate']}) no better than the source model as it was: "
            f"{sel['delta_percent']:+.3g}% "
            f"+- {sel['se_percent']:.2g}% of its score, and only a gain larger than {sel['margin_se']:g} standard "
            f"errors counts: {keep}. Give it more minutes or steps ({per_step}), or the source already suits "
            "this noise"
        )


def _label(key: tuple[int, int | tuple[int, ...], DetailFilter | None]) -> str:
    """A candidate of the final check in words: "step 120, stride 3, detail filter" or "source,
    strides 3+4 averaged"."""
    step, shuffle, detail = key
    strides = shuffle_strides(shuffle)
    at = f"stride {strides[0]}" if len(strides) == 1 else f"strides {'+'.join(map(str, strides))} averaged"
    return f"{f'step {step}' if step else 'source'}, {at}{', detail filter' if detail else ''}"


def stride_meta(shuffle: int | tuple[int, ...]) -> int | list[int]:
    """A restore stride as a model file's metadata holds it (several strides: a list)."""
    strides = shuffle_strides(shuffle)
    return strides[0] if len(strides) == 1 else list(strides)
