"""A small live loss curve painted with QPainter (no plotting library, cheap to repaint)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Training loss (thin line, and its running mean) and validation loss (dots) per step.

    The y axis is logarithmic, so the slow improvement after the first steps stays visible.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(140)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.vals: list[float] = []
        self.total: int | None = None
        self.caption = "No fit yet: the loss curve appears here while a model is fitted."
        self._text = QColor("#d1d5db")
        self._line = QColor("#4fa3ff")
        self._val = QColor("#ffb000")
        self._grid = QColor(128, 128, 128, 90)

    # ------------------------------------------------------------------ data
    def set_colors(self, text: str, line: str, val: str) -> None:
        """Colours of text and axes, training curve and validation points (e.g. theme hex)."""
        self._text, self._line, self._val = QColor(text), QColor(line), QColor(val)
        self.update()

    def clear(self, total: int | None = None, caption: str = "") -> None:
        """Forget the curve; ``total`` fixes the x range (the planned number of steps)."""
        self.steps, self.losses, self.val_steps, self.vals = [], [], [], []
        self.total = total
        self.caption = caption
        self.update()

    def add(self, step: int, loss: float | None, val: float | None = None) -> None:
        """Append one step's training loss and, on validation steps, the validation loss."""
        if loss is not None and math.isfinite(loss) and loss > 0:
            self.steps.append(int(step))
            self.losses.append(float(loss))
        if val is not None and math.isfinite(val) and val > 0:
            self.val_steps.append(int(step))
            self.vals.append(float(val))
        self.update()

    def set_history(self, history: Iterable[dict], caption: str = "") -> None:
        """Show a finished fit's history (``model.history``: dicts with step, loss, val)."""
        self.clear(None, caption)
        for h in history:
            if h.get("stage", "fit") not in ("fit", None):
                continue
            self.add(int(h.get("step", 0)), h.get("loss"), h.get("val"))

    # ------------------------------------------------------------------ painting
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        p.setFont(font)
        fm = p.fontMetrics()
        w, h = self.width(), self.height()
        left, right, top, bottom = fm.horizontalAdvance("0.0000") + 8, 8, fm.height() + 4, \
            fm.height() + 6
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        p.setPen(QPen(self._grid, 1))
        p.drawRect(plot)
        p.setPen(self._text)
        if not self.losses and not self.vals:
            p.drawText(plot.adjusted(6, 6, -6, -6),
                       int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap),
                       self.caption or "No fit yet.")
            p.end()
            return
        values = self.losses + self.vals
        lo, hi = math.log10(min(values)), math.log10(max(values))
        if hi - lo < 1e-3:
            lo, hi = lo - 0.05, hi + 0.05
        steps_all = self.steps + self.val_steps
        x_max = max(self.total or 0, max(steps_all), 1)

        def pt(step: float, value: float) -> QPointF:
            fx = step / x_max
            fy = (math.log10(value) - lo) / (hi - lo)
            return QPointF(plot.left() + fx * plot.width(), plot.bottom() - fy * plot.height())

        # axes text: value range on the left, step range at the bottom, legend on top
        p.drawText(QRectF(0, plot.top() - fm.height() / 2, left - 4, fm.height()),
                   int(Qt.AlignmentFlag.AlignRight), f"{10 ** hi:.3g}")
        p.drawText(QRectF(0, plot.bottom() - fm.height() / 2, left - 4, fm.height()),
                   int(Qt.AlignmentFlag.AlignRight), f"{10 ** lo:.3g}")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignLeft), "0")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignRight), f"step {x_max}")
        legend = "loss (log scale)"
        p.drawText(QRectF(plot.left(), 0, plot.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignLeft), legend)
        lx = plot.left() + fm.horizontalAdvance(legend) + 14
        p.setPen(QPen(self._line, 2))
        p.drawLine(QPointF(lx, fm.height() / 2 + 1), QPointF(lx + 14, fm.height() / 2 + 1))
        p.setPen(self._text)
        p.drawText(QPointF(lx + 18, fm.ascent()), "training")
        lx += 18 + fm.horizontalAdvance("training") + 12
        p.setBrush(self._val)
        p.setPen(Qt.PenStyle.NoPen)
        p.drawEllipse(QPointF(lx + 4, fm.height() / 2 + 1), 3.5, 3.5)
        p.setPen(self._text)
        p.drawText(QPointF(lx + 12, fm.ascent()), "validation")

        # curves
        if self.losses:
            stride = max(1, len(self.losses) // 600)
            raw = QPainterPath()
            smooth = QPainterPath()
            ema = self.losses[0]
            alpha = 2 / (1 + max(5, min(50, len(self.losses) // 20)))
            for i, (s, v) in enumerate(zip(self.steps, self.losses, strict=True)):
                ema = alpha * v + (1 - alpha) * ema
                if i % stride and i != len(self.losses) - 1:
                    continue
                if i == 0:
                    raw.moveTo(pt(s, v))
                    smooth.moveTo(pt(s, ema))
                else:
                    raw.lineTo(pt(s, v))
                    smooth.lineTo(pt(s, ema))
            faint = QColor(self._line)
            faint.setAlpha(90)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(faint, 1))
            p.drawPath(raw)
            p.setPen(QPen(self._line, 2))
            p.drawPath(smooth)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(self._val)
        for s, v in zip(self.val_steps, self.vals, strict=True):
            p.drawEllipse(pt(s, v), 3.5, 3.5)
        p.end()
