"""The errors the readers and writers raise; each message says what to do."""

from __future__ import annotations

__all__ = ["FingerprintMismatch", "OutputError", "OutputExistsError", "StoreLocked"]


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
