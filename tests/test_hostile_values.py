"""Hostile values (issue 36, 14-16, 19 and their kin): values and settings outside the usual range.

Each is a correct result or a clear error in the words of the interface the user typed. Real tiny
MIRNet-v2 checkpoints (conftest; the identity one lets values be checked bit for bit through the
real model), real zarr stores, OME-Zarr pyramids written by ome-zarr-py, TIFFs read by tifffile.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr

import napari_mirnet as nm
from napari_mirnet.api import restore_whole
from napari_mirnet.cli import main
from napari_mirnet.processing import IntensityMap
from napari_mirnet.tasks import get_task

TILED = dict(tile=48, halo=8, blend=4, device="cpu")
RNG = np.random.default_rng(36)
#: numpy's overflow/invalid warnings were the only sign of the bugs below: none may be raised now
NO_NUMPY_WARNINGS = pytest.mark.filterwarnings("error::RuntimeWarning")


def _gray(h=40, w=50):
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


# --------------------------------------------------------------------- 14. floats near their limits
@NO_NUMPY_WARNINGS
@pytest.mark.parametrize(
    "image",
    [
        np.full((40, 50), 3e38, np.float32),  # was all NaN
        (RNG.random((40, 50)) * 6e38 - 3e38).astype(np.float32),  # was all NaN
        np.full((40, 50), -3.4e38, np.float32),
        RNG.random((40, 50)) * 1e300,  # float64 far past float32's range
        RNG.random((40, 50)) * 1e-310,  # float64 subnormals: was all NaN
        (RNG.random((40, 50)) * 1e-40).astype(np.float32),  # float32 subnormals
    ],
    ids=["f32-const-3e38", "f32-pm3e38", "f32-const-min", "f64-1e300", "f64-subnormal", "f32-subnormal"],
)
def test_floats_near_their_limits_come_back_as_they_went_in(identity_weights, image):
    out = nm.restore(image, weights=identity_weights, **TILED)
    assert out.dtype == image.dtype and np.isfinite(out).all()
    x = image.astype(np.float64)
    span = float(np.ptp(x)) or float(np.abs(x).max())
    np.testing.assert_allclose(out.astype(np.float64), x, rtol=0, atol=1e-6 * span)


@NO_NUMPY_WARNINGS
def test_float16_near_its_limit_saturates_instead_of_inf(tiny_weights):
    image = (RNG.random((40, 50)) * 131000 - 65500).astype(np.float16)  # the model overshot 65504: Inf
    out = nm.restore(image, weights=tiny_weights, **TILED)
    assert out.dtype == np.float16 and np.isfinite(out).all()


@NO_NUMPY_WARNINGS
def test_a_float64_value_float32_cannot_carry_is_refused_with_what_to_do(identity_weights):
    image = RNG.random((40, 50))
    image[3, 3] = 1e300  # was Inf in the output
    done = []
    with pytest.raises(ValueError, match=r"1e\+300.*np\.clip"):
        nm.restore(image, weights=identity_weights, progress=lambda n, total: done.append(n), **TILED)
    assert not done  # refused before any tile ran
    # the same value as nodata is no value to carry: its pixels come back as nodata
    image[3, 3] = image[10:12, 5:9] = -1e300
    out = nm.restore(image, weights=identity_weights, nodata=-1e300, **TILED)
    holes = image == -1e300
    assert (out[holes] == -1e300).all()
    np.testing.assert_allclose(out[~holes], image[~holes], rtol=0, atol=1e-6)


@NO_NUMPY_WARNINGS
def test_negative_zero_constant_and_all_nan_images(identity_weights):
    for image in (np.full((40, 50), -0.0, np.float32), np.full((40, 50), 7.0, np.float32)):
        np.testing.assert_array_equal(nm.restore(image, weights=identity_weights, **TILED), image)
    u8 = np.full((40, 50), 7, np.uint8)
    np.testing.assert_array_equal(nm.restore(u8, weights=identity_weights, **TILED), u8)
    # no data at all: all of it comes back as no data, not as invented values
    holes = nm.restore(np.full((40, 50), np.nan, np.float32), weights=identity_weights, **TILED)
    assert holes.dtype == np.float32 and np.isnan(holes).all()


# --------------------------------------------------------------------- 19 (and 32-bit kin). wide integers
@NO_NUMPY_WARNINGS
@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.uint32, np.int32])
def test_wide_integers_saturate_and_keep_their_digits(identity_weights, dtype):
    info = np.iinfo(dtype)
    image = RNG.integers(info.min, info.max, (40, 50), dtype=dtype, endpoint=True)
    image[:5], image[5:8] = info.max, info.min  # saturated pixels came out as 0 or -2**63
    out = nm.restore(image, weights=identity_weights, **TILED)
    assert out.dtype == dtype
    assert (out[:5] == info.max).all() and (out[5:8] == info.min).all()
    # a narrow range near the top: float32 (uint32) or float64 (64-bit) rounded every pixel to a few values
    narrow = np.array(info.max - 1000, dtype=dtype) - RNG.integers(0, 100, (40, 50)).astype(dtype)
    np.testing.assert_array_equal(nm.restore(narrow, weights=identity_weights, **TILED), narrow)


def test_intensity_map_round_trip_of_uint64_is_exact():
    # a narrow range at the very top: the model's float32 carries every step
    image = np.array([[2**64 - 1000, 2**64 - 999, 2**64 - 2, 2**64 - 1]], np.uint64)
    imap = IntensityMap.for_image(image)
    np.testing.assert_array_equal(imap.inverse(imap.forward(image)), image)
    # the whole range: float32's 24 bits of it, and the ends exactly
    image = np.array([[0, 2**63, 2**64 - 1]], np.uint64)
    imap = IntensityMap(0.0, float(2**64 - 1), np.dtype(np.uint64), "percentile")
    back = imap.inverse(imap.forward(image))
    assert back[0, 0] == 0 and back[0, 2] == 2**64 - 1 and abs(int(back[0, 1]) - 2**63) <= 2**41
    # past the top saturates (the model may overshoot), never wraps to 0
    assert imap.inverse(np.array([[1.2, -0.2]], np.float32)).tolist() == [[2**64 - 1, 0]]


# --------------------------------------------------------------------- 15. pixel_size
@pytest.mark.parametrize(
    "pixel_size, match",
    [
        ((1.0,), r"pixel_size=\(1\.0,\) has 1 values, but the image has 2 axes \(YX\)"),
        ((1.0, 1.0, 1.0), r"has 3 values, but the image has 2 axes"),
        ((0, 1.0), r"holds 0; pixel sizes must be finite and positive"),
        ((-0.5, 1.0), r"holds -0\.5"),
        ((float("nan"), 1.0), r"holds nan"),
        ((float("inf"), 1.0), r"holds inf"),
    ],
)
def test_pixel_size_of_the_wrong_length_or_value_is_refused_and_nothing_written(
    tiny_weights, tmp_path, pixel_size, match
):
    out = tmp_path / "r.zarr"
    with pytest.raises(ValueError, match=match):
        nm.restore(_gray(), weights=tiny_weights, out=out, pixel_size=pixel_size, **TILED)
    assert not out.exists()


@pytest.mark.parametrize("pixel_size", [1.0, "ab", (True, 1.0), ("0.5", 1.0)])
def test_pixel_size_that_is_not_numbers_is_refused(tiny_weights, pixel_size):
    with pytest.raises(TypeError, match="pixel_size="):
        nm.restore(_gray(), weights=tiny_weights, pixel_size=pixel_size, **TILED)


def test_pixel_size_per_axis_reaches_the_ome_zarr_metadata(tiny_weights, tmp_path):
    out = tmp_path / "r.zarr"
    nm.restore(_gray(), weights=tiny_weights, out=out, pixel_size=(0.25, 0.5), **TILED)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale[-2:] == [0.25, 0.5]


# --------------------------------------------------------------------- 16. scale
@pytest.mark.parametrize("scale", [2.5, 2.0, "2", True, np.float32(2)])
def test_super_resolution_scale_must_be_a_whole_supported_int(tiny_weights, scale):
    # 2.5 ran as x2, "2" was accepted
    with pytest.raises(
        ValueError, match=rf"scale={re.escape(repr(scale))} is not a whole number.*supports scale 2, 3, 4"
    ):
        nm.restore(_gray(), "super_resolution", tiny_weights, scale=scale, **TILED)
    with pytest.raises(ValueError, match="is not a whole number"):
        restore_whole(_gray(), "super_resolution", tiny_weights, scale=scale, device="cpu")


def test_scale_accepts_numpy_integers():
    assert get_task("super_resolution").check_scale(np.int64(3)) == 3
    with pytest.raises(ValueError, match="supports scale 2, 3, 4, not 5"):
        get_task("super_resolution").check_scale(5)


# --------------------------------------------------------------------- tile, halo, blend, tta, device ...
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tile=48.0), TypeError, r"tile=48\.0 is not a whole number"),  # ran as 48
        (dict(halo=8.5), TypeError, r"halo=8\.5 is not a whole number"),  # ran as 8
        (dict(blend=True), TypeError, r"blend=True is not a whole number"),  # ran as 1
        (dict(tile=True), TypeError, r"tile=True"),
        (dict(tile=0), ValueError, r"tile=0 must be positive"),
        (dict(tile=-48), ValueError, r"tile=-48 must be positive"),
        (dict(blend=-4), ValueError, r"blend=-4 must be zero or positive"),
        (dict(tta="no"), TypeError, r"tta='no' is not True or False"),  # ran with TTA
        (dict(device="gpu"), ValueError, r"device='gpu' is not a device name"),
        (dict(device="meta"), ValueError, r"device='meta' is not a device name"),
        (dict(device=0), ValueError, r"device=0 is not a device name"),
        (dict(accelerate=1), TypeError, r"accelerate=1 is not a name"),  # AttributeError
        (dict(nodata=True), ValueError, r"nodata=True is a truth value"),  # ran with nodata 1
        (dict(nodata=float("nan")), ValueError, r"nodata=nan cannot occur in a uint8 image"),
        (dict(nodata=256), ValueError, r"nodata=256 cannot occur in a uint8 image"),
    ],
)
def test_settings_out_of_range_are_refused_in_keyword_words(tiny_weights, kwargs, error, match):
    args = {**TILED, **kwargs}
    with pytest.raises(error, match=match):
        nm.restore(_gray(), weights=tiny_weights, **args)
    if "accelerate" not in kwargs:  # restore_lazy has no accelerate=
        with pytest.raises(error, match=match):
            nm.restore_lazy(_gray(), weights=tiny_weights, **args)


@NO_NUMPY_WARNINGS
def test_nodata_a_float_dtype_cannot_hold_is_refused(identity_weights):
    image = RNG.random((40, 50)).astype(np.float32)
    image[:3] = np.nan  # these holes were written back as Inf (1e300 in float32)
    with pytest.raises(ValueError, match=r"nodata=1e\+300 cannot occur in a float32 image"):
        nm.restore(image, weights=identity_weights, nodata=1e300, **TILED)
    image[3:5] = -3e38  # a nodata value near the dtype's limit: its pixels and the NaN ones are written as it
    out = nm.restore(image, weights=identity_weights, nodata=-3e38, **TILED)
    assert (out[:5] == np.float32(-3e38)).all() and np.isfinite(out[5:]).all() and (out[5:] > -1).all()


def test_huge_tile_and_numpy_integer_settings_run(identity_weights):
    image = _gray()
    out = nm.restore(image, weights=identity_weights, tile=2**40, halo=np.int64(8), blend=np.uint8(4))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(nm.restore(image, weights=identity_weights, device=None, tile=48), image)


@pytest.mark.parametrize(
    "weights, error, match",
    [
        ("", ValueError, r"weights='' is empty"),  # was looked up as the current folder
        ("  ", ValueError, r"weights='  ' is empty"),
        (123, TypeError, r"weights=123 is a int"),
        (True, TypeError, r"weights=True is a bool"),
    ],
)
def test_odd_weights_values_are_refused(weights, error, match):
    with pytest.raises(error, match=match):
        nm.restore(_gray(), weights=weights, **TILED)


@pytest.fixture
def pyramid(tmp_path):
    """A three-level OME-Zarr written by ome-zarr-py (not by us)."""
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    path = tmp_path / "pyr.zarr"
    root = zarr.open_group(parse_url(str(path), mode="w").store, mode="w")
    write_image(RNG.integers(0, 256, (128, 128), dtype=np.uint8), root, axes="yx", scale_factors=[2, 4])
    return path


@pytest.mark.parametrize("level", [1.5, True, np.float64(1.0)])
def test_level_that_is_not_an_index_is_refused(tiny_weights, pyramid, level):
    # level=1.5 restored level 1, level=True level 1
    with pytest.raises(TypeError, match=rf"level={re.escape(repr(level))} is not a level index"):
        nm.restore(pyramid, weights=tiny_weights, level=level, **TILED)
    with pytest.raises(TypeError, match="is not a level index"):
        nm.restore_lazy(pyramid, weights=tiny_weights, level=level, **TILED)


def test_level_out_of_range_is_refused_and_an_index_picks_its_level(identity_weights, pyramid):
    with pytest.raises(ValueError, match="level=3 is not a level of"):
        nm.restore(pyramid, weights=identity_weights, level=3, **TILED)
    out = np.asarray(nm.restore(pyramid, weights=identity_weights, level=np.int64(2), **TILED))
    assert out.shape == (32, 32)


# --------------------------------------------------------------------- dtypes, byte order, strides, shapes
@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "U3"])
def test_dtypes_without_intensities_are_refused(tiny_weights, dtype):
    with pytest.raises(TypeError, match=r"cannot be restored; convert to uint8, uint16 or float32"):
        nm.restore(np.zeros((40, 50), dtype), weights=tiny_weights, **TILED)


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">i4", ">f8"])
def test_big_endian_images_restore_as_their_native_twins(tiny_weights, dtype):
    native = (RNG.random((40, 50)) * 30000).astype(np.dtype(dtype).newbyteorder("="))
    out = nm.restore(native.astype(dtype), weights=tiny_weights, **TILED)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, nm.restore(native, weights=tiny_weights, **TILED))


@pytest.mark.slow  # eight tiled runs: ~6 s on busy cores
def test_views_restore_as_their_copies(tiny_weights):
    base = RNG.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    for view in (base[::-1, ::-1], base[::2, 1::3], base.transpose(1, 0, 2), base[:, :, ::-1]):
        np.testing.assert_array_equal(
            nm.restore(view, weights=tiny_weights, **TILED),
            nm.restore(np.ascontiguousarray(view), weights=tiny_weights, **TILED),
        )


def test_thin_images(identity_weights):
    for shape in ((1, 50), (50, 1)):
        with pytest.raises(ValueError, match=r"restoration needs at least 2x2"):
            nm.restore(RNG.random(shape).astype(np.float32), weights=identity_weights, **TILED)
    for shape in ((2, 50), (50, 2), (2, 2)):
        image = RNG.integers(0, 2**16, shape, dtype=np.uint16)
        np.testing.assert_array_equal(nm.restore(image, weights=identity_weights, **TILED), image)


# --------------------------------------------------------------------- the same through the CLI
def test_cli_says_what_was_wrong_in_flag_words(tiny_weights, tmp_path, capsys):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _gray())
    base = ["restore", str(src), "-o", str(tmp_path / "o.zarr"), "--weights", tiny_weights, "-q"]
    assert main([*base, "--device", "gpu"]) == 1
    assert "--device 'gpu' is not a device name" in capsys.readouterr().err
    assert main([*base, "--device", "cpu", "--tile", "0"]) == 1
    assert "--tile 0 must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


@NO_NUMPY_WARNINGS
def test_cli_restores_a_float32_tiff_spanning_its_whole_range(identity_weights, tmp_path):
    image = (RNG.random((40, 50)) * 6.8e38 - 3.4e38).astype(np.float32)
    src, dst = tmp_path / "wide.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, image)
    args = ["--weights", identity_weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q"]
    assert main(["restore", str(src), "-o", str(dst), *args]) == 0
    out = tifffile.imread(dst)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.astype(np.float64), image.astype(np.float64), rtol=0, atol=1e-6 * 6.8e38)
