"""One writer per output store (a lock file beside it), and never an output over an input."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError, StoreLocked

__all__ = ["check_distinct", "store_lock"]


def check_distinct(inputs, out) -> None:
    """Refuse an output that is an input, lies inside one, or holds one (paths resolved first).

    Replacing the output deletes it before the input is read: writing a store into itself would
    leave a store of zeros marked complete.
    """
    o = Path(out).expanduser().resolve()
    for raw in inputs:
        if raw is None:
            continue
        i = Path(raw).expanduser().resolve()
        if i == o:
            why = f"is the input {raw}"
        elif o in i.parents:
            why = f"holds the input {raw}"
        elif i in o.parents:
            why = f"lies inside the input {raw}"
        else:
            continue
        raise OutputError(
            f"output {out} {why}: writing it would destroy the input before it is read; choose another output path"
        )


def _lock_path(p: Path) -> Path:
    return p.parent / f".{p.name}.lock"


class _StoreLock:
    """An exclusive lock on an output store for one run, across processes and threads.

    A file next to the store (``.<name>.lock``, so that replacing the store cannot delete it)
    locked with ``flock``; it holds the writer's pid, host and start time for the error message.
    The kernel drops the lock when its process dies, so a file left by a crash does not block.
    Without ``fcntl`` (Windows) the file is created with O_EXCL and a crash leaves it behind.
    """

    def __init__(self, path):
        self.path = Path(path).absolute()
        self.file = _lock_path(self.path)
        self.fd: int | None = None

    def _refuse(self) -> None:
        try:
            holder = self.file.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise StoreLocked(
            f"output {self.path} is being written by another run ({holder}); wait for it to finish or stop "
            f"it, or choose another output. If no run is writing it any more, delete {self.file} and re-run."
        )

    def acquire(self) -> None:
        import socket
        import time

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create output {self.path}: {err.strerror or err} (is the location writable?)"
            ) from err
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        while True:
            flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0)
            try:
                fd = os.open(self.file, flags, 0o666)
            except FileExistsError:
                self._refuse()
            except OSError as err:
                raise OutputError(
                    f"cannot create output {self.path}: {err.strerror or err} (is the location writable?)"
                ) from err
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    self._refuse()
                except OSError:
                    pass  # no locks on this file system (some NFS): go on unlocked, as before
                # the previous holder unlinks the file on release: a lock on a stale inode is none
                try:
                    same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(
                fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
            )
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.file.unlink()  # while still locked, so that a waiting opener sees a new inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def store_lock(path) -> _StoreLock:
    """``with store_lock(out): ...`` holds the output store for one run; see :class:`_StoreLock`."""
    return _StoreLock(path)
