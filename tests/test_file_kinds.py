"""Files outside the usual range (issue 36: items 11, 12, 13, 20 and their kind).

Pictures and TIFFs made by other tools (PIL, imagecodecs' libpng, tifffile, ome-zarr-py), read as
the tool that made them (or PIL, the viewer's reference) sees them, restored by a real model, and
the results read back by tifffile, bioio, PIL and imagecodecs.
"""

from __future__ import annotations

import warnings

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.io import units

RNG = np.random.default_rng(36)


def _cli_args(weights, *extra):
    return ["--weights", weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q", *extra]


def _restore(weights, src, out, *extra) -> int:
    return main(["restore", str(src), "-o", str(out), *_cli_args(weights, *extra)])


# ------------------------------------------------------------------------ 11: several images in a TIFF
def test_tiff_of_pages_of_different_sizes_is_refused_naming_each_page(tiny_weights, tmp_path, capsys):
    src = tmp_path / "pages.tif"
    with tifffile.TiffWriter(src) as tw:
        for shape in [(64, 80), (100, 50), (30, 30)]:
            tw.write(RNG.integers(0, 255, shape, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"holds 3 images \(page 0: 64 x 80 uint8, page 1: 100 x 50 uint8, page 2: 30"):
        mio.open_image(src)
    assert _restore(tiny_weights, src, tmp_path / "out.tif") != 0
    assert "holds 3 images" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_reduced_resolution_page_is_not_another_image(tmp_path):
    src = tmp_path / "thumb.tif"
    full = RNG.integers(0, 255, (64, 80), dtype=np.uint8)
    with tifffile.TiffWriter(src) as tw:
        tw.write(full)
        tw.write(full[::4, ::4], subfiletype=1)  # a thumbnail (NewSubfileType: reduced resolution)
    np.testing.assert_array_equal(np.asarray(mio.open_image(src).array), full)


@pytest.mark.parametrize("kind", ["ome", "imagej"])
def test_tiff_whose_metadata_disagrees_with_its_pages_is_refused(tmp_path, kind):
    stack = RNG.integers(0, 4000, (3, 10, 12), dtype=np.uint16)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, stack, **{kind: True}, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(good) as tif:
        desc = tif.pages[0].description
    # the description now says 5 planes; the file holds 3 (tifffile zeroes the 2 missing ones, or falls back
    # to a page stack where it cannot match them)
    said = desc.replace('SizeZ="3"', 'SizeZ="5"') if kind == "ome" else desc.replace("=3", "=5")
    tifffile.imwrite(tmp_path / "bad.tif", stack, description=said, metadata=None, photometric="minisblack")
    with pytest.raises(ValueError, match="does not match its own metadata") as err:
        mio.open_image(tmp_path / "bad.tif")
    assert "5" in str(err.value) and "(3 pages)" in str(err.value)
    assert mio.open_image(good).axes == "ZYX"


# ------------------------------------------------------------------- photometric and ExtraSamples
def test_min_is_white_tiff_is_read_as_viewers_show_it(tmp_path):
    stored = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "w.tif", stored, photometric="miniswhite")
    shown = np.asarray(Image.open(tmp_path / "w.tif"))  # PIL turns min-is-white into ordinary gray
    np.testing.assert_array_equal(np.asarray(mio.open_image(tmp_path / "w.tif").array), shown)


def test_palette_tiff_is_read_as_its_colours(tmp_path):
    idx = RNG.integers(0, 4, (20, 30), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 255, 0, 90], [0, 0, 255, 40], [255, 0, 0, 200]]) * 257  # 8-bit colours, as libtiff
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    src = mio.open_image(tmp_path / "p.tif")
    assert src.axes == "YXC" and src.array.dtype == np.uint8
    rgb = np.asarray(Image.open(tmp_path / "p.tif").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(src.array), rgb)


def test_cmyk_tiff_is_refused_with_what_to_do(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8), photometric="separated")
    with pytest.raises(ValueError, match=r"CMYK .*convert it to gray or RGB first"):
        mio.open_image(tmp_path / "c.tif")


@pytest.mark.parametrize(
    ("photometric", "n", "extras", "alpha"),
    [("minisblack", 2, ["unassalpha"], [False, True]), ("rgb", 4, ["assocalpha"], [False, False, False, True])],
)
def test_extra_samples_say_which_channel_is_alpha(tmp_path, photometric, n, extras, alpha):
    data = RNG.integers(0, 255, (20, 30, n), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric=photometric, extrasamples=extras)
    src = mio.open_image(tmp_path / "a.tif")
    assert [c.alpha for c in src.meta.channels] == alpha
    np.testing.assert_array_equal(np.asarray(src.array), data)


@pytest.mark.slow
def test_gray_plus_alpha_tiff_keeps_its_alpha(identity_weights, tmp_path):
    data = RNG.integers(0, 255, (40, 50, 2), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "la.tif", data, photometric="minisblack", extrasamples=["unassalpha"])
    assert _restore(identity_weights, tmp_path / "la.tif", tmp_path / "out.tif") == 0
    # alpha carried unchanged, gray restored (the identity model): two OME channels, C before Y, X
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), np.moveaxis(data, -1, 0))


# ----------------------------------------------------------------------------- 20: data types, units
@pytest.mark.slow
def test_float16_tiff_is_written_as_float32_without_leftovers(identity_weights, tmp_path):
    img = RNG.random((40, 50)).astype(np.float16)
    tifffile.imwrite(tmp_path / "h.tif", img)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert _restore(identity_weights, tmp_path / "h.tif", tmp_path / "out.tif") == 0
    assert any("written as float32" in str(w.message) for w in seen)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_ome and tif.series[0].dtype == np.float32
        np.testing.assert_allclose(tif.asarray(), img.astype(np.float32), atol=2e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.tif", "out.tif"]  # no hidden store left


def test_64_bit_integers_are_refused_before_anything_is_computed(tmp_path):
    with pytest.raises(mio.OutputError, match=r"OME-TIFF holds 8- to 32-bit integers .* int64: write .zarr"):
        mio.write_image(tmp_path / "o.tif", np.zeros((8, 8), np.int64), "YX", check=True)


def test_every_ome_unit_symbol_has_an_ngff_name():
    assert units.normalise_unit("pc") == "parsec" and units.ome_symbol("parsec") == "pc"
    assert units.normalise_unit("Ms") == "megasecond" and units.normalise_unit("ms") == "millisecond"
    assert units.normalise_unit("Mm") == "megameter" and units.normalise_unit("fm") == "femtometer"
    assert units.normalise_unit("micrometres") == "micrometer" and units.ome_symbol("kilosecond") == "ks"
    assert units.from_ome(2.0, "dam") == (20.0, "meter")  # decametre: NGFF has no name, metres it is
    assert units.from_ome(3.0, "pixel") == (3.0, None)
    with pytest.raises(units.UnitError):
        units.from_ome(1.0, "furlong")


def _ngff_store(path, unit: str, name="embryo"):
    """An OME-Zarr image written by ome-zarr-py: Z, Y, X with scale, translation and ``unit`` on X and Y."""
    import zarr
    from ome_zarr.writer import write_multiscale

    data = RNG.integers(0, 255, (2, 40, 50), dtype=np.uint8)
    axes = [{"name": "z", "type": "space", "unit": "micrometer"}]
    axes += [{"name": a, "type": "space", "unit": unit} for a in "yx"]
    ct = [[{"type": "scale", "scale": [2.0, 0.5, 0.5]}, {"type": "translation", "translation": [10.0, 3.0, 4.0]}]]
    write_multiscale([data], zarr.open_group(str(path), mode="w"), axes=axes, coordinate_transformations=ct, name=name)
    return data


@pytest.mark.parametrize(("unit", "symbol"), [("parsec", "pc"), ("nm", "nm")])
def test_ngff_units_reach_the_ome_tiff_as_their_symbol(tmp_path, unit, symbol):
    # parsec was written without unit (read as µm); 'nm', a symbol NGFF does not name, the same
    data = _ngff_store(tmp_path / "in.zarr", unit)
    src = mio.open_image(tmp_path / "in.zarr")
    out = mio.write_image(tmp_path / "o.tif", src.array, src.axes, meta=src.meta)
    with tifffile.TiffFile(out) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        np.testing.assert_array_equal(tif.asarray(), data)
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"]) == (0.5, symbol)
    assert mio.open_image(out).meta.units["X"] == units.normalise_unit(unit)


def test_a_unit_ome_has_no_symbol_for_is_refused_before_writing(tmp_path):
    _ngff_store(tmp_path / "in.zarr", "furlong")
    src = mio.open_image(tmp_path / "in.zarr")
    with pytest.raises(mio.OutputError, match=r"unit 'furlong' of axis [XY] has no OME-TIFF symbol.*write .zarr"):
        mio.write_image(tmp_path / "o.tif", src.array, src.axes, meta=src.meta, check=True)
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".o.tif*"))


def test_unknown_or_pixel_units_in_an_ome_tiff_are_not_taken_for_micrometres(tmp_path):
    img = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
    md = {"axes": "YX", "PhysicalSizeX": 2.0, "PhysicalSizeXUnit": "furlong", "PhysicalSizeY": 3.0}
    md["PhysicalSizeYUnit"] = "pixel"
    tifffile.imwrite(tmp_path / "u.ome.tif", img, ome=True, metadata=md)
    with pytest.warns(UserWarning, match="PhysicalSizeX 2.0 is left out: unknown unit 'furlong'"):
        meta = mio.open_image(tmp_path / "u.ome.tif").meta
    assert meta.scale == {"Y": 3.0} and meta.units == {}  # pixels: a size without physical unit


# ------------------------------------------------------------------ 8: OME image name and position
@pytest.mark.slow
def test_ome_image_name_and_position_survive_zarr_to_tiff(tmp_path):
    from bioio import BioImage
    from bioio_ome_tiff import Reader

    _ngff_store(tmp_path / "in.zarr", "micrometer")
    src = mio.open_image(tmp_path / "in.zarr")
    out = mio.write_image(tmp_path / "o.tif", src.array, src.axes, meta=src.meta)
    image = BioImage(out, reader=Reader).ome_metadata.images[0]  # ome-types: the schema's view
    assert image.name == "embryo"
    planes = image.pixels.planes
    assert [(p.the_z, p.position_x, p.position_y, p.position_z) for p in planes] == [
        (0, 4.0, 3.0, 10.0),
        (1, 4.0, 3.0, 12.0),
    ]
    assert {p.position_x_unit.value for p in planes} == {"µm"}
    back = mio.open_image(out).meta
    assert back.name == "embryo" and back.translation == {"X": 4.0, "Y": 3.0, "Z": 10.0}


def test_plane_position_in_another_unit_is_converted(tmp_path):
    img = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
    md = {"axes": "YX", "Name": "embryo", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    md["Plane"] = {"PositionX": [2.0], "PositionXUnit": ["mm"], "PositionY": [-1.5], "PositionYUnit": ["µm"]}
    tifffile.imwrite(tmp_path / "p.ome.tif", img, ome=True, metadata=md)
    meta = mio.open_image(tmp_path / "p.ome.tif").meta
    assert meta.name == "embryo" and meta.translation == pytest.approx({"X": 2000.0, "Y": -1.5})


@pytest.mark.slow
def test_cli_keeps_the_ome_image_name(identity_weights, tmp_path):
    img = RNG.integers(0, 255, (40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.ome.tif", img, ome=True, metadata={"axes": "YX", "Name": "embryo"})
    assert _restore(identity_weights, tmp_path / "in.ome.tif", tmp_path / "out.tif") == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Name"] == "embryo"


# ------------------------------------------------------------------------------------ 12: 16-bit PNG
@pytest.mark.parametrize("n", [2, 3, 4])
def test_16_bit_colour_png_is_read_at_16_bits(tmp_path, n):
    data = RNG.integers(0, 65535, (20, 30, n), dtype=np.uint16)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(data))  # libpng
    src = mio.open_image(tmp_path / "c.png")
    assert src.array.dtype == np.uint16
    np.testing.assert_array_equal(src.array, data)
    assert [c.alpha for c in src.meta.channels] == ([False, True] if n == 2 else [])


def test_16_bit_gray_png_written_by_pil_is_read_at_16_bits(tmp_path):
    data = RNG.integers(0, 65535, (20, 30), dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "g.png")
    np.testing.assert_array_equal(mio.open_image(tmp_path / "g.png").array, data)


@pytest.mark.slow
def test_16_bit_rgb_png_result_is_a_16_bit_png(identity_weights, tmp_path, capsys):
    data = RNG.integers(0, 65535, (40, 50, 3), dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(data))
    assert _restore(identity_weights, tmp_path / "in.png", tmp_path / "out.png") == 0
    out = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    assert out.dtype == np.uint16
    np.testing.assert_allclose(out, data, atol=2)  # the identity model, through float32
    with Image.open(tmp_path / "out.png") as im:  # the run's fingerprint, in a text chunk PIL reads
        assert mio.ATTR in im.text
    capsys.readouterr()
    assert _restore(identity_weights, tmp_path / "in.png", tmp_path / "out.png") == 0
    assert "already complete, skipped" in capsys.readouterr().err


# ------------------------------------------------------------------------- PNG modes PIL hands out
def test_png_modes_are_read_as_their_values(tmp_path):
    gray = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
    la = np.stack([gray, 255 - gray], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    src = mio.open_image(tmp_path / "la.png")
    np.testing.assert_array_equal(src.array, la)  # gray + alpha, not RGBA
    assert [c.alpha for c in src.meta.channels] == [False, True]
    bilevel = Image.fromarray(gray > 128).convert("1")
    bilevel.save(tmp_path / "b.png")
    np.testing.assert_array_equal(mio.open_image(tmp_path / "b.png").array, np.where(gray > 128, 255, 0))
    pal = Image.fromarray(gray).convert("P")
    pal.save(tmp_path / "p.png", transparency=0)
    assert mio.open_image(tmp_path / "p.png").array.shape == (20, 30, 4)


def test_gray_plus_alpha_png_is_written_back_as_one(tmp_path):
    la = RNG.integers(0, 255, (20, 30, 2), dtype=np.uint8)
    out = mio.write_image(tmp_path / "o.png", la, "YXC")
    with Image.open(out) as im:
        assert im.mode == "LA"
        np.testing.assert_array_equal(np.asarray(im), la)


# ---------------------------------------------------------------------------- 13: EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_as_pil_does(tmp_path, orientation, suffix):
    rgb = RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / f"o{suffix}", exif=exif.tobytes())
    with Image.open(tmp_path / f"o{suffix}") as f:
        shown = np.asarray(ImageOps.exif_transpose(f))
    np.testing.assert_array_equal(mio.open_image(tmp_path / f"o{suffix}").array, shown)


@pytest.mark.slow
def test_cli_restores_a_sideways_photo_as_it_is_shown(identity_weights, tmp_path):
    rgb = RNG.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    im.save(tmp_path / "in.jpg", exif=exif.tobytes(), quality=95)
    assert _restore(identity_weights, tmp_path / "in.jpg", tmp_path / "out.png") == 0
    with Image.open(tmp_path / "in.jpg") as f:
        shown = np.asarray(ImageOps.exif_transpose(f))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == shown.shape == (60, 40, 3)
    assert np.abs(out.astype(int) - shown).max() <= 1


@pytest.mark.slow
def test_cli_refuses_a_unit_ome_tiff_cannot_hold_before_computing(tiny_weights, tmp_path, capsys):
    _ngff_store(tmp_path / "in.zarr", "furlong")
    assert _restore(tiny_weights, tmp_path / "in.zarr", tmp_path / "out.tif") != 0
    assert "unit 'furlong' of axis" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]  # no result, no store to resume


@pytest.mark.slow
def test_cli_keeps_the_ome_image_name_in_a_zarr_result(identity_weights, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    img = RNG.integers(0, 255, (40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.ome.tif", img, ome=True, metadata={"axes": "YX", "Name": "embryo"})
    assert _restore(identity_weights, tmp_path / "in.ome.tif", tmp_path / "out.zarr") == 0
    node = next(iter(Reader(parse_url(str(tmp_path / "out.zarr")))()))
    assert node.metadata["name"] == "embryo"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_tag_is_applied_as_pil_does(tmp_path, orientation):
    rgb = RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    # 1000 px/cm across, 500 down: 10 x 20 um pixels, which swap with rows and columns for 5-8
    tags = [(274, "H", 1, orientation, True)]  # Orientation, as scanners and cameras write it
    tifffile.imwrite(tmp_path / "o.tif", rgb, extratags=tags, resolution=(1000.0, 500.0), resolutionunit="CENTIMETER")
    with Image.open(tmp_path / "o.tif") as f:
        shown = np.asarray(ImageOps.exif_transpose(f))
    src = mio.open_image(tmp_path / "o.tif")
    np.testing.assert_array_equal(np.asarray(src.array), shown)
    assert src.meta.scale == ({"X": 20.0, "Y": 10.0} if orientation >= 5 else {"X": 10.0, "Y": 20.0})


def test_pixel_sizes_that_are_not_positive_numbers_are_left_out(tmp_path):
    img = RNG.integers(0, 255, (2, 20, 30), dtype=np.uint8)
    md = {"axes": "ZYX", "PhysicalSizeX": "abc", "PhysicalSizeY": "INF", "PhysicalSizeZ": 0.5}
    tifffile.imwrite(tmp_path / "s.ome.tif", img, ome=True, metadata=md)
    with pytest.warns(UserWarning, match="PhysicalSizeX 'abc' is left out: not a positive number"):
        meta = mio.open_image(tmp_path / "s.ome.tif").meta
    assert meta.scale == {"Z": 0.5}
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, metadata={"axes": "ZYX", "spacing": "nan", "unit": "um"})
    assert "Z" not in mio.open_image(tmp_path / "ij.tif").meta.scale
