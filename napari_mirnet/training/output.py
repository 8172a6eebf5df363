"""Where a fine-tuning run may write: never over an input image or the source model, and over an
existing file only when the caller asked to replace it (or to resume the run saved there)."""

from __future__ import annotations

import os
from pathlib import Path

from ..io.errors import OutputExistsError

__all__ = ["check_output", "state_path"]


def state_path(out: str | os.PathLike) -> Path:
    """Where the resumable state of the run that writes ``out`` is kept.

    Not next to the model: the state (the optimiser's moments, the raw and averaged weights, some
    ten times the model's size) lives in the per-user cache (``$NAPARI_MIRNET_CACHE/finetune-runs``),
    named by the model's absolute path, so the user's model folder holds only models, and a finished
    run can still be extended with ``resume=True`` and a larger budget.
    """
    import hashlib

    from ..weights import cache_dir

    p = Path(os.path.abspath(Path(out).expanduser()))
    key = hashlib.sha256(str(p).encode()).hexdigest()[:16]
    return cache_dir() / "finetune-runs" / f"{p.stem}-{key}.state.pth"


def _input_paths(data) -> list[Path]:
    """The image files and stores ``data`` names (arrays name none); a folder counts as the images it holds."""
    from ..io import list_inputs

    items = data if isinstance(data, (list, tuple)) else [data]
    found = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            try:
                found += list_inputs([item])
            except (OSError, ValueError):
                found.append(Path(item))  # reading the data reports a missing input in its own words
    return found


def check_output(out: Path, data, source: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse an ``out`` (or its ``<out>.state.pth``) that would destroy data, before anything is written.

    Raises
    ------
    ValueError
        ``out`` is an input image, lies inside an input zarr store, is the source model, or is a folder
        (``overwrite`` never replaces these).
    OutputExistsError
        ``out`` or its saved run exists and neither ``overwrite`` nor ``resume`` was given.
    """
    from ..io import OutputError, check_distinct

    inputs = _input_paths(data)
    for target in (out, state_path(out)):
        # one rule for every writer: the same file under another name, or a place inside an input store
        for p in inputs:
            try:
                check_distinct([p], target)
            except OutputError:
                raise ValueError(
                    f"out={str(out)!r} is the input image {p}: writing the model there would destroy it; "
                    "choose another file for the model"
                ) from None
        try:
            check_distinct([source], target)
        except OutputError:
            raise ValueError(
                f"out={str(out)!r} is the model the run starts from ({source}): writing there would replace it; "
                "choose another file for the fine-tuned model"
            ) from None
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give a model file name, e.g. {out / 'finetuned.pth'}")
    if resume or overwrite:
        return
    existing = [str(p) for p in (out, state_path(out)) if p.exists()]
    if existing:
        raise OutputExistsError(
            f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}: out={str(out)!r} is taken. Pass "
            "resume=True to continue the run saved there, overwrite=True to replace it, or choose another out",
            matches=False,
        )
