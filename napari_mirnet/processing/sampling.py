"""The bounded pixel sample the intensity map's percentiles come from, nodata left out."""

from __future__ import annotations

import numpy as np

__all__ = ["bounded_sample", "percentile_range", "valid_values"]


def valid_values(sample: np.ndarray, nodata: float | None) -> np.ndarray:
    """The sample's values that are data (NaN and ``nodata`` left out)."""
    sample = np.asarray(sample, dtype=np.float64).ravel()
    keep = ~np.isnan(sample)
    if nodata is not None and not np.isnan(nodata):
        keep &= sample != nodata
    return sample[keep]


def percentile_range(sample: np.ndarray, percentiles) -> tuple[float, float]:
    sample = np.asarray(sample, dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise ValueError("the image contains Inf pixels; replace them (e.g. np.nan_to_num) first (NaN marks nodata)")
    if not sample.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        # sparse images (a few bright spots on a flat background): map the sample's whole range
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        # a constant image: a span of 1, or a millionth of the value where 1 would vanish (3e38 + 1 == 3e38)
        high = low + max(1.0, abs(low) * 2.0**-20)
    return low, high


def bounded_sample(image, max_elements: int = 2_000_000, channel_axis: int | None = None):
    """A strided subsample of at most ~max_elements values (computed if the array is lazy).

    The stride never skips along ``channel_axis`` (nor along axes shorter than 8, such as a
    channel axis the caller did not name), so every channel is in the sample.
    """
    size = int(np.prod(image.shape))
    if size <= max_elements:
        sample = image
    else:
        keep = {i for i, n in enumerate(image.shape) if n < 8}
        if channel_axis is not None:
            keep.add(channel_axis % image.ndim)
        kept = int(np.prod([image.shape[i] for i in keep]))
        strided = image.ndim - len(keep)
        step = int(np.ceil((size / kept / max(1, max_elements // kept)) ** (1 / max(strided, 1))))
        sample = image[tuple(slice(None) if i in keep else slice(None, None, step) for i in range(image.ndim))]
    return sample.compute() if hasattr(sample, "compute") else np.asarray(sample)
