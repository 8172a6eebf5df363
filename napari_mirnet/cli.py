"""The ``napari-mirnet`` command: ``restore`` files, folders and zarr stores; ``weights``; ``sample``; ``train``.

Exit codes: 0 success (complete outputs of the same settings are skipped), 1 a check, restoration or
download failed (restore checks every input and output before any tile runs and then runs nothing;
a failure while running is reported and the other inputs still run), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .tasks import TASKS

__all__ = ["main", "build_parser"]

_SUFFIX_OUT = {".tif": ".tif", ".tiff": ".tif", ".png": ".png", ".jpg": ".png", ".jpeg": ".png", ".zarr": ".zarr"}
_IMAGE_OUT = (".zarr", ".tif", ".tiff", ".png", ".jpg", ".jpeg")

_EXISTING_RULE = (
    "Existing outputs, one rule for every format: an output that holds a complete result of the same "
    "settings (napari-mirnet records them in zarr stores and in the tif/png/jpg files it writes) is "
    "skipped with exit 0; an unfinished zarr store of the same settings is resumed; any other existing "
    "output (other settings, or a file napari-mirnet did not write) is refused with exit 1 unless "
    "--overwrite. An input is never overwritten. Every input and output is checked before the first tile "
    "runs; if one check fails, nothing runs."
)


class UsageError(Exception):
    pass


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: ...)' where there is a default worth showing and the help does not name one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def _multiple_of_4(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0 or v % 4:
        raise argparse.ArgumentTypeError(f"{v} must be a non-negative multiple of 4")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-mirnet",
        description="MIRNet-v2 image restoration for large images and stacks (tiled, resumable).",
    )
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_restore_command(sub)
    _add_weights_command(sub)
    _add_sample_command(sub)
    _add_finetune_command(sub)
    _add_train_command(sub)
    return parser


_HALO_HELP = (
    "halo on each side of a tile, in pixels (default: 32 with the CPU's automatic tile, "
    "else a quarter of the tile, at most 64)"
)


def _add_restore_command(sub) -> None:
    r = sub.add_parser(
        "restore",
        formatter_class=_Help,
        help="restore images, folders or zarr stores",
        description="Restore each INPUT (file, folder of images, zarr/OME-Zarr store) into OUTPUT. "
        "With one input, OUTPUT may be a file (.zarr, .tif, .png, .jpg); otherwise it is a folder that gets "
        "one output per input. Zarr outputs are written chunk by chunk and resume when the same command "
        "is re-run.",
        epilog=_EXISTING_RULE,
    )
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders or zarr stores (defocus: LEFT RIGHT)")
    r.add_argument("-o", "--output", required=True, help="output file or folder")
    r.add_argument("--task", choices=list(TASKS), default="denoise", help="what to restore")
    r.add_argument("--scale", type=int, help="super-resolution factor (2, 3 or 4; default: 2)")
    r.add_argument("--weights", help="model name, official asset, file or URL (default: the task's)")
    r.add_argument("--axes", help="axes of the inputs, e.g. YX, YXC, ZYX, TZCYX (default: from the file)")
    r.add_argument(
        "--level",
        help="OME-Zarr inputs: the pyramid level to restore, an index (0: full resolution) or a dataset path "
        "(default: 0, or the level the input path points at)",
    )
    r.add_argument(
        "--tile", type=_multiple_of_4, help="tile edge in model pixels, halo included (default: from memory)"
    )
    r.add_argument("--halo", type=_multiple_of_4, help=_HALO_HELP)
    r.add_argument("--blend", type=int, help="feathered blend margin at tile borders, in pixels; 0: none (default: 16)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    r.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on CUDA, fp32 elsewhere"
    )
    r.add_argument(
        "--normalisation",
        choices=["auto", "fixed", "percentile"],
        default="auto",
        help="auto: the full range for integers, percentiles for floats",
    )
    r.add_argument(
        "--nodata",
        type=float,
        help="value that marks missing pixels (nan allowed): left out of the intensity mapping, filled for the "
        "model, written back as nodata (default: the file's nodata; NaN in float images always)",
    )
    r.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over 8 flips/rotations (8x slower, slightly better)",
    )
    _add_qc_option(r)
    _add_rgb_option(r)
    r.add_argument(
        "--format",
        choices=["same", "zarr", "tif", "png"],
        default="same",
        help="output format for folder outputs (same: like the input; jpg becomes png)",
    )
    r.add_argument("--scheduler", help="dask.distributed scheduler address (tcp://host:8786) to run on a cluster")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_cmd_restore)


def _add_qc_option(r) -> None:
    r.add_argument(
        "--qc",
        nargs="?",
        const="on",
        choices=["on", "tta"],
        help="denoise only: also write the residual (input - output) and a trust map beside each output "
        "(zarr: qc/ groups; files: NAME.qc-residual.tif, NAME.qc-trust.tif, NAME.qc.json) and print a "
        "verdict; '--qc tta' adds the 8 flips' disagreement (8x slower). See docs/qc.md",
    )


def _add_rgb_option(r) -> None:
    r.add_argument(
        "--rgb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3 or 4 channels are a colour image (--rgb) or separate bands, each restored alone (--no-rgb); "
        "default: as the data says (channels last, as pictures are stored, or channels coloured red, green, blue)",
    )


def _add_weights_command(sub) -> None:
    w = sub.add_parser("weights", help="list, download or locate model weights")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    wsub.add_parser("list", help="shipped and official models").set_defaults(func=_cmd_weights_list)
    f = wsub.add_parser("fetch", help="download official weights into the cache")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.set_defaults(func=_cmd_weights_fetch)
    p = wsub.add_parser("path", help="print the local file of a model (downloading nothing)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_weights_path)


def _add_sample_command(sub) -> None:
    smp = sub.add_parser(
        "sample",
        formatter_class=_Help,
        help="write a sample image (made offline from scikit-image's bundled images)",
        description="Write a sample degraded image to try a task on: " + ", ".join(_SAMPLES) + ". "
        "Formats: .tif and .zarr hold every sample as it is; .png and .jpg hold 2-D images only (not "
        "'stack'), in 8 bits (the 16-bit dual-pixel views are scaled to 8 bits: use .tif to keep 16). "
        "Existing files are refused unless --overwrite.",
    )
    smp.add_argument("name", choices=list(_SAMPLES), metavar="NAME", help=", ".join(_SAMPLES))
    smp.add_argument("output", help="file to write (.tif, .zarr, .png or .jpg); dualpixel writes OUTPUT's _left/_right")
    smp.add_argument("--overwrite", action="store_true", help="replace existing files")
    smp.set_defaults(func=_cmd_sample)


def _add_finetune_command(sub) -> None:
    ft = sub.add_parser(
        "finetune",
        help="adapt a denoiser to your own noisy images, without clean ones (self-supervised)",
        description="Fine-tune a MIRNet-v2 denoiser on noisy images alone (Neighbor2Neighbor-style "
        "self-supervision) and write the best model (by a held-out self-supervised loss) to OUTPUT, "
        "updated as it improves; use it with: napari-mirnet restore ... --weights OUTPUT. "
        "Re-run with --resume to continue an interrupted run.",
    )
    ft.add_argument("inputs", nargs="+", metavar="INPUT", help="noisy images, stacks, folders or zarr stores")
    ft.add_argument("-o", "--output", required=True, help="model file to write (.pth)")
    ft.add_argument("--weights", default="small-denoise-gray", help="model to start from (default: small-denoise-gray)")
    ft.add_argument("--minutes", type=float, default=10.0, help="time budget in minutes (default: 10)")
    ft.add_argument("--steps", type=int, help="stop after this many steps (with --minutes: whichever comes first)")
    ft.add_argument("--axes", help="axes of the inputs, e.g. ZYX, TYX, YXC (default: from the file)")
    ft.add_argument(
        "--normalisation",
        choices=["auto", "fixed", "percentile"],
        default="auto",
        help="intensity mapping; restore with the same one (default: auto)",
    )
    ft.add_argument(
        "--objective",
        choices=["neighbor2neighbor", "blindspot"],
        default="neighbor2neighbor",
        help="self-supervised loss: neighbor2neighbor (pairs of neighbouring pixels; pixel-independent noise) "
        "or blindspot (masked pixels, Noise2Void-style); docs/finetune.md compares them (default: neighbor2neighbor)",
    )
    ft.add_argument(
        "--pairs",
        choices=["auto", "any", "vertical", "horizontal"],
        default="auto",
        help="neighbours whose noise is independent: vertical for noise correlated along rows "
        "(default: measured on the data)",
    )
    ft.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    ft.add_argument("--patch", type=int, default=96, help="patch edge, a multiple of 8 (default: 96)")
    ft.add_argument("--batch", type=int, default=2, help="patches per step (default: 2)")
    ft.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ft.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the patches drawn and held out (default: 0): the same seed draws the same patches",
    )
    ft.add_argument("--resume", action="store_true", help="continue the run saved next to OUTPUT")
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_finetune)


# Python argument names in library messages -> this command's flags (one place for every sub-command)
_FLAGS = {
    "weights": "--weights",
    "axes": "--axes",
    "level": "--level",
    "tile": "--tile",
    "halo": "--halo",
    "blend": "--blend",
    "scale": "--scale",
    "device": "--device",
    "precision": "--precision",
    "task": "--task",
    "normalisation": "--normalisation",
    "nodata": "--nodata",
    "tta": "--tta",
    "rgb": "--rgb",
    "overwrite": "--overwrite",
    "out": "-o",
    "client": "--scheduler",
}
_FLAG_RE = re.compile(r"(?<![-\w./])(" + "|".join(_FLAGS) + r")=(True\b)?(?=(.?))")


def in_cli_words(msg: str) -> str:
    """``axes='YX'`` -> ``--axes 'YX'``, ``pass axes=,`` -> ``pass --axes,``, ``overwrite=True`` -> ``--overwrite``."""

    def flag(m: re.Match) -> str:
        name, true, nxt = m.groups()
        if true or not nxt or nxt in " ,;:)]":
            return _FLAGS[name]
        return _FLAGS[name] + " "

    msg = _FLAG_RE.sub(flag, msg)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", msg)  # "--overwrite (overwrite=True)" said it twice


def _err(msg: str) -> None:
    print(f"napari-mirnet: error: {in_cli_words(msg)}", file=sys.stderr)


# ------------------------------------------------------------------------------------- sample
#: CLI name -> sample_data function (the same samples napari offers).
_SAMPLES = {
    "noisy": "noisy_astronaut",
    "lowlight": "lowlight_coffee",
    "lowres": "lowres_chelsea",
    "lowcontrast": "low_contrast_moon",
    "dualpixel": "dual_pixel_pair",
    "stack": "noisy_stack",
}


def _sample_files(name: str, out: Path) -> tuple[list[tuple[Path, object, str, dict]], bool]:
    """(path, data, axes, layer kwargs) per file of a sample, and whether 16 bits became 8 (png/jpg colour)."""
    import numpy as np

    from . import sample_data

    layers = getattr(sample_data, _SAMPLES[name])()
    files, reduced = [], False
    for data, meta in layers:
        path = out
        if len(layers) > 1:  # the dual-pixel pair: one file per view
            path = out.with_name(f"{out.stem}_{meta['name'].split()[-1]}{out.suffix}")
        axes = "YXC" if data.ndim == 3 and data.shape[-1] in (3, 4) else "ZYX"[-data.ndim :]
        eight_bit_only = out.suffix.lower() in (".jpg", ".jpeg") or (out.suffix.lower() == ".png" and axes == "YXC")
        if data.dtype == np.uint16 and eight_bit_only:
            # the 16-bit views were made from 8-bit data: rounding back to 8 bits loses little
            data, reduced = ((data.astype(np.uint32) + 128) // 257).astype(np.uint8), True
        files.append((path, data, axes, meta))
    return files, reduced


def _cmd_sample(args) -> int:
    from .io import OutputError, write_image

    files, reduced = _sample_files(args.name, Path(args.output))
    folder = Path(args.output).parent
    try:  # a missing folder is made, as restore does; then every file is checked before the first is written
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _err(f"cannot create the folder {folder}: {err.strerror or err}; choose another output")
        return 1
    try:
        for path, data, axes, _ in files:
            write_image(path, data, axes, check=True)
    except OutputError as err:
        _err(f"{err} (sample {args.name})")
        return 2
    existing = [str(f[0]) for f in files if f[0].exists() or f[0].is_symlink()]
    if existing and not args.overwrite:
        _err(
            f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace, "
            "or choose another name"
        )
        return 1
    try:
        for path, data, axes, meta in files:
            print(write_image(path, data, axes, pixel_size=meta.get("scale")))
    except OutputError as err:
        _err(str(err))
        return 1
    if reduced:
        print(
            f"napari-mirnet: note: {Path(args.output).suffix} holds 8-bit colour: the 16-bit views were "
            "scaled to 8 bits (use .tif to keep 16)",
            file=sys.stderr,
        )
    return 0


# ------------------------------------------------------------------------------------- finetune
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
    "objective": "--objective",
    "pairs": "--pairs",
}


def _in_flags(msg: str) -> str:
    import re

    names = "|".join(re.escape(k) for k in sorted(_FINETUNE_FLAGS, key=len, reverse=True))
    return re.sub(rf"(?<![-\w])({names})(?!\w)", lambda m: _FINETUNE_FLAGS[m.group(1)], msg)


def _cmd_finetune(args) -> int:
    from . import io as mio
    from .finetune import finetune, state_path
    from .weights import WeightsError

    if args.minutes is not None and args.minutes <= 0:
        raise UsageError("--minutes must be positive")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be at least 1")
    if args.patch < 32 or args.patch % 8:
        raise UsageError("--patch must be a multiple of 8 and at least 32")
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    out = Path(args.output)
    if (out.exists() or state_path(out).exists()) and not args.resume:
        raise UsageError(
            f"{out} or its saved run exists; pass --resume to continue that run, or choose another --output"
        )
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
            resume=args.resume,
            progress=not args.quiet,
            objective=args.objective,
            pairs=args.pairs,
            lr=args.lr,
            patch=args.patch,
            batch=args.batch,
            device=args.device,
            seed=args.seed,
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
    if res.unchanged:
        print(f"note: {res.unchanged}")
    print(
        f"use it: napari-mirnet restore INPUT -o OUTPUT --weights {res.path}"
        + (f" --normalisation {args.normalisation}" if args.normalisation != "auto" else "")
    )
    return 0


# ------------------------------------------------------------------------------------- weights
def _cmd_weights_list(args) -> int:
    from .weights import available_weights

    rows = [(i.name, i.kind, i.task, "yes" if i.available else "no", i.licence) for i in available_weights()]
    head = ("NAME", "KIND", "TASK", "LOCAL", "LICENCE")
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(v).ljust(n) for v, n in zip(row, widths)).rstrip())
    return 0


def _cmd_weights_fetch(args) -> int:
    from .weights import WeightsError, fetch

    rc = 0
    for name in args.names:
        try:
            print(fetch(name))
        except WeightsError as err:
            _err(str(err))
            rc = 1
    return rc


def _cmd_weights_path(args) -> int:
    from .weights import (
        OFFICIAL_ASSETS,
        WeightsError,
        cached_path,
        local_checkpoint,
        official_url,
        shipped_models,
    )

    name = args.name
    if name in shipped_models():
        print(shipped_models()[name])
        return 0
    if name in OFFICIAL_ASSETS or name.lower().startswith(("http://", "https://")):
        path = cached_path(name)
        if path.is_file():
            print(path)
            return 0
        source = official_url(name) if name in OFFICIAL_ASSETS else name
        _err(
            f"{name} is not downloaded yet; its place is {path}. Run: napari-mirnet weights fetch {name}"
            f"  (offline: download {source} elsewhere and copy it to that path)"
        )
        return 1
    if name.lower().startswith("file:") or Path(name).expanduser().exists() or Path(name).is_symlink():
        try:  # a folder, a dangling link or an empty file is named as such, not as an unknown model
            print(local_checkpoint(name).resolve())
            return 0
        except WeightsError as err:
            _err(str(err))
            return 1
    _err(f"unknown model {name!r}; see: napari-mirnet weights list")
    return 1


# ------------------------------------------------------------------------------------- restore
def _is_store(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def _plan_outputs(args) -> list[tuple[object, Path]]:
    """(input, output path) pairs; defocus inputs are (left, right) tuples.

    Raises UsageError for outputs that cannot be right whatever the data: a folder for one file, an
    unknown suffix, an output that is an input (or would replace one).
    """
    from .io import list_inputs

    if args.task == "defocus":
        if len(args.inputs) != 2:
            raise UsageError("the defocus task takes two inputs: LEFT RIGHT (files or folders)")
        lefts, rights = list_inputs([args.inputs[0]]), list_inputs([args.inputs[1]])
        if len(lefts) != len(rights):
            raise UsageError(f"{len(lefts)} left views but {len(rights)} right views")
        items = list(zip(lefts, rights))
    else:
        items = list_inputs(args.inputs)
    out = Path(args.output)
    single = len(items) == 1 and (len(args.inputs) == 1 or args.task == "defocus")
    if single and out.suffix.lower() in _IMAGE_OUT:
        if args.format != "same" and out.suffix.lower() != "." + args.format:
            raise UsageError(f"--format {args.format} does not match the output {out.name}")
        pairs = [(items[0], out)]
    elif single and out.suffix and not out.is_dir():
        raise UsageError(
            f"unknown output type {out.suffix!r}: use .zarr, .tif, .png or .jpg (or a folder name without a suffix)"
        )
    elif out.suffix.lower() in _IMAGE_OUT[1:] or (out.exists() and not out.is_dir()) or (_is_store(out)):
        raise UsageError(
            f"{len(items)} inputs need an output folder, not the {'store' if _is_store(out) else 'file'} {out}"
        )
    else:
        pairs = [(item, out / f"{_stem(item)}{_folder_suffix(args, item)}") for item in items]
    return _check_not_inputs(pairs)


def _stem(item) -> str:
    src = item[0] if isinstance(item, tuple) else item
    return src.stem if src.suffix else src.name


def _folder_suffix(args, item) -> str:
    src = item[0] if isinstance(item, tuple) else item
    if args.format != "same":
        return "." + args.format
    return ".zarr" if src.is_dir() else _SUFFIX_OUT.get(src.suffix.lower(), ".zarr")


def _check_not_inputs(pairs: list) -> list:
    """Drop earlier results that a folder run lists as inputs; refuse outputs that are inputs."""

    def paths(item):
        return [Path(os.path.realpath(p)) for p in (item if isinstance(item, tuple) else (item,))]

    # 'restore fold -o fold --format zarr' run again lists fold/a.zarr, the result of fold/a.png:
    # a napari-mirnet result that another input writes is that input's output, not an input
    def earlier_result(i: int) -> bool:
        others = {Path(os.path.realpath(d)) for j, (_, d) in enumerate(pairs) if j != i}
        return bool(set(paths(pairs[i][0])) & others) and _stored_record(paths(pairs[i][0])[0]) is not None

    pairs = [pair for i, pair in enumerate(pairs) if not earlier_result(i)]
    inputs = {p for s, _ in pairs for p in paths(s)}
    for src, dst in pairs:
        real = Path(os.path.realpath(dst))
        if real in paths(src):
            raise UsageError(f"the output {dst} is its input {_name(src)}; choose another output")
        if real in inputs:
            raise UsageError(f"the output {dst} would replace the input {real}; choose another output or --format")
    names = [d for _, d in pairs]
    if len(set(names)) != len(names):
        raise UsageError("two inputs would write the same output name; give them distinct names")
    return pairs


def _stored_record(path: Path) -> dict | None:
    """The settings fingerprint a napari-mirnet output at ``path`` records, or None."""
    from . import io as mio

    p = Path(path)
    try:
        if p.is_dir():
            return mio.stored_fingerprint(p)
        suffix = p.suffix.lower()
        if suffix in (".tif", ".tiff") and mio.geotiff.is_geotiff(p):  # ours keep it in the GDAL metadata
            text = mio.geotiff.stored_note(p)
            return json.loads(text) if text else None
        if suffix in (".tif", ".tiff"):
            from .io.tiff import stored_tiff_fingerprint

            return stored_tiff_fingerprint(p)  # OME MapAnnotation, ImageJ key or (older files) JSON description
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(p) as im:
                text = im.text.get(mio.ATTR) if suffix == ".png" else im.info.get("comment", b"").decode()
        else:
            return None
        return json.loads(text) if text else None
    except (OSError, ValueError, AttributeError):
        return None  # unreadable or not ours: not a result of these settings


def _name(src) -> str:
    return " + ".join(map(str, src)) if isinstance(src, tuple) else str(src)


def _connect(args):
    if not args.scheduler:
        return None
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(
            "--scheduler needs dask.distributed: pip install distributed (in a clone: pip install -e '.[distributed]')"
        ) from None
    try:
        return Client(args.scheduler, timeout="20s")
    except OSError as err:
        raise RuntimeError(f"cannot reach the scheduler at {args.scheduler}: {err}") from None


def _cmd_restore(args) -> int:
    # said before torch is imported: loading the model and planning take seconds
    if not args.quiet:
        print("napari-mirnet: loading model and planning...", file=sys.stderr, flush=True)
    if args.blend is not None and args.blend < 0:
        raise UsageError("--blend must be >= 0")
    if args.qc and args.task != "denoise":
        raise UsageError(
            f"--qc checks a denoiser's output against its input; --task {args.task} changes the "
            "image on purpose: use --task denoise (any denoising --weights) or leave --qc out"
        )
    try:
        pairs = _plan_outputs(args)
    except FileNotFoundError as err:
        _err(str(err))
        return 1
    try:
        client = _connect(args)
    except RuntimeError as err:
        _err(str(err))
        return 1
    try:
        jobs, problems = _preflight(args, pairs, client)
        for problem in problems:
            _err(problem)
        if problems:
            if len(pairs) > 1:
                _err(f"{len(problems)} of {len(pairs)} inputs failed the checks above; nothing was run")
            return 1
        return _run_jobs(args, jobs, client)
    finally:
        if client is not None:
            client.close()


def _prepare(args, src, dst: Path, client):
    """The run for one input; default geometry comes from an existing output of ours (resume)."""
    from . import engine

    options = engine.RestoreOptions(
        tile=args.tile,
        halo=args.halo,
        blend=args.blend,
        device=args.device,
        precision=args.precision,
        normalisation=args.normalisation,
        tta=args.tta,
        nodata=args.nodata,
        rgb=args.rgb,
    )
    stored = None if args.overwrite else _stored_record(dst)
    if stored is None and not args.overwrite and dst.suffix.lower() in (".tif", ".tiff"):
        stored = _stored_record(_tiff_work_store(dst))  # an unfinished TIFF run resumes like a store
    if stored:  # defaults follow free memory, which may have changed since the output was written
        options = options.__class__(
            **{
                **options.to_dict(),
                **{k: stored[k] for k in ("tile", "halo", "blend") if getattr(options, k) is None and k in stored},
            }
        )
    image = tuple(map(str, src)) if isinstance(src, tuple) else str(src)
    return engine.prepare(
        image,
        args.task,
        args.weights,
        scale=args.scale,
        axes=args.axes,
        options=options,
        client=client,
        level=args.level,
    )


def _preflight(args, pairs, client) -> tuple[list, list[str]]:
    """Prepare every run (no tile runs) and check its output; (jobs, problems)."""
    from .io import OutputError

    jobs, problems = [], []
    for src, dst in pairs:
        try:
            run = _prepare(args, src, dst, client)
            action = _check_output(args, run, dst)
        except OutputError as err:
            problems.append(str(err))
            continue
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
            problems.append(f"{_name(src)}: {err}")
            continue
        # one input keeps its run; many are prepared again when their turn comes (png/jpg inputs
        # are held in memory, and a folder may hold thousands)
        jobs.append((src, dst, run if len(pairs) == 1 else None, action))
    return jobs, problems


def _check_output(args, run, dst: Path) -> str:
    """'run' or 'skip' (a complete result of the same settings); OutputError when dst cannot be written."""
    import numpy as np

    from . import io as mio

    suffix = dst.suffix.lower()
    zeros = np.broadcast_to(np.zeros((), run.imap.dtype), run.output_shape)
    mio.write_image(dst, zeros, run.axes, meta=run.output_meta, check=True)  # meta: units the format must hold
    parent = next(p for p in [dst.parent, *dst.parent.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise mio.OutputError(f"cannot write {dst}: {parent} is not a writable folder")
    if not (dst.exists() or dst.is_symlink()):
        return "run"
    stored = _stored_record(dst)
    if suffix == ".zarr" and stored is None and any(dst.iterdir()):
        raise mio.OutputError(
            f"output {dst} exists and is not a napari-mirnet result; it is left alone: choose another path"
        )
    if args.overwrite or (stored is None and suffix == ".zarr"):  # an empty folder
        return "run"
    if stored is None:
        raise mio.OutputError(
            f"output {dst} exists and was not written by napari-mirnet; pass --overwrite to replace it"
        )
    now = json.loads(json.dumps(run.fingerprint))
    complete = mio.is_complete(dst) if suffix == ".zarr" else True  # files are renamed into place whole
    if stored == now:
        return "skip" if complete else "run"  # unfinished: resumed
    keys = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    keys = [k for k in keys if k != "plan"] or keys  # the plan follows from tile, halo and blend
    diff = "; ".join(f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in keys[:4])
    what = "a complete result" if complete else "an unfinished run (re-run with its settings to resume it)"
    raise mio.OutputError(f"output {dst} holds {what} of other settings ({diff}); pass --overwrite to replace it")


def _run_jobs(args, jobs: list, client) -> int:
    from .io import OutputExistsError

    rc = 0
    for i, (src, dst, run, action) in enumerate(jobs):
        label = f"[{i + 1}/{len(jobs)}] {dst.name}"
        if action == "skip":
            print(f"{label}: already complete, skipped (--overwrite to redo)", file=sys.stderr)
            continue
        try:
            _restore_one(args, run or _prepare(args, src, dst, client), dst, label, client)
            if dst.suffix.lower() == ".zarr" and not args.quiet:
                # napari 0.9 asks which reader to use for a .zarr folder; ours keeps scale, units and colour
                print(f"{label}: to view it: napari {dst} --plugin napari-mirnet", file=sys.stderr)
        except OutputExistsError as err:  # another process finished it since the check
            if not err.matches:
                _err(f"{dst}: {err}")
                rc = 1
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
            _err(f"{_name(src)}: {err}")
            rc = 1
    return rc


def _restore_one(args, run, dst: Path, label: str, client) -> None:
    """Execute a prepared run into ``dst``, with a bar that starts when the run is planned."""
    import dask
    from tqdm import tqdm

    from . import engine
    from .io import write_image

    # created now, not at the first tile: its elapsed time and rate count from the real start
    bar = (
        None if args.quiet else tqdm(desc=label, total=len(run.keys), unit="tile", file=sys.stderr, dynamic_ncols=True)
    )

    def progress(done, total):
        if bar.total != total:  # a resumed store: only its missing tiles run
            bar.total = total
        bar.update(done - bar.n)

    report = None if bar is None else progress
    try:
        if dst.suffix.lower() == ".zarr":
            engine.execute(run, out=str(dst), overwrite=args.overwrite, client=client, progress=report, read_back=False)
        elif dst.suffix.lower() in (".tif", ".tiff") and not run.source.eager:
            _restore_to_tiff(args, run, dst, client, report)
        else:
            arr = engine.execute(run, client=client, progress=report)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with dask.config.set(engine.scheduler_config(run.device, client)):
                write_image(dst, arr, run.axes, fingerprint=run.fingerprint, meta=run.output_meta)
    finally:
        if bar is not None:
            bar.close()
    if getattr(args, "qc", None):
        _quality_check(args, run, dst, client)


def _quality_check(args, run, dst: Path, client) -> None:
    """``--qc``: the residual and trust map beside ``dst`` (already written), and the verdict."""
    from .engine import compute, quality

    output = quality.read_output(dst, run.axes)
    out = dst if dst.suffix.lower() == ".zarr" else None
    report = quality.run_qc(run, output, tta=args.qc == "tta", out=out, compute=lambda c: compute(c, run, client))
    if out is None:
        quality.write_qc_tiffs(dst, report, run.axes)
    print(f"{dst.name}: qc {report.text}", file=sys.stderr)


def _tiff_work_store(dst: Path) -> Path:
    """The hidden store a TIFF output is computed into (hidden: folder runs do not list it as an input)."""
    return dst.with_name(f".{dst.name}.partial.zarr")


def _restore_to_tiff(args, run, dst: Path, client, report) -> None:
    """A lazy input's run into a TIFF: the model runs once, into a hidden resumable store beside
    ``dst``; the TIFF (tiles, pyramid levels) is then written from that store, and the store removed.

    Ctrl-C leaves the hidden store (the same command resumes it) and no ``dst``.
    """
    import shutil

    import dask
    import dask.array as da

    from . import engine
    from . import io as mio

    work = _tiff_work_store(dst)
    now = json.loads(json.dumps(run.fingerprint))
    with mio.store_lock(dst):  # one writer per TIFF: the store below has its own lock, taken by the engine
        if not args.overwrite and dst.exists() and _stored_record(dst) == now:
            raise mio.OutputExistsError(f"output {dst} is already complete", True)  # another run finished it
        same = work.is_dir() and mio.stored_fingerprint(work) == now
        if same and not args.overwrite and mio.is_complete(work):  # stopped while the TIFF was written
            arr = da.from_zarr(str(work), component="0")
            store_axes = mio.ome_order(run.axes)
            arr = arr.transpose([store_axes.index(a) for a in run.axes])
        else:  # a hidden store of other settings is ours to replace: the rule on existing outputs is dst's
            arr = engine.execute(
                run, out=str(work), overwrite=args.overwrite or not same, client=client, progress=report
            )
        with dask.config.set(engine.scheduler_config(run.device, client)):
            mio.write_image(dst, arr, run.axes, fingerprint=run.fingerprint, meta=run.output_meta, stored=True)
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------- train
def _stages(text: str):
    from .training import parse_stages

    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_train_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an argparse subparsers object."""
    from .training import HELD_OUT_IMAGES, TRAINABLE_TASKS

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
    from .training import LOSSES

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
    from .training import HELD_OUT_IMAGES, load_images, training_images

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
    from .training import TrainConfig, degradation_from_args, export_model, loss_log_path, train

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


# ------------------------------------------------------------------------------------------ main
def _plain_licence_notice() -> None:
    """Show the official weights' licence notice as one plain ``napari-mirnet: note:`` line on stderr.

    Python's default rendering adds the category and a source line, which reads like a bug in a
    command-line tool. Other warnings keep the default rendering; the Python API keeps the warning.
    """
    import warnings

    shown = warnings.showwarning
    if getattr(shown, "_napari_mirnet_plain", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        # the weights module is imported by then if the notice is being shown; no import here
        weights = sys.modules.get(f"{__package__}.weights")
        if weights is not None and issubclass(category, weights.OfficialWeightsNotice):
            print(f"napari-mirnet: note: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show._napari_mirnet_plain = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _plain_licence_notice()
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        _err(str(err))
        return 2
    except KeyboardInterrupt:
        print("\nnapari-mirnet: interrupted; re-run the same command to resume zarr and tif outputs", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
