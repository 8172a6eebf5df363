"""TIFF in and out: OME-TIFF and ImageJ metadata read, OME-TIFF/ImageJ written, checked by real readers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_mirnet as nm
from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.io import tiff as mtiff
from napari_mirnet.metadata import Channel, ImageMeta

RNG = np.random.default_rng(14)


def _bioio(path):
    import bioio_ome_tiff
    from bioio import BioImage

    return BioImage(path, reader=bioio_ome_tiff.Reader)


def _cli_args(weights, *extra):
    return ["--weights", weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q", *extra]


# ------------------------------------------------------------------------------------------ reading
def test_ome_tiff_metadata_is_read(tmp_path):
    data = RNG.integers(0, 4000, (3, 2, 2, 20, 30), dtype=np.uint16)
    md = {
        "axes": "TCZYX",
        "PhysicalSizeX": 120.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 130.0,
        "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 0.5,  # no unit: the OME default, micrometre
        "TimeIncrement": 250.0,
        "TimeIncrementUnit": "ms",
        # OME Color is a signed 32-bit RGBA integer: 0xFF00FFFF (magenta) is negative
        "Channel": {"Name": ["DAPI", "Cy5"], "Color": [0x0000FFFF, 0xFF00FFFF - 2**32]},
    }
    tifffile.imwrite(tmp_path / "in.ome.tif", data, ome=True, metadata=md)
    src = mio.open_image(tmp_path / "in.ome.tif")
    m = src.meta
    assert src.axes == "TCZYX" and m.source_format == "ome-tiff"
    assert m.scale == {"X": 120.0, "Y": 130.0, "Z": 0.5, "T": 250.0}
    assert m.units == {"X": "nanometer", "Y": "nanometer", "Z": "micrometer", "T": "millisecond"}
    assert [(c.name, c.color) for c in m.channels] == [("DAPI", "0000FF"), ("Cy5", "FF00FF")]
    np.testing.assert_array_equal(src.array[1, 0], data[1, 0])


@pytest.mark.parametrize("unit", ["micron", "\\u00B5m", "um"])
def test_imagej_calibration_is_read(tmp_path, unit):
    data = RNG.integers(0, 255, (2, 3, 16, 24), dtype=np.uint8)  # T, C, Y, X
    lut = np.zeros((3, 3, 256), np.uint8)
    for i in range(3):
        lut[i, i] = np.arange(256)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.3),
        metadata={"axes": "TCYX", "unit": unit, "finterval": 2.5, "LUTs": list(lut), "Ranges": (0, 10, 0, 20, 0, 30)},
    )
    m = mio.open_image(tmp_path / "ij.tif").meta
    assert m.source_format == "imagej-tiff"
    assert m.scale == pytest.approx({"X": 0.25, "Y": 0.3, "T": 2.5})
    assert m.units == {"X": "micrometer", "Y": "micrometer", "T": "second"}
    assert [c.color for c in m.channels] == ["FF0000", "00FF00", "0000FF"]
    assert [c.window for c in m.channels] == [(0, 10), (0, 20), (0, 30)]


def test_plain_tiff_resolution_counts_in_centimetres_only(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(20000, 25000), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    cm = mio.open_image(tmp_path / "cm.tif").meta
    assert cm.scale == pytest.approx({"X": 0.5, "Y": 0.4}) and cm.units == {"X": "micrometer", "Y": "micrometer"}
    assert mio.open_image(tmp_path / "dpi.tif").meta.scale == {}  # 72 dpi is a print size, not a pixel size


def test_unit_names_normalise_to_ngff():
    assert mtiff.normalise_unit("µm") == mtiff.normalise_unit("\u03bcm") == "micrometer"
    assert mtiff.normalise_unit("\\u00B5m") == mtiff.normalise_unit("micron") == "micrometer"
    assert mtiff.normalise_unit("sec") == "second" and mtiff.normalise_unit("Å") == "angstrom"
    assert mtiff.normalise_unit("pixel") is None and mtiff.normalise_unit("furlong") is None


# ------------------------------------------------------------------------------------------ writing
_META = ImageMeta(
    axes="ZCYX",
    scale={"X": 0.2, "Y": 0.2, "Z": 1.5},
    units={"X": "micrometer", "Y": "micrometer", "Z": "micrometer"},
    channels=(Channel("DAPI", "0000FF"), Channel("GFP", "00FF00")),
)


def test_small_result_is_ome_tiff_that_bioio_reads(tmp_path):
    data = RNG.integers(0, 4000, (3, 2, 40, 50), dtype=np.uint16)
    out = mio.write_image(tmp_path / "o.tif", data, "ZCYX", meta=_META, fingerprint={"tile": 48})
    im = _bioio(out)
    assert (im.dims.T, im.dims.C, im.dims.Z, im.dims.Y, im.dims.X) == (1, 2, 3, 40, 50)
    assert tuple(im.physical_pixel_sizes) == pytest.approx((1.5, 0.2, 0.2))
    assert list(im.channel_names) == ["DAPI", "GFP"]
    np.testing.assert_array_equal(im.get_image_data("ZCYX"), data)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and not tif.is_imagej and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert mtiff.stored_tiff_fingerprint(out) == {"tile": 48}
    # and our own reader gets the same meaning back
    assert mio.open_image(out).meta.channels == _META.channels


def test_rgb_result_keeps_interleaved_samples(tmp_path):
    rgb = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = mio.write_image(tmp_path / "rgb.tif", rgb, "YXC", meta=ImageMeta(scale={"X": 2.0, "Y": 2.0}))
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        np.testing.assert_array_equal(tif.asarray(), rgb)
    assert _bioio(out).physical_pixel_sizes.X == 2.0


def test_large_result_is_tiled_with_a_pyramid_computed_once(tmp_path, monkeypatch):
    import dask.array as da

    # small sizes so that the test is quick: tiles of 64, a pyramid above 256 px, little memory
    monkeypatch.setattr(mtiff, "TILE", 64)
    monkeypatch.setattr(mtiff, "PYRAMID_FROM", 256)
    monkeypatch.setattr(mtiff, "PYRAMID_TO", 64)
    monkeypatch.setattr(mtiff, "_BAND_BYTES", 64 * 300 * 2)
    monkeypatch.setattr(mtiff, "_SMALL_BYTES", 0)  # a lazy result goes to the temporary store
    calls = []

    def block(b, block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return b

    full = RNG.integers(0, 60000, (2, 301, 300), dtype=np.uint16)
    lazy = da.from_array(full, chunks=(1, 100, 100)).map_blocks(block, dtype=full.dtype)
    meta = ImageMeta(scale={"X": 0.5, "Y": 0.5, "Z": 2.0}, units={"X": "micrometer", "Y": "micrometer"})
    out = mio.write_image(tmp_path / "big.tif", lazy, "ZYX", meta=meta, fingerprint={"x": 1})
    assert sorted(calls) == sorted(set(calls)) and len(calls) == lazy.npartitions  # every block computed once
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary store left
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert tif.is_ome and page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.predictor == 2
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(2, 301, 300), (2, 151, 150), (2, 76, 75), (2, 38, 38)]
        assert len(page.subifds) == 3
        np.testing.assert_array_equal(levels[0].asarray(), full)
        # level 1 is the 2x2 mean of level 0 (the odd last row repeated)
        padded = np.concatenate([full, full[:, -1:]], axis=1).astype(np.float64)
        mean = padded.reshape(2, 151, 2, 150, 2).mean(axis=(2, 4))
        np.testing.assert_array_equal(levels[1].asarray(), np.round(mean).astype(np.uint16))
    im = _bioio(out)
    assert im.physical_pixel_sizes.X == 0.5 and im.physical_pixel_sizes.Z == 2.0 and im.dims.Y == 301
    src = mio.open_image(out)  # our reader: full resolution, lazily, with the sizes
    assert src.axes == "ZYX" and src.array.shape == full.shape and src.meta.scale == {"X": 0.5, "Y": 0.5, "Z": 2.0}
    np.testing.assert_array_equal(src.array[1, 200:260, 10:90], full[1, 200:260, 10:90])


def test_imagej_input_meaning_gives_imagej_output(tmp_path):
    data = RNG.random((3, 2, 20, 30), dtype=np.float32)
    meta = _META.replace(source_format="imagej-tiff")
    out = mio.write_image(tmp_path / "ij.tif", data, "ZCYX", meta=meta, fingerprint={"tile": 48})
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and not tif.is_ome and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        ij = tif.imagej_metadata
        assert ij["unit"] == "micron" and ij["spacing"] == 1.5 and ij["channels"] == 2 and ij["mode"] == "composite"
        np.testing.assert_array_equal(tif.asarray(), data)
    back = mio.open_image(out).meta
    assert back.scale == pytest.approx(_META.scale) and back.units == _META.units
    assert [c.color for c in back.channels] == ["0000FF", "00FF00"]
    assert mtiff.stored_tiff_fingerprint(out) == {"tile": 48}


def test_what_imagej_cannot_hold_falls_back_to_ome_with_a_reason(tmp_path):
    meta = ImageMeta(source_format="imagej-tiff", scale={"X": 0.5, "Y": 0.5})
    with pytest.warns(UserWarning, match=r"i32\.tif: written as OME-TIFF, not ImageJ TIFF: ImageJ holds 8-bit"):
        out = mio.write_image(tmp_path / "i32.tif", np.arange(600, dtype=np.int32).reshape(20, 30), "YX", meta=meta)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
    assert _bioio(out).physical_pixel_sizes.X == 0.5


def test_fingerprint_of_files_written_before_ome_output_is_still_found(tmp_path):
    # earlier versions kept the fingerprint in tifffile's JSON description
    tifffile.imwrite(
        tmp_path / "old.tif", np.zeros((4, 4), np.uint8), metadata={"axes": "YX", "napari_mirnet": '{"tile": 64}'}
    )
    assert mtiff.stored_tiff_fingerprint(tmp_path / "old.tif") == {"tile": 64}
    tifffile.imwrite(tmp_path / "theirs.tif", np.zeros((4, 4), np.uint8), ome=True)
    assert mtiff.stored_tiff_fingerprint(tmp_path / "theirs.tif") is None


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_imagej_in_imagej_out_with_calibration_and_skip(tiny_weights, tmp_path, capsys):
    src, out = tmp_path / "ij.tif", tmp_path / "out.tif"
    stack = RNG.integers(0, 4000, (2, 40, 50), dtype=np.uint16)
    tifffile.imwrite(
        src, stack, imagej=True, resolution=(4.0, 4.0), metadata={"axes": "ZYX", "unit": "micron", "spacing": 3.0}
    )
    cmd = ["restore", str(src), "-o", str(out), *_cli_args(tiny_weights)]
    assert main(cmd) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ij.tif", "out.tif"]  # no hidden store or lock left
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "micron" and tif.imagej_metadata["spacing"] == 3.0
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == stack.shape
    m = mio.open_image(out).meta
    assert m.scale == pytest.approx({"X": 0.25, "Y": 0.25, "Z": 3.0}) and m.units["X"] == "micrometer"
    # the fingerprint round-trips: the same command skips the complete result, another tile is refused
    capsys.readouterr()
    assert main(cmd) == 0 and "already complete, skipped" in capsys.readouterr().err
    other = [c if c != "48" else "64" for c in cmd]
    assert main(other) == 1 and "of other settings (tile: 48 there, 64 now" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ome_in_super_resolution_out_halves_the_pixel_size(identity_weights, tmp_path, capsys):
    src, out = tmp_path / "in.ome.tif", tmp_path / "sr.tif"
    img = RNG.integers(0, 256, (36, 44), dtype=np.uint8)
    md = {
        "axes": "YX",
        "PhysicalSizeX": 0.4,
        "PhysicalSizeY": 0.4,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    tifffile.imwrite(src, img, ome=True, metadata=md)
    cmd = ["restore", str(src), "-o", str(out), "--task", "super_resolution", "--scale", "2"]
    assert main([*cmd, *_cli_args(identity_weights)]) == 0
    im = _bioio(out)
    assert (im.dims.Y, im.dims.X) == (72, 88)
    np.testing.assert_allclose([im.physical_pixel_sizes.Y, im.physical_pixel_sizes.X], [0.2, 0.2])
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
    capsys.readouterr()
    assert main([*cmd, *_cli_args(identity_weights)]) == 0
    assert "already complete, skipped" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_stopped_while_writing_leaves_no_tiff_and_reuses_the_computed_store(tiny_weights, tmp_path, monkeypatch):
    from napari_mirnet import engine

    src, out = tmp_path / "s.tif", tmp_path / "o.tif"
    tifffile.imwrite(src, RNG.integers(0, 4000, (2, 40, 50), dtype=np.uint16), imagej=True, metadata={"axes": "ZYX"})
    cmd = ["restore", str(src), "-o", str(out), *_cli_args(tiny_weights)]
    real_write = mtiff.write_tiff

    def interrupted(tmp, *a, **k):
        tmp.write_bytes(b"II*\0 half a file")  # a partial file exists when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_mirnet.io.files.write_tiff", interrupted)
    assert main(cmd) == 130
    work = tmp_path / ".o.tif.partial.zarr"
    assert not out.exists() and not (tmp_path / ".o.tif.partial").exists()
    assert mio.is_complete(work)  # the model's work is kept, hidden
    # the re-run writes the TIFF from the store, without running the model again
    monkeypatch.setattr("napari_mirnet.io.files.write_tiff", real_write)
    monkeypatch.setattr(engine, "execute", lambda *a, **k: pytest.fail("the model ran again"))
    assert main(cmd) == 0
    assert not work.exists() and mtiff.stored_tiff_fingerprint(out)["tile"] == 48
    monkeypatch.undo()
    expected = nm.restore(str(src), weights=tiny_weights, tile=48, halo=8, blend=4, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), np.asarray(expected))


@pytest.mark.slow
def test_cli_interrupted_run_into_a_tiff_resumes(tiny_weights, tmp_path, monkeypatch):

    src, out = tmp_path / "s.tif", tmp_path / "o.tif"
    tifffile.imwrite(src, RNG.integers(0, 4000, (2, 90, 100), dtype=np.uint16), imagej=True, metadata={"axes": "ZYX"})
    cmd = ["restore", str(src), "-o", str(out), *_cli_args(tiny_weights)]
    real, written = mio.write_chunk, []

    def stop_after_three(output, block, index):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(index)
        real(output, block, index)

    monkeypatch.setattr(mio, "write_chunk", stop_after_three)
    assert main(cmd) == 130
    assert not out.exists() and not mio.is_complete(tmp_path / ".o.tif.partial.zarr")
    total = int(mio.done_markers(tmp_path / ".o.tif.partial.zarr").size)
    assert len(written) == 3 < total
    monkeypatch.setattr(mio, "write_chunk", lambda o, b, i: (written.append(i), real(o, b, i)))
    assert main(cmd) == 0
    assert len(written) == total  # the three finished chunks were not computed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "s.tif"]
    monkeypatch.undo()
    expected = nm.restore(str(src), weights=tiny_weights, tile=48, halo=8, blend=4, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), np.asarray(expected))
