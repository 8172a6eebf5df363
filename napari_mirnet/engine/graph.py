"""The dask graph of a run: tile groups (stage 1) feeding output chunks (stage 2), lazily or into a store.

Stage 1 restores groups of tiles (one batch each); stage 2 makes each output chunk from its own
tile and, when blending, the bands of the tiles above and to the left. For zarr output the chunk
tasks write and hand the band below on as a small strip, and each tile group waits for the write
of a chunk a few tiles back, so that predictions never pile up ahead of the writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from dask.highlevelgraph import HighLevelGraph

from . import steps
from .source import canonical_dask, chunk_span, gather, pick_plane

if TYPE_CHECKING:  # imported where a lazy array is made: numpy and zarr runs never need it
    import dask.array as da

__all__ = ["lazy_array", "write_graph"]


class _Stages:
    """Graph keys and tasks of one run, built on demand."""

    def __init__(self, run, ctx: steps.TileContext):
        self.run, self.ctx = run, ctx
        self.tiles = f"mirnet-tiles-{run.run_id}"
        self.strips = f"mirnet-strip-{run.run_id}"
        self.dsk: dict = {}
        self.deps: list = []
        groups = [run.keys[i : i + run.batch] for i in range(0, len(run.keys), run.batch)]
        self.groups = groups
        self.group_of = {key: g for g, members in enumerate(groups) for key in members}

    def group_key(self, tile) -> tuple:
        return (self.tiles, self.group_of[tile])

    def add_tile_groups(self, after: dict[int, list] | None = None) -> None:
        """Stage-1 tasks; ``after[g]`` lists keys that group ``g`` must wait for (ordering only)."""
        run, after = self.run, after or {}
        window_args = self._dask_windows() if run.source.kind == "dask" else None
        for g, members in enumerate(self.groups):
            blocks = [window_args[k] for k in members] if window_args else []
            self.dsk[(self.tiles, g)] = (steps.restore_tiles, self.ctx, members, list(after.get(g, [])), *blocks)

    def _dask_windows(self) -> dict:
        """Per tile, a task that cuts its input window out of the dask input's chunks."""
        run = self.run
        src = canonical_dask(run.source)
        self.deps.append(src)
        bounds = [np.cumsum((0,) + c) for c in src.chunks]
        plan, out = run.plan, {}
        for lead, ty, tx in run.keys:
            (wy0, wy1), (wx0, wx1) = plan.window_range(0, ty), plan.window_range(1, tx)
            yi, ysl = chunk_span(bounds[-2], wy0, wy1)
            xi, xsl = chunk_span(bounds[-1], wx0, wx1)
            lead_idx = [int(np.searchsorted(bounds[d], lead[d], side="right")) - 1 for d in range(len(lead))]
            lead_off = [lead[d] - int(bounds[d][lead_idx[d]]) for d in range(len(lead))]
            # pick the plane inside each chunk, then stitch the chunks and cut the window out
            blocks = [(pick_plane, (src.name, *lead_idx, 0, i, j), tuple(lead_off)) for i in yi for j in xi]
            out[(lead, ty, tx)] = (gather, (len(yi), len(xi)), (ysl, xsl), *blocks)
        return out

    def strip_key(self, tile) -> tuple:
        """The band of ``tile`` that the chunk below blends with (a task added on first use)."""
        k = (self.strips, *tile[0], tile[1], tile[2])
        if k not in self.dsk:
            self.dsk[k] = (steps.strip, self.ctx, tile, self.group_key(tile))
        return k

    def chunk_inputs(self, tile, band_of) -> list:
        """Keys a chunk needs: its tile's group, the left tile's group, the bands from above."""
        margin = self.run.plan.margin
        lead, ty, tx = tile
        deps = [self.group_key(tile)]
        if margin[1] and tx > 0:
            deps.append(self.group_key((lead, ty, tx - 1)))
        if margin[0] and ty > 0:
            deps.append(band_of((lead, ty - 1, tx)))
            if margin[1] and tx > 0:
                deps.append(band_of((lead, ty - 1, tx - 1)))
        return list(dict.fromkeys(deps))


def lazy_array(run, ctx: steps.TileContext) -> da.Array:
    """The restored image as a lazy dask array in the input's axis order."""
    import dask.array as da

    st = _Stages(run, ctx)
    st.add_tile_groups()
    name = f"mirnet-out-{run.run_id}"
    for tile in run.keys:
        lead, ty, tx = tile
        st.dsk[(name, *lead, 0, ty, tx)] = (steps.assemble, ctx, tile, *st.chunk_inputs(tile, st.strip_key))
    hg = HighLevelGraph.from_collections(name, st.dsk, dependencies=st.deps)
    canon = da.Array(hg, name, chunks=run.out_chunks, dtype=run.imap.dtype)
    return _from_canonical(canon, run.axes)


def _from_canonical(canon: da.Array, axes: str) -> da.Array:
    """The canonical (lead..., C, Y, X) array in the input's axis order (C dropped if it had none)."""
    canon_axes = "".join(a for a in axes if a not in "CYX") + "CYX"
    if "C" not in axes:
        canon = canon[..., 0, :, :]
        canon_axes = canon_axes.replace("C", "")
    order = [canon_axes.index(a) for a in axes]
    return canon.transpose(order) if order != sorted(order) else canon


def write_graph(run, ctx: steps.TileContext, todo: list, lag: int) -> tuple[HighLevelGraph, list, tuple]:
    """The graph that writes the chunks of ``todo`` (tile keys): (graph, write keys, final key)."""
    st = _Stages(run, ctx)
    name = f"mirnet-write-{run.run_id}"
    write_key = {tile: (name, *tile[0], tile[1], tile[2]) for tile in todo}

    def band_of(tile):
        # a chunk being written hands its band on; a finished one (resume) needs a strip task
        return write_key[tile] if tile in write_key else st.strip_key(tile)

    st.add_tile_groups(after=_throttle(st, write_key, lag))
    for tile in todo:
        st.dsk[write_key[tile]] = (steps.write, ctx, tile, *st.chunk_inputs(tile, band_of))
    keys = list(write_key.values())
    st.dsk[(name, "finish")] = (steps.finish, *keys)
    return HighLevelGraph.from_collections(name, st.dsk, dependencies=st.deps), keys, (name, "finish")


def _throttle(st: _Stages, write_key: dict, lag: int) -> dict[int, list]:
    """For each tile group, the write of a chunk ``lag`` tiles before it (row-major) to wait for.

    Without these edges the scheduler may run tiles far ahead of the writes, and the predictions
    held in between grow with the image. Targets are chunks whose tiles lie in earlier groups.
    """
    nx = st.run.plan.grid[1]
    after = {}
    for g, members in enumerate(st.groups):
        lead, ty, tx = members[0]
        lin = ty * nx + tx - lag
        target = (lead, lin // nx, lin % nx) if lin >= 0 else None
        if target is None or target not in write_key:
            continue
        left = (lead, target[1], target[2] - 1)
        if st.group_of[target] < g and st.group_of.get(left, -1) < g:
            after[g] = [write_key[target]]
    return after
