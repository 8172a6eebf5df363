"""benchmarks/finetune.py and finetune_budgets.py: the correlated noise types, BM3D told their true
spectrum, result merging, and small real runs (--quick sized) of both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import finetune as fb  # noqa: E402
import finetune_baselines  # noqa: E402
import finetune_budgets  # noqa: E402


@pytest.fixture
def results(tmp_path, monkeypatch):
    """The benchmark's results folder, moved to a temporary one so tests leave the saved figures alone."""
    monkeypatch.setattr(fb, "RESULTS", tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind", ["correlated_weak", "correlated_strong"])
def test_correlated_noise_has_its_std_correlation_and_spectrum(kind):
    clean = np.zeros((4, 128, 128), np.float32)
    noisy, truth, params = fb.add_noise(clean, kind)
    e = (noisy - truth).astype(np.float64)
    assert e.std() == pytest.approx(fb.CORRELATED[kind], rel=0.03)
    # a Gaussian filter of sigma 1 px gives the autocorrelation exp(-lag**2 / 4) in both directions
    for axis in (1, 2):
        for lag, expected in ((1, 0.779), (2, 0.368), (3, 0.105)):
            a, b = np.take(e, range(128 - lag), axis), np.take(e, range(lag, 128), axis)
            assert np.mean(a * b) / e.var() == pytest.approx(expected, abs=0.03)
    psd = finetune_baselines.correlated_psd((128, 128), params)
    assert psd.mean() == pytest.approx(params["sigma"] ** 2)
    measured = np.mean(np.abs(np.fft.fft2(e)) ** 2, 0) / 128**2
    assert np.corrcoef(psd.ravel(), measured.ravel())[0, 1] > 0.8


def test_bench_on_correlated_noise_scores_shipped_and_bm3d(results):
    clean, idx, about = fb.make_clean("synthetic", 4, 96, 2)
    r = fb.bench_noise("correlated_strong", 20.0, clean, idx, results, ["shipped", "bm3d"], about)
    m = r["methods"]
    assert set(m) == {"noisy", "shipped", "bm3d"}
    # BM3D told the true spectrum removes most of this noise; told nothing it could not
    assert m["bm3d"]["psnr"] > m["noisy"]["psnr"] + 3
    assert m["shipped"]["cpu_s_total"] > 0 and m["shipped"]["commit"]
    saved = fb.merge_result(results / "a.json", r)
    later = dict(r, methods={"n2v": {"psnr": 1.0}})
    merged = fb.merge_result(results / "a.json", later)
    assert set(merged["methods"]) == {"noisy", "shipped", "bm3d", "n2v"}
    other = fb.merge_result(results / "a.json", dict(later, budget_cpu_s=60.0))
    assert set(other["methods"]) == {"n2v"} and saved["budget_cpu_s"] == 20.0


def test_quick_cli_writes_a_report_for_the_new_noise_types(results):
    assert fb.main(["--quick", "--noise", "correlated_weak", "--methods", "shipped,bm3d", "--images", "packages"]) == 0
    text = (results / "finetune_packages_quick.txt").read_text()
    row = next(line for line in text.splitlines() if line.startswith("correlated_weak"))
    assert "packages" in row and len([c for c in row.split() if c[0].isdigit()]) == 3
    with pytest.raises(SystemExit):
        fb.main(["--quick", "--methods", "shipped,noise2clean"])


def test_budget_table_merges_rows_and_tells_a_loss(results):
    path = results / "finetune_budgets.json"
    base = {"images": "synthetic", "noise": "gaussian", "method": "finetuned", "cpu_s": 60.0, "wall_s": 70.0}
    base |= {"shipped": 30.0, "commit": "abc", "kept": "source", "pairs": "any", "steps": 3}
    finetune_budgets.save(path, dict(base, budget_min=1.0, finetuned=30.0, delta=0.0))
    finetune_budgets.save(path, dict(base, budget_min=3.0, finetuned=30.2, delta=0.2))
    lines = finetune_budgets.write_table(path)
    assert any("goal" in x and ": met (2/2 rows" in x for x in lines)
    # the same key again replaces its row: a fine-tuned model 0.1 dB below the source misses the goal
    finetune_budgets.save(path, dict(base, budget_min=3.0, finetuned=29.9, delta=-0.1))
    assert len(json.loads(path.read_text())) == 2
    assert "MISSED (1/2 rows; worst -0.100 dB" in path.with_suffix(".txt").read_text()


def test_budget_run_keeps_the_source_or_beats_it(results):
    finetune_budgets.run("0.1", ["gaussian"], ["shipped", "finetuned_auto"], quick=True)
    (row,) = json.loads((results / "finetune_budgets_quick.json").read_text())
    assert row["kept"] in ("fine-tuned", "source") and row["pairs"] in (
        "any",
        "vertical",
        "horizontal",
        "pd2",
        "pd3",
        "pd4",
    )
    assert row["delta"] == pytest.approx(row["finetuned"] - row["shipped"], abs=2e-3)
    if row["kept"] == "source":  # the source model comes back unchanged: the same restoration
        assert row["delta"] == 0.0
    if row["steps"]:  # a run with training steps tells the held-out check that chose
        assert {"delta_percent", "se_percent"} <= set(row["selection"])
    assert {"horizontal", "vertical"} <= set(row["noise_correlation"])
