"""What an image's pixels mean, carried from reader to writer: axes, physical sizes, channels, georeferencing.

:class:`ImageMeta` is filled by the readers (``io``), travels with a run, is changed by the run only
where the pixels change (super-resolution: pixel size and first-pixel position; the channel count),
and is written back by the writers. Axis keys are the letters of ``axes`` (T, Z, C, Y, X).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["Channel", "GeoInfo", "ImageMeta", "RGB_COLOURS"]

#: The colours an RGB image's channels are shown in (OME ``omero`` block, napari layers).
RGB_COLOURS = ("FF0000", "00FF00", "0000FF")


@dataclass(frozen=True)
class Channel:
    """One channel (band): its name, display colour (``RRGGBB``), contrast window, and whether it is alpha.

    ``unit``, ``scale``, ``offset`` and ``tags`` say what the band's values mean (GDAL band unit,
    ``value * scale + offset``, band metadata items); a restoration keeps them, since it changes
    the values but not their meaning.
    """

    name: str | None = None
    color: str | None = None
    window: tuple[float, float] | None = None
    alpha: bool = False
    unit: str | None = None
    scale: float | None = None
    offset: float | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GeoInfo:
    """Georeferencing of a raster (rasterio terms): the grid is Y, X; the transform maps pixel corners."""

    crs: str | None  # WKT (or an authority string such as 'EPSG:32633')
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f): x = a*col + b*row + c, y = d*col + e*row + f
    interleave: str = "pixel"  # 'pixel' or 'band': how the file stored its bands
    tags: tuple[tuple[str, str], ...] = ()  # dataset tags worth keeping (e.g. AREA_OR_POINT)
    # ground control points (row, col, x, y, z, id, info) in pixel-corner coordinates, and their CRS
    gcps: tuple[tuple, ...] = ()
    gcp_crs: str | None = None
    # the file had a mask band (GDAL per-dataset mask) and no nodata value: ImageMeta.nodata is then
    # a stand-in value that marks the masked pixels, written back as a mask band, not as nodata
    mask: bool = False


@dataclass(frozen=True)
class ImageMeta:
    """The meaning of an image's pixels; every field is optional (``None`` or empty: not known).

    ``scale`` and ``translation`` follow OME-NGFF: the physical size of a pixel and the position
    of the first pixel's centre, per axis letter; ``units`` names their unit (``micrometer``,
    ``second``...).
    """

    axes: str | None = None
    scale: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    translation: dict = field(default_factory=dict)
    channels: tuple[Channel, ...] = ()
    nodata: float | None = None  # NaN is allowed (float images)
    geo: GeoInfo | None = None
    source_format: str | None = None  # 'ome-zarr', 'ome-tiff', 'imagej-tiff', 'tiff', 'geotiff', 'xarray', 'png', ...
    name: str | None = None

    @property
    def pixel_scale(self) -> dict | None:
        """``scale`` or ``None`` when no axis has a physical size (the older ``pixel_scale`` field)."""
        return dict(self.scale) or None

    def replace(self, **changes) -> ImageMeta:
        return dataclasses.replace(self, **changes)

    def resampled(self, factor: int) -> ImageMeta:
        """The metadata of the same field of view sampled ``factor`` times finer in Y and X.

        Pixel centres move: the first output pixel's centre lies a quarter input pixel (for x2)
        up-left of the first input pixel's centre, so that both grids cover the same extent.
        """
        if factor == 1:
            return self
        scale = {a: (v / factor if a in "YX" else v) for a, v in self.scale.items()}
        translation = dict(self.translation)
        for a in "YX":
            # no translation said: the first centre was at 0 (NGFF default), and it moves all the same
            if a in translation or a in self.scale or (self.axes and a in self.axes):
                s = float(self.scale.get(a, 1.0))
                # no pixel size said: the output's is still 1/factor in input pixels (one rule for the
                # CLI, the API and the widgets), else the shifted grid opens at factor times the extent
                scale[a] = s / factor
                translation.setdefault(a, 0.0)
                translation[a] = translation[a] - s / 2 + s / (2 * factor)
        geo = self.geo
        if geo is not None:
            a, b, c, d, e, f = geo.transform[:6]
            # ground control points sit at pixel-corner coordinates: those scale with the grid
            gcps = tuple((r * factor, k * factor, *rest) for r, k, *rest in geo.gcps)
            geo = dataclasses.replace(geo, transform=(a / factor, b / factor, c, d / factor, e / factor, f), gcps=gcps)
        return dataclasses.replace(self, scale=scale, translation=translation, geo=geo)

    def with_channel_count(self, n: int) -> ImageMeta:
        """Keep the channel descriptions when the count is unchanged; drop them when it is not."""
        if len(self.channels) == n or not self.channels:
            return self
        if len(self.channels) > n:  # e.g. an alpha channel the output no longer has
            kept = tuple(c for c in self.channels if not c.alpha)
            return dataclasses.replace(self, channels=kept if len(kept) == n else ())
        return dataclasses.replace(self, channels=())

    def to_dict(self) -> dict:
        """A JSON-safe summary (for fingerprints and file descriptions)."""
        out = {
            "axes": self.axes,
            "scale": {k: float(v) for k, v in self.scale.items()},
            "units": dict(self.units),
            "translation": {k: float(v) for k, v in self.translation.items()},
            "channels": [dataclasses.asdict(c) for c in self.channels],
            "nodata": None if self.nodata is None else ("nan" if math.isnan(self.nodata) else float(self.nodata)),
        }
        if self.geo is not None:
            out["geo"] = {"crs": self.geo.crs, "transform": list(self.geo.transform), "interleave": self.geo.interleave}
            if self.geo.gcps:
                out["geo"]["gcps"] = [list(g) for g in self.geo.gcps]
                out["geo"]["gcp_crs"] = self.geo.gcp_crs
            if self.geo.mask:
                out["geo"]["mask"] = True
        return out
