"""What a resumed store was computed from: a digest of the input behind every finished chunk.

Design. Each tile task hashes the input window it reads (BLAKE2b, 64 bits, over the window's
shape, dtype and bytes in (C, Y, X) order) while the window is in memory anyway, so a run pays
one hash per tile and no extra reads. An output chunk is made from its own tile and, when
blending, the bands of the tiles to its left, above and above-left (:func:`contributors`); the
chunk's digest combines those tiles' digests and is stored next to its done marker
(``mirnet_input`` in the store) before the marker is set. On resume the windows behind the done
chunks are read once more and hashed (:func:`verify_done`) before anything is computed or
written: a changed file, another array of the same shape and dtype, or a replaced input is
refused with :class:`~napari_mirnet.io.FingerprintMismatch`. Reading the finished part again
costs I/O only, which is small next to the model time it protects; chunks not yet done need no
check, since they are computed from the input as it is now.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import io as mio

__all__ = ["SCHEME", "chunk_digest", "contributors", "tile_digest", "verify_done"]

#: Stored in the fingerprint, so that a store written under another scheme is never resumed.
SCHEME = "blake2b-64 of each tile's input window, combined per output chunk (v1)"


def tile_digest(raw: np.ndarray) -> int:
    """64-bit digest of one input window (C, Y, X) as read."""
    raw = np.ascontiguousarray(raw)
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{raw.shape}{raw.dtype.str}".encode())
    h.update(memoryview(raw).cast("B"))
    return int.from_bytes(h.digest(), "little")


def contributors(plan, key: tuple) -> list[tuple]:
    """Tiles whose predictions make up the output chunk of ``key``: itself, left, above, above-left."""
    lead, ty, tx = key
    out = [key]
    left, up = plan.margin[1] and tx > 0, plan.margin[0] and ty > 0
    if left:
        out.append((lead, ty, tx - 1))
    if up:
        out.append((lead, ty - 1, tx))
    if left and up:
        out.append((lead, ty - 1, tx - 1))
    return out


def chunk_digest(tile_digests: list[int]) -> int:
    """Combine contributor digests (in :func:`contributors` order); never 0 (0 means none stored)."""
    h = hashlib.blake2b(digest_size=8)
    for d in tile_digests:
        h.update(int(d).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") or 1


def verify_done(run, sink, client=None) -> None:
    """Raise FingerprintMismatch when a finished chunk of ``sink`` came from other input than ``run``'s.

    With a dask.distributed ``client`` the windows are read and hashed on the workers (a cluster
    with no shared disk: the client may not be able to read the input at all, and should not).
    """
    done = sink.output.done_mask()
    if not done.any():
        return
    stored = sink.output.input_digests()
    keys = [k for k in run.keys if done[sink.chunk_index(k)]]
    needed = sorted({t for k in keys for t in contributors(run.plan, k)})
    if client is not None:
        digests = _cluster_digests(run, needed, client)
    elif run.source.kind == "dask":
        import dask

        from .options import scheduler_config

        with dask.config.set(scheduler_config(run.device)):
            digests = dict(zip(needed, dask.compute(*_dask_digest_tasks(run, needed))))
    else:
        digests = _read_digests(run, needed)
    for k in keys:
        idx = sink.chunk_index(k)
        if int(stored[idx]) != chunk_digest([digests[t] for t in contributors(run.plan, k)]):
            lead, ty, tx = k
            raise mio.FingerprintMismatch(
                f"output {sink.output.path} holds an unfinished run computed from other input data: its finished "
                f"chunk at plane {lead}, tile row {ty}, column {tx} does not match the input as it is now (another "
                "image of the same shape and dtype, or the file changed). Resume only with the original input, or "
                "pass --overwrite (overwrite=True) to start again"
            )


def _dask_digest_tasks(run, needed: list) -> list:
    """One delayed digest per window of ``needed`` for a dask input (its graph reads the windows)."""
    import dask

    from .source import canonical_dask

    src = canonical_dask(run.source)
    tasks = []
    for lead, ty, tx in needed:
        (wy0, wy1), (wx0, wx1) = run.plan.window_range(0, ty), run.plan.window_range(1, tx)
        tasks.append(dask.delayed(tile_digest)(src[tuple(lead) + (slice(None), slice(wy0, wy1), slice(wx0, wx1))]))
    return tasks


def _cluster_digests(run, needed: list, client) -> dict:
    """The digests of ``needed`` computed on the cluster's workers; only digests come back."""
    if run.source.kind == "dask":
        return dict(zip(needed, client.compute(_dask_digest_tasks(run, needed), sync=True)))
    from types import SimpleNamespace

    import dask

    # what _read_digests reads, not the whole run; rows of windows as it reads them locally, a task each
    part = SimpleNamespace(
        source=SimpleNamespace(arrays=run.source.arrays, name=run.source.name), plan=run.plan, axes=run.axes
    )
    groups = [needed[i : i + ROW_READ] for i in range(0, len(needed), ROW_READ)]
    tasks = [dask.delayed(_read_digests, pure=True)(part, group) for group in groups]
    out: dict = {}
    for part in client.compute(tasks, sync=True):
        out.update(part)
    return out


#: Most windows of one tile row read at once when checking a resumed store (bounds the memory).
ROW_READ = 32


def _read_digests(run, needed: list) -> dict:
    """Digests of the input windows of ``needed`` (sorted tile keys) of a numpy or zarr input.

    Neighbouring windows of a tile row are read in one region (a zarr request per tile costs about
    a millisecond of overhead: seconds for a store of 10^4 tiles) and cut apart in memory, which
    gives each window's digest the same bytes a tile task hashes.
    """
    from .source import read_region, read_window

    src, plan, out, i = run.source, run.plan, {}, 0
    while i < len(needed):
        lead, ty, tx = needed[i]
        j = i + 1
        while j < len(needed) and j - i < ROW_READ and needed[j] == (lead, ty, needed[j - 1][2] + 1):
            j += 1
        x0, x1 = plan.window_range(1, tx)[0], plan.window_range(1, needed[j - 1][2])[1]
        try:
            row = read_region(src.arrays, run.axes, lead, slice(*plan.window_range(0, ty)), slice(x0, x1))
        except Exception:  # read again tile by tile, for an error that names the damaged window
            row = None
        for t in needed[i:j]:
            wx0, wx1 = plan.window_range(1, t[2])
            raw = (
                read_window(src.arrays, run.axes, plan, t, src.name) if row is None else row[:, :, wx0 - x0 : wx1 - x0]
            )
            out[t] = tile_digest(raw)
        i = j
    return out
