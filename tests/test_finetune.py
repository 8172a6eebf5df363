"""Self-supervised fine-tuning: the library, the CLI and the napari widget, with real tiny models."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import toy

from napari_mirnet import finetune, restore
from napari_mirnet.training import noise_correlation, state_path
from napari_mirnet.weights import read_checkpoint

# tiny and fast: 32-px patches, 2 per step
FAST = dict(patch=32, batch=2, lr=1e-3, device="cpu", val_patches=2)


def psnr(a, b):
    return 10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_finetuning_improves_psnr_on_a_toy_problem(tmp_path, gray_identity):
    clean, noisy = toy()
    out = tmp_path / "ft.pth"
    res = finetune(noisy, out, gray_identity, minutes=None, steps=40, axes="ZYX", normalisation="fixed", **FAST)
    assert res.steps == 40 and res.best_val < res.source_val
    before = psnr(noisy, clean)
    # restoring with a fixed [0, 1] map refuses values outside it: clip, as the error message says
    after = psnr(
        restore(np.clip(noisy, 0, 1), "denoise", weights=str(out), axes="ZYX", normalisation="fixed", device="cpu"),
        clean,
    )
    assert after > before + 3, (before, after)
    sd, meta = read_checkpoint(out)
    assert all(v.dtype == torch.float16 for v in sd.values())
    ft = meta["finetune"]
    assert ft["source_model"] == gray_identity and ft["objective"] == "neighbor2neighbor" and ft["steps"] == 40
    assert len(ft["loss_curve"]) == 40 and meta["training_data"]["fingerprint"]


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    out = tmp_path / "ft.pth"
    kw = dict(axes="ZYX", normalisation="fixed", **FAST)
    # a run of 5 steps interrupted after 3 (steps/minutes are the whole run's budget), then resumed
    first = finetune(noisy, out, gray_identity, minutes=None, steps=5, callback=lambda i: i.step < 3, **kw)
    assert state_path(out).is_file() and first.steps == 3 and first.stopped
    again = finetune(noisy, out, gray_identity, minutes=None, steps=5, resume=True, **kw)
    assert again.steps == 5 and again.losses[:3] == first.losses and len(again.losses) == 5
    straight = finetune(noisy, tmp_path / "straight.pth", gray_identity, minutes=None, steps=5, **kw)
    np.testing.assert_allclose([v for _, v in straight.losses], [v for _, v in again.losses], rtol=1e-4)
    with pytest.raises(ValueError, match="data differs"):
        finetune(noisy[:1], out, gray_identity, minutes=None, steps=6, resume=True, **kw)
    with pytest.raises(FileNotFoundError, match="no saved state"):
        finetune(noisy, tmp_path / "other.pth", gray_identity, steps=2, resume=True, **kw)


def test_time_budget_ends_the_run(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (~4 s)
    t = time.perf_counter()
    res = finetune(noisy, tmp_path / "ft.pth", gray_identity, minutes=6 / 60, axes="ZYX", **FAST)
    took = time.perf_counter() - t
    # the run keeps back the time its last step, validation and held-out check take: it ends within
    # the budget (a safety margin for a busy machine), after using most of it
    assert res.steps >= 1 and 2.0 <= res.elapsed < 6.0 + 10.0 and took < 60
    assert read_checkpoint(tmp_path / "ft.pth")[1]["finetune"]["budget"]["minutes"] == pytest.approx(0.1)


def test_callback_cancel_keeps_the_best_model(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    seen = []
    res = finetune(
        noisy,
        tmp_path / "ft.pth",
        gray_identity,
        minutes=None,
        steps=100,
        axes="ZYX",
        callback=lambda info: seen.append(info.step) or info.step < 2,
        **FAST,
    )
    assert res.stopped and res.steps == 2 and seen == [1, 2]
    sd, meta = read_checkpoint(tmp_path / "ft.pth")
    assert meta["finetune"]["best_step"] == res.best_step


def test_errors_for_tiny_uniform_or_unbudgeted_data(tmp_path, gray_identity):
    with pytest.raises(ValueError, match="too small"):
        finetune(np.random.rand(20, 20).astype(np.float32), tmp_path / "a.pth", gray_identity, steps=2, **FAST)
    with pytest.raises(ValueError, match="too uniform"):
        finetune(np.full((4, 64, 64), 0.5, np.float32), tmp_path / "b.pth", gray_identity, steps=2, axes="ZYX", **FAST)
    with pytest.raises(ValueError, match="budget"):
        finetune(toy()[1], tmp_path / "c.pth", gray_identity, minutes=None, axes="ZYX", **FAST)
    with pytest.raises(ValueError, match="objective"):
        finetune(toy()[1], tmp_path / "d.pth", gray_identity, steps=1, objective="noise2clean")
    for lr in (-1e-4, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be a finite learning rate >= 0"):
            finetune(toy()[1], tmp_path / "e.pth", gray_identity, steps=1, axes="ZYX", **{**FAST, "lr": lr})


def test_nodata_is_left_out_of_fine_tuning(tmp_path, gray_identity):
    """NaN pixels (nodata, which restore keeps): every patch fine-tuning reads comes from where the
    data is (it once refused such data outright), and a mostly empty image is a clear error."""
    from napari_mirnet.training.patches import _as_sources, _Data, _planes

    _, noisy = toy(n=2, size=128)
    noisy[:, :, :70] = np.nan
    noisy[:, 100:104, 100:104] = np.nan  # a small hole inside the data too
    data = _Data(_planes(_as_sources(noisy, "ZYX"), 1, "auto"), 32, 2, 0)
    rng = np.random.default_rng(0)
    patches = [data.val, data.sample_pixels(rng), np.stack([p for p, _ in data.batch(rng, 16)])]
    assert all(np.isfinite(p).all() for p in patches)
    res = finetune(noisy, tmp_path / "n.pth", gray_identity, steps=2, axes="ZYX", **FAST)
    meta = read_checkpoint(res.path)[1]
    assert abs(meta["finetune"]["horizontal_neighbour_correlation"]) < 0.2
    out = restore(noisy, weights=str(res.path), axes="ZYX", device="cpu")
    assert np.array_equal(np.isnan(out), np.isnan(noisy))
    mostly_empty = np.full((2, 128, 128), np.nan, np.float32)
    mostly_empty[:, :40, :40] = noisy[:, :40, 80:120]
    with pytest.raises(ValueError, match=r"no patch of 32x32 pixels without nodata \(NaN\)"):
        finetune(mostly_empty, tmp_path / "e.pth", gray_identity, steps=2, axes="ZYX", **FAST)


def test_nodata_value_given_as_to_restore(tmp_path, gray_identity, capsys):
    """``nodata=`` / ``--nodata`` as restore takes it: a value that marks missing pixels in data
    whose file does not say so; refused in the words of each interface where it cannot occur."""
    from napari_mirnet.cli import main
    from napari_mirnet.training.patches import _as_sources, _Data, _planes

    _, noisy = toy(n=2, size=128)
    noisy[:, :, :70] = -9999.0
    data = _Data(_planes(_as_sources(noisy, "ZYX", -9999.0), 1, "auto"), 32, 2, 0)
    assert data.val.min() > -1 and data.planes[0].imap.low > -1  # -9999 out of the map and the patches
    res = finetune(noisy, tmp_path / "v.pth", gray_identity, steps=2, axes="ZYX", nodata=-9999.0, **FAST)
    assert res.steps == 2
    src = tmp_path / "u8.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((96, 96)) * 200).astype(np.uint8))
    with pytest.raises(ValueError, match="nodata=300 cannot occur in a uint8 image"):
        finetune(str(src), tmp_path / "w.pth", gray_identity, steps=2, nodata=300, **FAST)
    rc = main(["finetune", str(src), "-o", str(tmp_path / "c.pth"), "--weights", gray_identity, "--steps", "2",
               "--nodata", "300", "--device", "cpu", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--nodata 300 cannot occur in a uint8 image" in err and "nodata=" not in err


def test_lazy_zarr_and_dask_inputs(tmp_path, gray_identity):
    _, noisy = toy(n=4, size=128)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=noisy.shape, chunks=(1, 64, 64), dtype="f4")
    z[:] = noisy
    reads = []

    class Counting:  # a real zarr array that records the size of every read
        shape, dtype, ndim = z.shape, z.dtype, z.ndim

        def __getitem__(self, idx):
            a = z[idx]
            reads.append(a.size)
            return a

    res = finetune(
        Counting(), tmp_path / "z.pth", gray_identity, minutes=None, steps=2, axes="ZYX", normalisation="fixed", **FAST
    )
    assert res.steps == 2
    # training reads patches only, never a whole plane or the stack
    assert sorted(reads)[len(reads) // 2] <= 32 * 32
    res = finetune(da.from_zarr(z), tmp_path / "d.pth", gray_identity, minutes=None, steps=2, axes="ZYX", **FAST)
    assert res.steps == 2


def test_blindspot_objective_and_row_noise_detection(tmp_path, gray_identity):
    rng = np.random.default_rng(0)
    clean, _ = toy(n=2, size=96)
    rows = np.apply_along_axis(
        lambda r: np.convolve(r, np.ones(5) / np.sqrt(5), "same"), -1, rng.normal(0, 0.08, clean.shape)
    )
    noisy = (clean + rows).astype(np.float32)
    ch, cv = noise_correlation(noisy[:, None])
    assert ch > cv + 0.3
    res = finetune(
        noisy, tmp_path / "b.pth", gray_identity, minutes=None, steps=2, axes="ZYX", objective="blindspot", **FAST
    )
    meta = read_checkpoint(tmp_path / "b.pth")[1]["finetune"]
    assert res.steps == 2 and meta["objective"] == "blindspot" and meta["pairs"] == "vertical"


def _lag1(a: torch.Tensor, dim: int) -> float:
    a = a - a.mean()
    x, y = a.narrow(dim, 1, a.shape[dim] - 1), a.narrow(dim, 0, a.shape[dim] - 1)
    return float((x * y).mean() / (x.std() * y.std()))


def test_row_noise_pairs_keep_the_rows_noise_and_are_independent():
    """Noise correlated along rows: the two sub-images are alternate whole rows, so each keeps the noise
    statistics along rows that the model meets at full resolution, and their noise is independent.
    (A 2x2 sub-sampling halves the span of the correlation: lag-1 0.6 instead of 0.8 for a 5-px kernel.)"""
    from napari_mirnet.training.objectives import _n2n_loss, _subsample

    g = torch.Generator().manual_seed(0)
    white = torch.randn(4, 1, 64, 132, generator=g)
    noise = sum(white[..., k : k + 128] for k in range(5)) / 5**0.5  # 5-px box along rows: lag-1 0.8
    g1, g2, _ = _subsample(noise, torch.Generator().manual_seed(1), "vertical")
    assert g1.shape == g2.shape == (4, 1, 32, 128)
    rows = {tuple(r.tolist()) for r in noise.flatten(0, 2)}
    assert all(tuple(r.tolist()) in rows for r in g1.flatten(0, 2))  # whole rows, unmixed
    assert abs(_lag1(g1, -1) - 0.8) < 0.05 and abs(_lag1(g2, -1) - 0.8) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([g1.flatten(), g2.flatten()]))[0, 1])) < 0.05
    # columns the same way for noise correlated along columns; isotropic noise keeps 2x2 cells
    h1, _, _ = _subsample(noise.transpose(-1, -2), torch.Generator().manual_seed(1), "horizontal")
    assert h1.shape == (4, 1, 128, 32) and abs(_lag1(h1, -2) - 0.8) < 0.05
    assert _subsample(noise, torch.Generator().manual_seed(1), "any")[0].shape == (4, 1, 32, 64)
    # the consistency term lines the full-resolution output up with the same rows: zero for the identity
    loss = _n2n_loss(torch.nn.Identity(), noise, torch.Generator().manual_seed(2), "vertical", gamma=1.0)
    plain = _n2n_loss(torch.nn.Identity(), noise, torch.Generator().manual_seed(2), "vertical", gamma=0.0)
    assert abs(float(loss) - float(plain)) < 1e-6


def test_cli_finetune(tmp_path, gray_identity, capsys):
    from napari_mirnet.cli import main

    _, noisy = toy(n=2, size=64)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, noisy)
    out = tmp_path / "my-model.pth"
    args = [
        "finetune",
        str(src),
        "-o",
        str(out),
        "--weights",
        gray_identity,
        "--steps",
        "2",
        "--patch",
        "32",
        "--axes",
        "ZYX",
        "--device",
        "cpu",
        "-q",
    ]
    assert main(args) == 0
    assert "napari-mirnet restore" in capsys.readouterr().out and out.is_file()
    assert main(args) == 2  # the output exists: refuses without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    from napari_mirnet.training import state_path

    assert state_path(out).exists()
    out.unlink()  # a saved run whose model was deleted: refused in the CLI's words, not a traceback
    assert main(args) == 2
    assert "saved run" in capsys.readouterr().err
    state_path(out).unlink()
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.random.rand(16, 16).astype(np.float32))
    assert (
        main(
            [
                "finetune",
                str(tiny),
                "-o",
                str(tmp_path / "t.pth"),
                "--weights",
                gray_identity,
                "--steps",
                "1",
                "--patch",
                "32",
                "-q",
            ]
        )
        == 2
    )
    assert "too small" in capsys.readouterr().err
    assert main(["finetune", str(src), "-o", str(tmp_path / "u.pth"), "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    assert main(["finetune", str(src), "-o", str(tmp_path / "v.pth"), "--lr", "-0.5"]) in (1, 2)
    assert "--lr must be a finite learning rate >= 0, got -0.5" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ output safety
def _sd(path) -> dict:
    return {k: v.clone() for k, v in read_checkpoint(path)[0].items()}


def test_output_on_the_input_image_is_refused_and_the_image_kept(tmp_path, gray_identity):
    _, noisy = toy(n=1, size=64)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, noisy[0])
    before = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is the input image.*choose another file"):
            finetune(str(src), str(src), gray_identity, steps=1, minutes=None, overwrite=overwrite, **FAST)
    # the same file under another name, and an input found in a folder
    with pytest.raises(ValueError, match="input image"):
        finetune(str(tmp_path), tmp_path / "sub" / ".." / "in.tif", gray_identity, steps=1, minutes=None, **FAST)
    with pytest.raises(ValueError, match="input image"):
        finetune([noisy, str(src)], src, gray_identity, steps=1, minutes=None, resume=True, **FAST)
    assert src.read_bytes() == before and tifffile.imread(src).shape == (64, 64)
    assert not state_path(src).exists()


def test_output_on_the_source_model_is_refused_and_the_model_kept(tmp_path, gray_identity):
    import shutil

    _, noisy = toy(n=2, size=64)
    start = tmp_path / "start.pth"
    shutil.copy(gray_identity, start)
    fp32 = _sd(start)
    assert all(v.dtype == torch.float32 for v in fp32.values())
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="the model the run starts from"):
            finetune(noisy, start, str(start), steps=1, minutes=None, axes="ZYX", overwrite=overwrite, **FAST)
    after = _sd(start)
    assert after.keys() == fp32.keys() and all(torch.equal(after[k], fp32[k]) for k in fp32)


def test_existing_output_is_refused_unless_overwrite_or_resume(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    kw = dict(minutes=None, steps=1, axes="ZYX", **FAST)
    unrelated = tmp_path / "notes.pth"
    unrelated.write_bytes(b"a user's file, not a model")
    from napari_mirnet.io import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"overwrite=True.*another out"):
        finetune(noisy, unrelated, gray_identity, **kw)
    assert unrelated.read_bytes() == b"a user's file, not a model" and not state_path(unrelated).exists()
    # a run saved there: refused, resumed, or replaced as asked
    out = tmp_path / "ft.pth"
    first = finetune(noisy, out, gray_identity, **kw)
    with pytest.raises(OutputExistsError, match="resume=True"):
        finetune(noisy, out, gray_identity, **kw)
    assert read_checkpoint(out)[1]["finetune"]["steps"] == first.steps
    assert finetune(noisy, out, gray_identity, **{**kw, "steps": 2}, resume=True).steps == 2
    again = finetune(noisy, out, gray_identity, **kw, overwrite=True, seed=1)
    assert again.steps == 1 and read_checkpoint(out)[1]["finetune"]["settings"]["seed"] == 1
    # a saved run whose model file was deleted is someone's too
    out.unlink()
    with pytest.raises(OutputExistsError, match="state.pth exists"):
        finetune(noisy, out, gray_identity, **kw)
    with pytest.raises(ValueError, match="is a folder"):
        finetune(noisy, tmp_path, gray_identity, **kw, overwrite=True)


# ------------------------------------------------------------------------------- issue 31 item 6
class _SlowReads:
    """A real array whose every read takes ``delay`` seconds, as a slow disk or a remote store would."""

    def __init__(self, a, delay):
        self.a, self.delay = a, delay
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.reads = 0

    def __getitem__(self, idx):
        time.sleep(self.delay)
        self.reads += 1
        return self.a[idx]


def test_minutes_count_the_set_up_and_bound_it(tmp_path, gray_identity):
    """``minutes`` counts reading patches and measuring the noise; set-up samples less when reads are slow."""
    _, noisy = toy(n=2, size=64)
    slow = _SlowReads(noisy, 0.2)
    reported = []
    res = finetune(
        slow, tmp_path / "ft.pth", gray_identity, minutes=0.02, axes="ZYX", normalisation="fixed",
        setup_callback=lambda done, total: reported.append((done, total)), **FAST,
    )  # fmt: skip
    # set-up's share of 1.2 s is 0.36 s: of the 1 validation + 32 + 8 + 16 planned reads (the 8 of the
    # fingerprint always), only the few set-up needs are made
    assert reported and reported[-1][1] == 1 + 32 + 8 + 16 and reported[-1][0] <= 1 + 4 + 8 + 4
    assert [d for d, _ in reported] == list(range(1, len(reported) + 1))
    # the run's elapsed time (its budget) includes the set-up, which took at least its reads' time
    assert 0.2 * len(reported) <= res.setup_s <= res.elapsed
    meta = read_checkpoint(tmp_path / "ft.pth")[1]["finetune"]
    assert meta["elapsed_s"] == pytest.approx(res.elapsed, abs=0.1)


def test_a_run_that_leaves_the_model_unchanged_says_why(tmp_path, gray_identity, capsys):
    _, noisy = toy(n=2, size=64)
    # no learning rate: no step can improve on the source model
    res = finetune(
        noisy,
        tmp_path / "a.pth",
        gray_identity,
        minutes=None,
        steps=2,
        axes="ZYX",
        **{**FAST, "lr": 0.0, "lr_min": 0.0},
    )
    assert res.best_step == 0 and res.kept == "source"
    assert "after 2 training steps" in res.unchanged and "no better than the source" in res.unchanged
    assert "source model, unchanged" in res.unchanged and res.selection["delta_percent"] == 0
    # the budget spent on set-up (slow reads) before the first step
    slow = _SlowReads(noisy, 0.3)
    res = finetune(slow, tmp_path / "b.pth", gray_identity, minutes=0.005, axes="ZYX", normalisation="fixed", **FAST)
    assert res.steps == 0 and "budget ran out before the first training step" in res.unchanged
    assert res.setup_s > 0.3
    # a run that improved the model has nothing to explain
    res = finetune(noisy, tmp_path / "c.pth", gray_identity, minutes=None, steps=3, axes="ZYX", **FAST)
    assert res.best_step > 0 and res.unchanged == "" and res.kept == "fine-tuned"
    # the CLI prints the reason
    from napari_mirnet.cli import main

    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, noisy)
    args = ["finetune", str(src), "-o", str(tmp_path / "d.pth"), "--weights", gray_identity, "--steps", "1"]
    args += ["--patch", "32", "--axes", "ZYX", "--device", "cpu", "--lr", "0", "-q"]
    assert main(args) == 0
    assert "note: after 1 training step (1 in this run) the held-out check" in capsys.readouterr().out


def test_resume_state_is_kept_out_of_the_model_folder(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    out = tmp_path / "models" / "ft.pth"
    kw = dict(minutes=None, axes="ZYX", **FAST)
    first = finetune(noisy, out, gray_identity, steps=1, **kw)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ft.pth"]
    spath = state_path(out)
    assert spath.is_file() and not spath.is_relative_to(out.parent)
    assert spath == state_path(tmp_path / "models" / ".." / "models" / "ft.pth")  # keyed by the absolute path
    assert state_path(tmp_path / "other" / "ft.pth") != spath
    # a finished run still resumes (to a larger budget) from there
    assert finetune(noisy, out, gray_identity, steps=2, resume=True, **kw).steps == first.steps + 1


def test_seeded_step_runs_are_reproducible(tmp_path, gray_identity):
    _, noisy = toy(n=2, size=64)
    kw = dict(minutes=None, steps=3, axes="ZYX", seed=3, **FAST)
    a = finetune(noisy, tmp_path / "a.pth", gray_identity, **kw)
    b = finetune(noisy, tmp_path / "b.pth", gray_identity, **kw)
    sa, sb = read_checkpoint(a.path)[0], read_checkpoint(b.path)[0]
    assert a.losses == b.losses and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_progress_and_cancel_follow_the_shared_protocol(tmp_path, gray_identity):
    import threading

    from napari_mirnet.progress import Progress

    _, noisy = toy(n=2, size=64)
    cancel, seen = threading.Event(), []

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.stage == "run" and p.detail.step == 2:
            cancel.set()

    out = tmp_path / "ft.pth"
    res = finetune(
        noisy, out, gray_identity, minutes=None, steps=50, axes="ZYX", progress=progress, cancel=cancel, **FAST
    )
    # cancelling stops the run like its budget ending: the best model so far is saved, the result says stopped
    assert res.stopped and res.steps == 2 and out.is_file() and state_path(out).is_file()
    setup = [p for p in seen if p.stage == "setup"]
    run = [p for p in seen if p.stage == "run"]
    assert setup and all(p.job == "finetune" and p.unit == "patch" for p in setup)
    assert [p.detail.step for p in run] == [1, 2] and all(p.unit == "%" and p.total == 100 for p in run)
    # cancelled before the first step: the source model is kept, and the result says why
    early = threading.Event()
    early.set()
    res = finetune(noisy, tmp_path / "e.pth", gray_identity, minutes=None, steps=5, axes="ZYX", cancel=early, **FAST)
    assert res.stopped and res.steps == 0 and "cancelled before the first training step" in res.unchanged


def test_axes_of_a_bare_stack_are_read_as_restore_reads_them(tmp_path, gray_identity):
    # two planes of 64x64 with no axes: Z planes, time points or channels? restore refuses to guess,
    # and a model fine-tuned on the guess would be one restore then refuses to apply to the same data
    _, noisy = toy(n=2, size=64)
    with pytest.raises(ValueError, match="cannot tell the axes") as ft:
        finetune(noisy, tmp_path / "a.pth", gray_identity, minutes=None, steps=1, **FAST)
    with pytest.raises(ValueError, match="cannot tell the axes") as rs:
        restore(noisy, weights=gray_identity, device="cpu")
    assert str(ft.value) == str(rs.value) and not (tmp_path / "a.pth").exists()
