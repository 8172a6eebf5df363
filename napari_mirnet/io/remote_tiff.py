"""TIFF, OME-TIFF, ImageJ TIFF and GeoTIFF/COG at a URL, read lazily: only the byte ranges of the tiles read.

A GeoTIFF (or COG) goes through rasterio and GDAL's virtual file systems (``/vsicurl/``, ``/vsis3/``,
``/vsigs/``, ``/vsiaz/``) with GDAL config made from the storage options (``io.urls.gdal_config``);
any other TIFF through tifffile over an fsspec file. Either way the metadata is read as for the same
file on disk (``ImageMeta`` equal), and the array is picklable: it holds the URL and options, and
each process (each thread) opens its own handle, so dask.distributed workers reopen it themselves.
"""

from __future__ import annotations

import json
import threading

import numpy as np

__all__ = ["RemoteTiff", "RemoteTiffArray", "is_geotiff_url"]

#: Bytes fetched per request by the fsspec file under tifffile: the header and IFDs come in one or
#: two requests; a tile read fetches at most this much beyond what it needs.
BLOCK = 64 * 1024

_local = threading.local()


class RemoteTiff:
    """How to open a TIFF at a URL (picklable: the URL and the fsspec options, no open handle)."""

    def __init__(self, url: str, options: dict, name: str, secrets: tuple = ()):
        # name: the redacted URL for messages; secrets: strings no message may show
        self.url, self.options, self.name, self.secrets = url, dict(options), name, tuple(secrets)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fh"}  # an open handle stays in its process

    def open(self):
        """A new fsspec file on the URL, read in blocks of ``BLOCK`` bytes that are kept (LRU): tifffile
        seeks back and forth through the header and the IFDs."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **self.options)
        return fs.open(path, "rb", block_size=BLOCK, cache_type="blockcache")

    def handle(self):
        """The handle of the planning thread (header, layout, first reads share its cached blocks)."""
        if getattr(self, "_fh", None) is None:
            self._fh = self.open()
        self._fh.seek(0)
        return self._fh

    def claim(self):
        """The planning handle for the first array view that asks (once), then new handles."""
        fh, self._fh = getattr(self, "_fh", None), None
        if fh is None:
            return self.open()
        fh.seek(0)  # tifffile takes the position of a file object as the start of the TIFF
        return fh

    def array(self, series: int):
        """The full-resolution array of ``series``, lazily; every read retried (io.retry)."""
        from .retry import RetryArray

        return RetryArray(RemoteTiffArray(self, series), self.name, self.secrets)


class RemoteTiffArray:
    """One series of a remote TIFF as a sliceable array (zarr-like: shape, dtype, chunks)."""

    def __init__(self, remote: RemoteTiff, series: int):
        self.remote, self.series = remote, series
        z = self._zarr()
        self.shape, self.dtype, self.chunks = tuple(z.shape), np.dtype(z.dtype), tuple(z.chunks)
        self.ndim = len(self.shape)

    def _key(self) -> str:
        return json.dumps([self.remote.url, self.series, self.remote.options], sort_keys=True, default=str)

    def _zarr(self):
        """This thread's open zarr view of the series (tifffile's store over an fsspec file)."""
        import tifffile
        import zarr

        cache = _local.__dict__.setdefault("open", {})
        key = self._key()
        if key not in cache:
            fh = self.remote.claim()
            z = zarr.open(tifffile.imread(fh, aszarr=True, series=self.series), mode="r")
            if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
                z = z["0"]
            cache[key] = (fh, z)
        return cache[key][1]

    def reset(self) -> None:
        """Forget this thread's handle (after a failed read: the next read opens a new one)."""
        entry = getattr(_local, "open", {}).pop(self._key(), None)
        if entry is not None:
            try:
                entry[0].close()
            except Exception:  # a broken connection may not close cleanly: it is dropped anyway
                pass

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return np.asarray(self._zarr()[key])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def is_geotiff_url(remote: RemoteTiff) -> bool:
    """Whether the remote TIFF carries GeoTIFF tags (as :func:`io.geotiff.is_geotiff` for a local file).

    Raises the reading error (missing, refused, not a TIFF): the caller turns it into a message.
    """
    import tifffile

    from .geotiff import GEO_TAGS

    with tifffile.TiffFile(remote.handle()) as tif:
        tags = tif.pages[0].tags
        return any(t in tags for t in GEO_TAGS)
