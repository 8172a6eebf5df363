"""The resumable output store: a zarr v3 group written chunk by chunk, complete only when it says so.

A run fingerprint sits in the group's attributes, a ``mirnet_done`` array holds one byte per output
chunk (set after that chunk is written), ``mirnet_input`` the digest of the input behind it, and the
OME-NGFF metadata plus ``complete: true`` are written last, so a store looks incomplete until it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr

from ..metadata import ImageMeta
from .errors import FingerprintMismatch, OutputError, OutputExistsError
from .omezarr import multiscales_attrs

__all__ = [
    "ATTR",
    "DIGEST",
    "DONE",
    "ZarrOutput",
    "is_complete",
    "open_output",
    "stored_fingerprint",
    "write_chunk",
    "write_digest",
]

ATTR = "napari_mirnet"
DONE = "mirnet_done"
DIGEST = "mirnet_input"  # per output chunk: a digest of the input it was computed from (see engine.digest)


def _norm(obj):
    return json.loads(json.dumps(obj))


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}: {a.get(k)!r} (store) vs {b.get(k)!r} (now)" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(parts[:4])


def _stored_meta(path) -> dict | None:
    """Our metadata in the zarr store at ``path``; None if it is not a napari-mirnet store."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return None
    return attrs.get(ATTR)


def stored_fingerprint(path) -> dict | None:
    """The fingerprint of a napari-mirnet store at ``path``, or None."""
    return (_stored_meta(path) or {}).get("fingerprint")


def is_complete(path) -> bool:
    return bool((_stored_meta(path) or {}).get("complete", False))


class ZarrOutput:
    """A napari-mirnet zarr store being written: data at '0', done markers at 'mirnet_done'."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.group[DONE][...]).astype(bool)

    def input_digests(self) -> np.ndarray:
        """Per output chunk, the digest of the input it was computed from (0: none recorded)."""
        if DIGEST not in self.group:
            return np.zeros(self.group[DONE].shape, np.uint64)
        return np.asarray(self.group[DIGEST][...])

    def finalize(self, axes: str, meta: ImageMeta, name: str | None = None) -> None:
        """Write the OME-NGFF metadata and mark the store complete, in one write of its attributes."""
        attrs = dict(self.group.attrs)
        ours = attrs[ATTR]
        ours["complete"] = True
        n_c = self.group["0"].shape[axes.index("C")] if "C" in axes else None
        ome = multiscales_attrs(axes, meta, name=Path(name).name if name else "restored", n_channels=n_c)
        # one write of zarr.json (atomic in LocalStore): metadata and the completion marker together
        self.group.attrs.update({"ome": ome, ATTR: ours})


def open_output(path, fingerprint: dict, shape, chunks, dtype, axes: str, overwrite: bool = False) -> ZarrOutput:
    """Create the store, or reopen an unfinished one with the same fingerprint (resume)."""
    p = Path(path)
    fingerprint = _norm(fingerprint)
    if p.exists() and not p.is_dir():
        raise OutputError(f"output {p} is an existing file, not a zarr store; choose another path")
    if p.exists():
        meta = _stored_meta(p)
        if meta is None:
            if any(p.iterdir()):
                raise OutputError(
                    f"output {p} exists and is not a napari-mirnet result; it is left alone: choose another path"
                )
        else:
            same = meta.get("fingerprint") == fingerprint
            if meta.get("complete") and not overwrite:
                raise OutputExistsError(
                    f"output {p} is already complete"
                    + ("" if same else " (from other settings)")
                    + "; pass --overwrite (overwrite=True) to replace it",
                    same,
                )
            if not meta.get("complete") and not overwrite:
                if not same:
                    raise FingerprintMismatch(
                        f"output {p} holds an unfinished run with other settings ({_diff(meta.get('fingerprint', {}), fingerprint)}); "
                        "re-run with the original settings to resume it, or pass --overwrite to start again"
                    )
                g = zarr.open_group(str(p), mode="r+")
                if tuple(g["0"].shape) != tuple(shape):
                    raise FingerprintMismatch(f"output {p} has shape {g['0'].shape}, expected {tuple(shape)}")
                return ZarrOutput(p, g)
            shutil.rmtree(p)  # overwrite a store we wrote ourselves
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.create_group(str(p), zarr_format=3, overwrite=False)
        g.attrs.update({ATTR: {"fingerprint": fingerprint, "complete": False}})
        g.create_array(
            "0",
            shape=tuple(shape),
            chunks=tuple(chunks),
            dtype=np.dtype(dtype),
            fill_value=0,
            dimension_names=[a.lower() for a in axes],
        )
        grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
        # one byte per output chunk, one file each: concurrent writers never share a chunk
        g.create_array(DONE, shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0, compressors=None)
        g.create_array(DIGEST, shape=grid, chunks=(1,) * len(grid), dtype="uint64", fill_value=0, compressors=None)
    except OSError as err:
        raise OutputError(f"cannot create output {p}: {err.strerror or err} (is the location writable?)") from err
    return ZarrOutput(p, g)


def write_digest(output: ZarrOutput, chunk_index: tuple[int, ...], digest: int) -> None:
    """Record the input digest of a chunk (before its data and done marker are written)."""
    output.group[DIGEST][tuple(chunk_index)] = np.uint64(digest)


def write_chunk(output: ZarrOutput, block: np.ndarray, chunk_index: tuple[int, ...]) -> None:
    """Write one chunk-aligned block, then its done marker (never the other way round)."""
    data, done = output.group["0"], output.group[DONE]
    region = tuple(slice(i * c, i * c + n) for i, c, n in zip(chunk_index, data.chunks, block.shape))
    data[region] = block
    done[tuple(chunk_index)] = 1
