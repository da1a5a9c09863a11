"""Base class and small layout helpers shared by the dock's sections."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QWidget

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Section", "hint", "button_row", "checkbox"]


def hint(text: str) -> QLabel:
    """A wrapped, slightly dimmed explanatory line."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(mid); font-size: small;")
    label.setProperty("latentseg_hint", True)
    return label


def checkbox(text: str, checked: bool, tip: str) -> QCheckBox:
    """A check box with its initial state and tooltip."""
    box = QCheckBox(text)
    box.setChecked(checked)
    box.setToolTip(tip)
    return box


def button_row(*buttons: QPushButton) -> QHBoxLayout:
    """Buttons side by side, sharing the width."""
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for b in buttons:
        row.addWidget(b)
    return row


class Section(QWidget):
    """A section of the dock; its job-starting buttons are disabled while a job runs.

    Parameters
    ----------
    session : Session
        The state shared by the sections (scan, models, device, cache, task bar).
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.viewer = session.viewer
        self._job_buttons: list[QPushButton] = []

    def job_button(self, text: str, tooltip: str, slot) -> QPushButton:
        """A button that starts a job (disabled while another job runs)."""
        btn = QPushButton(text)
        btn.setToolTip(tooltip)
        btn.clicked.connect(lambda *_: slot())
        self._job_buttons.append(btn)
        return btn

    def set_busy(self, busy: bool) -> None:
        """Enable or disable the job buttons."""
        for btn in self._job_buttons:
            btn.setEnabled(not busy)
