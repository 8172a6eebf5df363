"""Outputs at a URL (``s3://``, ``gs://``, ``az://``): names, existence, the stored record, the upload.

An OME-Zarr output is written chunk by chunk into the store at the URL by the engine. A file output
(TIFF, GeoTIFF, PNG, JPEG) is written to a local file in the cache first (:func:`work_file`, keyed by
the URL, so that a TIFF's resumable work store survives an interruption), then uploaded in one
``put`` once complete: nothing appears at the URL before the whole file does. ``http(s)://`` cannot
be written (:func:`check_writable`). Messages name the redacted URL only.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..io import OutputError, stored_fingerprint
from ..io.record import ATTR
from ..io.urls import is_url, redact

__all__ = [
    "check_writable",
    "exists",
    "is_url",
    "join",
    "stored_record",
    "upload",
    "url_name",
    "url_suffix",
    "work_file",
]


def url_name(url: str) -> str:
    """The last part of the URL's path (``out.tif`` for ``s3://bucket/run/out.tif``)."""
    return PurePosixPath(urlsplit(url).path.rstrip("/")).name


def url_suffix(url: str) -> str:
    """The suffix of the URL's last part, lower case (``.tif``), or ``""``."""
    return PurePosixPath(url_name(url)).suffix.lower()


def join(folder: str, name: str) -> str:
    """``name`` inside the URL ``folder`` (``s3://bucket/results/`` + ``a.zarr``)."""
    parts = urlsplit(folder)
    return parts._replace(path=parts.path.rstrip("/") + "/" + name).geturl()


def check_writable(url: str, what: str = "out") -> None:
    """Refuse a URL that cannot be written (``http(s)://``), in the words of ``what`` (``out=``, ``-o``)."""
    if urlsplit(url).scheme.lower() in ("http", "https"):
        name = f"{what}{redact(url)!r}" if what.endswith("=") else f"{what} {redact(url)}"
        raise OutputError(
            f"{name}: an http(s):// URL cannot be written; write to s3:// (or gs://, az://) or to a local path"
        )


def _fs(url: str, storage_options: dict | None):
    """The fsspec filesystem of ``url`` and the path inside it (no instance cache: options may differ)."""
    from ..io.location import fs_and_root

    return fs_and_root(url, {**(storage_options or {}), "skip_instance_cache": True})


def exists(url: str, storage_options: dict | None) -> bool:
    """Whether an object (or, for a store, anything under the prefix) is at ``url``."""
    fs, path = _fs(url, storage_options)
    try:
        return bool(fs.exists(path.rstrip("/")))
    except FileNotFoundError:
        return False
    except PermissionError:
        raise OutputError(
            f"cannot check the output {redact(url)}: access denied; check the credentials (storage_options=, "
            "or the environment and profiles the store's library reads)"
        ) from None
    except Exception as err:  # a refused listing: say which URL, never the options
        raise OutputError(f"cannot check the output {redact(url)}: {type(err).__name__}") from None


def stored_record(url: str, storage_options: dict | None) -> dict | None:
    """The run fingerprint a napari-mirnet output at ``url`` records, read through fsspec, or None.

    A store's ``zarr.json``; a TIFF's first directory (range reads); a PNG/JPEG read whole (small).
    """
    suffix = url_suffix(url)
    if suffix in ("", ".zarr"):
        return stored_fingerprint(url, storage_options)
    fs, path = _fs(url, storage_options)
    try:
        with fs.open(path, "rb", block_size=1 << 16) as f:
            return _file_record(f, suffix)
    except Exception:  # missing, unreadable or not ours: not a result of these settings
        return None


def _file_record(f, suffix: str) -> dict | None:
    from ..io.geotiff import is_geotiff, stored_note

    if suffix in (".tif", ".tiff"):
        geo = is_geotiff(f)
        f.seek(0)  # tifffile reads from the handle's position
        if geo:
            text = stored_note(f)
        else:
            from ..io.tiff import stored_tiff_fingerprint

            return stored_tiff_fingerprint(f)
    elif suffix in (".png", ".jpg", ".jpeg"):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(f.read())) as im:
            text = im.text.get(ATTR) if suffix == ".png" else im.info.get("comment", b"").decode()
    else:
        return None
    return json.loads(text) if text else None


def work_file(url: str) -> Path:
    """The local file a file output at ``url`` is written to before its upload (in the user cache,
    keyed by the redacted URL, so that an interrupted run resumes there)."""
    import hashlib

    from ..weights import cache_dir

    key = hashlib.sha256(redact(url).encode()).hexdigest()[:16]
    return cache_dir() / "uploads" / key / url_name(url)


def upload(local: Path, url: str, storage_options: dict | None) -> None:
    """Put the complete file ``local`` at ``url`` in one piece (replacing what is there)."""
    fs, path = _fs(url, storage_options)
    try:
        fs.put_file(str(local), path)
    except Exception as err:
        raise OutputError(
            f"uploading {url_name(url)} to {redact(url)} failed ({type(err).__name__}); the file is kept in "
            f"{local.parent}: re-run the same command to upload it again"
        ) from None
