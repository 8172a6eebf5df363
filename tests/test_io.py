"""Readers and the resumable OME-Zarr v3 writer: metadata, fingerprint, completion, resume, refusals."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet import io as mio

RNG = np.random.default_rng(2)
TILED = dict(tile=48, halo=8, blend=4, device="cpu")


def _rgb(h=90, w=110):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ readers
def test_read_tif_png_jpg(tmp_path):
    stack = RNG.integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "s.tif", stack, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "spacing": 3.5}
    )
    src = mio.open_image(tmp_path / "s.tif")
    assert src.axes == "ZYX" and src.pixel_scale == {"Z": 3.5, "X": 0.5, "Y": 0.5}
    np.testing.assert_array_equal(src.array[...], stack)
    rgb = _rgb(30, 40)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    assert mio.open_image(tmp_path / "c.png").axes == "YXC"
    np.testing.assert_array_equal(mio.open_image(tmp_path / "c.png").array, rgb)
    assert mio.open_image(tmp_path / "c.jpg").array.shape == (30, 40, 3)
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.bmp").write_bytes(b"BM")
        mio.open_image(tmp_path / "x.bmp")
    with pytest.raises(FileNotFoundError):
        mio.open_image(tmp_path / "missing.tif")


def test_tif_input_restores_lazily(tiny_weights, tmp_path):
    stack = RNG.integers(0, 4000, (2, 60, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    out = nm.restore(str(tmp_path / "s.tif"), weights=tiny_weights, **TILED)
    assert out.shape == stack.shape and hasattr(out, "dask")
    np.testing.assert_array_equal(out.compute(), nm.restore(stack, weights=tiny_weights, axes="ZYX", **TILED))


# ----------------------------------------------------------------------------- OME-Zarr output
@pytest.mark.slow
def test_ome_zarr_output_metadata_and_sr_scale(identity_weights, tmp_path):
    img = RNG.integers(0, 256, (2, 3, 40, 44), dtype=np.uint8)  # ZCYX: stored as CZYX
    out = tmp_path / "o.zarr"
    res = nm.restore(
        img,
        "super_resolution",
        identity_weights,
        scale=2,
        axes="ZCYX",
        out=out,
        pixel_size=(4.0, 1.0, 0.5, 0.5),
        **TILED,
    )
    assert res.shape == (2, 3, 80, 88)
    g = zarr.open_group(str(out), mode="r")
    assert g.metadata.zarr_format == 3
    ms = dict(g.attrs)["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space", "space"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 4.0, 0.25, 0.25]
    arr = g["0"]
    plan = engine.plan_tiles(40, 44, 48, 8, 4, factor=2)
    assert arr.chunks == (3, 1, 2 * plan.core[0], 2 * plan.core[1])  # chunk-aligned with the tiles
    meta = dict(g.attrs)["napari_mirnet"]
    assert meta["complete"] is True
    fp = meta["fingerprint"]
    assert {"weights_sha256", "task", "tile", "halo", "blend", "version"} <= set(fp)
    assert fp["task"] == "super_resolution" and fp["tile"] == 48 and len(fp["weights_sha256"]) == 64
    assert sorted(g.array_keys()) == ["0"]  # 80x88: no pyramid; only the image, no bookkeeping inside
    assert not mio.bookkeeping_path(out).exists()  # removed once complete
    np.testing.assert_array_equal(
        res.compute(), nm.restore(img, "super_resolution", identity_weights, scale=2, axes="ZCYX", **TILED)
    )


def test_ome_zarr_input_scale_carries_over(tiny_weights, tmp_path):
    img = RNG.integers(0, 256, (3, 50, 60), dtype=np.uint8)
    nm.restore(img, weights=tiny_weights, axes="ZYX", out=tmp_path / "a.zarr", pixel_size=(2.0, 0.3, 0.3), **TILED)
    src = mio.open_image(tmp_path / "a.zarr")
    assert src.axes == "ZYX" and src.pixel_scale == {"Z": 2.0, "Y": 0.3, "X": 0.3}
    nm.restore(str(tmp_path / "a.zarr"), weights=tiny_weights, out=tmp_path / "b.zarr", **TILED)
    ms = dict(zarr.open_group(str(tmp_path / "b.zarr")).attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.3, 0.3]


def test_incomplete_store_is_not_an_image(tiny_weights, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "p.zarr"
    with pytest.raises(engine.Cancelled):
        nm.restore(_rgb(), weights=tiny_weights, out=out, cancel=cancel, progress=lambda d, t: cancel.set(), **TILED)
    attrs = dict(zarr.open_group(str(out)).attrs)
    assert "ome" not in attrs and attrs["napari_mirnet"]["complete"] is False
    with pytest.raises(ValueError, match="unfinished"):
        mio.open_image(out)


# ------------------------------------------------------------------------------------- resume
def test_resume_skips_finished_chunks_and_matches(tiny_weights, tmp_path):
    img = _rgb()
    out = tmp_path / "r.zarr"
    cancel = threading.Event()

    def stop(done, total):
        if done >= 8:  # with blending a chunk needs its neighbours' tiles first
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, out=out, cancel=cancel, progress=stop, **TILED)
    done_before = int(mio.done_markers(out).sum())
    assert 0 < done_before < 12
    seen = []
    resumed = nm.restore(img, weights=tiny_weights, out=out, progress=lambda d, t: seen.append(t), **TILED)
    assert seen[-1] == 12 - done_before  # only the unfinished chunks ran
    fresh = nm.restore(img, weights=tiny_weights, out=tmp_path / "f.zarr", **TILED)
    np.testing.assert_array_equal(resumed.compute(), fresh.compute())


def test_mismatched_fingerprint_is_refused(tiny_weights, tmp_path):
    img = _rgb()
    out = tmp_path / "m.zarr"
    cancel = threading.Event()
    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, out=out, cancel=cancel, progress=lambda d, t: cancel.set(), **TILED)
    with pytest.raises(mio.FingerprintMismatch, match=r"other settings.*tile.*--overwrite"):
        nm.restore(img, weights=tiny_weights, out=out, **{**TILED, "tile": 64})
    nm.restore(img, weights=tiny_weights, out=out, overwrite=True, **{**TILED, "tile": 64})
    assert mio.is_complete(out)


def test_complete_output_is_not_overwritten(tiny_weights, tmp_path):
    img = _rgb()
    out = tmp_path / "c.zarr"
    nm.restore(img, weights=tiny_weights, out=out, **TILED)
    before = zarr.open_group(str(out))["0"][...]
    with pytest.raises(mio.OutputExistsError, match="already complete.*overwrite") as info:
        nm.restore(img[:80], weights=tiny_weights, out=out, **TILED)
    assert not info.value.matches
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][...], before)
    with pytest.raises(mio.OutputExistsError) as info:
        nm.restore(img, weights=tiny_weights, out=out, **TILED)
    assert info.value.matches


def test_foreign_directory_is_left_alone(tiny_weights, tmp_path):
    d = tmp_path / "mine.zarr"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(mio.OutputError, match="not a napari-mirnet result"):
            nm.restore(_rgb(), weights=tiny_weights, out=d, overwrite=overwrite, **TILED)
    assert (d / "notes.txt").read_text() == "keep me"


def test_write_image_tif_and_png(tmp_path):
    import dask.array as da

    arr = da.from_array(RNG.integers(0, 256, (2, 30, 40), dtype=np.uint8), chunks=(1, 16, 16))
    mio.write_image(tmp_path / "o.tif", arr, "ZYX")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), arr.compute())
    mio.write_image(tmp_path / "o.png", arr[0], "YX")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), arr[0].compute())
    with pytest.raises(mio.OutputError, match="2-D image"):
        mio.write_image(tmp_path / "z.png", arr, "ZYX")
    assert not (tmp_path / "z.png").exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_resume_with_default_tile_keeps_the_stored_settings(tiny_weights, tmp_path, monkeypatch):
    """Default tiles follow free memory; a resumed run must not be refused because memory changed."""
    from napari_mirnet.weights import cached_model

    bpp = engine.bytes_per_pixel(cached_model(tiny_weights, "cpu"))
    img = _rgb(200, 200)
    out = tmp_path / "d.zarr"
    monkeypatch.setattr(engine.memory, "memory_budget", lambda dev: bpp * 128**2)
    cancel = threading.Event()
    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, device="cpu", out=out, cancel=cancel, progress=lambda d, t: cancel.set())
    monkeypatch.setattr(engine.memory, "memory_budget", lambda dev: bpp * 96**2)  # less memory now
    res = nm.restore(img, weights=tiny_weights, device="cpu", out=out)
    assert mio.is_complete(out) and mio.stored_fingerprint(out)["tile"] == 128
    np.testing.assert_array_equal(res.compute(), nm.restore(img, weights=tiny_weights, device="cpu", tile=128))


def test_overwriting_a_store_in_the_same_process_writes_through_fresh_arrays(tiny_weights, tmp_path):
    """Re-running into the same path with another tile (or another image) must not reuse old arrays."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    out = str(tmp_path / "again.zarr")
    nm.restore(img, weights=tiny_weights, out=out, tile=48, halo=8, blend=4, device="cpu")
    # other chunks: stale arrays would raise BoundsCheckError or write a misaligned store
    second = nm.restore(img, weights=tiny_weights, out=out, overwrite=True, tile=64, halo=8, blend=4, device="cpu")
    np.testing.assert_array_equal(
        second.compute(), nm.restore(img, weights=tiny_weights, tile=64, halo=8, blend=4, device="cpu")
    )
    # another shape: the store must read back as the new image
    other = rng.integers(0, 256, (70, 60, 3), dtype=np.uint8)
    third = nm.restore(other, weights=tiny_weights, out=out, overwrite=True, tile=48, halo=8, blend=4, device="cpu")
    assert third.shape == other.shape
    # the store holds (C, Y, X): read it back in the input's (Y, X, C) order
    np.testing.assert_array_equal(
        np.moveaxis(np.asarray(zarr.open_group(out, mode="r")["0"]), 0, -1),
        nm.restore(other, weights=tiny_weights, tile=48, halo=8, blend=4, device="cpu"),
    )


# ----------------------------------------------------------------------------------- start-up
_NO_TORCH = """
import sys

import numpy as np

import napari_mirnet.axes, napari_mirnet.metadata, napari_mirnet.xarrays
from napari_mirnet import io as mio
from napari_mirnet.processing import IntensityMap, channel_layout, fill_nodata, mark_nodata

img = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
for name in ("a.zarr", "a.tif", "a.png"):
    mio.write_image(sys.argv[1] + "/" + name, img, "YX")
    assert mio.open_image(sys.argv[1] + "/" + name).array.shape == img.shape
imap = IntensityMap.for_image(img)
filled, holes = fill_nodata(imap.forward(img)[None])
imap.inverse(mark_nodata(filled, holes)[0])
channel_layout(3)
print(sorted(m for m in ("torch", "napari_mirnet.model") if m in sys.modules))
"""


def test_reading_writing_and_mapping_images_import_no_torch(tmp_path):
    """io, processing, metadata, xarrays and axes work without torch (the napari reader and writer need no model)."""
    done = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
