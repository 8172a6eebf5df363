"""Planning that scales with the tile count (issue 36, item 22): done markers read in one folder walk,
the write graph run in bounded windows with the same output bit for bit, resume across windows."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import zarr

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet import io as mio
from napari_mirnet.engine import execution as run_mod
from napari_mirnet.engine import graph

TILES = dict(tile=32, halo=8, blend=4, device="cpu")


def test_done_markers_and_digests_are_read_without_a_request_per_chunk(tmp_path, monkeypatch):
    out = mio.open_output(tmp_path / "o.zarr", {"a": 1}, (3, 120, 160), (1, 4, 4), np.uint8, "ZYX")
    done, digests = out.book[mio.DONE], out.book[mio.DIGEST]
    rng = np.random.default_rng(0)
    want = rng.random(done.shape) < 0.2
    values = rng.integers(1, 2**64 - 1, done.shape, dtype=np.uint64) * want
    for index in np.argwhere(want)[:300]:  # the first few hundred, as writes mark them
        mio.write_digest(out, tuple(index), values[tuple(index)])
        done[tuple(index)] = 1
    want[tuple(np.argwhere(want)[300:].T)] = False
    values = values * want
    through_zarr = (np.asarray(done[...]).astype(bool), np.asarray(digests[...]))
    np.testing.assert_array_equal(through_zarr[0], want)

    def refused(self, selection):
        raise AssertionError("the bookkeeping was read through zarr, one request per chunk (3 x 30 x 40)")

    monkeypatch.setattr(zarr.Array, "__getitem__", refused)
    np.testing.assert_array_equal(out.done_mask(), want)
    got = out.input_digests()
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(got, through_zarr[1])


def _graph_sizes(monkeypatch) -> list:
    """Record the task count of every graph the local scheduler is handed."""
    sizes, compute = [], run_mod.compute

    def counting(collection, run, client=None):
        sizes.append(len(collection.__dask_graph__()))
        return compute(collection, run, client)

    monkeypatch.setattr(run_mod, "compute", counting)
    return sizes


@pytest.mark.slow
def test_windows_write_the_same_bits_as_one_graph_and_stay_bounded(tiny_weights, monkeypatch):
    img = np.random.default_rng(1).integers(0, 65536, (2, 60, 56), dtype=np.uint16)
    run = engine.prepare(img, "denoise", tiny_weights, axes="ZYX", options=engine.RestoreOptions(**TILES))
    assert len(run.keys) == 2 * 4 * 4
    monkeypatch.setattr(graph, "WINDOW_TILES", 10**6)
    whole = {b: engine.execute(dataclasses.replace(run, batch=b)) for b in (1, 3)}
    sizes = _graph_sizes(monkeypatch)
    monkeypatch.setattr(graph, "WINDOW_TILES", 5)
    for b in (1, 3):  # windows of whole groups: 5 tiles, or 4 groups of 3
        sizes.clear()
        np.testing.assert_array_equal(engine.execute(dataclasses.replace(run, batch=b)), whole[b])
        assert len(sizes) >= len(run.keys) // max(5, 4 * b)
        # a window's graph: its writes, groups, and what it takes over (a few tasks a tile), however many tiles
        assert max(sizes) <= 4 * max(5, 4 * b) + 8, sizes


@pytest.mark.slow
def test_resume_across_windows_gives_the_uninterrupted_result(tiny_weights, tmp_path, monkeypatch):
    img = np.random.default_rng(2).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    monkeypatch.setattr(graph, "WINDOW_TILES", 6)
    full = nm.restore(img, "denoise", tiny_weights, **TILES)
    cancel, out = threading.Event(), tmp_path / "r.zarr"

    def stop(done, total):
        if done >= 17:  # mid-window, mid-row: the bands and groups cross the resume line
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(img, "denoise", tiny_weights, out=out, progress=stop, cancel=cancel, **TILES)
    assert 0 < mio.done_markers(out).sum() < 7 * 6
    resumed = nm.restore(img, "denoise", tiny_weights, out=out, **TILES)
    assert mio.is_complete(out)
    np.testing.assert_array_equal(np.asarray(resumed), full)


def test_restore_lazy_plans_nothing_up_front_and_a_slice_only_its_tiles(tiny_weights, tmp_path, monkeypatch):
    from napari_mirnet.engine import steps

    calls = []
    restore_tiles = steps.restore_tiles
    monkeypatch.setattr(
        steps, "restore_tiles", lambda ctx, tiles, *a: calls.append(tiles) or restore_tiles(ctx, tiles, *a)
    )
    big = zarr.create_array(str(tmp_path / "big.zarr"), shape=(4000, 4000, 3), chunks=(1024, 1024, 3), dtype="uint8")
    arr = nm.restore_lazy(big, "denoise", tiny_weights, **TILES)  # 250 x 250 tiles of 16 px
    assert arr.shape == big.shape
    ours = [layer for name, layer in arr.dask.layers.items() if name.startswith("mirnet-out-")]
    assert len(ours) == 1 and not ours[0].is_materialized(), "the 62500 tiles' tasks were made up front"
    corner = arr[:16, :16].compute()
    assert corner.shape == (16, 16, 3) and corner.dtype == np.uint8
    # the corner chunk reads its own tile only (no blend band above or to the left of it)
    assert [len(t) for t in calls] == [1], calls
