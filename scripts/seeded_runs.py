"""Seeded tiny training and fine-tuning runs that print hashes of what they save, to compare code versions.

Run it against two checkouts and diff the outputs; identical text means the refactored code trains
bit for bit as the old one did::

    PYTHONPATH=/work/base python scripts/seeded_runs.py > before.txt
    python scripts/seeded_runs.py > after.txt
    diff before.txt after.txt

Everything runs on the CPU with one thread and fixed seeds; fine-tuning uses a step budget (not
minutes), so every run is deterministic. Timings and the code version are left out of the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# this checkout's package, unless PYTHONPATH names another (entries there come first)
sys.path.append(str(Path(__file__).resolve().parents[1]))


def _train_api():
    from napari_mirnet.training import TrainConfig, train

    return TrainConfig, train


def _finetune_fn():
    try:  # the package layout: napari_mirnet.training.self_supervised
        from napari_mirnet.training.self_supervised import finetune
    except ImportError:  # the old layout: napari_mirnet.finetune, a module
        from napari_mirnet.finetune import finetune
    return finetune


def tensors_sha(sd: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


_VOLATILE = {"elapsed_s", "elapsed", "code_version", "source_model", "initialised_from", "file", "sources"}


def _stable(obj):
    """``obj`` without timings, the code version and temporary paths (they differ from run to run)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    return obj


def describe(path: Path) -> list[str]:
    """One line per tensor group in a saved file, and one for its metadata."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    lines = []
    for key in ("params", "params_ema", "ema", "best_params"):
        if key in ck:
            lines.append(f"  {path.name} {key} {tensors_sha(ck[key])}")
    if "meta" in ck:
        meta = json.dumps(_stable(ck["meta"]), sort_keys=True, default=str)
        lines.append(f"  {path.name} meta {hashlib.sha256(meta.encode()).hexdigest()}")
    return lines


def losses_line(losses) -> str:
    return "  losses " + " ".join(f"{i}:{v!r}" for i, v in losses)


def images(n=3, size=48, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        base = [np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy)) for _ in range(channels)]
        img = (np.stack(base, -1) * 0.4 + 0.5).clip(0, 1)
        out.append((img * 255).astype(np.uint8))
    return out


def supervised(root: Path) -> None:
    TrainConfig, train = _train_api()
    imgs = images()
    val = {"v": (imgs[0][:40, :40].astype(np.float32) / 255 * 0.9, imgs[0][:40, :40].astype(np.float32) / 255)}
    base = dict(
        task="denoise", channels=3, n_feat=16, n_mrb=1, iters=6, stages=((32, 2), (32, 2), (40, 1)),
        log_every=1, save_every=3, device="cpu", seed=7, lr=1e-3, warmup=0.2, val_every=2,
    )  # fmt: skip
    for name, extra in [("plain", {}), ("ema", {"ema": 0.9}), ("procedural", {"procedural": 0.5, "procedural_size": 48,
                        "procedural_bank": 2, "procedural_refresh": 2})]:  # fmt: skip
        cfg = TrainConfig(**base, **extra)
        whole = train(cfg, clean=imgs, out=root / f"{name}.pth", progress=False, validation=val)
        print(f"train {name}: iteration {whole.iteration} stopped {whole.stopped_early} best {whole.best_val_psnr!r}")
        print(losses_line(whole.losses))
        for f in (root / f"{name}.pth", root / f"{name}.best.pth"):
            print("\n".join(describe(f)))
        print("  log " + hashlib.sha256(_stable_log(root / f"{name}.loss.jsonl").encode()).hexdigest())
        # the same run, stopped after 3 steps and resumed
        half = train(cfg, clean=imgs, out=root / f"{name}-r.pth", progress=False, validation=val,
                     callback=lambda it, loss: it < 3)  # fmt: skip
        rest = train(cfg, clean=imgs, out=root / f"{name}-r.pth", progress=False, validation=val,
                     resume=root / f"{name}-r.pth")  # fmt: skip
        print(f"train {name} resumed: {half.iteration} stopped {half.stopped_early}, then {rest.iteration}")
        print(losses_line(half.losses + rest.losses))
        print("\n".join(describe(root / f"{name}-r.pth")))
    # paired data, read from files: a folder of PNG files
    from PIL import Image

    for sub, arrs in (("clean", imgs), ("noisy", [np.clip(a.astype(int) + 9, 0, 255).astype(np.uint8) for a in imgs])):
        (root / sub).mkdir()
        for i, a in enumerate(arrs):
            Image.fromarray(a).save(root / sub / f"{i}.png")
    cfg = TrainConfig(**{**base, "val_every": 0})
    res = train(cfg, clean=root / "clean", degraded=root / "noisy", out=root / "paired.pth", progress=False)
    print(f"train paired: iteration {res.iteration}")
    print(losses_line(res.losses))
    print("\n".join(describe(root / "paired.pth")))


def _stable_log(path: Path) -> str:
    return "".join(json.dumps(_stable(json.loads(ln)), sort_keys=True) for ln in path.read_text().splitlines())


def source_model(path: Path) -> str:
    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    torch.manual_seed(0)
    model = MIRNetV2(MIRNetConfig(in_channels=1, out_channels=1, n_feat=16, n_mrb=1))
    torch.save({"params": model.state_dict()}, path)
    return str(path)


def self_supervised(root: Path) -> None:
    finetune = _finetune_fn()
    start = source_model(root / "start.pth")
    yy, xx = np.mgrid[0:96, 0:96]
    clean = np.stack([0.5 + 0.3 * np.sin(xx / 9 + k) * np.cos(yy / 7) for k in range(3)]).astype(np.float32)
    noisy = (clean + np.random.default_rng(0).normal(0, 0.1, clean.shape)).astype(np.float32)
    fast = dict(patch=32, batch=2, lr=1e-3, device="cpu", val_patches=2, axes="ZYX", normalisation="fixed")
    for name, extra in [
        ("n2n", {}),
        ("blindspot", {"objective": "blindspot", "ema": 0.0}),
        ("rows", {"pairs": "vertical"}),
    ]:
        res = finetune(noisy, root / f"{name}.pth", start, minutes=None, steps=5, **fast, **extra)
        print(f"finetune {name}: steps {res.steps} best {res.best_step} {res.best_val!r} source {res.source_val!r}")
        print(losses_line(res.losses))
        print("  val" + losses_line(res.val_losses)[8:])
        print("\n".join(describe(root / f"{name}.pth")))
        half = finetune(noisy, root / f"{name}-r.pth", start, minutes=None, steps=5, callback=lambda i: i.step < 3,
                        **fast, **extra)  # fmt: skip
        rest = finetune(noisy, root / f"{name}-r.pth", start, minutes=None, steps=5, resume=True, **fast, **extra)
        print(f"finetune {name} resumed: {half.steps} stopped {half.stopped}, then {rest.steps}")
        print(losses_line(rest.losses))
        print("\n".join(describe(root / f"{name}-r.pth")))


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["NAPARI_MIRNET_CACHE"] = str(root / "cache")  # fine-tuning state goes here
        (root / "sup").mkdir()
        (root / "ssl").mkdir()
        supervised(root / "sup")
        self_supervised(root / "ssl")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
