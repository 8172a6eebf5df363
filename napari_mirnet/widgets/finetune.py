"""The napari widget that adapts a denoiser to the selected layer (self-supervised fine-tuning).

Training runs in a process of its own (:mod:`napari_mirnet.widgets.finetune_process` says why:
torch's compiler stack crashes a process whose OpenGL runs on Mesa's llvmpipe), read by a
:class:`~napari_mirnet.widgets.worker.BackgroundRun` that hands progress, validation losses and
previews to the GUI thread. Cancel stops the run after its current step; the model file then holds
the best model so far. Models are saved in :func:`napari_mirnet.widgets.choices.models_dir`, where
the Denoise widget finds them; an existing model is never replaced.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, create_widget

from ..progress import Progress
from .choices import denoise_start_choices, models_dir
from .finetune_process import FinetuneProcess
from .layers import InputError, displayed_index, layer_axes, level0
from .loss_plot import LossPlot
from .worker import BackgroundRun, Relay

if TYPE_CHECKING:
    import napari

__all__ = ["FinetuneWidget"]

PREVIEW_EDGE = 256  # the preview covers the middle of the displayed slice, at most this big


class FinetuneWidget(Container):
    """Adapt a denoiser to the selected image layer, off the GUI thread."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = create_widget(annotation="napari.layers.Image", label="noisy layer")
        choices = denoise_start_choices()
        self.weights = ComboBox(
            label="start from",
            choices=choices,
            value="small-denoise-gray" if any(v == "small-denoise-gray" for _, v in choices) else None,
        )
        self.minutes = FloatSpinBox(label="minutes", value=10.0, min=0.1, max=24 * 60, step=1.0)
        self.model_name = LineEdit(label="model name", value="")
        self.start = PushButton(text="Fine-tune")
        self.cancel = PushButton(text="Cancel (keep the best so far)", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = Label(label="", value="Adapts the model to this layer's noise; no clean image needed.")
        self.status.native.setWordWrap(True)
        self.plot = LossPlot()
        self.extend(
            [
                self.layer,
                self.weights,
                self.minutes,
                self.model_name,
                self.start,
                self.cancel,
                self.progress,
                self.status,
            ]
        )
        self.native.layout().addWidget(self.plot)
        self.start.changed.connect(self._start)
        self.cancel.changed.connect(self._request_cancel)
        self.layer.changed.connect(self._default_name)
        self._default_name()
        self._cancelled = False
        self._run: BackgroundRun | None = None
        self._process: FinetuneProcess | None = None
        self._relay = Relay()
        self._relay.reported.connect(self._on_report)
        self.result = None  # the FinetuneResult of the last finished run
        self.error: BaseException | None = None
        # the widget closing stops the run after its step, which keeps its best model (the child also
        # stops by itself when napari exits); the list, not self, because Qt may signal this after the
        # Python object's attributes are gone
        running: list[FinetuneProcess] = []
        self._running = running
        self.native.destroyed.connect(lambda *_: [p.cancel() for p in running])

    # ------------------------------------------------------------------------------------- helpers
    def _default_name(self, *_) -> None:
        """``<layer>-finetuned``, numbered when a model of that name exists already."""
        layer = self.layer.value
        if layer is not None:
            base = re.sub(r"[^\w.-]+", "_", f"{layer.name}-finetuned")
            name, n = base, 1
            while self._path_for(name).exists():
                n += 1
                name = f"{base}-{n}"
            self.model_name.value = name

    @staticmethod
    def _path_for(name: str):
        name = re.sub(r"[^\w.-]+", "_", name.strip()) or "finetuned"
        return models_dir() / f"{name.removesuffix('.pth')}.pth"

    def output_path(self):
        return self._path_for(self.model_name.value)

    def _displayed_plane(self, layer) -> tuple[np.ndarray, tuple[int, int], tuple[int, ...]]:
        """The middle (at most PREVIEW_EDGE square) of the slice the viewer shows: the crop, its (y, x)
        offset and the data index of the slice (the layer's own world-to-data transform)."""
        data = level0(layer)
        index = displayed_index(layer, self.viewer)
        lead = len(index)
        h, w = data.shape[lead], data.shape[lead + 1]
        e_h, e_w = min(h, PREVIEW_EDGE), min(w, PREVIEW_EDGE)
        y0, x0 = (h - e_h) // 2, (w - e_w) // 2
        plane = data[tuple(index) + (slice(y0, y0 + e_h), slice(x0, x0 + e_w))]
        return np.asarray(plane.compute() if hasattr(plane, "compute") else plane), (y0, x0), tuple(index)

    # ------------------------------------------------------------------------------------- run
    def _start(self, *_) -> None:
        layer = self.layer.value
        if layer is None:
            self.status.value = "Select an image layer first."
            return
        out = self.output_path()
        if out.exists():
            self.status.value = f"A model named {out.name} exists in {out.parent}; choose another model name."
            return
        try:
            axes = layer_axes(layer)  # what the layer says its dims are, as the task widgets read them
        except InputError as err:
            self.status.value = f"error: {err}"
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        from ..processing import IntensityMap

        data = level0(layer)  # a multiscale layer: train on full resolution
        plane, offset, index = self._displayed_plane(layer)
        imap = IntensityMap.for_image(data)
        job = {
            "data": data, "out": out, "weights": self.weights.value, "preview": (imap, plane),
            "kwargs": {"minutes": float(self.minutes.value), "axes": axes},
        }  # fmt: skip
        try:
            self._process = process = FinetuneProcess(job)
        except TypeError as err:
            self.status.value = f"error: {err}"
            return
        self._running[:] = [process]
        self._preview_input = (imap, plane, offset, index, layer)
        self._cancelled = False
        self.plot.clear()
        self.result, self.error = None, None
        self.start.enabled, self.cancel.enabled = False, True
        self.status.value = "Starting, reading patches and measuring the noise..."
        self._run = BackgroundRun(
            _reader(process),
            self._relay,
            on_finished=self._on_finished,
            on_cancel=self._cancelling,
            title="MIRNet: fine-tuning",
        )
        self._run.start()

    def _request_cancel(self, *_) -> None:
        if self._run is not None:
            self._run.cancel()  # which calls _cancelling (as napari's activity dock's cancel button does)
        else:
            self._cancelling()

    def _cancelling(self) -> None:
        self._cancelled = True
        if self._process is not None:
            self._process.cancel()
        self.cancel.enabled = False
        self.status.value = "Stopping after this step; the best model so far is kept..."

    def _on_report(self, p: Progress) -> None:
        self._on_item(p.detail)

    def _on_item(self, item) -> None:
        kind = item[0]
        if kind == "setup":
            _, done, total = item
            if not self._cancelled:
                self.status.value = (
                    f"Reading patches and measuring the noise: {done}/{total} patches read "
                    f"(part of the {self.minutes.value:g}-minute budget)..."
                )
        elif kind == "step":
            _, step, loss, frac = item
            self.progress.value = int(1000 * frac)
            self.plot.add_train(step, loss)
            if not self._cancelled:
                self.status.value = f"step {step}, loss {loss:.3g}"
        elif kind == "val":
            _, step, v, best_step, best_val = item
            self.plot.add_val(step, v, (best_step, best_val) if best_step else None)
        elif kind == "preview":
            self._show_preview(item[1])
        elif kind == "note":
            self.status.value = item[1]
        elif kind == "done":
            self.result = item[1]
            r = self.result
            how = "cancelled" if r.stopped else "finished"
            self.status.value = (
                f"{how} after {r.steps} steps: {r.summary()} Saved {r.path}; pick it in the Denoise widget's weights."
            )
        elif kind == "error":
            self.error = item[1]
            self.status.value = f"error: {item[1]}"

    def _show_preview(self, image: np.ndarray) -> None:
        imap, plane, (y0, x0), index, layer = self._preview_input
        name = f"{layer.name} (fine-tune preview)"
        translate = list(layer.translate)
        scale = list(layer.scale)
        # put the crop where it lies in the layer's Y and X (napari's scale/translate leave out RGB)
        t2 = [translate[-2] + y0 * scale[-2], translate[-1] + x0 * scale[-1]]
        if name in self.viewer.layers:
            self.viewer.layers[name].data = image
        else:
            lim = layer.contrast_limits if not getattr(layer, "rgb", False) else None
            kw = {"contrast_limits": lim} if lim is not None else {}
            self.viewer.add_image(
                image, name=name, translate=t2, scale=scale[-2:], rgb=getattr(layer, "rgb", False), **kw
            )

    def _on_finished(self) -> None:
        self.start.enabled, self.cancel.enabled = True, False
        self._running.clear()
        if self.result is not None:
            self.progress.value = 1000
            self._default_name()  # the next run's name, so that it cannot replace this model

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_alive()


def _reader(process: FinetuneProcess):
    """The run's body: the child's messages as :class:`~napari_mirnet.progress.Progress` reports
    (``detail``: the message; the run's share of its budget in %)."""

    def body(report, cancel) -> None:
        percent = 0
        for item in process.messages():
            if item[0] == "setup":
                report(Progress("finetune", "setup", item[1], item[2], "patch", item))
                continue
            if item[0] == "step":
                percent = round(100 * item[3])
            report(Progress("finetune", "run", percent, 100, "%", item))

    return body
