"""Retries for remote reads: one picklable wrapper for every array read from a URL.

A dropped connection, a timeout or a 5xx answer while a chunk is read is retried with bounded
exponential backoff (:data:`TRIES` tries, :data:`FIRST_DELAY` s doubling up to :data:`MAX_DELAY` s);
after the last try the error names the redacted URL and the region. Done here once, for zarr over
fsspec, tifffile over fsspec and GDAL alike, instead of in each library: aiohttp (fsspec's HTTP)
does not retry at all, s3fs retries some errors and GDAL others, each with its own bound, and
none names the region. GDAL's own retries are turned off (``io.urls.gdal_config``) so that the
bound is this one.
"""

from __future__ import annotations

import re
import time

import numpy as np

from . import chunk_cache

__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "TRIES",
    "RemoteReadError",
    "RetryArray",
    "describe",
    "error_text",
    "is_transient",
    "with_retries",
]

TRIES = 5
FIRST_DELAY = 0.5
MAX_DELAY = 8.0

# words of a passing failure in the messages of aiohttp, botocore/s3fs, curl (GDAL) and the OS
_TRANSIENT = re.compile(
    r"(HTTP|status|response code|error occurred)\D{0,8}(5\d\d|429)\b|timed? ?out|timeout|connection|"
    r"disconnect|reset by peer|broken pipe|temporar|SlowDown|ServiceUnavailable|InternalError|RequestTimeout|"
    r"payload|transfer closed|Empty reply|Recv failure|IReadBlock failed|TIFFRead\w+\(\) failed",
    re.IGNORECASE,
)


class RemoteReadError(OSError):
    """A remote read failed after every retry; the message names the redacted URL and the region."""


def is_transient(err: BaseException, _depth: int = 0) -> bool:
    """Whether ``err`` may pass on a second try (a dropped connection, a timeout, a 5xx), not a 404/403.

    The causes count too: rasterio says "Read failed. See previous exception" over GDAL's own error.
    """
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    if _depth > 4:
        return False
    if isinstance(err, FileNotFoundError) and cause is not None:
        # fsspec's HTTP file system calls any failure to learn a file's size "not found"
        return is_transient(cause, _depth + 1)
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(err, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if type(err).__module__.startswith("aiohttp") and type(err).__name__ in _AIOHTTP_PASSING:
        return True
    if _TRANSIENT.search(f"{type(err).__name__}: {err}"):
        return True
    return cause is not None and is_transient(cause, _depth + 1)


_AIOHTTP_PASSING = (
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ClientOSError",
    "ClientConnectorError",
    "ServerTimeoutError",
    "ConnectionTimeoutError",
    "SocketTimeoutError",
)


def with_retries(call, name: str, what: str, *, tries: int = 0, delay: float = 0.0, scrub=None):
    """``call()``, retried while it fails transiently; then :class:`RemoteReadError` naming ``name`` and ``what``.

    ``scrub`` maps an error text to one fit to show (without credentials). Non-transient errors
    (404, 403, a corrupt chunk) are raised at once.
    """
    tries = tries or TRIES
    wait = delay or FIRST_DELAY
    start = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == tries:
                detail = error_text(err)
                detail = scrub(detail) if scrub else detail
                raise RemoteReadError(
                    f"reading {name} failed at {what} after {tries} tries over {time.monotonic() - start:.1f} s "
                    f"({detail}); the server or the connection failed there: check that the URL is reachable "
                    "and run again (a resumable output continues where it stopped)"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, MAX_DELAY)
    raise AssertionError("unreachable")


def error_text(err: BaseException) -> str:
    """The error and its causes as one line (rasterio and fsspec put the real reason in the cause)."""
    texts, seen = [], 0
    while err is not None and seen < 5:
        status = getattr(err, "status", None)
        texts.append(f"{type(err).__name__}: {err}" + (f" (HTTP {status})" if isinstance(status, int) else ""))
        err, seen = err.__cause__ or (None if err.__suppress_context__ else err.__context__), seen + 1
    return "; ".join(texts)


def describe(key, shape: tuple) -> str:
    """A region as the user reads it: ``[0:512, 512:1024, :]`` (index ranges per axis)."""
    if not isinstance(key, tuple):
        key = (key,)
    parts = []
    for k, n in zip(key + (slice(None),) * (len(shape) - len(key)), shape):
        if isinstance(k, slice):
            a, b, _ = k.indices(n)
            parts.append(":" if (a, b) == (0, n) else f"{a}:{b}")
        elif k is Ellipsis:
            parts.append("...")
        else:
            parts.append(str(k) if np.ndim(k) == 0 else f"{len(np.atleast_1d(k))} positions")
    return "region [" + ", ".join(parts) + "]"


class RetryArray:
    """A remote array (zarr, GeoTIFF, TIFF) whose reads are retried (:func:`with_retries`).

    Picklable when the wrapped array is (dask.distributed workers reopen what it holds); ``name`` is
    the redacted URL, ``secrets`` the strings no message may show (storage option values).
    """

    def __init__(self, inner, name: str, secrets: tuple = (), *, tries: int = 0, delay: float = 0.0):
        self.inner, self.name, self.secrets = inner, name, tuple(s for s in secrets if len(s) >= 4)
        self.tries, self.delay = tries or TRIES, delay or FIRST_DELAY
        self.shape, self.dtype = tuple(inner.shape), np.dtype(inner.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(inner, "chunks", None)
        if chunks is not None:
            self.chunks = chunks

    def __getattr__(self, attr):  # attrs, store, ... of the wrapped array (not while unpickling)
        if attr in ("inner", "__setstate__", "__getstate__") or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<RetryArray {self.name} {self.shape} {self.dtype}>"

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def __getitem__(self, key):
        if type(self.inner).__module__.startswith("zarr"):
            # whole chunks, kept a short while: neighbouring tiles' windows share input chunks
            out = chunk_cache.cached_region(self.name, self.inner, key, self._read)
            if out is not None:
                return out
        return self._read(key)

    def _read(self, key):
        def read():
            try:
                return np.asarray(self.inner[key])
            except Exception:
                reset = getattr(self.inner, "reset", None)
                if reset is not None:  # a handle broken by a dropped connection is reopened
                    reset()
                raise

        return with_retries(
            read, self.name, describe(key, self.shape), tries=self.tries, delay=self.delay, scrub=self._scrub
        )

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]
        return out if dtype is None else out.astype(dtype)
