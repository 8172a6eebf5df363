"""Loads the independent MIRNet-v2 implementation shipped in ``spandrel-extra-arches`` (test-only).

Importing ``spandrel`` itself pulls in torchvision, whose PyPI build does not load beside a CPU-only
torch, so the two files that the architecture needs are loaded directly from the installed packages.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def reference_mirnet_class():
    """The reference ``MIRNet_v2`` class, or raise ImportError if the package is not installed."""
    spandrel_spec = importlib.util.find_spec("spandrel")
    extra_spec = importlib.util.find_spec("spandrel_extra_arches")
    if spandrel_spec is None or extra_spec is None:
        raise ImportError("install the test extra: pip install -e .[test]")
    spandrel_dir = Path(spandrel_spec.origin).parent
    extra_dir = Path(extra_spec.origin).parent
    if "spandrel.util" not in sys.modules:
        pkg = types.ModuleType("spandrel")
        pkg.__path__ = [str(spandrel_dir)]
        sys.modules.setdefault("spandrel", pkg)
        _load("spandrel.util", spandrel_dir / "util" / "__init__.py")
    arch = _load(
        "_reference_mirnet_v2_arch",
        extra_dir / "architectures" / "MIRNet2" / "__arch" / "mirnet_v2_arch.py",
    )
    return arch.MIRNet_v2
