"""The weights package's exception and warning: what went wrong with a checkpoint, and the licence notice."""

from __future__ import annotations

__all__ = ["OfficialWeightsNotice", "WeightsError"]


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or loaded; the message says what to do."""


class OfficialWeightsNotice(UserWarning):
    """The licence notice shown once per process when official (non-commercial) weights are used."""
