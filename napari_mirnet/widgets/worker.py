"""One worker pattern for the widgets' runs: a job off the GUI thread, its progress on it, cancel by an Event.

A job is a function ``body(report, cancel)`` run in a napari ``thread_worker``: it calls
``report`` with :class:`napari_mirnet.progress.Progress` values, which a :class:`Relay` carries to
the GUI thread (a queued Qt connection, in order, before the worker's ``finished``); it stops when
the :class:`threading.Event` ``cancel`` is set. The restore of a task widget and the fine-tuning
of the fine-tune widget (whose body reads its child process) both run as a :class:`BackgroundRun`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari.utils import cancelable_progress
from qtpy.QtCore import QObject, Signal

from ..progress import Progress

__all__ = ["BackgroundRun", "Relay", "progress_text"]


class Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued Qt connections).

    ``reported`` carries every :class:`~napari_mirnet.progress.Progress`; ``progressed`` its
    ``(done, total)``, for the widgets' bars.
    """

    reported = Signal(object)
    progressed = Signal(int, int)

    def report(self, p: Progress) -> None:
        """Send one report to the GUI thread (call it from any thread)."""
        self.reported.emit(p)
        self.progressed.emit(p.done, p.total)


class BackgroundRun:
    """A job running in a napari ``thread_worker``, with its cancel event.

    Parameters
    ----------
    body : callable
        ``body(report, cancel)``, run off the GUI thread; its return value goes to ``on_returned``.
    relay : Relay
        Carries the job's reports to the GUI thread (the widget connects to its signals).
    on_returned, on_finished : callable, optional
        Called on the GUI thread with the body's return value, and after the run whatever happened.
    on_cancel : callable, optional
        Called (on the GUI thread) when :meth:`cancel` is, besides setting the event: for a job
        that must be told at once (a child process).
    title : str, optional
        Also show the run in napari's activity dock under this title, with a cancel button.
    """

    def __init__(
        self,
        body: Callable,
        relay: Relay,
        *,
        on_returned: Callable | None = None,
        on_finished: Callable | None = None,
        on_cancel: Callable | None = None,
        title: str | None = None,
    ):
        from napari.qt.threading import thread_worker

        self.cancel_event = threading.Event()
        self._on_cancel = on_cancel
        self.worker = thread_worker(body, start_thread=False)(relay.report, self.cancel_event)
        if on_returned is not None:
            self.worker.returned.connect(on_returned)
        self._relay, self._title, self._bar, self._stage = relay, title, None, None
        if title is not None:
            relay.reported.connect(self._render)
            self.worker.finished.connect(self._finish)
        if on_finished is not None:
            self.worker.finished.connect(on_finished)

    def start(self) -> BackgroundRun:
        """Start the worker thread (and open the activity dock's bar first); returns itself."""
        if self._title is not None:
            # opened here, before the worker runs: napari processes Qt events while it builds a bar,
            # which inside a slot of the worker's signals could run the worker's end (and its
            # deletion) in the middle of that slot
            self._bar = _ActivityBar(total=0, desc=self._title, cancel_callback=self.cancel)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop (it ends at its next check of the event)."""
        self.cancel_event.set()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self.cancel_event.is_set()

    def _render(self, p: Progress) -> None:
        """napari's activity dock: the bar opened at the start follows the stages (set-up, then the run)."""
        bar = self._bar
        if bar is None:  # closed: the run has ended
            return
        if p.stage != self._stage:
            desc = self._title if p.stage == "run" else f"{self._title} ({p.stage})"
            if self._stage is not None or desc != self._title:  # the bar opened with the title
                bar.set_description(desc)
            self._stage = p.stage
            bar.n = 0
        if bar.total != p.total:  # a new stage, or a resumed store: only its missing tiles run
            bar.total = p.total
        bar.update(p.done - bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _finish(self) -> None:
        self._close_bar()
        try:
            self._relay.reported.disconnect(self._render)
        except (RuntimeError, TypeError):  # disconnected already, or the widget is gone
            pass


class _ActivityBar(cancelable_progress):
    """A bar in napari's activity dock whose cancel button stops the run at once.

    napari calls ``cancel_callback`` only while it iterates over an iterable; a run reports its
    counts instead, so the button's ``cancel`` calls it here.
    """

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


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
