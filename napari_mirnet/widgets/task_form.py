"""The task widgets' form: inputs, weights, device, output, advanced options, run button, status line.

:class:`TaskForm` builds and lays out the controls, keeps their choices and visibility up to
date, and shows messages; :class:`~napari_mirnet.widgets.task.TaskWidget` adds the run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)

from ..io.urls import is_url
from ..tasks import get_task
from .choices import AUTO_WEIGHTS, LOCAL_FILE, device_choices, device_status, weights_choices, weights_note
from .job import OUTPUT_LAZY, OUTPUT_NOW, OUTPUT_ZARR
from .qt_fixes import auto_at_minimum, box, breakable, compact_combo, share_dock_area, wrapping

if TYPE_CHECKING:
    import napari

__all__ = ["PathOrUrlEdit", "TaskForm"]

_OUTPUT_CHOICES = [("new layer", OUTPUT_NOW), ("lazy layer", OUTPUT_LAZY), ("OME-Zarr", OUTPUT_ZARR)]


class PathOrUrlEdit(FileEdit):
    """A file field that also takes a URL (``s3://bucket/out.zarr``): its value is then the text as
    typed (a ``str``), since a ``Path`` would collapse the URL's ``//``; a local path stays a ``Path``."""

    def get_value(self):
        text = self.line_edit.value.strip()
        return text if is_url(text) else super().get_value()

    def set_value(self, value) -> None:
        if isinstance(value, str) and is_url(value.strip()):
            self.line_edit.value = value.strip()
        else:
            super().set_value(value)

    def _on_choose_clicked(self) -> None:
        text = self.line_edit.value
        if not is_url(text.strip()):
            return super()._on_choose_clicked()
        self.line_edit.value = ""  # the file dialog cannot start at a URL
        super()._on_choose_clicked()
        if not self.line_edit.value:  # cancelled: the URL stays
            self.line_edit.value = text
        return None


class TaskForm(Container):
    """The shared form: inputs, weights, device, output, advanced options, run, progress, status."""

    task = "denoise"
    inputs: tuple[tuple[str, str], ...] = (("image", "image"),)

    # napari passes its viewer to a parameter annotated with exactly this string
    def __init__(self, viewer: napari.viewer.Viewer = None):
        # no label column at this level, so that the progress bar and status line get the full width
        super().__init__(labels=False)
        if viewer is None:
            import napari

            viewer = napari.current_viewer()
        self.viewer = viewer
        self.preset = get_task(self.task)
        self.last_status = ""
        self._closed = False  # the Qt side is gone (viewer closed): a run must not touch it any more
        self.extend([self._build_form(), *self._build_output_options(), *self._build_advanced(), *self._build_run()])
        self._connect()
        # once napari has docked it (in this event loop turn): share the dock area with our other docks
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, lambda: None if self._closed else share_dock_area(self.native))
        self._update_visibility()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._on_layers_changed)
        self._on_layers_changed()

    # -- building the widget
    def _build_form(self) -> Container:
        """Inputs, scale, weights, device and output: a labelled form."""
        form = []
        for attr, label in self.inputs:
            combo = ComboBox(label=label, choices=self._layer_choices, nullable=True)
            setattr(self, attr, combo)
            form.append(combo)
        self.scale = None
        if len(self.preset.scales) > 1:
            choices = [(f"x{s}", s) for s in self.preset.scales]
            self.scale = ComboBox(label="scale", choices=choices, value=self.preset.scales[0])
            form.append(self.scale)
        self.weights = ComboBox(label="weights", choices=weights_choices(self.task, self._scale_value()))
        self.weights_file = FileEdit(label="file", mode="r", filter="*.pth *.pt *.ckpt")
        self.weights_note = wrapping(Label(label="", value=""))
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.device_label = wrapping(Label(label="", value=device_status("auto")))
        self.output = ComboBox(label="output", choices=_OUTPUT_CHOICES, value=OUTPUT_NOW)
        self.output.tooltip = (
            "new layer: computed now. lazy layer: computed tile by tile as napari shows it. "
            "OME-Zarr: written to disk or object storage (an unfinished store from the same settings is resumed)."
        )
        self.zarr_path = PathOrUrlEdit(label="path", mode="w", filter="*.zarr")
        self.zarr_path.tooltip = (
            "A local .zarr path, or a URL of a writable store: s3://bucket/out.zarr (also gs://, az://); "
            "credentials from the environment or the storage options under advanced options."
        )
        form += [self.weights, self.weights_file, self.weights_note, self.device, self.device_label]
        form += [self.output, self.zarr_path]
        for combo in form:
            if isinstance(combo, ComboBox):
                compact_combo(combo, show_text_as_tooltip=combo is not self.output)
        return box(form, labels=True)

    def _build_output_options(self) -> list:
        """The check boxes of the output choice, and the preview option."""
        self.overwrite = CheckBox(text="replace a finished store", value=False)
        self.overwrite.tooltip = "Unticked, an unfinished store from the same settings is resumed."
        self.background = CheckBox(text="compute in the background", value=True)
        self.background.tooltip = (
            "Compute newly viewed tiles off the GUI thread: turns on napari's Preferences > "
            "Experimental > 'Render Images Asynchronously'. Without it the viewer freezes while "
            "napari computes each newly viewed region."
        )
        self.preview = CheckBox(text="displayed slice only (preview)", value=False)
        self.preview.tooltip = (
            "Restore only the current slice of an nD stack, cut to the visible region when zoomed in."
        )
        self.qc = CheckBox(text="show what was removed (residual, trust map)", value=False)
        self.qc.tooltip = (
            "Also add the residual (input - output) and a trust map per 32x32 block (green: the residual "
            "looks like noise; red: structure removed or noise left); the verdict goes to the status line. "
            "See docs/qc.md."
        )
        self.qc_passes = CheckBox(text="... with more model passes (8-9x slower)", value=False)
        self.qc_passes.tooltip = (
            "The check also runs the model on the 8 flips/rotations (their disagreement) and, where the "
            "noise is correlated over a few pixels and the model left it in, once more on the noise's "
            "pixel-shuffle sub-images (a second opinion). Implies the check. See docs/qc.md."
        )
        self.qc.visible = self.qc_passes.visible = self.task == "denoise"
        return [self.overwrite, self.background, self.preview, self.qc, self.qc_passes]

    def _build_advanced(self) -> list:
        """Tile, halo, blend, precision, intensity mapping, TTA and nodata, collapsed under a check box."""
        self.advanced = CheckBox(text="advanced options", value=False)
        self.tile = SpinBox(label="tile", min=0, max=16384, step=32, value=0)
        self.halo = SpinBox(label="halo", min=-1, max=1024, step=8, value=-1)
        self.blend = SpinBox(label="blend", min=-1, max=1024, step=4, value=-1)
        # "auto" reads better than 0 / -1 for the engine's own tile, halo and blend choice
        what = {"tile": "tile size", "halo": "context around a tile", "blend": "blend margin"}
        for spin in (self.tile, self.halo, self.blend):
            auto_at_minimum(spin)
            spin.tooltip = f"{what[spin.label]} in model pixels, multiples of 4; 'auto' lets the engine choose"
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16"], value="auto")
        self.normalisation = ComboBox(label="intensity", choices=["auto", "fixed", "percentile"], value="auto")
        self.normalisation.tooltip = (
            "How intensities map to [0, 1]: 'fixed' by the dtype's range, 'percentile' by the "
            "image's 0.1-99.9 percentiles; 'auto': integers fixed, floats percentile."
        )
        self.tta = CheckBox(text="test-time augmentation (8x slower)", value=False)
        self.tta.tooltip = (
            "Average the model over the 8 flipped and rotated images: slightly better results (about "
            "+0.1 dB for the shipped denoisers) for 8x the compute."
        )
        self.nodata = LineEdit(label="nodata", value="")
        self.nodata.tooltip = (
            "The value that marks missing pixels (e.g. 0 or -9999; 'nan'): left out of the intensity mapping, "
            "filled for the model and written back. Empty: none (NaN in float images is always nodata)."
        )
        self.storage_options = TextEdit(label="storage options", value="")
        self.storage_options.tooltip = (
            "fsspec options for a URL output (s3://, gs://, az://): a JSON object, or KEY=VALUE lines "
            "(a dotted key nests: client_kwargs.endpoint_url=http://127.0.0.1:9000). Empty: from the "
            "environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, profiles...). Never shown in messages."
        )
        self.storage_options.native.setMaximumHeight(64)  # a few lines; the form stays compact
        fields = [self.tile, self.halo, self.blend, self.precision, self.normalisation, self.tta, self.nodata]
        fields.append(self.storage_options)
        self._advanced_box = box(fields, labels=True, margins=(12, 0, 0, 0))
        return [self.advanced, self._advanced_box]

    def _build_run(self) -> list:
        """Run and Cancel side by side, the progress bar, the status line."""
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = box([self.run_button, self.cancel_button], labels=False, layout="horizontal")
        self.progress_bar = ProgressBar(min=0, max=1, value=0, visible=False)
        self.status = wrapping(Label(value="ready"))
        return [buttons, self.progress_bar, self.status]

    def _connect(self) -> None:
        if self.scale is not None:
            self.scale.changed.connect(self._refresh_weights)
        self.weights.changed.connect(self._update_visibility)
        self.output.changed.connect(self._update_visibility)
        self.advanced.changed.connect(self._update_visibility)
        self.weights.changed.connect(self._update_weights_note)
        for attr, _ in self.inputs:
            getattr(self, attr).changed.connect(self._update_weights_note)
        self.device.changed.connect(lambda v: setattr(self.device_label, "value", device_status(v)))

    # -- choices and visibility
    def _layer_choices(self, widget=None):
        from napari.layers import Image, Labels

        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, (Image, Labels))]

    def _on_layers_changed(self, event=None):
        self.reset_choices()
        from napari.layers import Image

        images = [lay for lay in self.viewer.layers if isinstance(lay, Image)]
        active = self.viewer.layers.selection.active
        first = active if isinstance(active, Image) else (images[-1] if images else None)
        for attr, layer in self._default_inputs(images, first).items():
            if layer is not None:
                getattr(self, attr).value = layer

    def _default_inputs(self, images: list, first) -> dict:
        """Layers to preselect where none is chosen: the selected (else topmost) image, the one a
        user most likely means."""
        return {attr: first for attr, _ in self.inputs if getattr(self, attr).value is None}

    def _scale_value(self) -> int | None:
        return None if self.scale is None else int(self.scale.value)

    def _refresh_weights(self, *_):
        current = self.weights.value
        self.weights.choices = weights_choices(self.task, self._scale_value())
        if current in (AUTO_WEIGHTS, LOCAL_FILE):
            self.weights.value = current
        self._update_weights_note()

    def _update_weights_note(self, *_):
        layer = getattr(self, self.inputs[0][0]).value
        rgb = True if layer is None else bool(getattr(layer, "rgb", True))
        self.weights_note.value = weights_note(self.weights.value, self.task, self._scale_value(), rgb)
        self.weights_note.visible = bool(self.weights_note.value)

    def _update_visibility(self, *_):
        self.weights_file.visible = self.weights.value == LOCAL_FILE
        self.zarr_path.visible = self.overwrite.visible = self.output.value == OUTPUT_ZARR
        self.background.visible = self.output.value == OUTPUT_LAZY
        self._advanced_box.visible = self.advanced.value

    # -- messages
    def _say(self, text: str, level: str = "info", detail: str | None = None) -> None:
        """Show a message in the status line (whole, wrapped) and as a napari notification; ``detail``
        (e.g. a library's long error text) goes to the tooltip and the log, not the status line."""
        from napari.utils.notifications import show_error, show_info, show_warning

        self._show_status(text, detail)
        {"error": show_error, "warning": show_warning, "info": show_info}[level](f"MIRNet: {text}")
        if detail:
            logging.getLogger(__name__).log(logging.ERROR if level == "error" else logging.INFO, detail)

    def _show_status(self, text: str, detail: str | None = None) -> None:
        self.last_status = text
        if not self._closed:
            self.status.value = breakable(text)
            self.status.tooltip = f"{text}\n\n{detail}" if detail else text
