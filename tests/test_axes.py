"""Axes are never guessed into another meaning; xarray DataArrays in give DataArrays out with their coordinates."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import SAFETY_MS

import napari_mirnet as nm
from napari_mirnet.api import restore_whole
from napari_mirnet.axes import infer_axes
from napari_mirnet.cli import main
from napari_mirnet.metadata import ImageMeta

xr = pytest.importorskip("xarray")

RNG = np.random.default_rng(14)
TILED = dict(tile=48, halo=8, blend=4, device="cpu")


def _stack(shape=(3, 64, 64)):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _as(kind, img, tmp_path):
    if kind == "dask":
        return da.from_array(img, chunks=(1, 32, 32))
    if kind == "zarr":  # a bare zarr array: no axes metadata
        z = zarr.open_array(str(tmp_path / "bare.zarr"), mode="w", shape=img.shape, chunks=(1, 32, 32), dtype=img.dtype)
        z[...] = img
        return z
    return img


# ------------------------------------------------------------------------------- no guessing
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_three_planes_are_refused_with_the_readings(tiny_weights, tmp_path, kind):
    image = _as(kind, _stack(), tmp_path)
    with pytest.raises(ValueError) as err:
        nm.restore(image, weights=tiny_weights, **TILED)
    msg = str(err.value)
    assert "(3, 64, 64)" in msg
    for reading in ("'ZYX'", "'TYX'", "'CYX'"):  # Z stack, time points, channels
        assert reading in msg
    assert "pass axes=" in msg


def test_only_unambiguous_shapes_are_inferred():
    assert infer_axes((64, 80)) == "YX"
    assert infer_axes((64, 80, 3)) == "YXC"  # the picture layout: RGB
    assert infer_axes((64, 80, 4)) == "YXC"  # RGBA
    for shape, readings in [
        ((4, 64, 80), ("'ZYX'", "'TYX'", "'CYX'")),
        ((2, 64, 80), ("'ZYX'", "'TYX'", "'CYX'")),
        ((12, 64, 80), ("'ZYX'", "'TYX'")),
        ((64, 80, 2), ("'YXC'", "'YXZ'")),  # two channels or two planes stored last
        ((3, 64, 3), ("'ZYX'", "'CYX'")),
        ((2, 3, 64, 80), ("'TZYX'", "'ZCYX'")),
    ]:
        with pytest.raises(ValueError, match="pass axes=") as err:
            infer_axes(shape)
        assert str(shape) in str(err.value)
        assert all(r in str(err.value) for r in readings), (shape, str(err.value))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_zyx_stack_is_restored_as_gray_planes(tiny_weights, tmp_path, kind):
    img = _stack()
    out = np.asarray(nm.restore(_as(kind, img, tmp_path), weights=tiny_weights, axes="ZYX", **TILED))
    assert out.shape == img.shape and out.dtype == img.dtype
    for z in range(3):
        alone = nm.restore(img[z], weights=tiny_weights, **TILED)
        # batched and single convolutions may differ in the last float bit: at most 1 LSB after rounding
        np.testing.assert_allclose(out[z].astype(int), alone.astype(int), atol=1, rtol=0)
    if kind == "numpy":  # the colour reading (channels last, a picture's) is another image: the axes matter
        as_colour = np.moveaxis(nm.restore(np.moveaxis(img, 0, -1), weights=tiny_weights, axes="YXC", **TILED), -1, 0)
        assert np.abs(as_colour.astype(int) - out.astype(int)).max() > 1
        # bare channels ahead of Y and X are not a picture: each is restored as a gray plane (issue 36, 17)
        as_bands = nm.restore(img, weights=tiny_weights, axes="CYX", **TILED)
        np.testing.assert_allclose(as_bands.astype(int), out.astype(int), atol=1, rtol=0)


def test_rgb_says_whether_channels_are_colour(tiny_weights, tmp_path, capsys):
    """``rgb=`` / ``--rgb``: the caller's word over the data's. A (3, H, W) photograph is colour with
    rgb=True; a picture (channels last) restores channel by channel with rgb=False."""
    img = _stack()  # (3, 64, 64) uint8
    picture = np.moveaxis(img, 0, -1)
    as_colour = np.moveaxis(nm.restore(picture, weights=tiny_weights, axes="YXC", **TILED), -1, 0)
    as_bands = nm.restore(img, weights=tiny_weights, axes="CYX", **TILED)
    assert np.abs(as_colour.astype(int) - as_bands.astype(int)).max() > 1  # they differ: the test can tell
    np.testing.assert_array_equal(nm.restore(img, weights=tiny_weights, axes="CYX", rgb=True, **TILED), as_colour)
    bands_last = nm.restore(picture, weights=tiny_weights, axes="YXC", rgb=False, **TILED)
    np.testing.assert_allclose(np.moveaxis(bands_last, -1, 0).astype(int), as_bands.astype(int), atol=1, rtol=0)
    with pytest.raises(TypeError, match=r"rgb='yes' is not True, False or None"):
        nm.restore(img, weights=tiny_weights, axes="CYX", rgb="yes", **TILED)
    src = tmp_path / "planes.tif"
    tifffile.imwrite(src, img, metadata={"axes": "CYX"})  # ImageJ-less plain TIFF: channels first, no colours
    args = ["--weights", tiny_weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q"]
    assert main(["restore", str(src), "-o", str(tmp_path / "c.tif"), "--axes", "CYX", "--rgb", *args]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c.tif"), as_colour)


def test_cli_says_axes_in_its_own_words(tiny_weights, tmp_path, capsys):
    _as("zarr", _stack(), tmp_path)  # a zarr array without axes metadata
    src = tmp_path / "bare.zarr"
    args = ["--weights", tiny_weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q"]
    assert main(["restore", str(src), "-o", str(tmp_path / "o.tif"), *args]) == 1
    err = capsys.readouterr().err
    assert "(3, 64, 64)" in err and "--axes 'ZYX'" in err and "pass --axes" in err
    assert "axes=" not in err
    assert not (tmp_path / "o.tif").exists()
    assert main(["restore", str(src), "-o", str(tmp_path / "o.tif"), *args, "--axes", "ZYX"]) == 0
    import tifffile

    assert tifffile.imread(tmp_path / "o.tif").shape == (3, 64, 64)


# ---------------------------------------------------------------------------------- xarray
def _dataarray(img, backing="numpy", sy=0.5, sx=0.25):
    um = {"units": "micrometer"}
    coords = {
        "z": ("z", 2.0 * np.arange(img.shape[0]), um),
        "y": ("y", 10.0 + sy * np.arange(img.shape[1]), um),
        "x": ("x", -3.0 + sx * np.arange(img.shape[2]), um),
    }
    arr = xr.DataArray(img, dims=("z", "y", "x"), coords=coords, name="nuclei", attrs={"sample": "s1"})
    return arr.chunk({"z": 1, "y": 32, "x": 32}) if backing == "dask" else arr


def test_dataarray_metadata():
    from napari_mirnet.xarrays import from_dataarray

    data, axes, meta = from_dataarray(_dataarray(_stack()))
    assert axes == "ZYX" and isinstance(data, np.ndarray)
    assert meta.scale == {"Z": 2.0, "Y": 0.5, "X": 0.25}
    assert meta.translation == {"Z": 0.0, "Y": 10.0, "X": -3.0}
    assert meta.units == {"Z": "micrometer", "Y": "micrometer", "X": "micrometer"}
    assert meta.name == "nuclei" and meta.source_format == "xarray"
    rgb = xr.DataArray(np.zeros((3, 8, 8), np.uint8), dims=("Channel", "Y", "X"), coords={"Channel": ["R", "G", "B"]})
    data, axes, meta = from_dataarray(rgb.chunk())
    assert axes == "CYX" and isinstance(data, da.Array)
    assert [c.name for c in meta.channels] == ["R", "G", "B"] and "C" not in meta.scale


@pytest.mark.slow
@pytest.mark.parametrize("backing", ["numpy", "dask"])
def test_dataarray_in_dataarray_out(tiny_weights, backing):
    img = _stack()
    arr = _dataarray(img, backing)
    out = nm.restore(arr, weights=tiny_weights, **TILED)
    assert isinstance(out, xr.DataArray)
    assert isinstance(out.data, np.ndarray if backing == "numpy" else da.Array)  # numpy stays numpy, dask lazy
    assert out.dims == ("z", "y", "x") and out.name == "nuclei" and out.attrs == {"sample": "s1"}
    for dim in ("z", "y", "x"):
        np.testing.assert_allclose(out[dim].values, arr[dim].values)
        assert out[dim].attrs == {"units": "micrometer"}
    expected = nm.restore(img, weights=tiny_weights, axes="ZYX", **TILED)
    np.testing.assert_array_equal(out.values, expected)
    lazy = nm.restore_lazy(arr, weights=tiny_weights, **TILED)
    assert isinstance(lazy, xr.DataArray) and isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, expected)
    whole = restore_whole(arr, weights=tiny_weights, device="cpu")
    assert isinstance(whole, xr.DataArray) and whole.dims == arr.dims
    np.testing.assert_allclose(whole["x"].values, arr["x"].values)


@pytest.mark.slow
@pytest.mark.parametrize("backing", ["numpy", "dask"])
def test_super_resolved_dataarray_has_the_output_grid(identity_weights, backing):
    img = _stack((2, 40, 48))
    arr = _dataarray(img, backing, sy=0.5, sx=0.25)
    out = nm.restore(arr, "super_resolution", identity_weights, scale=2, **TILED)
    assert out.shape == (2, 80, 96) and out.dims == ("z", "y", "x")
    assert isinstance(out.data, np.ndarray if backing == "numpy" else da.Array)
    for dim, s in (("y", 0.5), ("x", 0.25)):
        c_in, c_out = arr[dim].values, out[dim].values
        np.testing.assert_allclose(np.diff(c_out), s / 2)  # pixel size halved
        # same field of view: the first and last pixel edges coincide (centres move by s/4)
        np.testing.assert_allclose(c_out[0] - s / 4, c_in[0] - s / 2)
        np.testing.assert_allclose(c_out[-1] + s / 4, c_in[-1] + s / 2)
        assert out[dim].attrs == {"units": "micrometer"}
    np.testing.assert_array_equal(out["z"].values, arr["z"].values)
    resampled = ImageMeta(scale={"Y": 0.5}, translation={"Y": 10.0}).resampled(2)
    assert out["y"].values[0] == pytest.approx(resampled.translation["Y"])
    expected = nm.restore(img, "super_resolution", identity_weights, scale=2, axes="ZYX", **TILED)
    np.testing.assert_array_equal(out.values, expected)


@pytest.mark.slow
def test_dataarray_to_ome_zarr_keeps_scale_translation_units(tiny_weights, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    arr = _dataarray(_stack((2, 40, 48)))
    out = nm.restore(arr, "super_resolution", tiny_weights, scale=2, out=tmp_path / "o.zarr", **TILED)
    assert isinstance(out, xr.DataArray) and isinstance(out.data, da.Array)
    node = next(
        n for n in Reader(parse_url(str(tmp_path / "o.zarr")))() if n.specs and isinstance(n.specs[0], Multiscales)
    )
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]
    assert all(a.get("unit") == "micrometer" for a in axes)
    transforms = node.metadata["coordinateTransformations"][0]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    shift = next(t["translation"] for t in transforms if t["type"] == "translation")
    np.testing.assert_allclose(scale, [2.0, 0.25, 0.125])
    np.testing.assert_allclose(shift, [0.0, out["y"].values[0], out["x"].values[0]])


def test_bad_dims_and_coordinates_are_refused_clearly(tiny_weights):
    img = _stack()
    bad = xr.DataArray(img, dims=("plane", "y", "x"))
    with pytest.raises(ValueError, match=r"dim 'plane'.*rename it, e.g. arr.rename\(\{'plane': 'z'\}\)"):
        nm.restore(bad, weights=tiny_weights, **TILED)
    with pytest.raises(ValueError, match=r"axes='CYX' disagrees with the DataArray's dims \('z', 'y', 'x'\)"):
        nm.restore(_dataarray(img), weights=tiny_weights, axes="CYX", **TILED)
    uneven = _dataarray(img).assign_coords(x=np.sqrt(np.arange(64.0)))
    with pytest.raises(ValueError, match="coordinate 'x' is not uniformly spaced"):
        nm.restore_lazy(uneven, "super_resolution", tiny_weights, scale=2, **TILED)


@pytest.mark.slow
def test_descending_raster_coordinates(identity_weights):
    """A raster's y runs downwards: the output grid follows it, and no negative pixel size is recorded."""
    from napari_mirnet.xarrays import from_dataarray

    img = _stack((40, 48))
    arr = xr.DataArray(img, dims=("y", "x"), coords={"y": 500.0 - 30.0 * np.arange(40), "x": 30.0 * np.arange(48)})
    assert "Y" not in from_dataarray(arr)[2].scale and from_dataarray(arr)[2].scale == {"X": 30.0}
    out = nm.restore(arr, "super_resolution", identity_weights, scale=2, **TILED)
    np.testing.assert_allclose(out["y"].values[:2], [500.0 + 7.5, 500.0 - 7.5])  # edges at 515 on both grids
    np.testing.assert_allclose(out["y"].values[-1] - 7.5, arr["y"].values[-1] - 15.0)
    np.testing.assert_allclose(out["x"].values[:2], [-7.5, 7.5])


@pytest.mark.slow
def test_uneven_coordinates_are_kept_where_the_grid_does_not_change(tiny_weights):
    arr = _dataarray(_stack((2, 40, 48))).assign_coords(z=[0.0, 7.5], x=np.sqrt(np.arange(48.0)))
    out = nm.restore(arr, weights=tiny_weights, **TILED)
    np.testing.assert_array_equal(out["x"].values, arr["x"].values)
    np.testing.assert_array_equal(out["z"].values, [0.0, 7.5])


def test_unchunked_array_like_is_read(tiny_weights):
    """An array-like with ``chunks=None`` (h5py's contiguous datasets) used to fail in dask's from_array."""

    class Contiguous:
        def __init__(self, a):
            self._a, self.shape, self.dtype, self.ndim, self.chunks = a, a.shape, a.dtype, a.ndim, None

        def __getitem__(self, idx):
            return self._a[idx]

    img = _stack((40, 48))
    out = nm.restore(Contiguous(img), weights=tiny_weights, **TILED)
    np.testing.assert_array_equal(np.asarray(out), nm.restore(img, weights=tiny_weights, **TILED))


# ---------------------------------------------------------------------------------- napari
@pytest.mark.gui
@pytest.mark.slow
def test_super_resolved_layer_overlays_its_input(make_napari_viewer, qtbot, tiny_weights):
    pytest.importorskip("pytestqt")
    from napari_mirnet.widgets import LOCAL_FILE, SuperResolutionWidget

    viewer = make_napari_viewer()
    units = ("micrometer", "micrometer")
    layer = viewer.add_image(
        _stack((40, 48)), name="cells", scale=(0.5, 0.25), translate=(10.0, -3.0), units=units, axis_labels=("y", "x")
    )
    w = SuperResolutionWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.weights.value = LOCAL_FILE
    w.weights_file.value = tiny_weights
    w.scale.value = 2
    job = w.make_job()
    w.make_job()  # gathering a job twice changes nothing
    assert job.axes == "YX" and job.image.meta.units == {"Y": "micrometer", "X": "micrometer"}
    assert job.image.meta.translation == {"Y": 10.0, "X": -3.0}
    w()
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    out = w.result_layer
    assert out is not None, w.last_status
    assert out.data.shape == (80, 96)

    def edges(lay):  # napari's world extent runs from the first to the last pixel centre
        ext = lay.extent
        return np.stack([ext.world[0] - ext.step / 2, ext.world[1] + ext.step / 2])

    # the input stays where it was (the result's shift was once applied to the input's own array)
    np.testing.assert_allclose(layer.translate, (10.0, -3.0))
    np.testing.assert_allclose(edges(out), edges(layer))
    np.testing.assert_allclose(out.scale, (0.25, 0.125))
    assert tuple(str(u) for u in out.units) == units


@pytest.mark.gui
@pytest.mark.slow
def test_layer_axes_and_geometry_reach_the_zarr_output(make_napari_viewer, qtbot, tiny_weights, tmp_path):
    pytest.importorskip("pytestqt")
    from napari_mirnet import io as mio
    from napari_mirnet.widgets import LOCAL_FILE, OUTPUT_ZARR, DenoiseWidget

    viewer = make_napari_viewer()
    img = _stack((3, 40, 48))
    layer = viewer.add_image(
        img,
        name="timelapse",
        scale=(60.0, 0.5, 0.25),
        translate=(0.0, 10.0, -3.0),
        axis_labels=("t", "y", "x"),
        units=("second", "micrometer", "micrometer"),
    )
    assert not layer.rgb
    w = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.weights.value = LOCAL_FILE
    w.weights_file.value = tiny_weights
    w.output.value = OUTPUT_ZARR
    w.zarr_path.value = tmp_path / "out.zarr"
    assert w.make_job().axes == "TYX"  # the layer's labels say time, not a guess from the shape
    w()
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert w.result_layer is not None, w.last_status
    src = mio.open_image(tmp_path / "out.zarr")
    assert src.axes == "TYX"
    assert src.meta.scale == {"T": 60.0, "Y": 0.5, "X": 0.25}
    assert src.meta.translation.get("Y") == 10.0 and src.meta.translation.get("X") == -3.0
    assert src.meta.units == {"T": "second", "Y": "micrometer", "X": "micrometer"}
    # planes restored one by one as gray images, as numpy with the same axes gives them
    expected = nm.restore(img, weights=tiny_weights, axes="TYX", **w.make_job().options)
    np.testing.assert_array_equal(np.asarray(src.array), expected)


def _geo_dataarray():
    """A projected float raster as rioxarray users hold one: descending y, a CRS, a GeoTransform, nodata -9999."""
    rioxarray = pytest.importorskip("rioxarray")
    assert rioxarray
    img = (np.random.default_rng(6).random((40, 48)) * 1000).astype(np.float32)
    img[5:10, 5:10] = -9999
    y, x = 1000 - 30.0 * np.arange(40) - 15, 500000 + 30.0 * np.arange(48) + 15
    arr = xr.DataArray(img, dims=("y", "x"), coords={"y": y, "x": x})
    return arr.rio.write_crs("EPSG:32633").rio.write_nodata(-9999, encoded=False).rio.write_transform()


def test_rioxarray_nodata_is_taken_as_the_file_readers_take_it(tiny_weights):
    """A DataArray's declared nodata (``rio.nodata``, ``_FillValue``) stays out of the intensity mapping and
    comes back as nodata, as a GeoTIFF's does (it went through the model as data: no -9999 pixel came out)."""
    arr = _geo_dataarray()
    holes = arr.values == -9999
    out = nm.restore(arr, weights=tiny_weights, device="cpu")
    assert out.rio.nodata == -9999
    np.testing.assert_array_equal(out.values == -9999, holes)
    explicit = nm.restore(arr.values, weights=tiny_weights, device="cpu", nodata=-9999)
    np.testing.assert_array_equal(out.values, explicit)
    with pytest.raises(ValueError, match="_FillValue='none'.*not a number"):
        nm.restore(arr.assign_attrs(_FillValue="none"), weights=tiny_weights, device="cpu")


def test_rioxarray_transform_follows_super_resolution(tiny_weights):
    """After x2 the carried ``spatial_ref`` gives the output grid: half the pixel, the same corner
    (it kept the input's GeoTransform: rio.transform() said 30 m and a shifted origin)."""
    arr = _geo_dataarray()
    sr = nm.restore(arr, "super_resolution", weights=tiny_weights, scale=2, device="cpu")
    assert sr.rio.resolution() == pytest.approx((15.0, -15.0))
    assert tuple(sr.rio.transform())[:6] == pytest.approx((15.0, 0.0, 500000.0, 0.0, -15.0, 1000.0))
    assert tuple(sr.rio.transform(recalc=True))[:6] == pytest.approx(tuple(sr.rio.transform())[:6])
    assert sr.rio.crs.to_epsg() == 32633
