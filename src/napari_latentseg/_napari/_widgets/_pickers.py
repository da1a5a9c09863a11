"""Layer pickers that follow the viewer's layer list (added, removed, renamed layers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QComboBox, QListWidget, QListWidgetItem, QWidget

from ._layers import is_output, same_layer

if TYPE_CHECKING:
    import napari.layers
    import napari.viewer

__all__ = ["LayerWatcher", "LayerCombo", "LayerChecklist"]


class LayerWatcher(QObject):
    """Emits ``changed`` whenever layers are added, removed, moved or renamed.

    ``inserted`` carries the new layer (the dock uses it to select a newly opened scan).
    """

    changed = Signal()
    inserted = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_changed)
        events.moved.connect(self._on_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_changed)

    def _on_inserted(self, event) -> None:
        layer = event.value
        layer.events.name.connect(self._on_changed)
        self.changed.emit()
        self.inserted.emit(layer)

    def _on_changed(self, event=None) -> None:
        self.changed.emit()


def _eligible(layer, kind: str, include_outputs: bool) -> bool:
    from napari.layers import Image, Labels

    cls = Image if kind == "image" else Labels
    if not isinstance(layer, cls):
        return False
    if kind == "image" and getattr(layer, "rgb", False):
        return False
    return include_outputs or not is_output(layer)


class LayerCombo(QComboBox):
    """Choose one Image or Labels layer (plugin outputs left out); keeps the choice on refresh."""

    def __init__(self, viewer: napari.viewer.Viewer, watcher: LayerWatcher, kind: str,
                 placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.kind = kind
        self.placeholder = placeholder
        self._layers: list = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(6)
        watcher.changed.connect(self.refresh)
        self.refresh()

    def layer(self) -> napari.layers.Layer | None:
        """The chosen layer, or None."""
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_layer(self, layer: napari.layers.Layer) -> None:
        """Choose ``layer`` (refreshing first if it is new)."""
        if not any(same_layer(lay, layer) for lay in self._layers):
            self.refresh()
        for i, lay in enumerate(self._layers):
            if same_layer(lay, layer):
                self.setCurrentIndex(i)
                return

    def refresh(self) -> None:
        """Rebuild the list from the viewer, keeping the current choice when it still exists."""
        current = self.layer()
        layers = [lay for lay in self.viewer.layers if _eligible(lay, self.kind, False)]
        self.blockSignals(True)
        self.clear()
        self._layers = layers
        for lay in layers:
            self.addItem(lay.name)
        if not layers:
            self.setPlaceholderText(self.placeholder)
        index = next((i for i, lay in enumerate(layers) if same_layer(lay, current)),
                     0 if layers else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if not same_layer(self.layer(), current):
            self.currentIndexChanged.emit(self.currentIndex())


class LayerChecklist(QListWidget):
    """Tick one or more image layers (for fitting on several scans)."""

    def __init__(self, viewer: napari.viewer.Viewer, watcher: LayerWatcher,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._layers: list = []
        self.setMaximumHeight(52)
        watcher.changed.connect(self.refresh)
        self.refresh()

    def checked_layers(self) -> list[napari.layers.Layer]:
        """The ticked layers, in the viewer's order."""
        return [lay for i, lay in enumerate(self._layers)
                if self.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, layers: list[napari.layers.Layer]) -> None:
        """Tick exactly ``layers``."""
        self.refresh()
        for i, lay in enumerate(self._layers):
            on = any(same_layer(lay, other) for other in layers)
            self.item(i).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def refresh(self) -> None:
        """Rebuild from the viewer; ticks are kept per layer."""
        checked = self.checked_layers() if self._layers else []
        self._layers = [lay for lay in self.viewer.layers if _eligible(lay, "image", False)]
        self.clear()
        for lay in self._layers:
            item = QListWidgetItem(lay.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = any(same_layer(lay, c) for c in checked)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.addItem(item)
