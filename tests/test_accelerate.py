"""The accelerated forward (engine/accelerate.py), on CPU with a real tiny MIRNet-v2."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet.engine import accelerate as acc_mod
from napari_mirnet.engine import forward
from napari_mirnet.weights import cached_model


@pytest.fixture
def tiny_model(tiny_weights):
    return cached_model(tiny_weights, "cpu")


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_cpu_auto_is_channels_last_where_onednn_convolves(monkeypatch):
    monkeypatch.delenv(acc_mod.ENV, raising=False)
    expected = acc_mod.CPU_AUTO if torch.backends.mkldnn.is_available() else acc_mod.OFF
    assert acc_mod.parse("auto", "cpu", "bf16") == expected
    assert acc_mod.parse(None, "cpu", "fp32") == expected
    with torch.backends.mkldnn.flags(enabled=False):
        assert acc_mod.parse("auto", "cpu", "fp32") == acc_mod.OFF
    assert acc_mod.parse("auto", "cuda", "bf16") is None  # measured on CUDA
    monkeypatch.setenv(acc_mod.ENV, "channels_last")
    assert acc_mod.parse("auto", "cpu", "fp32") == acc_mod.Switches(channels_last=True)
    assert acc_mod.parse("off", "cpu", "fp32") == acc_mod.OFF  # the option beats the variable


def test_switches_that_mean_nothing_here_are_dropped():
    sw = acc_mod.parse("bf16_weights,cudnn_benchmark,cudagraphs", "cpu", "fp32")
    assert sw == acc_mod.OFF  # bf16 weights under fp32 would change the precision; no cuDNN on CPU
    on = acc_mod.parse("on", "cpu", "bf16")
    assert (on.bf16_weights, on.channels_last, on.compile, on.cudnn_benchmark) == (True, True, True, False)
    assert not on.overlap and acc_mod.parse("overlap", "cpu", "fp32") == acc_mod.OFF  # pinned copies: CUDA only
    assert acc_mod.parse("on", "cuda", "bf16").overlap
    assert acc_mod.parse("overlap", "cuda", "bf16") == acc_mod.Switches(overlap=True)


def test_overlap_never_applies_to_a_model_on_the_cpu(tiny_model):
    x = _batch()
    ov = acc_mod.Accelerated(tiny_model, "cpu", "fp32", acc_mod.Switches(overlap=True))
    assert not forward.copies_overlap(ov) and not forward.copies_overlap(tiny_model)
    np.testing.assert_array_equal(forward.run_batch(ov, x, "fp32"), forward.run_batch(tiny_model, x, "fp32"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="overlapped copies need a CUDA device")
def test_overlapped_copies_give_the_same_result_and_wait_outside_the_lock(tiny_weights, monkeypatch):
    model = cached_model(tiny_weights, "cuda")
    x = _batch(4, 128)
    plain = forward.run_batch(model, x, "fp32")
    ov = acc_mod.Accelerated(model, "cuda", "fp32", acc_mod.Switches(overlap=True))
    assert forward.copies_overlap(ov)
    lock = forward._device_lock(next(model.parameters()).device)
    held, sync = [], torch.cuda.Event.synchronize

    def spy(event):
        held.append(lock.locked())
        return sync(event)

    monkeypatch.setattr(torch.cuda.Event, "synchronize", spy)
    out = forward.run_batch(ov, x, "fp32")
    np.testing.assert_array_equal(plain, out)
    assert held == [False]  # another thread may launch its batch while this one copies back
    assert out.base is None and not torch.from_numpy(out).is_pinned()  # the pinned block stays with torch's host cache


def test_a_third_scheduler_thread_only_where_copies_overlap():
    specs = ("auto", "on", "off", "overlap", "channels_last", "channels_last+overlap")
    threads = {s: engine.scheduler_config("cuda", overlap=acc_mod.overlaps(s, "cuda"))["num_workers"] for s in specs}
    assert threads == {"auto": 3, "on": 3, "off": 2, "overlap": 3, "channels_last": 2, "channels_last+overlap": 3}
    assert not acc_mod.overlaps("on", "cpu") and acc_mod.overlaps("auto", "cuda:1")
    import dask.local

    assert engine.scheduler_config("cpu", overlap=False) == {"scheduler": dask.local.get_sync}


def test_unknown_switch_is_refused_with_the_names_that_exist():
    with pytest.raises(ValueError, match="unknown switch 'fast'.*channels_last"):
        acc_mod.parse("channels_last,fast", "cpu", "fp32")


def test_off_is_the_model_itself(tiny_model):
    assert acc_mod.accelerated(tiny_model, "fp32", "off") is tiny_model
    with torch.backends.mkldnn.flags(enabled=False):  # no oneDNN: auto on CPU is off
        assert acc_mod.accelerated(tiny_model, "fp32", "auto") is tiny_model


@pytest.mark.slow
def test_engine_output_on_cpu_auto_matches_the_eager_forward(tiny_weights):
    img = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    base = nm.restore(img, weights=tiny_weights, device="cpu", tile=64, halo=16)
    off = nm.restore(img, weights=tiny_weights, device="cpu", tile=64, halo=16, accelerate="off")
    auto = nm.restore(img, weights=tiny_weights, device="cpu", tile=64, halo=16, accelerate="auto")
    np.testing.assert_array_equal(base, auto)
    # channels_last changes only the order of fp32 sums: at most one grey level after rounding
    assert np.abs(base.astype(int) - off).max() <= 1


def test_bf16_weights_and_channels_last_stay_within_bf16_tolerance(tiny_model):
    x = _batch()
    with torch.inference_mode():
        ref = tiny_model(x).float()
        fast = acc_mod.Accelerated(
            tiny_model, "cpu", "bf16", acc_mod.parse("bf16_weights,channels_last", "cpu", "bf16")
        )
        y = fast(x)
    assert y.dtype == torch.float32 and y.is_contiguous() and y.shape == ref.shape
    diff = (y - ref).abs()
    # bf16 keeps 8 bits of mantissa: about 2-3 8-bit levels at worst through this network
    assert 0 < diff.max().item() < 3 / 255 * 4
    assert diff.mean().item() < 1 / 255
    # the shared, loaded model is left alone
    assert next(tiny_model.parameters()).dtype == torch.float32
    assert next(tiny_model.parameters()) is not next(fast.parameters())


def test_channels_last_alone_is_fp32_accurate(tiny_model):
    x = _batch(1)
    with torch.inference_mode():
        ref = tiny_model(x)
        y = acc_mod.Accelerated(tiny_model, "cpu", "fp32", acc_mod.Switches(channels_last=True))(x)
    assert (y - ref).abs().max().item() < 1e-5


def test_compile_that_raises_falls_back_to_eager(tiny_model, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", broken)
    x = _batch(1)
    with pytest.warns(RuntimeWarning, match="no compiler on this machine"):
        fast = acc_mod.Accelerated(tiny_model, "cpu", "fp32", acc_mod.Switches(compile=True))
    assert "RuntimeError" in fast.fallback and "fell back" in acc_mod.describe(fast)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), tiny_model(x), rtol=0, atol=0)


def test_compiled_forward_failing_at_the_first_call_falls_back_for_good(tiny_model, monkeypatch):
    calls = []

    def fails_when_called(model, **kwargs):
        calls.append(kwargs)

        def run(x):
            raise RuntimeError("inductor: unsupported operator")

        return run

    monkeypatch.setattr(torch, "compile", fails_when_called)
    fast = acc_mod.Accelerated(tiny_model, "cpu", "fp32", acc_mod.Switches(compile=True))
    assert calls == [{"mode": "default", "dynamic": False}]
    x = _batch(1)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="unsupported operator"):
        y = fast(x)
    with torch.inference_mode():
        torch.testing.assert_close(y, tiny_model(x), rtol=0, atol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, then eager without a word
            fast(x)


def test_compiled_shapes_are_few_and_short_batches_are_padded(tiny_model, monkeypatch):
    seen = []

    def recording_compile(model, **kwargs):
        def run(x):
            seen.append(tuple(x.shape))
            return model(x)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    fast = acc_mod.Accelerated(tiny_model, "cpu", "fp32", acc_mod.Switches(compile=True))
    x = _batch(3)
    with torch.inference_mode():
        full = fast(x)
        short = fast(x[:2])  # the run's last batch: padded to the compiled batch of 3
        torch.testing.assert_close(short, full[:2], rtol=1e-5, atol=1e-6)
        fast(_batch(1, 32))  # a second shape is compiled
        y = fast(_batch(1, 48))  # a third runs eagerly
        torch.testing.assert_close(y, tiny_model(_batch(1, 48)), rtol=0, atol=0)
    assert seen == [(3, 3, 64, 64), (3, 3, 64, 64), (1, 3, 32, 32)]


@pytest.mark.slow
def test_measure_keeps_eager_unless_a_variant_pays(tiny_model, monkeypatch):
    monkeypatch.setattr(acc_mod, "MIN_GAIN", 0.0)  # nothing can pay: eager must be kept
    best, times = acc_mod.measure(tiny_model, _batch(1), "bf16", repeats=1)
    assert best == acc_mod.OFF
    assert set(times) == {"eager", "bf16_weights", "bf16_weights+channels_last"}
    assert all(t > 0 for t in times.values())


def test_importing_the_engine_does_not_import_dynamo():
    code = "import sys, napari_mirnet.engine.accelerate, napari_mirnet.engine; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_bad_switch_is_refused_before_any_tile(tiny_weights):
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown switch 'turbo'"):
        engine.prepare(img, weights=tiny_weights, options=engine.RestoreOptions(device="cpu", accelerate="turbo"))


def test_the_cache_of_forwards_does_not_keep_a_model_alive():
    import gc
    import weakref

    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    model = MIRNetV2(MIRNetConfig(n_feat=16, n_mrb=1)).eval()
    fast = acc_mod.accelerated(model, "fp32", "channels_last")
    assert acc_mod.accelerated(model, "fp32", "channels_last") is fast  # built once per model and spec
    assert acc_mod.chosen(model) == {("fp32", "channels_last", None, torch.backends.mkldnn.enabled): "channels_last"}
    ref = weakref.ref(model)
    del model, fast
    gc.collect()
    assert ref() is None
