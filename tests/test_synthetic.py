"""Procedural training data (dead leaves), camera noise, and the validation / test splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mirnet import training
from napari_mirnet.degradations import degrade
from napari_mirnet.synthetic import bayer_mosaic, bilinear_demosaic, camera_noise, dead_leaves
from napari_mirnet.training import (
    HELD_OUT_IMAGES,
    TEST_IMAGES,
    TRAIN_IMAGES,
    VALIDATION_SOURCES,
    TrainConfig,
    _LeafBank,
    bundled_images,
    independent_test_images,
    split_validation,
    train,
    training_images,
    val_log_path,
    validation_images,
    validation_pairs,
)


def _spectrum_slope(img: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum over mid frequencies."""
    a = img[..., 0] - img[..., 0].mean()
    n = a.shape[0]
    w = np.hanning(n)
    p = np.abs(np.fft.fftshift(np.fft.fft2(a * np.outer(w, w)))) ** 2
    y, x = np.indices(p.shape)
    r = np.hypot(y - n // 2, x - n // 2).astype(int)
    radial = np.bincount(r.ravel(), p.ravel()) / np.bincount(r.ravel())
    f = np.arange(4, n // 4)
    return float(np.polyfit(np.log(f), np.log(radial[f]), 1)[0])


def test_dead_leaves_are_seeded_in_range_and_coloured():
    a, b, c = dead_leaves(96, 3, 7), dead_leaves(96, 3, 7), dead_leaves(96, 3, 8)
    assert a.shape == (96, 96, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.1
    assert not np.array_equal(a[..., 0], a[..., 1])  # colour leaves, not gray ones
    g = dead_leaves((64, 80), 1, np.random.default_rng(3))
    assert g.shape == (64, 80, 1)
    # edges at every scale: many distinct values, and strong jumps between neighbours
    assert len(np.unique(g)) > 500 and np.abs(np.diff(g[..., 0], axis=1)).max() > 0.3


def test_dead_leaves_have_a_natural_image_spectrum():
    slopes = [_spectrum_slope(dead_leaves(128, 1, s)) for s in (0, 1, 2)]
    # photographs and dead leaves: power ~ 1/f^2 (slope -2); white noise would be flat (0)
    assert -2.7 < float(np.mean(slopes)) < -1.4
    assert abs(_spectrum_slope(np.random.default_rng(0).random((128, 128, 1)))) < 0.5


def test_demosaic_is_exact_on_flat_colours_and_camera_noise_is_correlated():
    flat = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    torch.testing.assert_close(bilinear_demosaic(bayer_mosaic(flat)), flat)
    x = torch.full((4, 3, 64, 64), 0.5)
    gen = torch.Generator().manual_seed(0)
    zero = torch.zeros(4)
    assert torch.equal(camera_noise(x, zero, zero, gen), x)  # no noise: the image unchanged
    n = camera_noise(x, zero, torch.full((4,), 20.0), gen) - x
    corr = float((n[..., 1:] * n[..., :-1]).mean() / n.var())
    assert corr > 0.3  # neighbours share the noise of the mosaic samples they interpolate
    g = degrade(x, {"kind": "gaussian", "sigma": 20}, gen) - x
    assert abs(float((g[..., 1:] * g[..., :-1]).mean() / g.var())) < 0.05
    # shot noise: more photons, less noise; gray images keep one channel
    lo = degrade(x[:, :1], {"kind": "camera", "peak": 20, "sigma": 0}, gen) - x[:, :1]
    hi = degrade(x[:, :1], {"kind": "camera", "peak": 2000, "sigma": 0}, gen) - x[:, :1]
    assert lo.shape == (4, 1, 64, 64) and lo.std() > 5 * hi.std()


def test_leaf_bank_depends_on_the_iteration_alone():
    cfg = TrainConfig(channels=1, stages=((32, 2),), procedural=0.5, procedural_bank=3, procedural_size=40)
    cfg.procedural_refresh = 2
    walked = _LeafBank(cfg, torch.device("cpu"))
    for it in range(0, 12):
        walked.at(it)
    direct = _LeafBank(cfg, torch.device("cpu")).at(11)
    for a, b in zip(walked.images, direct):
        assert torch.equal(a, b)
    fresh = _LeafBank(cfg, torch.device("cpu")).at(0)
    assert sum(not torch.equal(a, b) for a, b in zip(fresh, direct)) == 3  # all renewed by iteration 11
    with pytest.raises(ValueError, match="procedural_size"):
        TrainConfig(stages=((64, 2),), procedural=0.5, procedural_size=48)


def test_splits_are_disjoint_and_test_images_are_new():
    names = set(TEST_IMAGES)
    assert not names & set(TRAIN_IMAGES) and not names & set(HELD_OUT_IMAGES)
    assert set(VALIDATION_SOURCES) <= set(TRAIN_IMAGES) and not set(VALIDATION_SOURCES) & set(HELD_OUT_IMAGES)
    # by content too: no test image is a (gray) copy of a training, validation or held-out image
    test = independent_test_images(1, crop=10**6)
    assert {"ascent", "aero", "mri", "dem"} <= set(test)
    seen = bundled_images(TRAIN_IMAGES + HELD_OUT_IMAGES)
    for name, img in test.items():
        for other, o in seen.items():
            o = training.to_channels(o, 1)
            if o.shape == img.shape:
                r = np.corrcoef(o.ravel(), img.ravel())[0, 1]
                assert r < 0.95, (name, other)
    # the validation strips are cut from the bottom and never reach the training images
    full = bundled_images(VALIDATION_SOURCES)
    tr, val = split_validation(full)
    assert set(val) and set(val) <= set(full)
    for name, v in val.items():
        h = full[name].shape[0]
        assert tr[name].shape[0] + v.shape[0] == h
        assert np.array_equal(np.concatenate([tr[name], v]), full[name])
    trained = training_images()
    for name in val:
        assert trained[name].shape[0] == tr[name].shape[0] < full[name].shape[0]
    assert set(validation_images(3, 64)) <= {n for n in val if training.is_colour(full[n])}


def test_test_images_copied_for_a_machine_without_the_packages(tmp_path):
    written = training.save_test_images(tmp_path)
    assert set(written) == set(independent_test_images(1))
    a, b = independent_test_images(1, 64), independent_test_images(1, 64, test_dir=tmp_path)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_selects_the_best_validation_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    clean = [rng.random((64, 64)).astype(np.float32)]
    val_imgs = {k: v for k, v in list(validation_images(1, 32).items())[:2]}
    val = validation_pairs(val_imgs, [{"kind": "gaussian", "sigma": 25}, {"kind": "gaussian", "sigma": 50}])
    assert len(val) == 4
    cfg = TrainConfig(
        channels=1,
        n_feat=16,
        iters=4,
        stages=((32, 2),),
        procedural=0.5,
        procedural_bank=2,
        procedural_size=48,
        val_every=2,
        lr=1e-3,
        degradation={"kind": "camera", "peak_range": [20, 500], "sigma_range": [1, 10]},
    )
    res = train(cfg, clean=clean, out=tmp_path / "r.pth", validation=val, progress=False)
    log = [json.loads(line) for line in val_log_path(tmp_path / "r.pth").read_text().splitlines()]
    assert [r["iter"] for r in log] == [2, 4] and all(len(r["per_image"]) == 4 for r in log)
    best = max(log, key=lambda r: r["val_psnr"])
    ck = torch.load(res.best_checkpoint, weights_only=True)
    assert ck["meta"]["selection"]["iteration"] == best["iter"]
    assert res.best_val_psnr == pytest.approx(best["val_psnr"], abs=1e-3)
    assert ck["meta"]["training_data"]["procedural"]["fraction_of_batch"] == 0.5
    # the selected weights give the logged validation PSNR
    from napari_mirnet.model import MIRNetV2, config_from_state_dict

    model = MIRNetV2(config_from_state_dict(ck["params"]))
    model.load_state_dict(ck["params"])
    with torch.no_grad():
        ps = []
        for inp, c in val.values():
            y = model.eval()(torch.from_numpy(inp).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0)
            ps.append(10 * np.log10(1 / float(np.mean((y.double().numpy() - c) ** 2))))
    assert float(np.mean(ps)) == pytest.approx(best["val_psnr"], abs=1e-3)
