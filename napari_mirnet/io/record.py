"""The key our run record (fingerprint, completeness) is stored under, in every output format.

One name for zarr attributes, PNG text chunks, JPEG comments, TIFF/OME/ImageJ metadata and the
GDAL metadata item of a GeoTIFF; each format module imports it from here (a reader needs no
writer's module for it).
"""

from __future__ import annotations

__all__ = ["ATTR"]

ATTR = "napari_mirnet"
