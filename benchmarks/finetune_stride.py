"""Which pixel-shuffle stride to train and to restore at, chosen on validation data only (issue 37).

Two validation stacks, neither the benchmark's test data: the gray centre crops (128x128) of the
validation strips of the shipped models' training sources (``training.validation_images``), and the
fluorescence-like stack of ``benchmarks/finetune.py`` made from another seed (generator 5; the test
stack is seed 0). Noise: ``correlated_weak`` / ``correlated_strong`` from noise seed 11 (the test
noise is seed 1).

For each training stride ``s`` (``pairs="pd<s>"``, the candidate kept whatever the held-out check
says) the fine-tuned weights restore at every stride ``r <= s``; for each (s, r) the script prints the
PSNR against the truth over all planes and the run's own held-out SURE score (what the library can
see without clean images). A rule is right where the SURE score ranks the (s, r) as the PSNR does.

Run: ``OMP_NUM_THREADS=1 python benchmarks/finetune_stride.py --stack photos --noise correlated_weak``
(3 CPU minutes per training stride); results are appended to ``benchmarks/results/finetune_stride.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import add_noise, clean_stack, git_commit, psnr  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_stride.json"


def validation_stack(name: str) -> np.ndarray:
    """(N, H, W) float32 in [0, 1]: ``photos`` (validation strips) or ``fluorescence`` (seed 5)."""
    if name == "photos":
        from napari_mirnet.training import validation_images

        crops = validation_images(1, crop=128).values()  # strips shorter than 128 rows are left out
        return np.stack([v[..., 0] for v in crops if v.shape[:2] == (128, 128)]).astype(np.float32)
    return clean_stack(16, 256, seed=5)


def noisy_stack(stack: str, noise: str):
    """(the noisy validation stack after the benchmark's intensity map, a PSNR function against its truth)."""
    noisy_raw, truth_raw, _ = add_noise(validation_stack(stack), noise, seed=11)
    lo, hi = np.percentile(noisy_raw, [0.1, 99.9])
    noisy = ((noisy_raw - lo) / (hi - lo)).astype(np.float32)
    truth = ((truth_raw - lo) / (hi - lo)).astype(np.float32)
    rng_scale = float(truth.max() - truth.min())
    return noisy, lambda x: psnr(x / rng_scale, truth / rng_scale)


def restore_at(model, noisy: np.ndarray, stride: int) -> np.ndarray:
    """``model`` restoring every plane whole at pixel-shuffle stride ``stride``."""
    import torch

    model.pixel_shuffle = stride
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(p)[None, None])[0, 0].numpy() for p in noisy])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", choices=("photos", "fluorescence"), required=True)
    ap.add_argument("--noise", choices=("correlated_weak", "correlated_strong"), required=True)
    ap.add_argument("--strides", default="3,4", help="training strides")
    ap.add_argument("--minutes", type=float, default=3.0, help="CPU minutes per training stride")
    ap.add_argument("--auto", action="store_true", help="one run as the library chooses (pairs='auto', its check)")
    a = ap.parse_args(argv)
    if a.auto:
        return auto(a)

    import torch

    import napari_mirnet.training.selection as selection
    from napari_mirnet import finetune
    from napari_mirnet.training.config import FinetuneConfig
    from napari_mirnet.training.finetune_run import _FinetuneRun
    from napari_mirnet.training.output import state_path
    from napari_mirnet.weights import load_model, locate

    torch.set_num_threads(1)
    selection.MARGIN_SE = -1e9  # keep the candidate whatever the check says: this script compares them all
    noisy, score = noisy_stack(a.stack, a.noise)
    res = {"stack": a.stack, "noise": a.noise, "planes": list(noisy.shape), "minutes": a.minutes,
           "commit": git_commit(), "noisy": round(score(noisy), 3), "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        src = load_model(locate("small-denoise-gray"), "cpu")
        res["shipped"] = round(score(restore_at(src, noisy, 1)), 3)
        # the library's own held-out check for this data (the same patches and probes as a run's)
        cfg = FinetuneConfig(device="cpu", clock="cpu")
        run = _FinetuneRun.create(
            noisy, Path(tmp) / "x.pth", "small-denoise-gray", locate("small-denoise-gray"), cfg, 1.0, None, "ZYX",
            "fixed",
        )  # fmt: skip
        res["measured"] = {"pairs": run.pairs, "corr": run.corr_info["noise_autocorrelation"]}
        res["shipped_sure"] = float(np.mean(run.check_scores(run.source_sd, 1)))
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
        for s in (int(v) for v in a.strides.split(",")):
            t = time.process_time()
            r = finetune(noisy, Path(tmp) / f"pd{s}.pth", "small-denoise-gray", minutes=a.minutes, axes="ZYX",
                         normalisation="fixed", clock="cpu", device="cpu", pairs=f"pd{s}", overwrite=True,
                         objective="neighbor2neighbor")  # fmt: skip
            model = load_model(Path(tmp) / f"pd{s}.pth", "cpu")
            row = {"steps": r.steps, "kept_step": r.best_step, "cpu_s": round(time.process_time() - t, 1)}
            # the last weights (the moving average, as validated) from the run's saved state
            st = torch.load(state_path(Path(tmp) / f"pd{s}.pth"), map_location="cpu", weights_only=True)
            weights = {"kept": model.state_dict(), "last": {**st["params"], **st.get("ema", {})}}
            for name, sd in weights.items():
                model.load_state_dict(sd)
                for rs in range(1, s + 1):
                    row[f"{name}_restore_{rs}"] = {
                        "psnr": round(score(restore_at(model, noisy, rs)), 3),
                        "sure": float(np.mean(run.check_scores(sd, rs))),
                    }
            res["runs"][f"train_{s}"] = row
            print(json.dumps({f"train_{s}": row}), flush=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*old, res], indent=1) + "\n")
    return 0


def auto(a) -> int:
    """One ``pairs="auto"`` run with the library's own final check; the PSNR of what it kept, and of
    every (weights, stride, detail filter) the check scored for the source and the last weights."""
    import torch

    from napari_mirnet import finetune
    from napari_mirnet.training.output import state_path
    from napari_mirnet.weights import load_model, locate

    torch.set_num_threads(1)
    noisy, score = noisy_stack(a.stack, a.noise)
    res = {"stack": a.stack, "noise": a.noise, "mode": "auto", "minutes": a.minutes, "commit": git_commit(),
           "noisy": round(score(noisy), 3)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "auto.pth"
        t = time.process_time()
        r = finetune(noisy, out, "small-denoise-gray", minutes=a.minutes, axes="ZYX", normalisation="fixed",
                     clock="cpu", device="cpu", pairs="auto")  # fmt: skip
        res.update(cpu_s=round(time.process_time() - t, 1), pairs=r.pairs, kept=r.kept, steps=r.steps,
                   summary=r.summary(), selection=r.selection)  # fmt: skip
        model = load_model(out, "cpu")
        res["kept_psnr"] = round(score(restore_at_as_saved(model, noisy)), 3)
        # the PSNR of every option the check scored, for the source's weights and the last weights
        st = torch.load(state_path(out), map_location="cpu", weights_only=True)
        weights = {"source": load_model(locate("small-denoise-gray"), "cpu").state_dict(),
                   f"step {r.steps}": {**st["params"], **st.get("ema", {})}}  # fmt: skip
        filt = model.detail_filter
        if filt is None:  # the filter the check tried (the file has one only when it was kept)
            from napari_mirnet.detail_filter import DetailFilter
            from napari_mirnet.training.finetune_choice import WINDOW
            from napari_mirnet.training.noise_shape import correlated_part

            filt = DetailFilter(*correlated_part(r.noise_correlation), *_check_level(noisy, r.selection), WINDOW)
        psnrs = {}
        for name, sd in weights.items():
            model.load_state_dict(sd)
            for label in r.selection.get("candidates", {}):
                w, stride, *f = (v.strip() for v in label.split(","))
                if w != name:
                    continue
                model.detail_filter = filt if f else None
                at = tuple(int(v) for v in stride.split()[1].split("+"))  # "stride 4" or "strides 3+4 averaged"
                psnrs[label] = round(score(restore_at(model, noisy, at if len(at) > 1 else at[0])), 3)
        res["psnr_of_candidates"] = psnrs
    print(json.dumps(res, indent=1), flush=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*old, res], indent=1) + "\n")
    return 0


def restore_at_as_saved(model, noisy: np.ndarray) -> np.ndarray:
    """``model`` restoring every plane whole, as its file says (stride and detail filter)."""
    import torch

    with torch.no_grad():
        return np.stack([model(torch.from_numpy(p)[None, None])[0, 0].numpy() for p in noisy])


def _check_level(noisy: np.ndarray, sel: dict) -> tuple[float, float]:
    """The noise variance line (gain, floor) a run measures on this data (as its check does)."""
    import tempfile as tf

    from napari_mirnet.training.config import FinetuneConfig
    from napari_mirnet.training.finetune_run import _FinetuneRun
    from napari_mirnet.weights import locate

    with tf.TemporaryDirectory() as tmp:
        run = _FinetuneRun.create(noisy, Path(tmp) / "x.pth", "small-denoise-gray", locate("small-denoise-gray"),
                                  FinetuneConfig(device="cpu", clock="cpu"), 1.0, None, "ZYX", "fixed")  # fmt: skip
    return run.check.gain, run.check.floor


if __name__ == "__main__":
    raise SystemExit(main())
