"""Fine-tuning for the napari widget, in a Python process of its own.

Why a process: PyTorch's optimisers, ``torch.compile`` and every function torch wraps with
``torch._dynamo`` import the compiler stack on first use, and with the CUDA build that loads triton's
LLVM. In a process where Qt's OpenGL already loaded Mesa's LLVM (llvmpipe: Xvfb, VNC, remote and virtual
desktops) that crashes the process with a segmentation fault, napari and the user's unsaved work with
it. No list of import paths to avoid can be complete, so the training runs where no OpenGL is loaded.
This module imports no Qt and no napari (``napari_mirnet.widgets`` imports its Qt modules lazily),
so the child loads neither.

The process is ``python -m napari_mirnet.widgets.finetune_process`` (not :mod:`multiprocessing`,
whose "spawn" re-runs the parent's ``__main__``: a user's napari script would open a second
viewer). Parent and child exchange pickles over the child's stdin and a private copy of its stdout; what libraries print
in the child goes to its stderr, which is the parent's. The child stops after its current step when
asked, or when its stdin closes (the parent exited), and keeps the best model so far either way.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator

__all__ = ["FinetuneProcess", "preview"]

#: what the parent sends: the job, then possibly a request to stop
_CANCEL = ("cancel",)


class FinetuneProcess:
    """One fine-tuning run in a child process: :meth:`messages` yields what it reports.

    Parameters
    ----------
    job : dict
        ``data``, ``out``, ``weights`` and ``kwargs`` for :func:`napari_mirnet.finetune`, and
        ``preview``: ``(imap, plane)`` to show the model's output on (or None).

    Raises
    ------
    TypeError
        The data cannot be handed to another process (it cannot be pickled).
    """

    def __init__(self, job: dict):
        try:
            self._payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:
            raise TypeError(
                f"the layer's data ({type(job.get('data')).__name__}) cannot be handed to the training process "
                f"({err}); save the layer as .tif or .zarr, open that file, and fine-tune on it"
            ) from err
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        self._lock = threading.Lock()  # one writer on the child's stdin at a time
        self._sent = False
        self._cancel = threading.Event()

    def _send_job(self) -> None:
        # off the GUI thread: a job larger than the pipe's buffer blocks until the child, still importing
        # torch, reads it
        with self._lock:
            try:
                self.proc.stdin.write(self._payload)
                self.proc.stdin.flush()
            except OSError:
                pass  # the child is gone already: messages() says so
            self._sent, self._payload = True, b""
        if self._cancel.is_set():
            self._send_cancel()

    def _send_cancel(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # the job is being sent; _send_job sends the request after it (never block the GUI)
        try:
            if self._sent:
                pickle.dump(_CANCEL, self.proc.stdin)
                self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # it has finished already
        finally:
            self._lock.release()

    def messages(self) -> Iterator[tuple]:
        """Send the job, then yield the child's reports, ending with ``("done", FinetuneResult)`` or
        ``("error", exception)``. Run it in a worker thread."""
        self._send_job()
        while True:
            try:
                item = pickle.load(self.proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                code = self.proc.wait()
                yield (
                    "error",
                    RuntimeError(
                        f"the fine-tuning process ended without a result (exit code {code}); the terminal that "
                        "started napari shows why. The best model so far, if any, is kept."
                    ),
                )
                return
            yield item
            if item[0] in ("done", "error"):
                self.proc.wait()
                return

    def cancel(self) -> None:
        """Ask the child to stop after its current step (it then saves the best model so far)."""
        self._cancel.set()
        self._send_cancel()

    def is_alive(self) -> bool:
        return self.proc.poll() is None


def preview(model, imap, plane):
    """The model's output on a (Y, X) or (Y, X, C) crop, in the crop's own intensities."""
    import numpy as np
    import torch

    x = imap.forward(plane)
    chw = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    if model.config.in_channels == 3 and chw.shape[0] == 1:
        chw = np.repeat(chw, 3, 0)
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(chw[:, None] if model.config.in_channels == 1 else chw[None]))
        y = model(t.to(next(model.parameters()).device)).float().cpu().numpy()
    y = y[:, 0] if model.config.in_channels == 1 else y[0]
    y = y[0] if plane.ndim == 2 else np.moveaxis(y[: plane.shape[-1]], 0, -1)
    return imap.inverse(y)


# ------------------------------------------------------------------------------------------ the child
def _sendable(err: BaseException) -> BaseException:
    """``err`` if the parent can unpickle it, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _callback(send, cancel: threading.Event, preview_input):
    def callback(info):
        send(("step", info.step, info.loss, info.fraction))
        if info.val_loss is not None:
            send(("val", info.step, info.val_loss, info.best_step, info.best_val))
            if info.model is not None and preview_input is not None:
                try:
                    send(("preview", preview(info.model, *preview_input)))
                except Exception as err:  # a failed preview must not stop the training
                    send(("note", f"preview failed: {err}"))
        return not cancel.is_set()

    return callback


def _listen(rx, cancel: threading.Event) -> None:
    """Stop on a request from the parent, or when the parent is gone (its end of the pipe closed)."""
    try:
        while pickle.load(rx) != _CANCEL:
            pass
    except Exception:
        pass
    cancel.set()


def main() -> int:
    # our messages keep fd 1's pipe to themselves; anything printed goes to stderr instead
    tx = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    rx = sys.stdin.buffer
    lock = threading.Lock()

    def send(item) -> None:
        with lock:
            try:
                pickle.dump(item, tx, protocol=pickle.HIGHEST_PROTOCOL)
                tx.flush()
            except OSError:
                pass  # the parent is gone; the run still ends cleanly and keeps its best model

    try:
        job = pickle.load(rx)
    except EOFError:
        return 0  # the parent went away before it sent the job
    cancel = threading.Event()
    threading.Thread(target=_listen, args=(rx, cancel), daemon=True).start()
    from ..training import finetune

    try:
        callback = _callback(send, cancel, job.get("preview"))

        def setup_callback(done: int, total: int) -> None:
            send(("setup", done, total))

        result = finetune(
            job["data"], job["out"], job["weights"], callback=callback, setup_callback=setup_callback, **job["kwargs"]
        )
        send(("done", result))
    except Exception as err:  # reported in the widget
        send(("error", _sendable(err)))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # not sys.exit: the thread that waits on stdin for a cancel holds its lock, and the interpreter's
    # shutdown would abort on it; everything is written (os.replace) and flushed by now
    os._exit(code)
