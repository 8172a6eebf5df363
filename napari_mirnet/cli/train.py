"""``napari-mirnet train``: its options and the command (data, configuration, the training run)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import _Help


def _stages(text: str):
    from ..training import parse_stages

    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_train_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an argparse subparsers object."""
    from ..training import HELD_OUT_IMAGES, TRAINABLE_TASKS

    p = subparsers.add_parser(
        "train",
        formatter_class=_Help,
        help="train a MIRNet-v2 model on image pairs or clean images with a synthetic degradation",
        description="Train MIRNet-v2. Give --clean (and --degraded for real pairs), or --bundled-data to "
        "train on images bundled with installed packages (minus the held-out ones).",
    )
    p.add_argument("--task", choices=TRAINABLE_TASKS, default="denoise", help="what the model restores")
    src = p.add_argument_group("data")
    src.add_argument("--clean", nargs="+", help="folder(s) or files of clean target images")
    src.add_argument("--degraded", nargs="+", help="matching degraded inputs (same order); omit to synthesise")
    src.add_argument(
        "--bundled-data",
        "--skimage-data",
        dest="bundled_data",
        action="store_true",
        help="train on scikit-image's bundled images plus sklearn's and matplotlib's sample "
        f"photos (where installed), holding out {', '.join(HELD_OUT_IMAGES)}",
    )
    src.add_argument(
        "--colour-only", action="store_true", help="with --bundled-data: skip gray images (for 3-channel models)"
    )
    src.add_argument("--data-dir", help="folder holding the bundled images (default: the packages' own)")
    deg = p.add_argument_group("synthetic degradation (default: the task's)")
    deg.add_argument(
        "--noise",
        choices=["gaussian", "poisson_gaussian", "mixed"],
        help="denoise: Gaussian, Poisson-Gaussian, or a mix of both",
    )
    deg.add_argument("--sigma-max", type=float, default=50.0, help="largest Gaussian sigma (0-255 scale)")
    deg.add_argument("--scale", type=int, default=2, help="super-resolution factor")
    deg.add_argument("--degradation-json", help="a full degradation spec as JSON (overrides the above)")
    net = p.add_argument_group("network")
    net.add_argument("--channels", type=int, default=3, choices=[1, 3], help="colour channels of the model")
    net.add_argument("--n-feat", type=int, default=32, help="features of the first stream")
    net.add_argument("--n-mrb", type=int, default=1, help="multi-scale residual blocks per group")
    net.add_argument("--chan-factor", type=float, default=1.5, help="feature growth per stream")
    _add_train_optimisation(p)
    _add_train_run(p)
    p.set_defaults(func=_cmd_train)
    return p


def _add_train_optimisation(p) -> None:
    from ..training import LOSSES

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--iters", type=int, default=2000, help="training steps")
    opt.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine schedule)")
    opt.add_argument("--warmup", type=float, default=0.0, help="share of the run spent warming up the learning rate")
    opt.add_argument("--grad-clip", type=float, default=0.01, help="gradient norm clip")
    opt.add_argument(
        "--stages",
        type=_stages,
        default="64:8,96:4,128:2",
        help="progressive patch:batch stages, each for an equal share of the run",
    )
    opt.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    opt.add_argument("--seed", type=int, default=0, help="random seed")
    opt.add_argument("--no-augment", action="store_true", help="no flips and rotations")
    opt.add_argument("--channel-shuffle", action="store_true", help="also permute colour channels at random")
    opt.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="l1",
        help="l1 (the paper's); l2 or psnr (minus the per-patch PSNR) for a last fine-tune",
    )
    opt.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep and export a moving average of the weights (e.g. 0.999; 0 = off)",
    )


def _add_train_run(p) -> None:
    run = p.add_argument_group("run")
    run.add_argument("--out", "-o", required=True, help="checkpoint path (.pth); the loss log goes next to it")
    run.add_argument("--resume", help="checkpoint to resume from (usually the same as --out)")
    run.add_argument("--init", help="start from this model file's weights (fine-tuning)")
    run.add_argument("--export", help="also write a slim fp16 {'params','meta'} model file here")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    run.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    run.add_argument(
        "--amp-cpu",
        action="store_true",
        help="bf16 autocast on the CPU (faster on CPUs with native bf16; use with --channels-last)",
    )
    run.add_argument("--channels-last", action="store_true", help="NHWC memory layout (often faster: time it)")
    run.add_argument(
        "--dense-groups",
        action="store_true",
        help="grouped convolutions as dense block-diagonal ones (GPU speed; same result)",
    )
    run.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    run.add_argument("--log-every", type=int, default=10, help="steps between loss log lines")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_data(args):
    """(clean, degraded, description) for ``train``; None after printing what is wrong."""
    from ..training import HELD_OUT_IMAGES, load_images, training_images

    if args.bundled_data and args.clean:
        print("error: give either --clean or --bundled-data, not both", file=sys.stderr)
        return None
    if args.colour_only and not args.bundled_data:
        print(
            "error: --colour-only selects among the bundled images: use it with --bundled-data "
            "(with --clean, pass only colour images)",
            file=sys.stderr,
        )
        return None
    if args.bundled_data:
        imgs = training_images(args.data_dir, args.colour_only)
        if not imgs:
            print("error: no bundled images found on disk (is scikit-image installed?)", file=sys.stderr)
            return None
        return (
            list(imgs.values()),
            None,
            {
                "description": "images bundled with installed packages",
                "images": sorted(imgs),
                "held_out": list(HELD_OUT_IMAGES),
            },
        )
    if args.clean:
        clean = [im for s in args.clean for im in load_images(s)]
        degraded = [im for s in args.degraded for im in load_images(s)] if args.degraded else None
        return (
            clean,
            degraded,
            {
                "description": "user images",
                "clean": [str(s) for s in args.clean],
                "degraded": [str(s) for s in args.degraded] if args.degraded else None,
            },
        )
    print("error: give --clean or --bundled-data", file=sys.stderr)
    return None


def _cmd_train(args) -> int:
    from ..training import TrainConfig, degradation_from_args, export_model, loss_log_path, train

    if args.degradation_json:
        spec = json.loads(args.degradation_json)
    else:
        spec = degradation_from_args(args.task, args.noise, args.sigma_max, args.scale)
    data = _train_data(args)
    if data is None:
        return 2
    clean, degraded, desc = data
    cfg = TrainConfig(
        task=args.task,
        channels=args.channels,
        n_feat=args.n_feat,
        chan_factor=args.chan_factor,
        n_mrb=args.n_mrb,
        degradation=spec,
        iters=args.iters,
        lr=args.lr,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        stages=args.stages,
        augment=not args.no_augment,
        channel_shuffle=args.channel_shuffle,
        channels_last=args.channels_last,
        dense_groups=args.dense_groups,
        seed=args.seed,
        log_every=args.log_every,
        save_every=args.save_every,
        time_budget=args.time_budget,
        device=args.device,
        amp=not args.no_amp,
        amp_cpu=args.amp_cpu,
        ema=args.ema,
        loss=args.loss,
    )
    try:
        res = train(
            cfg if not args.resume else None,
            clean=clean,
            degraded=degraded,
            out=args.out,
            resume=args.resume,
            init=args.init,
            data_description=desc,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(f"interrupted; checkpoint saved to {args.out} (resume with --resume {args.out})", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint: {res.checkpoint} (iteration {res.iteration}); loss log: {loss_log_path(res.checkpoint)}")
    if args.export:
        print(f"model: {export_model(res.checkpoint, args.export)}")
    return 0
