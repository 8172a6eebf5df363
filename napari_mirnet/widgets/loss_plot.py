"""The fine-tune widget's plot of the training and validation losses (a small Qt widget)."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """A small log-scale plot of the training loss (gray, smoothed) and the validation loss (blue)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.best: tuple[int, float] | None = None
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.train, self.val, self.best = [], [], None
        self.update()

    def add_train(self, step: int, loss: float) -> None:
        if loss > 0 and math.isfinite(loss):
            self.train.append((step, loss))
            self.update()

    def add_val(self, step: int, loss: float, best: tuple[int, float] | None) -> None:
        if loss > 0 and math.isfinite(loss):
            self.val.append((step, loss))
        self.best = best
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 34))
        pts = self.train + self.val
        if len(pts) < 2:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss (log scale) appears here")
            return
        smooth = _smooth(self.train)
        ys = [math.log10(v) for _, v in smooth + self.val]
        x1 = max(s for s, _ in pts) or 1
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-3
        w, h, m = self.width(), self.height(), 6

        def at(s, v):
            return QPointF(m + (w - 2 * m) * s / x1, m + (h - 2 * m) * (hi - math.log10(v)) / (hi - lo))

        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor(170, 170, 170), 1))
        p.drawPolyline(QPolygonF([at(s, v) for s, v in smooth]))
        p.setPen(QPen(QColor(80, 160, 255), 2))
        if len(self.val) > 1:
            p.drawPolyline(QPolygonF([at(s, v) for s, v in self.val]))
        if self.best is not None:
            p.setBrush(QColor(255, 200, 60))
            p.drawEllipse(at(*self.best), 3.5, 3.5)
        p.setPen(QColor(200, 200, 200))
        p.drawText(m, h - m, "train (gray), validation (blue), best (dot)")


def _smooth(curve: list[tuple[int, float]], n: int = 200) -> list[tuple[int, float]]:
    if len(curve) <= 3:
        return curve
    k = max(1, len(curve) // n)
    out = []
    for i in range(0, len(curve), k):
        part = curve[max(0, i - 4 * k) : i + k]
        out.append((curve[min(i + k, len(curve)) - 1][0], float(np.mean([v for _, v in part]))))
    return out
