"""PNG and JPEG: small 2-D gray or colour pictures, read and written whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metadata import ImageMeta
from .errors import OutputError
from .image import ImageSource

__all__ = ["check_picture", "open_picture", "write_picture"]


def open_picture(p: Path) -> ImageSource:
    """A png/jpg as numpy (palette, gray+alpha and CMYK images converted to RGB/RGBA)."""
    from PIL import Image

    with Image.open(p) as im:
        if im.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        arr = np.asarray(im)
    axes = "YX" if arr.ndim == 2 else "YXC"
    return ImageSource(arr, axes, ImageMeta(axes=axes, source_format=p.suffix.lower().lstrip(".")))


def check_picture(p: Path, shape: tuple, dtype: np.dtype, axes: str) -> None:
    """Refuse what a png/jpg cannot hold, naming the format that can."""
    suffix = p.suffix.lower()
    n_c = shape[-1] if axes == "YXC" else 1
    if axes not in ("YX", "YXC"):
        raise OutputError(f"{p.name}: {suffix} holds one 2-D image; this image has axes {axes}; write .tif or .zarr")
    if n_c not in ((1, 3) if suffix != ".png" else (1, 3, 4)):
        raise OutputError(
            f"{p.name}: {suffix} holds gray or RGB{'A' if suffix == '.png' else ''} images; "
            f"this image has {n_c} channels; write .tif or .zarr"
        )
    if dtype != np.uint8 and not (suffix == ".png" and dtype == np.uint16 and n_c == 1):
        raise OutputError(
            f"{p.name}: {suffix} holds 8-bit images{' (16-bit: gray only)' if suffix == '.png' else ''}; "
            f"this image is {dtype}; write .tif or .zarr"
        )


def write_picture(tmp: Path, suffix: str, arr, note: str | None) -> None:
    """Write a png/jpg at ``tmp``; ``note`` (the run fingerprint) goes into a text chunk or comment."""
    from PIL import Image, PngImagePlugin

    from .store import ATTR

    data = np.asarray(arr)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        if note:
            info.add_text(ATTR, note)
        Image.fromarray(data).save(tmp, format="PNG", pnginfo=info)
    else:
        Image.fromarray(data).save(tmp, format="JPEG", quality=95, **({"comment": note} if note else {}))
