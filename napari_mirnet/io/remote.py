"""Images at a URL (``http(s)://``, ``s3://``, ``gs://``, ``az://``), read lazily where the format allows.

OME-Zarr goes through zarr's fsspec store (only the chunks a tile needs are fetched); TIFF, OME-TIFF
and GeoTIFF/COG through :mod:`.remote_tiff` (GDAL's /vsicurl/, /vsis3/ for GeoTIFF, tifffile over
fsspec otherwise: only the tiles' byte ranges); PNG/JPEG are read whole. Every array is wrapped in
:class:`.retry.RetryArray` (bounded retries, errors naming the URL and the region). Opening retries
a passing failure too; a 404, a 403 or a URL that is no image fails here, at planning time, with a
message naming the redacted URL: credentials never appear in an error.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .image import ImageSource
from .location import fs_and_root
from .omezarr import image_of_group
from .retry import RetryArray, error_text, is_transient, with_retries
from .secrets import scrub as scrub_secrets
from .secrets import secrets as find_secrets
from .urls import fsspec_options, redact

__all__ = ["list_remote_folder", "open_remote"]

_KINDS = "an OME-Zarr store, a TIFF/OME-TIFF/GeoTIFF/COG, a PNG or a JPEG"


# what servers and clients say for a refused or a missing object (status codes as aiohttp, botocore and
# GDAL print them: never a bare number, which a port or a size could hold)
_DENIED = re.compile(
    r"\(HTTP 40[13]\)|\b40[13], message|\(40[13]\)|response code: 40[13]|Forbidden|Unauthorized|AccessDenied|"
    r"SignatureDoesNotMatch|InvalidAccessKeyId|AuthorizationHeaderMalformed"
)
_MISSING = re.compile(r"\(HTTP 404\)|\b404, message|\(404\)|response code: 404|NoSuchKey|NoSuchBucket")


class _Passing(ConnectionError):
    """A failure that may pass (5xx, dropped connection) while opening: retried by with_retries."""


def _secrets(url: str, storage_options: dict) -> tuple:
    """Strings no message may show (option values, the URL's password, secret query values)."""
    return find_secrets([url], storage_options)


def _scrub(text: str, url: str, storage_options: dict) -> str:
    """``text`` without the URL's credentials and without any secret option value."""
    return scrub_secrets(text, [url], storage_options)


def _fail(url: str, storage_options: dict, err: Exception, what: str) -> Exception:
    """A clear error for a URL that cannot be opened (never the library's traceback, never a credential)."""
    name = redact(url)
    detail = _scrub(error_text(err), url, storage_options)
    if is_transient(err):
        return _Passing(f"{name}: the server or the connection failed while {what} ({detail})")
    if isinstance(err, PermissionError) or _DENIED.search(detail):
        return PermissionError(
            f"input {name} cannot be read: access denied ({what}; {detail}); check the credentials "
            "(storage_options= / --storage-option, or the AWS_*/GOOGLE_*/AZURE_* environment) and the URL"
        )
    if isinstance(err, FileNotFoundError) or _MISSING.search(detail):
        return FileNotFoundError(f"input {name} does not exist ({what}; {detail}); check the URL")
    if "TiffFileError" in detail or "not recognized as being in a supported file format" in detail:
        return ValueError(f"input {name} is not a TIFF image ({detail}); point at {_KINDS}")
    return ValueError(f"cannot read {name} ({what}; {detail}); point at {_KINDS}")


def _open_zarr_url(url: str, level, options: dict) -> ImageSource:
    import zarr

    name = redact(url)
    try:
        node = zarr.open(url.rstrip("/"), mode="r", storage_options=options or None)
    except Exception as err:  # zarr and fsspec raise many types for a missing or foreign store
        failed = _fail(url, options, err, "opening it as a zarr store")
        if isinstance(failed, FileNotFoundError) and _is_file(url, options):
            raise ValueError(
                f"input {name} is not an image napari-mirnet reads: it has no zarr metadata (zarr.json, "
                f".zgroup, .zarray) and its name does not end in .tif, .tiff, .png or .jpg; point at {_KINDS}"
            ) from None
        raise failed from None
    if isinstance(node, zarr.Array):
        if level is not None:
            raise ValueError(f"{name} is a single zarr array; leave level= out")
        return ImageSource(node, None)
    return image_of_group(name, node, level)


def _is_file(url: str, options: dict) -> bool:
    """Whether ``url`` is one object or file (so a zarr store was not found because it is something else)."""
    try:
        fs, path = fs_and_root(url, options)
        return bool(fs.isfile(path))
    except Exception:
        return False


def _open_tiff_url(url: str, level, options: dict) -> ImageSource:
    from .geotiff import open_geotiff
    from .remote_tiff import RemoteTiff, is_geotiff_url
    from .tiff import open_tiff
    from .urls import gdal_config, gdal_path

    name = redact(url)
    remote = RemoteTiff(url, options, name, _secrets(url, options))
    try:
        geo = is_geotiff_url(remote)
    except Exception as err:
        raise _fail(url, options, err, "reading its TIFF header") from None
    if geo:
        try:
            return open_geotiff(gdal_path(url), level, env=gdal_config(url, options), name=name)
        except OSError as err:  # rasterio's RasterioIOError (GDAL's curl/S3 errors) is an OSError
            raise _fail(url, options, err, "opening it with GDAL") from None
    if level is not None:
        raise ValueError(f"level={level!r} picks an overview of a GeoTIFF or a level of an OME-Zarr; {name} is neither")
    from pathlib import PurePosixPath

    try:
        return open_tiff(PurePosixPath(urlsplit(name).path), remote)
    except OSError as err:
        raise _fail(url, options, err, "reading the TIFF's layout") from None


def _open_picture_url(url: str, suffix: str, options: dict) -> ImageSource:
    import tempfile
    from pathlib import Path

    import fsspec

    from .pictures import open_picture

    try:
        with fsspec.open(url, "rb", **options) as f:
            data = f.read()
    except Exception as err:
        raise _fail(url, options, err, "downloading it") from None
    # pictures are small and read whole: through a temporary file, as the local reader wants a path
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"image.{suffix}"
        p.write_bytes(data)
        return open_picture(p)


def _needs_retries(arr) -> bool:
    """Whether ``arr`` reads from the URL when sliced and is not yet wrapped (numpy is in memory; a dask
    array made by the TIFF reader wraps a RetryArray already)."""
    import numpy as np

    from .retry import RetryArray

    return not isinstance(arr, (np.ndarray, RetryArray)) and not type(arr).__module__.startswith("dask")


def open_remote(url: str, level=None, storage_options: dict | None = None) -> ImageSource:
    """Open the image at ``url`` (see the module docstring); ``level`` picks an OME-Zarr pyramid level
    or a GeoTIFF overview (0 = full resolution)."""
    options = fsspec_options(url, storage_options)
    name = redact(url)
    suffix = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].rpartition(".")[2].lower()
    if suffix in ("tif", "tiff"):
        opener = _open_tiff_url
    elif suffix in ("png", "jpg", "jpeg"):
        if level is not None:
            raise ValueError(f"level={level!r} applies to OME-Zarr pyramids and GeoTIFF overviews; {name} is a picture")
        opener = lambda u, lv, o: _open_picture_url(u, suffix, o)  # noqa: E731
    else:
        opener = _open_zarr_url
    secrets = _secrets(url, options)
    src = with_retries(lambda: opener(url, level, options), name, "opening it", scrub=lambda t: _scrub(t, url, options))
    if _needs_retries(src.array):  # lazy: every chunk read is retried
        src.array = RetryArray(src.array, name, secrets)
    src.meta = src.meta.replace(name=src.meta.name or name)
    return src


def list_remote_folder(url: str, suffixes: tuple, storage_options: dict | None = None) -> list[str]:
    """The images in the "folder" ``url`` (a prefix ending in ``/``): objects and zarr stores whose
    names end in one of ``suffixes``, hidden ones left out, sorted; one listing, no recursion."""
    import fsspec

    options = fsspec_options(url, storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)  # the trailing / kept: an http folder is asked as one
        entries = with_retries(
            lambda: fs.ls(path, detail=True), redact(url), "listing it", scrub=lambda t: _scrub(t, url, options)
        )
    except Exception as err:
        raise _fail(url, options, err, "listing the folder") from None
    base = url.rstrip("/")
    found = []
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(suffixes):
            continue
        found.append(f"{base}/{name}")
    if not found:
        raise FileNotFoundError(f"folder {redact(url)} holds no images ({', '.join(suffixes)})")
    return sorted(set(found))
