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


def test_wrapped_text_and_the_class_table_get_their_height(make_napari_viewer, phantom_crop,
                                                            qtbot):
    """In a dock at its minimum width, with a summary set after the section opened, every
    wrapped line and every class row shows (superqt's collapsible capped the section at its
    size hint, and a form layout cut the painting hint)."""
    import numpy as np
    from qtpy.QtWidgets import QApplication, QLabel

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1440, 900)
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    add_crop(viewer, phantom_crop)
    for key, box in widget.sections.items():
        (box.expand if key == "segment" else box.collapse)(animate=False)
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    ann.data_setitem((np.array([1, 1]), np.array([5, 9]), np.array([5, 9])), np.array([1, 2]))
    seg.summary.setText("Classes 1, 2 in 1.2 s. Features: ilastik multiscale set + the anomaly "
                        "score + distance from the object's strokes + background prior. " * 3)
    seg.summary.setVisible(True)
    qtbot.waitUntil(lambda: widget.width() <= 480, timeout=5000)
    for _ in range(10):
        QApplication.processEvents()
    labels = [lab for lab in seg.findChildren(QLabel)  # the open section's
              if lab.wordWrap() and lab.isVisibleTo(widget) and lab.text()]
    assert labels
    for lab in labels:
        assert lab.height() >= lab.heightForWidth(lab.width()) - 1, lab.text()[:40]
    table = seg.box.table.table
    assert table.rowCount() == 2
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    assert table.height() >= table.horizontalHeader().height() + rows
