"""``napari-mirnet restore``: its options and the command (plan outputs, check them all, then run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.options import RestoreOptions
from ..tasks import TASKS
from .common import UsageError, _err, _Help, add_storage_option, parse_storage_options
from .fields import add_field

_EXISTING_RULE = (
    "Existing outputs, one rule for every format: an output that holds a complete result of the same "
    "settings (napari-mirnet records them in zarr stores and in the tif/png/jpg files it writes) is "
    "skipped with exit 0; an unfinished zarr store of the same settings is resumed; any other existing "
    "output (other settings, or a file napari-mirnet did not write) is refused with exit 1 unless "
    "--overwrite. An input is never overwritten. Every input and output is checked before the first tile "
    "runs; if one check fails, nothing runs."
)


def _multiple_of_4(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0 or v % 4:
        raise argparse.ArgumentTypeError(f"{v} must be a non-negative multiple of 4")
    return v


def _add_restore_command(sub) -> None:
    r = sub.add_parser(
        "restore",
        formatter_class=_Help,
        help="restore images, folders or zarr stores",
        description="Restore each INPUT (file, folder of images, zarr/OME-Zarr store, or a URL: s3://, gs://, "
        "az://, https://) into OUTPUT. With one input, OUTPUT may be a file (.zarr, .tif, .png, .jpg); otherwise "
        "it is a folder that gets one output per input. Zarr outputs are written chunk by chunk and resume "
        "when the same command is re-run. OUTPUT may be an s3://, gs:// or az:// URL (a folder URL ends in /): "
        "zarr stores are written there chunk by chunk, files are written locally and uploaded once complete.",
        epilog=_EXISTING_RULE,
    )
    r.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="images, folders, zarr stores or URLs (defocus: LEFT RIGHT)"
    )
    r.add_argument("-o", "--output", required=True, help="output file or folder, or an s3://, gs://, az:// URL")
    r.add_argument("--task", choices=list(TASKS), default="denoise", help="what to restore")
    r.add_argument("--scale", type=int, help="super-resolution factor (2, 3 or 4; default: 2)")
    r.add_argument("--weights", help="model name, official asset, file or URL (default: the task's)")
    r.add_argument("--axes", help="axes of the inputs, e.g. YX, YXC, ZYX, TZCYX (default: from the file)")
    r.add_argument(
        "--level",
        help="OME-Zarr inputs: the pyramid level to restore, an index (0: full resolution) or a dataset path "
        "(default: 0, or the level the input path points at)",
    )
    for name in ("tile", "halo", "blend", "device", "precision", "normalisation", "nodata", "tta"):
        add_field(r, RestoreOptions, name, **({"type": _multiple_of_4} if name in ("tile", "halo") else {}))
    _add_qc_option(r)
    add_field(r, RestoreOptions, "rgb")
    r.add_argument(
        "--format",
        choices=["same", "zarr", "tif", "png"],
        default="same",
        help="output format for folder outputs (same: like the input; jpg becomes png)",
    )
    r.add_argument("--scheduler", help="dask.distributed scheduler address (tcp://host:8786) to run on a cluster")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    add_storage_option(r)
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
        "verdict; '--qc tta' adds the 8 flips' disagreement and, on noise correlated in both directions that "
        "the model left in, a second opinion from the noise's pixel-shuffle sub-images (8-9x slower). See docs/qc.md",
    )


def _plan_outputs(args) -> list[tuple[object, Path]]:
    """(input, output path) pairs (see :func:`napari_mirnet.outputs.plan_outputs`); a UsageError for
    outputs that cannot be right whatever the data."""
    from ..outputs import plan_outputs

    try:
        return plan_outputs(
            args.inputs, args.output, task=args.task, format=args.format, storage_options=args.storage_options
        )
    except ValueError as err:
        raise UsageError(str(err)) from None


def _connect(args):
    from ..engine import connect

    return connect(args.scheduler or None)[0]


def _cmd_restore(args) -> int:
    from ..io.urls import is_url

    args.storage_options = parse_storage_options(args.storage_option)
    if args.qc and is_url(args.output):
        raise UsageError("--qc writes its maps beside a local output; -o a URL with --qc is not supported yet")
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
    from .. import engine
    from ..outputs import resume_options

    options = resume_options(RestoreOptions.from_mapping(vars(args)), dst, args.overwrite, args.storage_options)
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
        storage_options=args.storage_options,
    )


def _preflight(args, pairs, client) -> tuple[list, list[str]]:
    """Prepare every run (no tile runs) and check its output; (jobs, problems)."""
    from ..engine.quality import check_qc_run
    from ..io import OutputError
    from ..outputs import check_output, input_name

    jobs, problems = [], []
    for src, dst in pairs:
        try:
            run = _prepare(args, src, dst, client)
            check_qc_run(run, args.qc or None)
            action = check_output(run, dst, overwrite=args.overwrite, storage_options=args.storage_options)
        except OutputError as err:
            problems.append(str(err))
            continue
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
            problems.append(f"{input_name(src)}: {err}")
            continue
        # one input keeps its run; many are prepared again when their turn comes (png/jpg inputs
        # are held in memory, and a folder may hold thousands)
        jobs.append((src, dst, run if len(pairs) == 1 else None, action))
    return jobs, problems


def _run_jobs(args, jobs: list, client) -> int:
    from ..io import OutputExistsError
    from ..outputs import input_name
    from ..outputs.existing import shown, suffix_of
    from ..outputs.remote import is_url, url_name

    rc = 0
    for i, (src, dst, run, action) in enumerate(jobs):
        label = f"[{i + 1}/{len(jobs)}] {url_name(dst) if is_url(dst) else dst.name}"
        if action == "skip":
            print(f"{label}: already complete, skipped (--overwrite to redo)", file=sys.stderr)
            continue
        try:
            _restore_one(args, run or _prepare(args, src, dst, client), dst, label, client)
            if suffix_of(dst) == ".zarr" and not args.quiet:
                # napari 0.9 asks which reader to use for a .zarr folder; ours keeps scale, units and colour
                print(f"{label}: to view it: napari {shown(dst)} --plugin napari-mirnet", file=sys.stderr)
        except OutputExistsError as err:  # another process finished it since the check
            if not err.matches:
                _err(f"{shown(dst)}: {err}")
                rc = 1
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
            _err(f"{input_name(src)}: {err}")
            rc = 1
    return rc


def _restore_one(args, run, dst, label: str, client) -> None:
    """Write a prepared run into ``dst`` with a progress bar, then ``--qc``'s check beside it."""
    from ..outputs import quality_check_beside, write_run
    from ..progress import Bar

    # created now, not at the first tile: its elapsed time and rate count from the real start
    bar = None if args.quiet else Bar(label, total=len(run.keys), unit="tile")
    try:
        write_run(run, dst, overwrite=args.overwrite, client=client, progress=bar, storage_options=args.storage_options)
    finally:
        if bar is not None:
            bar.close()
    if getattr(args, "qc", None):
        report = quality_check_beside(run, dst, args.qc, client)
        print(f"{Path(dst).name}: qc {report.text}", file=sys.stderr)
