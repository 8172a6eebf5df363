"""The ``napari-mirnet`` command: ``restore``, ``weights``, ``sample``, ``finetune`` and ``train``, a module each.

Each sub-command's module holds its parser function and its command; flags that set a library
option are made from the option's dataclass field (:mod:`.fields`), so a default is written once.

Exit codes: 0 success (complete outputs of the same settings are skipped), 1 a check, restoration or
download failed (restore checks every input and output before any tile runs and then runs nothing;
a failure while running is reported and the other inputs still run), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from .common import UsageError, _err, _plain_licence_notice, in_cli_words
from .finetune import _add_finetune_command
from .restore import _add_restore_command
from .sample import _add_sample_command
from .train import _add_train_command
from .weights import _add_weights_command

__all__ = ["main", "build_parser", "in_cli_words", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``napari-mirnet`` and its sub-commands (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="napari-mirnet",
        description="MIRNet-v2 image restoration for large images and stacks (tiled, resumable).",
    )
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_restore_command(sub)
    _add_weights_command(sub)
    _add_sample_command(sub)
    _add_finetune_command(sub)
    _add_train_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``napari-mirnet`` with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _plain_licence_notice()
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        _err(str(err))
        return 2
    except KeyboardInterrupt:
        print("\nnapari-mirnet: interrupted; re-run the same command to resume zarr and tif outputs", file=sys.stderr)
        return 130
