"""The napari widgets, driven as a script would: set values, call the widget, wait for the worker."""

from __future__ import annotations

import contextlib
import os
import re
import time

import numpy as np
import pytest

import napari_mirnet as nm

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import SAFETY_MS, SAFETY_S  # noqa: E402

from napari_mirnet import sample_data  # noqa: E402
from napari_mirnet.widgets import (  # noqa: E402
    LOCAL_FILE,
    OUTPUT_LAZY,
    OUTPUT_ZARR,
    DefocusWidget,
    DenoiseWidget,
    EnhanceWidget,
    LowLightWidget,
    SuperResolutionWidget,
)

pytestmark = pytest.mark.gui


def _sample(fn, size=96, index=0):
    data, kwargs = fn()[index]
    return data[..., :size, :size, :] if data.ndim == 3 and data.shape[-1] == 3 else data, kwargs


def _widget(cls, viewer, weights):
    w = cls(viewer)
    viewer.window.add_dock_widget(w)
    w.weights.value = LOCAL_FILE
    w.weights_file.value = weights
    return w


def _shown(w, child) -> bool:
    """Whether a child widget shows when the widget does (its own flag and its parents')."""
    return child.native.isVisibleTo(w.native)


def _run(qtbot, w, timeout=SAFETY_MS):
    worker = w()
    assert worker is not None, w.last_status
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)
    return w.result_layer


@pytest.fixture
def errors(monkeypatch):
    """Messages sent to napari's notifications (error and warning)."""
    import napari.utils.notifications as notes

    seen = []
    monkeypatch.setattr(notes, "show_error", lambda msg: seen.append(("error", msg)))
    monkeypatch.setattr(notes, "show_warning", lambda msg: seen.append(("warning", msg)))
    return seen


@pytest.fixture(autouse=True)
def async_setting():
    """napari's asynchronous-slicing setting: off at the start of each test, restored afterwards
    (it is global, and lazy runs may turn it on)."""
    from napari.settings import get_settings

    experimental = get_settings().experimental
    old = experimental.async_
    experimental.async_ = False
    yield experimental
    experimental.async_ = old


CASES = [
    # widget, sample, scale option, expected shape factor, name suffix
    (DenoiseWidget, sample_data.noisy_astronaut, None, 1, "denoised"),
    (SuperResolutionWidget, sample_data.lowres_chelsea, 2, 2, "SR x2"),
    (LowLightWidget, sample_data.lowlight_coffee, None, 1, "low-light enhanced"),
    (EnhanceWidget, sample_data.low_contrast_moon, None, 1, "enhanced"),
]


@pytest.mark.parametrize("cls, sample, scale, factor, suffix", CASES, ids=lambda v: getattr(v, "__name__", None))
@pytest.mark.slow
def test_task_widget_adds_layer(make_napari_viewer, qtbot, tiny_weights, cls, sample, scale, factor, suffix):
    viewer = make_napari_viewer()
    size = 48 if factor > 1 else 96
    data, kwargs = _sample(sample, size)
    layer = viewer.add_image(
        data,
        **kwargs,
        scale=(0.5, 0.25),
        translate=(10.0, -4.0),
        axis_labels=("y", "x"),
    )
    layer.metadata["acquired"] = "today"
    w = _widget(cls, viewer, tiny_weights)
    if scale:
        w.scale.value = scale
    assert w.image.value is layer
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert out.name == f"{layer.name} {suffix}"
    assert out.data.shape == (size * factor, size * factor, 3)
    assert out.data.dtype == data.dtype and out.rgb
    np.testing.assert_allclose(out.scale, (0.5 / factor, 0.25 / factor))
    if factor == 1:
        np.testing.assert_allclose(out.translate, (10.0, -4.0))
    else:  # pixel centres stay where the bicubic resize puts them
        np.testing.assert_allclose(out.translate, (10.0 - 0.5 * 0.25, -4.0 - 0.25 * 0.25))
    assert tuple(out.axis_labels) == ("y", "x")
    assert out.metadata["acquired"] == "today" and out.metadata["mirnet"]["task"] == w.task
    assert viewer.layers[-1] is out


@pytest.mark.slow
def test_defocus_widget_two_inputs(make_napari_viewer, qtbot, tiny_dual_weights):
    viewer = make_napari_viewer()
    (left, lk), (right, rk) = sample_data.dual_pixel_pair()
    lay_l = viewer.add_image(left[:64, :64], **lk)
    lay_r = viewer.add_image(right[:64, :64], **rk)
    w = _widget(DefocusWidget, viewer, tiny_dual_weights)
    w.left.value, w.right.value = lay_l, lay_r
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert out.name == "dual-pixel left deblurred"
    assert out.data.shape == (64, 64, 3) and out.data.dtype == np.uint16


@pytest.mark.slow
def test_tta_option_reaches_the_engine(make_napari_viewer, qtbot, tiny_dual_weights):

    viewer = make_napari_viewer()
    (left, lk), (right, rk) = sample_data.dual_pixel_pair()
    left, right = left[:64, :64], right[:64, :64]
    w = _widget(DefocusWidget, viewer, tiny_dual_weights)
    w.left.value, w.right.value = viewer.add_image(left, **lk), viewer.add_image(right, **rk)
    assert not _shown(w, w.tta)  # an advanced option
    w.advanced.value = True
    assert _shown(w, w.tta)
    w.tta.value = True
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert out.metadata["mirnet"]["tta"] is True
    kw = dict(weights=tiny_dual_weights, device="cpu")
    np.testing.assert_array_equal(out.data, nm.restore((left, right), "defocus", tta=True, **kw))
    assert not np.array_equal(out.data, nm.restore((left, right), "defocus", **kw))


@pytest.mark.slow
def test_nodata_option_reaches_the_engine(make_napari_viewer, qtbot, tiny_weights, errors):
    """The advanced 'nodata' field is restore's nodata=: a uint16 layer's 0 stays 0 and stays out
    of the model; a value the layer's dtype cannot hold, or no number, is refused before any run."""
    viewer = make_napari_viewer()
    img = (np.random.default_rng(0).random((64, 64)) * 40000 + 1000).astype(np.uint16)
    img[:, :20] = 0
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.image.value = viewer.add_image(img, name="dem")
    assert not _shown(w, w.nodata)  # an advanced option
    w.advanced.value = True
    assert _shown(w, w.nodata)
    w.nodata.value = "300000"
    assert w() is None and "nodata 300000 cannot occur in a uint16 image" in w.last_status
    w.nodata.value = "abc"
    assert w() is None and "a number or 'nan'" in w.last_status
    w.nodata.value = " 0 "
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    want = nm.restore(img, weights=tiny_weights, device="cpu", nodata=0)
    np.testing.assert_array_equal(out.data, want)
    assert (out.data[:, :20] == 0).all() and not np.array_equal(
        want, nm.restore(img, weights=tiny_weights, device="cpu")
    )


@pytest.mark.slow
def test_3d_stack_whole_and_preview(make_napari_viewer, qtbot, tiny_weights):
    viewer = make_napari_viewer()
    data, kwargs = sample_data.noisy_stack()[0]
    data = data[:4, :64, :64]
    layer = viewer.add_image(data, **kwargs)
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    out = _run(qtbot, w)
    assert out.data.shape == data.shape and out.data.dtype == np.uint8
    done, total = w.last_progress  # the progress bar counted tiles, at least one per slice
    assert done == total >= 4
    np.testing.assert_allclose(out.scale, layer.scale)
    assert not np.array_equal(out.data[1], data[1])  # every slice was processed, not just the shown one

    viewer.dims.set_current_step(0, 2)
    w.preview.value = True
    prev = _run(qtbot, w)
    assert prev.name == "noisy stack denoised preview"
    assert prev.data.shape == (1, 64, 64)
    np.testing.assert_allclose(prev.translate, (2 * layer.scale[0], 0, 0))
    np.testing.assert_array_equal(prev.data[0], out.data[2])


@pytest.mark.slow
def test_lazy_output_from_dask(make_napari_viewer, qtbot, tiny_weights):
    import dask.array as da

    viewer = make_napari_viewer()
    data = sample_data.noisy_stack()[0][0][:3, :64, :64]
    viewer.add_image(da.from_array(data, chunks=(1, 64, 64)), name="lazy stack", contrast_limits=(0, 255))
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.output.value = OUTPUT_LAZY
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert hasattr(out.data, "dask")  # still lazy: only what napari shows gets computed
    assert out.data.shape == data.shape
    assert np.asarray(out.data[1]).shape == (64, 64)


@pytest.mark.slow
def test_zarr_output(make_napari_viewer, qtbot, tiny_weights, tmp_path):
    viewer = make_napari_viewer()
    data, kwargs = _sample(sample_data.noisy_astronaut, 64)
    viewer.add_image(data, **kwargs)
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.output.value = OUTPUT_ZARR
    w.zarr_path.value = tmp_path / "out.zarr"
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert (tmp_path / "out.zarr").exists()
    arr = out.data[0] if out.multiscale else out.data
    assert arr.shape == (64, 64, 3)


def test_zarr_output_refuses_another_format(make_napari_viewer, tmp_path, tiny_weights, errors):
    """The OME-Zarr choice writes a store: a .tif path is refused before the run (restore(out=...)
    would write a TIFF there)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.output.value = OUTPUT_ZARR
    w.zarr_path.value = tmp_path / "out.tif"
    assert w() is None
    assert "must end in .zarr" in w.last_status and not (tmp_path / "out.tif").exists()


def _start_long_run(viewer, qtbot, weights, planes: int):
    """A denoising run over a stack of ``planes`` planes, once its first tile is done."""
    data = np.repeat(sample_data.noisy_stack()[0][0][:1, :64, :64], planes, axis=0)
    viewer.add_image(data, name="long stack")
    w = _widget(DenoiseWidget, viewer, weights)
    worker = w()
    qtbot.waitUntil(lambda: w.last_progress[0] >= 1, timeout=SAFETY_MS)
    return w, worker


@pytest.mark.slow
def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, tiny_weights):
    viewer = make_napari_viewer()
    w, worker = _start_long_run(viewer, qtbot, tiny_weights, 40)
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert worker is not None
    assert w.result_layer is None
    assert [lay.name for lay in viewer.layers] == ["long stack"]
    assert "cancelled" in w.last_status
    assert w.run_button.enabled


@pytest.mark.slow
def test_run_shows_in_napari_activity_and_its_cancel_button_stops_it(make_napari_viewer, qtbot, tiny_weights):
    """Issue 30: one progress protocol, rendered in the widget's bar and napari's activity dock."""
    from napari.utils import progress

    viewer = make_napari_viewer()
    w, worker = _start_long_run(viewer, qtbot, tiny_weights, 40)

    def ours():
        return [b for b in list(progress._all_instances) if b.desc == "MIRNet: Denoise"]

    qtbot.waitUntil(lambda: any(b.n >= 1 for b in ours()), timeout=SAFETY_MS)
    (bar,) = ours()
    assert bar.total == 40 and 1 <= bar.n <= 40
    bar.cancel()  # the activity dock's cancel button
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert w.result_layer is None and "cancelled" in w.last_status
    assert not any(b.desc.startswith("MIRNet") for b in list(progress._all_instances))  # closed


@pytest.mark.slow
def test_closing_the_viewer_cancels_the_run(make_napari_viewer, qtbot, tiny_weights):
    viewer = make_napari_viewer()
    w, worker = _start_long_run(viewer, qtbot, tiny_weights, 400)
    cancel = w._cancel
    viewer.close()
    qtbot.waitUntil(cancel.is_set, timeout=SAFETY_MS)
    # the worker stops at the next tile and finishes without touching the deleted Qt widgets
    # (pytest-qt fails the test on an exception raised in a Qt callback)
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert worker is not None and w.result_layer is None
    assert w.last_progress[0] < w.last_progress[1] == 400


@contextlib.contextmanager
def _event_loop_ticks():
    """Times at which a 10 ms Qt timer fired while the block ran: long gaps are GUI freezes."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        yield ticks
    finally:
        timer.stop()


def _freeze_limit(qtbot, ms: int = 1000) -> float:
    """The longest event-loop gap these tests allow: 0.25 s on a quiet machine, more on a busy one.

    The freezes they look for are ours (work on the GUI thread, an import holding the GIL: 0.25-3 s
    each). On a busy machine the scheduler adds its own: the limit grows with what the machine's load
    alone costs (the longest gap while nothing of ours runs, twice) and with its run queue (load
    average per core), so that a slow machine is never a failure.
    """
    with _event_loop_ticks() as ticks:
        qtbot.wait(ms)
    idle = float(np.diff(ticks).max()) if len(ticks) > 1 else ms / 1000
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(0.25 + 2 * idle, 0.25 * per_core)


@pytest.mark.slow
def test_gui_stays_responsive(make_napari_viewer, qtbot, tiny_weights):
    viewer = make_napari_viewer()
    data = np.repeat(sample_data.noisy_stack()[0][0][:1, :128, :128], 24, axis=0)
    viewer.add_image(data, name="stack")
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    limit = _freeze_limit(qtbot)
    with _event_loop_ticks() as ticks:
        t0 = time.perf_counter()
        out = _run(qtbot, w)
        run_s = time.perf_counter() - t0
    assert out is not None, w.last_status
    gaps = np.diff(ticks)
    print(f"run {run_s:.2f} s, {len(ticks)} ticks, max event-loop gap {gaps.max() * 1000:.0f} ms")
    assert run_s > 0.5  # the run was long enough for the measurement to mean something
    assert gaps.max() < max(limit, _freeze_limit(qtbot)), (gaps.max(), limit)


@pytest.mark.slow
def test_labels_layer_is_refused_with_message(make_napari_viewer, qtbot, tiny_weights, errors):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="masks")
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.image.value = viewer.layers["masks"]
    assert w() is None
    assert "Labels layer" in w.last_status
    assert errors and errors[0][0] == "error" and "masks" in errors[0][1]
    assert len(viewer.layers) == 1


@pytest.mark.slow
def test_dual_pixel_bad_inputs(make_napari_viewer, qtbot, tiny_dual_weights, errors):
    viewer = make_napari_viewer()
    both = viewer.add_image(np.zeros((2, 32, 32), np.uint16), name="both views")
    a = viewer.add_image(np.zeros((32, 32, 3), np.uint16), name="a", rgb=True)
    b = viewer.add_image(np.zeros((40, 32, 3), np.uint16), name="b", rgb=True)
    w = _widget(DefocusWidget, viewer, tiny_dual_weights)
    w.left.value, w.right.value = both, a
    assert w() is None
    assert "2-channel" in w.last_status and "two layers" in w.last_status
    w.left.value, w.right.value = a, b
    assert w() is None
    assert "same shape" in w.last_status and "(32, 32, 3)" in w.last_status
    assert [kind for kind, _ in errors] == ["error", "error"]
    assert len(viewer.layers) == 3


@pytest.mark.slow
def test_missing_weights_file_and_engine_errors_are_messages(make_napari_viewer, qtbot, tmp_path, errors):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    w = DenoiseWidget(viewer)
    w.weights.value = LOCAL_FILE
    w.weights_file.value = tmp_path / "nope.pth"
    assert w() is None and "weights file" in w.last_status
    bad = tmp_path / "bad.pth"
    bad.write_text("<html>not a checkpoint</html>")
    w.weights_file.value = bad
    assert _run(qtbot, w) is None
    assert "HTML" in w.last_status or "cannot read" in w.last_status
    assert errors and all(kind == "error" for kind, _ in errors)


@pytest.mark.slow
def test_weights_and_device_choices(make_napari_viewer):
    viewer = make_napari_viewer()
    w = SuperResolutionWidget(viewer)
    labels = [w.weights.native.itemText(i) for i in range(w.weights.native.count())]
    assert labels[0].startswith("auto") and labels[-1].startswith("local file")
    assert any("sr_x2" in t and "non-commercial" in t for t in labels)
    w.scale.value = 4
    labels = [w.weights.native.itemText(i) for i in range(w.weights.native.count())]
    assert any("sr_x4" in t for t in labels) and not any("x2" in t for t in labels)  # no x2 model at x4
    assert w.device.choices[:2] == ("auto", "cpu")
    assert w.device_label.value.startswith("auto:")
    assert not _shown(w, w.tile)
    w.advanced.value = True
    assert _shown(w, w.tile) and _shown(w, w.halo) and _shown(w, w.blend)
    assert [s.native.text() for s in (w.tile, w.halo, w.blend)] == ["auto"] * 3  # not 0 / -1


@pytest.mark.slow
def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("noisy_image", "lowlight_image", "lowres_image", "low_contrast_image", "dual_pixel_views"):
        viewer.open_sample("napari-mirnet", key)
    names = [lay.name for lay in viewer.layers]
    assert "noisy astronaut" in names and "dual-pixel right" in names


@pytest.mark.slow
def test_cancel_zarr_leaves_store_incomplete(make_napari_viewer, qtbot, tiny_weights, tmp_path):
    io = pytest.importorskip("napari_mirnet.io")
    viewer = make_napari_viewer()
    data = np.repeat(sample_data.noisy_stack()[0][0][:1, :64, :64], 40, axis=0)
    viewer.add_image(data, name="long stack")
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.output.value = OUTPUT_ZARR
    w.zarr_path.value = tmp_path / "cancelled.zarr"
    w()
    qtbot.waitUntil(lambda: w.last_progress[0] >= 1, timeout=SAFETY_MS)
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert w.result_layer is None and len(viewer.layers) == 1
    assert not io.is_complete(tmp_path / "cancelled.zarr")


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.slow
def test_lazy_layer_is_computed_off_the_gui_thread(make_napari_viewer, qtbot, tiny_weights, async_setting, background):
    import dask.array as da

    viewer = make_napari_viewer(show=True)
    stack = da.random.default_rng(0).integers(0, 255, (8, 768, 768), dtype=np.uint8, chunks=(1, 768, 768))
    viewer.add_image(stack, name="stack", contrast_limits=(0, 255))
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    assert not _shown(w, w.background)  # an option of the lazy output only
    w.output.value = OUTPUT_LAZY
    assert _shown(w, w.background)
    w.background.value = background
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert async_setting.async_ is background
    assert ("turned on napari's asynchronous" in w.last_status) is background
    viewer.layers["stack"].visible = False
    qtbot.waitUntil(lambda: not viewer._layer_slicer._layers_to_task, timeout=SAFETY_MS)
    limit = _freeze_limit(qtbot)
    with _event_loop_ticks() as ticks:
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, 5)  # a plane nobody has computed yet
        qtbot.waitUntil(
            lambda: time.perf_counter() - t0 > 0.3 and not viewer._layer_slicer._layers_to_task, timeout=SAFETY_MS
        )
    seconds = time.perf_counter() - t0
    gap = np.diff(ticks).max() if len(ticks) > 1 else seconds
    print(f"background={background}: new plane in {seconds:.2f} s, longest event-loop gap {gap * 1000:.0f} ms")
    expected = np.asarray(out.data[5])
    np.testing.assert_array_equal(np.asarray(out._slice.image.raw), expected)  # the plane was computed
    if background:
        assert gap < max(limit, _freeze_limit(qtbot)), (gap, limit)
    else:
        assert gap > 0.25  # the same work on the GUI thread: the measurement can tell them apart


@pytest.mark.slow
def test_huge_lazy_scene_opens_at_once(make_napari_viewer, qtbot, tiny_weights):
    """A 20k x 20k dask scene: the lazy result is a pyramid and only a coarse level gets computed."""
    import dask.array as da

    viewer = make_napari_viewer()
    scene = da.random.default_rng(0).integers(0, 255, (20_000, 20_000), dtype=np.uint8, chunks=4096)
    viewer.add_image(scene, name="scene", contrast_limits=(0, 255))
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.output.value = OUTPUT_LAZY
    w.tile.value = 512
    t0 = time.perf_counter()
    out = _run(qtbot, w, timeout=SAFETY_MS)
    seconds = time.perf_counter() - t0
    assert out is not None, w.last_status
    assert out.multiscale and out.data[0].shape == (20_000, 20_000)
    assert all(hasattr(level, "dask") for level in out.data)
    shown = np.asarray(out.data[-1])
    print(f"lazy 20k x 20k: layer shown in {seconds:.1f} s, levels {[lvl.shape for lvl in out.data]}")
    assert shown.shape[0] <= 1024 and seconds < 90
    t0 = time.perf_counter()
    zoomed = np.asarray(out.data[0][9_000:9_256, 12_000:12_256])  # what a zoomed-in view asks for
    print(f"a 256 x 256 full-resolution region in {time.perf_counter() - t0:.1f} s")
    assert zoomed.shape == (256, 256) and time.perf_counter() - t0 < 60


def test_preview_of_zoomed_2d_view_restores_only_the_visible_region(make_napari_viewer, qtbot, tiny_weights):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    data, kwargs = _sample(sample_data.noisy_astronaut, 128)
    layer = viewer.add_image(data, **kwargs, scale=(2.0, 2.0))
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 4
    viewer.scene.camera.center = (64.0, 160.0)  # world units: data pixel (32, 80)
    for _ in range(5):
        QApplication.processEvents()
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    w.preview.value = True
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    h, wd = out.data.shape[:2]
    assert 32 <= h < 128 and 32 <= wd < 128 and out.data.shape[2] == 3
    # placed where it was cut from
    y0, x0 = (np.asarray(out.translate) - np.asarray(layer.translate)) / 2.0
    assert 0 <= y0 <= 32 <= y0 + h and 0 <= x0 <= 80 <= x0 + wd


def test_official_weights_warn_licence_and_failed_download_is_a_message(make_napari_viewer, qtbot, errors, monkeypatch):
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", "http://127.0.0.1:9/")  # nothing listens: fails at once
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img")
    w = DenoiseWidget(viewer)
    labels = [w.weights.native.itemText(i) for i in range(w.weights.native.count())]
    assert "real_denoising (official, non-commercial, download)" in labels
    w.weights.value = "real_denoising"
    assert _run(qtbot, w) is None
    kinds = [kind for kind, _ in errors]
    assert kinds[0] == "warning" and "non-commercial" in errors[0][1]
    assert kinds[-1] == "error" and "download" in errors[-1][1]
    assert len(viewer.layers) == 1


@pytest.mark.slow
def test_multiscale_input_gives_lazy_multiscale_result(make_napari_viewer, qtbot, tiny_weights):
    import dask.array as da

    viewer = make_napari_viewer()
    full = sample_data.noisy_stack()[0][0][0, :128, :128]
    levels = [da.from_array(full, chunks=64), da.from_array(full[::2, ::2], chunks=64)]
    layer = viewer.add_image(levels, multiscale=True, name="pyramid", contrast_limits=(0, 255), scale=(0.3, 0.3))
    w = _widget(SuperResolutionWidget, viewer, tiny_weights)
    w.scale.value = 2
    w.output.value = OUTPUT_LAZY
    out = _run(qtbot, w)
    assert out is not None, w.last_status
    assert out.multiscale and [lvl.shape for lvl in out.data] == [(256, 256), (128, 128)]
    np.testing.assert_allclose(out.scale, np.asarray(layer.scale) / 2)
    assert np.asarray(out.data[1]).dtype == np.uint8


def test_result_too_big_for_memory_suggests_lazy_or_zarr(make_napari_viewer, errors):
    import dask.array as da

    viewer = make_napari_viewer()
    viewer.add_image(
        da.zeros((200_000, 2048, 2048), np.uint16, chunks=(1, 2048, 2048)), name="huge", contrast_limits=(0, 1)
    )
    w = DenoiseWidget(viewer)
    assert w() is None
    assert "GiB" in w.last_status and "lazy" in w.last_status and "zarr" in w.last_status.lower()
    assert errors[0][0] == "error"


def test_every_widget_docks_compact_and_one_runs_with_progress(make_napari_viewer, qtbot, tiny_weights):
    """Dock all five widgets from the plugin menu (narrow docks), then run one restore and follow its
    progress: a planning stage from the click, then tiles with a time estimate."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    data = np.repeat(sample_data.noisy_stack()[0][0][:1, :64, :64], 12, axis=0)
    layer = viewer.add_image(data, name="img")
    names = [
        "Denoise",
        "Super-resolution",
        "Low-light enhancement",
        "Contrast enhancement",
        "Dual-pixel defocus deblur",
    ]
    docked = [viewer.window.add_plugin_dock_widget("napari-mirnet", name) for name in names]
    widgets = [w for _, w in docked]
    assert all(w.viewer is not None for w in widgets)
    qtbot.wait(50)
    widths = [dock.width() for dock, _ in docked]
    print(f"dock widths {widths} px, window {viewer.window._qt_window.width()} px")
    assert max(widths) <= 360  # was 451-630 px before the compact layout
    w = widgets[0]  # napari hands plugins a proxy of the viewer: the widget must work through it
    assert w.image.value is not None and w.image.value.name == "img"
    w.weights.value = LOCAL_FILE
    w.weights_file.value = tiny_weights
    formats = []
    w._relay.progressed.connect(lambda *_: formats.append(w.progress_bar.native.format()))
    worker = w()
    assert worker is not None, w.last_status
    bar = w.progress_bar.native
    assert w.last_status == "loading model and planning…" and bar.maximum() == 0 and _shown(w, w.progress_bar)
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    out = w.result_layer
    assert out is not None, w.last_status
    assert [lay.name for lay in viewer.layers] == ["img", "img denoised"] and layer.name == "img"
    assert formats[-1] == "12/12 tiles" and w.last_progress == (12, 12)
    assert any(f.endswith(" left") and "/12 tiles, about " in f for f in formats), formats
    assert not _shown(w, w.progress_bar) and w.last_status.startswith("done in")


def test_progress_text():
    from napari_mirnet.widgets import progress_text

    assert progress_text(0, 16, None) == "0/16 tiles"
    assert progress_text(3, 16, 12.4) == "3/16 tiles, about 12 s left"
    assert progress_text(3, 400, 125) == "3/400 tiles, about 2 min 05 s left"
    assert progress_text(16, 16, 0.0) == "16/16 tiles"


_DOCK_ALL = """
import sys
import napari
from napari_mirnet import widgets as W

viewer = napari.Viewer(show=False)
for cls in (W.DenoiseWidget, W.SuperResolutionWidget, W.LowLightWidget, W.EnhanceWidget, W.DefocusWidget):
    viewer.window.add_dock_widget(cls(viewer))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "triton" or m.startswith("torch._dynamo"))
print("compiler modules:", loaded)
viewer.close()
sys.exit(1 if loaded else 0)
"""


def test_docking_loads_no_compiler_stack():
    """torch._dynamo loads triton's LLVM, which crashes a process where Qt's OpenGL loaded Mesa's
    (llvmpipe: Xvfb, VNC, virtual desktops). In a fresh process, as napari starts: docking must not."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _DOCK_ALL], capture_output=True, text=True, timeout=SAFETY_S)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_defocus_preselects_the_left_right_pair(make_napari_viewer):
    from napari_mirnet.widgets import left_right_pair

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.uint8), name="other")
    w = DefocusWidget(viewer)  # docked first, then its sample opens: left, then right
    viewer.open_sample("napari-mirnet", "dual_pixel_views")
    assert (w.left.value.name, w.right.value.name) == ("dual-pixel left", "dual-pixel right")
    w2 = DefocusWidget(viewer)  # docked with the sample open
    assert (w2.left.value.name, w2.right.value.name) == ("dual-pixel left", "dual-pixel right")

    class L:
        def __init__(self, name):
            self.name = name

    a, b, c, d = L("cam Left 1"), L("cam Right 1"), L("x_LEFT"), L("x_RIGHT")
    assert left_right_pair([a, b, c, d]) == (c, d)  # the topmost pair
    assert left_right_pair([a, b, c, d], prefer=b) == (a, b)
    assert left_right_pair([a, d]) is None


def test_long_error_is_shown_whole_and_wraps(make_napari_viewer, qtbot, tmp_path, errors):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    w = DenoiseWidget(viewer)
    dock = viewer.window.add_dock_widget(w)
    qtbot.wait(50)
    width = dock.width()
    w.weights.value = LOCAL_FILE
    missing = tmp_path / "a_folder_with_a_rather_long_name" / "another_folder_for_good_measure" / "model.pth"
    w.weights_file.value = missing
    assert w() is None
    qtbot.wait(50)
    label = w.status.native
    assert str(missing) in w.last_status and label.text().replace("\u200b", "") == w.last_status
    assert label.height() >= label.heightForWidth(label.width()) > label.fontMetrics().height()  # wrapped, all lines
    assert dock.width() == width  # wrapped instead of widening the dock


def test_weights_note_says_when_auto_means_official_download(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img", rgb=True)
    w = DefocusWidget(viewer)  # no shipped dual-pixel model: auto = the official one
    assert _shown(w, w.weights_note)
    assert "non-commercial" in w.weights_note.value and "downloaded" in w.weights_note.value
    d = DenoiseWidget(viewer)  # auto = a shipped model: nothing to say
    assert not _shown(d, d.weights_note)
    d.weights.value = "real_denoising"
    assert _shown(d, d.weights_note) and "non-commercial" in d.weights_note.value
    s = SuperResolutionWidget(viewer)
    assert not _shown(s, s.weights_note)  # x2 has a shipped model
    s.scale.value = 3
    assert _shown(s, s.weights_note) and "sr_x3" in s.weights_note.value


# ----------------------------------------------------------------- issue 31: first contact, second round
def test_progress_shows_0_of_n_as_soon_as_the_run_is_planned(make_napari_viewer, qtbot, tiny_weights):
    """A one-tile image: the bar says 0/1 (not a busy bar) before its only tile is finished."""
    viewer = make_napari_viewer()
    viewer.add_image(sample_data.noisy_stack()[0][0][0, :48, :48], name="img")
    w = _widget(DenoiseWidget, viewer, tiny_weights)
    seen = []
    bar = w.progress_bar.native
    w._relay.progressed.connect(lambda d, t: seen.append((d, t, bar.format(), bar.maximum(), w.result_layer)))
    assert _run(qtbot, w) is not None, w.last_status
    assert seen[0] == (0, 1, "0/1 tiles", bar.maximum(), None) and bar.maximum() > 0
    assert seen[-1][:3] == (1, 1, "1/1 tiles")


def test_bar_moves_within_a_long_tile(make_napari_viewer):
    """The bar's 1 s clock: time on the first tile; then the tile in hand advances by the average."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    w = DenoiseWidget(viewer)
    bar = w.progress_bar.native
    w.worker = object()  # a run is going
    w._on_progress(0, 1)
    w._first_tile = (w._last_report - 65.0, 0)  # planned 65 s ago, nothing finished since
    w._tick()
    assert re.fullmatch(r"0/1 tiles, 1 min 0\d s on the current tile", bar.format()), bar.format()
    w._on_progress(0, 4)
    w._on_progress(2, 4)
    w._first_tile, w._last_report = (w._last_report - 20.0, 0), w._last_report - 5.0  # 10 s a tile, 5 s in
    w._tick()
    assert 250 <= bar.value() < 300 and bar.maximum() == 400  # half way through the third tile
    assert re.fullmatch(r"2/4 tiles, about 1\d s left", bar.format()), bar.format()
    w.worker = None


def test_download_error_is_one_short_line_with_the_action(make_napari_viewer, qtbot, errors, monkeypatch):
    """No network (a name that cannot resolve): what to copy where first; urllib3's text in the tooltip."""
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", "https://mirnet-weights.invalid/releases")
    from napari_mirnet.weights import cached_path

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img")
    w = DenoiseWidget(viewer)
    w.weights.value = "real_denoising"
    assert _run(qtbot, w) is None
    status, tooltip = w.last_status, w.status.tooltip
    assert status.startswith("copy https://mirnet-weights.invalid/releases/real_denoising.pth to ")
    assert str(cached_path("real_denoising")) in status and "use a local file as the weights" in status
    assert "HTTPSConnectionPool" not in status and len(status) < 250 + len(str(cached_path("real_denoising")))
    assert tooltip.startswith(status) and "caused by:" in tooltip and "mirnet-weights.invalid" in tooltip
    assert errors[-1] == ("error", f"MIRNet: {status}")


def test_all_six_docks_leave_the_canvas_room(make_napari_viewer, qtbot):
    """Every dock of the plugin open in napari's default window: one tab group, the window no taller
    than the screen, the canvas at least 40% of the window's height."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    names = ["Denoise", "Super-resolution", "Low-light enhancement", "Contrast enhancement"]
    names += ["Dual-pixel defocus deblur", "Fine-tune denoiser (self-supervised)"]
    docks = [viewer.window.add_plugin_dock_widget("napari-mirnet", name)[0] for name in names]
    qtbot.waitUntil(lambda: all(len(main.tabifiedDockWidgets(d)) == 5 for d in docks), timeout=SAFETY_MS)
    qtbot.wait(50)
    screen = QApplication.primaryScreen().availableGeometry()
    canvas = viewer.window._qt_viewer.canvas.native
    print(f"window {main.width()} x {main.height()}, canvas {canvas.height()} px, screen {screen.height()} px")
    assert main.frameGeometry().height() <= screen.height()
    assert canvas.height() >= 0.4 * main.height()
    assert sum(not d.visibleRegion().isEmpty() for d in docks) == 1  # one tab shown at a time


@pytest.mark.slow
def test_the_napari_docs_script_example_runs_as_written():
    """docs/napari.md's 'From a script' example, run as a user would (it once started a second run and
    printed 'a run is already going')."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "napari.md").read_text()
    section = doc[doc.index("## From a script") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code += "assert layer is not None and layer.data.shape == viewer.layers[0].data.shape, w.last_status\n"
    code += "viewer.close()\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SAFETY_S)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "denoised" in r.stdout and "already" not in r.stdout + r.stderr
