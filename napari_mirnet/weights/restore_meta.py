"""How a fine-tuned model's file says it restores, checked as a stranger's values: its
``pixel_shuffle`` (the stride, or strides averaged) and ``detail_filter`` (the noise the filter after
restoring assumes) metadata."""

from __future__ import annotations

from .errors import WeightsError

__all__ = ["detail_filter", "pixel_shuffle"]


def pixel_shuffle(meta: dict, source: str) -> int | tuple[int, ...]:
    """The stride a fine-tuned model restores at (``meta["pixel_shuffle"]``; 1 when absent), or the
    strides whose restorations it averages (a list of 2 to 4 different strides from 2 to 8)."""
    s = (meta or {}).get("pixel_shuffle", 1)

    def stride(v, low: int) -> bool:
        return not isinstance(v, bool) and isinstance(v, int) and low <= v <= 8

    if isinstance(s, (list, tuple)) and 2 <= len(s) <= 4 and len(set(s)) == len(s) and all(stride(v, 2) for v in s):
        return tuple(s)
    if not stride(s, 1):
        raise WeightsError(
            f"{source}: its metadata says pixel_shuffle={s!r}, neither a stride from 1 to 8 nor a list of 2 to 4 "
            "different strides from 2 to 8; the file is damaged or not one of ours: fine-tune again"
        )
    return s


def detail_filter(meta: dict, source: str):
    """The noise a fine-tuned model's detail filter assumes (``meta["detail_filter"]``; None when absent)."""
    import math

    from ..detail_filter import DetailFilter

    d = (meta or {}).get("detail_filter")
    if d is None:
        return None

    def lags(v) -> bool:
        return isinstance(v, (list, tuple)) and len(v) <= 8 and all(_number(r) and -1 < r < 1 for r in v)

    ok = (
        isinstance(d, dict)
        and lags(d.get("vertical"))
        and lags(d.get("horizontal"))
        and all(_number(d.get(k)) and math.isfinite(d[k]) for k in ("gain", "floor"))
        and _window(d.get("window", 0))
    )
    if not ok:
        raise WeightsError(
            f"{source}: its metadata's detail_filter is not a noise autocorrelation (up to 8 lags in (-1, 1) "
            "along 'vertical' and 'horizontal') with a finite 'gain' and 'floor' (and a 'window' of 0 or an even "
            "8 to 512 px); the file is damaged or not one of ours: fine-tune again"
        )
    along = (tuple(d["vertical"]), tuple(d["horizontal"]))
    return DetailFilter(*along, float(d["gain"]), float(d["floor"]), int(d.get("window", 0)))


def _window(v) -> bool:
    """A detail filter's window: 0 (the whole image) or an even side of 8 to 512 px."""
    return isinstance(v, int) and not isinstance(v, bool) and (v == 0 or (8 <= v <= 512 and v % 2 == 0))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
