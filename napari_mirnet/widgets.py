"""napari widgets: one per restoration task. They only collect choices; the engine does the work.

Drive one from a script::

    w = DenoiseWidget(viewer)
    w.image.value = viewer.layers["noisy"]
    w.weights.value = LOCAL_FILE
    w.weights_file.value = "my_model.pth"
    worker = w()            # starts the run off the GUI thread and returns the napari worker
    layer = w.run_blocking()  # or: run and wait (processing Qt events), return the new layer
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from .tasks import get_task

if TYPE_CHECKING:
    import napari

__all__ = [
    "AUTO_WEIGHTS",
    "LOCAL_FILE",
    "OUTPUT_LAZY",
    "OUTPUT_NOW",
    "OUTPUT_ZARR",
    "DefocusWidget",
    "DenoiseWidget",
    "EnhanceWidget",
    "LowLightWidget",
    "SuperResolutionWidget",
]

AUTO_WEIGHTS = "auto"
LOCAL_FILE = "local file"
OUTPUT_NOW = "new layer, computed now"
OUTPUT_LAZY = "lazy layer, computed as you view"
OUTPUT_ZARR = "OME-Zarr file"
#: A lazy output of a plane larger than this (pixels per side) gets a lazy pyramid, so that napari
#: shows a zoomed-out view from a coarse level instead of restoring the whole full-resolution plane.
PYRAMID_ABOVE = 4096
PYRAMID_TOP = 1024
_SUFFIX = {
    "denoise": "denoised",
    "lowlight": "low-light enhanced",
    "enhance": "enhanced",
    "defocus": "deblurred",
}


class InputError(ValueError):
    """A bad choice in the widget; shown to the user as a message, never as a traceback."""


# ----------------------------------------------------------------------------- choices


def device_choices() -> list[str]:
    """'auto' plus the devices PyTorch can actually use here."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def device_status(device: str) -> str:
    """One line saying which device a choice means, and why there is no GPU if there is none."""
    import torch

    from .weights import resolve_device

    try:
        dev = resolve_device(device)
    except Exception as err:  # an unavailable device: say so instead of failing later
        return f"unavailable: {err}"
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        text = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    elif dev.type == "mps":
        text = "Apple GPU (MPS)"
    else:
        text = f"CPU, {torch.get_num_threads()} threads"
        if device == "auto":
            cuda = torch.version.cuda
            why = "a CPU-only build" if cuda is None else f"CUDA {cuda} build, no GPU visible"
            text += f" (no GPU: PyTorch {torch.__version__} is {why})"
    return ("auto: " if device == "auto" else "") + text


def weights_choices(task: str, scale: int = 1) -> list[tuple[str, str]]:
    """(label, value) pairs: auto, shipped models for the task, the official checkpoint, a local file."""
    from .weights import available_weights

    preset = get_task(task)
    official = preset.official.get(scale, preset.official[min(preset.official)])
    choices = [(f"auto (default for {preset.title.lower()})", AUTO_WEIGHTS)]
    try:
        infos = available_weights()
    except Exception:  # a broken shipped file must not break the widget; it is reported when used
        infos = []
    for info in infos:
        if info.kind == "shipped" and info.task == task and _shipped_scale(info.name) in (None, scale):
            choices.append((info.label, info.name))
    for info in infos:
        if info.kind == "official" and info.name == official:
            choices.append((info.label, info.name))
    if task == "denoise":  # models saved by the Fine-tune widget; never their resume files (NAME.pth.state.pth)
        from .finetune import models_dir
        from .weights import checkpoint_files

        saved = [p for p in checkpoint_files(models_dir()) if p.suffix == ".pth"]
        choices += [(f"{p.stem} (fine-tuned)", str(p)) for p in saved]
    choices.append(("local file…", LOCAL_FILE))
    return choices


def _shipped_scale(name: str) -> int | None:
    """The super-resolution factor a shipped model was trained for (None when it says none)."""
    from .weights import shipped_meta

    try:
        scale = shipped_meta(name).get("scale")
    except Exception:
        return None
    return None if scale is None else int(scale)


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """Everything one run needs, gathered on the GUI thread so the worker never touches layers."""

    task: str
    image: object  # array or ImageSource (with the layer's metadata), (left, right) pair, or pyramid levels
    axes: str
    output: str
    weights: str | None
    scale: int | None
    layer_kwargs: dict
    options: dict = field(default_factory=dict)
    zarr_path: str | None = None
    overwrite: bool = False
    pixel_size: tuple | None = None
    pyramid: bool = False
    qc: bool = False  # also the residual and trust map (denoise): run_job returns (data, QualityReport)


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (a queued Qt connection)."""

    progressed = Signal(int, int)


def _engine():
    from . import engine

    return engine


def _api():
    from . import api

    return api


def run_job(job: Job, progress=None, cancel: threading.Event | None = None):
    """Run a job with the engine (in the calling thread); returns the data for the result layer."""
    eng = _engine()
    common = dict(task=job.task, weights=job.weights, scale=job.scale, axes=job.axes, **job.options)
    if job.output == OUTPUT_ZARR:
        common["pixel_size"] = job.pixel_size
    if job.output == OUTPUT_LAZY:
        levels = job.image if job.pyramid else [job.image]
        out = [_api().restore_lazy(level, **common) for level in levels]
        return out if job.pyramid else out[0]
    if job.output == OUTPUT_ZARR:
        out = _api().restore(
            job.image, **common, out=job.zarr_path, overwrite=job.overwrite, progress=progress, cancel=cancel, qc=job.qc
        )
        # the engine hands back a lazy array reading the written store, in the input's axis order
        return out
    run = eng.prepare(
        job.image, job.task, job.weights, scale=job.scale, axes=job.axes, options=eng.RestoreOptions(**job.options)
    )
    out = eng.execute(run, progress=progress, cancel=cancel)
    if hasattr(out, "dask") and hasattr(out, "compute"):
        # a lazy input gives a lazy result; "computed now" means the tiles run here, in the worker,
        # on the scheduler the engine picks for the device
        out = eng.compute(out, run)
    if job.qc:
        from .engine import quality

        out = np.asarray(out)
        return out, quality.run_qc(run, out, compute=lambda c: eng.compute(c, run))
    return np.asarray(out)


# ----------------------------------------------------------------------------- layer helpers


def layer_axes(layer, ndim: int | None = None) -> str:
    """An engine axes string for an image layer: Y, X last, C for RGB, T/Z (then C) for leading dims.

    The layer says what its dims are, never the shape: ``rgb`` decides C, and axis labels that
    name axes (``t``/``time``, ``z``, ``c``/``channel``, ``y``, ``x``) are used as they are.
    """
    ndim = layer.ndim if ndim is None else ndim
    labelled = _axes_from_labels(layer, ndim)
    if labelled:
        return labelled
    lead = ndim - 2
    letters = {0: "", 1: "Z", 2: "TZ", 3: "TZC"}
    if lead not in letters or (lead == 3 and layer.rgb):
        raise InputError(
            f"layer {layer.name!r} has {ndim} dimensions; at most T, Z{'' if layer.rgb else ', C'} "
            "plus Y and X are supported. Slice it first, or use the preview option."
        )
    return letters[lead] + "YX" + ("C" if layer.rgb else "")


def _axes_from_labels(layer, ndim: int) -> str | None:
    """Axes from the layer's axis labels (napari >= 0.5) when each one names an axis; else None."""
    from .xarrays import DIM_NAMES

    labels = tuple(getattr(layer, "axis_labels", ()) or ())
    if len(labels) != ndim:
        return None
    letters = "".join(DIM_NAMES.get(str(label).lower(), "?") for label in labels)
    axes = letters + ("C" if layer.rgb else "")
    ok = "?" not in letters and letters.endswith("YX") and len(set(axes)) == len(axes)
    return axes if ok else None


def layer_meta(layer, axes: str, offset=None):
    """What the layer's pixels mean (its scale, translate and units) as engine metadata for ``axes``.

    ``offset`` (data pixels per layer dim) is where a preview's crop starts.
    """
    from .metadata import ImageMeta

    dims = [a for a in axes if not (a == "C" and layer.rgb)]  # one per layer dim
    scale = np.array(layer.scale, dtype=float)
    translate = np.array(layer.translate, dtype=float)
    if offset is not None:
        translate = translate + np.asarray(offset) * scale
    units = {}
    for a, unit in zip(dims, getattr(layer, "units", ()) or ()):
        text = str(unit)
        if text and text not in ("pixel", "px", "dimensionless"):
            units[a] = text
    return ImageMeta(
        axes=axes,
        scale={a: float(v) for a, v in zip(dims, scale) if a != "C"},
        translation={a: float(v) for a, v in zip(dims, translate) if a != "C"},
        units={a: u for a, u in units.items() if a != "C"},
        name=layer.name,
    )


def check_image_layer(layer, what: str = "input") -> None:
    from napari.layers import Image

    if layer is None:
        raise InputError(f"no {what} layer chosen: open or choose an image layer first")
    if not isinstance(layer, Image):
        kind = type(layer).__name__
        raise InputError(f"{what} {layer.name!r} is a {kind} layer; MIRNet restores images. Choose an image layer.")
    dtype = np.dtype(layer.dtype)
    if dtype.kind not in "uif":
        raise InputError(f"{what} {layer.name!r} has dtype {dtype}; convert it to uint8, uint16 or float32")


def level0(layer):
    data = layer.data[0] if layer.multiscale else layer.data
    return data


def displayed_slice(layer, viewer) -> tuple[tuple[slice, ...], np.ndarray]:
    """Index of what the canvas shows of a layer: the current slice (leading dims kept at size 1),
    cropped to the visible Y/X region when zoomed in; and that index's offset in data pixels."""
    lead = layer.ndim - 2
    point = np.asarray(viewer.dims.point[-layer.ndim :], dtype=float)
    scale, translate = np.asarray(layer.scale), np.asarray(layer.translate)
    shape = level0(layer).shape
    idx = np.rint((point - translate) / scale).astype(int)
    idx = np.clip(idx, 0, np.asarray(shape[: layer.ndim]) - 1)
    offset = np.zeros(layer.ndim)
    offset[:lead] = idx[:lead]
    yx = [slice(None), slice(None)]
    box = _visible_yx(layer, viewer)
    if box is not None:
        (y0, x0), (y1, x1) = box
        yx = [slice(y0, y1), slice(x0, x1)]
        offset[-2:] = (y0, x0)
    slices = tuple(slice(i, i + 1) for i in idx[:lead]) + tuple(yx) + (slice(None),) * (len(shape) - layer.ndim)
    return slices, offset


def _visible_yx(layer, viewer, min_size: int = 32):
    """The level-0 (start, stop) of Y and X shown on a 2D canvas, or None when all of it is shown."""
    if viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed[-2:]) != (viewer.dims.ndim - 2, viewer.dims.ndim - 1):
        return None
    corners = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]
    if layer.multiscale:  # corner pixels are counted at the displayed level
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
    size = np.asarray(level0(layer).shape[layer.ndim - 2 : layer.ndim])
    start = np.clip(np.floor(corners[0]).astype(int), 0, size)
    stop = np.clip(np.ceil(corners[1]).astype(int) + 1, 0, size)
    if np.all(start == 0) and np.all(stop == size):
        return None
    # a tiny crop restores badly (the model sees too little context): widen it around its centre
    grow = np.maximum(min_size - (stop - start), 0)
    start = np.clip(start - grow // 2, 0, np.maximum(size - min_size, 0))
    stop = np.minimum(np.maximum(stop, start + min_size), size)
    return tuple(int(v) for v in start), tuple(int(v) for v in stop)


def result_layer_kwargs(layer, task: str, scale: int | None, offset=None, preview: bool = False) -> dict:
    """Name, scale, translate, axis labels, metadata ... of the result, from the input layer."""
    from .metadata import ImageMeta

    # copies: np.asarray would hand back the layer's own arrays, and the lines below would move
    # the input layer (silently, without a napari event) by each run's shift
    in_scale = np.array(layer.scale, dtype=float)
    translate = np.array(layer.translate, dtype=float)
    if offset is not None:
        translate = translate + np.asarray(offset) * in_scale
    out_scale = in_scale.copy()
    factor = scale or 1
    # the output grid covers the same extent: pixel size / factor, first centre moved by the
    # pixel-centre rule (the one ImageMeta.resampled applies to files and DataArrays)
    yx = ImageMeta(
        scale={"Y": in_scale[-2], "X": in_scale[-1]}, translation={"Y": translate[-2], "X": translate[-1]}
    ).resampled(factor)
    out_scale[-2:] = yx.scale["Y"], yx.scale["X"]
    translate[-2:] = yx.translation["Y"], yx.translation["X"]
    suffix = f"SR x{factor}" if task == "super_resolution" else _SUFFIX[task]
    name = f"{layer.name} {suffix}" + (" preview" if preview else "")
    kwargs = dict(
        name=name,
        scale=tuple(out_scale),
        translate=tuple(translate),
        metadata={**dict(layer.metadata), "mirnet": {"task": task, "source": layer.name, "scale": factor}},
        rgb=layer.rgb,
        # explicit limits: napari would otherwise compute the lazy result to find them
        contrast_limits=tuple(layer.contrast_limits),
        blending=layer.blending,
    )
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap.name
    for attr in ("axis_labels", "units"):
        if hasattr(layer, attr):
            kwargs[attr] = tuple(getattr(layer, attr))
    return kwargs


def check_fits_in_memory(shape, dtype: np.dtype, axes: str, factor: int = 1) -> None:
    """Refuse a computed-now result that would not fit in half the free memory: offer lazy or zarr."""
    import psutil

    nbytes = float(np.prod(shape, dtype=float)) * dtype.itemsize * factor**2
    free = psutil.virtual_memory().available
    if nbytes > free / 2:
        raise InputError(
            f"the result would take {nbytes / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB of memory is "
            f"free; choose output '{OUTPUT_LAZY}' or '{OUTPUT_ZARR}', or the preview option"
        )


def lazy_pyramid(data, axes: str) -> list:
    """Strided views of a big plane, full resolution first, for a lazy multiscale result."""
    import dask.array as da

    if not hasattr(data, "dask"):
        data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))
    y, x = axes.index("Y"), axes.index("X")
    levels, step = [data], 2
    while max(data.shape[y], data.shape[x]) / (step // 2) > PYRAMID_TOP:
        index = [slice(None)] * data.ndim
        index[y] = index[x] = slice(None, None, step)
        levels.append(data[tuple(index)])
        step *= 2
    return levels


# ----------------------------------------------------------------------------- display helpers

_OUTPUT_CHOICES = [("new layer", OUTPUT_NOW), ("lazy layer", OUTPUT_LAZY), ("OME-Zarr", OUTPUT_ZARR)]
#: combo boxes show about this many characters, so that long layer or weights names do not widen the
#: dock and squeeze the canvas; their pop-up lists still show every entry whole
_COMBO_CHARS = 14
_RIGHT = {"left": "right", "Left": "Right", "LEFT": "RIGHT"}


def _compact_combo(combo: ComboBox, show_text_as_tooltip: bool = True) -> None:
    """Let a combo box be narrower than its longest entry (the current text goes in the tooltip)."""
    from qtpy.QtWidgets import QComboBox

    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(_COMBO_CHARS)
    view = native.view()

    def fit_popup(*_):
        view.setMinimumWidth(view.sizeHintForColumn(0) + 24)

    native.model().rowsInserted.connect(fit_popup)
    fit_popup()
    if show_text_as_tooltip:
        native.currentTextChanged.connect(native.setToolTip)
        native.setToolTip(native.currentText())


def _auto_at_minimum(spin: SpinBox) -> None:
    """Show (and accept) 'auto' for a spin box's minimum. magicgui's spin box is superqt's
    QLargeIntSpinBox, which ignores Qt's special-value text; this adapts its text handling."""
    from qtpy.QtGui import QValidator

    native = spin.native
    try:
        from superqt.spinbox._intspin import _EmitPolicy
    except ImportError:
        return  # a superqt that works differently: plain numbers then
    if not all(hasattr(native, a) for a in ("_setValue", "_interpret", "_editor_text_changed")):
        return
    edit = native.lineEdit()

    def value_of(text: str) -> int:
        return native.minimum() if text.strip().lower() in ("auto", "") else int(text)

    def show():
        text = "auto" if native.value() == native.minimum() else str(native.value())
        if edit.text() != text:
            edit.setText(text)

    def interpret(policy):
        try:
            native._setValue(value_of(edit.displayText()), policy)
        except ValueError:
            show()

    def on_text(text: str) -> None:  # while typing: numbers only, half-typed text waits
        if text.strip().lstrip("-").isdigit():
            native._setValue(int(text), _EmitPolicy.EmitIfChanged)

    class Validator(QValidator):
        def validate(self, text, pos):
            ok = "auto".startswith(text.strip().lower()) or text.lstrip("-").isdigit() or text in ("", "-")
            return (QValidator.State.Acceptable if ok else QValidator.State.Invalid), text, pos

    edit.textChanged.disconnect(native._editor_text_changed)
    edit.textChanged.connect(on_text)
    edit.setValidator(Validator(native))
    native._interpret = interpret
    native._updateEdit = show
    native.valueChanged.connect(lambda *_: show())
    show()


def _box(widgets: list, margins=(0, 0, 0, 0), **kwargs) -> Container:
    """A nested container without margins of its own (they would add to the dock's width)."""
    box = Container(widgets=widgets, **kwargs)
    box.margins = margins
    return box


def _wrapping(label: Label) -> Label:
    """A label whose long text wraps and grows in height instead of widening the dock."""
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)
    return label


def _breakable(text: str) -> str:
    """Text with break opportunities after path separators: Qt wraps only at spaces, so a long path
    would otherwise run off the edge of a narrow dock."""
    return re.sub(r"([/\\])", "\\1\u200b", text)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_text(done: int, total: int, seconds_left: float | None, running: float | None = None) -> str:
    """The progress bar's text: tiles done, and the time left once finished tiles give a rate (before
    that, ``running``: the time spent so far on the tiles in hand)."""
    text = f"{done}/{total} tiles"
    if done < total and seconds_left is not None:
        text += f", about {_duration(seconds_left)} left"
    elif done < total and running is not None:
        text += f", {_duration(running)} on the current tile"
    return text


#: Bar steps per tile: the bar moves within a long tile by time (see TaskWidget._tick).
_STEPS = 100


def weights_note(value: str, task: str, scale: int | None, rgb: bool) -> str:
    """A line for the widget when the weights chosen (or what 'auto' means here) are official ones:
    non-commercial, and downloaded on first use."""
    from .weights import available_weights

    if value == LOCAL_FILE:
        return ""
    name = _auto_weights(task, scale, rgb) if value == AUTO_WEIGHTS else value
    try:
        official = {i.name: i.available for i in available_weights() if i.kind == "official"}
    except Exception:  # a broken registry is reported when a run uses it
        return ""
    if name not in official:
        return ""
    what = f"auto = official {name!r} weights" if value == AUTO_WEIGHTS else "official weights"
    download = "" if official[name] else ", downloaded on the first run"
    return f"{what}: non-commercial, academic use only{download}"


def left_right_pair(layers: list, prefer=None) -> tuple | None:
    """Two layers whose names differ only in 'left' / 'right' (e.g. 'dp left', 'dp right'): the pair
    that holds ``prefer`` if there is one, else the topmost; None without such a pair."""
    by_name = {lay.name: lay for lay in layers}
    pairs = []
    for lay in layers:
        for m in re.finditer("|".join(_RIGHT), lay.name):
            other = by_name.get(lay.name[: m.start()] + _RIGHT[m.group()] + lay.name[m.end() :])
            if other is not None and other is not lay:
                pairs.append((lay, other))
    if not pairs:
        return None
    return next((p for p in pairs if prefer is not None and any(prefer is x for x in p)), pairs[-1])


# ----------------------------------------------------------------------------- widgets


class TaskWidget(Container):
    """The shared widget: inputs, weights, device, output, advanced options, run, progress, status."""

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
        self.worker = None
        self.result_layer = None
        self.last_status = ""
        self.last_progress = (0, 0)  # (tiles done, total) of the latest run
        self._cancel = None
        self._first_tile = None  # (time, tiles done) of the run's first progress report: the ETA's origin
        self._started = 0.0
        self._closed = False  # the Qt side is gone (viewer closed): a run must not touch it any more
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._last_report = 0.0  # when the latest progress report came
        from qtpy.QtCore import QTimer

        self._ticker = QTimer(self.native)  # the bar's clock within a tile; dies with the widget
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self._tick)
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
        self.weights_note = _wrapping(Label(label="", value=""))
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.device_label = _wrapping(Label(label="", value=device_status("auto")))
        self.output = ComboBox(label="output", choices=_OUTPUT_CHOICES, value=OUTPUT_NOW)
        self.output.tooltip = (
            "new layer: computed now. lazy layer: computed tile by tile as napari shows it. "
            "OME-Zarr: written to disk (an unfinished store from the same settings is resumed)."
        )
        self.zarr_path = FileEdit(label="path", mode="w", filter="*.zarr")
        form += [self.weights, self.weights_file, self.weights_note, self.device, self.device_label]
        form += [self.output, self.zarr_path]
        for combo in form:
            if isinstance(combo, ComboBox):
                _compact_combo(combo, show_text_as_tooltip=combo is not self.output)
        return _box(form, labels=True)

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
        self.qc.visible = self.task == "denoise"
        return [self.overwrite, self.background, self.preview, self.qc]

    def _build_advanced(self) -> list:
        """Tile, halo, blend, precision, intensity mapping and TTA, collapsed under a check box."""
        self.advanced = CheckBox(text="advanced options", value=False)
        self.tile = SpinBox(label="tile", min=0, max=16384, step=32, value=0)
        self.halo = SpinBox(label="halo", min=-1, max=1024, step=8, value=-1)
        self.blend = SpinBox(label="blend", min=-1, max=1024, step=4, value=-1)
        # "auto" reads better than 0 / -1 for the engine's own tile, halo and blend choice
        what = {"tile": "tile size", "halo": "context around a tile", "blend": "blend margin"}
        for spin in (self.tile, self.halo, self.blend):
            _auto_at_minimum(spin)
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
        fields = [self.tile, self.halo, self.blend, self.precision, self.normalisation, self.tta]
        self._advanced_box = _box(fields, labels=True, margins=(12, 0, 0, 0))
        return [self.advanced, self._advanced_box]

    def _build_run(self) -> list:
        """Run and Cancel side by side, the progress bar, the status line."""
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = _box([self.run_button, self.cancel_button], labels=False, layout="horizontal")
        self.progress_bar = ProgressBar(min=0, max=1, value=0, visible=False)
        self.status = _wrapping(Label(value="ready"))
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
        self.run_button.changed.connect(lambda: self())
        self.cancel_button.changed.connect(self.cancel)
        self.native.destroyed.connect(self._on_destroyed)

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
            self.status.value = _breakable(text)
            self.status.tooltip = f"{text}\n\n{detail}" if detail else text

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

    def _options(self) -> dict:
        return dict(
            tile=self.tile.value or None,
            halo=None if self.halo.value < 0 else self.halo.value,
            blend=None if self.blend.value < 0 else self.blend.value,
            device=self.device.value,
            precision=self.precision.value,
            normalisation=self.normalisation.value,
            tta=self.tta.value,
        )

    def _input_layers(self) -> list:
        layers = [getattr(self, attr).value for attr, _ in self.inputs]
        for layer, (_, label) in zip(layers, self.inputs):
            check_image_layer(layer, label)
        return layers

    def make_job(self) -> Job:
        """Check the choices and gather a :class:`Job`; raises :class:`InputError` with a message."""
        layers = self._input_layers()
        ref = layers[0]
        weights = self._weights_value()
        scale = self._scale_value()
        output = self.output.value
        if output == OUTPUT_ZARR:
            text = str(self.zarr_path.value or "").strip()
            if not text or text == ".":
                raise InputError("choose a path for the OME-Zarr output (e.g. result.zarr)")
        preview = bool(self.preview.value)
        qc = bool(self.qc.value) and self.task == "denoise"
        if qc and output == OUTPUT_LAZY:
            raise InputError("the residual and trust map need the whole result: choose 'new layer' or OME-Zarr output")
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
            from .io import ImageSource

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
            options=self._options(),
            zarr_path=str(self.zarr_path.value) if output == OUTPUT_ZARR else None,
            overwrite=bool(self.overwrite.value),
            # the zarr's pixel size: the layer's scale, 1 for the RGB channel axis
            pixel_size=tuple(float(v) for v in ref.scale) + ((1.0,) if ref.rgb else ()),
            pyramid=pyramid,
            qc=qc,
        )

    # -- running
    def __call__(self):
        """Start a run off the GUI thread; returns the napari worker (None if the choices are bad)."""
        from napari.qt.threading import thread_worker

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
        chosen = job.weights or _auto_weights(self.task, job.scale, job.layer_kwargs["rgb"])
        if chosen in _official_to_download():
            from .weights import OFFICIAL_LICENCE

            self._say(f"downloading the official {chosen!r} weights. {OFFICIAL_LICENCE}", "warning")
        self._cancel = threading.Event()
        self._first_tile = None
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        # the engine reports progress(0, total) once the model is loaded and the tiles are planned
        self._show_status("loading model and planning…")
        self.progress_bar.native.setRange(0, 0)  # a busy bar until then
        self.progress_bar.visible = True
        self._started = time.perf_counter()
        worker = thread_worker(_work, start_thread=False)(job, self._relay.progressed.emit, self._cancel)
        worker.returned.connect(lambda result, job=job: self._on_returned(job, result))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        self._ticker.start()
        return worker

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


#: napari titles a plugin's docks "<widget name> (<plugin name>)".
_OUR_DOCKS = "(napari-mirnet)"


def share_dock_area(widget) -> None:
    """Put the dock holding ``widget`` in a tab beside this plugin's other docks in its area (and
    do the same for the plugin's docks opened later in that window).

    Stacked one above the other, six docks made the window taller than the screen and squeezed the
    canvas to a strip; as tabs they share one dock's height. A dock the user drags elsewhere stays there.
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    main = dock.parentWidget() if dock is not None else None
    if not isinstance(main, QMainWindow):
        return  # not docked (a test, a script): nothing to share
    if main.findChild(_DockWatcher, "napari_mirnet_docks") is None:
        main.installEventFilter(_DockWatcher(main))
        # docks of ours added before the watcher (in the same event loop turn) join now
        for other in main.findChildren(QDockWidget):
            if other is not dock:
                _tabify_with_ours(main, other)
    _tabify_with_ours(main, dock)


def _tabify_with_ours(main, dock) -> None:
    try:
        _tabify(main, dock)
    except RuntimeError:  # the window or the dock is gone (closed in the meantime)
        pass


def _tabify(main, dock) -> None:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QDockWidget

    ours = [
        d
        for d in main.findChildren(QDockWidget)
        # hidden ones too: napari shows a dock after adding it, and a closed one may be opened again
        if d.windowTitle().endswith(_OUR_DOCKS) and not d.isFloating()
    ]
    if dock not in ours or any(d in main.tabifiedDockWidgets(dock) for d in ours):
        return  # not ours, or already in a tab group with ours
    area = main.dockWidgetArea(dock)
    others = sorted((d for d in ours if d is not dock and main.dockWidgetArea(d) == area), key=lambda d: d.isHidden())
    if others:
        main.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()  # the one just opened is the one shown
        QTimer.singleShot(0, lambda: _fit_screen(main))


def _fit_screen(main) -> None:
    """Give back the height the window grew by while the new dock sat below the others (Qt grows
    a window to its docks' minimum, and never shrinks it again): no taller than its screen."""
    try:
        screen = main.screen().availableGeometry()
        frame = main.frameGeometry().height() - main.height()
        if main.height() + frame > screen.height() and not main.isMaximized():
            main.resize(main.width(), max(main.minimumSizeHint().height(), screen.height() - frame))
    except RuntimeError:  # closed in the meantime
        pass


class _DockWatcher(QObject):
    """On a main window: a plugin dock added later (our fine-tune widget, say) joins the tabs too."""

    def __init__(self, main):
        super().__init__(main)
        self.setObjectName("napari_mirnet_docks")

    def eventFilter(self, obj, event):
        from qtpy.QtCore import QEvent, QTimer
        from qtpy.QtWidgets import QDockWidget

        if event.type() == QEvent.Type.ChildAdded and isinstance(event.child(), QDockWidget):
            dock = event.child()
            # napari resizes the docks after adding one: look once it is in place
            QTimer.singleShot(0, lambda: _tabify_with_ours(obj, dock))
        return False


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


def _auto_weights(task: str, scale: int | None, rgb: bool) -> str | None:
    """What 'auto' weights will be for this input (as the engine chooses them)."""
    from .tasks import choose_weights

    try:
        return choose_weights(task, scale or 1, 3 if rgb else 1)
    except Exception:
        return None


def _official_to_download() -> set[str]:
    from .weights import available_weights

    try:
        return {i.name for i in available_weights() if i.kind == "official" and not i.available}
    except Exception:
        return set()


def add_qc_layers(viewer, report, out_kwargs: dict) -> list:
    """The residual (coolwarm, centred at 0) and the trust map (red to green, 0 to 1) of a result,
    placed like the result layer (the trust map's pixels are blocks: scaled and shifted to match)."""
    residual = np.asarray(report.residual, np.float32)
    if out_kwargs.get("rgb"):  # napari shows signed data per channel, not as colour: their mean
        residual = residual.mean(axis=-1)
    scale = np.array(out_kwargs["scale"], float)
    translate = np.array(out_kwargs["translate"], float)
    lim = 3 * float(report.summary["noise"]["sigma"]) or float(np.abs(residual).max()) or 1.0
    common = dict(metadata={"mirnet": {"qc": report.summary}}, blending="translucent")
    res = viewer.add_image(
        residual,
        name=f"{out_kwargs['name']} residual",
        scale=tuple(scale),
        translate=tuple(translate),
        colormap="coolwarm",
        contrast_limits=(-lim, lim),
        **common,
    )
    tscale, ttrans = scale.copy(), translate.copy()
    tscale[-2:] = scale[-2:] * report.block
    ttrans[-2:] = translate[-2:] + (report.block - 1) / 2 * scale[-2:]
    trust = viewer.add_image(
        report.trust,
        name=f"{out_kwargs['name']} trust",
        scale=tuple(tscale),
        translate=tuple(ttrans),
        colormap="RdYlGn",
        contrast_limits=(0.0, 1.0),
        opacity=0.5,
        **common,
    )
    return [res, trust]


def _work(job: Job, progress, cancel):
    """The worker body: never raises, so napari shows our message, not a traceback dialog."""
    try:
        return "ok", run_job(job, progress, cancel)
    except BaseException as err:  # noqa: BLE001 - every failure becomes a message
        if isinstance(err, _engine().Cancelled) or cancel.is_set():
            return "cancelled", None
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
            return "error", f"out of memory ({err}); choose a smaller tile under advanced options"
        return "error", (_error_line(err), _error_detail(err))


def _error_line(err: BaseException) -> str:
    """The status line: our own errors' messages are written for users; others get their type."""
    from .weights import WeightsError

    return str(err) if isinstance(err, (ValueError, WeightsError)) else f"{type(err).__name__}: {err}"


def _error_detail(err: BaseException) -> str | None:
    """What caused it (e.g. urllib3's whole connection error), for the tooltip and the log."""
    causes, cause = [], err.__cause__ or err.__context__
    while cause is not None and len(causes) < 5:
        causes.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "\n".join(["caused by:", *causes]) if causes else None


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
