"""One progress-and-cancel protocol for restore, train and finetune: what a running job reports and how it is stopped.

A job (the engine's tile loop, the training loop) holds a :class:`Reporter`; it calls
:meth:`Reporter.report` as work is done and :meth:`Reporter.check` (or reads
:attr:`Reporter.cancelled`) between units of work. Front ends pass one callable that receives
:class:`Progress` values and a :class:`threading.Event` to cancel: the CLI renders them with tqdm
(:class:`Bar`), the widgets with napari's progress and their own bar, a script with any function.

Cancelling a restore raises :class:`Cancelled` (no output is marked complete). Cancelling a
training or fine-tuning run stops it like its budget ending: the checkpoint and the best model so
far are kept, and the result says ``stopped``.

This module imports nothing heavy: the CLI and the napari reader import it without torch.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Bar", "Cancelled", "Progress", "Reporter", "as_callback"]


class Cancelled(RuntimeError):
    """The run was cancelled through its ``cancel`` event; no output is marked complete."""


@dataclass(frozen=True)
class Progress:
    """One report of a running job.

    Attributes
    ----------
    job : str
        ``"restore"``, ``"train"`` or ``"finetune"``.
    stage : str
        ``"setup"`` (reading patches, checking the source model) or ``"run"`` (tiles or steps).
    done, total : int
        Units done and planned (``total`` may change: a resumed store runs only its missing tiles).
    unit : str
        ``"tile"``, ``"step"``, ``"patch"`` or ``"%"``.
    detail : object
        The job's own detail: the loss for training, a
        :class:`~napari_mirnet.training.FinetuneProgress` for fine-tuning, None for restore.
    note : str
        A short line for a bar's tail, e.g. ``"loss=0.0123, lr=1.00e-04, patch=64"``.
    """

    job: str
    stage: str
    done: int
    total: int
    unit: str
    detail: Any = None
    note: str = ""

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (0 while nothing is planned)."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.job} {self.stage}: {self.done}/{self.total} {self.unit}"


def _takes_two(fn: Callable) -> bool:
    """Whether ``fn`` is the older ``progress(done, total)`` form of a restore callback."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: the documented form
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is p.empty for p in params) >= 2


def as_callback(fn: Callable | None) -> Callable[[Progress], None] | None:
    """A callback of :class:`Progress` from what a user passed.

    ``restore(progress=...)`` has long taken ``progress(done, total)``; such a two-argument
    callable keeps working and is called with the counts.
    """
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"progress={fn!r} is not callable; pass a function that takes a Progress")
    if _takes_two(fn):
        return lambda p: fn(p.done, p.total)
    return fn


class Reporter:
    """The job's side of the protocol: report work done, stop when asked.

    Parameters
    ----------
    job : str
        The job's name in every :class:`Progress` (``"restore"``, ``"train"``, ``"finetune"``).
    callback : callable, optional
        Receives each :class:`Progress` (see :func:`as_callback` for the older restore form).
    cancel : threading.Event, optional
        Set it to stop the job.
    """

    def __init__(self, job: str, callback: Callable | None = None, cancel: threading.Event | None = None):
        self.job = job
        self.callback = as_callback(callback)
        self.cancel = cancel
        self.last: Progress | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the cancel event is set."""
        return self.cancel is not None and self.cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the cancel event is set."""
        if self.cancelled:
            raise Cancelled(f"{self.job} cancelled")

    def report(
        self, done: int, total: int, *, stage: str = "run", unit: str = "tile", detail: Any = None, note: str = ""
    ) -> None:
        """Send one :class:`Progress` to the callback (if any)."""
        self.last = Progress(self.job, stage, int(done), int(total), unit, detail, note)
        if self.callback is not None:
            self.callback(self.last)


class Bar:
    """A tqdm bar that renders :class:`Progress` values: the CLI's renderer, usable as a callback.

    One bar per stage: a new stage (set-up, then the run) closes the previous bar and opens the next.
    Create it before the job starts, so that its clock counts from the real start.
    """

    def __init__(self, desc: str, *, file=None, total: int | None = None, unit: str = "tile", initial: int = 0):
        self.desc, self.file = desc, file if file is not None else sys.stderr
        self._bar = None
        self._stage = None
        if total is not None:
            self._open("run", total, unit, initial)

    def _open(self, stage: str, total: int, unit: str, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        if self._bar is not None:
            self._bar.close()
        desc = self.desc if stage == "run" else f"{self.desc} ({stage})"
        self._bar = tqdm(desc=desc, total=total, unit=unit, initial=initial, file=self.file, dynamic_ncols=True)
        self._stage = stage

    def __call__(self, p: Progress) -> None:
        if self._bar is None or p.stage != self._stage:
            self._open(p.stage, p.total, p.unit)
        bar = self._bar
        if bar.total != p.total:  # a resumed store: only its missing tiles run
            bar.total = p.total
        if p.note:
            bar.set_postfix_str(p.note, refresh=False)
        bar.update(p.done - bar.n)

    def close(self) -> None:
        """Close the bar (safe to call twice)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
