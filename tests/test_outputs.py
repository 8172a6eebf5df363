"""Outputs belong to the library: ``restore(..., out=path)`` writes what the CLI's ``-o`` writes.

For the same call the API and the CLI write byte-identical files (GeoTIFF, OME-TIFF, OME-Zarr,
PNG); every format read back by the ecosystem's readers; the rule on existing outputs and
input == output through the API.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_mirnet as nm
from napari_mirnet import engine, outputs
from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.io.lock import same_file

DATA = Path(__file__).parent / "data" / "geotiff"
RNG = np.random.default_rng(30)
TILED = dict(tile=48, halo=8, blend=4, device="cpu")


def _cli(weights, src, dst, *extra) -> int:
    args = ["--weights", weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q"]
    return main(["restore", str(src), "-o", str(dst), *args, *extra])


def _gray_tif(path, shape=(70, 90)) -> Path:
    tifffile.imwrite(path, RNG.integers(0, 4000, shape, dtype=np.uint16), metadata={"axes": "YX"})
    return path


def _rgb_png(path) -> Path:
    Image.fromarray(RNG.integers(0, 256, (60, 84, 3), dtype=np.uint8)).save(path)
    return path


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (a file: itself) by relative path, with its bytes."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _without_token(text: bytes) -> dict:
    """A zarr.json with the store's random identity (the resume bookkeeping's token) left out."""
    meta = json.loads(text)
    meta.get("attributes", {}).get(mio.ATTR, {}).pop("token", None)
    return meta


def _without_uuid(data: bytes) -> bytes:
    """A TIFF with its OME-XML UUID (new for every file written, by design of OME) zeroed in place."""
    return re.sub(rb"urn:uuid:[0-9a-f-]{36}", b"urn:uuid:" + b"0" * 36, data)


def _same_bytes(a: Path, b: Path) -> None:
    """The same files with the same bytes, but for the two fields that are random by design."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name.endswith("zarr.json"):
            assert _without_token(fa[name]) == _without_token(fb[name]), name
        else:
            assert _without_uuid(fa[name]) == _without_uuid(fb[name]), name


# ----------------------------------------------------------------- API and CLI: the same bytes
@pytest.mark.parametrize(
    "make, name",
    [
        (lambda d: DATA / "RGB.byte.crop.tif", "geo.tif"),  # GeoTIFF (COG layout), from a real geo file
        (lambda d: _gray_tif(d / "gray.tif"), "gray.ome.tif"),  # OME-TIFF
        (lambda d: _gray_tif(d / "gray.tif"), "gray.ome.zarr"),  # OME-Zarr: every chunk, the metadata
        (lambda d: _rgb_png(d / "rgb.png"), "rgb.png"),  # PNG
    ],
)
def test_api_and_cli_write_the_same_bytes(tiny_weights, tmp_path, make, name):
    src = make(tmp_path)
    (tmp_path / "api").mkdir()
    api_out, cli_out = tmp_path / "api" / name, tmp_path / "cli" / name
    result = nm.restore(str(src), weights=tiny_weights, out=api_out, **TILED)
    assert _cli(tiny_weights, src, cli_out) == 0
    _same_bytes(api_out, cli_out)
    assert not list(tmp_path.glob("api/.*")), "no hidden work store or lock is left beside the output"
    # the result is what was written, read back lazily in the input's axis order
    back, given = mio.open_image(api_out), mio.open_image(src)
    assert back.axes == given.axes
    np.testing.assert_array_equal(np.asarray(result), np.asarray(back.array))


# ------------------------------------------------------------------- read back by real readers
def test_geotiff_out_keeps_the_georeferencing(tiny_weights, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    src = DATA / "RGB.byte.crop.tif"
    out = nm.restore(src, weights=tiny_weights, out=tmp_path / "geo.tif", **TILED)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "geo.tif") as b:
        assert (b.crs, b.transform, b.count, b.dtypes) == (a.crs, a.transform, a.count, a.dtypes)
        assert b.nodata == a.nodata and b.overviews(1) is not None
        np.testing.assert_array_equal(np.moveaxis(b.read(), 0, -1), np.asarray(out))


def test_ome_tiff_out_keeps_pixel_sizes(tiny_weights, tmp_path):
    data = RNG.integers(0, 4000, (2, 50, 60), dtype=np.uint16)
    md = {"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.5}
    tifffile.imwrite(tmp_path / "in.ome.tif", data, ome=True, metadata=md)
    out = nm.restore(tmp_path / "in.ome.tif", weights=tiny_weights, out=tmp_path / "o.ome.tif", **TILED)
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), np.asarray(out))
        assert 'PhysicalSizeZ="1.5"' in tif.ome_metadata
    assert outputs.stored_record(tmp_path / "o.ome.tif")["axes"] == "ZYX"


def test_png_and_jpg_out_from_numpy(tiny_weights, tmp_path):
    img = RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    in_memory = nm.restore(img, weights=tiny_weights, **TILED)
    png = nm.restore(img, weights=tiny_weights, out=tmp_path / "o.png", **TILED)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), in_memory)
    np.testing.assert_array_equal(np.asarray(png), in_memory)
    jpg = nm.restore(img, weights=tiny_weights, out=tmp_path / "o.jpg", **TILED)
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.size == (52, 40) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), np.asarray(jpg))  # the lossy pixels, as written


def test_zarr_out_is_read_by_zarr(tiny_weights, tmp_path):
    zarr = pytest.importorskip("zarr")
    img = RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    out = nm.restore(img, weights=tiny_weights, out=tmp_path / "o.ome.zarr", **TILED)
    group = zarr.open_group(str(tmp_path / "o.ome.zarr"), mode="r")
    assert "multiscales" in group.attrs["ome"] and mio.is_complete(tmp_path / "o.ome.zarr")
    np.testing.assert_array_equal(np.moveaxis(group["0"][...], 0, -1), np.asarray(out))


def test_lazy_input_to_tiff_resumes_from_the_hidden_store(tiny_weights, tmp_path):
    src = _gray_tif(tmp_path / "big.tif", (100, 120))
    dst = tmp_path / "o.tif"
    cancel = threading.Event()

    def stop(p):
        if p.done >= 2:
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(src, weights=tiny_weights, out=dst, progress=stop, cancel=cancel, **TILED)
    work = outputs.tiff_work_store(dst)
    assert not dst.exists() and work.is_dir() and not mio.is_complete(work)
    seen = []
    nm.restore(src, weights=tiny_weights, out=dst, progress=lambda done, total: seen.append(total), **TILED)
    assert dst.exists() and not work.exists()
    assert seen and seen[-1] < len(
        engine.prepare(str(src), weights=tiny_weights, options=engine.RestoreOptions(**TILED)).keys
    )
    whole = nm.restore(tifffile.imread(src), weights=tiny_weights, **TILED)
    np.testing.assert_array_equal(tifffile.imread(dst), whole)


def test_qc_beside_a_file(tiny_weights, tmp_path):
    src = _gray_tif(tmp_path / "n.tif")
    result, report = nm.restore(src, weights=tiny_weights, out=tmp_path / "o.tif", qc=True, **TILED)
    assert report.summary["verdict"] in ("cleared", "flagged")
    assert {p.name for p in tmp_path.glob("o.qc*")} == {"o.qc-residual.tif", "o.qc-trust.tif", "o.qc.json"}


# ----------------------------------------------------------------------------- existing outputs
def test_existing_file_outputs_follow_the_cli_rule(tiny_weights, tmp_path):
    src = _gray_tif(tmp_path / "in.tif")
    dst = tmp_path / "o.tif"
    nm.restore(src, weights=tiny_weights, out=dst, **TILED)
    before = dst.read_bytes()
    with pytest.raises(mio.OutputExistsError, match="already complete.*overwrite=True") as info:
        nm.restore(src, weights=tiny_weights, out=dst, **TILED)  # a complete result of the same settings
    assert info.value.matches
    with pytest.raises(mio.OutputExistsError, match=r"other settings \(tile: 48 there, 64 now.*overwrite=True") as info:
        nm.restore(src, weights=tiny_weights, out=dst, **{**TILED, "tile": 64})
    assert not info.value.matches and dst.read_bytes() == before
    nm.restore(src, weights=tiny_weights, out=dst, overwrite=True, **{**TILED, "tile": 64})
    assert outputs.stored_record(dst)["tile"] == 64
    foreign = tmp_path / "foreign.png"
    foreign.write_bytes(b"mine")
    with pytest.raises(mio.OutputError, match="not written by napari-mirnet; pass overwrite=True"):
        nm.restore(_rgb_png(tmp_path / "x.png"), weights=tiny_weights, out=foreign, **TILED)
    assert foreign.read_bytes() == b"mine"


def test_default_tile_follows_the_existing_output(tiny_weights, tmp_path):
    """Resuming or repeating a run with default geometry plans the tiles the output was made with."""
    src = _gray_tif(tmp_path / "in.tif")
    dst = tmp_path / "o.png"
    nm.restore(src, weights=tiny_weights, out=dst, **TILED)
    options = outputs.resume_options(engine.RestoreOptions(device="cpu"), dst, overwrite=False)
    assert (options.tile, options.halo, options.blend) == (48, 8, 4)
    assert outputs.resume_options(engine.RestoreOptions(), dst, overwrite=True).tile is None
    with pytest.raises(mio.OutputExistsError) as info:
        nm.restore(src, weights=tiny_weights, out=dst, device="cpu")  # no tile given: the stored one
    assert info.value.matches


@pytest.mark.parametrize("name", ["x.bmp", "x.ome.xml"])
def test_unknown_suffix_is_refused_before_the_model_loads(tmp_path, name):
    with pytest.raises(mio.OutputError, match=r"out=.*cannot write .* files; out must end in \.zarr"):
        nm.restore(np.zeros((8, 8), np.uint8), weights=str(tmp_path / "absent.pth"), out=tmp_path / name)
    assert not (tmp_path / name).exists()


def test_input_is_never_the_output(tiny_weights, tmp_path):
    src = _gray_tif(tmp_path / "in.tif")
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "in.tif"):
        with pytest.raises(mio.OutputError, match="is the input"):
            nm.restore(src, weights=tiny_weights, out=out, overwrite=True, **TILED)
    assert src.read_bytes() == before


def test_a_hard_link_to_the_input_is_the_input(tiny_weights, tmp_path, capsys):
    """Another name of the same file (a hard link, a bind mount) is the input: refused by both front ends."""
    src = _gray_tif(tmp_path / "in.tif")
    link = tmp_path / "link.tif"
    os.link(src, link)
    before = src.read_bytes()
    with pytest.raises(mio.OutputError, match="is the input"):
        nm.restore(src, weights=tiny_weights, out=link, overwrite=True, **TILED)
    assert _cli(tiny_weights, src, link, "--overwrite") == 2
    assert "is its input" in capsys.readouterr().err
    assert src.read_bytes() == before and os.path.samefile(src, link)
    assert same_file(src, link) and not same_file(src, tmp_path / "other.tif")


def test_a_file_output_inside_the_store_an_array_reads_is_refused(tiny_weights, tmp_path):
    import dask.array as da

    store = tmp_path / "in.zarr"
    nm.restore(RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8), weights=tiny_weights, out=store, **TILED)
    lazy = da.from_zarr(str(store), component="0")  # (C, Y, X): the store's own order
    with pytest.raises(mio.OutputError, match="lies inside the input"):
        nm.restore(lazy, weights=tiny_weights, axes="CYX", out=store / "x.tif", **TILED)
    assert not (store / "x.tif").exists() and mio.is_complete(store)
