"""benchmarks/quality.py: its variance-stabilising baseline and a small end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402

from napari_mirnet.degradations import degrade  # noqa: E402


@pytest.mark.parametrize("peak", [10.0, 100.0])
def test_anscombe_gives_unit_noise_and_an_unbiased_inverse(peak):
    x = np.full((1, 1, 256, 256), 0.3, np.float32)
    y = degrade(
        torch.from_numpy(x), {"kind": "poisson_gaussian", "peak": peak, "sigma": 2.0}, torch.Generator().manual_seed(0)
    ).numpy()
    v = quality.anscombe(y, peak, 2.0)
    assert abs(v.std() - 1.0) < 0.03
    # the naive algebraic inverse of the mean is biased at low counts; the unbiased one is not
    back = quality.inverse_anscombe(np.full_like(v, v.mean()), peak, 2.0)
    assert abs(float(back.mean()) - 0.3) < 0.003
    naive = ((v.mean() / 2) ** 2 - 0.375 - (2.0 / 255 * peak) ** 2) / peak
    assert abs(naive - 0.3) > abs(float(back.mean()) - 0.3)


def _fake_rows(split, model_minus_bm3d):
    rows = []
    for name in ("small-denoise-gray", "small-denoise-rgb"):
        for s in quality.SIGMAS:
            for method, p in (("NLM (h=0.8*sigma)", 25.0), ("BM3D", 28.0), (name, 28.0 + model_minus_bm3d)):
                rows.append({"split": split, "model": name, "setting": f"sigma {s}", "method": method, "psnr": p})
    return rows


def test_targets_are_checked_on_the_test_split_with_the_issue_margins():
    ok = quality.targets(_fake_rows("test", 0.31) + _fake_rows("validation", -5.0), "test")
    assert len(ok) == 12 and all(passed for _, passed, _ in ok)
    short = quality.targets(_fake_rows("test", 0.29), "test")
    assert [label for label, passed, _ in short if not passed] == [
        f"{m} sigma {s}: >= BM3D + 0.3 dB" for m in ("small-denoise-gray", "small-denoise-rgb") for s in quality.SIGMAS
    ]
    assert quality.targets(_fake_rows("validation", 1.0), "test") == []  # other splits never count


def test_split_images_keep_validation_and_test_apart():
    val, test = quality.split_images("validation", 1, 64), quality.split_images("test", 1, 64)
    assert val and test and not set(val) & set(test)
    assert not set(test) & set(quality.HELD_OUT_IMAGES)
    with pytest.raises(ValueError, match="split must be one of"):
        quality.split_images("train", 1)


@pytest.mark.slow
def test_quality_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "q.json"
    rc = quality.main(["--quick", "--tta", "--crop", "64", "--splits", "test", "heldout", "--json", str(out)])
    res = json.loads(out.read_text())
    assert {r["split"] for r in res["rows"]} == {"test", "heldout"} and res["target_split"] == "test"
    settings = {(r["model"], r["setting"]) for r in res["rows"]}
    assert ("small-denoise-gray", "PG peak 30") in settings and ("small-denoise-rgb", "sigma 50") in settings
    assert {r["model"] for r in res["rows"]} == set(quality.SHIPPED)
    # gray and RGB at 3 sigmas (NLM and BM3D), 3 microscopy levels, SR, low-light
    assert len(res["targets"]) == 17 and rc == (0 if all(ok for _, ok, _ in res["targets"]) else 1)
    # every model setting has a self-ensemble row next to the plain one; the targets use the plain one
    rows = {(r["split"], r["model"], r["setting"], r["method"]): r["psnr"] for r in res["rows"]}
    for model, setting in settings:
        plain, ens = rows["test", model, setting, model], rows["test", model, setting, model + quality.TTA_SUFFIX]
        assert plain != ens
    label, _, detail = next(t for t in res["targets"] if t[0] == "small-denoise-rgb sigma 25: >= BM3D + 0.3 dB")
    assert detail.startswith(f"{rows['test', 'small-denoise-rgb', 'sigma 25', 'small-denoise-rgb']:.2f} vs")
    images = None
    for r in res["rows"]:  # the first row of each (model, split) names its images; the others follow
        images = r.get("images", images)
        assert len(r["psnr_per_image"]) == len(images) and np.isfinite(r["psnr"])
        if r["split"] == "heldout":
            assert images == list(quality.HELD_OUT_IMAGES)
        else:
            assert set(images) <= set(quality.TEST_IMAGES)


@pytest.mark.slow
def test_train_shipped_runs_end_to_end_on_cpu(tmp_path):
    """The shipped-model recipe on CPU: train (tiny), export fp16, evaluate on the held-out crops."""
    import train_shipped

    out = tmp_path / "run"
    argv = [
        "--model",
        "small-denoise-rgb",
        "--n-feat",
        "16",
        "--n-mrb",
        "1",
        "--iters",
        "2",
        "--stages",
        "32:1",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--quiet",
        "--threads",
        "1",
    ]
    threads = torch.get_num_threads()
    try:
        assert train_shipped.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets it for the whole process
    rec = json.loads((out / "small-denoise-rgb.eval.json").read_text())
    assert rec["iterations"] == 2 and rec["config"]["colour_only"] is True
    assert set(rec["eval"]) == {"sigma15", "sigma25", "sigma50"} == set(rec["test"])
    assert rec["selected"]["split"] == "validation" and rec["selected"]["file"].endswith(".best.pth")
    assert rec["cpu_inference"]["s_per_mpix"] > 0
    ck = torch.load(out / "small-denoise-rgb.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in ck["params"].values())
    imgs = ck["meta"]["training_data"]["images"]
    assert imgs and not set(imgs) & set(quality.HELD_OUT_IMAGES)
    assert ck["meta"]["training"]["channel_shuffle"] is True


def test_plot_validation_draws_runs_and_reference_lines(tmp_path):
    """benchmarks/plot_validation.py: a PNG from a .val.jsonl log, with a LABEL=DB reference line;
    a reference without a number is refused in the option's own words."""
    import plot_validation

    log = tmp_path / "small-denoise-gray.ckpt.val.jsonl"
    log.write_text(
        "".join(
            json.dumps({"iter": 25 * i, "val_psnr": 31.0 + 0.1 * i, "elapsed_s": 60.0 * i}) + "\n" for i in (1, 2, 3)
        )
    )
    out = tmp_path / "curves.png"
    assert plot_validation.main([str(log), "-o", str(out), "--reference", "shipped file=31.83"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        plot_validation.main([str(log), "-o", str(out), "--reference", "shipped"])
