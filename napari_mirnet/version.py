"""The installed version of napari-mirnet (or the source tree's, when it is not installed)."""

from importlib.metadata import PackageNotFoundError, version


def _source_version() -> str:
    """For a source tree that is not installed (e.g. on a training machine): read pyproject.toml."""
    from pathlib import Path

    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        return "0.0.0+unknown"
    for line in text.splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"') + "+source"
    return "0.0.0+unknown"


try:
    __version__ = version("napari-mirnet")
except PackageNotFoundError:
    __version__ = _source_version()
