"""What every sub-command shares: usage errors, the help layout, messages in the CLI's words, the licence notice."""

from __future__ import annotations

import argparse
import re
import sys

__all__ = ["UsageError", "add_storage_option", "in_cli_words", "parse_storage_options"]


class UsageError(Exception):
    pass


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: ...)' where there is a default worth showing and the help does not name one."""

    def _get_help_string(self, action):
        text = action.help or ""
        # a switch (nargs 0: --x, --no-x) is off unless given, whatever the value it sets
        if action.default in (None, False) or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


# Python argument names in library messages -> this command's flags (one place for every sub-command)
_FLAGS = {
    "weights": "--weights",
    "axes": "--axes",
    "level": "--level",
    "tile": "--tile",
    "halo": "--halo",
    "blend": "--blend",
    "scale": "--scale",
    "device": "--device",
    "precision": "--precision",
    "task": "--task",
    "normalisation": "--normalisation",
    "nodata": "--nodata",
    "tta": "--tta",
    "rgb": "--rgb",
    "overwrite": "--overwrite",
    "format": "--format",
    "out": "-o",
    "client": "--scheduler",
    "storage_options": "--storage-option",
}
_FLAG_RE = re.compile(r"(?<![-\w./])(" + "|".join(_FLAGS) + r")=(True\b)?(?=(.?))")


def in_cli_words(msg: str) -> str:
    """``axes='YX'`` -> ``--axes 'YX'``, ``pass axes=,`` -> ``pass --axes,``, ``overwrite=True`` -> ``--overwrite``."""

    def flag(m: re.Match) -> str:
        name, true, nxt = m.groups()
        if true or not nxt or nxt in " ,;:)]":
            return _FLAGS[name]
        return _FLAGS[name] + " "

    msg = _FLAG_RE.sub(flag, msg)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", msg)  # "--overwrite (overwrite=True)" said it twice


def _err(msg: str) -> None:
    print(f"napari-mirnet: error: {hide_secrets(in_cli_words(msg))}", file=sys.stderr)


# ------------------------------------------------------------------------ --storage-option
#: values given with --storage-option that no message may show (set by parse_storage_options)
_SECRETS: set[str] = set()
# option values that name where, not who: shown in messages as given
_PLAIN_KEYS = re.compile(r"(endpoint|region|url|anon|timeout|retries|concurrency|block_size)", re.IGNORECASE)


def add_storage_option(parser, what: str = "input and output") -> None:
    """The repeatable ``--storage-option KEY=VALUE`` flag (fsspec options of every URL of the run)."""
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help=f"an fsspec option for the {what} URLs (s3://, gs://, az://, https://), repeatable: dotted "
        "keys nest (client_kwargs.endpoint_url=http://host:9000), values are JSON where they parse "
        "(anon=true, 3, {...}), else text (key=..., secret=...). Credentials may also come from the "
        "usual environment and profiles; they are never printed",
    )


def parse_storage_options(items: list[str] | None) -> dict | None:
    """``["a.b=1", "anon=true"]`` -> ``{"a": {"b": 1}, "anon": True}`` (None for no items).

    Raises
    ------
    UsageError
        An item without ``=``, an empty key or key part, or a key both a value and a group.
    """
    import json

    if not items:
        return None
    options: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise UsageError(
                f"--storage-option {item!r} is not KEY=VALUE; e.g. --storage-option anon=true or "
                "--storage-option client_kwargs.endpoint_url=http://127.0.0.1:9000"
            )
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = options
        for p in parts[:-1]:
            node = node.setdefault(p.strip(), {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {key}: {p} is given both a value and nested keys")
        if isinstance(node.get(parts[-1].strip()), dict):
            raise UsageError(f"--storage-option {key}: {parts[-1]} is given both nested keys and a value")
        node[parts[-1].strip()] = value
        if not _PLAIN_KEYS.search(parts[-1]):
            _SECRETS.update(s for s in (*_strings(value), text.strip()) if len(s) >= 4)
    return options


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def hide_secrets(text: str) -> str:
    """``text`` with every secret value given with --storage-option replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _plain_licence_notice() -> None:
    """Show the official weights' licence notice as one plain ``napari-mirnet: note:`` line on stderr.

    Python's default rendering adds the category and a source line, which reads like a bug in a
    command-line tool. Other warnings keep the default rendering; the Python API keeps the warning.
    """
    import warnings

    shown = warnings.showwarning
    if getattr(shown, "_napari_mirnet_plain", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        # the weights module is imported by then if the notice is being shown; no import here
        weights = sys.modules.get("napari_mirnet.weights")
        if weights is not None and issubclass(category, weights.OfficialWeightsNotice):
            print(f"napari-mirnet: note: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show._napari_mirnet_plain = True
    warnings.showwarning = show
