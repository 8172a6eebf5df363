"""Issue 14's reader matrix: what the input said about its pixels, the readers find in the output.

Every zarr output (2-D gray, RGB, ZYX uint16, TCZYX, SR x2) is validated by ome-zarr-models and read
back by ome-zarr-py and bioio-ome-zarr; OME-TIFF and ImageJ TIFF inputs, restored to .tif and to
.zarr through the CLI, give bioio the input's physical sizes and units.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

import napari_mirnet as nm
from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.metadata import ImageMeta

RNG = np.random.default_rng(1414)
TILED = dict(tile=48, halo=8, blend=4, device="cpu")

# (axes, shape, dtype, scale, units, translation, task scale)
CASES = {
    "gray-2d": ("YX", (60, 70), np.uint8, {"Y": 0.5, "X": 0.25}, "micrometer", {"Y": 3.0, "X": -1.0}, 1),
    "rgb": ("YXC", (50, 66, 3), np.uint8, {"Y": 2.0, "X": 2.0}, "meter", {"Y": 100.0, "X": 40.0}, 1),
    "zyx-uint16": ("ZYX", (3, 40, 52), np.uint16, {"Z": 2.0, "Y": 0.3, "X": 0.3}, "micrometer", {"Z": 5.0}, 1),
    "tczyx": ("TCZYX", (2, 2, 2, 36, 40), np.uint16, {"Z": 1.5, "Y": 0.2, "X": 0.2}, "micrometer", {}, 1),
    "sr-x2": ("YXC", (40, 44, 3), np.uint8, {"Y": 0.5, "X": 0.5}, "micrometer", {"Y": 10.0, "X": -3.0}, 2),
}


def _image(shape, dtype):
    hi = 256 if dtype == np.uint8 else 4000
    return RNG.integers(0, hi, shape).astype(dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_zarr_output_is_valid_and_readers_see_the_input_meaning(case, tiny_weights, identity_weights, tmp_path):
    from bioio import BioImage
    from bioio_ome_zarr import Reader as BioReader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    axes, shape, dtype, scale, unit, translation, factor = CASES[case]
    units = {a: unit for a in scale if a in "ZYX"}
    src = tmp_path / "in.zarr"
    mio.write_image(src, _image(shape, dtype), axes, meta=ImageMeta(scale=scale, units=units, translation=translation))
    out = tmp_path / "out.zarr"
    if factor == 1:
        nm.restore(str(src), "denoise", tiny_weights if "C" in axes and axes.endswith("C") else None, out=out, **TILED)
    else:
        nm.restore(str(src), "super_resolution", identity_weights, scale=factor, out=out, **TILED)

    Image.from_zarr(zarr.open_group(str(out), mode="r"))  # raises on anything NGFF 0.5 forbids
    expect = ImageMeta(axes=axes, scale=scale, units=units, translation=translation).resampled(factor)
    store_axes = mio.ome_order(axes)

    node = next(iter(Reader(parse_url(str(out)))()))
    got_axes = [a["name"].upper() for a in node.metadata["axes"]]
    assert "".join(got_axes) == store_axes
    transforms = node.metadata["coordinateTransformations"][0]
    got_scale = dict(zip(store_axes, transforms[0]["scale"]))
    for a, v in expect.scale.items():
        assert got_scale[a] == pytest.approx(v), a
    got_shift = dict(zip(store_axes, transforms[1]["translation"])) if len(transforms) > 1 else {}
    for a in "ZYX":
        want = expect.translation.get(a, 0.0)
        assert got_shift.get(a, 0.0) == pytest.approx(want), a
    got_units = {a: d.get("unit") for a, d in zip(store_axes, node.metadata["axes"])}
    assert {a: got_units[a] for a in units} == units

    bio = BioImage(str(out), reader=BioReader)
    sizes = bio.physical_pixel_sizes
    for a, v in expect.scale.items():
        assert getattr(sizes, a) == pytest.approx(v), a
    if "C" in axes and shape[axes.index("C")] == 3:
        assert bio.channel_names == ["R", "G", "B"]


def _ome_tiff(path, data, size_yx, size_z):
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": size_yx,
            "PhysicalSizeY": size_yx,
            "PhysicalSizeZ": size_z,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZUnit": "µm",
        },
    )


def _imagej_tiff(path, data, size_yx, size_z):
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / size_yx, 1 / size_yx),
        metadata={"axes": "ZYX", "spacing": size_z, "unit": "micron"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ome", "imagej"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_tiff_calibration_reaches_tif_and_zarr_outputs(kind, suffix, tmp_path, capsys):
    from bioio import BioImage

    data = _image((2, 48, 40), np.uint16)
    src = tmp_path / "in.tif"
    (_ome_tiff if kind == "ome" else _imagej_tiff)(src, data, 0.325, 1.5)
    out = tmp_path / f"out{suffix}"
    rc = main(["restore", str(src), "-o", str(out), "--tile", "48", "--halo", "8", "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    if suffix == ".tif":
        from bioio_ome_tiff import Reader as OmeTiffReader
        from bioio_tifffile import Reader as TiffReader

        reader = OmeTiffReader if tifffile.TiffFile(out).is_ome else TiffReader
        bio = BioImage(str(out), reader=reader)
        assert tifffile.TiffFile(out).is_ome == (kind == "ome")
    else:
        from bioio_ome_zarr import Reader as ZarrReader

        bio = BioImage(str(out), reader=ZarrReader)
    sizes = bio.physical_pixel_sizes
    assert tuple(sizes) == pytest.approx((1.5, 0.325, 0.325))  # (Z, Y, X)
    back = mio.open_image(out)
    assert back.meta.units.get("X") == "micrometer" and back.meta.scale["X"] == pytest.approx(0.325)
