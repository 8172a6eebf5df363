"""The dask graph of a run: tile groups (stage 1) feeding output chunks (stage 2), lazily or into a store.

Stage 1 restores groups of tiles (one batch each); stage 2 makes each output chunk from its own
tile and, when blending, the bands of the tiles above and to the left. For zarr output the chunk
tasks write and hand the band below on as a small strip, and each tile group waits for the write
of a chunk a few tiles back, so that predictions never pile up ahead of the writes.

Planning stays a small part of a run however many tiles it has: a written run is computed in
windows of a bounded number of tiles (:class:`WriteWindows`), and a lazy array's tasks are made
only for the chunks that are computed (:class:`_LazyLayer`). See benchmarks/planning.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer

from . import steps
from .source import canonical_dask, chunk_span, gather, pick_plane

if TYPE_CHECKING:  # imported where a lazy array is made: numpy and zarr runs never need it
    import dask.array as da

__all__ = ["WriteWindows", "lazy_array"]


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
        self._src = self._bounds = None  # the dask input, canonical, and its chunk bounds

    def group_key(self, tile) -> tuple:
        return (self.tiles, self.group_of[tile])

    def add_tile_groups(self, after: dict[int, list] | None = None) -> None:
        """Stage-1 tasks; ``after[g]`` lists keys that group ``g`` must wait for (ordering only)."""
        for g in range(len(self.groups)):
            self.add_group(g, (after or {}).get(g, []))

    def add_group(self, g: int, after: list) -> None:
        """Add the stage-1 task of group ``g``; ``after`` lists keys it must wait for (ordering only)."""
        self.dsk[(self.tiles, g)] = self.group_task(g, after)

    def group_task(self, g: int, after: list) -> tuple:
        members = self.groups[g]
        blocks = [self._dask_window(k) for k in members] if self.run.source.kind == "dask" else []
        return (steps.restore_tiles, self.ctx, members, list(after), *blocks)

    def use_source(self) -> None:
        """Make the dask input's graph part of the graph being built (dask input only)."""
        if self.run.source.kind == "dask":
            if self._src is None:
                self._src = canonical_dask(self.run.source)
                self._bounds = [np.cumsum((0,) + c) for c in self._src.chunks]
            self.deps.append(self._src)

    def _dask_window(self, key) -> tuple:
        """A task that cuts the input window of tile ``key`` out of the dask input's chunks."""
        src, bounds, plan = self._src, self._bounds, self.run.plan
        lead, ty, tx = key
        (wy0, wy1), (wx0, wx1) = plan.window_range(0, ty), plan.window_range(1, tx)
        yi, ysl = chunk_span(bounds[-2], wy0, wy1)
        xi, xsl = chunk_span(bounds[-1], wx0, wx1)
        lead_idx = [int(np.searchsorted(bounds[d], lead[d], side="right")) - 1 for d in range(len(lead))]
        lead_off = [lead[d] - int(bounds[d][lead_idx[d]]) for d in range(len(lead))]
        # pick the plane inside each chunk, then stitch the chunks and cut the window out
        blocks = [(pick_plane, (src.name, *lead_idx, 0, i, j), tuple(lead_off)) for i in yi for j in xi]
        return (gather, (len(yi), len(xi)), (ysl, xsl), *blocks)

    def strip_key_of(self, tile) -> tuple:
        """The key of the band of ``tile`` that the chunk below blends with (no task added)."""
        return (self.strips, *tile[0], tile[1], tile[2])

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
    """The restored image as a lazy dask array in the input's axis order.

    Its graph is one layer that makes tasks on demand (:class:`_LazyLayer`): computing a part of
    the array plans only the tiles that part needs, and nothing is planned up front.
    """
    import dask.array as da

    st = _Stages(run, ctx)
    st.use_source()
    name = f"mirnet-out-{run.run_id}"
    hg = HighLevelGraph.from_collections(name, _LazyLayer(st, name), dependencies=st.deps)
    canon = da.Array(hg, name, chunks=run.out_chunks, dtype=run.imap.dtype)
    return _from_canonical(canon, run.axes)


class _LazyLayer(Layer):
    """The lazy array's tasks (tile groups, bands, output chunks), each made when it is asked for.

    A materialised graph of 10^5 tiles costs seconds and hundreds of MiB before anything runs; this
    layer holds the run's stages only, and culling (what dask does before computing) makes the
    tasks of the requested chunks and of the tiles they read.
    """

    has_legacy_tasks = True  # tuple tasks: dask's cull then asks us, and never lists every task

    def __init__(self, st: _Stages, name: str):
        super().__init__()
        self.st, self.name = st, name
        self.ny = st.run.plan.grid[0]

    def _strip(self, tile) -> tuple:
        return (self.st.strips, *tile[0], tile[1], tile[2])

    def __getitem__(self, key):
        st = self.st
        try:
            if key[0] == self.name:
                tile = (tuple(key[1:-3]), key[-2], key[-1])
                group = st.group_key(tile)  # KeyError for a tile the run does not have
                return (steps.assemble, st.ctx, tile, *st.chunk_inputs(tile, st.strip_key_of))
            if key[0] == st.strips and st.run.plan.margin[0]:
                tile = (tuple(key[1:-2]), key[-2], key[-1])
                group = st.group_key(tile)
                if tile[1] + 1 < self.ny:
                    return (steps.strip, st.ctx, tile, group)
            if key[0] == st.tiles and len(key) == 2 and 0 <= key[1] < len(st.groups):
                return st.group_task(key[1], [])
        except (TypeError, IndexError, KeyError):
            pass
        raise KeyError(key)

    def _keys(self):
        st = self.st
        yield from ((st.tiles, g) for g in range(len(st.groups)))
        for tile in st.run.keys:
            yield (self.name, *tile[0], 0, tile[1], tile[2])
            if st.run.plan.margin[0] and tile[1] + 1 < self.ny:
                yield self._strip(tile)

    def __iter__(self):
        return self._keys()

    def __len__(self) -> int:
        n = len(self.st.run.keys)
        with_strip = n - n // self.ny if self.st.run.plan.margin[0] else 0
        return len(self.st.groups) + n + with_strip

    def is_materialized(self) -> bool:
        return False

    def get_output_keys(self):
        return set(self._keys())

    def cull(self, keys, all_hlg_keys):
        """The tasks ``keys`` need, made now, and their dependencies (dask's :meth:`Layer.cull`)."""
        from dask.core import keys_in_tasks

        out, deps, work = {}, {}, [k for k in keys if k in self]
        while work:
            k = work.pop()
            if k in out:
                continue
            out[k] = self[k]
            deps[k] = keys_in_tasks(all_hlg_keys, [out[k]]) if k[0] == self.st.tiles else set(_refs(out[k]))
            work.extend(d for d in deps[k] if d not in out and d[0] in (self.name, self.st.strips, self.st.tiles))
        return MaterializedLayer(out, annotations=self.annotations), deps


def _from_canonical(canon: da.Array, axes: str) -> da.Array:
    """The canonical (lead..., C, Y, X) array in the input's axis order (C dropped if it had none)."""
    canon_axes = "".join(a for a in axes if a not in "CYX") + "CYX"
    if "C" not in axes:
        canon = canon[..., 0, :, :]
        canon_axes = canon_axes.replace("C", "")
    order = [canon_axes.index(a) for a in axes]
    return canon.transpose(order) if order != sorted(order) else canon


class WriteWindows:
    """The graph that writes the chunks of ``todo`` (tile keys), cut into windows run one after another.

    One graph for every tile costs the scheduler time and memory that grow faster than the tile
    count (10^5 tiles: a minute before the first one starts). A window holds whole tile groups, a
    few hundred to a few thousand tiles; the first windows are small so that the first tile starts
    at once. What a later window needs from an earlier one (the band a written chunk hands down,
    the last group's predictions for the chunk to its right) is kept from the earlier window's
    result (:meth:`keep`) and enters the later graph as a value. The tasks, tile groups and inputs
    are those of a single graph, so the output is the same bit for bit.
    """

    def __init__(self, run, ctx: steps.TileContext, todo: list, lag: int, largest: int | None = None):
        self.run, self.ctx, self.todo, self.lag = run, ctx, todo, lag
        self.name = f"mirnet-write-{run.run_id}"
        self._st = _Stages(run, ctx)
        self.windows = _cut(todo, self._st.group_of, run.batch, largest)
        self.window_of = {t: w for w, tiles in enumerate(self.windows) for t in tiles}
        self.carry: dict = {}  # key -> (value, last window that reads it)

    def write_key(self, tile) -> tuple:
        return (self.name, *tile[0], tile[1], tile[2])

    def graph(self, w: int) -> tuple[HighLevelGraph, list, tuple, list]:
        """Window ``w``: (graph, its write keys, final key, keys the final hands back for later windows)."""
        st, tiles = self._st, self.windows[w]
        st.dsk, st.deps = {key: (steps.held, _Held(value)) for key, (value, _) in self.carry.items()}, []
        st.use_source()

        def band_of(tile):
            # a chunk written in this run hands its band on; a finished one (resume) needs a strip task
            return self.write_key(tile) if tile in self.window_of else st.strip_key(tile)

        writes = {self.write_key(t): (steps.write, self.ctx, t, *st.chunk_inputs(t, band_of)) for t in tiles}
        st.dsk.update(writes)
        refs = {k for task in st.dsk.values() for k in _refs(task)}
        for key in [k for k in self.carry if k not in refs]:
            del st.dsk[key]  # held for a later window
        after = _throttle(st, {t: self.write_key(t) for t in tiles}, self.lag)
        for g in sorted(k[1] for k in refs if k[0] == st.tiles and k not in st.dsk):
            st.add_group(g, after.get(g, []))
        exports = self._exports(w, tiles)
        final = (self.name, "finish", w)
        others = [k for k in writes if k not in self._last]
        st.dsk[final] = (steps.finish_window, len(exports), *exports, *others)
        graph = HighLevelGraph.from_collections(self.name, st.dsk, dependencies=st.deps)
        return graph, list(writes), final, exports

    def _exports(self, w: int, tiles: list) -> list:
        """Keys computed in window ``w`` that a later window reads (each with the last window that does)."""
        st, (my, mx), nx = self._st, self.run.plan.margin, self.run.plan.grid[1]
        later = {}

        def note(key, readers):
            last = max((self.window_of.get(r, -1) for r in readers), default=-1)
            if last > w and key in st.dsk and key not in self.carry:
                later[key] = last

        for key in list(st.dsk):
            if my and key[0] in (self.name, st.strips):  # the chunks below blend with the band handed on
                lead, ty, tx = tuple(key[1:-2]), key[-2], key[-1]
                note(key, [(lead, ty + 1, tx), (lead, ty + 1, tx + 1)])
            elif mx and key[0] == st.tiles:  # a group's predictions, for the chunk right of its last tile
                lead, ty, tx = st.groups[key[1]][-1]
                note(key, [(lead, ty, tx + 1)] if tx + 1 < nx else [])
        self._last = later
        return list(later)

    def keep(self, w: int, exports: list, values: list) -> None:
        """Hold what window ``w`` computed for later windows; drop what no later window reads."""
        self.carry = {k: v for k, v in self.carry.items() if v[1] > w}
        self.carry.update({k: (v, self._last[k]) for k, v in zip(exports, values)})


class _Held:
    """A value computed in an earlier window (opaque to dask: never searched for keys)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _refs(task) -> list:
    """The graph keys a task reads (keys are tuples that start with a name; tile keys do not)."""
    return [a for a in task[1:] if isinstance(a, tuple) and a and isinstance(a[0], str)]


#: Tiles per window of a written run (at least 4 groups): the graph of a window costs the
#: scheduler about 0.3 ms a tile, and the windows' ends, where the pipeline drains, stay rare.
WINDOW_TILES = 1024


def _cut(todo: list, group_of: dict, batch: int, largest: int | None) -> list[list]:
    """``todo`` in windows of whole groups, growing from a few groups (a prompt first tile) to ``largest`` tiles."""
    largest = largest or max(WINDOW_TILES, 4 * batch)
    size, out, cur = min(largest, max(4 * batch, 64)), [], []
    for i, t in enumerate(todo):
        cur.append(t)
        nxt = todo[i + 1] if i + 1 < len(todo) else None
        if len(cur) >= size and (nxt is None or group_of[nxt] != group_of[t]):
            out.append(cur)
            cur, size = [], min(largest, 2 * size)
    if cur:
        out.append(cur)
    return out


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
