"""The same call on a dask.distributed LocalCluster (2 worker processes) gives bit-identical output."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import torch

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet import io as mio

distributed = pytest.importorskip("distributed")

TILED = dict(tile=48, halo=8, blend=4, device="cpu")


@pytest.fixture
def one_thread():
    """Match the workers' torch thread count (the nanny sets OMP_NUM_THREADS=1).

    oneDNN sums 1x1 convolutions in a thread-count-dependent order, so CPU results are bit-identical
    for the same number of torch threads; with other counts they differ by at most 1 LSB.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    # one thread per worker, as with one worker per GPU; processes, so the model is loaded per worker
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        yield lc


@pytest.mark.slow
def test_cluster_output_is_bit_identical(tiny_weights, cluster, tmp_path, one_thread):
    img = np.random.default_rng(4).integers(0, 65535, (2, 90, 110), dtype=np.uint16)
    local = nm.restore(img, weights=tiny_weights, axes="ZYX", **TILED)
    with distributed.Client(cluster) as client:
        remote = nm.restore(img, weights=tiny_weights, axes="ZYX", client=client, **TILED)
        assert isinstance(remote, np.ndarray)
        np.testing.assert_array_equal(remote, local)
        # zarr output written by the workers, chunk by chunk, with progress on the client
        seen = []
        out = nm.restore(
            img,
            weights=tiny_weights,
            axes="ZYX",
            client=client,
            out=tmp_path / "d.zarr",
            progress=lambda d, t: seen.append((d, t)),
            **TILED,
        )
        np.testing.assert_array_equal(out.compute(), local)
        assert mio.is_complete(tmp_path / "d.zarr") and seen[-1][0] == seen[-1][1] == 24
        # a lazy dask input computed on the cluster
        lazy = nm.restore(
            da.from_array(img, chunks=(1, 45, 55)), weights=tiny_weights, axes="ZYX", client=client, **TILED
        )
        np.testing.assert_array_equal(client.compute(lazy).result(), local)
        # each worker process loaded the model once, itself: it is never shipped in a task
        loaded = client.run(lambda: len(__import__("napari_mirnet.weights").weights._model_cache))
        assert all(n <= 1 for n in loaded.values()) and sum(loaded.values()) >= 1


@pytest.mark.slow
def test_scheduler_address_and_cancel(tiny_weights, cluster, tmp_path, one_thread):
    img = np.random.default_rng(5).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    local = nm.restore(img, weights=tiny_weights, **TILED)
    out = nm.restore(img, weights=tiny_weights, client=cluster.scheduler_address, out=tmp_path / "a.zarr", **TILED)
    np.testing.assert_array_equal(out.compute(), local)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(engine.Cancelled):
        nm.restore(
            img, weights=tiny_weights, client=cluster.scheduler_address, cancel=cancel, out=tmp_path / "c.zarr", **TILED
        )
    assert not mio.is_complete(tmp_path / "c.zarr")
    assert mio.done_markers(tmp_path / "c.zarr").sum() < 12
