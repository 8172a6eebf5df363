"""xarray DataArrays in and out: dims -> axes, coordinates -> pixel size and position, and back.

xarray is an optional extra (``pip install xarray``, or ``pip install -e '.[xarray]'`` in a clone): it is imported only when the
input already is a DataArray (so xarray is installed), never to find out whether it is one.

Coordinates are read as pixel centres (xarray's convention). A uniformly spaced 1-D coordinate
of a dim gives the axis's pixel size (``ImageMeta.scale``) and the first pixel's centre
(``ImageMeta.translation``); its ``attrs['units']`` the unit. Coordinates that are not uniformly
spaced (or not numbers, such as dates) give no pixel size: on T, Z and C they are kept as they are
in the output; on Y and X they are kept for a same-size result and refused for super-resolution,
whose output grid cannot be derived from them. A descending grid (a raster's y) gives no pixel size
either, but its output coordinates are rebuilt like an ascending one's.
"""

from __future__ import annotations

import numpy as np

from .metadata import Channel, ImageMeta

__all__ = ["DIM_NAMES", "from_dataarray", "is_dataarray", "to_dataarray"]

#: Accepted dim names (lower case) -> axis letter.
DIM_NAMES = {
    "t": "T",
    "time": "T",
    "z": "Z",
    "c": "C",
    "channel": "C",
    "channels": "C",
    "band": "C",
    "bands": "C",
    "y": "Y",
    "x": "X",
}


def is_dataarray(obj) -> bool:
    """Whether ``obj`` is an xarray DataArray (without importing xarray for anything else)."""
    if not type(obj).__module__.startswith("xarray."):
        return False
    import xarray as xr

    return isinstance(obj, xr.DataArray)


def dims_to_axes(dims) -> str:
    """The axis letters of a DataArray's dims; a clear error for a dim we have no axis for."""
    letters = []
    for dim in dims:
        letter = DIM_NAMES.get(str(dim).lower())
        if letter is None:
            names = ", ".join(sorted({k for k in DIM_NAMES if len(k) > 1} | {"t", "z", "c", "y", "x"}))
            raise ValueError(
                f"the DataArray has a dim {dim!r} that names no image axis; dims must be among {names} "
                f"(any case): rename it, e.g. arr.rename({{{str(dim)!r}: 'z'}}), or select one of its entries "
                f"(arr.isel({{{str(dim)!r}: 0}}))"
            )
        letters.append(letter)
    axes = "".join(letters)
    if len(set(axes)) != len(axes):
        raise ValueError(f"the DataArray's dims {tuple(dims)} name the same axis twice ({axes}); rename one of them")
    return axes


def _uniform(values: np.ndarray) -> tuple[float, float] | None:
    """(first, step) of a uniformly spaced numeric 1-D coordinate, else None."""
    if values.dtype.kind not in "iuf" or values.ndim != 1 or len(values) < 2:
        return None
    v = values.astype(float)
    steps = np.diff(v)
    if not np.all(np.isfinite(v)) or steps[0] == 0 or not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        return None
    return float(v[0]), float(steps[0])


def from_dataarray(arr, axes: str | None = None):
    """(array, axes, meta) of a DataArray: its data as it is (numpy, or dask: stays lazy) and its metadata.

    ``axes``, if given, must agree with the dims (the dims say which axis is which).
    """
    import dask.array as da

    dim_axes = dims_to_axes(arr.dims)
    if axes is not None and axes.upper() != dim_axes:
        raise ValueError(
            f"axes={axes!r} disagrees with the DataArray's dims {tuple(arr.dims)} (axes {dim_axes!r}); "
            "leave axes= out (the dims say it) or rename the dims"
        )
    data = arr.data
    if not isinstance(data, (np.ndarray, da.Array)):
        data = np.asarray(arr.values)  # e.g. a pint or sparse array: read as numpy
    scale, translation, units = {}, {}, {}
    for dim, a in zip(arr.dims, dim_axes):
        if dim not in arr.coords:
            continue
        coord = arr.coords[dim]
        unit = coord.attrs.get("units", coord.attrs.get("unit"))
        values = np.asarray(coord.values)
        if values.dtype.kind in "iuf" and len(values) >= 1:
            translation[a] = float(values[0])
        grid = _uniform(values)
        if grid is not None and grid[1] > 0:
            scale[a] = grid[1]
        elif len(values) > 1 or values.dtype.kind not in "iuf":
            # not an ascending grid (uneven, dates, or descending like a raster's y): no pixel size
            # in the metadata (a pixel size is positive); the coordinates travel as they are
            translation.pop(a, None)
            continue
        if unit:
            units[a] = str(unit)
    channels = ()
    if "C" in dim_axes:
        dim = arr.dims[dim_axes.index("C")]
        if dim in arr.coords and np.asarray(arr.coords[dim].values).dtype.kind in "UOS":
            channels = tuple(Channel(name=str(v)) for v in arr.coords[dim].values)
        translation.pop("C", None)
        scale.pop("C", None)
    meta = ImageMeta(
        axes=dim_axes,
        scale=scale,
        units=units,
        translation=translation,
        channels=channels,
        nodata=declared_nodata(arr),
        source_format="xarray",
        name=None if arr.name is None else str(arr.name),
    )
    return data, dim_axes, meta


#: Where xarray, netCDF/CF and rioxarray keep a DataArray's nodata value, in the order rioxarray reads them.
_NODATA_KEYS = ("_FillValue", "missing_value", "fill_value", "nodata")


def declared_nodata(arr) -> float | None:
    """The nodata value a DataArray declares (``rio.nodata``: encoding or attrs), as the file readers take a
    GeoTIFF's; None when it declares none. A declared value that is not a number is refused."""
    for where in (arr.encoding, arr.attrs):
        for key in _NODATA_KEYS:
            value = where.get(key)
            if value is None:
                continue
            try:
                return float(np.asarray(value).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise ValueError(
                    f"the DataArray declares {key}={value!r}, which is not a number; fix the attribute or "
                    "drop it and pass nodata="
                ) from None
    return None


def check_resamplable(arr, factor: int) -> None:
    """Refuse super-resolution of a DataArray whose Y/X coordinates are not a regular grid."""
    if factor == 1:
        return
    axes = dims_to_axes(arr.dims)
    for dim, a in zip(arr.dims, axes):
        if a in "YX" and dim in arr.coords and _uniform(np.asarray(arr.coords[dim].values)) is None:
            raise ValueError(
                f"the DataArray's coordinate {dim!r} is not uniformly spaced, so the super-resolved grid "
                f"(x{factor} finer) cannot be derived from it; interpolate to a regular grid "
                f"(arr.interp) or drop it (arr.drop_vars({dim!r}))"
            )


def to_dataarray(result, template, factor: int = 1):
    """The restored array as a DataArray like ``template``: same dims and order, name, attrs.

    Y and X coordinates are rebuilt for the output grid (:meth:`ImageMeta.resampled`: spacing /
    ``factor``, first centre moved so that both grids cover the same extent; descending
    coordinates too); other coordinates that do not depend on Y or X are kept, and a channel
    coordinate only while the channel count is unchanged. ``result`` stays as it is (numpy, or a
    lazy dask array).
    """
    import xarray as xr

    axes = dims_to_axes(template.dims)
    coords = {}
    for name, coord in template.coords.items():
        cdims = coord.dims
        size_ok = all(result.shape[template.dims.index(d)] == template.sizes[d] for d in cdims)
        if size_ok and (factor == 1 or not any(axes[template.dims.index(d)] in "YX" for d in cdims)):
            coords[name] = coord.variable.copy(deep=False)
    for dim, a in zip(template.dims, axes):
        if a not in "YX" or dim not in template.coords or dim in coords:
            continue
        grid = _uniform(np.asarray(template.coords[dim].values))  # check_resamplable refused others
        out = ImageMeta(scale={a: grid[1]}, translation={a: grid[0]}).resampled(factor)
        n = result.shape[template.dims.index(dim)]
        dtype = template.coords[dim].dtype if template.coords[dim].dtype.kind == "f" else np.float64
        values = (out.translation[a] + out.scale[a] * np.arange(n)).astype(dtype)  # integer indices: fractional
        coords[dim] = xr.Variable(dim, values, dict(template.coords[dim].attrs))
    if factor != 1:
        coords = {name: _resampled_geotransform(c, factor) for name, c in coords.items()}
    return xr.DataArray(result, dims=template.dims, coords=coords, name=template.name, attrs=dict(template.attrs))


def _resampled_geotransform(coord, factor: int):
    """A grid-mapping coordinate (rioxarray's ``spatial_ref``) with its GDAL ``GeoTransform`` for the output
    grid: same origin (the outer corner), pixel size and rotation divided by ``factor``. Without this
    ``rio.transform()`` and ``rio.resolution()`` report the input's pixel on the finer grid."""
    text = coord.attrs.get("GeoTransform")
    if text is None:
        return coord
    try:
        c, a, b, f, d, e = (float(v) for v in str(text).split())
    except ValueError:  # not six numbers: not ours to rewrite, and wrong for the output grid, so dropped
        coord = coord.copy()
        del coord.attrs["GeoTransform"]
        return coord
    coord = coord.copy()
    coord.attrs["GeoTransform"] = " ".join(repr(v) for v in (c, a / factor, b / factor, f, d / factor, e / factor))
    return coord
