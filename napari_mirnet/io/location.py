"""A store's place: a local path, or a URL (``s3://``, ``gs://``, ``az://``) reached through fsspec.

The output store, its bookkeeping and its lease are found, listed and removed through these few
functions, so that the store code says once what it does and not twice how. URLs stay ``str``
(``Path`` would collapse ``//``); messages name them through :func:`.urls.redact`.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shutil
from urllib.parse import urlsplit, urlunsplit

from .errors import OutputError
from .secrets import scrub as scrub_secrets
from .urls import fsspec_options, is_url, redact

__all__ = [
    "display",
    "entries",
    "found_at",
    "fs_and_root",
    "has_entries",
    "is_url",
    "remove",
    "remove_tree",
    "same_or_within",
    "scrub",
    "sibling",
    "url_key",
    "writable_url",
    "writing",
    "zarr_options",
]

# schemes fsspec writes to; http(s) serves files but takes no writes
_WRITABLE = ("s3", "s3a", "gs", "gcs", "az", "abfs")
# one name per store service, so that two spellings of one place compare equal
_SAME_SCHEME = {"s3a": "s3", "gcs": "gs", "abfs": "az", "https": "http"}


def display(place) -> str:
    """What a message may say about ``place``: the redacted URL, or the path as given."""
    return redact(place) if is_url(place) else str(place)


def writable_url(url: str) -> None:
    """Refuse, before any work, a URL no store can be written to (``http(s)://``, a bucket's root)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _WRITABLE:
        raise ValueError(
            f"out={redact(url)!r}: {parts.scheme}:// URLs cannot be written; write the store to s3://, gs://, "
            "az:// or a local path"
        )
    if not parts.path.strip("/"):
        raise ValueError(f"out={redact(url)!r}: name a store inside the bucket (e.g. {parts.scheme}://bucket/out.zarr)")


def fs_and_root(url: str, storage_options: dict | None):
    """``(filesystem, path on it)`` for ``url``; the filesystem package must be installed."""
    from fsspec.core import url_to_fs

    return url_to_fs(url.rstrip("/"), **fsspec_options(url, storage_options))


def sibling(url: str, name: str) -> str:
    """The URL of ``name`` in the same folder as ``url``, ``{name}`` standing for url's last part
    (``sibling("s3://b/x.zarr", ".{name}.lock")`` is ``s3://b/.x.zarr.lock``)."""
    parts = urlsplit(url.rstrip("/"))
    folder, last = posixpath.split(parts.path)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.join(folder, name.format(name=last)), "", ""))


def entries(fs, root: str) -> list[str]:
    """What lies directly under ``root`` (one listing, never a cached one); [] where nothing does."""
    fs.invalidate_cache(root)
    try:
        return list(fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def remove_tree(fs, root: str, missing_ok: bool = False) -> None:
    """Delete every object under ``root``."""
    fs.invalidate_cache(root)
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        if not missing_ok:
            raise
    fs.invalidate_cache(root)


def remove(place, storage_options: dict | None, missing_ok: bool = False) -> None:
    """Delete the folder (local path) or every object under the prefix (URL) ``place``."""
    if is_url(place):
        remove_tree(*fs_and_root(place, storage_options), missing_ok=missing_ok)
    else:
        try:
            shutil.rmtree(place)
        except FileNotFoundError:
            if not missing_ok:
                raise


def url_key(url: str) -> tuple[str, str, str]:
    """``(service, bucket or host, key)`` of ``url``: no credentials, no query, ``//`` and ``..`` resolved,
    no trailing ``/``; two spellings of one object have one key (no I/O: the object may not exist)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    scheme = _SAME_SCHEME.get(scheme, scheme)
    if scheme == "az":  # abfs://container@account...: the part before @ is the container, not a user
        host = parts.netloc.lower()
    else:
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    path = posixpath.normpath(re.sub("/+", "/", "/" + parts.path))  # normpath keeps a leading "//"
    return scheme, host, path.rstrip("/") or "/"


def same_or_within(a: str, b: str) -> str | None:
    """``"same"`` when URLs ``a`` and ``b`` name one object or folder, ``"inside"`` when ``a`` lies in ``b``."""
    ka, kb = url_key(a), url_key(b)
    if ka[:2] != kb[:2]:
        return None
    if ka[2] == kb[2]:
        return "same"
    return "inside" if kb[2] == "/" or ka[2].startswith(kb[2] + "/") else None


def scrub(text: str, url: str, storage_options: dict | None) -> str:
    """``text`` with the URL redacted and without any secret value of the options (:mod:`.secrets`)."""
    return scrub_secrets(text, [url], storage_options)


def zarr_options(path, storage_options: dict | None) -> dict:
    """zarr's keywords for the store at ``path``: for a URL the fsspec options, and zarr v3 (ours always is:
    no requests for v2 metadata), none for a local path."""
    return {"storage_options": storage_options, "zarr_format": 3} if is_url(path) else {}


@contextlib.contextmanager
def writing(path, storage_options: dict | None, opening: bool = False):
    """At a URL, any failure to write (403, a dropped connection, a full quota) becomes an OutputError
    naming the redacted URL; local errors pass unchanged (the engine words those). ``opening``: nothing
    is written yet (looking at what is there)."""
    if not is_url(path):
        yield
        return
    try:
        yield
    except OutputError:
        raise
    except Exception as err:  # s3fs, aiohttp and botocore raise many types for one failed request
        detail = scrub(f"{type(err).__name__}: {err}", path, storage_options)
        if opening:
            raise OutputError(
                f"cannot open output {display(path)} ({detail}); check the URL, the credentials and that they "
                "may list, read and write there"
            ) from None
        raise OutputError(
            f"writing {display(path)} failed ({detail}); the store is left incomplete and resumable: fix the cause "
            "(credentials, permissions, the connection) and re-run with the same settings to resume"
        ) from None


def found_at(p, opts: dict | None) -> str | None:
    """What is at ``p`` already: None (nothing), "file", "folder" (maybe empty) or, at a URL, "objects"."""
    if not is_url(p):
        return None if not p.exists() else "folder" if p.is_dir() else "file"
    fs, root = fs_and_root(p, opts)
    below = entries(fs, root)  # one listing; an object at the key itself lists as itself
    if not below:
        return None
    return "file" if below == [root] and fs.isfile(root) else "objects"


def has_entries(p, opts: dict | None) -> bool:
    if is_url(p):
        return bool(entries(*fs_and_root(p, opts)))
    return any(p.iterdir())
