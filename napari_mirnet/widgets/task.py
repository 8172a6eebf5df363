"""The five task widgets: a :class:`TaskWidget` gathers a job from its form, runs it and adds the result.

The run goes off the GUI thread (:class:`~napari_mirnet.widgets.worker.BackgroundRun`); its tiles
show in the widget's bar (with the time left) and in napari's activity dock; the result becomes a
layer placed like the input. See :mod:`napari_mirnet.widgets` for driving one from a script.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .choices import AUTO_WEIGHTS, LOCAL_FILE, auto_weights, official_to_download
from .job import (
    OUTPUT_LAZY,
    OUTPUT_NOW,
    OUTPUT_ZARR,
    PYRAMID_ABOVE,
    Job,
    check_fits_in_memory,
    check_not_input,
    job_urls,
    lazy_pyramid,
    parse_nodata,
    parse_storage_options,
    work,
    zarr_output,
)
from .layers import (
    InputError,
    add_qc_layers,
    check_image_layer,
    displayed_slice,
    layer_axes,
    layer_meta,
    left_right_pair,
    level0,
    result_layer_kwargs,
)
from .task_form import TaskForm
from .worker import BackgroundRun, Relay, progress_text

if TYPE_CHECKING:
    import napari

__all__ = [
    "DefocusWidget",
    "DenoiseWidget",
    "EnhanceWidget",
    "LowLightWidget",
    "SuperResolutionWidget",
    "TaskWidget",
]

#: Bar steps per tile: the bar moves within a long tile by time (see TaskWidget._tick).
_STEPS = 100


class TaskWidget(TaskForm):
    """A task widget: the form, and a run of the library off the GUI thread."""

    def __init__(self, viewer: napari.viewer.Viewer = None):
        super().__init__(viewer)
        self.worker = None
        self.result_layer = None
        self.last_progress = (0, 0)  # (tiles done, total) of the latest run
        self._run = None  # the BackgroundRun going on (or last)
        self._cancel = None
        self._first_tile = None  # (time, tiles done) of the run's first progress report: the ETA's origin
        self._started = 0.0
        self._relay = Relay()
        self._relay.progressed.connect(self._on_progress)
        self._last_report = 0.0  # when the latest progress report came
        from qtpy.QtCore import QTimer

        self._ticker = QTimer(self.native)  # the bar's clock within a tile; dies with the widget
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self._tick)
        self.run_button.changed.connect(lambda: self())
        self.cancel_button.changed.connect(self.cancel)
        self.native.destroyed.connect(self._on_destroyed)

    # -- building a job (GUI thread)
    def _weights_value(self) -> str | None:
        value = self.weights.value
        if value == AUTO_WEIGHTS:
            return None
        if value == LOCAL_FILE:
            path = Path(self.weights_file.value or "")
            if not str(self.weights_file.value or "").strip() or not path.is_file():
                raise InputError(f"choose an existing weights file (got {str(path)!r})")
            return str(path)
        return value

    def _options(self, dtype) -> dict:
        return dict(
            tile=self.tile.value or None,
            halo=None if self.halo.value < 0 else self.halo.value,
            blend=None if self.blend.value < 0 else self.blend.value,
            device=self.device.value,
            precision=self.precision.value,
            normalisation=self.normalisation.value,
            tta=self.tta.value,
            nodata=parse_nodata(self.nodata.value, dtype),
        )

    def _input_layers(self) -> list:
        layers = [getattr(self, attr).value for attr, _ in self.inputs]
        for layer, (_, label) in zip(layers, self.inputs):
            check_image_layer(layer, label)
        return layers

    def _zarr_out(self) -> str | None:
        """The OME-Zarr output's path or URL (None for the other outputs)."""
        return zarr_output(self.zarr_path.value) if self.output.value == OUTPUT_ZARR else None

    def make_job(self) -> Job:
        """Check the choices and gather a :class:`Job`; raises :class:`InputError` with a message."""
        layers = self._input_layers()
        ref = layers[0]
        weights = self._weights_value()
        scale = self._scale_value()
        output = self.output.value
        zarr_path = self._zarr_out()
        check_not_input(zarr_path, layers)
        storage_options = parse_storage_options(self.storage_options.value)
        preview = bool(self.preview.value)
        # as restore(qc=...) takes it: False, True, or "tta" (the check with more model passes)
        qc = ("tta" if self.qc_passes.value else bool(self.qc.value)) if self.task == "denoise" else False
        if qc and output == OUTPUT_LAZY:
            raise InputError("the residual and trust map need the whole result: choose 'new layer' or OME-Zarr output")
        options = self._options(np.dtype(ref.dtype))
        axes = layer_axes(ref)
        arrays, offset = [], None
        for layer in layers:
            data = level0(layer)
            if preview:
                index, offset = displayed_slice(layer, self.viewer)
                data = data[index]
            arrays.append(data)
        pyramid = False
        image = arrays[0] if len(arrays) == 1 else tuple(arrays)
        if output == OUTPUT_LAZY and len(arrays) == 1:
            if ref.multiscale and not preview:
                image, pyramid = list(ref.data), True
            elif max(arrays[0].shape[axes.index("Y")], arrays[0].shape[axes.index("X")]) > PYRAMID_ABOVE:
                image, pyramid = lazy_pyramid(arrays[0], axes), True
        if output == OUTPUT_NOW:
            check_fits_in_memory(arrays[0].shape, np.dtype(ref.dtype), axes, scale or 1)
        if not pyramid and len(arrays) == 1:
            from ..io import ImageSource

            # the engine gets the layer's axes and pixel geometry, never a guess from the shape
            image = ImageSource(image, axes, layer_meta(ref, axes, offset))
        kwargs = result_layer_kwargs(ref, self.task, scale, offset, preview)
        kwargs["metadata"]["mirnet"]["tta"] = bool(self.tta.value)
        if pyramid:
            kwargs["multiscale"] = True
        return Job(
            task=self.task,
            image=image,
            axes=axes,
            output=output,
            weights=weights,
            scale=scale,
            layer_kwargs=kwargs,
            options=options,
            zarr_path=zarr_path,
            overwrite=bool(self.overwrite.value),
            # the zarr's pixel size: the layer's scale, 1 for the RGB channel axis
            pixel_size=tuple(float(v) for v in ref.scale) + ((1.0,) if ref.rgb else ()),
            pyramid=pyramid,
            qc=qc,
            storage_options=storage_options,
            urls=job_urls(layers, zarr_path),
        )

    # -- running
    def __call__(self):
        """Start a run off the GUI thread; returns the napari worker (None if the choices are bad)."""
        if self.worker is not None:
            self._say("a run is already going; cancel it first", "warning")
            return self.worker
        self.result_layer = None
        self.last_progress = (0, 0)
        try:
            job = self.make_job()
        except (InputError, ValueError, TypeError) as err:
            self._say(str(err), "error")
            return None
        chosen = job.weights or auto_weights(self.task, job.scale, job.layer_kwargs["rgb"])
        if chosen in official_to_download():
            from ..weights import OFFICIAL_LICENCE

            self._say(f"downloading the official {chosen!r} weights. {OFFICIAL_LICENCE}", "warning")
        run = BackgroundRun(
            lambda report, cancel: work(job, report, cancel),
            self._relay,
            on_returned=lambda result, job=job: self._on_returned(job, result),
            on_finished=self._on_finished,
            # napari's activity dock shows the run too; its cancel button stops it like ours
            on_cancel=lambda: None if self._closed else self._show_status("cancelling…"),
            title=f"MIRNet: {self.preset.title}",
        )
        self._run = run  # Qt holds its slots weakly: the run lives as long as the widget's reference
        self._cancel = run.cancel_event
        self._first_tile = None
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        # the engine reports progress(0, total) once the model is loaded and the tiles are planned
        self._show_status("loading model and planning…")
        self.progress_bar.native.setRange(0, 0)  # a busy bar until then
        self.progress_bar.visible = True
        self._started = time.perf_counter()
        self.worker = run.start().worker
        self._ticker.start()
        return self.worker

    def run_blocking(self, timeout: float = 600.0):
        """Run and wait for the result, keeping Qt events flowing; returns the new layer or None."""
        from qtpy.QtWidgets import QApplication

        worker = self()
        deadline = time.monotonic() + timeout
        while worker is not None and self.worker is not None and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.005)
        return self.result_layer

    def cancel(self, *_):
        """Ask the run to stop at the next tile boundary; no result layer is added."""
        if self._cancel is not None:
            self._cancel.set()
            self._show_status("cancelling…")

    def _on_destroyed(self, *_) -> None:
        # closing the viewer deletes the dock: stop the run instead of computing a result nobody sees
        self._closed = True
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)
        if self._closed or self.worker is None:
            return
        now = self._last_report = time.perf_counter()
        if self._first_tile is None:  # planning is over (the engine reports 0/N then): tiles from here on
            self._first_tile = (now, done)
            self._show_status("restoring…")
        t0, done0 = self._first_tile
        left = (now - t0) / (done - done0) * (total - done) if done > done0 else None
        bar = self.progress_bar.native
        bar.setRange(0, max(total, 1) * _STEPS)
        bar.setValue(min(done, total) * _STEPS)
        bar.setFormat(progress_text(done, total, left))

    def _tick(self) -> None:
        """Once a second while tiles run, so that a long tile never looks frozen: before any tile is
        finished, the time spent on the first; after, the bar moves on within the tile in hand by the
        tiles' average time (never to its end) and the time left counts down."""
        done, total = self.last_progress
        if self._closed or self.worker is None or self._first_tile is None or not 0 <= done < total:
            return
        now = time.perf_counter()
        (t0, done0), since = self._first_tile, now - self._last_report
        bar = self.progress_bar.native
        if done == done0:
            bar.setFormat(progress_text(done, total, None, running=now - t0))
            return
        per_tile = (self._last_report - t0) / (done - done0)
        bar.setValue(done * _STEPS + int(_STEPS * min(0.95, since / per_tile)))
        bar.setFormat(progress_text(done, total, max(0.0, per_tile * (total - done) - since)))

    def _on_returned(self, job: Job, result) -> None:
        kind, payload = result
        if self._closed:
            return
        if kind == "cancelled" or (self._cancel is not None and self._cancel.is_set()):
            self._say("cancelled; no layer was added", "info")
            return
        if kind == "error":
            text, detail = payload if isinstance(payload, tuple) else (payload, None)
            self._say(text, "error", detail)
            return
        report = None
        if job.qc:
            payload, report = payload
        try:
            self.result_layer = self.viewer.add_image(payload, **job.layer_kwargs)
            if report is not None:
                self.qc_layers = add_qc_layers(self.viewer, report, job.layer_kwargs)
        except Exception as err:  # e.g. the viewer was closed during the run, or napari refused the data
            self._say(f"could not add the result layer: {type(err).__name__}: {err}", "error")
            return
        seconds = time.perf_counter() - self._started
        what = "lazy layer added" if job.output == OUTPUT_LAZY else f"done in {seconds:.1f} s"
        if job.output == OUTPUT_LAZY:
            what += _background_slicing(bool(self.background.value))
        if report is not None:
            what += f"; qc {report.text}"
        self._say(f"{what}: {self.result_layer.name}", "info")

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel = None
        if not self._closed:
            self._ticker.stop()
            self.progress_bar.visible = False
            self.run_button.enabled = True
            self.cancel_button.enabled = False


def _background_slicing(wanted: bool) -> str:
    """Turn on napari's asynchronous slicing if wanted; a note for the status line."""
    from napari.settings import get_settings

    experimental = get_settings().experimental
    if wanted and not experimental.async_:
        experimental.async_ = True
        return " (turned on napari's asynchronous rendering: viewed tiles are computed in the background)"
    if not experimental.async_:
        return " (napari's asynchronous rendering is off: the viewer pauses while a newly viewed region is computed)"
    return ""


class DenoiseWidget(TaskWidget):
    """Remove noise."""

    task = "denoise"


class SuperResolutionWidget(TaskWidget):
    """Upscale x2, x3 or x4; the result's pixel size is divided by the factor."""

    task = "super_resolution"


class LowLightWidget(TaskWidget):
    """Brighten and clean up dark images."""

    task = "lowlight"


class EnhanceWidget(TaskWidget):
    """Contrast and colour enhancement."""

    task = "enhance"


class DefocusWidget(TaskWidget):
    """Dual-pixel defocus deblurring from separate left and right view layers."""

    task = "defocus"
    inputs = (("left", "left"), ("right", "right"))

    def _default_inputs(self, images: list, first) -> dict:
        """A left/right pair by name ('... left', '... right') unless two layers are chosen already;
        else the selected layer and another of the same shape."""
        left, right = self.left.value, self.right.value
        if left is not None and right is not None and left is not right:
            return {}
        pair = left_right_pair(images, prefer=left or first)
        if pair is not None:
            return {"left": pair[0], "right": pair[1]}
        left = left or first
        shape = None if left is None else level0(left).shape
        same = [lay for lay in reversed(images) if lay is not left and level0(lay).shape == shape]
        return {"left": left, "right": same[0] if same else left}

    def _input_layers(self) -> list:
        left, right = super()._input_layers()
        for layer, which in ((left, "left"), (right, "right")):
            shape = level0(layer).shape
            if not layer.rgb and len(shape) == 3 and 2 in (shape[0], shape[-1]):
                raise InputError(
                    f"{which} view {layer.name!r} has shape {shape}, which looks like both views in one "
                    "2-channel image. Give the left and right views as two layers (right-click the "
                    "layer > Split Stack)."
                )
        if left is right:
            raise InputError("left and right views are the same layer; choose two different layers")
        lshape, rshape = level0(left).shape, level0(right).shape
        if lshape != rshape or left.rgb != right.rgb:
            raise InputError(
                f"left and right views must have the same shape: {left.name!r} is {lshape}, {right.name!r} is {rshape}"
            )
        if np.dtype(left.dtype) != np.dtype(right.dtype):
            raise InputError(f"left and right views must share a dtype ({left.dtype} vs {right.dtype})")
        return [left, right]
