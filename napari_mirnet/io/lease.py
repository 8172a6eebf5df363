"""One writer per output store at a URL: a lease object beside the store, made by a conditional put.

There is no lock file to ``flock`` on object storage, and a local lock file only keeps out the
runs of one machine. So the store ``s3://bucket/out.zarr`` is held through the object
``s3://bucket/.out.zarr.lock``: created with ``If-None-Match: *`` (a second writer's create fails),
naming its holder (host, pid, start time: never a credential) and an expiry time, renewed by a
background thread with ``If-Match`` on the lease's ETag while the run lasts, and deleted when it
ends (also on error or cancel). A lease whose expiry has passed belongs to a run that is gone (killed,
its machine lost): it is taken over with ``If-Match`` on the stale lease's ETag, so that of two runs
taking it over at once only one succeeds.

TTL: :data:`TTL_S` = 120 s, renewed every 30 s. A holder keeps its lease through about 90 s without
a successful renewal (S3 clients retry a failed request with backoff for up to about a minute), and
a run that was killed blocks a rerun for at most two minutes. The expiry is wall-clock time: the
machines' clocks must agree to well under a minute (NTP does).

Conditional puts are used where they are known to be atomic: ``s3://`` (AWS S3, and servers that
honour ``If-None-Match``/``If-Match``: MinIO, moto). Elsewhere the run is refused with a message that
says what to do; ``lease=False`` writes without a lease, for whoever makes sure that no other run
writes the store.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from urllib.parse import urlsplit

from .errors import OutputError, StoreLocked
from .location import display, fs_and_root, scrub, sibling

__all__ = ["TTL_S", "Lease", "NoLease"]

TTL_S = 120.0
RELEASE_WAIT_S = 15.0  # at most this long for the last renewal and the delete when a run ends
CONDITIONAL_SCHEMES = ("s3", "s3a")


def _precondition_failed(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is S3's 412 PreconditionFailed."""
    while err is not None:
        if isinstance(err, FileExistsError):
            return True
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412") or "pre-condition" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def _missing(err: BaseException) -> bool:
    return isinstance(err, FileNotFoundError) or "NoSuchKey" in str(err) or "404" in str(err)


class NoLease:
    """What ``lease=False`` holds: nothing (one writer per store is up to the caller)."""

    lost = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def check(self) -> None:
        """Nothing to check without a lease."""


class Lease:
    """The lease on the store at ``url`` for one run (``with Lease(url, options): ...``)."""

    def __init__(self, url: str, storage_options: dict | None = None, ttl: float | None = None):
        self.url = url.rstrip("/")
        self.lease_url = sibling(self.url, ".{name}.lock")
        self.options = storage_options
        self.ttl = float(ttl or TTL_S)
        self.etag: str | None = None
        self.lost = False
        self.token = os.urandom(8).hex()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the object and its record
    def _where(self):
        fs, path = fs_and_root(self.lease_url, self.options)
        bucket, _, key = path.partition("/")
        return fs, bucket, key

    def _record(self) -> bytes:
        return json.dumps(
            {
                "holder": f"pid {os.getpid()} on {socket.gethostname()}, since {self.started}",
                "expires": time.time() + self.ttl,
                "token": self.token,
            }
        ).encode()

    def _read(self, fs, bucket: str, key: str) -> tuple[dict, str] | None:
        """(record, ETag) of the lease there now; None if there is none. The ETag is asked first: a
        record newer than its ETag makes a take-over fail (If-Match), never succeed over a fresh lease."""
        try:
            etag = fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            body = fs.cat_file(f"{bucket}/{key}")
        except Exception as err:
            if _missing(err):
                return None
            raise
        try:
            record = json.loads(body)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), etag

    def _put(self, fs, bucket: str, key: str, **condition) -> str:
        return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._record(), **condition)["ETag"]

    # ------------------------------------------------------------------------- acquire and release
    def acquire(self) -> None:
        """Create the lease, or take over a stale one; refuse while another run holds it."""
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in CONDITIONAL_SCHEMES:
            raise OutputError(
                f"output {display(self.url)}: one writer per store is kept by a lease object made with a "
                f"conditional put, which napari-mirnet does on s3:// only, not on {scheme}://. Write to s3:// or a "
                "local path; or, where you make sure that no other run writes this store, write without a lease "
                "from Python: run = napari_mirnet.engine.prepare(...); napari_mirnet.engine.execute(run, out=url, "
                "storage_options=..., lease=False)"
            )
        try:
            self._acquire()
        except OutputError:
            raise
        except Exception as err:  # unreachable, refused: say so before any work
            detail = scrub(f"{type(err).__name__}: {err}", self.lease_url, self.options)
            raise OutputError(
                f"cannot take the lease {display(self.lease_url)} on output {display(self.url)} ({detail}); check "
                "the URL, the credentials and that they may write there"
            ) from None
        self._thread = threading.Thread(target=self._renew, name="napari-mirnet lease", daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        fs, bucket, key = self._where()
        record: dict = {}
        for _ in range(5):  # a lease that comes and goes meanwhile: look again, a few times
            try:
                self.etag = self._put(fs, bucket, key, IfNoneMatch="*")
                return
            except Exception as err:
                if not _precondition_failed(err):
                    raise
            held = self._read(fs, bucket, key)
            if held is None:  # released meanwhile
                continue
            record, etag = held
            if float(record.get("expires", 0)) > time.time():
                break
            try:  # stale: its holder is gone; only one of several runs replaces it
                self.etag = self._put(fs, bucket, key, IfMatch=etag)
                return
            except Exception as err:
                if not _precondition_failed(err):
                    raise
        self._refuse(record)

    def _refuse(self, record: dict) -> None:
        holder = str(record.get("holder") or "unknown")
        try:
            until = time.strftime("%H:%M:%S UTC", time.gmtime(float(record["expires"])))
        except (KeyError, TypeError, ValueError):
            until = "unknown"
        raise StoreLocked(
            f"output {display(self.url)} is being written by another run ({holder}); wait for it to finish or "
            "stop it, or choose another output. If no run is writing it any more, its lease "
            f"{display(self.lease_url)} expires at {until} (unless renewed) and a re-run then takes it over"
        )

    def _renew(self) -> None:
        fs, bucket, key = self._where()
        while not self._stop.wait(self.ttl / 4):
            try:
                self.etag = self._put(fs, bucket, key, IfMatch=self.etag)
            except Exception as err:
                if _precondition_failed(err):  # taken over: this run stalled past the expiry
                    self.lost = True
                    return
                # a failed request: tried again at the next tick, the lease lasts ttl

    def check(self) -> None:
        """Refuse to complete the store once the lease was lost (another run took it over)."""
        if self.lost:
            raise StoreLocked(
                f"output {display(self.url)}: this run stopped renewing its lease for longer than {self.ttl:.0f} s "
                "and another run took the store over; the store is left resumable: re-run once that run is done"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still ours (best effort: it expires anyway).

        Bounded in time: after a lost connection the error that ended the run is not held back for
        the client's retries (a daemon thread finishes or gives up on its own)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=RELEASE_WAIT_S)
            self._thread = None
        if self.etag is None or self.lost:
            return
        done = threading.Thread(target=self._delete, args=(self.etag,), name="napari-mirnet lease release", daemon=True)
        done.start()
        done.join(timeout=RELEASE_WAIT_S)
        self.etag = None

    def _delete(self, etag: str) -> None:
        try:
            fs, bucket, key = self._where()
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            except Exception as err:
                if _precondition_failed(err):  # not ours any more
                    return
                # a server without conditional deletes: delete it if its ETag says it is ours
                if fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"] == etag:
                    fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception:
            pass  # unreachable: the lease expires by itself

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
