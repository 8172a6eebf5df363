"""How an image's channels meet the model's: colour roles, the order restored, batch items and back."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclass_replace

import numpy as np

__all__ = ["ChannelAdapter", "channel_layout", "channel_order", "finish_channels", "prepare_channels"]

#: metadata.RGB_COLOURS (same layer: processing may not import metadata)
_RGB = ("FF0000", "00FF00", "0000FF")


def channel_layout(n: int, channels=(), axes: str | None = None, rgb: bool | None = None) -> str:
    """How an RGB model meets ``n`` channels: ``rgb``, ``rgba``, ``rgb+bands`` or ``bands``.

    ``channels`` are the image's :class:`~napari_mirnet.metadata.Channel` descriptions; ``axes``
    its axes as given (None: a picture's, channels last). ``rgb`` overrides the data: True, 3 or 4
    channels are RGB(A) whatever their order of axes; False, never colour; None, as below.

    - Without descriptions only a picture is colour: 3 or 4 channels stored last (``YXC``: a PNG,
      an RGB TIFF, an (H, W, 3) array as image libraries hand them out) are RGB or RGBA (the 4th,
      alpha, is carried unrestored). Channels stored ahead of Y and X (``CYX``: fluorescence
      channels, a band stack) are ``bands``: each restored as a gray image, since an RGB model
      would mix them as colours.
    - With descriptions (GeoTIFF, OME, ...) the bands coloured red, green and blue, in any
      position, are a colour image; bands marked alpha (GDAL colour interpretation, TIFF
      ExtraSamples, PNG mode) are carried unchanged wherever they are (see :func:`channel_order`);
      other bands (a near-infrared band, say) make it ``rgb+bands``: restored as gray images.
    """
    if rgb is False:
        return "bands"
    described = len(channels) == n and any(c.name or c.color or c.alpha for c in channels)
    if rgb and (not described or _colour_roles(channels)[0] is None):
        return {3: "rgb", 4: "rgba"}.get(n, "bands")  # the caller says so: the bands as they come
    if not described:
        picture = axes is None or axes.upper().endswith("C")
        return {3: "rgb", 4: "rgba"}.get(n, "bands") if picture else "bands"
    rgb, others, alpha = _colour_roles(channels)
    if rgb is None:
        return "bands"
    if not others:
        return {0: "rgb", 1: "rgba"}.get(len(alpha), "rgb+bands")
    return "rgb+bands"


def _colour_roles(channels) -> tuple[tuple[int, ...] | None, tuple[int, ...], tuple[int, ...]]:
    """(red, green, blue positions or None, other bands, alpha bands) of described channels."""
    alpha = tuple(i for i, c in enumerate(channels) if c.alpha)
    rest = [i for i, c in enumerate(channels) if not c.alpha]
    found = [[i for i in rest if (channels[i].color or "").upper() == col] for col in _RGB]
    if any(len(f) != 1 for f in found):
        return None, tuple(rest), alpha
    rgb = tuple(f[0] for f in found)
    return rgb, tuple(i for i in rest if i not in rgb), alpha


def channel_order(n: int, channels=()) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(restored, carried) channel positions where the image's order is not the model's; else None.

    Restored: red, green, blue first (a GeoTIFF may store blue, green, red), then the other bands;
    carried: the bands marked alpha, passed through unchanged wherever they are. None where
    :func:`prepare_channels` meets the channels as they are (no alpha, or RGBA in that order).
    """
    if len(channels) != n or not any(c.alpha or c.color for c in channels):
        return None
    rgb, others, alpha = _colour_roles(channels)
    restored = (rgb or ()) + others
    if rgb is not None and restored == (0, 1, 2) and alpha in ((), (3,)):
        return None
    if rgb is None and not alpha:
        return None
    return restored, alpha


def prepare_channels(
    chw: np.ndarray, model_in: int, dual_pixel: bool = False, layout: str | None = None
) -> tuple[np.ndarray, str]:
    """Turn a (C, H, W) float image into a (B, model_in, H, W) batch, and say how to undo it.

    - 3-channel model (``layout`` from :func:`channel_layout`; None: by the channel count): RGB
      passes as is; RGBA passes RGB and keeps alpha aside; RGB plus other bands passes RGB as one
      item and each other band as replicated gray; any other image runs each channel as
      replicated gray.
    - 1-channel model: every channel is its own batch item.
    - dual-pixel model: ``chw`` holds left then right views (2 or 6 channels).
    """
    c = chw.shape[0]
    if dual_pixel:
        if c == 2:  # gray left/right
            return np.repeat(chw, 3, axis=0)[None], "dual_gray"
        if c == 6:
            return chw[None], "dual_rgb"
        raise ValueError(f"a dual-pixel pair needs 1 or 3 channels per view, got {c // 2 if c % 2 == 0 else c}")
    if model_in == 1:
        return chw[:, None], "per_channel"
    if model_in != 3:
        if c == model_in:
            return chw[None], "as_is"
        raise ValueError(f"the model takes {model_in} channels; the image has {c}")
    layout = layout or channel_layout(c)
    if layout == "rgb" and c == 3:
        return chw[None], "rgb"
    if layout == "rgba" and c == 4:
        return chw[None, :3], "rgba"
    if layout == "rgb+bands" and c > 3:
        return np.concatenate([chw[None, :3], np.repeat(chw[3:, None], 3, axis=1)]), "rgb+gray"
    return np.repeat(chw[:, None], 3, axis=1), "replicated_gray"


def finish_channels(out: np.ndarray, how: str, source: np.ndarray | None = None) -> np.ndarray:
    """Undo :func:`prepare_channels`: (B, C_out, H, W) model output back to (C, H, W)."""
    if how in ("rgb", "as_is", "dual_rgb"):
        return out[0]
    if how == "dual_gray":
        return out[0].mean(axis=0, keepdims=True)
    if how == "per_channel":
        return out[:, 0]
    if how == "replicated_gray":
        return out.mean(axis=1)
    if how == "rgb+gray":
        return np.concatenate([out[0], out[1:].mean(axis=1)], axis=0)
    if how == "rgba":
        # alpha is carried, not restored (``source`` is already at the output size)
        return np.concatenate([out[0], source[3:4]], axis=0)
    raise ValueError(how)


@dataclass(frozen=True)
class ChannelAdapter:
    """How an image's channels meet the model's: the batch items per tile and the output channels."""

    channels_in: int  # image channels (both views together for dual-pixel)
    model_in: int
    model_out: int
    dual_pixel: bool
    how: str  # the rule of prepare_channels
    items: int  # batch items per tile
    channels_out: int
    layout: str | None = None  # channel_layout of the image (None: by the channel count)
    order: tuple[int, ...] | None = None  # channels restored, in the model's order (None: all, as they are)
    carried: tuple[int, ...] = ()  # channels passed through unchanged (alpha), see channel_order

    @classmethod
    def for_model(
        cls,
        channels_in: int,
        model_in: int,
        model_out: int,
        dual_pixel: bool,
        layout: str | None = None,
        order: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> ChannelAdapter:
        """Apply the rules of :func:`prepare_channels` / :func:`finish_channels` to a 4x4 probe.

        ``order``: (restored, carried) positions from :func:`channel_order`; None: as they are.
        """
        restored, carried = (None, ()) if order is None else (tuple(order[0]), tuple(order[1]))
        sub = layout
        if restored is not None and layout in ("rgba", "rgb+bands") and len(restored) == 3:
            sub = "rgb"  # alpha goes round the model: the colour bands alone are an RGB image
        adapter = cls(channels_in, model_in, model_out, dual_pixel, "", 0, 0, sub, restored, carried)
        probe = np.zeros((channels_in, 4, 4), np.float32)
        batch = adapter.prepare(probe)
        how = prepare_channels(probe if restored is None else probe[list(restored)], model_in, dual_pixel, sub)[1]
        adapter = dataclass_replace(adapter, how=how, items=batch.shape[0])
        out = adapter.finish(np.zeros((batch.shape[0], model_out, 4, 4), np.float32), probe)
        return dataclass_replace(adapter, channels_out=out.shape[0])

    def prepare(self, chw: np.ndarray) -> np.ndarray:
        if self.order is not None:
            chw = chw[list(self.order)]
        return prepare_channels(chw, self.model_in, self.dual_pixel, self.layout)[0]

    def finish(self, out: np.ndarray, source: np.ndarray) -> np.ndarray:
        if self.order is None:
            return finish_channels(out, self.how, source)
        restored = finish_channels(out, self.how, source[list(self.order)])
        full = np.empty((len(self.order) + len(self.carried),) + restored.shape[1:], restored.dtype)
        full[list(self.order)] = restored
        full[list(self.carried)] = source[list(self.carried)]  # ``source`` is at the output size
        return full
