"""The chunked engine: tiling, blending, axes, lazy dask, SR chunks, OOM split, progress/cancel, bad inputs."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import warnings
import weakref

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

import napari_mirnet as nm
import napari_mirnet.engine.forward  # noqa: F401  (engine.forward below: a run imports it, the engine does not)
from napari_mirnet import engine
from napari_mirnet import io as mio
from napari_mirnet.api import restore_whole

RNG = np.random.default_rng(1)
TILED = dict(tile=48, halo=8, blend=4, device="cpu")


def _rgb(h=90, w=110):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ plan
def test_plan_partitions_the_image_and_keeps_multiples_of_4():
    plan = engine.plan_tiles(203, 150, tile=64, halo=12, blend=6)
    assert plan.core == (40, 40) and plan.halo == (12, 12) and plan.window == (64, 64)
    for ax, n in ((0, 203), (1, 150)):
        cores = [plan.core_range(ax, i) for i in range(plan.grid[ax])]
        assert cores[0][0] == 0 and cores[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # each pixel in exactly one core
        for i in range(plan.grid[ax]):
            w0, w1 = plan.window_range(ax, i)
            p0, p1 = plan.pred_range(ax, i)
            assert 0 <= w0 <= p0 and p1 <= w1 <= n and w1 - w0 == 64
        # the feathered weights of all tiles sum to one at every pixel
        total = sum(
            np.pad(
                engine.plan.blend_ramp(*plan.pred_range(ax, i), *plan.core_range(ax, i), plan.margin[ax], n),
                (plan.pred_range(ax, i)[0], n - plan.pred_range(ax, i)[1]),
            )
            for i in range(plan.grid[ax])
        )
        np.testing.assert_allclose(total, 1.0)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(tile=50, halo=8, blend=0), "multiples of 4"),
        (dict(tile=48, halo=6, blend=0), "multiples of 4"),
        (dict(tile=48, halo=8, blend=12), "cannot exceed the halo"),
        (dict(tile=32, halo=16, blend=0), "leaves a core"),
    ],
)
def test_bad_tile_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        engine.plan_tiles(100, 100, **kw)


def test_super_resolution_plan_scales_chunks():
    plan = engine.plan_tiles(100, 70, tile=96, halo=16, blend=8, factor=2)
    assert plan.core == (32, 32) and plan.halo == (8, 8)
    ys, xs = plan.out_chunks()
    assert sum(ys) == 200 and sum(xs) == 140 and ys[0] == 64


@pytest.mark.slow
def test_default_tile_comes_from_measured_bytes_per_pixel(tiny_weights, monkeypatch):
    from napari_mirnet.weights import cached_model

    model = cached_model(tiny_weights, "cpu")
    bpp = engine.bytes_per_pixel(model)
    # n_feat=16: a few hundred bytes per pixel (about 48 bytes per feature channel)
    assert 300 < bpp < 3000
    monkeypatch.setattr(engine.memory, "memory_budget", lambda dev: bpp * 1000**2)
    assert engine.memory.memory_tile(model) == 992
    monkeypatch.setattr(engine.memory, "memory_budget", lambda dev: bpp * 10)
    assert engine.memory.memory_tile(model) == 64
    assert engine.default_tile(model) == 64  # the CPU's fastest tile never exceeds the memory one


# ------------------------------------------------------------------------------- correctness
def test_one_tile_equals_whole_image_inference(tiny_weights):
    img = _rgb()
    out = nm.restore(img, weights=tiny_weights, device="cpu", tile=256, halo=16)
    np.testing.assert_array_equal(out, restore_whole(img, weights=tiny_weights, device="cpu"))


@pytest.mark.parametrize("blend", [0, 4])
def test_identity_model_survives_tiling_exactly(identity_weights, blend):
    """With an identity network every crop, offset and blend weight shows up as a difference."""
    img = _rgb(101, 77)
    out = nm.restore(img, weights=identity_weights, device="cpu", tile=32, halo=8, blend=blend)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("scale", [2, 3])
def test_tiled_super_resolution_matches_whole_bicubic(identity_weights, scale):
    img = _rgb(41, 53)
    whole = restore_whole(img, "super_resolution", identity_weights, scale=scale, device="cpu")
    lazy = nm.restore(
        da.from_array(img, chunks=(20, 20, 3)),
        "super_resolution",
        identity_weights,
        scale=scale,
        tile=48 * scale // 2 + 16,
        halo=8,
        blend=4,
        device="cpu",
    )
    assert lazy.shape == whole.shape and lazy.chunks[0][0] % scale == 0
    np.testing.assert_allclose(lazy.compute().astype(int), whole.astype(int), atol=1)


@pytest.mark.slow
def test_numpy_dask_and_zarr_inputs_agree(tiny_weights, tmp_path):
    img = _rgb()
    ref = nm.restore(img, weights=tiny_weights, **TILED)
    assert isinstance(ref, np.ndarray) and ref.shape == img.shape and ref.dtype == img.dtype
    lazy = nm.restore(da.from_array(img, chunks=(37, 29, 3)), weights=tiny_weights, **TILED)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), ref)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, chunks=(32, 32, 3), dtype=img.dtype)
    z[...] = img
    np.testing.assert_array_equal(nm.restore(z, weights=tiny_weights, **TILED).compute(), ref)
    path_lazy = nm.restore(str(tmp_path / "in.zarr"), weights=tiny_weights, **TILED)
    np.testing.assert_array_equal(path_lazy.compute(), ref)


def test_dask_input_stays_lazy(tiny_weights):
    calls = []

    def count(block):
        if block.size:  # dask probes with empty arrays while building its own map_blocks
            calls.append(block.shape)
        return block

    src = da.from_array(_rgb(), chunks=(45, 55, 3)).map_blocks(count, dtype=np.uint8)
    progress = []
    out = nm.restore(src, weights=tiny_weights, progress=lambda d, t: progress.append(d), **TILED)
    lazy2 = nm.restore_lazy(_rgb(), weights=tiny_weights, **TILED)
    assert calls == [] and progress == [] and isinstance(lazy2, da.Array)
    out.compute()
    assert calls and progress[-1] == len(progress)


@pytest.mark.parametrize("axes, shape", [("ZYX", (3, 50, 60)), ("CYX", (2, 50, 60)), ("TZCYX", (2, 1, 3, 40, 44))])
def test_other_axes_are_iterated(tiny_weights, axes, shape):
    img = RNG.integers(0, 65535, shape, dtype=np.uint16)
    out = nm.restore(img, weights=tiny_weights, axes=axes, **TILED)
    assert out.shape == img.shape and out.dtype == img.dtype
    # each plane alone gives the same result: the other axes are iterated, not mixed
    lead = [i for i, a in enumerate(axes) if a not in "CYX"]
    first = tuple(0 if i in lead else slice(None) for i in range(len(axes)))
    plane_axes = "".join(a for a in axes if a in "CYX")
    np.testing.assert_array_equal(nm.restore(img[first], weights=tiny_weights, axes=plane_axes, **TILED), out[first])


def test_output_scale_divides_y_and_x():
    assert engine.output_scale((2.0, 0.5, 0.5, 1.0), "ZYXC", 2) == (2.0, 0.25, 0.25, 1.0)


# ---------------------------------------------------------------------------- OOM and batching
class _Picky(torch.nn.Module):
    """Doubles its input; raises CUDA out-of-memory on batches > 1 or tiles over 40x40."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        # an exception still being handled here means the caller retries inside its except block,
        # where the failed attempt's tensors are kept alive (a real GPU then fails again)
        self.calls.append((tuple(x.shape), sys.exc_info()[0]))
        if x.shape[0] > 1 or x.shape[-1] * x.shape[-2] > 1600:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2


def test_out_of_memory_halves_the_batch_then_splits_the_tile():
    model, x = _Picky(), torch.rand(2, 3, 64, 72)
    with pytest.warns(RuntimeWarning) as record:
        y = engine.forward.forward_with_retry(model, x, "fp32")
    torch.testing.assert_close(y, x * 2)
    text = " ".join(str(r.message) for r in record)
    assert "batches of 1" in text and "splitting it into 4" in text
    assert len(model.calls) > 3 and all(exc is None for _, exc in model.calls)


class _GpuLike(torch.nn.Module):
    """Doubles its input through two scratch buffers drawn from a fixed memory budget, as on a GPU:
    buffers that something else keeps alive (a traceback, say) still count against the budget."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget, self.live = budget, weakref.WeakSet()

    def _alloc(self, n: int) -> torch.Tensor:
        if sum(t.numel() for t in self.live) + n > self.budget:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (emulated)")
        buf = torch.empty(n)
        self.live.add(buf)
        return buf

    def forward(self, x):
        first = self._alloc(2 * x.numel())  # noqa: F841  (held, like an early layer's activation)
        self._alloc(2 * x.numel())
        return x * 2


def test_out_of_memory_retry_frees_the_failed_attempt_first():
    # the whole 64x64 tile needs 2 x 24576 > 30000: it fails after its first buffer; a quarter tile
    # fits only if that buffer has been freed by then
    x = torch.rand(1, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match="splitting it into 4"):
        y = engine.forward.forward_with_retry(_GpuLike(30000), x, "fp32")
    torch.testing.assert_close(y, x * 2)


def test_out_of_memory_on_a_tile_too_small_to_split_is_raised():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.forward.forward_with_retry(_Picky(), torch.rand(1, 3, 24, 80), "fp32")


def test_tiles_are_batched_when_memory_allows(tiny_weights, monkeypatch):
    sizes = []
    real = engine.forward.forward_with_retry

    def spy(model, x, precision, depth=0):
        sizes.append(x.shape[0])
        return real(model, x, precision, depth)

    monkeypatch.setattr(engine.forward, "forward_with_retry", spy)
    monkeypatch.setattr(engine.memory, "default_batch", lambda *a: 4)
    img = _rgb()
    out = nm.restore(img, weights=tiny_weights, **TILED)
    assert max(sizes) == 4
    monkeypatch.setattr(engine.memory, "default_batch", lambda *a: 1)
    # batched and single convolutions may differ in the last float bit: at most 1 LSB
    np.testing.assert_allclose(out.astype(int), nm.restore(img, weights=tiny_weights, **TILED).astype(int), atol=1)


# ------------------------------------------------------------------------- progress and cancel
def test_progress_and_cancel(tiny_weights, tmp_path):
    seen = []
    nm.restore(_rgb(), weights=tiny_weights, progress=lambda d, t: seen.append((d, t)), **TILED)
    # 0/12 as soon as the tiles are planned (issue 31 item 1), then one report per tile
    assert seen[0] == (0, 12) and seen[-1][0] == seen[-1][1] == len(seen) - 1 == 12
    cancel = threading.Event()

    def stop_after_two(done, total):
        if done >= 2:
            cancel.set()

    with pytest.raises(engine.Cancelled):
        nm.restore(
            _rgb(), weights=tiny_weights, progress=stop_after_two, cancel=cancel, out=tmp_path / "c.zarr", **TILED
        )
    assert not mio.is_complete(tmp_path / "c.zarr")


def test_progress_speaks_the_shared_protocol(tiny_weights, tmp_path):
    from napari_mirnet.progress import Cancelled, Progress

    assert engine.Cancelled is Cancelled  # one class for restore, train and finetune
    seen = []

    def report(p):
        seen.append(p)

    nm.restore(_rgb(), weights=tiny_weights, progress=report, out=tmp_path / "p.zarr", **TILED)
    assert all(isinstance(p, Progress) for p in seen) and seen
    assert {(p.job, p.stage, p.unit, p.total) for p in seen} == {("restore", "run", "tile", 12)}
    assert [p.done for p in seen] == list(range(13))


def test_run_control_pickles_to_a_silent_control():
    import pickle

    calls = []
    cancel = threading.Event()
    cancel.set()
    control = engine.RunControl(lambda d, t: calls.append((d, t)), cancel, 4)
    with pytest.raises(engine.Cancelled):
        control.check()
    control.tiles_done(1)
    assert calls == [(1, 4)]
    worker = pickle.loads(pickle.dumps(control))  # what a dask.distributed worker gets
    worker.check()  # the event stays with the client
    worker.tiles_done(1)
    assert calls == [(1, 4)] and worker.cancel is None


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "image, axes, exc, msg",
    [
        (np.zeros((20, 20), np.uint8), "YXQ", ValueError, "unknown axis"),
        (np.zeros((20, 20), np.uint8), "ZYX", ValueError, "has 3 letters"),
        (np.zeros((20, 20), np.complex64), None, TypeError, "cannot be restored"),
        (np.zeros((20, 20), bool), None, TypeError, "cannot be restored"),
        (np.zeros((0, 20), np.uint8), None, ValueError, "empty"),
        (np.zeros((1, 20), np.uint8), None, ValueError, "at least 2x2"),
        (np.zeros((20, 1), np.float32), None, ValueError, "at least 2x2"),
        (np.zeros((5, 6, 7), np.uint8), None, ValueError, "cannot tell the axes"),
    ],
)
def test_bad_inputs_are_refused(tiny_weights, tmp_path, image, axes, exc, msg):
    with pytest.raises(exc, match=msg):
        nm.restore(image, weights=tiny_weights, axes=axes, out=tmp_path / "o.zarr", **TILED)
    assert not mio.is_complete(tmp_path / "o.zarr")


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_pixels(tiny_weights, tmp_path, bad):
    # NaN is nodata (tests/test_geo.py); Inf is refused
    img = RNG.random((60, 70)).astype(np.float32)
    img[50, 60] = bad
    with pytest.raises(ValueError, match="Inf pixels"):
        nm.restore(img, weights=tiny_weights, **TILED)
    # a lazy input is checked tile by tile: the error comes when the tile is reached
    lazy = da.from_array(img, chunks=30)
    with pytest.raises(ValueError, match="Inf pixels"):
        nm.restore(lazy, weights=tiny_weights, normalisation="fixed", out=tmp_path / "n.zarr", **TILED)
    assert not mio.is_complete(tmp_path / "n.zarr")


def test_dual_pixel_views_must_match(tiny_dual_weights):
    left = _rgb(40, 40)
    with pytest.raises(ValueError, match="left and right views must match"):
        nm.restore((left, left[:30]), "defocus", tiny_dual_weights, **TILED)
    out = nm.restore((left, left[::-1].copy()), "defocus", tiny_dual_weights, **TILED)
    assert out.shape == left.shape


def test_output_path_that_is_a_file(tiny_weights, tmp_path):
    f = tmp_path / "taken.zarr"
    f.write_text("not a store")
    with pytest.raises(mio.OutputError, match="existing file"):
        nm.restore(_rgb(), weights=tiny_weights, out=f, **TILED)
    assert f.read_text() == "not a store"


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only); yields a function that remounts it with options."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(opts: str):
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)
            mounted.clear()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(True)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", str(mnt)])


def test_read_only_output_location(tiny_weights, tmpfs):
    mnt = tmpfs("ro,size=1m")
    with pytest.raises(mio.OutputError, match="cannot create output.*writable"):
        nm.restore(_rgb(), weights=tiny_weights, out=mnt / "o.zarr", **TILED)


def test_disk_full_mid_run_then_resume(tiny_weights, tmp_path, monkeypatch):
    """ENOSPC after a few chunks: a clear error, an incomplete store, and a clean resume."""
    img = _rgb()
    real = mio.write_chunk
    count = [0]

    def failing(path, block, index):
        count[0] += 1
        if count[0] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, block, index)

    monkeypatch.setattr(mio, "write_chunk", failing)
    out = tmp_path / "full.zarr"
    with pytest.raises(mio.OutputError, match="No space left.*re-run the same command"):
        nm.restore(img, weights=tiny_weights, out=out, **TILED)
    assert not mio.is_complete(out)
    assert 0 < mio.done_markers(out).sum() < 12
    monkeypatch.setattr(mio, "write_chunk", real)
    resumed = nm.restore(img, weights=tiny_weights, out=out, **TILED).compute()
    assert mio.is_complete(out)
    np.testing.assert_array_equal(resumed, nm.restore(img, weights=tiny_weights, **TILED))


def test_real_full_disk(tiny_weights, tmpfs):
    mnt = tmpfs("size=48k")
    img = RNG.integers(0, 65535, (160, 160, 3), dtype=np.uint16)  # ~150 kB of noise: does not fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(mio.OutputError, match="(No space|space left).*re-run"):
            nm.restore(img, weights=tiny_weights, out=mnt / "o.zarr", **TILED)
    assert not mio.is_complete(mnt / "o.zarr")


def test_lazy_run_callbacks_are_released_with_the_array(tiny_weights):
    import gc

    def callback(done, total):
        pass

    alive = weakref.ref(callback)
    lazy = nm.restore_lazy(_rgb(), weights=tiny_weights, progress=callback, **TILED)
    del callback
    view = lazy[:10]  # derived arrays keep the run alive
    del lazy
    gc.collect()
    assert alive() is not None
    view.compute()
    del view
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------------ test-time augmentation
@pytest.mark.slow
def test_tta_one_tile_equals_whole_image_and_differs_from_one_pass(tiny_weights):
    img = _rgb()
    out = nm.restore(img, weights=tiny_weights, device="cpu", tile=256, halo=16, tta=True)
    np.testing.assert_array_equal(out, restore_whole(img, weights=tiny_weights, device="cpu", tta=True))
    plain = nm.restore(img, weights=tiny_weights, device="cpu", tile=256, halo=16)
    assert np.abs(out.astype(int) - plain.astype(int)).max() > 0


@pytest.mark.parametrize("task,scale", [("denoise", None), ("super_resolution", 2)])
@pytest.mark.slow
def test_tta_survives_tiling_and_super_resolution(identity_weights, task, scale):
    img = _rgb(61, 45)
    ref = restore_whole(img, task, identity_weights, scale=scale, device="cpu")
    out = nm.restore(
        da.from_array(img, chunks=(30, 30, 3)),
        task,
        identity_weights,
        scale=scale,
        tile=32,
        halo=8,
        blend=4,
        device="cpu",
        tta=True,
    ).compute()
    np.testing.assert_allclose(out.astype(int), ref.astype(int), atol=1)


def test_tta_is_part_of_the_store_fingerprint(tiny_weights, tmp_path):
    img = _rgb(40, 40)
    nm.restore(img, weights=tiny_weights, out=str(tmp_path / "a.zarr"), tta=True, **TILED)
    assert mio.stored_fingerprint(tmp_path / "a.zarr")["tta"] is True
    nm.restore(img, weights=tiny_weights, out=str(tmp_path / "b.zarr"), **TILED)
    assert mio.stored_fingerprint(tmp_path / "b.zarr")["tta"] is False


# --------------------------------------------------------------------- CPU default tile by speed
def _table_model(monkeypatch, tmp_path, table: dict):
    """The tiny model with a throughput table in a private cache file (no timing involved)."""
    import json

    from napari_mirnet.model import MIRNetV2

    model = MIRNetV2(n_feat=16, n_mrb=1).eval()
    path = tmp_path / "tp.json"
    monkeypatch.setenv("NAPARI_MIRNET_THROUGHPUT", str(path))
    monkeypatch.setattr(engine.memory, "_measured", {})
    key = engine.memory._throughput_key(model, "fp32")
    path.write_text(json.dumps({key: {"mpix_s": {str(e): v for e, v in table.items()}}}))
    return model


def test_cpu_default_tile_follows_measured_throughput(monkeypatch, tmp_path):
    """The fastest tile per pixel, not the largest that fits, and the cores split the image evenly."""
    model = _table_model(monkeypatch, tmp_path, {256: 0.15, 384: 0.19, 512: 0.2, 768: 0.1, 1024: 0.08, 2048: 0.05})
    tile, halo = engine.memory.default_geometry(model, "fp32", 2048, 2048)
    plan = engine.plan_tiles(2048, 2048, tile, halo, min(16, halo))
    assert halo == 32 and 400 <= tile <= 640, (tile, halo)
    # no tile is wasted on a sliver: the last core is (nearly) full
    assert 2048 - plan.core_range(0, plan.grid[0] - 1)[0] >= 0.9 * plan.core[0]
    # a table that favours large tiles moves the choice up; the memory budget caps it
    big = _table_model(monkeypatch, tmp_path, {256: 0.05, 512: 0.1, 1024: 0.15, 2048: 0.2})
    assert engine.memory.default_geometry(big, "fp32", 2048, 2048)[0] >= 1024
    bpp = engine.bytes_per_pixel(big)
    monkeypatch.setattr(engine.memory, "memory_budget", lambda dev: bpp * 700**2)
    assert engine.memory.default_geometry(big, "fp32", 2048, 2048)[0] <= 672
    # an image that fits a fast tile is restored whole
    assert engine.memory.default_geometry(model, "fp32", 300, 200)[0] >= 300


def test_throughput_cache_is_never_required(monkeypatch, tmp_path):
    from napari_mirnet.model import MIRNetV2

    model = MIRNetV2(n_feat=16, n_mrb=1).eval()
    monkeypatch.setattr(engine.memory, "_measured", {})
    path = tmp_path / "sub" / "tp.json"
    monkeypatch.setenv("NAPARI_MIRNET_THROUGHPUT", str(path))
    formula = engine.memory.default_geometry(model, "fp32", 4096, 4096)  # no file: the formula
    assert not path.exists() and engine.memory.MIN_CPU_TILE <= formula[0] <= 2048
    table = engine.memory.measure_cpu_throughput(model, edges=[32, 64], repeats=1)
    assert set(table) == {32, 64} and all(v > 0 for v in table.values())
    monkeypatch.setattr(engine.memory, "_measured", {})  # a new process reads the file
    tp = engine.memory.cpu_throughput(model)
    assert tp(32) == pytest.approx(table[32]) and tp(64) == pytest.approx(table[64])
    path.write_text("{not json")  # damaged: the formula again, no error
    monkeypatch.setattr(engine.memory, "_measured", {})
    assert engine.memory.default_geometry(model, "fp32", 4096, 4096) == formula
    monkeypatch.setenv("NAPARI_MIRNET_THROUGHPUT", "off")
    path.unlink()
    engine.memory.measure_cpu_throughput(model, edges=[32], repeats=1)
    assert not path.exists()


def test_prepare_on_cpu_picks_the_tile_for_the_image(tiny_weights, monkeypatch):
    """The default tile depends on the image (and is recorded in the run), an explicit one does not."""
    monkeypatch.setenv("NAPARI_MIRNET_THROUGHPUT", "off")
    monkeypatch.setattr(engine.memory, "_measured", {})
    big = da.zeros((3000, 2000, 3), dtype=np.uint8, chunks=(1000, 1000, 3))
    run = engine.prepare(big, weights=tiny_weights, options=engine.RestoreOptions(device="cpu"))
    assert run.options.halo == 32 and run.plan.grid[0] > 1 and run.plan.grid[1] > 1
    assert run.options.tile == engine.memory.default_geometry(_model(tiny_weights), "fp32", 3000, 2000)[0]
    small = engine.prepare(_rgb(90, 110), weights=tiny_weights, options=engine.RestoreOptions(device="cpu"))
    assert small.plan.grid == (1, 1)  # one tile: whole-image output
    fixed = engine.prepare(big, weights=tiny_weights, options=engine.RestoreOptions(device="cpu", tile=512))
    assert (fixed.options.tile, fixed.options.halo) == (512, 64)  # explicit tiles keep the old halo rule


def _model(weights):
    from napari_mirnet.weights import cached_model

    return cached_model(weights, "cpu")


def test_numpy_runs_never_import_dask_array(tiny_weights):
    """numpy in, numpy out goes through the chunk graph without a dask array: dask.array's imports
    (pandas, scipy, xarray where installed) cost ~70 MB of every in-memory run's peak, zarr's (with
    fsspec) another 7 MB."""
    code = (
        "import sys, numpy as np\n"
        "import napari_mirnet\n"
        "from napari_mirnet import engine\n"
        "img = (np.random.default_rng(0).random((2, 90, 70, 3)) * 255).astype(np.uint8)\n"
        f"out = napari_mirnet.restore(img, weights={tiny_weights!r}, axes='ZYXC', tile=48, halo=8)\n"
        f"same = napari_mirnet.restore(img[1], weights={tiny_weights!r}, tile=48, halo=8)\n"
        "assert out.shape == img.shape and out.dtype == np.uint8 and (out[1] == same).all()\n"
        "heavy = ('dask.array', 'distributed', 'pandas', 'scipy', 'xarray', 'zarr', 'fsspec')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_zarr_to_zarr_runs_without_read_back_never_import_dask_array(tiny_weights, tmp_path):
    """A zarr store in, a store with its pyramid out (what the CLI does): no dask array on the way,
    and the store equals the one a run that reads it back writes.

    Both runs share one fresh process: CPU results may differ in the last bit between processes
    whose torch threads or earlier state differ, which is not what this test is about.
    """
    import zarr

    from napari_mirnet.io.omezarr import downsample2

    src = tmp_path / "in.zarr"
    img = (np.random.default_rng(4).random((600, 520, 3)) * 255).astype(np.uint8)
    zarr.create_array(str(src), data=img, chunks=(128, 128, 3))
    a_out, b_out, back_npy = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "back.npy"
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from napari_mirnet import engine\n"
        f"opts = engine.RestoreOptions(tile=64, halo=8)\n"
        f"run = engine.prepare({str(src)!r}, weights={tiny_weights!r}, options=opts)\n"
        f"assert engine.execute(run, out={str(a_out)!r}, read_back=False) is None\n"
        "print(sorted(m for m in ('dask.array', 'distributed', 'pandas', 'scipy', 'xarray') if m in sys.modules))\n"
        f"run = engine.prepare({str(src)!r}, weights={tiny_weights!r}, options=opts)\n"
        f"np.save({str(back_npy)!r}, np.asarray(engine.execute(run, out={str(b_out)!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    a, b = zarr.open_group(str(a_out), mode="r"), zarr.open_group(str(b_out), mode="r")
    levels = sorted(a.array_keys(), key=int)
    assert levels == sorted(b.array_keys(), key=int) and len(levels) >= 2  # a pyramid
    for level in levels:
        np.testing.assert_array_equal(a[level][...], b[level][...])
    for k in levels[1:]:  # each level is the 2x2 mean of the one above, whole (no chunk-edge seams)
        np.testing.assert_array_equal(a[k][...], downsample2(a[str(int(k) - 1)][...], "CYX"))
    np.testing.assert_array_equal(np.moveaxis(a["0"][...], 0, -1), np.load(back_npy))
    # the same metadata, but for the name: a result without an image name is named by its store (a, b)
    ome_a, ome_b = a.attrs["ome"], b.attrs["ome"]
    assert [m.pop("name") for m in ome_a["multiscales"]] == ["a"] and [m.pop("name") for m in ome_b["multiscales"]] == [
        "b"
    ]
    assert ome_a == ome_b


def test_in_memory_result_equals_the_lazy_and_zarr_results(tiny_weights, tmp_path):
    rng = np.random.default_rng(3)
    img = (rng.random((2, 3, 75, 66)) * 65535).astype(np.uint16)  # lead axis, channels first
    kw = dict(weights=tiny_weights, axes="ZCYX", tile=40, halo=8)
    eager = nm.restore(img, **kw)
    lazy = nm.restore_lazy(img, **kw)
    stored = nm.restore(da.from_array(img, chunks=(1, 3, 30, 30)), out=tmp_path / "o.zarr", **kw)
    assert isinstance(eager, np.ndarray) and eager.shape == img.shape and eager.dtype == img.dtype
    np.testing.assert_array_equal(eager, np.asarray(lazy))
    np.testing.assert_array_equal(eager, np.asarray(stored))
    sr_kw = dict(weights=tiny_weights, axes="CYX", tile=40, halo=8, scale=2)
    sr = nm.restore(img[0], "super_resolution", **sr_kw)
    assert sr.shape == (3, 150, 132)
    np.testing.assert_array_equal(sr, np.asarray(nm.restore_lazy(img[0], "super_resolution", **sr_kw)))
