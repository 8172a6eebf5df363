"""Public names imported on first use (PEP 562): a package's ``__getattr__`` and ``__dir__`` made from a table.

The package, the engine, training, weights and the widgets use it so that importing them (the
CLI's parser, the napari reader, the fine-tuning child process) does not import torch or Qt.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(
    package: str, homes: Mapping[str, str], *, submodules: bool = False, cache: bool = True
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose names in ``homes`` live in other modules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    homes : mapping of str to str
        Public name -> the module that defines it, relative to ``package`` (``".api"``,
        ``"..devices"``).
    submodules : bool
        Also import a submodule on attribute access (``engine.steps``).
    cache : bool
        Keep a name on the package once imported (later look-ups are plain attributes); without it,
        every look-up reads the defining module (so that a test patching that module is seen).
    """

    def __getattr__(name: str):
        home = homes.get(name)
        if home is not None:
            value = getattr(importlib.import_module(home, package), name)
            if cache:
                setattr(sys.modules[package], name, value)
            return value
        if submodules and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
