"""URLs as inputs: which strings are URLs, their printable form, and the storage options for fsspec."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["SCHEMES", "fsspec_options", "is_url", "redact"]

SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs")
# the package fsspec needs per scheme, named in the error when it is missing
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "http": "aiohttp"}
# query parameters that carry credentials (pre-signed S3/GCS URLs, Azure SAS tokens)
_SECRET_QUERY = re.compile(r"(signature|credential|token|key|secret|password|sig|auth)", re.IGNORECASE)


def is_url(path) -> bool:
    """Whether ``path`` is a URL we read through fsspec or GDAL (not a local path, not ``file://``)."""
    if not isinstance(path, str):
        return False
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", path)
    return bool(m) and m.group(1).lower() in SCHEMES


def redact(url: str) -> str:
    """``url`` without ``user:password@`` and without the values of query parameters that carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = urlencode(
        [(k, "REDACTED" if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="/:",
    )
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


def fsspec_options(url: str, storage_options: dict | None) -> dict:
    """The options fsspec gets for ``url``; checks first that the scheme's filesystem package is installed."""
    import importlib.util

    scheme = urlsplit(url).scheme.lower()
    scheme = "http" if scheme == "https" else scheme
    package = _PACKAGES.get(scheme)
    if package and importlib.util.find_spec(package) is None:
        raise ImportError(
            f"reading {redact(url)} needs the {package} package: pip install {package} "
            "(or pip install 'napari-mirnet[remote]')"
        )
    return dict(storage_options or {})
