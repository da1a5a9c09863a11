"""The class table of the annotation layer: value, name, colour and lock of each structure.

The table edits the annotation layer itself, in napari's own terms, so the names travel with
the layer (napari's *Save layer* and our writer keep them) and show in the status bar:

- names: ``layer.features`` with columns ``index`` (label value) and ``name``;
- colours: a direct label colormap (value -> RGBA), what the user paints with;
- locks: ``layer.metadata["latentseg_locked"]`` (classes later rounds must not change).

A layer without names (a new annotation layer) gets the default rows 1 = background,
2 = structure, in the colours it already shows. A layer opened from a label file with names
(the reader sets ``features``) shows those names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QValidator
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QHeaderView,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._reader import label_layer_kwargs
from .._writer import classes_from_layer_attributes
from ._base import button_row

if TYPE_CHECKING:
    import napari.layers

__all__ = ["ClassTable", "ClassSpinBox", "layer_classes", "apply_classes", "LOCKED_KEY",
           "DEFAULT_NAMES"]

LOCKED_KEY = "latentseg_locked"
#: Names of the first rows of a layer that has none (the painting convention of the dock).
DEFAULT_NAMES = {1: "background", 2: "structure"}
_LOCK, _VALUE, _NAME, _COLOUR = range(4)


def layer_classes(layer: napari.layers.Labels) -> list[dict[str, Any]]:
    """The named classes of a Labels layer (``[{"value", "name", "color"}]``, may be empty)."""
    attributes = {"features": layer.features, "colormap": layer.colormap,
                  "metadata": dict(layer.metadata or {})}
    return classes_from_layer_attributes(attributes) or []


def _layer_colour(layer: napari.layers.Labels, value: int) -> list[float]:
    rgba = np.asarray(layer.colormap.map(np.array([value])), dtype=float).reshape(-1)
    return [float(c) for c in rgba[:3]]


def apply_classes(layer: napari.layers.Labels, classes: list[dict[str, Any]],
                  locked: list[int] | None = None) -> None:
    """Store names (``features``), colours (colormap) and locks on a Labels layer."""
    if not classes:
        return
    top = int(np.max(layer.data)) if np.size(layer.data) else 0
    kwargs = label_layer_kwargs(classes, min(max(top, 32), 255))  # unnamed values keep colours
    layer.colormap = kwargs["colormap"]
    layer.features = kwargs["features"]
    if locked is not None:
        layer.metadata = dict(layer.metadata or {}, **{LOCKED_KEY: sorted(int(v) for v in locked)})


class ClassTable(QWidget):
    """Table of the annotation layer's classes: lock, value, name, colour swatch.

    Signals
    -------
    classes_changed()
        A name, colour, lock or row changed (the layer is already updated).
    """

    classes_changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._layer: napari.layers.Labels | None = None
        self._loading = False
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Lock", "Value", "Name", "Colour"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for col in (_LOCK, _VALUE, _COLOUR):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(_NAME, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setToolTip("Double-click a name to rename it, a colour to change it. A "
                              "locked class keeps its voxels in later Segment rounds.")
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.cellDoubleClicked.connect(self._on_double_click)
        self.add_btn = QPushButton("Add class")
        self.add_btn.setToolTip("A new structure with the next label value (paint with it).")
        self.add_btn.clicked.connect(lambda *_: self.add_class())
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)
        lay.addLayout(button_row(self.add_btn))
        self.setEnabled(False)

    # ------------------------------------------------------------------ layer binding
    def layer(self) -> napari.layers.Labels | None:
        """The annotation layer the table edits."""
        return self._layer

    def set_layer(self, layer: napari.layers.Labels | None) -> None:
        """Show (and from now on edit) the classes of ``layer``; defaults when it has none.

        Binding writes nothing to the layer (it may be a label file the user opened).
        """
        self._layer = layer
        self.setEnabled(layer is not None)
        if layer is None:
            self._fill([], [])
            return
        classes = layer_classes(layer)
        if not classes:
            classes = [{"value": v, "name": n, "color": _layer_colour(layer, v)}
                       for v, n in DEFAULT_NAMES.items()]
        locked = [int(v) for v in (layer.metadata or {}).get(LOCKED_KEY, [])]
        self._fill(classes, locked)  # shown only: the layer is written on the first edit

    # ------------------------------------------------------------------ reading
    def classes(self) -> list[dict[str, Any]]:
        """``[{"value", "name", "color"}]`` as shown, sorted by value."""
        out = []
        for row in range(self.table.rowCount()):
            value = int(self.table.item(row, _VALUE).text())
            name = self.table.item(row, _NAME).text().strip() or f"class {value}"
            colour = self.table.item(row, _COLOUR).data(Qt.ItemDataRole.UserRole)
            out.append({"value": value, "name": name, "color": list(colour)})
        return sorted(out, key=lambda c: c["value"])

    def locked(self) -> list[int]:
        """Values of the locked classes."""
        return [int(self.table.item(r, _VALUE).text()) for r in range(self.table.rowCount())
                if self.table.item(r, _LOCK).checkState() == Qt.CheckState.Checked]

    def names(self) -> dict[int, str]:
        """``{value: name}``."""
        return {c["value"]: c["name"] for c in self.classes()}

    # ------------------------------------------------------------------ editing
    def add_class(self, name: str | None = None) -> int:
        """Add a row with the next free value; returns the value (also selected for painting)."""
        values = [c["value"] for c in self.classes()]
        value = max(values, default=0) + 1
        colour = _layer_colour(self._layer, value) if self._layer is not None else [.5] * 3
        self._add_row(value, name or f"structure {value - 1}", colour, False)
        self._push()
        if self._layer is not None:
            self._layer.selected_label = value
        return value

    def merge(self, classes: list[dict[str, Any]]) -> None:
        """Add the classes whose values the table lacks (names and colours as given)."""
        known = {c["value"] for c in self.classes()}
        new = [c for c in classes if int(c["value"]) not in known]
        for c in new:
            self._add_row(int(c["value"]), str(c["name"]), c["color"], False)
        if new:
            self.table.sortItems(_VALUE)
            self._push()

    def ensure(self, values: list[int]) -> None:
        """Rows for painted values the table lacks (named ``structure N``, the layer's colour),
        so every class a round used can be named and locked."""
        known = {c["value"] for c in self.classes()}
        self.merge([{"value": int(v), "name": "background" if int(v) == 1 else
                     f"structure {int(v) - 1}", "color": _layer_colour(self._layer, int(v))}
                    for v in values if int(v) not in known and int(v) > 0
                    and self._layer is not None])

    def rename(self, value: int, name: str) -> None:
        """Give class ``value`` a new name."""
        self.table.item(self._row(value), _NAME).setText(name)

    def set_color(self, value: int, rgb: list[float]) -> None:
        """Give class ``value`` a new colour (0-1 RGB)."""
        self._set_swatch(self.table.item(self._row(value), _COLOUR), rgb)
        self._push()

    def set_locked(self, value: int, locked: bool) -> None:
        """Lock or unlock class ``value``."""
        state = Qt.CheckState.Checked if locked else Qt.CheckState.Unchecked
        self.table.item(self._row(value), _LOCK).setCheckState(state)

    # ------------------------------------------------------------------ internals
    def _row(self, value: int) -> int:
        for row in range(self.table.rowCount()):
            if int(self.table.item(row, _VALUE).text()) == int(value):
                return row
        raise ValueError(f"no class {value} in the table")

    def _fill(self, classes: list[dict[str, Any]], locked: list[int]) -> None:
        self._loading = True
        self.table.setRowCount(0)
        for c in classes:
            self._add_row(int(c["value"]), str(c["name"]), c["color"], int(c["value"]) in locked)
        self._loading = False
        self._fit_height()

    def _add_row(self, value: int, name: str, colour: list[float], locked: bool) -> None:
        self._loading, was = True, self._loading
        row = self.table.rowCount()
        self.table.insertRow(row)
        lock = QTableWidgetItem()
        lock.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
        lock.setCheckState(Qt.CheckState.Checked if locked else Qt.CheckState.Unchecked)
        val = QTableWidgetItem()
        val.setData(Qt.ItemDataRole.DisplayRole, int(value))  # sorts as a number
        val.setFlags(Qt.ItemFlag.ItemIsEnabled)
        val.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        swatch = QTableWidgetItem("")
        swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
        self._set_swatch(swatch, colour)
        for col, item in ((_LOCK, lock), (_VALUE, val), (_NAME, QTableWidgetItem(name)),
                          (_COLOUR, swatch)):
            self.table.setItem(row, col, item)
        self._loading = was
        self._fit_height()

    def _fit_height(self) -> None:
        """Tall enough for every row up to 7 (then it scrolls): the dock gives it no more."""
        rows = min(max(self.table.rowCount(), 2), 7)
        row_h = self.table.verticalHeader().defaultSectionSize()
        header_h = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header_h + rows * row_h + 2 * self.table.frameWidth())

    @staticmethod
    def _set_swatch(item: QTableWidgetItem, rgb: list[float]) -> None:
        rgb = [float(np.clip(c, 0.0, 1.0)) for c in list(rgb)[:3]]
        item.setData(Qt.ItemDataRole.UserRole, rgb)
        item.setBackground(QColor.fromRgbF(*rgb))
        item.setToolTip("#" + "".join(f"{round(c * 255):02x}" for c in rgb))

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if not self._loading and item.column() in (_LOCK, _NAME):
            self._push()

    def _on_double_click(self, row: int, col: int) -> None:
        if col != _COLOUR:
            return
        item = self.table.item(row, _COLOUR)
        colour = QColorDialog.getColor(QColor.fromRgbF(*item.data(Qt.ItemDataRole.UserRole)),
                                       self, "Class colour")
        if colour.isValid():
            self.set_color(int(self.table.item(row, _VALUE).text()),
                           [colour.redF(), colour.greenF(), colour.blueF()])

    def _push(self) -> None:
        """Write the table to the layer (names, colours, locks)."""
        if self._layer is not None:
            apply_classes(self._layer, self.classes(), self.locked())
        self.classes_changed.emit()


class ClassSpinBox(QSpinBox):
    """A class id, shown with the class table's name ("7 lesion"); 0 shows "none".

    Typing a number (with or without the name) sets the id.
    """

    def __init__(self, table: ClassTable) -> None:
        super().__init__()
        self._table = table
        self.setRange(0, 65535)
        self.setSpecialValueText("none")
        table.classes_changed.connect(self._refresh)  # a renamed class shows at once

    def _refresh(self) -> None:
        value = self.value()
        self.lineEdit().setText(self.specialValueText() if value == self.minimum()
                                else self.textFromValue(value))

    def textFromValue(self, value: int) -> str:  # noqa: N802 (Qt's name)
        name = self._table.names().get(int(value)) if value else None
        return f"{value} {name}" if name else str(value)

    def valueFromText(self, text: str) -> int:  # noqa: N802
        head = text.strip().split(" ", 1)[0]
        return int(head) if head.isdigit() else 0

    def validate(self, text: str, pos: int):
        head = text.strip().split(" ", 1)[0]
        ok = head.isdigit() or text.strip() in ("", self.specialValueText())
        state = QValidator.State.Acceptable if ok else QValidator.State.Invalid
        return state, text, pos
