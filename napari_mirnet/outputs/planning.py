"""Planning outputs: ``out`` of ``restore`` checked before the model loads, and the CLI's (input,
output) pairs for files, folders, stores and URLs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .. import io as mio
from . import remote
from .existing import check_distinct_url, shown, stored_record, suffix_of

__all__ = ["FORMATS", "OUTPUT_SUFFIXES", "check_out_path", "input_name", "plan_outputs"]

#: ``format=`` of folder outputs: "same" follows each input's suffix.
FORMATS = ("same", "zarr", "tif", "png")
#: Suffixes of an output file or store.
OUTPUT_SUFFIXES = (".zarr", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
# a folder output keeps each input's format; jpg inputs become png (no second lossy compression)
_SUFFIX_OUT = {".tif": ".tif", ".tiff": ".tif", ".png": ".png", ".jpg": ".png", ".jpeg": ".png", ".zarr": ".zarr"}


def check_out_path(out, image=None):
    """``out`` of ``restore``: a suffix it can write, and not the input ``image`` (a path or URL);
    checked before the model loads. A path without a suffix is a zarr store. Returns a ``Path``,
    or the URL as given (a ``str``; ``http(s)://`` is refused: it cannot be written)."""
    url = remote.is_url(out)
    dst = out if url else Path(out)
    suffix = suffix_of(dst)
    if suffix and suffix not in OUTPUT_SUFFIXES:
        raise mio.OutputError(
            f"out={shown(os.fspath(out))!r}: cannot write {suffix} files; out must end in .zarr (.ome.zarr), "
            ".tif (.ome.tif), .png or .jpg"
        )
    paths = image if isinstance(image, (tuple, list)) else [image]
    paths = [p for p in paths if isinstance(p, (str, os.PathLike))]
    if url:
        remote.check_writable(out, "out=")
        check_distinct_url(paths, out)
    else:
        mio.check_distinct([p for p in paths if not remote.is_url(p)], dst)
    return dst


def plan_outputs(inputs, out, *, task: str, format: str = "same", storage_options: dict | None = None) -> list:
    """(input, output) pairs for ``inputs`` (files, folders, stores, URLs) written to ``out``.

    One input (or one defocus pair) goes to ``out`` itself when it has an image suffix; otherwise
    ``out`` is a folder that gets one output per input, named after it, in ``format``. Defocus
    inputs are (left, right) tuples. ``out`` may be a URL (``s3://bucket/results/``): outputs are
    then URLs (``str``), named as in a local folder; ``http(s)://`` cannot be written.

    Raises
    ------
    ValueError
        ``out`` cannot be right whatever the data: a file for many inputs, an unknown suffix, an
        output that is an input (or would replace one), two outputs of one name, an http(s) URL.
    FileNotFoundError
        An input is missing, or a folder holds no images.
    """
    if task == "defocus":
        if len(inputs) != 2:
            raise ValueError("the defocus task takes two inputs: LEFT RIGHT (files or folders)")
        lefts, rights = (mio.list_inputs([side], storage_options) for side in inputs)
        if len(lefts) != len(rights):
            raise ValueError(f"{len(lefts)} left views but {len(rights)} right views")
        items = list(zip(lefts, rights))
    else:
        items = mio.list_inputs(inputs, storage_options)
    single = len(items) == 1 and (len(inputs) == 1 or task == "defocus")
    if remote.is_url(out):
        try:
            remote.check_writable(out, "the output")
        except mio.OutputError as err:
            raise ValueError(str(err)) from None
        pairs = _url_pairs(items, out, single, format)
        try:  # an output inside an input store (or holding one) would destroy it
            for _, dst in pairs:
                check_distinct_url([p for s, _ in pairs for p in (s if isinstance(s, tuple) else (s,))], dst)
        except mio.OutputError as err:
            raise ValueError(str(err)) from None
    else:
        pairs = _local_pairs(items, Path(out), single, format)
    return _check_not_inputs(pairs, storage_options)


def _local_pairs(items: list, out: Path, single: bool, format: str) -> list:
    suffix = out.suffix.lower()
    if single and suffix in OUTPUT_SUFFIXES:
        if format != "same" and suffix != "." + format:
            raise ValueError(f"format={format} does not match the output {out.name}")
        return [(items[0], out)]
    if single and suffix and not out.is_dir():
        raise ValueError(
            f"unknown output type {out.suffix!r}: use .zarr, .tif, .png or .jpg (or a folder name without a suffix)"
        )
    if suffix in OUTPUT_SUFFIXES[1:] or (out.exists() and not out.is_dir()) or _holds_store(out):
        raise ValueError(
            f"{len(items)} inputs need an output folder, not the {'store' if _holds_store(out) else 'file'} {out}"
        )
    return [(item, out / f"{_stem(item)}{_folder_suffix(format, item)}") for item in items]


def _url_pairs(items: list, out: str, single: bool, format: str) -> list:
    """As :func:`_local_pairs` for an output URL; a URL ending in ``/`` or without a suffix is a folder."""
    suffix = "" if out.endswith("/") else remote.url_suffix(out)
    name = shown(out)
    if single and suffix in OUTPUT_SUFFIXES:
        if format != "same" and suffix != "." + format:
            raise ValueError(f"format={format} does not match the output {name}")
        return [(items[0], out)]
    if suffix and single:
        raise ValueError(f"unknown output type {suffix!r}: use .zarr, .tif, .png or .jpg (or a folder URL ending in /)")
    if suffix:
        raise ValueError(f"{len(items)} inputs need an output folder, not {name} (end the URL in /)")
    return [(item, remote.join(out, f"{_stem(item)}{_folder_suffix(format, item)}")) for item in items]


def _holds_store(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def _first(item):
    return item[0] if isinstance(item, tuple) else item


def _stem(item) -> str:
    src = _first(item)
    src = PurePosixPath(urlsplit(src).path.rstrip("/")) if remote.is_url(src) else Path(src)
    return src.stem if src.suffix else src.name


def _folder_suffix(format: str, item) -> str:
    if format != "same":
        return "." + format
    src = _first(item)
    if remote.is_url(src):
        return _SUFFIX_OUT.get(remote.url_suffix(src), ".zarr")
    return ".zarr" if src.is_dir() else _SUFFIX_OUT.get(src.suffix.lower(), ".zarr")


def input_name(src) -> str:
    """An input (or a defocus pair) as messages name it (a URL without its credentials)."""
    return " + ".join(map(shown, src)) if isinstance(src, tuple) else shown(src)


def _identity(p) -> tuple:
    from ..io.lock import file_identity

    return ("url", shown(p).rstrip("/")) if remote.is_url(p) else file_identity(p)


def _check_not_inputs(pairs: list, storage_options: dict | None = None) -> list:
    """Drop earlier results that a folder run lists as inputs; refuse outputs that are inputs.

    Paths are compared by what they name on disk (links, ``..``, another name of the same file);
    URLs by their redacted text.
    """
    from collections import Counter

    def paths(item):
        return item if isinstance(item, tuple) else (item,)

    outs = [_identity(d) for _, d in pairs]
    counts = Counter(outs)

    # 'restore fold -o fold --format zarr' run again lists fold/a.zarr, the result of fold/a.png:
    # a napari-mirnet result that another input writes is that input's output, not an input
    def earlier_result(i: int) -> bool:
        mine = {_identity(p) for p in paths(pairs[i][0])}
        written = any(counts[k] > (k == outs[i]) for k in mine)
        return written and stored_record(paths(pairs[i][0])[0], storage_options) is not None

    keep = [i for i in range(len(pairs)) if not earlier_result(i)]
    pairs, outs = [pairs[i] for i in keep], [outs[i] for i in keep]
    inputs = {_identity(p): p for s, _ in pairs for p in paths(s)}
    for (src, dst), same in zip(pairs, outs):
        if same in {_identity(p) for p in paths(src)}:
            raise ValueError(f"the output {shown(dst)} is its input {input_name(src)}; choose another output")
        if same in inputs:
            where = shown(inputs[same]) if remote.is_url(inputs[same]) else os.path.realpath(inputs[same])
            raise ValueError(
                f"the output {shown(dst)} would replace the input {where}; choose another output or format="
            )
    names = [d for _, d in pairs]
    if len(set(names)) != len(names):
        raise ValueError("two inputs would write the same output name; give them distinct names")
    return pairs
