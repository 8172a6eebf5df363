"""Paths in and out: which reader opens a path, what a folder holds, and writing a result file whole."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..metadata import ImageMeta
from .errors import OutputError
from .geotiff import is_geotiff, open_geotiff
from .geotiff_write import write_geotiff, writes_geotiff
from .image import ImageSource
from .omezarr import open_zarr, write_omezarr
from .pictures import check_picture, open_picture, write_picture
from .remote import list_remote_folder, open_remote
from .tiff import check_tiff, open_tiff, write_tiff
from .urls import is_url

__all__ = ["IMAGE_SUFFIXES", "list_inputs", "open_image", "write_image"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")


def open_image(path: str | os.PathLike, level=None, storage_options: dict | None = None) -> ImageSource:
    """Open an image file or zarr store without loading it (png/jpg are small and read whole).

    ``level`` picks a level of an OME-Zarr pyramid (an index, 0 = full resolution, or a dataset
    path) or an overview of a GeoTIFF/COG (1 = the first); the default is level 0, or the level a
    path such as ``image.zarr/2`` points at. ``path`` may be a URL (``http(s)://``, ``s3://``,
    ``gs://``, ``az://``): ``storage_options`` go to fsspec and GDAL (e.g. ``{"client_kwargs":
    {"endpoint_url": ...}, "key": ..., "secret": ...}`` for an S3-compatible server); TIFFs are read
    by byte range, every remote read is retried (``io.retry``).
    """
    if is_url(path):
        return open_remote(path, level, storage_options)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == ".zarr":
        src = open_zarr(p, level)
    elif suffix in (".tif", ".tiff") and is_geotiff(p):
        src = open_geotiff(p, level)  # level: an overview of a COG
    elif level is not None:
        raise ValueError(
            f"level={level!r} applies to OME-Zarr pyramids and GeoTIFF overviews; {p.name} is a {suffix or 'plain'} file"
        )
    elif suffix in (".tif", ".tiff"):
        src = open_tiff(p)
    elif suffix in (".png", ".jpg", ".jpeg"):
        src = open_picture(p)
    else:
        raise ValueError(f"cannot read {p}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    # the image's own name (OME Image Name, NGFF multiscales name) where the file gives one
    src.meta = src.meta.replace(name=src.meta.name or p.name)
    return src


def list_inputs(paths, storage_options: dict | None = None) -> list[Path | str]:
    """Expand folders into the images they hold (zarr stores count as one image).

    A URL ending in ``/`` is a folder too (listed with ``storage_options``, fsspec's); any other URL
    is one image, whose existence is checked when it is opened.
    """
    out = []
    for raw in paths:
        if is_url(raw):
            out.extend(list_remote_folder(raw, IMAGE_SUFFIXES, storage_options) if raw.endswith("/") else [raw])
            continue
        p = Path(raw)
        if (
            p.is_dir()
            and p.suffix.lower() != ".zarr"
            and not (p / "zarr.json").exists()
            and not (p / ".zarray").exists()
            and not (p / ".zgroup").exists()
        ):
            # hidden files are not images of the user's (macOS "._a.png", our ".a.tif.partial")
            found = sorted(c for c in p.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES and not c.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


def _norm(obj):
    return json.loads(json.dumps(obj))


def _check_target(p: Path, suffix: str, shape: tuple, dtype: np.dtype, axes: str, meta: ImageMeta) -> None:
    """Refuse, before anything is computed, a format that cannot hold the image or a path that cannot be replaced."""
    if suffix in (".png", ".jpg", ".jpeg"):
        check_picture(p, shape, dtype, axes)
    elif suffix in (".tif", ".tiff") and not writes_geotiff(suffix, axes, meta):
        check_tiff(p, dtype, meta)
    elif suffix not in (".tif", ".tiff", ".zarr"):
        raise OutputError(f"cannot write {p.name}: use .zarr, .tif, .png or .jpg")
    is_store = p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))
    if p.is_dir() and not (suffix == ".zarr" and (is_store or not any(p.iterdir()))):
        raise OutputError(
            f"{p} is a folder"
            + ("" if suffix != ".zarr" else " but not a zarr store")
            + "; it is left alone: choose another path"
        )


def write_image(
    path,
    arr,
    axes: str,
    *,
    fingerprint: dict | None = None,
    pixel_size=None,
    meta: ImageMeta | None = None,
    check: bool = False,
    stored: bool = False,
) -> Path:
    """Write a (dask or numpy) image as tif (chunk by chunk), png/jpg, or a plain OME-Zarr store.

    ``meta`` (pixel sizes, units, channels...) is written where the format can hold it;
    ``pixel_size`` (per axis of ``arr``) fills in the sizes ``meta`` lacks. ``fingerprint`` is
    recorded in the file (tif description, png text, jpg comment) so that a re-run can tell a result
    of the same settings. ``check=True`` only checks that the format can hold ``arr`` (anything
    with ``shape`` and ``dtype``) and that ``path`` can be replaced by a file or store; nothing is
    written. The file appears under its name only when complete (written beside it, then renamed).
    tif is OME-TIFF (ImageJ TIFF when ``meta`` says the input was one), tiled, compressed, with
    pyramid levels when large; ``stored=True`` says a dask ``arr`` reads from storage (no model
    behind it), so it is read twice (full resolution, then the pyramid) instead of computed to a
    temporary store first.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    dtype, shape = np.dtype(arr.dtype), tuple(arr.shape)
    meta = meta or ImageMeta(axes=axes)
    if pixel_size is not None:
        meta = meta.replace(scale={**dict(zip(axes, (float(v) for v in pixel_size))), **meta.scale})
    _check_target(p, suffix, shape, dtype, axes, meta)
    if check:
        return p
    tmp = p.with_name(f".{p.name}.partial")
    note = json.dumps(_norm(fingerprint)) if fingerprint is not None else None
    try:
        if writes_geotiff(suffix, axes, meta):  # georeferenced input: CRS, transform, nodata, bands kept
            write_geotiff(tmp, arr, axes, meta, note)
        elif suffix in (".tif", ".tiff"):
            write_tiff(tmp, arr, axes, meta, note, stored=stored)
        elif suffix == ".zarr":
            write_omezarr(tmp, arr, axes, meta, name=meta.name or p.stem)  # a napari layer's, an input's name
            if p.exists():  # a store (checked above), replaced as a whole
                shutil.rmtree(p)
        else:
            write_picture(tmp, suffix, arr, note)
        os.replace(tmp, p)
    except OSError as err:
        raise OutputError(f"writing {p} failed: {err}") from err
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return p
