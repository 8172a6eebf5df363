"""``napari-mirnet restore``: its options and the command (plan outputs, check them all, then run)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..tasks import TASKS
from .common import UsageError, _err, _Help

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


def _multiple_of_4(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0 or v % 4:
        raise argparse.ArgumentTypeError(f"{v} must be a non-negative multiple of 4")
    return v


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


def _is_store(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def _plan_outputs(args) -> list[tuple[object, Path]]:
    """(input, output path) pairs; defocus inputs are (left, right) tuples.

    Raises UsageError for outputs that cannot be right whatever the data: a folder for one file, an
    unknown suffix, an output that is an input (or would replace one).
    """
    from ..io import list_inputs

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
    from .. import io as mio

    p = Path(path)
    try:
        if p.is_dir():
            return mio.stored_fingerprint(p)
        suffix = p.suffix.lower()
        if suffix in (".tif", ".tiff") and mio.geotiff.is_geotiff(p):  # ours keep it in the GDAL metadata
            text = mio.geotiff.stored_note(p)
            return json.loads(text) if text else None
        if suffix in (".tif", ".tiff"):
            from ..io.tiff import stored_tiff_fingerprint

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
    from .. import engine

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
    from ..io import OutputError

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

    from .. import io as mio

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
    from ..io import OutputExistsError

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

    from .. import engine
    from ..io import write_image

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
    from ..engine import compute, quality

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

    from .. import engine
    from .. import io as mio

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
