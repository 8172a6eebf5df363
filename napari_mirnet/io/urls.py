"""URLs as inputs: which strings are URLs, their printable form, and the storage options for fsspec."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["SCHEMES", "fsspec_options", "gdal_config", "gdal_path", "is_url", "redact"]

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
    options = dict(storage_options or {})
    if scheme == "http":
        # aiohttp waits 5 minutes for a stalled server by default: a read that stalls fails sooner and
        # is retried (io.retry) instead; the caller's own timeout wins
        import aiohttp

        client = dict(options.get("client_kwargs") or {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=20, sock_read=60))
        options["client_kwargs"] = client
    return options


# GDAL's virtual file system per scheme (https://gdal.org/user/virtual_file_systems.html)
_VSI = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/"}
# GDAL settings for every remote read: no directory listing on open (a COG is one object: listing a
# bucket or an HTTP folder to look for side-car files costs requests and fails on many servers),
# bounded time per request; GDAL's own HTTP retries are off: io.retry retries every remote read, once,
# with one bound, whatever library reads (a second layer would multiply the tries)
_GDAL_BASE = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_MAX_RETRY": "0",
}


def gdal_path(url: str) -> str:
    """The GDAL path of ``url``: ``/vsicurl/http(s)://...``, ``/vsis3/bucket/key``, ``/vsigs/``, ``/vsiaz/``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        # user:password goes to GDAL's config (gdal_config), not into a path GDAL may print or log
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return "/vsicurl/" + urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return _VSI[scheme] + parts.netloc + parts.path


def gdal_config(url: str, storage_options: dict | None) -> dict:
    """GDAL config options for ``url`` from fsspec-style ``storage_options`` (and the S3 endpoint from the
    environment): the rest (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_*``, profiles) GDAL
    reads from the environment itself, as every GDAL tool does."""
    import os

    opts = dict(storage_options or {})
    client = dict(opts.get("client_kwargs") or {})
    cfg = dict(_GDAL_BASE)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        endpoint = (
            client.get("endpoint_url")
            or opts.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:  # an S3-compatible server (MinIO, Ceph, moto...): path-style requests to it
            ep = urlsplit(endpoint)
            cfg.update(AWS_S3_ENDPOINT=ep.netloc, AWS_HTTPS="YES" if ep.scheme == "https" else "NO")
            cfg["AWS_VIRTUAL_HOSTING"] = "FALSE"
        pairs = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}
        cfg.update({gdal: str(opts[k]) for k, gdal in pairs.items() if opts.get(k)})
        if client.get("region_name"):
            cfg["AWS_REGION"] = str(client["region_name"])
        if opts.get("profile"):
            cfg["AWS_PROFILE"] = str(opts["profile"])
        if opts.get("anon"):
            cfg["AWS_NO_SIGN_REQUEST"] = "YES"
    elif scheme in ("az", "abfs"):
        pairs = {"account_name": "AZURE_STORAGE_ACCOUNT", "account_key": "AZURE_STORAGE_ACCESS_KEY"}
        pairs["connection_string"] = "AZURE_STORAGE_CONNECTION_STRING"
        pairs["sas_token"] = "AZURE_STORAGE_SAS_TOKEN"
        cfg.update({gdal: str(opts[k]) for k, gdal in pairs.items() if opts.get(k)})
    elif scheme in ("gs", "gcs") and isinstance(opts.get("token"), str) and os.path.isfile(opts["token"]):
        cfg["GOOGLE_APPLICATION_CREDENTIALS"] = opts["token"]
    parts = urlsplit(url)
    if scheme in ("http", "https") and parts.username is not None:
        cfg.update(
            GDAL_HTTP_USERPWD=f"{unquote(parts.username)}:{unquote(parts.password or '')}", GDAL_HTTP_AUTH="BASIC"
        )
    headers = client.get("headers") or opts.get("headers")
    if headers and scheme in ("http", "https"):
        cfg["GDAL_HTTP_HEADERS"] = "\r\n".join(f"{k}: {v}" for k, v in dict(headers).items())
    return cfg
