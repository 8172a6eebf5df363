"""Train the models shipped in napari_mirnet/models/ (all four at once, or one).

    python benchmarks/train_shipped.py --all --out-dir runs/shipped --device cuda
    python benchmarks/train_shipped.py --model small-sr-x2 --out-dir runs/shipped --iters 20000

Each model trains on the bundled images (``TRAIN_IMAGES``: scikit-image's, plus sklearn's and
matplotlib's sample photos) minus ``HELD_OUT_IMAGES``, with the settings in ``SHIPPED``; writes ``<name>.ckpt.pth`` (resumable), ``<name>.ckpt.loss.jsonl`` (loss log),
``<name>.pth`` (slim fp16 model) and ``<name>.eval.json`` (held-out PSNR vs the degraded input).
``--all`` runs the four trainings (or ``--only`` some) as concurrent processes sharing one GPU and
waits for them; ``--init-dir`` starts each from an existing model file (fine-tuning).
With ``--time-budget`` a run stops by wall clock and its learning-rate and patch schedules follow
elapsed time instead of iterations.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (also makes napari_mirnet importable without its GUI dependencies)
import torch  # noqa: E402

from napari_mirnet.training import (  # noqa: E402
    HELD_OUT_IMAGES,
    LOSSES,
    TrainConfig,
    export_model,
    parse_stages,
    train,
    training_images,
)

GAUSS_0_50 = {"kind": "gaussian", "sigma_range": [0.0, 50.0]}
MICROSCOPY = {"kind": "poisson_gaussian", "peak_range": [5.0, 300.0], "sigma_range": [0.0, 10.0]}
GPU_STAGES = ((96, 24), (128, 16), (160, 10), (192, 8))

#: name -> (TrainConfig fields, time budget in seconds on the shared GPU)
SHIPPED = {
    "small-denoise-gray": dict(
        task="denoise",
        channels=1,
        n_feat=48,
        n_mrb=2,
        degradation={"kind": "mixture", "choices": [GAUSS_0_50, MICROSCOPY], "weights": [0.8, 0.2]},
    ),
    # gray scenes replicated to RGB teach a colour denoiser nothing about colour: colour images only,
    # with their channels permuted for variety
    "small-denoise-rgb": dict(
        task="denoise", channels=3, n_feat=48, n_mrb=2, degradation=GAUSS_0_50, colour_only=True, channel_shuffle=True
    ),
    "small-sr-x2": dict(
        task="super_resolution", channels=3, n_feat=32, n_mrb=2, degradation={"kind": "bicubic", "scale": 2}
    ),
    "small-lowlight": dict(task="lowlight", channels=3, n_feat=32, n_mrb=1, degradation=None),
}
#: the denoisers have the hardest targets: they keep the GPU to themselves once the others finish
BUDGET_SHARE = {"small-denoise-gray": 1.0, "small-denoise-rgb": 1.0, "small-sr-x2": 0.7, "small-lowlight": 0.6}


def train_one(name: str, args) -> dict:
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = dict(SHIPPED[name])
    colour_only = fields.pop("colour_only", False)
    if args.n_feat:
        fields["n_feat"] = args.n_feat
    if args.n_mrb:
        fields["n_mrb"] = args.n_mrb
    budget = args.time_budget * BUDGET_SHARE[name] if args.time_budget else None
    cfg = TrainConfig(
        **fields,
        iters=args.iters,
        lr=args.lr,
        warmup=args.warmup,
        stages=args.stages,
        seed=args.seed,
        time_budget=budget,
        device=args.device,
        log_every=args.log_every,
        save_every=args.save_every,
        channels_last=args.channels_last,
        dense_groups=args.dense_groups,
        amp_cpu=args.amp_cpu,
        ema=args.ema,
        loss=args.loss,
    )
    imgs = training_images(args.data_dir, colour_only)
    desc = {
        "description": "images bundled with scikit-image (skimage/data), scikit-learn and matplotlib; "
        "held-out ones excluded" + ("; colour images only" if colour_only else ""),
        "images": sorted(imgs),
        "held_out": list(HELD_OUT_IMAGES),
    }
    ckpt = out_dir / f"{name}.ckpt.pth"
    resume = ckpt if args.resume and ckpt.exists() else None
    t0 = time.time()
    init = Path(args.init_dir) / f"{name}.pth" if args.init_dir else None
    res = train(
        cfg if resume is None else None,
        clean=list(imgs.values()),
        out=ckpt,
        resume=resume,
        init=init,
        data_description=desc,
        progress=not args.quiet,
    )
    model_path = export_model(ckpt, out_dir / f"{name}.pth")
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    model, _ = quality.load_model(model_path, device)
    ev = quality.evaluate_model(model, cfg.task, cfg.channels, device=device, data_dir=args.data_dir)
    rec = {
        "name": name,
        "iterations": res.iteration,
        "train_seconds": round(res.elapsed, 1),
        "wall_seconds": round(time.time() - t0, 1),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "size_bytes": model_path.stat().st_size,
        "eval": ev,
        "config": {**fields, "colour_only": colour_only},
        "time_budget": budget,
        "command": " ".join(sys.argv),
    }
    (out_dir / f"{name}.eval.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec), flush=True)
    return rec


def _one_stage(text: str) -> tuple[int, int]:
    return parse_stages(text)[0]


def _step_config(args, patch: int, bs: int, iters: int, channels_last: bool, dense_groups: bool) -> TrainConfig:
    """The RGB denoiser's training config at one fixed (patch, batch), for timing steps."""
    fields = {k: v for k, v in SHIPPED["small-denoise-rgb"].items() if k != "colour_only"}
    return TrainConfig(
        **fields,
        iters=iters,
        stages=((patch, bs),),
        device=args.device,
        channels_last=channels_last,
        dense_groups=dense_groups,
        log_every=10**9,
        save_every=10**9,
    )


def probe(args) -> list[dict]:
    """Training-step speed of the RGB denoiser per (patch, batch) and variant (memory layout, dense
    or grouped convolutions): ``--probe 192:8 192:32``."""
    imgs = list(training_images(args.data_dir).values())
    rows = []
    for patch, bs in args.probe:
        for cl, dense in itertools.product((False, True), (False, True)):
            cfg = _step_config(args, patch, bs, args.probe_iters, cl, dense)
            marks = {}

            def tick(it, _loss):
                marks[it] = time.perf_counter()

            train(cfg, clean=imgs, out=Path(args.out_dir) / "probe.pth", callback=tick, progress=False)
            first = max(3, args.probe_iters // 4)  # cudnn autotuning happens in the first steps
            sec = (marks[args.probe_iters] - marks[first]) / (args.probe_iters - first)
            rows.append(
                {
                    "patch": patch,
                    "batch": bs,
                    "channels_last": cl,
                    "dense_groups": dense,
                    "s_per_iter": round(sec, 4),
                    "mpix_per_s": round(patch * patch * bs / sec / 1e6, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def profile(args) -> str:
    """Where a training step of the RGB denoiser spends its time: the top operators (``--profile 192:32``)."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    imgs = list(training_images(args.data_dir).values())
    cfg = _step_config(args, *args.profile, 10, args.channels_last, args.dense_groups)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts, schedule=schedule(wait=3, warmup=2, active=5)) as prof:
        train(
            cfg,
            clean=imgs,
            out=Path(args.out_dir) / "profile.pth",
            callback=lambda it, loss: prof.step(),
            progress=False,
        )
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(SHIPPED))
    ap.add_argument("--all", action="store_true", help="train all four concurrently (subprocesses)")
    ap.add_argument("--only", nargs="+", choices=list(SHIPPED), help="with --all: just these models")
    ap.add_argument("--init-dir", help="fine-tune: start each model from <init-dir>/<name>.pth")
    ap.add_argument("--out-dir", default="runs/shipped")
    ap.add_argument("--data-dir", help="folder with the bundled images (default: scikit-image's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=100000, help="planned iterations (schedule length)")
    ap.add_argument("--time-budget", type=float, help="seconds of training for the denoisers (others less)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=float, default=0.02)
    ap.add_argument("--stages", type=parse_stages, default=",".join(f"{p}:{b}" for p, b in GPU_STAGES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-feat", type=int, help="override every model's width (smoke tests)")
    ap.add_argument("--n-mrb", type=int)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 4) // 4))
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--resume", action="store_true", help="continue from <out-dir>/<name>.ckpt.pth")
    ap.add_argument("--channels-last", action="store_true", help="NHWC layout (faster bf16 convs on GPUs)")
    ap.add_argument("--dense-groups", action="store_true", help="grouped convs as dense block-diagonal ones")
    ap.add_argument("--amp-cpu", action="store_true", help="bf16 autocast on the CPU too (native-bf16 CPUs)")
    ap.add_argument("--loss", choices=sorted(LOSSES), default="l1", help="l2 or psnr for a last fine-tune")
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="export a moving average of the weights")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--probe", nargs="+", type=_one_stage, metavar="PATCH:BATCH", help="only time training steps")
    ap.add_argument("--probe-iters", type=int, default=20)
    ap.add_argument(
        "--profile", type=_one_stage, metavar="PATCH:BATCH", help="only profile 5 training steps (top operators)"
    )
    args = ap.parse_args(argv)
    if args.profile:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        table = profile(args)
        (Path(args.out_dir) / "profile.txt").write_text(table)
        print(table)
        return 0
    if args.probe:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        rows = probe(args)
        (Path(args.out_dir) / "probe.json").write_text(json.dumps(rows, indent=1))
        return 0
    if args.model:
        train_one(args.model, args)
        return 0
    if not args.all:
        ap.error("give --model NAME or --all")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    argl = list(argv if argv is not None else sys.argv[1:])
    if "--only" in argl:  # drop "--only NAME..." from what the children get
        i = argl.index("--only")
        j = i + 1
        while j < len(argl) and not argl[j].startswith("--"):
            j += 1
        del argl[i:j]
    base = [a for a in argl if a != "--all"]
    names = args.only or list(SHIPPED)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for name in names:
        log = open(out_dir / f"{name}.log", "w")
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--model", name, "--quiet", *base], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    rc = 0
    for name, p in procs.items():
        rc |= p.wait()
        print(f"{name}: exit {p.returncode}", flush=True)
    summary = {}
    for name in names:
        f = out_dir / f"{name}.eval.json"
        if f.exists():
            summary[name] = json.loads(f.read_text())
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: {"it": v["iterations"], "eval": v["eval"]} for k, v in summary.items()}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
