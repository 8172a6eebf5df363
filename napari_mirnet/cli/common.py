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
    "qc": "--qc",
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
    """``["a.b=1", "anon=true"]`` -> ``{"a": {"b": 1}, "anon": True}`` (None for no items), by
    :func:`napari_mirnet.io.secrets.parse_items`; its secret values are hidden from every message.

    Raises
    ------
    UsageError
        An item without ``=``, an empty key or key part, or a key both a value and a group.
    """
    from ..io.secrets import parse_items, secrets

    if not items:
        return None
    try:
        options = parse_items(
            items, "--storage-option", [f"number {i}" if len(items) > 1 else "" for i in range(1, len(items) + 1)]
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    _SECRETS.update(secrets((), options))
    return options


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
