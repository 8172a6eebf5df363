"""glibc's heap thresholds during a CPU run: freed activations are reused, not page-faulted afresh.

A CPU forward allocates and frees feature maps of several MiB (10.6 MB each for a 408^2 window of
the small model). With glibc's default, self-adjusting thresholds the freed top of the heap goes
back to the kernel after each forward, so the next one touches fresh pages: about 41,000 minor page
faults (160 MiB) per 408^2 forward, a fifth of its time on a 2-core VM (docs/engine.md). During a
local CPU run the thresholds are raised so that the heap is kept and reused; when the last run
ends, the thresholds are left where glibc's own adjustment would put them after freeing a 32 MiB
block and the free memory is handed back (``malloc_trim``). ``NAPARI_MIRNET_MALLOC=default`` leaves
glibc alone; other C libraries (macOS, Windows, musl) are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): maps up to this size come from the heap
_MMAP = 32 * 2**20
# during a run the heap is not trimmed until this much is free at its top
_TRIM_IN_RUN = 2**30
# after: glibc's own setting once it has freed a block of _MMAP bytes (twice the mmap threshold)
_TRIM_AFTER = 2 * _MMAP

_lock = threading.Lock()
_active = 0


def _libc():
    """glibc's C library, or None (another C library, or turned off by the environment)."""
    if os.environ.get("NAPARI_MIRNET_MALLOC", "").lower() == "default":
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def keep_freed_memory():
    """Keep freed heap memory for reuse while the block runs (nested and concurrent runs share it)."""
    global _active
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        if _active == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_IN_RUN)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
                libc.malloc_trim(0)
