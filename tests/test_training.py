"""Training: real loop, real checkpoints on disk, resume equivalence, degradations, CLI wiring."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from napari_mirnet.cli import _add_train_command as add_train_command
from napari_mirnet.degradations import bicubic_down_up, degrade, degrade_numpy
from napari_mirnet.model import MIRNetV2, config_from_state_dict
from napari_mirnet.training import (
    HELD_OUT_IMAGES,
    TRAIN_IMAGES,
    TrainConfig,
    _Data,
    bundled_images,
    export_model,
    is_colour,
    loss_log_path,
    psnr_loss,
    train,
)


def _images(n=3, size=48, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        base = [np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy)) for _ in range(channels)]
        img = (np.stack(base, -1) * 0.4 + 0.5).clip(0, 1)
        out.append((img * 255).astype(np.uint8) if channels == 3 else (img[..., 0] * 255).astype(np.uint8))
    return out


def _cfg(**kw):
    base = dict(
        task="denoise",
        channels=3,
        n_feat=16,
        n_mrb=1,
        iters=6,
        stages=((32, 2), (32, 2), (40, 1)),
        log_every=1,
        save_every=3,
        device="cpu",
        seed=7,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("ema", [0.0, 0.9])
@pytest.mark.slow
def test_resume_follows_uninterrupted_run(tmp_path, ema):
    imgs = _images()
    full = train(_cfg(ema=ema), clean=imgs, out=tmp_path / "full.pth", progress=False)
    assert full.iteration == 6 and len(full.losses) == 6

    # interrupt after 3 iterations (callback), then resume from the checkpoint on disk
    part_path = tmp_path / "part.pth"
    first = train(_cfg(ema=ema), clean=imgs, out=part_path, progress=False, callback=lambda it, loss: it < 3)
    assert first.stopped_early and first.iteration == 3
    ck = torch.load(part_path, map_location="cpu", weights_only=True)
    assert ck["iteration"] == 3 and {"params", "meta", "optimizer", "scheduler", "rng"} <= set(ck)
    second = train(None, clean=imgs, out=part_path, resume=part_path, progress=False)
    assert second.iteration == 6

    resumed = first.losses + second.losses
    assert [i for i, _ in resumed] == [i for i, _ in full.losses]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in full.losses], rtol=0, atol=1e-6)
    ca, cb = torch.load(tmp_path / "full.pth", weights_only=True), torch.load(part_path, weights_only=True)
    assert ("params_ema" in ca) == ("params_ema" in cb) == bool(ema)
    for key in ("params", "params_ema") if ema else ("params",):
        for k in ca[key]:
            torch.testing.assert_close(ca[key][k], cb[key][k], rtol=0, atol=1e-6)
    # the loss log next to the checkpoint holds each iteration once, with the same values
    log = [json.loads(ln) for ln in loss_log_path(part_path).read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in log], [v for _, v in full.losses], atol=1e-6)


def test_checkpoint_metadata_and_export(tmp_path):
    res = train(
        _cfg(iters=2, task="super_resolution", degradation=None),
        clean=_images(2),
        out=tmp_path / "sr.pth",
        progress=False,
        data_description={"description": "synthetic"},
    )
    slim = export_model(res.checkpoint, tmp_path / "sr_slim.pth")
    ck = torch.load(slim, map_location="cpu", weights_only=True)
    assert set(ck) == {"params", "meta"}
    meta = ck["meta"]
    assert meta["task"] == "super_resolution" and meta["scale"] == 2
    assert meta["degradation"] == {"kind": "bicubic", "scale": 2}
    assert meta["config"]["n_feat"] == 16 and meta["code_version"]
    assert meta["normalisation"]["input_range"] == [0.0, 1.0]
    assert all(v.dtype == torch.float16 for v in ck["params"].values())
    cfg = config_from_state_dict(ck["params"])
    assert cfg.to_dict() == meta["config"]
    model = MIRNetV2(cfg)
    model.load_state_dict(ck["params"])
    with torch.no_grad():
        y = model(torch.rand(1, 3, 20, 24))
    assert y.shape == (1, 3, 20, 24) and torch.isfinite(y).all()

    # fine-tuning starts from the exported (fp16) weights
    tuned = train(
        _cfg(iters=1, task="super_resolution", lr=1e-9, warmup=0.0),
        clean=_images(2),
        out=tmp_path / "ft.pth",
        init=slim,
        progress=False,
    )
    after = torch.load(tuned.checkpoint, weights_only=True)
    assert after["meta"]["training_data"]["initialised_from"] == "sr_slim.pth"
    earlier = after["meta"]["training_data"]["earlier_runs"]
    assert len(earlier) == 1 and earlier[0]["training"]["iterations"] == 2
    assert earlier[0]["degradation"] == {"kind": "bicubic", "scale": 2}
    for k, v in ck["params"].items():
        torch.testing.assert_close(after["params"][k], v.float(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ema_averages_the_weight_trajectory_and_is_exported(tmp_path):
    imgs, decay = _images(2), 0.3
    cfg = _cfg(iters=4, ema=decay)
    torch.manual_seed(cfg.seed)
    traj = [MIRNetV2(cfg.model_config()).state_dict()]  # the start, as train() initialises it
    for stop in (1, 2, 3, 4):  # the same run stopped after each step: the raw weights' trajectory
        res = train(
            cfg,
            clean=imgs,
            out=tmp_path / f"s{stop}.pth",
            progress=False,
            callback=lambda it, loss, stop=stop: it < stop,
        )
        assert res.iteration == stop
        traj.append(torch.load(res.checkpoint, weights_only=True)["params"])
    expected = {k: v.clone() for k, v in traj[0].items() if v.is_floating_point()}
    for t, params in enumerate(traj[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * params[k]
    ck = torch.load(tmp_path / "s4.pth", weights_only=True)
    moved = 0
    for k, v in expected.items():
        torch.testing.assert_close(ck["params_ema"][k], v, rtol=1e-5, atol=1e-7)
        moved += not torch.allclose(ck["params_ema"][k], ck["params"][k])
    assert moved > 10  # the average is not just the last weights
    assert ck["meta"]["training"]["ema"] == decay
    out = export_model(tmp_path / "s4.pth", tmp_path / "slim.pth")
    slim = torch.load(out, weights_only=True)
    assert slim["meta"]["exported_weights"] == "params_ema" and "params_ema" not in slim
    for k, v in slim["params"].items():
        assert torch.equal(v, ck["params_ema"][k].half())
    # fine-tuning from a training checkpoint starts from its average, as inference would use
    tune = train(
        _cfg(iters=1, ema=0.0, lr=1e-12, grad_clip=0.0),
        clean=imgs,
        out=tmp_path / "tune.pth",
        init=tmp_path / "s4.pth",
        progress=False,
    )
    tuned = torch.load(tune.checkpoint, weights_only=True)["params"]
    for k in expected:
        torch.testing.assert_close(tuned[k], ck["params_ema"][k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ema"):
        _cfg(ema=1.0)


@pytest.mark.slow
def test_training_reduces_loss_on_pairs(tmp_path):
    # real pairs (gray): the model must learn to remove a fixed offset, a trivially learnable mapping
    clean = [im.astype(np.float32) / 255 * 0.8 for im in _images(3, channels=1)]
    degraded = [c + 0.1 for c in clean]
    cfg = _cfg(channels=1, iters=40, stages=((32, 4),), save_every=1000, log_every=10, lr=2e-3, grad_clip=0)
    res = train(cfg, clean=clean, degraded=degraded, out=tmp_path / "pairs.pth", progress=False)
    first = np.mean([v for _, v in res.losses[:5]])
    last = np.mean([v for _, v in res.losses[-5:]])
    assert last < 0.5 * first
    meta = torch.load(res.checkpoint, weights_only=True)["meta"]
    assert meta["degradation"] == {"kind": "paired"} and meta["config"]["in_channels"] == 1


@pytest.mark.slow
def test_loss_option_trains_on_the_chosen_loss(tmp_path):
    # one 32x32 pair, patch 32, no augmentation: the batch is the pair itself, so the logged loss of
    # the first step (taken before any update) can be recomputed from the saved, barely moved model
    clean = [im.astype(np.float32) / 255 for im in _images(1, size=32)]
    degraded = [
        np.clip(c + 0.05 * np.random.default_rng(1).standard_normal(c.shape), 0, 1).astype(np.float32) for c in clean
    ]
    x = torch.from_numpy(degraded[0]).permute(2, 0, 1)[None]
    y = torch.from_numpy(clean[0]).permute(2, 0, 1)[None]

    def minus_psnr(a, b):
        return 10 * np.log10(float(torch.mean((a - b) ** 2)) + 1e-5)

    for loss, fn in (("l1", torch.nn.functional.l1_loss), ("l2", torch.nn.functional.mse_loss), ("psnr", minus_psnr)):
        cfg = _cfg(iters=1, stages=((32, 1),), augment=False, lr=1e-12, grad_clip=0, loss=loss)
        res = train(cfg, clean=clean, degraded=degraded, out=tmp_path / f"{loss}.pth", progress=False)
        ck = torch.load(res.checkpoint, weights_only=True)
        assert ck["meta"]["training"]["loss"] == loss.upper()
        model = MIRNetV2(config_from_state_dict(ck["params"]))
        model.load_state_dict(ck["params"])
        with torch.no_grad():
            expected = float(fn(model.eval()(x), y))
        assert res.losses[0][1] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="loss must be one of"):
        _cfg(loss="ssim")


def test_psnr_loss_weighs_every_patch_alike():
    # two patches, one 10x noisier: L2 is dominated by the noisy one, the PSNR loss is not
    target = torch.zeros(2, 1, 8, 8)
    pred = torch.cat([torch.full((1, 1, 8, 8), 0.01), torch.full((1, 1, 8, 8), 0.1)]).requires_grad_()
    psnr_loss(pred, target, eps=0).backward()
    g = pred.grad.abs().flatten(1).sum(1)
    # d/dp log(mse) = 2 / (p * n): the cleaner patch gets the 10x larger gradient
    assert float(g[0] / g[1]) == pytest.approx(10, rel=1e-4)
    assert float(psnr_loss(pred.detach(), target, eps=0)) == pytest.approx(-(40 + 20) / 2, rel=1e-5)


def test_degradations():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2, 1, 64, 64), 0.5)
    y = degrade(x, {"kind": "gaussian", "sigma": 25}, gen)
    assert abs((y - x).std().item() * 255 - 25) < 1.5
    y = degrade(x, {"kind": "poisson_gaussian", "peak": 100, "sigma": 0}, gen)
    assert abs((y - x).var().item() - 0.5 / 100) < 1e-3  # Poisson: variance = mean / peak
    img = torch.rand(1, 3, 32, 32)
    assert bicubic_down_up(img, 2).shape == img.shape
    dark = degrade(img, {"kind": "lowlight", "factor": 0.1, "gamma": 1.0}, gen)
    assert dark.max() <= 0.11 and torch.allclose(dark * 255, torch.round(dark * 255))
    mix = {"kind": "mixture", "choices": [{"kind": "gaussian", "sigma": 0}, {"kind": "gaussian", "sigma": 50}]}
    y = degrade(torch.zeros(64, 1, 8, 8), mix, gen)
    stds = y.flatten(1).std(1)
    assert (stds == 0).any() and (stds > 0.1).any()
    a = degrade_numpy(np.zeros((16, 16)), {"kind": "gaussian", "sigma": 10}, seed=3)
    b = degrade_numpy(np.zeros((16, 16)), {"kind": "gaussian", "sigma": 10}, seed=3)
    assert a.shape == (16, 16) and np.array_equal(a, b)


def test_channel_shuffle_permutes_input_and_target_alike():
    levels = np.array([0.1, 0.2, 0.3], np.float32)
    clean = [np.ones((40, 40, 3), np.float32) * levels]  # each channel says where it came from
    degraded = [clean[0] * 0.5]
    data = _Data(clean, degraded, 3, torch.device("cpu"))
    perms = set()
    for it in range(30):
        tgt, inp = data.batch(np.random.default_rng([0, it]), 16, 2, augment=False, shuffle=True)
        torch.testing.assert_close(inp, tgt * 0.5)  # input and target get the same permutation
        for t in tgt:
            perm = tuple(int(np.argmin(abs(levels - float(v)))) for v in t[:, 0, 0])
            assert sorted(perm) == [0, 1, 2]
            perms.add(perm)
    assert len(perms) >= 4  # several permutations are drawn, not only the identity
    # shuffle=False draws nothing extra: the same crops as a call without the option
    rng_img = np.random.default_rng(1)
    data = _Data([rng_img.random((40, 40, 3)).astype(np.float32)], None, 3, torch.device("cpu"))
    x, _ = data.batch(np.random.default_rng([0, 5]), 16, 2, augment=True)
    y, _ = data.batch(np.random.default_rng([0, 5]), 16, 2, augment=True, shuffle=False)
    z, _ = data.batch(np.random.default_rng([0, 5]), 16, 2, augment=True, shuffle=True)
    assert torch.equal(x, y) and not torch.equal(x, z)


@pytest.mark.slow
def test_channels_last_trains_the_same_model(tmp_path):
    imgs = _images(2)
    a = train(_cfg(iters=3), clean=imgs, out=tmp_path / "a.pth", progress=False)
    b = train(_cfg(iters=3, channels_last=True), clean=imgs, out=tmp_path / "b.pth", progress=False)
    np.testing.assert_allclose([v for _, v in a.losses], [v for _, v in b.losses], rtol=1e-4)
    pa = torch.load(a.checkpoint, weights_only=True)["params"]
    pb = torch.load(b.checkpoint, weights_only=True)["params"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_amp_cpu_trains_in_bf16_close_to_fp32(tmp_path):
    imgs = _images(2)
    dtypes = set()

    def hook(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            dtypes.add(out.dtype)

    a = train(_cfg(iters=3), clean=imgs, out=tmp_path / "a.pth", progress=False)
    assert dtypes == set()  # the hook is not installed yet
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        b = train(_cfg(iters=3, amp_cpu=True, channels_last=True), clean=imgs, out=tmp_path / "b.pth", progress=False)
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}
    la, lb = [v for _, v in a.losses], [v for _, v in b.losses]
    assert la != lb  # really a different arithmetic...
    np.testing.assert_allclose(la, lb, rtol=3e-2)  # ...that trains the same network
    pb = torch.load(b.checkpoint, weights_only=True)
    assert all(v.dtype == torch.float32 for v in pb["params"].values())
    assert pb["train_config"]["amp_cpu"] is True
    assert pb["meta"]["training"]["precision"] == "bf16 autocast"
    assert torch.load(a.checkpoint, weights_only=True)["meta"]["training"]["precision"] == "fp32"


@pytest.mark.slow
def test_dense_groups_compute_the_same_network(tmp_path):
    from napari_mirnet.training import _BlockDiagonalConv2d, use_dense_groups

    torch.manual_seed(0)
    model = MIRNetV2(config_from_state_dict(MIRNetV2().state_dict()))  # the official layout: groups 1, 2, 4
    x = torch.rand(2, 3, 40, 44)
    ref = model(x)
    ref.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    keys = list(model.state_dict())
    grouped = sum(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())
    model.zero_grad()
    use_dense_groups(model)
    assert grouped == 36 and sum(isinstance(m, _BlockDiagonalConv2d) for m in model.modules()) == grouped
    assert list(model.state_dict()) == keys  # checkpoints are unchanged
    out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-3, atol=1e-6)
    # and a training run with it follows the plain one
    imgs = _images(2)
    a = train(_cfg(iters=2), clean=imgs, out=tmp_path / "a.pth", progress=False)
    b = train(_cfg(iters=2, dense_groups=True), clean=imgs, out=tmp_path / "b.pth", progress=False)
    np.testing.assert_allclose([v for _, v in a.losses], [v for _, v in b.losses], rtol=1e-4)


def test_bad_stages_are_refused():
    with pytest.raises(ValueError, match="stages"):
        _cfg(stages=((256, 0),))
    with pytest.raises(ValueError, match="stages"):
        _cfg(stages=())


def test_bundled_images_and_colour_test(tmp_path):
    import skimage.io

    imgs = bundled_images(["camera", "astronaut", "not_an_image"])
    assert set(imgs) == {"camera", "astronaut"}
    assert is_colour(imgs["astronaut"]) and not is_colour(imgs["camera"])
    assert not is_colour(np.repeat(imgs["camera"][..., None], 3, -1))
    # a data folder replaces the packages' own locations, for every name (package photos included)
    skimage.io.imsave(tmp_path / "china.png", imgs["astronaut"][:64, :64], check_contrast=False)
    got = bundled_images(["china", "camera"], tmp_path)
    assert list(got) == ["china"] and got["china"].shape == (64, 64, 3)


def test_cli_trains_on_bundled_colour_images_only(tmp_path):
    import skimage.io

    data = tmp_path / "data"
    data.mkdir()
    imgs = bundled_images(["astronaut", "camera"])
    skimage.io.imsave(data / "rocket.png", imgs["astronaut"][:64, :64], check_contrast=False)
    skimage.io.imsave(data / "moon.png", imgs["camera"][:64, :64], check_contrast=False)
    parser = argparse.ArgumentParser(prog="napari-mirnet")
    add_train_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "c.pth"
    args = parser.parse_args(
        [
            "train",
            "--bundled-data",
            "--data-dir",
            str(data),
            "--colour-only",
            "--channel-shuffle",
            "--n-feat",
            "16",
            "--iters",
            "1",
            "--stages",
            "32:1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["training_data"]["images"] == ["rocket"] and meta["training"]["channel_shuffle"] is True
    # contradictory data options are refused, with a message
    for extra in (["--clean", str(data)], []):
        bad = ["train", "--colour-only", "--out", str(tmp_path / "x.pth"), *extra]
        if extra:
            bad.insert(1, "--bundled-data")
        args = parser.parse_args(bad)
        assert args.func(args) == 2
        assert not (tmp_path / "x.pth").exists()


def test_held_out_split_is_disjoint():
    assert not set(HELD_OUT_IMAGES) & set(TRAIN_IMAGES)


def test_cli_train_command(tmp_path, capsys):
    import skimage.io

    folder = tmp_path / "clean"
    folder.mkdir()
    for i, im in enumerate(_images(2)):
        skimage.io.imsave(folder / f"im{i}.png", im, check_contrast=False)
    parser = argparse.ArgumentParser(prog="napari-mirnet")
    add_train_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "run" / "m.pth"
    args = parser.parse_args(
        [
            "train",
            "--task",
            "denoise",
            "--clean",
            str(folder),
            "--n-feat",
            "16",
            "--iters",
            "2",
            "--stages",
            "32:2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--export",
            str(tmp_path / "m16.pth"),
            "--quiet",
            "--log-every",
            "1",
            "--noise",
            "mixed",
        ]
    )
    assert args.func(args) == 0
    assert out.exists() and (tmp_path / "m16.pth").exists() and loss_log_path(out).exists()
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["degradation"]["kind"] == "mixture"
    # resume to a longer run through the CLI
    args = parser.parse_args(["train", "--clean", str(folder), "--out", str(out), "--resume", str(out), "--quiet"])
    assert args.func(args) == 0


def test_progress_and_cancel_follow_the_shared_protocol(tmp_path):
    import threading

    cancel, seen = threading.Event(), []

    def progress(p):
        seen.append(p)
        if p.done == 2:
            cancel.set()

    out = tmp_path / "c.pth"
    res = train(_cfg(iters=6, save_every=100), clean=_images(2), out=out, progress=progress, cancel=cancel)
    # cancelling stops the run like a callback returning False: the checkpoint is saved
    assert res.stopped_early and res.iteration == 2 and [v for _, v in res.losses] == [p.detail for p in seen]
    assert [(p.job, p.stage, p.done, p.total, p.unit) for p in seen] == [("train", "run", i, 6, "step") for i in (1, 2)]
    assert torch.load(out, weights_only=True)["iteration"] == 2
    # the old callback keyword still stops a run, and the run resumes from the checkpoint
    res = train(_cfg(iters=6), clean=_images(2), out=out, progress=False, resume=out, callback=lambda it, loss: it < 3)
    assert res.stopped_early and res.iteration == 3


def test_cudnn_benchmark_is_switched_on_for_a_cuda_run_only_and_restored():
    from napari_mirnet.training.loop import cudnn_benchmark

    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_benchmark(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(KeyboardInterrupt), cudnn_benchmark("cuda"):
            raise KeyboardInterrupt
        assert torch.backends.cudnn.benchmark is False
        with cudnn_benchmark(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_training_run_leaves_the_process_cudnn_setting_as_it_was(tmp_path):
    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        train(_cfg(iters=2, device="cuda"), clean=_images(2), out=tmp_path / "g.pth", progress=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old
