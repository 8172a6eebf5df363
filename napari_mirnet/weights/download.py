"""Getting a local file for any weights: official names and URLs downloaded into the cache once, and checked.

URLs: http(s):// and object stores (s3://, gs://, az://: fsspec, credentials and endpoint from the
environment); on a cluster with no shared disk each worker downloads them once into its own cache.

A download only reaches the cache after it passed every check of :mod:`.checkpoint`, with its
SHA-256 recorded beside it (:mod:`.files`); every later use checks the cached file against that
record. Nothing that this module did not write itself is ever deleted. The messages say what to do,
the action first (offline: where to copy the file by hand).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from . import checkpoint as ck
from .catalogue import OFFICIAL_ASSETS, OFFICIAL_LICENCE, PUBLISHED_SHA256, cached_path, official_url, shipped_models
from .checkpoint import local_checkpoint, read_bytes
from .errors import OfficialWeightsNotice, WeightsError
from .files import CHECKPOINT_SUFFIXES, file_sha256, read_record, record_path, workers_missing, write_record

__all__ = ["OBJECT_SCHEMES", "check_workers_see", "fetch", "load_checked", "locate", "resolve"]

#: Object stores whose weights are downloaded through fsspec (s3fs, gcsfs, adlfs).
OBJECT_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")
#: The filesystem package fsspec needs per object-store scheme, named when it is missing.
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
#: What to do when a worker cannot read a weights file (said where a file is missing).
CLUSTER_ADVICE = (
    "on a cluster whose workers do not share this disk, put the weights at a URL that every worker can read "
    "(weights='s3://bucket/model.pth' or 'https://...'; each worker downloads it once into its own cache)"
)

_licence_shown = False
_licence_lock = threading.Lock()


def _show_licence_once() -> None:
    global _licence_shown
    with _licence_lock:
        if not _licence_shown:
            _licence_shown = True
            warnings.warn(OFFICIAL_LICENCE, OfficialWeightsNotice, stacklevel=3)


def load_checked(path: Path, source: str, official: str | None = None, advice: str = "", recorded: bool = False):
    """(state dict, meta, meta-device model, SHA-256) of a checkpoint that passed every check.

    ``recorded``: the file is a download in the cache, checked against the SHA-256 recorded then
    (and an official one against the published SHA-256, where one is known) before it is parsed.
    ``advice`` is appended to a failure's message.
    """
    try:
        data = read_bytes(path, source)
        digest = hashlib.sha256(data).hexdigest()
        if recorded:
            _check_sha256(path, digest, official)
        sd, meta, model = ck.checked(data, path, source, official)
    except WeightsError as err:
        if advice:
            raise WeightsError(f"{err}. {advice}") from err.__cause__
        raise
    return sd, meta, model, digest


def _check_sha256(path: Path, digest: str, official: str | None) -> None:
    """Refuse a cached file whose SHA-256 is not the published one, or not the one recorded at download."""
    published = PUBLISHED_SHA256.get(official) if official else None
    if published is not None and digest != published:
        raise WeightsError(
            f"{path} is not the official {official} checkpoint: its SHA-256 is {digest}, the published one is "
            f"{published}"
        )
    try:
        recorded = read_record(path)
    except ValueError as err:
        raise WeightsError(
            f"{err}; so {path} cannot be checked against its download. Delete both files and download it again"
        ) from None
    if recorded is not None and digest != recorded:
        again = f"`napari-mirnet weights fetch {official}`" if official else "the same command"
        raise WeightsError(
            f"{path} has changed since it was downloaded: its SHA-256 is {digest}, but {record_path(path).name} "
            f"recorded {recorded} at download time (the file was truncated, damaged or replaced). Delete "
            f"{path} and {record_path(path)} and run {again} to download it again; or, to use the file as it "
            f"is now, pass its path as the weights"
        )


def replace_advice(name: str, path: Path) -> str:
    """What to do when the cached file of the official asset ``name`` is not that checkpoint."""
    return (
        f"It is not the official {name} checkpoint: delete {path} and run `napari-mirnet weights fetch "
        f"{name}`, or copy the real file ({official_url(name)}) to {path}"
    )


# ------------------------------------------------------------------------------ downloads
def _umask() -> int:
    # /proc reads it without changing it; os.umask can only read it by setting it (racing other threads)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def fetch(name_or_url: str, *, progress: bool = True, verify: bool = True) -> Path:
    """A local file for an official asset name or a URL, downloading it into the cache once.

    A file already in the cache is used without writing anything (a shared, read-only cache works);
    a download's file is checked against the SHA-256 recorded when it came (``<file>.sha256``), a
    file copied in by hand (no record) by its structure. A download goes to a temporary file that is
    checked like :func:`load_model` does and only then renamed into place with its record,
    readable by others as the umask allows.

    Parameters
    ----------
    name_or_url : str
        An official asset name, an http(s) URL, an object-store URL (``s3://``, ``gs://``, ``az://``;
        credentials from the environment), or a ``file://`` URL (used in place, not copied).
    progress : bool
        Show a progress bar on stderr while downloading.
    verify : bool
        Also check a file that is already there (its recorded SHA-256, an official name's
        structure, finite values).

    Returns
    -------
    Path
        The local file.

    Raises
    ------
    WeightsError
        Saying what went wrong and what to do.
    """
    text = str(name_or_url)
    if text in OFFICIAL_ASSETS:
        official, url = text, official_url(text)
        _show_licence_once()
    elif "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme == "file":
            path = local_checkpoint(text)
            if verify:
                load_checked(path, str(path))
            return path
        if scheme not in ("http", "https", *OBJECT_SCHEMES):
            raise WeightsError(
                f"cannot download {_shown(text)}: only http://, https:// and file:// addresses and the object stores "
                f"{', '.join(s + '://' for s in OBJECT_SCHEMES)} are supported; download it yourself and pass the "
                "local file"
            )
        official, url = None, text
    else:
        raise WeightsError(f"{text!r} is neither an official asset nor a URL")
    target = cached_path(text)
    advice = replace_advice(official, target) if official else f"Delete {target} to download it again"
    if target.exists() or target.is_symlink():
        # what is there was put there by a download (with a SHA-256 record) or by hand: use it, never
        # write or delete it
        if verify:
            load_checked(target, str(target), official, advice, recorded=True)
        else:
            local_checkpoint(target)
        return target
    return _download(url, target, official=official, progress=progress)


def _http_error_text(err, url: str, official: str | None, target: Path) -> str:
    from http import HTTPStatus

    code = err.response.status_code if err.response is not None else 0
    try:  # the standard phrase, not whatever reason text the server chose to send
        status = f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        status = f"HTTP {code}"
    if official and "NAPARI_MIRNET_BASE_URL" in os.environ:
        what = f"check NAPARI_MIRNET_BASE_URL ({os.environ['NAPARI_MIRNET_BASE_URL']})"
    elif official:
        what = (
            f"the release may have moved: download {official}.pth from "
            f"https://github.com/swz30/MIRNetv2/releases by hand and copy it to {target}"
        )
    else:
        what = "check the address"
    return f"cannot download {url}: the server answered {status}; {what}"


def _unreachable_text(err, url: str, target: Path) -> str:
    import requests

    host = urlsplit(url).hostname or url
    if isinstance(err, requests.exceptions.Timeout):
        why = f"{host} did not answer in time"
    elif isinstance(err, requests.exceptions.ConnectionError):
        why = f"no connection to {host}"
    else:
        why = f"{type(err).__name__} from {host}"
    return f"copy {url} to {target} by hand, or use a local file as the weights (could not download: {why})"


def _shown(url: str) -> str:
    """``url`` as a message may show it: no ``user:password@``, no query (pre-signed URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{'' if parts.port is None else f':{parts.port}'}{parts.path}"


def _stream_object(url: str, fh, target: Path) -> None:
    """Write the object at ``url`` (s3://, gs://, az://) to ``fh`` through fsspec, refusing an oversized one."""
    scheme = urlsplit(url).scheme.lower()
    shown, most = _shown(url), ck.MAX_CHECKPOINT_BYTES
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        size = fs.size(path)
        if size is not None and size > most:
            raise WeightsError(
                f"{shown} is {ck.size_text(size)}, more than any MIRNet-v2 checkpoint "
                f"(at most {ck.size_text(most)}): not downloaded; check the address"
            )
        with fs.open(path, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                fh.write(block)
    except ImportError as err:
        package = _PACKAGES.get(scheme, "fsspec")
        raise WeightsError(f"downloading {shown} needs the {package} package: pip install {package}") from err
    except FileNotFoundError as err:
        raise WeightsError(f"cannot download {shown}: there is no such object; check the address") from err
    except PermissionError as err:
        raise WeightsError(
            f"cannot download {shown}: access denied. Give every process that loads the weights (each worker of "
            "a cluster) credentials in its environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "an instance role), or make the object readable"
        ) from err
    except OSError as err:
        # the library's text may quote request details: the type names the failure, __cause__ keeps the rest
        raise WeightsError(
            f"cannot download {shown} ({type(err).__name__}); check the address and the network, or copy the "
            f"file to {target} by hand"
        ) from err


def _stream(url: str, fh, target: Path, *, official: str | None, progress: bool) -> None:
    """Write the body at ``url`` to ``fh``, refusing an oversized or cut-short one; a tqdm bar on stderr."""
    if urlsplit(url).scheme.lower() in OBJECT_SCHEMES:
        _stream_object(url, fh, target)
        return
    import requests
    from tqdm.auto import tqdm

    offline = f"Without a network, download it elsewhere and copy it to {target}, or use a local file as the weights."
    most = ck.MAX_CHECKPOINT_BYTES
    try:
        with requests.get(url, stream=True, timeout=(15, 60)) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("Content-Length") or 0) or None
            if total and total > most:
                raise WeightsError(
                    f"{url} is {ck.size_text(total)}, more than any MIRNet-v2 checkpoint "
                    f"(at most {ck.size_text(most)}): not downloaded; check the address"
                )
            done = 0
            bar_options = dict(unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, file=sys.stderr)
            with tqdm(total=total, disable=not progress, **bar_options) as bar:
                for block in resp.iter_content(1 << 20):
                    done += len(block)
                    if done > most:
                        raise WeightsError(
                            f"{url} sent more than {ck.size_text(most)}, more than any "
                            "MIRNet-v2 checkpoint: stopped; check the address"
                        )
                    fh.write(block)
                    bar.update(len(block))
            if total and done != total and "Content-Encoding" not in resp.headers:
                raise WeightsError(
                    f"the download of {url} stopped after {done:,} of {total:,} bytes. Try again. {offline}"
                )
    except requests.exceptions.HTTPError as err:
        raise WeightsError(_http_error_text(err, url, official, target)) from err
    except requests.exceptions.RequestException as err:
        # one short line, the action first: the library's ~600-character text stays in __cause__
        raise WeightsError(_unreachable_text(err, url, target)) from err


def _download(url: str, target: Path, *, official: str | None, progress: bool) -> Path:
    """Download ``url`` to a temporary file beside ``target``, check it, then record and rename it into place."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as err:
        raise WeightsError(
            f"cannot download {url} into the weights cache {folder}: {err.strerror or err}. Set "
            "NAPARI_MIRNET_CACHE to a folder you can write, or (for a shared cache) ask its owner to "
            f"run `napari-mirnet weights fetch {official or url}`"
        ) from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            _stream(url, fh, target, official=official, progress=progress)
        try:
            digest = load_checked(tmp, url, official)[3]
            published = PUBLISHED_SHA256.get(official) if official else None
            if published is not None and digest != published:
                raise WeightsError(f"its SHA-256 is {digest}, not the published {published}; check the address")
        except WeightsError as err:
            raise WeightsError(f"the download of {url} was not kept: {err}") from err.__cause__
        # mkstemp makes the file 0600; a shared cache needs the mode that a plain file would get
        mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        # the record first: a download in place always has one (trust on first download)
        write_record(target, digest, mode)
        os.replace(tmp, target)
    except OSError as err:
        raise WeightsError(
            f"cannot write the download of {url} to {folder}: {err.strerror or err}. Free some space, or "
            "set NAPARI_MIRNET_CACHE to another folder"
        ) from err
    finally:
        # only the temporary file that this call wrote is ever removed
        tmp.unlink(missing_ok=True)
    return target


def resolve(weights: str | os.PathLike) -> tuple[Path, str | None, bool]:
    """(local file, the official asset it must be or None, whether it is a download in the cache)."""
    text = str(weights)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text], None, False
    if text in OFFICIAL_ASSETS:
        return fetch(text, verify=False), text, True
    if "://" in text:
        return fetch(text, verify=False), None, urlsplit(text).scheme.lower() != "file"
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink():
        return path, None, False
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in text or "/" in text:
        raise WeightsError(f"weights file {path} does not exist on {socket.gethostname()}; {CLUSTER_ADVICE}")
    names = ", ".join([*shipped, *OFFICIAL_ASSETS])
    raise WeightsError(f"weights {text!r} is not a file, a URL, or a known model name ({names})")


def locate(weights: str | os.PathLike) -> Path:
    """The local file for a shipped name, an official name, a URL or a path (downloading it if needed).

    Parameters
    ----------
    weights : str or os.PathLike
        As for :func:`~napari_mirnet.weights.load_model`.

    Returns
    -------
    Path
        The file (not checked: loading it does that).
    """
    return resolve(weights)[0]


def check_workers_see(weights: str | os.PathLike, client) -> None:
    """Refuse, before a cluster run starts, a local weights file that some worker of ``client`` lacks.

    Shipped names resolve inside each worker's package and each worker downloads URLs itself; a
    local path must be the same file on every worker (a shared disk), else the run would fail on
    the workers after its output was created. Raises WeightsError naming those workers.
    """
    text = str(weights)
    if text in shipped_models() or text in OFFICIAL_ASSETS or "://" in text:
        return
    # the path as the run's tasks carry it: a relative one is relative to each worker's own folder
    missing = workers_missing(client, text, file_sha256(Path(text).expanduser()))
    if missing:
        raise WeightsError(f"weights file {text} is not on worker(s) {', '.join(missing)}; {CLUSTER_ADVICE}")
