"""The images training reads: the package test images and their splits, and the user's files.

Bundled images are read from disk only (nothing is downloaded) through
:func:`napari_mirnet.io.open_image`, as every other input; which images train, which select (the
validation strips) and which only test is data here, so that every run and benchmark draws the
same splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "HELD_OUT_IMAGES",
    "PACKAGE_TRAIN_IMAGES",
    "SKIMAGE_TRAIN_IMAGES",
    "TEST_IMAGES",
    "TRAIN_IMAGES",
    "VALIDATION_MIN_ROWS",
    "VALIDATION_SOURCES",
    "VALIDATION_STRIP",
    "bundled_images",
    "centre_crop",
    "independent_test_images",
    "is_colour",
    "load_images",
    "save_test_images",
    "split_validation",
    "to_channels",
    "training_images",
    "validation_images",
]

#: Images bundled with scikit-image that shipped models were trained on (those present on disk).
SKIMAGE_TRAIN_IMAGES = (
    "brick",
    "cell",
    "clock_motion",
    "coins",
    "color",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "ihc",
    "logo",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "page",
    "phantom",
    "retina",
    "rocket",
    "text",
)
#: Photographs bundled with other installable packages: name -> (package, path inside it). These add
#: natural colour scenes, which scikit-image's training images are short of.
PACKAGE_TRAIN_IMAGES = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
TRAIN_IMAGES = SKIMAGE_TRAIN_IMAGES + tuple(PACKAGE_TRAIN_IMAGES)
#: Bundled images never trained on; benchmarks and tests evaluate on these only.
HELD_OUT_IMAGES = ("camera", "astronaut", "chelsea", "coffee")

#: Training-source images whose bottom strip (:data:`VALIDATION_STRIP`, at least
#: :data:`VALIDATION_MIN_ROWS` rows) is the validation split: runs train on the rows above it
#: (:func:`split_validation`) and every choice (checkpoint, run, learning rate, what ships) is made on
#: the strips. Models trained before this split existed saw the strips too.
VALIDATION_SOURCES = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "cell",
    "microaneurysms",
    "hubble_deep_field",
    "retina",
    "rocket",
    "motorcycle_left",
    "ihc",
    "grace_hopper",
    "china",
    "flower",
)
VALIDATION_STRIP = 0.25
VALIDATION_MIN_ROWS = 96
#: The test split: images from installed packages that no run has trained on or been selected on.
#: Evaluate them once, at the end, and report; never choose anything by them. name -> (package,
#: path inside it, array key or loader, what it is, licence).
TEST_IMAGES = {
    "ascent": (
        "pywt",
        "data/ascent.npz",
        "data",
        "photograph, 8-bit gray 512x512 (people on a stair; scipy's 'ascent')",
        "public domain (public-domain-image.com, 'accent-to-the-top.jpg'); shipped with PyWavelets (MIT)",
    ),
    "aero": (
        "pywt",
        "data/aero.npz",
        "data",
        "aerial photograph, 8-bit gray 512x512",
        "shipped with PyWavelets (MIT) as demo data",
    ),
    "mri": (
        "matplotlib",
        "mpl-data/sample_data/s1045.ima.gz",
        "mri",
        "MRI slice of a head, 16-bit 256x256 (min-max scaled)",
        "matplotlib sample data (matplotlib licence, PSF-based)",
    ),
    "dem": (
        "matplotlib",
        "mpl-data/sample_data/jacksboro_fault_dem.npz",
        "elevation",
        "digital elevation model (Jacksboro fault), int16 344x403 (min-max scaled)",
        "matplotlib sample data (USGS DEM, public domain)",
    ),
    "minduka": (
        "matplotlib",
        "mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
        "image",
        "colour drawing of a present, RGBA 128x128 (alpha dropped)",
        "matplotlib sample data (Minduka, public domain clip art)",
    ),
}


def _to_float(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    if a.dtype == bool:
        return a.astype(np.float32)
    return a.astype(np.float32)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Float (H, W, C) image with ``channels`` channels (alpha dropped, gray<->RGB converted)."""
    a = _to_float(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2D gray or colour image, got shape {a.shape}")
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.shape[-1] == channels:
        return np.ascontiguousarray(a)
    if a.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(a, channels, axis=-1))
    if a.shape[-1] == 3 and channels == 1:
        # ITU-R 601 luma, as skimage.color.rgb2gray
        return np.ascontiguousarray(a @ np.array([0.2125, 0.7154, 0.0721], np.float32))[..., None]
    raise ValueError(f"cannot convert {a.shape[-1]} channels to {channels}")


def _read(path, storage_options: dict | None = None) -> np.ndarray:
    """A whole image file (or URL) as an array, read as restore reads it."""
    from ..io import open_image

    return np.asarray(open_image(path, storage_options=storage_options).array)


def load_images(source, storage_options: dict | None = None) -> list[np.ndarray]:
    """Images from a folder, a file, a URL, a list of these, or arrays (returned as given).

    ``storage_options`` (fsspec's) open URLs (``s3://``, ``https://`` ...)."""
    if isinstance(source, np.ndarray):
        return [source] if source.ndim in (2, 3) else list(source)
    if isinstance(source, (str, os.PathLike)):
        from ..io import list_inputs

        return [_read(f, storage_options) for f in list_inputs([source])]
    return [x if isinstance(x, np.ndarray) else _read(x, storage_options) for x in source]


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (sklearn and matplotlib are heavy)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_images(names: Sequence[str], data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Images bundled with installed packages, by name, from disk only (nothing is downloaded).

    Names are scikit-image's data files (``camera``, ``astronaut``, ...) or keys of
    :data:`PACKAGE_TRAIN_IMAGES`; with ``data_dir`` every name is looked up there instead.
    Names not found on disk (e.g. the package is not installed) are left out.
    """
    out = {}
    for name in names:
        if data_dir is not None:
            folder, stem = Path(data_dir), name
        elif name in PACKAGE_TRAIN_IMAGES:
            package, rel = PACKAGE_TRAIN_IMAGES[name]
            root = _package_dir(package)
            if root is None:
                continue
            folder, stem = (root / rel).parent, Path(rel).stem
        else:
            folder, stem = _package_dir("skimage") / "data", name
        hits = [h for h in sorted(folder.glob(f"{stem}.*")) if h.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif")]
        if hits:
            out[name] = _read(hits[0])
    return out


def training_images(
    data_dir: str | os.PathLike | None = None, colour_only: bool = False, exclude_validation: bool = True
) -> dict[str, np.ndarray]:
    """The bundled training images (:data:`TRAIN_IMAGES` found on disk), optionally colour ones only;
    without their validation strips (:func:`split_validation`) unless ``exclude_validation`` is False."""
    imgs = bundled_images(TRAIN_IMAGES, data_dir)
    if exclude_validation:
        imgs = split_validation(imgs)[0]
    return {k: v for k, v in imgs.items() if is_colour(v)} if colour_only else imgs


def split_validation(images: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training part, validation part) of bundled images: the bottom strip of each
    :data:`VALIDATION_SOURCES` image is validation, the rows above it training; other images (and
    those too small to leave :data:`VALIDATION_MIN_ROWS` rows on both sides) train whole.
    """
    train_part, val_part = {}, {}
    for name, img in images.items():
        if name not in VALIDATION_SOURCES:
            train_part[name] = img
            continue
        h = img.shape[0]
        rows = max(VALIDATION_MIN_ROWS, int(round(h * VALIDATION_STRIP)))
        if h - rows < VALIDATION_MIN_ROWS:
            train_part[name] = img
            continue
        train_part[name] = img[: h - rows]
        val_part[name] = img[h - rows :]
    return train_part, val_part


def centre_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """The centre ``crop`` x ``crop`` pixels (or fewer, where the image is smaller)."""
    h, w = img.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])


def validation_images(
    channels: int, crop: int = 128, data_dir=None, colour_only: bool | None = None
) -> dict[str, np.ndarray]:
    """Centre crops (H, W, C) float32 of the validation strips; RGB models get colour sources only
    (``colour_only`` defaults to ``channels == 3``)."""
    colour_only = channels == 3 if colour_only is None else colour_only
    _, val = split_validation(bundled_images(VALIDATION_SOURCES, data_dir))
    return {k: centre_crop(to_channels(v, channels), crop) for k, v in val.items() if not colour_only or is_colour(v)}


def _load_test_image(name: str, test_dir=None) -> np.ndarray | None:
    if test_dir is not None:  # a copy made by save_test_images (machines without the packages)
        f = Path(test_dir) / f"{name}.npy"
        return np.load(f) if f.exists() else None
    package, rel, key, _, _ = TEST_IMAGES[name]
    root = _package_dir(package)
    path = root / rel if root is not None else None
    if path is None or not path.exists():
        return None
    if key == "mri":  # raw big-endian uint16, 256x256 (as matplotlib's own example reads it)
        import gzip

        with gzip.open(path) as f:
            a = np.frombuffer(f.read(), ">u2").reshape(256, 256).astype(np.float32)
    elif key == "image":
        return to_channels(_read(path), 3)
    else:
        with np.load(path) as z:
            a = z[key].astype(np.float32)
        if key == "data":
            return a / 255.0
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / max(hi - lo, 1e-12)


def independent_test_images(
    channels: int, crop: int = 256, colour_only: bool | None = None, test_dir=None
) -> dict[str, np.ndarray]:
    """Centre crops (H, W, C) float32 of the :data:`TEST_IMAGES` found on disk (in their packages, or
    in ``test_dir`` as written by :func:`save_test_images`). Gray models get every one (colour ones
    as luminance); RGB models the colour ones only (``colour_only``)."""
    colour_only = channels == 3 if colour_only is None else colour_only
    out = {}
    for name in TEST_IMAGES:
        img = _load_test_image(name, test_dir)
        if img is None or (colour_only and not is_colour(img)):
            continue
        out[name] = centre_crop(to_channels(img, channels), crop)
    return out


def save_test_images(folder: str | os.PathLike) -> list[str]:
    """Write the test images found in their packages to ``folder/<name>.npy`` (float32 in [0, 1]),
    for a machine that lacks those packages; returns the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TEST_IMAGES:
        img = _load_test_image(name)
        if img is not None:
            np.save(folder / f"{name}.npy", np.asarray(img, np.float32))
            done.append(name)
    return done


def is_colour(img: np.ndarray) -> bool:
    """True for images with three or more channels that are not all the same."""
    if img.ndim != 3 or img.shape[-1] < 3:
        return False
    rgb = img[..., :3]
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
