"""The models shipped in napari_mirnet/models/: loadable with plain torch, small, and actually good.

Quality is checked on crops of held-out images (never trained on) against the trivial baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mirnet.degradations import bicubic_down_up, degrade
from napari_mirnet.model import MIRNetV2, config_from_state_dict, self_ensemble
from napari_mirnet.training import HELD_OUT_IMAGES, TRAIN_IMAGES, bundled_images, to_channels

MODELS = Path(__file__).resolve().parents[1] / "napari_mirnet" / "models"
SHIPPED = {
    "small-denoise-gray": ("denoise", 1),
    "small-denoise-rgb": ("denoise", 3),
    "small-sr-x2": ("super_resolution", 3),
    "small-lowlight": ("lowlight", 3),
}
CROP = 128


def _load(name):
    path = MODELS / f"{name}.pth"
    assert path.exists(), f"shipped model {path} is missing"
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = MIRNetV2(config_from_state_dict(ck["params"]))
    model.load_state_dict(ck["params"])
    return model.eval(), ck, path


def _crop(name, channels, crop=CROP):
    img = bundled_images([name])[name]
    a = to_channels(img, channels)
    h, w = a.shape[:2]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return torch.from_numpy(a[y0 : y0 + crop, x0 : x0 + crop]).permute(2, 0, 1)[None].contiguous()


def _psnr(a, b):
    return float(10 * torch.log10(1 / torch.mean((a.clamp(0, 1).double() - b.double()) ** 2)))


@torch.no_grad()
def _run(model, x):
    return model(x).clamp(0, 1)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_file_format(name):
    model, ck, path = _load(name)
    task, channels = SHIPPED[name]
    assert path.stat().st_size <= 5 * 1024 * 1024
    assert (MODELS / f"{name}.md").exists(), "every shipped model has a model card"
    meta = ck["meta"]
    assert meta["task"] == task
    assert meta["config"] == config_from_state_dict(ck["params"]).to_dict()
    assert meta["config"]["in_channels"] == meta["config"]["out_channels"] == channels
    assert all(v.dtype == torch.float16 for v in ck["params"].values())
    assert meta["code_version"] and meta["normalisation"]["input_range"] == [0.0, 1.0]
    assert set(meta["training_data"]["held_out"]) == set(HELD_OUT_IMAGES)
    assert not set(meta["training_data"]["images"]) & set(HELD_OUT_IMAGES)
    assert set(meta["training_data"]["images"]) <= set(TRAIN_IMAGES)
    if task == "super_resolution":
        assert meta["scale"] == 2


@pytest.mark.parametrize("name,image", [("small-denoise-gray", "camera"), ("small-denoise-rgb", "astronaut")])
@pytest.mark.slow
def test_denoiser_beats_noisy_input(name, image):
    model, _, _ = _load(name)
    clean = _crop(image, SHIPPED[name][1])
    for sigma, gain in ((25, 7.0), (50, 9.0)):
        noisy = degrade(clean, {"kind": "gaussian", "sigma": sigma}, torch.Generator().manual_seed(sigma))
        p_noisy, p_out = _psnr(noisy, clean), _psnr(_run(model, noisy), clean)
        assert p_out > p_noisy + gain, (sigma, p_noisy, p_out)
    # a clean image stays (nearly) clean: the blind range starts at sigma 0
    assert _psnr(_run(model, clean), clean) > 33


def test_gray_denoiser_handles_poisson_gaussian():
    model, _, _ = _load("small-denoise-gray")
    clean = _crop("camera", 1)
    noisy = degrade(clean, {"kind": "poisson_gaussian", "peak": 30.0, "sigma": 3.0}, torch.Generator().manual_seed(1))
    assert _psnr(_run(model, noisy), clean) > _psnr(noisy, clean) + 6.0


def test_sr_beats_bicubic():
    model, _, _ = _load("small-sr-x2")
    gains = []
    for image in ("astronaut", "coffee"):
        clean = _crop(image, 3)
        low = bicubic_down_up(clean, 2)
        gains.append(_psnr(_run(model, low), clean) - _psnr(low, clean))
    assert np.mean(gains) > 1.0, gains


def test_lowlight_beats_gamma():
    model, _, _ = _load("small-lowlight")
    clean = _crop("chelsea", 3)
    spec = {"kind": "lowlight", "factor": 0.12, "gamma": 1.5, "peak": 100.0, "sigma": 2.0}
    dark = degrade(clean, spec, torch.Generator().manual_seed(0))
    best_gamma = max(_psnr(dark.clamp(0, 1) ** (1 / g), clean) for g in np.linspace(1, 8, 71))
    out = _psnr(_run(model, dark), clean)
    assert out > best_gamma + 1.0, (out, best_gamma)


@pytest.mark.slow
def test_test_time_augmentation_improves_the_shipped_denoiser():
    model, _, _ = _load("small-denoise-rgb")
    clean = _crop("astronaut", 3, crop=128)
    noisy = degrade(clean, {"kind": "gaussian", "sigma": 25}, torch.Generator().manual_seed(25))
    with torch.no_grad():
        plain, ens = _psnr(_run(model, noisy), clean), _psnr(self_ensemble(model, noisy).clamp(0, 1), clean)
    assert ens > plain + 0.02, (plain, ens)
