"""The napari fine-tuning widget and its training process (moved from test_finetune.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import toy

from napari_mirnet import restore

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


@pytest.mark.gui
def test_widget_adapts_the_layer_and_the_model_appears_in_denoise(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, gray_identity
):
    import shutil

    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    shutil.copy(gray_identity, tmp_path / "models" / "start.pth")
    from napari_mirnet.widgets import FinetuneWidget, weights_choices

    _, noisy = toy(n=3, size=96)
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.weights.value = str(tmp_path / "models" / "start.pth")
    w.minutes.value = 0.3  # 18 s: set-up (and the source model's held-out check) first
    seen, on_item = [], w._on_item
    w._on_item = lambda item: (seen.append((item, w.status.value)), on_item(item))  # what the status showed
    w.start.clicked()
    assert not w.start.enabled and w.cancel.enabled
    qtbot.waitUntil(lambda: w.result is not None or w.error is not None, timeout=120_000)
    assert w.error is None, w.error
    # set-up (issue 31.6): the status counts the patches read, within the run's budget
    setup = [item for item, _ in seen if item[0] == "setup"]
    assert setup and setup[0][1] == 1 and all(d <= n for _, d, n in setup)
    on_item(("setup", 3, 10))
    assert "3/10 patches read" in w.status.value and "0.3-minute budget" in w.status.value
    assert w.result.path == tmp_path / "models" / "cells-finetuned.pth" and w.result.path.is_file()
    # which model the file holds, why, and the mode the noise called for (issue 37)
    r = w.result
    on_item(("done", r))
    assert r.steps >= 1, (r.steps, r.setup_s, r.elapsed)
    assert r.kept in ("source", "fine-tuned", "source weights") and f"mode {r.pairs}: " in w.status.value
    assert ("kept the fine-tuned model" in w.status.value) == (r.kept == "fine-tuned")
    assert ("kept the source model's weights" in w.status.value) == (r.kept == "source weights")
    assert "cells (fine-tune preview)" in viewer.layers
    assert viewer.layers["cells (fine-tune preview)"].data.shape == (96, 96)
    assert len(w.plot.train) == w.result.steps
    qtbot.waitUntil(lambda: w.start.enabled, timeout=10_000)
    assert any(v == str(w.result.path) for _, v in weights_choices("denoise"))
    out = restore(noisy, "denoise", weights=str(w.result.path), axes="ZYX", device="cpu")
    assert out.shape == noisy.shape
    # the next run gets a free name; a name that is taken is refused and the model kept
    assert w.model_name.value == "cells-finetuned-2"
    kept = w.result.path.read_bytes()
    w.model_name.value = "cells-finetuned"
    w.start.clicked()
    assert "exists" in w.status.value and w.start.enabled and w.result.path.read_bytes() == kept


@pytest.mark.gui
def test_widget_cancel_keeps_the_best_model(make_napari_viewer, qtbot, tmp_path, monkeypatch, gray_identity):
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    from napari_mirnet.widgets import FinetuneWidget

    _, noisy = toy(n=2, size=64)
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    w = FinetuneWidget(viewer)
    w.weights.choices = [("start", gray_identity)]
    w.weights.value = gray_identity
    w.minutes.value = 30
    w.start.clicked()
    qtbot.waitUntil(lambda: len(w.plot.train) >= 1, timeout=60_000)
    t = time.perf_counter()
    w.cancel.clicked()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    assert w.result.stopped and w.result.path.is_file() and time.perf_counter() - t < 30
    assert "cancelled" in w.status.value


_WIDGET_RUN = """
import sys
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_mirnet.widgets import FinetuneWidget

viewer = napari.Viewer(show=True)  # shown: Qt's OpenGL (Mesa's llvmpipe under Xvfb) is loaded
viewer.add_image(np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8), name="img")
w = FinetuneWidget(viewer)
viewer.window.add_dock_widget(w)
w.weights.choices = [("start", sys.argv[1])]
w.weights.value = sys.argv[1]
w.minutes.value = 0.3  # 18 s of wall time: set-up took 7 s on a loaded 2-core machine
w.start.clicked()
while w.result is None and w.error is None or not w.start.enabled:
    QApplication.processEvents()
    w.native.thread().msleep(20)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "triton" or m.startswith("torch._dynamo"))
print("result:", w.result, "error:", repr(w.error), "compiler modules in napari's process:", loaded)
viewer.close()
sys.exit(1 if loaded or w.error is not None or w.result.steps < 1 else 0)
"""


@pytest.mark.gui
@pytest.mark.slow
def test_widget_finetune_keeps_the_compiler_stack_out_of_napari(tmp_path, gray_identity):
    """The issue's reproduction, as napari runs it: a shown viewer, the widget docked on a 96x128 uint8
    layer, 0.3 minutes, Fine-tune. Creating the optimiser imports torch._dynamo; with the CUDA build
    that loads triton's LLVM, which crashed this process (Mesa's LLVM loaded by Qt's OpenGL)."""
    import os
    import subprocess
    import sys

    from conftest import SAFETY_S

    env = {**os.environ, "NAPARI_MIRNET_MODELS": str(tmp_path / "models")}
    proc = subprocess.run(
        [sys.executable, "-c", _WIDGET_RUN, gray_identity], capture_output=True, text=True, timeout=SAFETY_S, env=env
    )
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "models" / "img-finetuned.pth").is_file()


@pytest.mark.gui
def test_widget_reports_the_training_process_error(make_napari_viewer, qtbot, tmp_path, monkeypatch, gray_identity):
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    from conftest import SAFETY_MS

    from napari_mirnet.widgets import FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((20, 20)).astype(np.float32), name="tiny")
    w = FinetuneWidget(viewer)
    w.weights.choices = [("start", gray_identity)]
    w.weights.value = gray_identity
    w.start.clicked()
    qtbot.waitUntil(lambda: w.start.enabled, timeout=SAFETY_MS)
    assert isinstance(w.error, ValueError) and "too small" in str(w.error) and "too small" in w.status.value
    assert w.result is None and not w.is_running()


def test_training_process_errors_reach_the_widget_readably():
    from napari_mirnet.widgets.finetune_process import FinetuneProcess, _sendable

    class LocalError(Exception):  # a class the parent cannot import: its instances cannot travel
        pass

    sent = _sendable(LocalError("out='a.pth' exists"))
    assert type(sent) is RuntimeError and str(sent) == "LocalError: out='a.pth' exists"
    plain = ValueError("too small")
    assert _sendable(plain) is plain
    with pytest.raises(TypeError, match="cannot be handed to the training process.*save the layer"):
        FinetuneProcess({"data": (i for i in range(3)), "out": "x.pth", "weights": "w", "kwargs": {}})


# ------------------------------------------------------------------- issue 30: decisions made twice
@pytest.fixture
def sent_jobs(monkeypatch):
    """The jobs the fine-tune widget hands to its training process (none is started)."""
    import napari_mirnet.widgets.finetune as fw

    jobs = []

    def capture(job):
        jobs.append(job)
        raise TypeError("captured")  # the widget reports it and starts nothing

    monkeypatch.setattr(fw, "FinetuneProcess", capture)
    return jobs


@pytest.mark.gui
def test_preview_is_the_displayed_slice_of_a_scaled_and_translated_layer(
    make_napari_viewer, tmp_path, monkeypatch, sent_jobs
):
    """The viewer's step is not the layer's data index: world z = 10 is plane (10 - 4) / 2 = 3."""
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    from napari_mirnet.widgets import FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 32, 32), np.float32), name="reference")  # world z 0..15, step 1
    planes = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 32, 32)).copy()
    layer = viewer.add_image(planes, name="cells", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    viewer.dims.set_point(0, 10.0)
    w = FinetuneWidget(viewer)
    w.layer.value = layer
    w.start.clicked()
    assert len(sent_jobs) == 1, w.status.value
    _, plane = sent_jobs[0]["preview"]
    assert plane.shape == (32, 32) and np.all(plane == 3), np.unique(plane)


@pytest.mark.gui
def test_a_channel_axis_is_not_taken_for_z(make_napari_viewer, tmp_path, monkeypatch, sent_jobs):
    """The fine-tune widget reads a layer's axes as the task widgets do (its labels), not from its shape."""
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    from napari_mirnet.widgets import FinetuneWidget, layer_axes

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((2, 32, 32), np.float32), name="two channels", axis_labels=("c", "y", "x"))
    w = FinetuneWidget(viewer)
    w.layer.value = layer
    w.start.clicked()
    assert len(sent_jobs) == 1, w.status.value
    assert sent_jobs[0]["kwargs"]["axes"] == layer_axes(layer) == "CYX"


@pytest.mark.gui
def test_both_widgets_offer_the_same_fine_tuned_models_and_never_a_resume_file(
    make_napari_viewer, tmp_path, monkeypatch
):
    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(models))
    models.mkdir()
    for name in ("a.pth", "a.pth.state.pth", "b.pth.STATE.pth", "notes.txt"):
        (models / name).write_bytes(b"x")
    (models / "folder.pth").mkdir()  # a folder named like a model is not one
    from napari_mirnet.widgets import DenoiseWidget, FinetuneWidget

    viewer = make_napari_viewer()
    denoise = [v for v in DenoiseWidget(viewer).weights.choices if str(models) in str(v)]
    finetune = [v for v in FinetuneWidget(viewer).weights.choices if str(models) in str(v)]
    assert denoise == finetune == [str(models / "a.pth")]


_NO_QT = """
import sys
import napari_mirnet.widgets.finetune_process, napari_mirnet.widgets.layers, napari_mirnet.widgets.choices
import napari_mirnet.widgets.job
gui = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy"}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in gui)
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_the_training_process_and_the_layer_helpers_import_no_qt():
    """The fine-tuning child must load no Qt (its OpenGL is what the process exists to avoid); the napari
    writer uses the layer helpers."""
    import subprocess
    import sys

    from conftest import SAFETY_S

    proc = subprocess.run([sys.executable, "-c", _NO_QT], capture_output=True, text=True, timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
