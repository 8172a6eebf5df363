"""Screenshots of each widget, docked in a default-size napari window, in the middle of a run.

Writes ``docs/screenshots/<task>.png`` (and the Denoise one to ``docs/screenshot.png`` for the README)
and prints each dock's width. Run with a display, e.g.
``xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot.py``.
Uses the shipped model for a task when there is one, else a tiny identity model (the point is the GUI;
the official weights are not downloaded).
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: widget class name, sample key, shipped model (if any), extra settings
SHOTS = [
    ("DenoiseWidget", "noisy_image", "small-denoise-rgb", {}),
    ("SuperResolutionWidget", "lowres_image", "small-sr-x2", {"scale": 2}),
    ("LowLightWidget", "lowlight_image", "small-lowlight", {}),
    ("EnhanceWidget", "low_contrast_image", None, {}),
    ("DefocusWidget", "dual_pixel_views", None, {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 800), help="window width and height")
    parser.add_argument("--tile", type=int, default=64, help="small tiles, so that a run has many")
    parser.add_argument(
        "--first-contact-only",
        action="store_true",
        help="only the issue-31 shots: 0/N after planning, six docks, a download error, a result opened in napari",
    )
    args = parser.parse_args()
    if args.first_contact_only:
        first_contact(Path(args.out))
        return

    import napari

    from napari_mirnet import widgets
    from napari_mirnet.weights import shipped_models

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shipped = set(shipped_models())
    for cls_name, sample, model, settings in SHOTS:
        viewer = napari.Viewer(title="napari-mirnet")
        viewer.window._qt_window.resize(*args.size)
        viewer.open_sample("napari-mirnet", sample)
        w = getattr(widgets, cls_name)(viewer)
        dock = viewer.window.add_dock_widget(w, name=f"MIRNet: {w.preset.title}", area="right")
        for key, value in settings.items():
            getattr(w, key).value = value
        if model in shipped:
            w.weights.value = model
        else:  # no shipped model for this task: keep 'auto' on screen, run a local identity model
            w.weights.value = widgets.LOCAL_FILE
            w.weights_file.value = _identity_model(dual=cls_name == "DefocusWidget")
        w.tile.value = args.tile
        path = out / f"{w.task}.png"
        _shoot_while_running(viewer, w, path)
        print(f"{cls_name}: dock {dock.width()} px, window {viewer.window._qt_window.width()} px -> {path}")
        viewer.close()
    shutil.copyfile(out / "denoise.png", ROOT / "docs" / "screenshot.png")
    first_contact(out)


def first_contact(out: Path) -> None:
    """What a new user meets first (issue 31), each in napari's default window: a run showing 0/N as
    soon as its tiles are planned, all six docks open, an official-weights download that fails
    (no network), and a restored store opened with ``napari out.zarr --plugin napari-mirnet``."""
    out.mkdir(parents=True, exist_ok=True)
    for shot in (_shot_planned, _shot_all_docks, _shot_weights_error, _shot_opened_store):
        path = out / f"{shot.__name__[len('_shot_') :]}.png"
        shot(path)
        print(f"{shot.__name__}: -> {path}")


def _wait(until, seconds: float = 600) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while not until():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting")


def _save(viewer, path: Path, close: bool = True) -> None:
    from qtpy.QtWidgets import QApplication

    _close_toasts(viewer)
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    if close:
        viewer.close()


def _shot_planned(path: Path) -> None:
    """The bar right after planning: 0/N tiles, before the first tile is finished."""
    import napari

    viewer = napari.Viewer(title="napari-mirnet")
    viewer.open_sample("napari-mirnet", "noisy_image")
    _, w = viewer.window.add_plugin_dock_widget("napari-mirnet", "Denoise")
    w.weights.value = "small-denoise-rgb"
    w.tile.value = 256  # a few long tiles: the time spent on the first is what the bar shows
    reports = []
    w._relay.progressed.connect(lambda done, total: reports.append(done))
    w()
    _wait(lambda: reports or w.worker is None)
    # a few seconds into the first tile, so that the bar's clock shows (closing the viewer cancels the run)
    _wait(lambda: re.search(r"\b[2-9] s on the current tile", w.progress_bar.native.format()) or w.worker is None)
    if w.worker is None or reports[-1] != 0:
        raise SystemExit(f"the run did not stop at 0/N long enough to be seen: {w.last_status}")
    viewer.reset_view()
    _save(viewer, path, close=False)
    w.cancel()  # and wait: a viewer closed under a running forward pass can crash the process at exit
    _wait(lambda: w.worker is None)
    viewer.close()


def _shot_all_docks(path: Path) -> None:
    """Every dock of the plugin, opened from the Plugins menu, in napari's default window."""
    import napari

    viewer = napari.Viewer(title="napari-mirnet")
    viewer.open_sample("napari-mirnet", "noisy_image")
    names = ["Denoise", "Super-resolution", "Low-light enhancement", "Contrast enhancement"]
    for name in [*names, "Dual-pixel defocus deblur", "Fine-tune denoiser (self-supervised)"]:
        viewer.window.add_plugin_dock_widget("napari-mirnet", name)
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
    main = viewer.window._qt_window
    print(f"  window {main.width()} x {main.height()}, canvas {viewer.window._qt_viewer.canvas.native.height()} px")
    _save(viewer, path)


def _shot_weights_error(path: Path) -> None:
    """Official weights without a network: one short line, the action first."""
    import os

    import napari

    os.environ["NAPARI_MIRNET_BASE_URL"] = "https://mirnet-weights.invalid/releases"  # cannot resolve
    os.environ["NAPARI_MIRNET_CACHE"] = tempfile.mkdtemp()  # nothing cached: it must download
    try:
        viewer = napari.Viewer(title="napari-mirnet")
        viewer.open_sample("napari-mirnet", "noisy_image")
        _, w = viewer.window.add_plugin_dock_widget("napari-mirnet", "Denoise")
        w.weights.value = "real_denoising"
        w()
        _wait(lambda: w.worker is None)
        print(f"  status: {w.last_status}")
        _save(viewer, path)
    finally:
        del os.environ["NAPARI_MIRNET_BASE_URL"], os.environ["NAPARI_MIRNET_CACHE"]


def _shot_opened_store(path: Path) -> None:
    """A x2 result written by the CLI, opened as `napari out.zarr --plugin napari-mirnet` opens it."""
    import napari

    from napari_mirnet.cli import main

    folder = Path(tempfile.mkdtemp())
    low = folder / "chelsea.png"
    assert main(["sample", "lowres", str(low)]) == 0
    store = folder / "chelsea_x2.zarr"
    args = ["restore", str(low), "-o", str(store), "--task", "super_resolution", "--weights", "small-sr-x2", "-q"]
    assert main(args) == 0
    viewer = napari.Viewer(title="napari-mirnet")
    viewer.open(str(low), plugin="napari")  # the input, for comparison
    viewer.window._qt_viewer._qt_open([str(store)], stack=False, plugin="napari-mirnet")
    viewer.grid.enabled = True
    viewer.reset_view()
    for layer in viewer.layers:
        print(f"  {layer.name}: rgb={layer.rgb}, scale={tuple(layer.scale)}, translate={tuple(layer.translate)}")
    _save(viewer, path)


def _shoot_while_running(viewer, w, path: Path) -> None:
    """Start a run, wait until its progress bar has a time estimate, save the window, cancel."""
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    if w() is None:
        raise SystemExit(f"{type(w).__name__} did not start: {w.last_status}")
    deadline = time.monotonic() + 600
    while w.worker is not None and "left" not in w.progress_bar.native.format():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise SystemExit(f"{type(w).__name__}: no progress within 10 min ({w.last_status})")
    _close_toasts(viewer)
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    w.cancel()
    while w.worker is not None:
        QApplication.processEvents()
        time.sleep(0.01)


def _identity_model(dual: bool) -> str:
    """A tiny MIRNet-v2 whose output equals its input (conv_out zeroed)."""
    import torch

    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    torch.manual_seed(0)
    dual_kw = dict(in_channels=6, dual_pixel=True) if dual else {}
    model = MIRNetV2(MIRNetConfig(n_feat=16, n_mrb=1, **dual_kw))
    torch.nn.init.zeros_(model.conv_out.weight)
    path = Path(tempfile.mkdtemp()) / ("identity_dual.pth" if dual else "identity.pth")
    torch.save({"params": model.state_dict()}, path)
    return str(path)


def _close_toasts(viewer) -> None:
    """Close notification pop-ups (napari's own start-up warnings, our licence note) over the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


if __name__ == "__main__":
    main()
