"""The scan's anomaly score (Reconstruct's output layer) as a column of Segment's forest.

Measured on MR tumours (docs/interactive_benchmarks.md, "The scan's anomaly score as a forest
column"): mean Dice over ten corrections +0.05 to +0.06 on the brains; on CT, where the score
is the contrast density, -0.01, so CT scans do not use it.

The benchmark's default reads the score from the first round; a user who had not pressed
Reconstruct first went without it. So when a round on an MR scan finds no score, the dock
makes it in the background (:class:`ScoreColumn`; the denoiser takes 2-4 min on a CPU): the
first rounds come at once without it, the rounds after it use it, and each round says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QWidget

from ._base import checkbox
from ._layers import find_output, layer_array

if TYPE_CHECKING:
    import napari

    from ._session import Session

__all__ = ["ScoreColumn", "anomaly_column", "score_would_help"]

_GAIN = "mean Dice over ten corrections +0.05 on MR brain tumours"


class ScoreColumn(QWidget):
    """Segment's two boxes for the anomaly score: use it, and make it when it is missing.

    Parameters
    ----------
    session : Session
        The dock's shared state: its viewer, and :attr:`Session.score_wanted`, which the
        Reconstruct section answers by making the score on the score bar.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.use = checkbox(
            "Use the anomaly score (MR)", True,
            "Segment's classifier sees the scan's anomaly score (Reconstruct's layer) as one "
            "more feature. Measured on MR brain tumours: mean Dice over ten corrections "
            "+0.05 to +0.06 (six seeds; breast level); on CT (where the score is the "
            "contrast density) -0.01, so CT scans do not use it "
            "(docs/interactive_benchmarks.md).")
        self.make = checkbox(
            "make it if missing", True,
            "When a round finds no anomaly score for an MR scan, make it in the background "
            "(the denoiser: 2-4 min on a CPU, seconds on a GPU; it pauses while your rounds "
            "run). The rounds until then go without it. Stop on its bar, or untick this, to "
            "go without it.")
        self.use.toggled.connect(self.make.setEnabled)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.use)
        row.addWidget(self.make)
        row.addStretch(1)

    def column(self, scan) -> np.ndarray | None:
        """The score layer's data for ``scan`` when used (:func:`anomaly_column`), else None."""
        return anomaly_column(self.session.viewer, scan) if self.use.isChecked() else None

    def request(self, scan) -> bool:
        """Ask for ``scan``'s score in the background if a round would use it and there is
        none; returns whether it was asked for (the Reconstruct section may still decline:
        one is running, or the user stopped this scan's)."""
        if not (self.use.isChecked() and self.make.isChecked()
                and score_would_help(self.session.viewer, scan)):
            return False
        self.session.score_wanted.emit(scan)
        return True

    def note(self, scan, used: bool) -> str | None:
        """The round summary's line about the score, when a round went without one it would
        use: being made in the background, or how to make it."""
        if used or not self.use.isChecked() or not score_would_help(self.session.viewer, scan):
            return None
        if self.session.score_tasks.busy:
            return ("An anomaly score is being made in the background (its bar below): the "
                    f"rounds after it use it ({_GAIN}).")
        return ("Tip: Reconstruct (section 3; no model needed) makes this MR scan's anomaly "
                f"score; the next rounds then use it ({_GAIN}).")


def _is_ct(scan) -> bool:
    from ...engine.normalize import guess_modality

    return guess_modality(layer_array(scan), (scan.metadata or {}).get("modality")) == "CT"


def anomaly_column(viewer: napari.viewer.Viewer, scan) -> np.ndarray | None:
    """The anomaly score layer Reconstruct made for ``scan`` (its data, not copied: the
    engine copies it), when it is on the scan's grid and the scan is not a CT; else None."""
    layer = find_output(viewer, scan.name, "anomaly score")
    if layer is None or layer_array(layer).shape != layer_array(scan).shape or _is_ct(scan):
        return None
    return layer_array(layer)


def score_would_help(viewer: napari.viewer.Viewer, scan) -> bool:
    """An MR scan with no anomaly score yet (Reconstruct makes one, with or without a model)."""
    return find_output(viewer, scan.name, "anomaly score") is None and not _is_ct(scan)
