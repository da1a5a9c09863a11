"""The dock's layout: every section fits the dock's own minimum width, so no text is clipped
at its right edge (the anomaly score menu's longest entry once widened it 85 px past its room)."""

from __future__ import annotations

from test_widgets import add_crop, dock, phantom_crop

__all__ = ["dock", "phantom_crop"]  # fixtures used here, imported from test_widgets


def test_every_section_fits_the_dock_minimum_width(dock, phantom_crop):
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    for box in widget.sections.values():
        box.expand(animate=False)
    QApplication.processEvents()
    scroll = widget.findChild(QScrollArea)
    # The body scrolls vertically only: whatever it needs beyond the viewport is cut off.
    room = (widget.minimumWidth() - widget.layout().contentsMargins().left()
            - widget.layout().contentsMargins().right()
            - scroll.verticalScrollBar().sizeHint().width())
    assert scroll.widget().minimumSizeHint().width() <= room
