"""The plugin's npe2 writer: napari's "Save layer" writes a pyramidal OME-Zarr with the layer's metadata."""

import numpy as np
import pytest
import zarr

from napari_mirnet.io import omezarr

pytestmark = pytest.mark.gui
RNG = np.random.default_rng(14)


@pytest.fixture
def small_pyramids(monkeypatch):
    """Pyramids down to 64 px, so that test-sized images get three levels (the rule is the same)."""
    monkeypatch.setattr(omezarr, "PYRAMID_MIN", 64)


def _node(path):
    """ome-zarr-py's view of the store: (metadata, levels)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    return node.metadata, node.data


def _validate(path):
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(zarr.open_group(str(path), mode="r"))


def test_save_layer_writes_a_pyramid_with_scale_translate_and_units(make_napari_viewer, tmp_path, small_pyramids):
    viewer = make_napari_viewer()
    stack = RNG.integers(0, 4000, (3, 200, 150), dtype=np.uint16)
    viewer.add_image(
        stack,
        name="restored",
        scale=(2.0, 0.25, 0.5),
        translate=(4.0, 10.0, -3.0),
        units=("second", "micrometer", "micrometer"),
        axis_labels=("t", "y", "x"),
        contrast_limits=(100, 3000),
    )
    out = tmp_path / "saved.zarr"
    written = viewer.layers.save(str(out), selected=False, plugin="napari-mirnet")
    assert written == [str(out)]
    _validate(out)
    g = zarr.open_group(str(out), mode="r")
    assert [g[k].shape for k in sorted(g.array_keys())] == [(3, 200, 150), (3, 100, 75), (3, 50, 38)]
    np.testing.assert_array_equal(g["0"][...], stack)

    meta, levels = _node(out)
    assert len(levels) == 3
    assert [a["name"] for a in meta["axes"]] == ["t", "y", "x"]
    assert [a.get("unit") for a in meta["axes"]] == ["second", "micrometer", "micrometer"]
    ct = meta["coordinateTransformations"]
    assert ct[0][0]["scale"] == [2.0, 0.25, 0.5] and ct[0][1]["translation"] == [4.0, 10.0, -3.0]
    assert ct[1][0]["scale"] == [2.0, 0.5, 1.0]  # level 1: twice the pixel size in Y and X
    window = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]["channels"][0]["window"]
    assert (window["start"], window["end"]) == (100.0, 3000.0)

    # napari's builtin reader opens it as one multiscale layer (it reads no NGFF scale or translation)
    (back,) = viewer.open(str(out), plugin="napari")
    assert back.multiscale and [d.shape for d in back.data] == [g[k].shape for k in "012"]
    np.testing.assert_array_equal(np.asarray(back.data[2]), g["2"][...])
    # so the plugin's reader gives it back where it was: scale, translation, units, axis names, contrast
    (ours,) = viewer.open(str(out), plugin="napari-mirnet")
    assert ours.multiscale and [d.shape for d in ours.data] == [g[k].shape for k in "012"]
    np.testing.assert_allclose(ours.scale, (2.0, 0.25, 0.5))
    np.testing.assert_allclose(ours.translate, (4.0, 10.0, -3.0))
    assert [str(u) for u in ours.units] == ["second", "micrometer", "micrometer"]
    assert tuple(ours.axis_labels) == ("t", "y", "x")
    assert tuple(ours.contrast_limits) == (100.0, 3000.0)
    np.testing.assert_array_equal(np.asarray(ours.data[0]), stack)


def test_save_rgb_layer_stays_rgb(make_napari_viewer, tmp_path, small_pyramids):
    viewer = make_napari_viewer()
    img = RNG.integers(0, 256, (130, 97, 3), dtype=np.uint8)
    viewer.add_image(img, name="photo", rgb=True, scale=(0.5, 0.5), units=("nm", "nm"))
    out = tmp_path / "photo.zarr"
    viewer.layers.save(str(out), selected=False, plugin="napari-mirnet")
    _validate(out)
    meta, levels = _node(out)
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]  # NGFF order: C before Y, X
    assert [a.get("unit") for a in meta["axes"]] == [None, "nanometer", "nanometer"]
    assert [tuple(np.asarray(lvl).shape) for lvl in levels] == [(3, 130, 97), (3, 65, 49), (3, 33, 25)]
    np.testing.assert_array_equal(np.asarray(levels[0]), np.moveaxis(img, -1, 0))
    chans = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]["channels"]
    assert [c["color"] for c in chans] == ["FF0000", "00FF00", "0000FF"]

    # napari-ome-zarr shows it as three additive channels coloured red, green and blue
    from napari_ome_zarr import napari_get_reader

    ((data, kw, kind),) = napari_get_reader(str(out))(str(out))
    assert kind == "image" and kw["channel_axis"] == 0 and len(data) == 3
    assert [c.name for c in kw["colormap"]] == ["red", "green", "blue"]
    np.testing.assert_allclose(kw["scale"], [0.5, 0.5])

    # the plugin's reader opens it as one RGB layer again
    (back,) = viewer.open(str(out), plugin="napari-mirnet")
    assert back.rgb and back.multiscale and back.data[0].shape == img.shape
    np.testing.assert_array_equal(np.asarray(back.data[0]), img)
    np.testing.assert_allclose(back.scale, (0.5, 0.5))
    assert [str(u) for u in back.units] == ["nanometer", "nanometer"]


def test_reader_opens_channels_with_their_names_and_colours(make_napari_viewer, tmp_path):
    from napari_mirnet.io import write_image
    from napari_mirnet.metadata import Channel, ImageMeta

    cells = RNG.integers(0, 1000, (2, 40, 50), dtype=np.uint16)
    chans = (
        Channel(name="DAPI", color="0000FF", window=(10, 900)),
        Channel(name="GFP", color="00FF00", window=(5, 700)),
    )
    meta = ImageMeta(
        axes="CYX", scale={"Y": 0.3, "X": 0.3}, units={"Y": "micrometer", "X": "micrometer"}, channels=chans
    )
    out = write_image(tmp_path / "cells.zarr", cells, "CYX", meta=meta)
    viewer = make_napari_viewer()
    dapi, gfp = viewer.open(str(out), plugin="napari-mirnet")
    assert (dapi.name, gfp.name) == ("DAPI", "GFP") and not dapi.rgb
    assert (dapi.colormap.name, gfp.colormap.name) == ("blue", "green")
    assert tuple(gfp.contrast_limits) == (5.0, 700.0)
    np.testing.assert_allclose(dapi.scale, (0.3, 0.3))
    np.testing.assert_array_equal(np.asarray(gfp.data), cells[1])


def test_reader_leaves_other_paths_to_other_readers(tmp_path):
    from napari_mirnet.napari_io import get_reader

    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(4, 4), dtype="u1")
    assert plain.shape == (4, 4) and get_reader(str(tmp_path / "plain.zarr")) is None
    zarr.create_group(str(tmp_path / "group.zarr"))
    assert get_reader(str(tmp_path / "group.zarr")) is None
    assert get_reader(str(tmp_path / "image.tif")) is None


def test_save_refuses_a_path_that_is_not_a_store(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="img")
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(Exception, match="not a zarr store"):
        viewer.layers.save(str(folder), selected=False, plugin="napari-mirnet")
    assert (folder / "mine.txt").read_text() == "keep me"


def test_save_layer_keeps_the_layer_name(make_napari_viewer, tmp_path):
    # issue 36 item 8: the store was named after its file ("saved"), and read back as its full path
    viewer = make_napari_viewer()
    viewer.add_image(RNG.integers(0, 255, (40, 50), dtype=np.uint8), name="embryo")
    out = tmp_path / "saved.zarr"
    viewer.layers.save(str(out), selected=False, plugin="napari-mirnet")
    meta, _ = _node(out)  # ome-zarr-py's view
    assert meta["name"] == "embryo"
    assert _validate(out).ome_attributes.multiscales[0].name == "embryo"
    viewer.layers.clear()
    viewer.open(str(out), plugin="napari-mirnet")
    assert [lay.name for lay in viewer.layers] == ["embryo"]


# ------------------------------------------------------------------ issue 31 item 2: opening our results
def _cli_result(tmp_path, weights):
    """An RGB PNG restored x2 by the CLI into a store (no pixel size: input pixels)."""
    from PIL import Image

    from napari_mirnet.cli import main

    Image.fromarray(RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.zarr"
    args = ["restore", str(tmp_path / "in.png"), "-o", str(out), "--task", "super_resolution", "--scale", "2"]
    assert main([*args, "--weights", weights, "--device", "cpu", "-q"]) == 0
    return out


def _check_ours(layers, out):
    assert len(layers) == 1, [lay.name for lay in layers]  # not split into three gray planes
    lay = layers[0]
    assert lay.rgb and lay.data.shape[-3:] == (80, 100, 3)
    np.testing.assert_allclose(lay.scale, [0.5, 0.5])
    np.testing.assert_allclose(lay.translate, [-0.25, -0.25])
    assert str(out) not in lay.name and "/" not in lay.name


@pytest.mark.slow
def test_napari_command_with_plugin_flag_opens_our_result(make_napari_viewer, tmp_path, tiny_weights):
    """``napari out.zarr --plugin napari-mirnet`` (what the CLI prints after writing a store)."""
    out = _cli_result(tmp_path, tiny_weights)
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._qt_open([str(out)], stack=False, plugin="napari-mirnet")  # napari's __main__
    _check_ours(list(viewer.layers), out)


@pytest.mark.slow
def test_reader_preference_opens_our_results_without_a_dialog(make_napari_viewer, tmp_path, tiny_weights, monkeypatch):
    """The README's one-time setting: with ``*.zarr/`` -> napari-mirnet in napari's reader preferences,
    ``napari out.zarr`` (no --plugin) opens ours and asks nothing; without it napari would ask."""
    import napari._qt.qt_viewer as qt_viewer
    from napari.settings import get_settings

    out = _cli_result(tmp_path, tiny_weights)
    viewer = make_napari_viewer()
    asked = []
    # the dialog; nothing of its arguments kept (they hold the viewer, which must not leak)
    monkeypatch.setattr(qt_viewer, "handle_gui_reading", lambda *a, **k: asked.append("asked"))
    viewer.window._qt_viewer._qt_open([str(out)], stack=False)
    assert asked and not viewer.layers  # several readers claim a .zarr folder: napari asks
    plugins = get_settings().plugins
    before = dict(plugins.extension2reader)
    plugins.extension2reader = {**before, "*.zarr/": "napari-mirnet"}
    try:
        viewer.window._qt_viewer._qt_open([str(out)], stack=False)
    finally:
        plugins.extension2reader = before
    assert len(asked) == 1
    _check_ours(list(viewer.layers), out)
