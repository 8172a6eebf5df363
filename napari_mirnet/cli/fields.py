"""Command-line flags made from dataclass fields: each default, type and choice is written once, in the dataclass."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

__all__ = ["add_field", "field_argument", "field_help", "shown_value"]

_TYPES = {"int": int, "float": float, "str": str}


def field_argument(cls, name: str, *, help: str | None = None, **overrides) -> dict:
    """``add_argument`` keyword arguments for the field ``name`` of the dataclass ``cls``.

    Parameters
    ----------
    cls : dataclass type
        Holds the field; its default is the flag's default.
    name : str
        The field, also the parsed argument's name (``dest``).
    help : str, optional
        The help text (default: the field's ``metadata["help"]``); ``{default}`` in it becomes the
        field's default (``1e-4`` rather than argparse's ``0.0001``).
    **overrides
        Keyword arguments of ``add_argument`` that win over the ones read from the field
        (``type=`` for a stricter parser, ``choices=``, ``metavar=``...).

    Returns
    -------
    dict
        ``dest``, ``default``, ``help``, and ``choices`` (from ``metadata["choices"]``); a bool
        field is a switch (``--x`` when off by default, ``--no-x`` style ``store_false`` when on,
        ``--x/--no-x`` when None); an ``int``, ``float`` or ``str`` field (or one of them or
        None) converts its text.
    """
    f = _field(cls, name)
    default = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
    kwargs = {"dest": name, "default": None if default is MISSING else default}
    text = help if help is not None else f.metadata.get("help")
    kwargs["help"] = None if text is None else text.replace("{default}", shown_value(default))
    if "choices" in f.metadata:
        kwargs["choices"] = list(f.metadata["choices"])
    kind = _kind(f.type)
    if kind is bool:
        kwargs["action"] = (
            argparse.BooleanOptionalAction if default is None else "store_false" if default else "store_true"
        )
    elif kind is not None:
        kwargs["type"] = kind
    return {**kwargs, **overrides}


def add_field(parser, cls, name: str, *flags: str, **kwargs) -> argparse.Action:
    """Add the field ``name`` of ``cls`` to ``parser`` (or a group) as ``flags`` (default: ``--the-name``)."""
    return parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), **field_argument(cls, name, **kwargs))


def field_help(cls, name: str) -> str | None:
    """The help the field ``name`` of ``cls`` carries in its metadata (for a flag of another dataclass)."""
    return _field(cls, name).metadata.get("help")


def _field(cls, name: str):
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        raise AttributeError(f"{cls.__name__} has no field {name!r}")
    return f


def _kind(annotation) -> type | None:
    """``"int | None"`` -> int; None for anything else than one bool, int, float or str."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    names = [a.strip() for a in text.split("|") if a.strip() != "None"]
    if len(names) != 1:
        return None
    return bool if names[0] == "bool" else _TYPES.get(names[0])


def shown_value(value) -> str:
    """A default as a person writes it: ``1e-4``, ``96``, ``auto``."""
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(value)
