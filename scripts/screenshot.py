"""Screenshots of each widget, docked in a default-size napari window, in the middle of a run.

Writes ``docs/screenshots/<task>.png`` (and the Denoise one to ``docs/screenshot.png`` for the README)
and prints each dock's width. Run with a display, e.g.
``xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot.py``.
Uses the shipped model for a task when there is one, else a tiny identity model (the point is the GUI;
the official weights are not downloaded).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

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
