"""The napari widget that adapts a denoiser to the selected layer (self-supervised fine-tuning).

Training runs in a process of its own (:mod:`napari_mirnet.finetune_worker` says why: torch's
compiler stack crashes a process whose OpenGL runs on Mesa's llvmpipe), read by a napari
``thread_worker`` generator that hands progress, validation losses and previews to the GUI thread.
Cancel stops the run after its current step; the model file then holds the best model so far.
Models are saved in :func:`napari_mirnet.finetune.models_dir`, where the Denoise widget finds them;
an existing model is never replaced.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, create_widget
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from .finetune import models_dir
from .finetune_worker import FinetuneProcess

if TYPE_CHECKING:
    import napari

__all__ = ["FinetuneWidget", "LossPlot"]

PREVIEW_EDGE = 256  # the preview covers the middle of the displayed slice, at most this big


class LossPlot(QWidget):
    """A small log-scale plot of the training loss (gray, smoothed) and the validation loss (blue)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.best: tuple[int, float] | None = None
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.train, self.val, self.best = [], [], None
        self.update()

    def add_train(self, step: int, loss: float) -> None:
        if loss > 0 and math.isfinite(loss):
            self.train.append((step, loss))
            self.update()

    def add_val(self, step: int, loss: float, best: tuple[int, float] | None) -> None:
        if loss > 0 and math.isfinite(loss):
            self.val.append((step, loss))
        self.best = best
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 34))
        pts = self.train + self.val
        if len(pts) < 2:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss (log scale) appears here")
            return
        smooth = _smooth(self.train)
        ys = [math.log10(v) for _, v in smooth + self.val]
        x1 = max(s for s, _ in pts) or 1
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-3
        w, h, m = self.width(), self.height(), 6

        def at(s, v):
            return QPointF(m + (w - 2 * m) * s / x1, m + (h - 2 * m) * (hi - math.log10(v)) / (hi - lo))

        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor(170, 170, 170), 1))
        p.drawPolyline(QPolygonF([at(s, v) for s, v in smooth]))
        p.setPen(QPen(QColor(80, 160, 255), 2))
        if len(self.val) > 1:
            p.drawPolyline(QPolygonF([at(s, v) for s, v in self.val]))
        if self.best is not None:
            p.setBrush(QColor(255, 200, 60))
            p.drawEllipse(at(*self.best), 3.5, 3.5)
        p.setPen(QColor(200, 200, 200))
        p.drawText(m, h - m, "train (gray), validation (blue), best (dot)")


def _smooth(curve: list[tuple[int, float]], n: int = 200) -> list[tuple[int, float]]:
    if len(curve) <= 3:
        return curve
    k = max(1, len(curve) // n)
    out = []
    for i in range(0, len(curve), k):
        part = curve[max(0, i - 4 * k) : i + k]
        out.append((curve[min(i + k, len(curve)) - 1][0], float(np.mean([v for _, v in part]))))
    return out


def _axes_for(layer) -> str:
    nd = layer.data.ndim
    if getattr(layer, "rgb", False):
        return "YXC" if nd == 3 else "ZYXC"[-nd:]
    return {2: "YX", 3: "ZYX", 4: "TZYX"}.get(nd, "TZYX")


def _denoise_weights() -> list[tuple[str, str]]:
    from .weights import available_weights

    choices = [
        (f"{i.name} (shipped)", i.name) for i in available_weights() if i.kind == "shipped" and i.task == "denoise"
    ]
    folder = models_dir()
    if folder.is_dir():
        # earlier versions saved a run's resumable state (<name>.pth.state.pth) beside its model: not a model
        models = [p for p in sorted(folder.glob("*.pth")) if not p.name.endswith(".state.pth")]
        choices += [(f"{p.stem} (fine-tuned)", str(p)) for p in models]
    return choices


class FinetuneWidget(Container):
    """Adapt a denoiser to the selected image layer, off the GUI thread."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = create_widget(annotation="napari.layers.Image", label="noisy layer")
        choices = _denoise_weights()
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
        self._worker = None
        self._process: FinetuneProcess | None = None
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
        """The middle (at most PREVIEW_EDGE square) of the slice the viewer shows: the crop, its (y, x) offset
        and the index of the slice."""
        data = layer.data
        axes = _axes_for(layer)
        lead = len(axes.replace("C", "")) - 2
        step = self.viewer.dims.current_step
        ndim_v = self.viewer.dims.ndim
        index = []
        for i in range(lead):
            d = ndim_v - layer.ndim + i  # layer axes are the viewer's last ones
            v = int(step[d]) if 0 <= d < len(step) else 0
            index.append(min(max(v, 0), data.shape[i] - 1))
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
        out.parent.mkdir(parents=True, exist_ok=True)
        from .processing import IntensityMap

        data, axes = layer.data, _axes_for(layer)
        if isinstance(data, (list, tuple)):  # a multiscale layer: train on full resolution
            data = data[0]
        plane, offset, index = self._displayed_plane(layer)
        imap = IntensityMap.for_image(data)
        job = {
            "data": data, "out": out, "weights": self.weights.value, "preview": (imap, plane),
            "kwargs": {"minutes": float(self.minutes.value), "axes": axes},
        }  # fmt: skip
        try:
            self._process = FinetuneProcess(job)
        except TypeError as err:
            self.status.value = f"error: {err}"
            return
        self._running[:] = [self._process]
        self._preview_input = (imap, plane, offset, index, layer)
        self._cancelled = False
        self.plot.clear()
        self.result, self.error = None, None
        self.start.enabled, self.cancel.enabled = False, True
        self.status.value = "Starting, reading patches and measuring the noise..."
        from napari.qt.threading import thread_worker

        self._worker = thread_worker(self._process.messages, start_thread=False)()
        self._worker.yielded.connect(self._on_item)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _request_cancel(self, *_) -> None:
        self._cancelled = True
        if self._process is not None:
            self._process.cancel()
        self.cancel.enabled = False
        self.status.value = "Stopping after this step; the best model so far is kept..."

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
                f"{how} after {r.steps} steps; best at step {r.best_step} (validation loss "
                f"{r.source_val:.3g} -> {r.best_val:.3g}). Saved {r.path}; pick it in the "
                "Denoise widget's weights."
            )
            if getattr(r, "unchanged", ""):
                self.status.value = f"{how}: {r.unchanged}. Saved {r.path}."
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
