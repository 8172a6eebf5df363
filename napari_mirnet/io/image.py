"""An opened image: a lazily readable array and what its pixels mean."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..metadata import ImageMeta

__all__ = ["ImageSource", "axes_from_letters"]


@dataclass
class ImageSource:
    """What a reader returns: the array (numpy, or zarr-like and read region by region) and its metadata."""

    array: object
    axes: str | None  # None when the file does not say
    meta: ImageMeta = field(default_factory=ImageMeta)

    @property
    def pixel_scale(self) -> dict | None:
        """Physical pixel size per axis letter, or None when the file gives none."""
        return self.meta.pixel_scale


def axes_from_letters(letters: str) -> str | None:
    """Our axes from a file's axis letters (tifffile's S, samples, is our C); None if they do not fit."""
    letters = letters.upper().replace("S", "C")
    ok = set(letters) <= set("TZCYX") and len(set(letters)) == len(letters)
    return letters if ok else None
