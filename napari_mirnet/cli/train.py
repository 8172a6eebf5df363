"""``napari-mirnet train``: its options and the command (data, configuration, the training run)."""

from __future__ import annotations

import argparse
import json
import sys

from ..engine.options import RestoreOptions
from .common import _Help
from .fields import add_field, field_help

#: help of the flags made from TrainConfig's fields (their defaults and types come from the fields)
_TRAIN_HELP = {
    "task": "what the model restores",
    "channels": "colour channels of the model",
    "n_feat": "features of the first stream",
    "n_mrb": "multi-scale residual blocks per group",
    "chan_factor": "feature growth per stream",
    "iters": "training steps",
    "lr": "peak learning rate (cosine schedule)",
    "warmup": "share of the run spent warming up the learning rate",
    "grad_clip": "gradient norm clip",
    "stages": "progressive patch:batch stages, each for an equal share of the run",
    "time_budget": "stop after this many seconds of training",
    "seed": "random seed",
    "augment": "no flips and rotations",
    "channel_shuffle": "also permute colour channels at random",
    "loss": "l1 (the paper's); l2 or psnr (minus the per-patch PSNR) for a last fine-tune",
    "ema": "keep and export a moving average of the weights (e.g. 0.999; 0 = off)",
    "device": field_help(RestoreOptions, "device"),
    "amp": "no bf16 autocast on CUDA",
    "amp_cpu": "bf16 autocast on the CPU (faster on CPUs with native bf16; use with --channels-last)",
    "channels_last": "NHWC memory layout (often faster: time it)",
    "dense_groups": "grouped convolutions as dense block-diagonal ones (GPU speed; same result)",
    "save_every": "steps between checkpoints",
    "log_every": "steps between loss log lines",
}


def _stages(text: str):
    from ..training.config import parse_stages

    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _train_field(group, name: str, *flags: str, **overrides) -> None:
    from ..training.config import TrainConfig

    add_field(group, TrainConfig, name, *flags, help=_TRAIN_HELP[name], **overrides)


def _add_train_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an argparse subparsers object."""
    from ..training.config import TRAINABLE_TASKS
    from ..training.images import HELD_OUT_IMAGES

    p = subparsers.add_parser(
        "train",
        formatter_class=_Help,
        help="train a MIRNet-v2 model on image pairs or clean images with a synthetic degradation",
        description="Train MIRNet-v2. Give --clean (and --degraded for real pairs), or --bundled-data to "
        "train on images bundled with installed packages (minus the held-out ones).",
    )
    _train_field(p, "task", choices=TRAINABLE_TASKS)
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
    _train_field(net, "channels", choices=[1, 3])
    for name in ("n_feat", "n_mrb", "chan_factor"):
        _train_field(net, name)
    _add_train_optimisation(p)
    _add_train_run(p)
    p.set_defaults(func=_cmd_train)
    return p


def _add_train_optimisation(p) -> None:
    from ..training.config import LOSS_NAMES, TrainConfig

    opt = p.add_argument_group("optimisation")
    for name in ("iters", "lr", "warmup", "grad_clip"):
        _train_field(opt, name)
    # shown and parsed as text (argparse converts a text default with type=)
    stages = ",".join(f"{patch}:{batch}" for patch, batch in TrainConfig.stages)
    _train_field(opt, "stages", type=_stages, default=stages)
    for name in ("time_budget", "seed"):
        _train_field(opt, name)
    _train_field(opt, "augment", "--no-augment")
    _train_field(opt, "channel_shuffle")
    _train_field(opt, "loss", choices=LOSS_NAMES)
    _train_field(opt, "ema", metavar="DECAY")


def _add_train_run(p) -> None:
    run = p.add_argument_group("run")
    run.add_argument("--out", "-o", required=True, help="checkpoint path (.pth); the loss log goes next to it")
    run.add_argument("--resume", help="checkpoint to resume from (usually the same as --out)")
    run.add_argument("--init", help="start from this model file's weights (fine-tuning)")
    run.add_argument("--export", help="also write a slim fp16 {'params','meta'} model file here")
    _train_field(run, "device")
    _train_field(run, "amp", "--no-amp")
    for name in ("amp_cpu", "channels_last", "dense_groups", "save_every", "log_every"):
        _train_field(run, name)
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_data(args):
    """(clean, degraded, description) for ``train``; None after printing what is wrong."""
    from ..training.images import HELD_OUT_IMAGES, load_images, training_images

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
    from ..training.config import TrainConfig, degradation_from_args

    if args.degradation_json:
        spec = json.loads(args.degradation_json)
    else:
        spec = degradation_from_args(args.task, args.noise, args.sigma_max, args.scale)
    data = _train_data(args)
    if data is None:
        return 2
    clean, degraded, desc = data
    cfg = TrainConfig(degradation=spec, **{name: getattr(args, name) for name in _TRAIN_HELP})
    from ..training import export_model, loss_log_path, train  # torch: after the usage errors

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
