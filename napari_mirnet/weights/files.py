"""Weights files on disk: which files in a folder are models, SHA-256 records of downloads, caches keyed by file identity.

A folder's models are its checkpoint files (``.pth`` and the other checkpoint suffixes), never a
fine-tuning run's resume file ``NAME.pth.state.pth`` nor a download record: one rule for every list
of models (:func:`checkpoint_files`, :func:`is_model_file`).

A download's SHA-256 is recorded beside it at download time (``<file>.sha256``, in the format of
``sha256sum``) and every later use checks the file against that record: a cached file that was
truncated, damaged or replaced since is refused instead of being used as if it were the download.

Caches of things read from a file (models, metadata) are keyed by the file's identity, (device,
inode, size, mtime, ctime), so that a file replaced or rewritten on disk is read again. A file
changed within the file system's timestamp resolution of the moment it was looked at could keep
the same identity; such a "racy" entry is checked by its SHA-256 instead until it is old enough
(the rule git uses for its index).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RESUME_SUFFIX",
    "FileCache",
    "checkpoint_files",
    "file_identity",
    "file_sha256",
    "is_model_file",
    "read_record",
    "record_path",
    "workers_missing",
    "write_record",
]

T = TypeVar("T")

#: A file modified this close to the moment its identity was taken may change again without its
#: identity changing: 2 s covers FAT's and SMB's timestamp steps, and some clock skew of a file server.
RACY_NS = 3_000_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: What a checkpoint file's name may end with.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
#: A fine-tuning run's resumable state (optimizer and all) is saved as ``NAME.pth`` + this: not a model.
RESUME_SUFFIX = ".state.pth"


# ----------------------------------------------------------------------------- models in a folder
def is_model_file(name: str | os.PathLike) -> bool:
    """Whether a file name is a model's: a checkpoint suffix, and not a resume file (``NAME.pth.state.pth``).

    Only the name is looked at, not the file.
    """
    p = Path(name)
    return p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.lower().endswith(RESUME_SUFFIX)


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The model files in a folder, sorted: ``.pth`` and the other checkpoint suffixes.

    A fine-tuning run's resume file (``NAME.pth.state.pth``: optimizer state, not a model to
    restore with) and download records are not listed.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to list (not recursively).

    Returns
    -------
    list of Path
        Regular files (or links to them); an empty list for a missing folder.
    """
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(q for q in p.iterdir() if is_model_file(q.name) and q.is_file())


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> tuple[int, ...]:
    """(device, inode, size, mtime, ctime) of the file a path leads to (through symbolic links).

    A replaced file (a new inode), a rewritten one (size, mtime) and one touched back to its old
    mtime (ctime, which no user can set) all get a new identity.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _racy(identity: tuple[int, ...], seen_ns: int) -> bool:
    return max(identity[3], identity[4]) > seen_ns - RACY_NS


def _same_file(path: str, sha256: str) -> bool:
    # runs on a worker: False for a file that is missing, unreadable or holds other bytes
    try:
        return file_sha256(os.path.expanduser(path)) == sha256
    except OSError:
        return False


def workers_missing(client, path: str, sha256: str) -> list[str]:
    """The addresses of the dask.distributed workers of ``client`` that do not have ``path`` with ``sha256``."""
    seen = client.run(_same_file, path, sha256)
    return sorted(addr for addr, ok in seen.items() if not ok)


# ----------------------------------------------------------------------------- download records
def record_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of a downloaded file is recorded: ``<file>.sha256`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def read_record(path: str | os.PathLike) -> str | None:
    """The SHA-256 recorded for a downloaded file, or None where none was (a file copied in by hand).

    Raises
    ------
    ValueError
        When the record exists but cannot be read or holds no SHA-256; the message names it.
    """
    rec = record_path(path)
    try:
        text = rec.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"cannot read the SHA-256 record {rec}: {err.strerror or err}") from err
    digest = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"the SHA-256 record {rec} is damaged (it holds no SHA-256)")
    return digest


def write_record(path: str | os.PathLike, digest: str, mode: int) -> None:
    """Record ``digest`` for ``path`` atomically (a temporary file renamed into place) with ``mode``."""
    rec = record_path(path)
    tmp = rec.with_name(f".{rec.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        # the sha256sum format: `sha256sum -c` checks the file with it
        tmp.write_text(f"{digest}  {Path(path).name}\n", encoding="ascii")
        os.chmod(tmp, mode)
        os.replace(tmp, rec)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- content-keyed cache
@dataclass(frozen=True)
class _Entry(Generic[T]):
    identity: tuple[int, ...]
    value: T
    sha256: str
    racy: bool


class FileCache(Generic[T]):
    """Values read from files, reused while the file is unchanged and read again when it changed.

    ``get(key, path, load)`` returns the cached value for ``key`` when ``path`` still has the
    identity it had when the value was loaded (and, for a racy entry, the same SHA-256); otherwise
    it calls ``load()``, which returns ``(value, sha256 of the bytes it read)``. Thread-safe: one
    load at a time.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key: Hashable, path: str | os.PathLike, load: Callable[[], tuple[T, str]]) -> T:
        with self._lock:
            seen = time.time_ns()
            identity = file_identity(path)
            entry = self._entries.get(key)
            if entry is not None and entry.identity == identity:
                if not entry.racy:
                    return entry.value
                if file_sha256(path) == entry.sha256:
                    self._entries[key] = _Entry(identity, entry.value, entry.sha256, _racy(identity, seen))
                    return entry.value
            # the identity is taken before the file is read: a change while it is read gives a
            # newer identity, so the next call reads the file again
            value, sha256 = load()
            self._entries[key] = _Entry(identity, value, sha256, _racy(identity, seen))
            return value
