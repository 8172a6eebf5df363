"""Reading images and writing results, one module per format; the resumable store and its lock.

``files`` picks the reader for a path and writes whole files; ``omezarr``, ``tiff`` (with
``tiff_meta``), ``geotiff`` (reading) and ``geotiff_write``, and ``pictures`` hold each format's
reading and writing (``ngff``: the OME-Zarr attributes written; ``record``: the key of our run
record in every format); ``store`` is the chunk-by-chunk output the engine resumes, with its
resume ``bookkeeping`` beside it; ``lock`` keeps one writer per store. Every reader returns an
:class:`ImageSource` whose :class:`~napari_mirnet.metadata.ImageMeta` says what the pixels mean.
"""

from __future__ import annotations

from .errors import FingerprintMismatch, OutputError, OutputExistsError, StoreLocked
from .files import IMAGE_SUFFIXES, list_inputs, open_image, write_image
from .image import ImageSource
from .lock import check_distinct, store_lock
from .ngff import ome_order
from .store import (
    ATTR,
    DIGEST,
    DONE,
    ZarrOutput,
    bookkeeping_path,
    done_markers,
    is_complete,
    open_output,
    store_name,
    stored_fingerprint,
    write_chunk,
    write_digest,
)

__all__ = [
    "ATTR",
    "DIGEST",
    "DONE",
    "IMAGE_SUFFIXES",
    "FingerprintMismatch",
    "ImageSource",
    "OutputError",
    "OutputExistsError",
    "StoreLocked",
    "ZarrOutput",
    "bookkeeping_path",
    "check_distinct",
    "done_markers",
    "is_complete",
    "list_inputs",
    "ome_order",
    "open_image",
    "open_output",
    "store_name",
    "stored_fingerprint",
    "store_lock",
    "write_chunk",
    "write_digest",
    "write_image",
]
