"""Reading images (tif, png, jpg, zarr, OME-Zarr) and writing results (OME-Zarr v3, tif, png).

The zarr writer is resumable: a run fingerprint sits in the group's attributes, a ``mirnet_done``
array holds one byte per output chunk (set after that chunk is written), and the OME-NGFF
metadata plus ``complete: true`` are written last, so a store looks incomplete until it is.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

__all__ = [
    "FingerprintMismatch",
    "StoreLocked",
    "ImageSource",
    "OutputError",
    "OutputExistsError",
    "ZarrOutput",
    "check_distinct",
    "is_complete",
    "open_image",
    "open_output",
    "store_lock",
    "ome_order",
    "write_chunk",
    "write_image",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")
ATTR = "napari_mirnet"
DONE = "mirnet_done"
DIGEST = "mirnet_input"  # per output chunk: a digest of the input it was computed from (see engine.digest)


class OutputError(RuntimeError):
    """The output cannot be written, or was only partly written; the message says what to do."""


class OutputExistsError(OutputError):
    """The output is a complete result already; pass overwrite=True (--overwrite) to replace it."""

    def __init__(self, msg: str, matches: bool):
        super().__init__(msg)
        self.matches = matches  # the existing result came from the same settings


class FingerprintMismatch(OutputError):
    """An unfinished output was started with other settings; it cannot be resumed with these."""


class StoreLocked(OutputError):
    """Another run is writing the same output store."""


# -------------------------------------------------------------------------------------- reading
@dataclass
class ImageSource:
    array: object  # numpy or zarr array (read region by region)
    axes: str | None  # None when the file does not say
    pixel_scale: dict | None  # axis letter -> pixel size


def _axes_from_letters(letters: str) -> str | None:
    # tifffile: S samples (colour) is our C; Q/I (unknown, image sequence) leave it to inference
    letters = letters.upper().replace("S", "C")
    ok = set(letters) <= set("TZCYX") and len(set(letters)) == len(letters)
    return letters if ok else None


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open an image file or zarr store without loading it (png/jpg are small and read whole)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == ".zarr":
        return _open_zarr(p)
    if suffix in (".tif", ".tiff"):
        return _open_tif(p)
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        with Image.open(p) as im:
            if im.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
        return ImageSource(arr, "YX" if arr.ndim == 2 else "YXC", None)
    raise ValueError(f"cannot read {p}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")


def _open_tif(p: Path) -> ImageSource:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes = _axes_from_letters(series.axes)
        scale = {}
        if tif.is_imagej and tif.imagej_metadata:
            if "spacing" in tif.imagej_metadata:
                scale["Z"] = float(tif.imagej_metadata["spacing"])
            tag = tif.pages[0].tags.get("XResolution")
            if tag is not None and tag.value[0]:
                scale["X"] = scale["Y"] = tag.value[1] / tag.value[0]
    z = zarr.open(tifffile.imread(p, aszarr=True), mode="r")
    if isinstance(z, zarr.Group):  # a pyramid: full resolution is level 0
        z = z["0"]
    return ImageSource(z, axes, scale or None)


def _multiscales(attrs: dict) -> list | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _open_zarr(p: Path) -> ImageSource:
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # zarr raises several types for non-stores
        raise ValueError(f"cannot open {p} as a zarr store ({type(err).__name__}: {err})") from err
    if isinstance(node, zarr.Array):
        return ImageSource(node, None, None)
    attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if ATTR in attrs and not attrs[ATTR].get("complete", False):
        raise ValueError(f"{p} is an unfinished napari-mirnet output; finish or remove it before reading it")
    if not ms:
        arrays = [k for k, _ in node.arrays()]
        if len(arrays) == 1:
            return ImageSource(node[arrays[0]], None, None)
        raise ValueError(f"{p} is a zarr group without OME-NGFF multiscales metadata; point at one array")
    m = ms[0]
    ds = m["datasets"][0]
    axes_meta = m.get("axes")
    axes = None
    if axes_meta:
        names = [(a["name"] if isinstance(a, dict) else a).upper() for a in axes_meta]
        axes = _axes_from_letters("".join(n[0] for n in names))
    scale = None
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale" and axes:
            scale = dict(zip(axes, t["scale"]))
    return ImageSource(node[ds["path"]], axes, scale)


def list_inputs(paths) -> list[Path]:
    """Expand folders into the images they hold (zarr stores count as one image)."""
    out = []
    for raw in paths:
        p = Path(raw)
        if (
            p.is_dir()
            and p.suffix.lower() != ".zarr"
            and not (p / "zarr.json").exists()
            and not (p / ".zarray").exists()
            and not (p / ".zgroup").exists()
        ):
            # hidden files are not images of the user's (macOS "._a.png", our ".a.tif.partial")
            found = sorted(c for c in p.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES and not c.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


# -------------------------------------------------------------------------------------- writing
def ome_order(axes: str) -> str:
    """OME-NGFF wants time, channel, then space: T, C, Z, Y, X (those present)."""
    return "".join(a for a in "TCZYX" if a in axes)


_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def _norm(obj):
    return json.loads(json.dumps(obj))


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}: {a.get(k)!r} (store) vs {b.get(k)!r} (now)" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(parts[:4])


def _stored_meta(path) -> dict | None:
    """Our metadata in the zarr store at ``path``; None if it is not a napari-mirnet store."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return None
    return attrs.get(ATTR)


def stored_fingerprint(path) -> dict | None:
    """The fingerprint of a napari-mirnet store at ``path``, or None."""
    return (_stored_meta(path) or {}).get("fingerprint")


def is_complete(path) -> bool:
    return bool((_stored_meta(path) or {}).get("complete", False))


class ZarrOutput:
    """A napari-mirnet zarr store being written: data at '0', done markers at 'mirnet_done'."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.group[DONE][...]).astype(bool)

    def input_digests(self) -> np.ndarray:
        """Per output chunk, the digest of the input it was computed from (0: none recorded)."""
        if DIGEST not in self.group:
            return np.zeros(self.group[DONE].shape, np.uint64)
        return np.asarray(self.group[DIGEST][...])

    def finalize(self, axes: str, scale, name: str | None = None) -> None:
        attrs = dict(self.group.attrs)
        meta = attrs[ATTR]
        meta["complete"] = True
        ome = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": Path(name).name if name else "restored",
                    "axes": [{"name": a.lower(), "type": _AXIS_TYPES[a]} for a in axes],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}],
                        }
                    ],
                }
            ],
        }
        # one write of zarr.json (atomic in LocalStore): metadata and the completion marker together
        self.group.attrs.update({"ome": ome, ATTR: meta})


def open_output(path, fingerprint: dict, shape, chunks, dtype, axes: str, overwrite: bool = False) -> ZarrOutput:
    """Create the store, or reopen an unfinished one with the same fingerprint (resume)."""
    p = Path(path)
    fingerprint = _norm(fingerprint)
    if p.exists() and not p.is_dir():
        raise OutputError(f"output {p} is an existing file, not a zarr store; choose another path")
    if p.exists():
        meta = _stored_meta(p)
        if meta is None:
            if any(p.iterdir()):
                raise OutputError(
                    f"output {p} exists and is not a napari-mirnet result; it is left alone: choose another path"
                )
        else:
            same = meta.get("fingerprint") == fingerprint
            if meta.get("complete") and not overwrite:
                raise OutputExistsError(
                    f"output {p} is already complete"
                    + ("" if same else " (from other settings)")
                    + "; pass --overwrite (overwrite=True) to replace it",
                    same,
                )
            if not meta.get("complete") and not overwrite:
                if not same:
                    raise FingerprintMismatch(
                        f"output {p} holds an unfinished run with other settings ({_diff(meta.get('fingerprint', {}), fingerprint)}); "
                        "re-run with the original settings to resume it, or pass --overwrite to start again"
                    )
                g = zarr.open_group(str(p), mode="r+")
                if tuple(g["0"].shape) != tuple(shape):
                    raise FingerprintMismatch(f"output {p} has shape {g['0'].shape}, expected {tuple(shape)}")
                return ZarrOutput(p, g)
            shutil.rmtree(p)  # overwrite a store we wrote ourselves
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.create_group(str(p), zarr_format=3, overwrite=False)
        g.attrs.update({ATTR: {"fingerprint": fingerprint, "complete": False}})
        g.create_array(
            "0",
            shape=tuple(shape),
            chunks=tuple(chunks),
            dtype=np.dtype(dtype),
            fill_value=0,
            dimension_names=[a.lower() for a in axes],
        )
        grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
        # one byte per output chunk, one file each: concurrent writers never share a chunk
        g.create_array(DONE, shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0, compressors=None)
        g.create_array(DIGEST, shape=grid, chunks=(1,) * len(grid), dtype="uint64", fill_value=0, compressors=None)
    except OSError as err:
        raise OutputError(f"cannot create output {p}: {err.strerror or err} (is the location writable?)") from err
    return ZarrOutput(p, g)


def write_digest(output: ZarrOutput, chunk_index: tuple[int, ...], digest: int) -> None:
    """Record the input digest of a chunk (before its data and done marker are written)."""
    output.group[DIGEST][tuple(chunk_index)] = np.uint64(digest)


def write_chunk(output: ZarrOutput, block: np.ndarray, chunk_index: tuple[int, ...]) -> None:
    """Write one chunk-aligned block, then its done marker (never the other way round)."""
    data, done = output.group["0"], output.group[DONE]
    region = tuple(slice(i * c, i * c + n) for i, c, n in zip(chunk_index, data.chunks, block.shape))
    data[region] = block
    done[tuple(chunk_index)] = 1


def check_distinct(inputs, out) -> None:
    """Refuse an output that is an input, lies inside one, or holds one (paths resolved first).

    Replacing the output deletes it before the input is read: writing a store into itself would
    leave a store of zeros marked complete.
    """
    o = Path(out).expanduser().resolve()
    for raw in inputs:
        if raw is None:
            continue
        i = Path(raw).expanduser().resolve()
        if i == o:
            why = f"is the input {raw}"
        elif o in i.parents:
            why = f"holds the input {raw}"
        elif i in o.parents:
            why = f"lies inside the input {raw}"
        else:
            continue
        raise OutputError(
            f"output {out} {why}: writing it would destroy the input before it is read; choose another output path"
        )


def _lock_path(p: Path) -> Path:
    return p.parent / f".{p.name}.lock"


class _StoreLock:
    """An exclusive lock on an output store for one run, across processes and threads.

    A file next to the store (``.<name>.lock``, so that replacing the store cannot delete it)
    locked with ``flock``; it holds the writer's pid, host and start time for the error message.
    The kernel drops the lock when its process dies, so a file left by a crash does not block.
    Without ``fcntl`` (Windows) the file is created with O_EXCL and a crash leaves it behind.
    """

    def __init__(self, path):
        self.path = Path(path).absolute()
        self.file = _lock_path(self.path)
        self.fd: int | None = None

    def _refuse(self) -> None:
        try:
            holder = self.file.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise StoreLocked(
            f"output {self.path} is being written by another run ({holder}); wait for it to finish or stop "
            f"it, or choose another output. If no run is writing it any more, delete {self.file} and re-run."
        )

    def acquire(self) -> None:
        import socket
        import time

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create output {self.path}: {err.strerror or err} (is the location writable?)"
            ) from err
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        while True:
            flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0)
            try:
                fd = os.open(self.file, flags, 0o666)
            except FileExistsError:
                self._refuse()
            except OSError as err:
                raise OutputError(
                    f"cannot create output {self.path}: {err.strerror or err} (is the location writable?)"
                ) from err
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    self._refuse()
                except OSError:
                    pass  # no locks on this file system (some NFS): go on unlocked, as before
                # the previous holder unlinks the file on release: a lock on a stale inode is none
                try:
                    same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(
                fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
            )
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.file.unlink()  # while still locked, so that a waiting opener sees a new inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def store_lock(path) -> _StoreLock:
    """``with store_lock(out): ...`` holds the output store for one run; see :class:`_StoreLock`."""
    return _StoreLock(path)


def write_image(path, arr, axes: str, *, fingerprint: dict | None = None, pixel_size=None, check: bool = False) -> Path:
    """Write a (dask or numpy) image as tif (chunk by chunk), png/jpg, or a plain OME-Zarr store.

    ``fingerprint`` is recorded in the file (tif description, png text, jpg comment) so that a re-run
    can tell a result of the same settings; ``pixel_size`` (per axis) goes into OME-Zarr metadata.
    ``check=True`` only checks that the format can hold ``arr`` (anything with ``shape`` and
    ``dtype``) and that ``path`` can be replaced by a file or store; nothing is written.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    dtype, shape = np.dtype(arr.dtype), tuple(arr.shape)
    if suffix in (".png", ".jpg", ".jpeg"):
        n_c = shape[-1] if axes == "YXC" else 1
        if axes not in ("YX", "YXC"):
            raise OutputError(
                f"{p.name}: {suffix} holds one 2-D image; this image has axes {axes}; write .tif or .zarr"
            )
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
    elif suffix not in (".tif", ".tiff", ".zarr"):
        raise OutputError(f"cannot write {p.name}: use .zarr, .tif, .png or .jpg")
    is_store = p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))
    if p.is_dir() and not (suffix == ".zarr" and (is_store or not any(p.iterdir()))):
        raise OutputError(
            f"{p} is a folder"
            + ("" if suffix != ".zarr" else " but not a zarr store")
            + "; it is left alone: choose another path"
        )
    if check:
        return p
    import dask.array as da

    tmp = p.with_name(f".{p.name}.partial")
    note = json.dumps(_norm(fingerprint)) if fingerprint is not None else None
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            # imagej-style axes only for the layouts it knows; plain tif otherwise
            photometric = "rgb" if axes.endswith("C") and shape[-1] in (3, 4) else "minisblack"
            meta = {"axes": axes, **({ATTR: note} if note else {})}
            mm = tifffile.memmap(tmp, shape=shape, dtype=dtype, photometric=photometric, metadata=meta)
            if isinstance(arr, da.Array):
                da.store(arr, mm, lock=False)
            else:
                mm[...] = arr
            mm.flush()
            del mm
        elif suffix == ".zarr":
            order = ome_order(axes)
            data = np.transpose(np.asarray(arr), [axes.index(a) for a in order])
            scale = [float(dict(zip(axes, pixel_size or ())).get(a, 1.0)) for a in order]
            g = zarr.create_group(str(tmp), zarr_format=3, overwrite=True)
            g.create_array("0", data=data, dimension_names=[a.lower() for a in order])
            g.attrs["ome"] = {
                "version": "0.5",
                "multiscales": [
                    {
                        "name": p.stem,
                        "axes": [{"name": a.lower(), "type": _AXIS_TYPES[a]} for a in order],
                        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
                    }
                ],
            }
            if p.exists():  # a store (checked above), replaced as a whole
                shutil.rmtree(p)
        else:
            from PIL import Image, PngImagePlugin

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
        os.replace(tmp, p)
    except OSError as err:
        raise OutputError(f"writing {p} failed: {err}") from err
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return p
