"""``napari-mirnet finetune``: its options and the command (self-supervised fine-tuning of a denoiser)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.options import RestoreOptions
from .common import UsageError, _err, add_storage_option, parse_storage_options
from .fields import add_field, field_help, shown_value

#: help of the flags made from FinetuneConfig's fields (their defaults and types come from the fields),
#: in the order --help lists them
_FINETUNE_HELP = {
    "objective": "self-supervised loss: auto (recorrupted for noise correlated in both directions, else "
    "neighbor2neighbor), neighbor2neighbor (pairs of neighbouring pixels), blindspot (masked pixels, "
    "Noise2Void-style) or recorrupted (the image plus and minus noise drawn as the measured noise is); "
    "docs/finetune.md compares them (default: {default})",
    "pairs": "neighbours whose noise is independent: any (white noise), vertical for noise correlated along rows, "
    "horizontal along columns, pd2/pd3/pd4 for noise correlated over 1-3 pixels in every direction (pixels 2/3/4 "
    "apart; the model then restores that way too) (default: measured on the data)",
    "lr": "learning rate (default: {neighbor2neighbor}; {recorrupted} for recorrupted pairs)",
    "patch": "patch edge, a multiple of 8 (default: {default})",
    "batch": "patches per step (default: {default})",
    "device": field_help(RestoreOptions, "device"),
    "seed": "random seed of the patches drawn and held out (default: {default}): the same seed draws the same patches",
}


def _finetune_field(parser, name: str) -> None:
    from ..training.config import LR, OBJECTIVES, PAIRS, FinetuneConfig

    choices = {"objective": OBJECTIVES, "pairs": PAIRS}
    extra = {"choices": list(choices[name])} if name in choices else {}
    shown = {k: shown_value(v) for k, v in LR.items()}
    text = _FINETUNE_HELP[name].format(**shown) if name == "lr" else _FINETUNE_HELP[name]
    add_field(parser, FinetuneConfig, name, help=text, **extra)


def _add_finetune_command(sub) -> None:
    ft = sub.add_parser(
        "finetune",
        help="adapt a denoiser to your own noisy images, without clean ones (self-supervised)",
        description="Fine-tune a MIRNet-v2 denoiser on noisy images alone (Neighbor2Neighbor-style "
        "self-supervision) and write the best model (by a held-out self-supervised loss) to OUTPUT, "
        "updated as it improves; use it with: napari-mirnet restore ... --weights OUTPUT. "
        "Re-run with --resume to continue an interrupted run.",
    )
    ft.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="noisy images, stacks, folders, zarr stores or URLs (s3://, https://)",
    )
    ft.add_argument("-o", "--output", required=True, help="model file to write (.pth), a local path")
    ft.add_argument("--weights", default="small-denoise-gray", help="model to start from (default: %(default)s)")
    ft.add_argument("--minutes", type=float, default=10.0, help="time budget in minutes (default: 10)")
    ft.add_argument("--steps", type=int, help="stop after this many steps (with --minutes: whichever comes first)")
    ft.add_argument("--axes", help="axes of the inputs, e.g. ZYX, TYX, YXC (default: from the file)")
    add_field(
        ft, RestoreOptions, "normalisation", help="intensity mapping; restore with the same one (default: {default})"
    )
    add_field(
        ft,
        RestoreOptions,
        "nodata",
        help="value that marks missing pixels (nan allowed): left out of the intensity mapping and of every "
        "patch learnt from (default: the file's nodata; NaN in float images always)",
    )
    for name in _FINETUNE_HELP:
        _finetune_field(ft, name)
    ft.add_argument("--resume", action="store_true", help="continue the run saved next to OUTPUT")
    add_storage_option(ft, "input")
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_finetune)


#: Python argument names in finetune's messages -> this command's flags
_FINETUNE_FLAGS = {
    "resume=True": "--resume",
    "weights=": "--weights ",
    "minutes=...": "--minutes",
    "steps=...": "--steps",
    "minutes": "--minutes",
    "steps": "--steps",
    "patch": "--patch",
    "batch": "--batch",
    "lr": "--lr",
    "objective": "--objective",
    "pairs": "--pairs",
    "nodata=": "--nodata ",
}


def _in_flags(msg: str) -> str:
    import re

    names = "|".join(re.escape(k) for k in sorted(_FINETUNE_FLAGS, key=len, reverse=True))
    return re.sub(rf"(?<![-\w])({names})(?!\w)", lambda m: _FINETUNE_FLAGS[m.group(1)], msg)


def _checked_args(args) -> tuple[Path, dict | None]:
    """The model file and the storage options, or a UsageError (said before torch is imported)."""
    from ..io.urls import is_url, redact
    from ..training.config import MIN_EDGE
    from ..training.output import state_path

    if args.minutes is not None and args.minutes <= 0:
        raise UsageError("--minutes must be positive")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be at least 1")
    if args.patch < MIN_EDGE or args.patch % 8:
        raise UsageError(f"--patch must be a multiple of 8 and at least {MIN_EDGE}")
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    storage_options = parse_storage_options(args.storage_option)
    if is_url(args.output):
        raise UsageError(
            f"-o {redact(args.output)}: the fine-tuned model is written to a local file; give a local path "
            "(and copy it to the store afterwards if you need it there)"
        )
    out = Path(args.output)
    if (out.exists() or state_path(out).exists()) and not args.resume:
        raise UsageError(
            f"{out} or its saved run exists; pass --resume to continue that run, or choose another --output"
        )
    return out, storage_options


def _cmd_finetune(args) -> int:
    from ..training.output import state_path

    out, storage_options = _checked_args(args)
    # torch only now: a usage error above is said at once
    from .. import io as mio
    from ..training import finetune
    from ..weights import WeightsError

    data = args.inputs if len(args.inputs) > 1 else args.inputs[0]
    try:
        res = finetune(
            data,
            out,
            args.weights,
            minutes=args.minutes,
            steps=args.steps,
            axes=args.axes,
            normalisation=args.normalisation,
            nodata=args.nodata,
            resume=args.resume,
            progress=not args.quiet,
            storage_options=storage_options,
            **{name: getattr(args, name) for name in _FINETUNE_HELP},
        )
    except KeyboardInterrupt:
        print(f"interrupted; the best model so far is in {out} (continue with --resume)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, WeightsError, mio.OutputError) as err:
        _err(_in_flags(str(err)))
        return 2
    print(
        f"model: {res.path} (best of {res.steps} steps at step {res.best_step}; validation loss "
        f"{res.source_val:.4g} -> {res.best_val:.4g}; {res.elapsed:.0f} s, {res.setup_s:.0f} s of it set-up); "
        f"resumable state: {state_path(res.path)}"
    )
    print(f"note: {res.summary()}")
    print(
        f"use it: napari-mirnet restore INPUT -o OUTPUT --weights {res.path}"
        + (f" --normalisation {args.normalisation}" if args.normalisation != "auto" else "")
    )
    return 0
