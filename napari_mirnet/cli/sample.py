"""``napari-mirnet sample``: write a sample degraded image to try a task on."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import _err, _Help

#: CLI name -> sample_data function (the same samples napari offers).
_SAMPLES = {
    "noisy": "noisy_astronaut",
    "lowlight": "lowlight_coffee",
    "lowres": "lowres_chelsea",
    "lowcontrast": "low_contrast_moon",
    "dualpixel": "dual_pixel_pair",
    "stack": "noisy_stack",
}


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


def _sample_files(name: str, out: Path) -> tuple[list[tuple[Path, object, str, dict]], bool]:
    """(path, data, axes, layer kwargs) per file of a sample, and whether 16 bits became 8 (png/jpg colour)."""
    import numpy as np

    from .. import sample_data

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
    from ..io import OutputError, write_image

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
