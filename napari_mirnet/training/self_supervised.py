"""Self-supervised fine-tuning: adapt a trained MIRNet-v2 denoiser to your own noisy data, no clean images.

The default objective is neighbour sub-sampling (Huang et al., *Neighbor2Neighbor*, CVPR 2021): two
half-resolution images are drawn from each noisy patch by taking, in every 2x2 cell, one pixel and one
of its direct neighbours. Their noise is independent where the noise is independent from pixel to
pixel, so the model learns to map one to the other and can only predict the shared signal. A
consistency term ties the half-resolution outputs to the model's full-resolution output. Where the
noise is correlated along rows (or columns), only pixel pairs across the other direction are used
(``pairs='auto'`` measures this on the data). Where it is correlated in both directions,
``objective='auto'`` (the default) trains on recorrupted pairs instead (Pang et al., CVPR 2021): the
patch plus and minus a draw of the measured noise (level and correlation), whose two noises are
uncorrelated, at full resolution. ``objective='blindspot'`` is the alternative (Noise2Void /
Noise2Self-style input masking); ``docs/finetune.md`` says why it is not the default.

Patches are read region by region from numpy, dask or zarr arrays and tif/zarr/png files, so inputs of
any size are never loaded whole. The run ends after ``minutes`` or ``steps``; the best model so far
(by a self-supervised loss on held-out patches) is written to ``out`` every time it improves, so a
cancelled or killed run leaves the best model behind; the state to resume from is kept in the user
cache (see :func:`state_path`), not beside the model. The ``minutes`` budget counts the whole run from
the call: reading patches, measuring the noise, loading and validating the model, and training.

The output is a model file in the official layout, ``{'params': fp16 state dict, 'meta': {...}}``,
that ``restore(..., weights=out)``, the CLI and the napari widgets load like any other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..weights import locate
from ..weights.catalogue import models_dir
from .config import OBJECTIVES, FinetuneConfig
from .finetune_run import FinetuneProgress, FinetuneResult, _FinetuneRun, process_clock
from .loop import reporter_for
from .output import check_output, state_path
from .patches import _SetupClock, noise_correlation, open_urls

__all__ = [
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneProgress",
    "OBJECTIVES",
    "state_path",
    "models_dir",
    "noise_correlation",
]


def finetune(
    data,
    out: str | os.PathLike,
    weights: str | os.PathLike = "small-denoise-gray",
    *,
    minutes: float | None = 10.0,
    steps: int | None = None,
    axes: str | None = None,
    normalisation: str = "auto",
    nodata: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config: FinetuneConfig | None = None,
    callback: Callable[[FinetuneProgress], bool | None] | None = None,
    progress: bool | Callable = False,
    setup_callback: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    storage_options: dict | None = None,
    **options,
) -> FinetuneResult:
    """Fine-tune a MIRNet-v2 denoiser on noisy images alone (self-supervised) and save the best model.

    Parameters
    ----------
    data : array, path, URL, or list of these
        Noisy images: numpy, dask or zarr arrays, tif/png/zarr files, folders of them, or URLs
        (``s3://``, ``https://`` ...; opened with ``storage_options``). Read patch by patch, so they
        may be larger than memory.
    out : path
        The model file to write (``.pth``), a local path; the resumable state goes to the user cache
        (:func:`state_path`), not beside it.
    weights : str or path
        The model to start from: a shipped name (default ``small-denoise-gray``), a file or a URL.
    minutes, steps : float, int
        Budget: the run ends at whichever comes first (``minutes=None`` for steps only). ``minutes``
        counts the whole call, set-up included (reading patches, measuring the noise, validating the
        source model): set-up samples fewer patches when it would use more than a third of it, and
        the run may overrun by the step or validation under way when the time is up.
    axes : str, optional
        Axes of array inputs, e.g. ``"ZYX"``, ``"TYX"``, ``"YXC"`` (default: from the file or shape).
    normalisation : {"auto", "fixed", "percentile"}
        Intensity mapping, as in :func:`napari_mirnet.restore`; restore with the same setting.
    nodata : float, optional
        The value that marks missing pixels (default: each file's nodata; NaN in float images
        always), as in :func:`napari_mirnet.restore`: left out of the intensity mapping, and no
        patch with any is learnt from.
    resume : bool
        Continue the run saved for ``out`` (same data and settings; a cancelled, interrupted or
        finished run); ``minutes``/``steps`` are the whole run's budget.
    overwrite : bool
        Replace an existing ``out`` (and its saved run). Without it (or ``resume``) an existing ``out``
        is refused. An input image or the source model is never replaced.
    config : FinetuneConfig, optional
        All other settings; keyword ``options`` (``lr=``, ``patch=``, ``objective=`` ...) override it.
    callback : callable, optional
        Called with a :class:`FinetuneProgress` after every step; returning ``False`` stops the run,
        keeping the best model so far.
    progress : bool or callable
        True shows a progress bar; a callable receives a :class:`napari_mirnet.progress.Progress`
        as set-up reads each patch (stage ``"setup"``) and after every step (stage ``"run"``, in
        percent of the budget, its ``detail`` the :class:`FinetuneProgress`).
    setup_callback : callable, optional
        Called with ``(patches_read, patches_to_read)`` as set-up reads each patch.
    cancel : threading.Event, optional
        Set it to stop the run as a callback returning False does: the best model so far is kept
        and the result says ``stopped``.
    storage_options : dict, optional
        fsspec options for URL inputs (``{"client_kwargs": {"endpoint_url": ...}, "anon": True}``);
        never recorded in the model or shown in a message.

    Returns
    -------
    FinetuneResult
        ``unchanged`` says why, when the saved model is the source model unchanged.

    Raises
    ------
    ValueError
        Bad settings or data, or ``out`` names an input image or the source model.
    napari_mirnet.io.OutputExistsError
        ``out`` exists and neither ``overwrite`` nor ``resume`` was given.
    """
    cfg = _finetune_config(config, options, minutes, steps)
    clock = process_clock(cfg.clock)
    t_call = clock()  # the budget counts from here: set-up is part of the run
    reporter, bar = reporter_for("finetune", progress, cancel, desc="fine-tune", unit="%")

    def setup_report(done: int, total: int) -> None:
        reporter.report(done, total, stage="setup", unit="patch")
        if setup_callback is not None:
            setup_callback(done, total)

    from ..io.urls import is_url, redact

    if is_url(out):
        raise ValueError(
            f"out={redact(str(out))!r}: the fine-tuned model is written to a local file; give a local path "
            "(and copy it to the store afterwards if you need it there)"
        )
    try:
        out = Path(out)
        source_path = locate(weights)
        # before anything is read or written: a model file must never land on the data or the model it came from
        check_output(out, data, source_path, overwrite=overwrite, resume=resume)
        setup = _SetupClock(clock, t_call, minutes, setup_report)
        data = open_urls(data, storage_options)  # URL inputs read lazily, chunk by chunk
        run = _FinetuneRun.create(
            data, out, weights, source_path, cfg, minutes, steps, axes, normalisation, setup, nodata
        )
        run.t0, run.callback = t_call, callback
        if resume:
            run.resume()
        else:
            run.validate_source()
            run.save_best(0, 0.0)  # the source model is the best so far: a cancel right away keeps it
            run.save_state(0, run.elapsed())  # and the saved run is this one's, not an earlier run's at the same out
        run.setup_s = run.elapsed() - run.elapsed0
        try:
            stopped = run.run(reporter)
        except KeyboardInterrupt:
            run.save_state(run.step, run.elapsed())
            raise
    finally:
        if bar is not None:
            bar.close()
    return run.finish(stopped)


def _finetune_config(config: FinetuneConfig | None, options: dict, minutes, steps) -> FinetuneConfig:
    """The run's settings (``options`` override ``config``), with the budget checked."""
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        config = FinetuneConfig(**{**asdict(config), **options})
    if minutes is None and steps is None:
        raise ValueError("give a budget: minutes=..., steps=..., or both")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return config
