"""Images at a URL (``http(s)://``, ``s3://``, ``gs://``, ``az://``), read lazily where the format allows.

OME-Zarr goes through zarr's fsspec store (only the chunks a tile needs are fetched); PNG/JPEG are
read whole; TIFF/GeoTIFF from a URL is refused for now (not yet written: GDAL's /vsicurl/, /vsis3/).
Every message names the redacted URL: credentials never appear in an error.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .image import ImageSource
from .omezarr import _multiscales, _pick_level, level_meta
from .record import ATTR
from .urls import fsspec_options, redact

__all__ = ["open_remote"]


def _scrub(text: str, url: str, storage_options: dict) -> str:
    """``text`` without the URL's credentials and without any secret-looking option value."""
    text = text.replace(url, redact(url))
    for value in _strings(storage_options):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _fail(url: str, storage_options: dict, err: Exception, what: str) -> Exception:
    name = redact(url)
    detail = _scrub(f"{type(err).__name__}: {err}", url, storage_options)
    if isinstance(err, FileNotFoundError) or "404" in detail or "NoSuchKey" in detail:
        return FileNotFoundError(f"input {name} does not exist ({what}; {detail})")
    if isinstance(err, PermissionError) or "403" in detail or "AccessDenied" in detail or "Signature" in detail:
        return PermissionError(f"input {name} cannot be read: access denied ({what}; {detail})")
    return ValueError(f"cannot read {name} ({what}; {detail})")


def _open_zarr_url(url: str, level, options: dict) -> ImageSource:
    import zarr

    name = redact(url)
    try:
        node = zarr.open(url.rstrip("/"), mode="r", storage_options=options or None)
    except Exception as err:  # zarr and fsspec raise many types for a missing or foreign store
        raise _fail(url, options, err, "not a zarr store, or not reachable") from err
    if isinstance(node, zarr.Array):
        if level is not None:
            raise ValueError(f"{name} is a single zarr array; leave level= out")
        return ImageSource(node, None)
    attrs = dict(node.attrs)
    if ATTR in attrs and not attrs[ATTR].get("complete", False):
        raise ValueError(f"{name} is an unfinished napari-mirnet output")
    ms = _multiscales(attrs)
    if not ms:
        raise ValueError(f"{name} is a zarr group without OME-NGFF multiscales metadata; point at an image")
    index = _pick_level(name, node, ms[0], level)
    arr = node[ms[0]["datasets"][index]["path"]]
    meta = level_meta(attrs, index, arr.ndim)
    return ImageSource(arr, meta.axes, meta)


def _open_picture_url(url: str, suffix: str, options: dict) -> ImageSource:
    import tempfile
    from pathlib import Path

    import fsspec

    from .pictures import open_picture

    try:
        with fsspec.open(url, "rb", **options) as f:
            data = f.read()
    except Exception as err:
        raise _fail(url, options, err, "not reachable") from None
    # pictures are small and read whole: through a temporary file, as the local reader wants a path
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"image.{suffix}"
        p.write_bytes(data)
        return open_picture(p)


def open_remote(url: str, level=None, storage_options: dict | None = None) -> ImageSource:
    """Open the image at ``url`` (see the module docstring); ``level`` picks an OME-Zarr pyramid level."""
    options = fsspec_options(url, storage_options)
    suffix = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].rpartition(".")[2].lower()
    if suffix in ("tif", "tiff"):
        # not yet: GeoTIFF/COG through GDAL's /vsicurl/ and /vsis3/ (issue 32)
        raise ValueError(f"{redact(url)}: reading TIFF/GeoTIFF from a URL is not supported yet; download it first")
    elif suffix in ("png", "jpg", "jpeg"):
        src = _open_picture_url(url, suffix, options)
    else:
        src = _open_zarr_url(url, level, options)
    src.meta = src.meta.replace(name=src.meta.name or redact(url))
    return src
