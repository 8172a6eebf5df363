"""One writer per output store (a lock file beside it; a lease object at a URL), and never an output over an input."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError, StoreLocked
from .lease import Lease, NoLease
from .location import is_url, same_or_within
from .urls import redact

__all__ = ["check_distinct", "file_identity", "same_file", "store_lock"]


def file_identity(path) -> tuple:
    """What ``path`` names on disk: its device and inode where it exists, else its resolved path.

    Two names of one file or folder (symbolic and hard links, ``..``, relative paths, a bind
    mount, another case on a case-insensitive disk) have the same identity, as
    :func:`os.path.samefile` would say; a path not there yet is known by where it resolves to.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except (OSError, ValueError):
        return ("path", str(p.resolve()))
    return ("inode", st.st_dev, st.st_ino)


def same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (see :func:`file_identity`)."""
    return file_identity(a) == file_identity(b)


def _within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` lies inside the folder ``outer`` (resolved paths; ``outer`` by identity too)."""
    outer_id = file_identity(outer)
    return any(p == outer or (outer_id[0] == "inode" and file_identity(p) == outer_id) for p in inner.parents)


def _url_overlap(raw: str, out: str) -> str | None:
    """How the URLs of an input and the output overlap (compared as written: no request is made)."""
    if same_or_within(raw, out) == "same":
        return f"is the input {raw}"
    if same_or_within(raw, out) == "inside":
        return f"holds the input {raw}"
    if same_or_within(out, raw) == "inside":
        return f"lies inside the input {raw}"
    return None


def check_distinct(inputs, out, storage_options: dict | None = None) -> None:
    """Refuse an output that is an input, lies inside one, or holds one (paths resolved first;
    one file under two names counts as one, see :func:`file_identity`; URLs compared by service,
    bucket and key, without credentials or query, and without any request).

    Replacing the output deletes it before the input is read: writing a store into itself would
    leave a store of zeros marked complete. ``storage_options`` is accepted for the one signature
    of the chain and not needed.
    """
    if is_url(out):
        for raw in inputs:
            why = _url_overlap(raw, out) if is_url(raw) else None  # a local input is never a URL's object
            if why:
                raise OutputError(
                    f"output {redact(out)} {why.replace(raw, redact(raw))}: writing it would destroy the input "
                    "before it is read; choose another output URL"
                )
        return
    o = Path(out).expanduser().resolve()
    for raw in inputs:
        if raw is None or is_url(raw):
            continue
        i = Path(raw).expanduser().resolve()
        if i == o or same_file(i, o):
            why = f"is the input {raw}"
        elif _within(i, o):
            why = f"holds the input {raw}"
        elif _within(o, i):
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

    def check(self) -> None:
        """Nothing to check: the kernel keeps the lock as long as the process lives."""

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def store_lock(path, storage_options: dict | None = None, lease: bool = True) -> _StoreLock | Lease | NoLease:
    """``with store_lock(out): ...`` holds the output store for one run: a lock file beside a local store
    (:class:`_StoreLock`), a lease object beside a store at a URL (:class:`.lease.Lease`; ``lease=False``
    writes without one, where the caller makes sure no other run writes the store). The held object's
    ``check()`` refuses to complete a store whose lease another run took over."""
    if is_url(path):
        return Lease(path, storage_options) if lease else NoLease()
    return _StoreLock(path)
