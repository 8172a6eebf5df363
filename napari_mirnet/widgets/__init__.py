"""The napari widgets: one per restoration task, and one that fine-tunes a denoiser on a layer.

They only collect choices and show results; the library does the work. Drive one from a script::

    w = DenoiseWidget(viewer)
    w.image.value = viewer.layers["noisy"]
    w.weights.value = LOCAL_FILE
    w.weights_file.value = "my_model.pth"
    worker = w()  # starts the run off the GUI thread and returns the napari worker
    layer = w.run_blocking()  # or: run and wait (processing Qt events), return the new layer

Names are imported on first use: the fine-tuning child process
(:mod:`napari_mirnet.widgets.finetune_process`) and the napari writer (:func:`layer_axes`) import
this package without Qt.
"""

from __future__ import annotations

from ..lazy import lazy_names

#: public name -> the submodule that defines it
_WHERE = {
    "AUTO_WEIGHTS": "choices",
    "LOCAL_FILE": "choices",
    "device_choices": "choices",
    "device_status": "choices",
    "finetuned_models": "choices",
    "weights_choices": "choices",
    "weights_note": "choices",
    "OUTPUT_LAZY": "job",
    "OUTPUT_NOW": "job",
    "OUTPUT_ZARR": "job",
    "PYRAMID_ABOVE": "job",
    "PYRAMID_TOP": "job",
    "Job": "job",
    "check_fits_in_memory": "job",
    "lazy_pyramid": "job",
    "run_job": "job",
    "InputError": "layers",
    "add_qc_layers": "layers",
    "check_image_layer": "layers",
    "displayed_index": "layers",
    "displayed_slice": "layers",
    "layer_axes": "layers",
    "layer_meta": "layers",
    "left_right_pair": "layers",
    "level0": "layers",
    "result_layer_kwargs": "layers",
    "progress_text": "worker",
    "share_dock_area": "qt_fixes",
    "TaskWidget": "task",
    "DefocusWidget": "task",
    "DenoiseWidget": "task",
    "EnhanceWidget": "task",
    "LowLightWidget": "task",
    "SuperResolutionWidget": "task",
    "FinetuneWidget": "finetune",
    "LossPlot": "loss_plot",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_names(__name__, {k: f".{v}" for k, v in _WHERE.items()})
