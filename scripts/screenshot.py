"""Screenshot of napari with the Denoise widget docked and a result layer: docs/screenshot.png.

Run with a display, e.g. ``xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot.py``.
Uses the shipped denoiser when there is one; otherwise a tiny random model (the point is the GUI).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--size", type=int, default=192, help="crop of the sample image, in pixels")
    args = parser.parse_args()

    import warnings

    import napari
    import torch

    # a deprecation toast over the canvas says nothing about this plugin
    warnings.filterwarnings("ignore", message=".*PyQt5.*")
    warnings.filterwarnings("ignore", message=".*theme detection.*")

    from napari_mirnet import MIRNetV2
    from napari_mirnet.sample_data import noisy_astronaut
    from napari_mirnet.weights import shipped_models
    from napari_mirnet.widgets import LOCAL_FILE, DenoiseWidget

    viewer = napari.Viewer(title="napari-mirnet")
    viewer.window.resize(1400, 800)
    data, kwargs = noisy_astronaut()[0]
    viewer.add_image(data[: args.size, 140 : 140 + args.size], **kwargs)
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MIRNet: Denoise", area="right")
    if "small-denoise-rgb" in shipped_models():
        widget.weights.value = "small-denoise-rgb"
    else:
        # an untrained random net paints noise; with conv_out zeroed it is an exact identity
        torch.manual_seed(0)
        model = MIRNetV2(n_feat=16, n_mrb=1)
        torch.nn.init.zeros_(model.conv_out.weight)
        path = Path(tempfile.mkdtemp()) / "identity.pth"
        torch.save({"params": model.state_dict()}, path)
        widget.weights.value = LOCAL_FILE
        widget.weights_file.value = path
        print("no shipped denoiser yet: using a tiny identity model (the result equals the input)")
    layer = widget.run_blocking()
    if layer is None:
        raise SystemExit(f"the run failed: {widget.last_status}")
    from qtpy.QtWidgets import QApplication

    viewer.grid.enabled = True  # input and result side by side
    for _ in range(20):  # let the dock and canvas settle before fitting the view
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.reset_view()
    _close_toasts(viewer)
    QApplication.processEvents()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out} ({layer.name}, {layer.data.shape})")
    viewer.close()


def _close_toasts(viewer) -> None:
    """Close notification pop-ups (napari's own start-up warnings) that would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


if __name__ == "__main__":
    main()
