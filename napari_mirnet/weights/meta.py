"""Reading a checkpoint's ``meta`` entry without torch, so that listing the models never imports it.

A checkpoint written by ``torch.save`` is a zip archive whose ``data.pkl`` holds the pickled
object; its tensors live in other members, referenced through ``persistent_load``. Unpickling
``data.pkl`` with every torch name replaced by a placeholder and every other name refused (only
plain containers are allowed, as torch's own ``weights_only`` reader does) gives the metadata
without reading a tensor, importing torch or running any pickled code. Whatever this reader cannot
vouch for (the legacy format, an unexpected name, no state dict), it leaves to the full reader.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile

__all__ = ["peek_meta"]

#: The keys a state dict may sit under (a moving average first: what its trainer evaluated).
STATE_KEYS = ("params_ema", "params", "state_dict", "model")
# the non-torch names torch's weights_only reader allows (bytes under protocol 2 need _codecs.encode)
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("builtins", "set"): set,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): codecs.encode,
}
# the torch names a state dict of dense tensors is written with; any other leaves the file to torch
_TENSOR_NAMES = {("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")


class _Placeholder:
    """Stands for whatever torch object the pickle names (a storage, a dtype, a size)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _Tensor(_Placeholder):
    """Stands for a tensor or a parameter (what torch's ``_rebuild_*`` functions return)."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "__builtin__":  # protocol 2 writes Python 2's name
            module = "builtins"
        if (module, name) in _TENSOR_NAMES:
            return _Tensor
        if (module in _STORAGE_MODULES and name.endswith("Storage")) or (module, name) == ("torch", "Size"):
            return _Placeholder
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data") from None

    def persistent_load(self, pid):
        return _Placeholder()


def _has_state_dict(obj) -> bool:
    # the full reader's rule: tensors under one of STATE_KEYS, or at the top level
    for key in STATE_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return all(isinstance(v, _Tensor) for v in obj.values())


def _plain(value) -> bool:
    """Whether ``value`` holds no placeholder (a tensor in the metadata is left to the full reader)."""
    if isinstance(value, _Placeholder):
        return False
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    return True


def peek_meta(data: bytes) -> dict | None:
    """The ``meta`` entry of a checkpoint's bytes, or None where only the full (torch) reader can tell.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    dict or None
        A copy of the ``meta`` dict (empty when there is none); None for a file that is not a
        ``torch.save`` zip archive holding a state dict, or that names anything but plain data.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pickles = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                return None
            with zf.open(pickles[0]) as fh:
                obj = _Unpickler(fh).load()
    except Exception:  # noqa: BLE001 - any failure: the full reader says what is wrong
        return None
    if not isinstance(obj, dict) or not _has_state_dict(obj):
        return None
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        return {}
    return dict(meta) if _plain(meta) else None
