"""PNG and JPEG: small 2-D gray or colour pictures, read and written whole.

Pixels are read as every viewer shows them: turned by the EXIF orientation (a phone photo stored
sideways), palette and CMYK pictures converted to RGB(A), and at their full depth: Pillow reads a
16-bit colour PNG as 8 bits, so those go through imagecodecs (libpng), which keeps all 16. A
16-bit result is written as a 16-bit PNG the same way; JPEG holds 8 bits only.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from ..metadata import Channel, ImageMeta
from .errors import OutputError
from .image import ImageSource
from .record import ATTR

__all__ = ["check_picture", "exif_orient", "open_picture", "write_picture"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION = 0x0112  # the EXIF tag


def exif_orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` (rows, columns, ...) as shown for an EXIF orientation (1-8), as ``PIL.ImageOps.exif_transpose`` turns it."""
    turns = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: np.rot90(x, 2).swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    if orientation not in turns:
        return a
    out = turns[orientation](a)  # slicing, swapaxes and rot90 keep a dask array lazy
    return np.ascontiguousarray(out) if isinstance(a, np.ndarray) else out


def _png_depth(p: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's header chunk; None if ``p`` is not a PNG."""
    with open(p, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _decode_png16(p: Path) -> np.ndarray:
    try:
        import imagecodecs
    except ImportError:
        raise ValueError(
            f"{p.name} is a 16-bit colour PNG, which Pillow reads as 8 bits only; reading all 16 needs the "
            "imagecodecs package: pip install imagecodecs (or save the picture as 16-bit TIFF)"
        ) from None
    return imagecodecs.png_decode(p.read_bytes())


def open_picture(p: Path) -> ImageSource:
    """A png/jpg as numpy, as viewers show it (orientation, full bit depth, palette and CMYK as RGB/RGBA)."""
    from PIL import Image

    depth = _png_depth(p)
    with Image.open(p) as im:
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
        if depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6):  # colour or gray + alpha
            arr = _decode_png16(p)
        else:
            arr = _pil_pixels(im)
    arr = exif_orient(arr, orientation)
    axes = "YX" if arr.ndim == 2 else "YXC"
    # gray + alpha: the alpha is carried, not restored (processing.channel_order)
    channels = (Channel(), Channel(alpha=True)) if arr.ndim == 3 and arr.shape[-1] == 2 else ()
    fmt = p.suffix.lower().lstrip(".")
    return ImageSource(arr, axes, ImageMeta(axes=axes, channels=channels, source_format=fmt))


def _pil_pixels(im) -> np.ndarray:
    """A Pillow image as numpy, in a mode that holds its values (palette -> RGB(A), bilevel -> 8-bit gray)."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode in ("CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit gray (as 32-bit 'I' in older Pillow)
        return np.asarray(im).astype(np.uint16)
    return np.asarray(im)


def check_picture(p: Path, shape: tuple, dtype: np.dtype, axes: str) -> None:
    """Refuse what a png/jpg cannot hold, naming the format that can."""
    suffix = p.suffix.lower()
    png = suffix == ".png"
    n_c = shape[-1] if axes == "YXC" else 1
    if axes not in ("YX", "YXC"):
        raise OutputError(f"{p.name}: {suffix} holds one 2-D image; this image has axes {axes}; write .tif or .zarr")
    if n_c not in ((1, 2, 3, 4) if png else (1, 3)):
        raise OutputError(
            f"{p.name}: {suffix} holds gray{', gray + alpha' if png else ''} or RGB{'(A)' if png else ''} images; "
            f"this image has {n_c} channels; write {'.png, ' if n_c in (2, 4) else ''}.tif or .zarr"
        )
    if dtype != np.uint8 and not (png and dtype == np.uint16):
        raise OutputError(
            f"{p.name}: {suffix} holds {'8- or 16-bit' if png else '8-bit'} images; this image is {dtype}; "
            + ("write .png, .tif or .zarr" if dtype == np.uint16 and n_c in (1, 2, 3, 4) else "write .tif or .zarr")
        )
    if png and dtype == np.uint16 and n_c > 1:
        try:
            import imagecodecs  # noqa: F401
        except ImportError:
            raise OutputError(
                f"{p.name}: writing a 16-bit colour PNG needs the imagecodecs package (pip install imagecodecs); "
                "or write .tif"
            ) from None


def _png_text(png: bytes, key: str, text: str) -> bytes:
    """``png`` with a tEXt chunk (``key``, ``text``) before its end chunk."""
    body = key.encode("latin-1") + b"\0" + text.encode("latin-1", "replace")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    end = png.rindex(b"IEND") - 4  # the end chunk's length field
    return png[:end] + chunk + png[end:]


def write_picture(tmp: Path, suffix: str, arr, note: str | None) -> None:
    """Write a png/jpg at ``tmp``; ``note`` (the run fingerprint) goes into a text chunk or comment."""
    from PIL import Image, PngImagePlugin

    data = np.asarray(arr)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if suffix == ".png" and data.dtype == np.uint16 and data.ndim == 3:  # Pillow writes 16-bit gray only
        import imagecodecs

        png = imagecodecs.png_encode(np.ascontiguousarray(data))
        Path(tmp).write_bytes(_png_text(png, ATTR, note) if note else png)
    elif suffix == ".png":
        info = PngImagePlugin.PngInfo()
        if note:
            info.add_text(ATTR, note)
        Image.fromarray(data).save(tmp, format="PNG", pnginfo=info)
    else:
        Image.fromarray(data).save(tmp, format="JPEG", quality=95, **({"comment": note} if note else {}))
