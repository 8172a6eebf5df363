"""Where a restoration's result goes: the output paths, the rule for existing outputs, and the writing.

One module for every front end: ``restore(..., out=path)``, the CLI's ``-o`` and anything else
that writes a result file. The format follows the suffix: ``.zarr`` (``.ome.zarr``) is a
resumable OME-Zarr store written chunk by chunk; ``.tif``/``.tiff`` (``.ome.tif``) is an OME-TIFF,
an ImageJ TIFF when the input was one, or a GeoTIFF (COG layout) when the input is
georeferenced; ``.png`` and ``.jpg`` hold 2-D pictures. Every file records the settings it was
made with (:func:`stored_record`), so that a re-run can tell a result of the same settings.

The rule on existing outputs (:func:`check_output`): a complete result of the same settings is
skipped; an unfinished zarr store (or the hidden store of a TIFF) of the same settings is
resumed; anything else is refused unless ``overwrite=True``; an input is never overwritten.

Outputs may be URLs (``s3://``, ``gs://``, ``az://``; ``storage_options`` are fsspec's, never
recorded or shown): a store is written there chunk by chunk, a file locally first and uploaded once
complete (:mod:`.remote`); ``http(s)://`` cannot be written. Planning is in :mod:`.planning`, the
rule on existing outputs in :mod:`.existing`, the writing in :mod:`.writing`.

Messages are in Python words (``overwrite=True``, ``format=``); the CLI says them in flags.
Nothing here imports torch: the engine is imported where a run is written.
"""

from __future__ import annotations

from .existing import check_output, is_store, resume_options, stored_record, tiff_work_store
from .planning import FORMATS, OUTPUT_SUFFIXES, check_out_path, input_name, plan_outputs
from .writing import quality_check_beside, read_result, write_result, write_run

__all__ = [
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "check_output",
    "check_out_path",
    "input_name",
    "is_store",
    "plan_outputs",
    "quality_check_beside",
    "read_result",
    "resume_options",
    "stored_record",
    "tiff_work_store",
    "write_result",
    "write_run",
]
