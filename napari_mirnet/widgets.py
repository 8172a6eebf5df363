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
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from .presets import get_preset

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

    preset = get_preset(task)
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
    image: object  # array, (left, right) pair, or a list of levels for a lazy pyramid
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


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (a queued Qt connection)."""

    progressed = Signal(int, int)


def _engine():
    from . import engine

    return engine


def _preload_torch_dispatch() -> None:
    """Import what the engine's first memory measurement needs, while the dock opens.

    That measurement runs a forward pass under a TorchDispatchMode, whose first use imports
    ``torch._dynamo``; done in the worker, the import holds the GIL long enough (0.2-0.5 s) to
    freeze the GUI in the middle of the first run.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:
        pass


def run_job(job: Job, progress=None, cancel: threading.Event | None = None):
    """Run a job with the engine (in the calling thread); returns the data for the result layer."""
    eng = _engine()
    common = dict(task=job.task, weights=job.weights, scale=job.scale, axes=job.axes, **job.options)
    if job.output == OUTPUT_ZARR:
        common["pixel_size"] = job.pixel_size
    if job.output == OUTPUT_LAZY:
        levels = job.image if job.pyramid else [job.image]
        out = [eng.restore_lazy(level, **common) for level in levels]
        return out if job.pyramid else out[0]
    if job.output == OUTPUT_ZARR:
        out = eng.restore(
            job.image, **common, out=job.zarr_path, overwrite=job.overwrite, progress=progress, cancel=cancel
        )
        # the engine hands back a lazy array reading the written store, in the input's axis order
        return out
    out = eng.restore(job.image, **common, progress=progress, cancel=cancel)
    if hasattr(out, "dask") and hasattr(out, "compute"):
        # a lazy input gives a lazy result; "computed now" means the tiles run here, in the worker
        out = out.compute()
    return np.asarray(out)


# ----------------------------------------------------------------------------- layer helpers


def layer_axes(layer, ndim: int | None = None) -> str:
    """An engine axes string for an image layer: Y, X last, C for RGB, T/Z (then C) for leading dims."""
    ndim = layer.ndim if ndim is None else ndim
    lead = ndim - 2
    letters = {0: "", 1: "Z", 2: "TZ", 3: "TZC"}
    if lead not in letters or (lead == 3 and layer.rgb):
        raise InputError(
            f"layer {layer.name!r} has {ndim} dimensions; at most T, Z{'' if layer.rgb else ', C'} "
            "plus Y and X are supported. Slice it first, or use the preview option."
        )
    return letters[lead] + "YX" + ("C" if layer.rgb else "")


def check_image_layer(layer, what: str = "input") -> None:
    from napari.layers import Image

    if layer is None:
        raise InputError(f"no {what} layer chosen: open or choose an image layer first")
    if not isinstance(layer, Image):
        kind = type(layer).__name__
        raise InputError(
            f"{what} {layer.name!r} is a {kind} layer; MIRNet restores images. Choose an image layer."
        )
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
    in_scale = np.asarray(layer.scale, dtype=float)
    translate = np.asarray(layer.translate, dtype=float)
    if offset is not None:
        translate = translate + np.asarray(offset) * in_scale
    out_scale = in_scale.copy()
    factor = scale or 1
    if factor > 1:
        out_scale[-2:] = in_scale[-2:] / factor
        # the bicubic resize maps output pixel j to input (j + 0.5) / f - 0.5: keep pixel centres aligned
        translate[-2:] = translate[-2:] - in_scale[-2:] * (1 - 1 / factor) / 2
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


# ----------------------------------------------------------------------------- widgets


class TaskWidget(Container):
    """The shared widget: inputs, weights, device, advanced options, output, run and cancel."""

    task = "denoise"
    inputs: tuple[tuple[str, str], ...] = (("image", "image"),)

    # napari passes its viewer to a parameter annotated with exactly this string
    def __init__(self, viewer: napari.viewer.Viewer = None):
        super().__init__(labels=True)
        if viewer is None:
            import napari

            viewer = napari.current_viewer()
        self.viewer = viewer
        self.preset = get_preset(self.task)
        self.worker = None
        self.result_layer = None
        self.last_status = ""
        self.last_progress = (0, 0)  # (tiles done, total) of the latest run
        self._cancel = None
        self._pbar = None
        self._closed = False  # the Qt side is gone (viewer closed): a run must not touch it any more
        _preload_torch_dispatch()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

        for attr, label in self.inputs:
            combo = ComboBox(label=label, choices=self._layer_choices, nullable=True)
            setattr(self, attr, combo)
            self.append(combo)
        if len(self.preset.scales) > 1:
            self.scale = ComboBox(
                label="scale", choices=[(f"x{s}", s) for s in self.preset.scales], value=self.preset.scales[0]
            )
            self.scale.changed.connect(self._refresh_weights)
            self.append(self.scale)
        else:
            self.scale = None
        self.weights = ComboBox(label="weights", choices=weights_choices(self.task, self._scale_value()))
        self.weights_file = FileEdit(label="weights file", mode="r", filter="*.pth *.pt *.ckpt")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.device_label = Label(label="", value=device_status("auto"))
        self.advanced = CheckBox(text="advanced options", value=False)
        self.tile = SpinBox(label="tile (px)", min=0, max=16384, step=32, value=0)
        self.halo = SpinBox(label="halo (px)", min=-1, max=1024, step=8, value=-1)
        self.blend = SpinBox(label="blend (px)", min=-1, max=1024, step=4, value=-1)
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16"], value="auto")
        self.normalisation = ComboBox(
            label="intensity", choices=["auto", "fixed", "percentile"], value="auto"
        )
        self.tta = CheckBox(text="test-time augmentation (8 flips/rotations: 8x slower)", value=False)
        self.tta.tooltip = (
            "Average the model over the flipped and rotated image: slightly better results (about "
            "+0.1 dB for the shipped denoisers) for 8x the compute."
        )
        self.output = ComboBox(label="output", choices=[OUTPUT_NOW, OUTPUT_LAZY, OUTPUT_ZARR], value=OUTPUT_NOW)
        self.zarr_path = FileEdit(label="zarr path", mode="w", filter="*.zarr")
        self.overwrite = CheckBox(text="replace a finished store (else resume an unfinished one)", value=False)
        self.background = CheckBox(
            text="compute viewed tiles in the background (turns on napari's asynchronous rendering)", value=True
        )
        self.background.tooltip = (
            "Without it napari computes each newly viewed region on the GUI thread and the viewer "
            "freezes while it does. The setting is napari's Preferences > Experimental > "
            "'Render Images Asynchronously'."
        )
        self.preview = CheckBox(text="displayed slice only (quick preview)", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(label="status", value="ready")
        self.extend(
            [
                self.weights,
                self.weights_file,
                self.device,
                self.device_label,
                self.advanced,
                self.tile,
                self.halo,
                self.blend,
                self.precision,
                self.normalisation,
                self.tta,
                self.output,
                self.zarr_path,
                self.overwrite,
                self.background,
                self.preview,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        # "auto" reads better than 0 / -1 for the engine's own tile, halo and blend choice
        for spin in (self.tile, self.halo, self.blend):
            spin.native.setSpecialValueText("auto")
            spin.tooltip = "model pixels, multiples of 4; 'auto' lets the engine choose"
        # long messages wrap instead of widening the dock and squeezing the canvas
        from qtpy.QtWidgets import QSizePolicy

        for label in (self.device_label, self.status):
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Minimum)
        self.weights.changed.connect(self._update_visibility)
        self.output.changed.connect(self._update_visibility)
        self.advanced.changed.connect(self._update_visibility)
        self.device.changed.connect(lambda v: setattr(self.device_label, "value", device_status(v)))
        self.run_button.changed.connect(lambda: self())
        self.cancel_button.changed.connect(self.cancel)
        self.native.destroyed.connect(self._on_destroyed)
        self._update_visibility()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._on_layers_changed)
        self._on_layers_changed()

    # -- choices and visibility
    def _layer_choices(self, widget=None):
        from napari.layers import Image, Labels

        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, (Image, Labels))]

    def _on_layers_changed(self, event=None):
        self.reset_choices()
        # default to the selected (else topmost) image layer, the one a user most likely means
        from napari.layers import Image

        images = [lay for lay in self.viewer.layers if isinstance(lay, Image)]
        active = self.viewer.layers.selection.active
        first = active if isinstance(active, Image) else (images[-1] if images else None)
        for attr, _ in self.inputs:
            combo = getattr(self, attr)
            if combo.value is None and first is not None:
                combo.value = first

    def _scale_value(self) -> int | None:
        return None if self.scale is None else int(self.scale.value)

    def _refresh_weights(self, *_):
        current = self.weights.value
        self.weights.choices = weights_choices(self.task, self._scale_value())
        if current in (AUTO_WEIGHTS, LOCAL_FILE):
            self.weights.value = current

    def _update_visibility(self, *_):
        self.weights_file.visible = self.weights.value == LOCAL_FILE
        self.zarr_path.visible = self.overwrite.visible = self.output.value == OUTPUT_ZARR
        self.background.visible = self.output.value == OUTPUT_LAZY
        for w in (self.tile, self.halo, self.blend, self.precision, self.normalisation, self.tta):
            w.visible = self.advanced.value

    # -- messages
    def _say(self, text: str, level: str = "info") -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        self.last_status = text
        self.status.value = text if len(text) < 160 else text[:157] + "…"
        self.status.tooltip = text
        {"error": show_error, "warning": show_warning, "info": show_info}[level](f"MIRNet: {text}")

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
        )

    # -- running
    def __call__(self):
        """Start a run off the GUI thread; returns the napari worker (None if the choices are bad)."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

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
        self._pbar = progress(total=0, desc=f"MIRNet {self.preset.title.lower()}")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running…"
        self._started = time.perf_counter()
        worker = thread_worker(_work, start_thread=False)(job, self._relay.progressed.emit, self._cancel)
        worker.returned.connect(lambda result, job=job: self._on_returned(job, result))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
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
            self.status.value = "cancelling…"

    def _on_destroyed(self, *_) -> None:
        # closing the viewer deletes the dock: stop the run instead of computing a result nobody sees
        self._closed = True
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)
        if self._pbar is None:
            return
        if self._pbar.total != total:
            self._pbar.total = total
        self._pbar.update(done - self._pbar.n)

    def _on_returned(self, job: Job, result) -> None:
        kind, payload = result
        if self._closed:
            return
        if kind == "cancelled" or (self._cancel is not None and self._cancel.is_set()):
            self._say("cancelled; no layer was added", "info")
            return
        if kind == "error":
            self._say(payload, "error")
            return
        try:
            self.result_layer = self.viewer.add_image(payload, **job.layer_kwargs)
        except Exception as err:  # e.g. the viewer was closed during the run, or napari refused the data
            self._say(f"could not add the result layer: {type(err).__name__}: {err}", "error")
            return
        seconds = time.perf_counter() - self._started
        what = "lazy layer added" if job.output == OUTPUT_LAZY else f"done in {seconds:.1f} s"
        if job.output == OUTPUT_LAZY:
            what += _background_slicing(bool(self.background.value))
        self._say(f"{what}: {self.result_layer.name}", "info")

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self.worker = None
        self._cancel = None
        if not self._closed:
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


def _auto_weights(task: str, scale: int | None, rgb: bool) -> str | None:
    """What 'auto' weights will be for this input (as the engine chooses them)."""
    from .api import choose_weights

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
        return "error", f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)


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
    inputs = (("left", "left view"), ("right", "right view"))

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
                f"left and right views must have the same shape: {left.name!r} is {lshape}, "
                f"{right.name!r} is {rshape}"
            )
        if np.dtype(left.dtype) != np.dtype(right.dtype):
            raise InputError(f"left and right views must share a dtype ({left.dtype} vs {right.dtype})")
        return [left, right]
