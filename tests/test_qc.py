"""Issue 33: the residual and trust map (napari_mirnet.qc, restore(qc=True), --qc, the widget checkbox)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_mirnet import qc
from napari_mirnet.training import _load_test_image


def _ascent() -> np.ndarray:
    """PyWavelets' 'ascent' photograph (a file the package ships), float in [0, 1]."""
    img = _load_test_image("ascent")
    if img is None:
        pytest.skip("pywt's ascent image is not installed")
    return np.asarray(img, np.float64).reshape(img.shape[:2])


def _smooth(shape=(512, 512), lo=20.0, hi=200.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return lo + (hi - lo) * (0.5 + 0.5 * np.sin(xx / 60) * np.cos(yy / 80))


# ------------------------------------------------------------------------- the noise estimator
@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_sigma_recovered_on_a_photograph(sigma):
    clean = _ascent()
    noisy = clean + np.random.default_rng(1).normal(0, sigma, clean.shape)
    assert qc.estimate_sigma(noisy) == pytest.approx(sigma, rel=0.1)
    model = qc.estimate_noise(noisy)
    assert model.gain == 0 and np.sqrt(model.offset) == pytest.approx(sigma, rel=0.1)


def test_poisson_gain_and_read_noise_recovered():
    rng = np.random.default_rng(2)
    # photon counts 5 to 150 at gain 2, read noise 8: the read noise a visible part of the variance
    gain, read = 2.0, 8.0
    z = gain * rng.poisson(_smooth(lo=10.0, hi=300.0) / gain) + rng.normal(0, read, (512, 512))
    model = qc.estimate_noise(z)
    assert model.gain == pytest.approx(gain, rel=0.1)
    assert model.offset == pytest.approx(read**2, rel=0.1)
    assert "Poisson-Gaussian" in model.describe(100.0)


def test_pure_gaussian_is_not_fitted_a_gain():
    z = _smooth() + np.random.default_rng(3).normal(0, 5.0, (512, 512))
    model = qc.estimate_noise(z)
    assert model.gain == 0 and np.sqrt(model.offset) == pytest.approx(5.0, rel=0.1)


def test_correlated_noise_is_recognised():
    rng = np.random.default_rng(4)
    clean = _ascent()
    white = rng.normal(0, 0.1, clean.shape)
    corr = ndimage.gaussian_filter(rng.normal(0, 1, clean.shape), 1.0)
    assert qc.estimate_noise(clean + white).correlation < 0.15
    assert qc.estimate_noise(clean + 0.1 * corr / corr.std()).correlation > 0.3


def _correlated(shape, sigma, seed):
    """White noise filtered by a Gaussian of sigma 1 px, rescaled to ``sigma``: lag-1 0.78, lag-2 0.37."""
    n = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, shape), 1.0)
    return sigma * n / n.std()


@pytest.mark.parametrize("sigma", [0.1, 0.2])
def test_correlated_noise_variance_and_lags_recovered(sigma):
    """(At sigma 0.05 on this photograph the stride-4 operator also sees its texture: +32%, docs/qc.md.)"""
    clean = _ascent()
    noise = _correlated(clean.shape, sigma, 7)
    # Gaussian asked for: left to decide, the photograph's texture at stride 4 (which grows with its
    # brightness) is fitted a small gain (variance at the mean within 12%, docs/qc.md)
    model = qc.estimate_noise(clean + noise, poisson=False)
    # the plain operator sees under 1% of this noise's variance; the wider strides see it all
    assert qc.stride_variances([clean + noise])[0] < 0.1 * sigma**2
    assert model.gain == 0 and model.offset == pytest.approx(sigma**2, rel=0.1)
    assert model.stride > 1 and model.lags[0] == pytest.approx(0.78, abs=0.08)
    assert model.lags[1] == pytest.approx(0.37, abs=0.08) and model.lags[3] < 0.1
    assert qc.estimate_sigma(clean + noise) == pytest.approx(sigma, rel=0.1)
    assert "spatially correlated" in model.describe()


def _verdict(x, y, noise=None):
    noise = noise or qc.estimate_noise(x)
    return qc.summarize(qc.block_signals(x, y, noise), noise, residual=qc.stride_variances([x - y]))


def test_correlated_noise_oracle_cleared_identity_and_partial_flagged():
    clean = _ascent()
    x = clean + _correlated(clean.shape, 0.1, 8)
    # a model that removed this noise (the clean image) is cleared: the residual has the noise's
    # variance and spectrum, and follows no edges
    oracle = _verdict(x, clean)
    assert oracle["verdict"] == "cleared", oracle["text"]
    assert 0.8 < oracle["median_ratio"] < 1.25 and oracle["residual_lag1"] == pytest.approx(0.78, abs=0.1)
    # one that left it all is flagged for the noise it left
    same = _verdict(x, x * 0.999)
    assert same["verdict"] == "flagged" and "noise left in" in same["text"]
    # one that took only the noise's fine part (what a white-noise denoiser does) is flagged too
    partial = _verdict(x, ndimage.gaussian_filter(x, 0.7))
    assert partial["verdict"] == "flagged" and "noise left in" in partial["text"], partial["text"]


def test_white_noise_oracle_residual_is_white():
    clean, x = _noisy_ascent()
    summary = _verdict(x, clean)
    assert summary["verdict"] == "cleared" and summary["residual_lag1"] == 0.0


def test_estimator_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="2-D image of at least 8 x 8"):
        qc.estimate_sigma(np.zeros((4, 4)))


# ------------------------------------------------------------------------- the verdicts
def _noisy_ascent(sigma=0.1, seed=5):
    clean = _ascent()
    return clean, clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)


def test_perfect_oracle_output_is_cleared():
    clean, x = _noisy_ascent()
    noise = qc.estimate_noise(x)
    signals = qc.block_signals(x, clean, noise)
    summary = qc.summarize(signals, noise)
    assert summary["verdict"] == "cleared", summary["text"]
    assert "sigma 0.1" in summary["text"]
    assert 0.85 < summary["median_ratio"] < 1.2
    _, trust = qc.combine(signals)
    assert np.median(trust) > 0.5


def test_a_model_that_blurs_is_flagged_where_it_blurs():
    clean, x = _noisy_ascent()
    blurred = ndimage.gaussian_filter(x, 2.0)
    noise = qc.estimate_noise(x)
    signals = qc.block_signals(x, blurred, noise)
    summary = qc.summarize(signals, noise)
    assert summary["verdict"] == "flagged"
    assert "structure removed" in summary["text"] or "x the noise sigma" in summary["text"]
    # the least trusted blocks are those where the blur did the most harm
    doubt, _ = qc.combine(signals)
    err = qc._edge_blocks(np.abs(blurred - clean), qc.BLOCK).mean(-1)
    from scipy.stats import spearmanr

    assert spearmanr(doubt.ravel(), err.ravel())[0] > 0.5


def test_an_output_that_removes_nothing_is_flagged():
    _, x = _noisy_ascent()
    noise = qc.estimate_noise(x)
    summary = qc.summarize(qc.block_signals(x, x * 0.999, noise), noise)
    assert summary["verdict"] == "flagged" and "x the noise sigma" in summary["text"]


def test_chunked_signals_equal_whole_image_signals():
    import dask.array as da

    clean, x = _noisy_ascent()
    y = ndimage.gaussian_filter(x, 1.0)
    noise = qc.estimate_noise(x)
    # chunks of 96 px: blocks of 32 never straddle a chunk; the halo covers the filters (dask reflects
    # about the edge pixel, numpy calls that "symmetric"), the 4-px smoothing of "left" included
    lazy = qc.signal_maps(da.from_array(x, chunks=100), da.from_array(y, chunks=100), noise, chunk=96)
    h = qc.HALO
    whole = qc.block_signals(np.pad(x, h, mode="symmetric"), np.pad(y, h, mode="symmetric"), noise, halo=h)
    np.testing.assert_allclose(lazy.compute(), whole, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- restore(qc=True)
def _crop(edge=96):
    clean = _ascent()[200 : 200 + edge, 200 : 200 + edge]
    return clean, (clean + np.random.default_rng(6).normal(0, 25 / 255, clean.shape)).astype(np.float32)


@pytest.mark.slow
def test_restore_qc_returns_residual_and_trust(tiny_weights):
    from napari_mirnet import restore

    _, x = _crop()
    weights = _gray_weights(tiny_weights)
    y, report = restore(x, weights=weights, qc=True, device="cpu", tile=64, halo=8)
    assert isinstance(y, np.ndarray) and y.shape == x.shape
    np.testing.assert_allclose(report.residual, x - y, atol=1e-6)
    assert report.trust.shape == (3, 3) and report.trust_axes == "YX"
    assert ((report.trust > 0) & (report.trust <= 1)).all()
    assert report.summary["verdict"] in ("cleared", "flagged") and report.text


_GRAY = {}


def _gray_weights(_) -> str:
    """A tiny random 1-channel MIRNet-v2 (the gray denoiser's shape), made once per session."""
    import tempfile
    from pathlib import Path

    from conftest import make_checkpoint

    if "w" not in _GRAY:
        _GRAY["w"] = make_checkpoint(Path(tempfile.mkdtemp()) / "gray.pth", in_channels=1, out_channels=1)
    return _GRAY["w"]


def test_qc_refused_for_tasks_that_change_the_grid():
    from napari_mirnet import restore

    with pytest.raises(ValueError, match="task='denoise'"):
        restore(np.zeros((32, 32), np.float32), task="super_resolution", qc=True)
    with pytest.raises(ValueError, match="qc='tta'"):
        restore(np.zeros((32, 32), np.float32), qc="yes")


@pytest.mark.slow
def test_restore_qc_into_ome_zarr_readable_by_ome_zarr_py(tmp_path):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_mirnet import restore

    _, x = _crop(128)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=x.shape, chunks=(64, 64), dtype="float32")[:] = x
    out = tmp_path / "out.zarr"
    y, report = restore(str(src), weights=_gray_weights(None), out=str(out), qc=True, device="cpu", tile=64, halo=8)
    # the residual in the store is input minus the stored output
    stored = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(stored["qc/residual/0"][:], x - np.asarray(y), atol=1e-6)
    # both are NGFF images that ome-zarr-py reads, the trust map placed on its blocks
    for name, shape in (("residual", x.shape), ("trust", (4, 4))):
        nodes = list(Reader(parse_url(str(out / "qc" / name)))())
        assert nodes and nodes[0].data[0].shape == shape
    ome = stored["qc/trust"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert ome[0]["scale"] == [32.0, 32.0] and ome[1]["translation"] == [15.5, 15.5]
    summary = stored["qc"].attrs["napari_mirnet_qc"]
    assert summary["verdict"] == report.summary["verdict"] and summary["text"] == report.text
    # the restored image itself is still read as before
    nodes = list(Reader(parse_url(str(out)))())
    assert nodes[0].data[0].shape == x.shape


@pytest.mark.slow
def test_ome_zarr_models_validates_the_qc_images(tmp_path):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image

    from napari_mirnet import restore

    _, x = _crop(64)
    out = tmp_path / "out.zarr"
    restore(x, weights=_gray_weights(None), out=str(out), qc=True, device="cpu", tile=64, halo=8)
    import zarr

    for name in ("residual", "trust"):
        Image.from_zarr(zarr.open_group(str(out / "qc" / name), mode="r"))


# ------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_qc_writes_sibling_files_for_tiff(tmp_path, capsys):
    import tifffile

    from napari_mirnet.cli import main

    _, x = _crop(64)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, x)
    rc = main(["restore", str(src), "-o", str(dst), "--weights", _gray_weights(None), "--qc", "--device", "cpu", "-q"])
    assert rc == 0
    residual = tifffile.imread(tmp_path / "out.qc-residual.tif")
    np.testing.assert_allclose(residual, x - tifffile.imread(dst), atol=1e-6)
    assert tifffile.imread(tmp_path / "out.qc-trust.tif").shape == (2, 2)
    summary = json.loads((tmp_path / "out.qc.json").read_text())
    assert summary["verdict"] in ("cleared", "flagged")
    assert f"qc {summary['verdict']}" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial"))


def test_cli_qc_refused_in_cli_words(tmp_path, capsys):
    from napari_mirnet.cli import main

    src = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(src, np.zeros((32, 32), np.float32))
    rc = main(["restore", str(src), "-o", str(tmp_path / "o.tif"), "--task", "super_resolution", "--qc"])
    err = capsys.readouterr().err
    assert rc != 0 and "--qc" in err and "--task denoise" in err and "qc=True" not in err


# ------------------------------------------------------------------------- the widget
def _check_in_widget(viewer, qtbot, layer, box: str = "qc"):
    """The denoise widget run on ``layer`` (the tiny gray model, CPU) with its ``box`` checkbox
    ticked; returns the widget once its worker is done and asserts the two qc layers came."""
    from conftest import SAFETY_MS

    from napari_mirnet.widgets import LOCAL_FILE, DenoiseWidget

    w = DenoiseWidget(viewer)
    w.image.value = layer
    w.weights.value = LOCAL_FILE
    w.weights_file.value = _gray_weights(None)
    w.device.value = "cpu"
    assert not w.qc.value and not w.qc_passes.value
    getattr(w, box).value = True
    w()
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    names = [lyr.name for lyr in viewer.layers]
    want = [f"{layer.name} denoised residual", f"{layer.name} denoised trust"]
    assert names[-2:] == want, (names, w.last_status)
    return w


@pytest.mark.gui
@pytest.mark.slow
def test_widget_checkbox_adds_residual_and_trust_layers(make_napari_viewer, qtbot):
    _, x = _crop(64)
    viewer = make_napari_viewer()
    layer = viewer.add_image(x, name="noisy", scale=(0.5, 0.5), translate=(10.0, 20.0))
    w = _check_in_widget(viewer, qtbot, layer)
    res, trust = viewer.layers[-2], viewer.layers[-1]
    out = viewer.layers["noisy denoised"]
    np.testing.assert_allclose(res.data, x - out.data, atol=1e-6)
    assert res.colormap.name == "coolwarm" and res.contrast_limits[0] == -res.contrast_limits[1]
    assert trust.colormap.name == "RdYlGn" and tuple(trust.scale) == (16.0, 16.0)
    assert tuple(trust.translate) == (10.0 + 15.5 * 0.5, 20.0 + 15.5 * 0.5)
    assert "qc " in w.last_status


@pytest.mark.gui
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noisy", "noiseless"])
def test_widget_check_of_a_layer_with_nodata(make_napari_viewer, qtbot, kind):
    """NaN pixels (nodata) in the layer: the layers come with finite contrast limits, the trust map
    NaN only in blocks without data, also where the input shows no noise (sigma 0)."""
    x = _crop(64)[1] if kind == "noisy" else np.full((64, 64), 0.4, np.float32)
    x = x.copy()
    x[:, :32] = np.nan
    viewer = make_napari_viewer()
    w = _check_in_widget(viewer, qtbot, viewer.add_image(x, name="holes"))
    res, trust = viewer.layers[-2], viewer.layers[-1]
    assert np.all(np.isfinite(res.contrast_limits)) and res.contrast_limits[1] > 0
    if kind == "noiseless":  # no noise sigma to scale by: the residual's own range
        size = np.nanmax(np.abs(res.data))
        assert res.contrast_limits[1] == pytest.approx(size if size > 0 else 1.0, rel=1e-4)
    assert np.isnan(trust.data[:, 0]).all() and np.isfinite(trust.data[:, 1]).all()
    assert "nan" not in w.last_status


@pytest.mark.gui
@pytest.mark.slow
def test_widget_more_passes_checkbox_runs_the_check_with_the_flips(make_napari_viewer, qtbot):
    """The widget's second qc checkbox is qc='tta': the 8 flips' disagreement reaches the layers'
    summary (white noise: no second opinion), and it implies the check itself."""
    _, x = _crop(64)
    viewer = make_napari_viewer()
    _check_in_widget(viewer, qtbot, viewer.add_image(x, name="noisy"), box="qc_passes")
    summary = viewer.layers[-1].metadata["mirnet"]["qc"]
    assert "disagreement" in summary["suspect_fraction"] and "second" not in summary["suspect_fraction"]


@pytest.mark.slow
def test_tta_disagreement_and_lazy_input():
    import dask.array as da

    from napari_mirnet import restore

    _, x = _crop(64)
    lazy = da.from_array(x, chunks=32)
    y, report = restore(lazy, weights=_gray_weights(None), qc="tta", device="cpu", tile=64, halo=8)
    assert isinstance(y, da.Array)
    assert set(report.signals) == {"noise", "structure", "detail", "left", "removed", "disagreement"}
    # a random network is not equivariant to flips: its 8 passes disagree, and the map says so
    assert (report.signals["disagreement"] > 0).all()
    np.testing.assert_allclose(np.asarray(report.residual), x - y.compute(), atol=1e-6)


@pytest.mark.slow
def test_second_opinion_finds_where_a_white_noise_denoiser_left_correlated_noise():
    """qc='tta' on noise blurred over ~2 px (lags 0.78 / 0.37 / 0.11), which the shipped denoiser
    leaves in: the same model restoring the noise's pixel-shuffle sub-images is a second opinion
    whose distance from the output ranks the blocks' true error (skimage's camera, not a benchmark
    image; Spearman 0.67 measured, the qc=True map 0.44, the combined map 0.72)."""
    from scipy.stats import spearmanr
    from skimage import data

    from napari_mirnet import restore

    clean = (data.camera()[:256, :256] / 255.0).astype(np.float32)
    blur = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(clean.shape), 1.0)
    x = (clean + (25 / 255) * blur / blur.std()).astype(np.float32)
    y, report = restore(x, qc="tta", device="cpu")
    err = qc._edge_blocks(np.abs(y - clean), qc.BLOCK).mean(-1)
    assert report.noise.stride == 4 and "second" in report.signals
    assert "sub-images of stride 4" in report.text and "noise left in" in report.text
    assert spearmanr(report.signals["second"].ravel(), err.ravel())[0] > 0.5
    _, cheap = restore(x, qc=True, device="cpu")
    assert "second" not in cheap.signals  # one more model pass: only with qc="tta"
    with_second = spearmanr(report.doubt.ravel(), err.ravel())[0]
    assert with_second > spearmanr(cheap.doubt.ravel(), err.ravel())[0] + 0.15


@pytest.mark.slow
def test_no_second_opinion_for_a_model_that_restores_otherwise(tmp_path):
    """The second opinion (the model at the noise's stride) is for models that restore whole images:
    a file that restores sub-images (one stride, or several averaged) or gives detail back after is
    marked so when the run is prepared, and qc='tta' leaves the signal out for it."""
    import torch
    from skimage import data

    from napari_mirnet import restore
    from napari_mirnet.engine import prepare
    from napari_mirnet.weights import locate, read_checkpoint

    sd, meta = read_checkpoint(locate("small-denoise-gray"))[:2]
    filt = {"vertical": [0.78, 0.37], "horizontal": [0.78, 0.37], "gain": 0.0, "floor": 0.01, "window": 32}
    clean = (data.camera()[:256, :256] / 255.0).astype(np.float32)
    x = np.clip(clean + _correlated(clean.shape, 25 / 255, 0), 0, 1).astype(np.float32)
    files = {}
    for name, extra in {"plain": {}, "stride": {"pixel_shuffle": 4}, "averaged": {"pixel_shuffle": [3, 4]},
                        "filter": {"detail_filter": filt}}.items():  # fmt: skip
        files[name] = str(tmp_path / f"{name}.pth")
        torch.save({"params": sd, "meta": {**meta, **extra}}, files[name])
        run = prepare(x, "denoise", files[name], options=qc_options(device="cpu"))
        assert run.restores_whole is (name == "plain"), name
    # restoring whole images, the filter changes little: noise is left in, yet no second opinion
    _, report = restore(x, weights=files["filter"], qc="tta", device="cpu")
    assert report.noise.stride == 4 and "noise left in" in report.text
    assert "disagreement" in report.signals and "second" not in report.signals


def test_a_run_restoring_sub_images_is_the_model_at_that_stride():
    """RestorationRun.subimage_stride (the second opinion's run) restores what the model restoring
    pixel-shuffle sub-images of that stride gives, and is known apart from the plain run on resume."""
    import dataclasses

    import torch

    from napari_mirnet.engine import execute, prepare
    from napari_mirnet.weights import load_model

    x = np.clip(_crop(64)[1], 0, 1)  # "fixed": the model sees the pixels as they are
    weights = _gray_weights(None)
    run = prepare(x, "denoise", weights, options=qc_options(tile=128, halo=0, device="cpu", normalisation="fixed"))
    second = dataclasses.replace(run, subimage_stride=2)
    model = load_model(weights, "cpu")
    model.pixel_shuffle = 2
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None, None])[0, 0].clamp(0, 1).numpy()  # "fixed" float output: [0, 1]
    np.testing.assert_allclose(execute(second), want, atol=1e-5)
    assert np.abs(execute(run) - want).max() > 1e-3  # the plain run restores the whole image
    assert second.fingerprint["subimage_stride"] == 2 and "subimage_stride" not in run.fingerprint


def qc_options(**kw):
    from napari_mirnet.engine import RestoreOptions

    return RestoreOptions(**kw)


def test_restore_whole_refuses_qc_for_other_tasks():
    from napari_mirnet.api import restore_whole

    with pytest.raises(ValueError, match="task='denoise'"):
        restore_whole(np.zeros((16, 16), np.float32), task="super_resolution", qc=True)


def test_benchmark_chooses_on_validation_strips_never_test_images():
    """benchmarks/qc.py --split validation (where the thresholds were chosen) uses no test image, and its
    correlated noise is the one the docs describe (lag-1 0.78, lag-2 0.37), which the noise model reads."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import qc as bench

    from napari_mirnet.training import TEST_IMAGES

    val = bench.validation_images()
    assert val and not set(val) & set(TEST_IMAGES)
    flat = np.full((256, 256), 0.5, np.float32)
    n = bench.noisy(flat, "correlated", seed=1) - flat
    lag1 = np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1]
    lag2 = np.corrcoef(n[:, :-2].ravel(), n[:, 2:].ravel())[0, 1]
    assert lag1 == pytest.approx(0.78, abs=0.03) and lag2 == pytest.approx(0.37, abs=0.04)
    model = qc.estimate_noise(flat + n)
    assert model.lags[0] == pytest.approx(lag1, abs=0.05) and model.offset == pytest.approx(n.var(), rel=0.1)


# ------------------------------------------------------------------------- nodata, no noise, too small
def _camera_with_noise(sigma=0.08, blur=0.0, seed=1):
    from skimage import data

    clean = (data.camera()[:256, :256] / 255.0).astype(np.float32)
    n = np.random.default_rng(seed).standard_normal(clean.shape)
    if blur:
        n = ndimage.gaussian_filter(n, blur)
        n /= n.std()
    return clean, (clean + sigma * n).astype(np.float32)


def test_noise_estimate_reads_the_pixels_with_data_only():
    _, x = _camera_with_noise()
    holes = x.copy()
    holes[:, :100] = np.nan
    holes[np.random.default_rng(2).random(x.shape) < 0.02] = np.nan
    assert np.sqrt(qc.estimate_noise(holes).offset) == pytest.approx(0.08, rel=0.05)
    assert qc.estimate_noise(holes).stride == 1
    _, xc = _camera_with_noise(blur=1.0)
    xc[:, :100] = np.nan
    model = qc.estimate_noise(xc)
    assert model.stride == 4 and model.correlation == pytest.approx(0.77, abs=0.1)
    with pytest.raises(ValueError, match="mostly without data"):
        qc.estimate_noise(np.full((64, 64), np.nan))


@pytest.mark.slow
def test_nodata_blocks_are_nan_and_the_rest_is_checked_as_without_them():
    """Nodata (NaN, as restore keeps it) once gave a NaN trust map and 'cleared ... sigma nan'."""
    from napari_mirnet import restore

    _, x = _camera_with_noise()
    holes = x.copy()
    holes[:, :100] = np.nan  # blocks 0-2 of each row have no data; block 3 has some
    holes[np.random.default_rng(2).random(x.shape) < 0.02] = np.nan
    _, whole = restore(x, qc=True, device="cpu")
    y, part = restore(holes, qc=True, device="cpu")
    assert np.array_equal(np.isnan(y), np.isnan(holes))
    assert np.isnan(part.trust[:, :3]).all() and np.isfinite(part.trust[:, 3:]).all()
    assert whole.summary["verdict"] == part.summary["verdict"] == "cleared", part.text
    assert "nan" not in part.text
    assert part.noise.sigma_at(0.5) == pytest.approx(whole.noise.sigma_at(0.5), rel=0.05)
    assert np.abs(part.trust[:, 4:] - whole.trust[:, 4:]).mean() < 0.05  # measured 0.006


def test_a_noiseless_input_is_cleared_and_a_change_to_it_is_flagged():
    from napari_mirnet import restore

    flat = np.full((64, 64), 0.3, np.float32)
    y, report = restore(flat, qc=True, device="cpu")
    assert report.summary["verdict"] == "cleared" and "shows no noise" in report.text
    noise = qc.estimate_noise(flat)
    summary = qc.summarize(qc.block_signals(flat, flat - 0.01, noise), noise, level=0.3)
    assert summary["verdict"] == "flagged" and "shows no noise, yet the output differs" in summary["text"]


def test_qc_refuses_planes_too_small_before_anything_runs(tmp_path, capsys):
    import tifffile

    from napari_mirnet import restore
    from napari_mirnet.cli import main

    small = np.random.default_rng(0).random((5, 40)).astype(np.float32)
    with pytest.raises(ValueError, match=r"qc=True .* at least 8 x 8 pixels; this image's are 5 x 40: drop qc=True"):
        restore(small, qc=True, device="cpu")
    with pytest.raises(ValueError, match=r"at least 8 x 8"):
        restore(small, qc="tta", device="cpu", out=tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, small)
    assert main(["restore", str(src), "-o", str(tmp_path / "o.tif"), "--qc", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "--qc measures the noise" in err and "drop --qc" in err and "qc=True" not in err
    assert not (tmp_path / "o.tif").exists()
