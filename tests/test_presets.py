"""Task presets and the shared pre/post-processing, round-tripped through real MIRNet-v2 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint

import napari_mirnet as nm
from napari_mirnet.processing import IntensityMap, upscale
from napari_mirnet.tasks import TASKS
from napari_mirnet.tasks import get_task as get_preset

RNG = np.random.default_rng(0)


def _image(shape, dtype):
    if np.dtype(dtype).kind == "u":
        return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    return (RNG.normal(size=shape) * 40 + 300).astype(dtype)  # microscopy-like floats, not in [0, 1]


LAYOUTS = {"YX": (23, 30), "YXC3": (23, 30, 3), "YXC4": (23, 30, 4), "CYX": (2, 23, 30), "ZCYX": (2, 5, 21, 18)}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_model_round_trips_every_dtype_and_layout(identity_weights, dtype, layout):
    image = _image(LAYOUTS[layout], dtype)
    axes = layout if layout in ("CYX", "ZCYX") else None  # a small leading axis is never guessed
    out = nm.restore(image, "denoise", identity_weights, axes=axes, device="cpu")
    assert out.shape == image.shape and out.dtype == image.dtype
    if np.dtype(dtype).kind == "u":
        np.testing.assert_array_equal(out, image)
    else:  # percentile mapping there and back: float rounding only
        np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-3)


def test_rgba_alpha_passes_through_a_real_model(tiny_weights):
    image = _image((24, 28, 4), np.uint8)
    out = nm.restore(image, "denoise", tiny_weights, device="cpu")
    np.testing.assert_array_equal(out[..., 3], image[..., 3])
    assert not np.array_equal(out[..., :3], image[..., :3])  # the colour channels were restored


def test_channels_are_restored_independently(tiny_weights):
    """Each channel of a multi-channel stack goes through the model on its own, in order."""
    a, b = _image((24, 28), np.uint16), _image((24, 28), np.uint16)
    both = nm.restore(np.stack([a, b]), "denoise", tiny_weights, axes="CYX", device="cpu")
    alone = nm.restore(b, "denoise", tiny_weights, device="cpu")
    # batched and single convolutions may differ in the last float bit: at most 1 LSB after rounding
    np.testing.assert_allclose(both[1].astype(int), alone.astype(int), atol=1, rtol=0)
    assert not np.array_equal(both[0], both[1])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_super_resolution_output_shape_and_content(identity_weights, scale):
    image = _image((17, 22, 3), np.uint8)
    out = nm.restore(image, "super_resolution", identity_weights, scale=scale, device="cpu")
    assert out.shape == (17 * scale, 22 * scale, 3) and out.dtype == np.uint8
    # an identity network leaves exactly the bicubic up-sampling
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    bicubic = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)[0]
    expected = np.clip(np.rint(bicubic.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_super_resolution_rejects_other_scales(identity_weights):
    with pytest.raises(ValueError, match="supports scale 2, 3, 4, not 5"):
        nm.restore(_image((8, 8), np.uint8), "super_resolution", identity_weights, scale=5)


def test_dual_pixel_pair(tmp_path):
    weights = make_checkpoint(tmp_path / "dp.pth", in_channels=6, dual_pixel=True)
    left, right = _image((20, 24, 3), np.uint16), _image((20, 24, 3), np.uint16)
    out = nm.restore((left, right), "defocus", weights, device="cpu")
    assert out.shape == left.shape and out.dtype == np.uint16
    swapped = nm.restore((right, left), "defocus", weights, device="cpu")
    assert not np.array_equal(out, swapped)  # left and right are distinct model inputs
    gray = nm.restore((left[..., 0], right[..., 0]), "defocus", weights, device="cpu")
    assert gray.shape == (20, 24)
    with pytest.raises(ValueError, match="left and right views must match"):
        nm.restore((left, right[:10]), "defocus", weights)
    with pytest.raises(ValueError, match=r"\(left, right\) pair"):
        nm.restore(left, "defocus", weights)


def test_intensity_maps():
    u16 = IntensityMap.for_image(np.zeros((4, 4), np.uint16))
    assert (u16.low, u16.high, u16.mode) == (0.0, 65535.0, "fixed")
    f = np.linspace(-5, 1000, 10_000, dtype=np.float32).reshape(100, 100)
    pm = IntensityMap.for_image(f)
    assert pm.mode == "percentile" and -5 < pm.low < 10 and 990 < pm.high < 1000
    np.testing.assert_allclose(pm.inverse(pm.forward(f)), f, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="Inf pixels"):
        IntensityMap.for_image(np.array([[1.0, np.inf]], np.float32))
    # NaN is nodata: left out of the percentiles (tests/test_geo.py restores such images)
    assert IntensityMap.for_image(np.array([[1.0, np.nan, 3.0]], np.float32)).low >= 1.0
    with pytest.raises(TypeError, match="complex"):
        IntensityMap.for_image(np.zeros((4, 4), np.complex64))


def test_presets_are_data():
    assert set(TASKS) == {"denoise", "super_resolution", "lowlight", "enhance", "defocus"}
    sr = get_preset("super_resolution")
    assert sr.default_weights(3, set()) == "sr_x3"
    assert sr.default_weights(2, {"small-sr-x2"}) == "small-sr-x2"
    assert sr.default_weights(4, {"small-sr-x2"}) == "sr_x4"  # never a model trained for another factor
    assert get_preset("defocus").default_weights() == "dual_pixel_defocus_deblurring"
    assert get_preset("enhance").default_weights() == "enhancement_fivek"
    with pytest.raises(ValueError, match="unknown task 'sharpen'"):
        get_preset("sharpen")


def test_upscale_keeps_channels():
    assert upscale(np.zeros((2, 5, 7), np.float32), 3).shape == (2, 15, 21)
