"""``napari-mirnet weights``: list, fetch and locate model weights."""

from __future__ import annotations

from pathlib import Path

from .common import _err


def _add_weights_command(sub) -> None:
    w = sub.add_parser("weights", help="list, download or locate model weights")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    wsub.add_parser("list", help="shipped and official models").set_defaults(func=_cmd_weights_list)
    f = wsub.add_parser("fetch", help="download official weights into the cache")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.set_defaults(func=_cmd_weights_fetch)
    p = wsub.add_parser("path", help="print the local file of a model (downloading nothing)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_weights_path)


def _cmd_weights_list(args) -> int:
    from ..weights import available_weights

    rows = [(i.name, i.kind, i.task, "yes" if i.available else "no", i.licence) for i in available_weights()]
    head = ("NAME", "KIND", "TASK", "LOCAL", "LICENCE")
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(v).ljust(n) for v, n in zip(row, widths)).rstrip())
    return 0


def _cmd_weights_fetch(args) -> int:
    from ..weights import WeightsError, fetch

    rc = 0
    for name in args.names:
        try:
            print(fetch(name))
        except WeightsError as err:
            _err(str(err))
            rc = 1
    return rc


def _cmd_weights_path(args) -> int:
    from ..weights import (
        OFFICIAL_ASSETS,
        WeightsError,
        cached_path,
        local_checkpoint,
        official_url,
        shipped_models,
    )

    name = args.name
    if name in shipped_models():
        print(shipped_models()[name])
        return 0
    if name in OFFICIAL_ASSETS or name.lower().startswith(("http://", "https://")):
        path = cached_path(name)
        if path.is_file():
            print(path)
            return 0
        source = official_url(name) if name in OFFICIAL_ASSETS else name
        _err(
            f"{name} is not downloaded yet; its place is {path}. Run: napari-mirnet weights fetch {name}"
            f"  (offline: download {source} elsewhere and copy it to that path)"
        )
        return 1
    if name.lower().startswith("file:") or Path(name).expanduser().exists() or Path(name).is_symlink():
        try:  # a folder, a dangling link or an empty file is named as such, not as an unknown model
            print(local_checkpoint(name).resolve())
            return 0
        except WeightsError as err:
            _err(str(err))
            return 1
    _err(f"unknown model {name!r}; see: napari-mirnet weights list")
    return 1
