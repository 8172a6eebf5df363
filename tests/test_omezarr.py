"""OME-Zarr in and out (issue 14), checked with the real ecosystem readers.

Out: an NGFF 0.5 pyramid written chunk by chunk, units, per-level scale and translation, ``omero``
channels, the resume bookkeeping outside the image (ome-zarr-models, ome-zarr-py,
napari-ome-zarr, bioio and napari's builtin reader read it). In: NGFF 0.4 (zarr v2) and 0.5,
``level=``, level paths, bioformats2raw roots.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.io import omezarr
from napari_mirnet.metadata import ImageMeta

RNG = np.random.default_rng(14)
# a core of 64 output pixels: level 1 is written chunk by chunk (32-pixel chunks), level 2 at the end
TILED = dict(tile=80, halo=8, blend=4, device="cpu")
UM = {"Y": "micrometer", "X": "micrometer"}


@pytest.fixture
def small_pyramids(monkeypatch):
    """Pyramids down to 64 px, so that test-sized images get three levels (the rule is the same)."""
    monkeypatch.setattr(omezarr, "PYRAMID_MIN", 64)


def _mean2(a: np.ndarray) -> np.ndarray:
    """Independent 2x2 mean of a (C, Y, X) array with even Y and X, rounded like an integer image."""
    c, h, w = a.shape
    return np.rint(a.reshape(c, h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(2, 4))).astype(a.dtype)


def _readers(path):
    """What ome-zarr-py, napari-ome-zarr, bioio and napari's builtin reader make of a store."""
    import npe2
    from bioio import BioImage
    from bioio_ome_zarr import Reader as BioReader
    from napari_ome_zarr import napari_get_reader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    layers = napari_get_reader(str(path))(str(path))
    bio = BioImage(str(path), reader=BioReader)
    pm = npe2.PluginManager.instance()
    pm.discover()
    builtin = npe2.read([str(path)], plugin_name="napari", stack=False)
    return node, layers, bio, builtin


def _validate(path):
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(zarr.open_group(str(path), mode="r"))


# ------------------------------------------------------------------------------------------ out
@pytest.mark.slow
def test_sr_result_is_a_valid_pyramid_every_reader_understands(identity_weights, tmp_path, small_pyramids):
    img = RNG.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    src = tmp_path / "in.zarr"
    meta = ImageMeta(scale={"Y": 0.5, "X": 0.5}, units=UM, translation={"Y": 10.0, "X": -3.0})
    mio.write_image(src, img, "YXC", meta=meta)
    out = tmp_path / "sr.zarr"
    res = nm.restore(str(src), "super_resolution", identity_weights, scale=2, out=out, **TILED)
    assert res.shape == (3, 150, 200)  # the input store's order (CYX)
    _validate(out)
    g = zarr.open_group(str(out), mode="r")
    assert sorted(g.array_keys()) == ["0", "1", "2"] and not list(g.group_keys())
    assert not mio.bookkeeping_path(out).exists() and mio.is_complete(out)
    assert [g[k].shape for k in "012"] == [(3, 150, 200), (3, 75, 100), (3, 38, 50)]
    lvl0 = g["0"][...]
    np.testing.assert_array_equal(lvl0, np.asarray(res))
    np.testing.assert_array_equal(g["1"][...], _mean2(lvl0))
    np.testing.assert_array_equal(g["2"][:, :37, :], _mean2(_mean2(lvl0)[:, :74, :]))  # the odd row: below

    # SR x2: pixel size halves; the first pixel centre moves a quarter input pixel up-left
    s0, t0 = 0.25, (10.0 - 0.25 + 0.125, -3.0 - 0.25 + 0.125)
    node, layers, bio, builtin = _readers(out)
    ct = node.metadata["coordinateTransformations"]
    for k in range(3):
        f = 2**k
        assert ct[k][0]["scale"] == [1.0, s0 * f, s0 * f]
        shift = ct[k][1]["translation"] if len(ct[k]) > 1 else [0.0, 0.0, 0.0]
        np.testing.assert_allclose(shift, [0.0, t0[0] + (f - 1) / 2 * s0, t0[1] + (f - 1) / 2 * s0])
    assert [a.get("unit") for a in node.metadata["axes"]] == [None, "micrometer", "micrometer"]
    (data, kw, kind), *_ = layers
    assert kind == "image" and len(data) == 3 and kw["channel_axis"] == 0
    assert [c.name for c in kw["colormap"]] == ["red", "green", "blue"]
    # napari-ome-zarr 0.10 takes only the first transform of a dataset (the scale; its translation
    # is read from "graph" transforms of NGFF 0.6), so the translation is checked with ome-zarr-py
    np.testing.assert_allclose(kw["scale"], [s0, s0])
    assert kw["units"] == ("micrometer", "micrometer")
    assert bio.channel_names == ["R", "G", "B"]
    assert tuple(bio.physical_pixel_sizes)[1:] == pytest.approx((s0, s0))
    assert len(builtin) == 1 and [a.shape for a in builtin[0][0]] == [(3, 150, 200), (3, 75, 100), (3, 38, 50)]

    # and our own reader gives the metadata back, per level
    back = mio.open_image(out, level=1)
    assert back.axes == "CYX" and back.array.shape == (3, 75, 100)
    assert back.meta.units == UM and back.meta.scale == {"Y": 0.5, "X": 0.5}
    assert back.meta.translation == pytest.approx({"Y": t0[0] + s0 / 2, "X": t0[1] + s0 / 2})
    assert [c.name for c in back.meta.channels] == ["R", "G", "B"]


def test_write_image_zarr_has_the_same_pyramid_and_metadata(tmp_path, small_pyramids):
    stack = RNG.integers(0, 4000, (2, 130, 97), dtype=np.uint16)
    meta = ImageMeta(
        scale={"Z": 2.0, "Y": 0.3, "X": 0.3}, units={"Z": "micrometer", **UM}, translation={"Z": 1.0, "Y": 5.0}
    )
    p = mio.write_image(tmp_path / "s.zarr", stack, "ZYX", meta=meta)
    _validate(p)
    g = zarr.open_group(str(p), mode="r")
    assert [g[k].shape for k in sorted(g.array_keys())] == [(2, 130, 97), (2, 65, 49), (2, 33, 25)]
    # odd width: the last column of level 1 is the mean of the last column's pairs
    lvl1 = g["1"][...]
    np.testing.assert_array_equal(lvl1[:, :, :48], _mean2(stack[:, :, :96]))
    np.testing.assert_array_equal(
        lvl1[:, :, 48], np.rint(stack[:, :, 96].reshape(2, 65, 2).astype(float).mean(-1)).astype(np.uint16)
    )
    node, layers, bio, _ = _readers(p)
    assert [a["unit"] for a in node.metadata["axes"]] == ["micrometer"] * 3
    (data, kw, _), *_ = layers
    np.testing.assert_allclose(kw["scale"], [2.0, 0.3, 0.3])
    np.testing.assert_allclose(node.metadata["coordinateTransformations"][0][1]["translation"], [1.0, 5.0, 0.0])
    assert bio.physical_pixel_sizes == (2.0, 0.3, 0.3)
    back = mio.open_image(p, level="2")
    assert back.meta.scale == pytest.approx({"Z": 2.0, "Y": 1.2, "X": 1.2})
    assert back.meta.translation == pytest.approx({"Z": 1.0, "Y": 5.0 + 1.5 * 0.3, "X": 1.5 * 0.3})


def test_downsample_mean_with_odd_edges():
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    low = omezarr.downsample2(a, "YX")
    assert low.shape == (2, 3)
    assert low[0, 0] == a[:2, :2].mean() and low[1, 2] == a[2, 4] and low[0, 2] == a[:2, 4].mean()
    u8 = np.array([[0, 1], [1, 1]], np.uint8)  # mean 0.75 rounds to 1, in the input's dtype
    assert omezarr.downsample2(u8, "YX").dtype == np.uint8 and omezarr.downsample2(u8, "YX")[0, 0] == 1
    assert omezarr.pyramid_levels(16384, 16384) == 6 and omezarr.pyramid_levels(400, 300) == 1


# --------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_of_a_pyramid_store_gives_the_same_levels(tiny_weights, tmp_path, small_pyramids):
    img = RNG.integers(0, 256, (150, 140, 3), dtype=np.uint8)
    out = tmp_path / "r.zarr"
    cancel = threading.Event()

    def stop(done, total):
        if done >= 3:
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, out=out, cancel=cancel, progress=stop, **TILED)
    assert not mio.is_complete(out) and "ome" not in dict(zarr.open_group(str(out)).attrs)
    done = mio.done_markers(out)
    assert 0 < done.sum() < done.size and mio.bookkeeping_path(out).is_dir()
    # the image group holds only image levels, even while unfinished
    assert sorted(zarr.open_group(str(out)).array_keys()) == ["0", "1", "2"]
    seen = []
    nm.restore(img, weights=tiny_weights, out=out, progress=lambda d, t: seen.append(t), **TILED)
    assert seen[-1] == done.size - done.sum()
    fresh = tmp_path / "f.zarr"
    nm.restore(img, weights=tiny_weights, out=fresh, **TILED)
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(fresh), mode="r")
    for k in "012":
        np.testing.assert_array_equal(a[k][...], b[k][...])
    _validate(out)
    assert not mio.bookkeeping_path(out).exists()


@pytest.mark.slow
def test_stale_bookkeeping_never_vouches_for_a_new_store(tiny_weights, tmp_path):
    img = RNG.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    out = tmp_path / "s.zarr"
    cancel = threading.Event()

    def stop(done, total):
        if done >= 5:  # with blending a chunk needs its neighbours' tiles first
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, out=out, cancel=cancel, progress=stop, **TILED)
    assert mio.done_markers(out).sum() >= 1
    import shutil

    shutil.rmtree(out)  # the user deletes the store, not the hidden bookkeeping beside it
    seen = []
    nm.restore(img, weights=tiny_weights, out=out, progress=lambda d, t: seen.append(t), **TILED)
    assert seen[-1] == 9  # every tile computed again (3 x 3)
    np.testing.assert_array_equal(
        np.moveaxis(zarr.open_group(str(out))["0"][...], 0, -1), nm.restore(img, weights=tiny_weights, **TILED)
    )


def test_unfinished_store_of_the_old_layout_is_refused(tiny_weights, tmp_path):
    img = RNG.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    out = tmp_path / "o.zarr"
    cancel = threading.Event()
    with pytest.raises(engine.Cancelled):
        nm.restore(img, weights=tiny_weights, out=out, cancel=cancel, progress=lambda d, t: cancel.set(), **TILED)
    g = zarr.open_group(str(out), mode="r+")
    ours = dict(g.attrs)["napari_mirnet"]
    del ours["layout"]
    g.attrs["napari_mirnet"] = ours
    with pytest.raises(mio.FingerprintMismatch, match="older napari-mirnet.*--overwrite"):
        nm.restore(img, weights=tiny_weights, out=out, **TILED)


# ------------------------------------------------------------------------------------------- in
def _ngff04_v2(path, levels, axes, scale, shift, multiscale_scale=None, omero=None):
    """An NGFF 0.4 image in a zarr v2 store, written by hand as the spec says."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for k, arr in enumerate(levels):
        g.create_array(f"s{k}", data=arr, chunks=arr.shape)
        f = [2**k if a in "yx" else 1 for a in axes]
        datasets.append(
            {
                "path": f"s{k}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [s * v for s, v in zip(scale, f)]},
                    {"type": "translation", "translation": list(shift)},
                ],
            }
        )
    ms = {
        "version": "0.4",
        "name": "raw",
        "axes": [
            {"name": a, "type": "channel" if a == "c" else "space", **({} if a == "c" else {"unit": "micrometer"})}
            for a in axes
        ],
        "datasets": datasets,
    }
    if multiscale_scale:
        ms["coordinateTransformations"] = [{"type": "scale", "scale": multiscale_scale}]
    g.attrs["multiscales"] = [ms]
    if omero:
        g.attrs["omero"] = omero
    return g


def test_read_ngff_04_v2_levels_and_level_paths(tmp_path):
    base = RNG.integers(0, 4000, (2, 64, 48), dtype=np.uint16)
    levels = [base, base[:, ::2, ::2], base[:, ::4, ::4]]
    omero = {
        "channels": [
            {"label": "DAPI", "color": "0000ff", "window": {"start": 10, "end": 900, "min": 0, "max": 65535}},
            {"label": "GFP", "color": "00ff00", "window": {"start": 0, "end": 3000, "min": 0, "max": 65535}},
        ]
    }
    p = tmp_path / "v04.zarr"
    _ngff04_v2(p, levels, "cyx", [1, 0.2, 0.2], [0, 4.0, 8.0], multiscale_scale=[1, 2.0, 2.0], omero=omero)
    src = mio.open_image(p)
    assert src.axes == "CYX" and src.array.shape == (2, 64, 48)
    # dataset scale 0.2, then the multiscale-wide scale 2: 0.4 per pixel; the shift is scaled too
    assert src.meta.scale == pytest.approx({"Y": 0.4, "X": 0.4}) and src.meta.units == UM
    assert src.meta.translation == pytest.approx({"Y": 8.0, "X": 16.0})
    assert [(c.name, c.color, c.window) for c in src.meta.channels] == [
        ("DAPI", "0000FF", (10.0, 900.0)),
        ("GFP", "00FF00", (0.0, 3000.0)),
    ]
    two = mio.open_image(p, level=2)
    assert two.array.shape == (2, 16, 12) and two.meta.scale == pytest.approx({"Y": 1.6, "X": 1.6})
    np.testing.assert_array_equal(two.array[...], levels[2])
    assert mio.open_image(p, level="s1").array.shape == (2, 32, 24)
    by_path = mio.open_image(p / "s1")  # a path to one level keeps the axes and that level's scale
    assert by_path.axes == "CYX" and by_path.meta.scale == pytest.approx({"Y": 0.8, "X": 0.8})
    with pytest.raises(ValueError, match=r"level=5 is not a level.*0 \('s0', 2x64x48\).*2 \('s2', 2x16x12\)"):
        mio.open_image(p, level=5)
    with pytest.raises(ValueError, match="level="):
        mio.open_image(p / "s1", level=0)


def test_read_ome_zarr_py_store_and_bioformats2raw_root(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    img = RNG.integers(0, 255, (40, 36), dtype=np.uint8)
    root = tmp_path / "b2r.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.attrs["bioformats2raw.layout"] = 3
    for series, data in (("0", img), ("1", img[:20, :18])):
        write_image(
            data,
            g.require_group(series),
            axes="yx",
            fmt=FormatV04(),
            scale_factors=[2],
            scale={"y": 0.5, "x": 0.5},
            axes_units={"y": "micrometer", "x": "micrometer"},
        )
    src = mio.open_image(root)
    assert src.axes == "YX" and src.array.shape == (40, 36) and src.meta.scale == {"Y": 0.5, "X": 0.5}
    np.testing.assert_array_equal(src.array[...], img)
    assert src.meta.units == UM
    one = mio.open_image(root, level=1)
    assert one.array.shape == (20, 18) and one.meta.translation == pytest.approx({"Y": 0.25, "X": 0.25})
    assert mio.open_image(root / "1").array.shape == (20, 18)  # another series: its folder


@pytest.mark.slow
def test_level_through_restore_and_the_cli(tiny_weights, tmp_path, small_pyramids, capsys):
    img = RNG.integers(0, 256, (130, 120, 3), dtype=np.uint8)
    src = tmp_path / "in.zarr"
    mio.write_image(src, img, "YXC", meta=ImageMeta(scale={"Y": 0.5, "X": 0.5}, units=UM))
    out = nm.restore(str(src), weights=tiny_weights, level=1, **TILED)
    assert out.shape == (3, 65, 60)  # stored as CYX
    lvl1 = mio.open_image(src, level=1).array[...]
    # the store says its channels are red, green, blue: colour, as the same pixels given as a picture
    # (channels last); bare channels first would be bands, each restored alone
    picture = nm.restore(np.moveaxis(lvl1, 0, -1), weights=tiny_weights, axes="YXC", **TILED)
    np.testing.assert_array_equal(out.compute(), np.moveaxis(picture, -1, 0))
    dst = tmp_path / "out.zarr"
    args = ["restore", str(src), "-o", str(dst), "--weights", tiny_weights, "--tile", "80", "--halo", "8", "-q"]
    assert main([*args, "--level", "1"]) == 0
    back = mio.open_image(dst)
    assert back.array.shape == (3, 65, 60) and back.meta.scale == {"Y": 1.0, "X": 1.0} and back.meta.units == UM
    capsys.readouterr()
    assert main([*args, "--level", "7", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "--level '7' is not a level" in err and "0 ('0', 3x130x120)" in err and "level=" not in err
    with pytest.raises(ValueError, match="level=.*array, not a path"):
        nm.restore(img, weights=tiny_weights, level=1, **TILED)


def test_super_resolution_moves_an_implicit_first_centre_too():
    # NGFF's default translation is 0: an x2 result's first centre lies a quarter input pixel before it
    meta = ImageMeta(axes="CYX", scale={"Y": 0.5, "X": 0.5}).resampled(2)
    assert meta.scale == {"Y": 0.25, "X": 0.25} and meta.translation == {"Y": -0.125, "X": -0.125}
    attrs = omezarr.multiscales_attrs("CYX", meta, n_channels=3, levels=2, dtype=np.uint8)
    ds = attrs["multiscales"][0]["datasets"]
    assert ds[0]["coordinateTransformations"][1]["translation"] == [0.0, -0.125, -0.125]
    assert len(ds[1]["coordinateTransformations"]) == 1  # level 1 centres: -0.125 + 0.125 = 0, no shift
