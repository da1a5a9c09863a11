"""The LatentSeg dock: scan picker, four workflow sections and a task bar.

See the package docstring (:mod:`napari_latentseg._napari._widgets`) for why this is one dock
with collapsible sections rather than several widgets. The dock owns the state the sections
share: the chosen scan, the models of this session (one of them active), the feature cache
that lets segmentation rounds reuse features, and three task bars: the main one runs one job
at a time (open, reconstruct, segment, save), the fit bar runs a fit in the background, so the
first segmentation comes on the ilastik features while the VAE is still fitting, and the
rounds of three or more classes after the fit use its features. The score bar likewise makes
an MR scan's anomaly score when Segment would use it and there is none yet: the first rounds
go without it, the rounds after it use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QFrame,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ...engine.segment import FeatureCache
from ._layers import layer_array, scan_modality
from ._model import ModelSection
from ._pickers import LayerCombo, LayerWatcher
from ._reconstruct import ReconstructSection
from ._scan import ScanSection
from ._segment import SegmentSection
from ._session import ModelEntry, Session
from ._tasks import TaskBar

if TYPE_CHECKING:
    import napari.layers
    import napari.viewer

    from ...models.checkpoint import VAEModel

__all__ = ["LatentSegWidget"]

_NO_CAP = (1 << 24) - 1  # Qt's QWIDGETSIZE_MAX


class _Section(QCollapsible):
    """superqt's QCollapsible, its expanded content as tall as its text needs at its width.

    QCollapsible caps the expanded content at its size hint (its animation's end), which
    ignores word wrapping, and renews the cap only when the section widget is resized: in a
    narrow dock, or once a summary was set after the section opened, the class table was
    squashed and the hint above it cut. The dock does not animate (duration 0): no cap, and
    a minimum height from ``heightForWidth`` at the content's width, renewed on every
    layout change, so the scroll area scrolls instead of squashing.
    """

    def expand(self, animate: bool = True) -> None:
        super().expand(animate=False)
        self._fit()

    def collapse(self, animate: bool = True) -> None:
        self.content().setMinimumHeight(0)
        super().collapse(animate=False)

    def _fit(self) -> None:
        content = self.content()
        content.setMaximumHeight(_NO_CAP)
        if content.hasHeightForWidth():
            h = max(content.heightForWidth(content.width()), 0)
            if h != content.minimumHeight():
                content.setMinimumHeight(h)

    def eventFilter(self, a0, a1) -> bool:
        handled = super().eventFilter(a0, a1)
        if self.isExpanded() and a1.type() in (QEvent.Type.Resize, QEvent.Type.LayoutRequest):
            self._fit()
        return handled


class LatentSegWidget(QWidget):
    """One dock for the whole workflow: open a scan, model, reconstruct, segment.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes it when the dock is opened from the Plugins menu).

    Attributes
    ----------
    scan : LayerCombo
        The scan every section works on (plugin output layers are not offered).
    tasks : TaskBar
        Runs the long jobs in thread workers, with progress and Stop.
    fit_tasks : TaskBar
        Runs a fit alongside (hidden until the first fit), with its own progress and Stop.
    score_tasks : TaskBar
        Makes the anomaly score Segment asked for alongside (hidden until the first).
    models : list of ModelEntry
        Models of this session; ``active_model`` is the one used by sections 3 and 4.
    cache : FeatureCache
        Features per (scan, model), reused by clustering and segmentation rounds.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.watcher = LayerWatcher(viewer, self)
        self.setMinimumWidth(400)

        # ---- header: the scan everything works on, with what it is
        self.scan = LayerCombo(viewer, self.watcher, "image", "open a scan first")
        self.scan.setToolTip("The scan the Model, Reconstruct and Segment sections work on.")
        self.scan_modality = QLabel()
        self.scan_size = QLabel()
        self.scan_spacing = QLabel()
        for label in (self.scan_modality, self.scan_size, self.scan_spacing):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        header = QFormLayout()
        header.setContentsMargins(4, 4, 4, 0)
        header.setVerticalSpacing(2)
        header.addRow("<b>Scan</b>", self.scan)
        header.addRow("Modality", self.scan_modality)
        header.addRow("Size", self.scan_size)
        header.addRow("Spacing", self.scan_spacing)

        # ---- sections in workflow order
        self.tasks = TaskBar()
        self.fit_tasks = TaskBar(idle_text="No fit yet.")
        self.fit_tasks.setVisible(False)
        self.score_tasks = TaskBar(idle_text="No anomaly score made in the background yet.")
        self.score_tasks.setVisible(False)
        self.session = Session(viewer, self.watcher, self.scan, self.tasks, FeatureCache(),
                               fit_tasks=self.fit_tasks, score_tasks=self.score_tasks)
        self.session.setParent(self)
        self.scan_section = ScanSection(self.session)
        self.model_section = ModelSection(self.session)
        self.reconstruct_section = ReconstructSection(self.session)
        self.segment_section = SegmentSection(self.session)
        self.sections: dict[str, QCollapsible] = {}
        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        body_layout.setSpacing(2)
        for key, title, widget in (
            ("scan", "1  Open a scan", self.scan_section),
            ("model", "2  Model", self.model_section),
            ("reconstruct", "3  Reconstruct and find anomalies", self.reconstruct_section),
            ("segment", "4  Segment", self.segment_section),
        ):
            box = _Section(title, expandedIcon="\u25be", collapsedIcon="\u25b8")
            box.setDuration(0)
            box.addWidget(widget)
            box.expand(animate=False)
            font = box.toggleButton().font()
            font.setBold(True)
            box.toggleButton().setFont(font)
            self.sections[key] = box
            body_layout.addWidget(box)
        body_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        scroll.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addWidget(scroll, 1)
        layout.addWidget(line)
        layout.addWidget(self.fit_tasks)
        layout.addWidget(self.score_tasks)
        layout.addWidget(self.tasks)

        self.scan.currentIndexChanged.connect(self._on_scan_changed)
        self.watcher.inserted.connect(self._on_layer_inserted)
        self.watcher.changed.connect(self._update_scan_info)
        self.tasks.busy_changed.connect(self._on_busy)
        self._update_scan_info()

    # ------------------------------------------------------------------ scan
    def scan_layer(self) -> napari.layers.Image | None:
        """The chosen scan layer, or None."""
        return self.scan.layer()

    def _on_layer_inserted(self, layer) -> None:
        from napari.layers import Image

        from ._layers import is_output

        # A scan the user just opened becomes the one to work on.
        if isinstance(layer, Image) and not is_output(layer) and not getattr(layer, "rgb", 0):
            self.scan.set_layer(layer)

    def _on_scan_changed(self, *_args) -> None:
        self._update_scan_info()
        self.session.scan_changed.emit()

    @property
    def scan_info(self) -> str:
        """Modality, size and spacing of the chosen scan as shown in the header (plain text)."""
        return " | ".join(label.text() for label in (self.scan_modality, self.scan_size,
                                                      self.scan_spacing))

    def _update_scan_info(self) -> None:
        layer = self.scan.layer()
        if layer is None:
            self.scan_modality.setText("-")
            self.scan_size.setText("no scan yet: open one in section 1 or with File > Open")
            self.scan_spacing.setText("-")
            return
        shape = layer_array(layer).shape
        meta = layer.metadata or {}
        modality, guessed = scan_modality(layer)
        self.scan_modality.setText(
            f"{modality} (guessed from the intensities: not in the file header)" if guessed
            else str(meta.get("modality")))
        kind = "3D volume" if len(shape) == 3 else "2D image"
        times = " \u00d7 "
        self.scan_size.setText(f"{times.join(str(s) for s in shape)} voxels ({kind})")
        axes = "z, y, x" if len(shape) == 3 else "y, x"
        spacing = f"{times.join(f'{s:.3g}' for s in layer.scale)} mm ({axes})"
        note = meta.get("direction_note")
        self.scan_spacing.setText(spacing + (f"; {note}" if note else ""))

    # ------------------------------------------------------------------ shared state
    @property
    def models(self) -> list[ModelEntry]:
        """Models of this session (see :class:`Session`)."""
        return self.session.models

    @property
    def cache(self):
        """The feature cache of this session."""
        return self.session.cache

    @property
    def active_model(self) -> VAEModel | None:
        """The model sections 3 and 4 use, or None."""
        return self.session.active_model

    @property
    def active_entry(self) -> ModelEntry | None:
        """The active model's entry, or None."""
        return self.session.active_entry

    def add_model(self, model: VAEModel, origin: str, path: str | None = None, *,
                  activate: bool = True) -> ModelEntry:
        """Add a model to the session (see :meth:`Session.add_model`)."""
        return self.session.add_model(model, origin, path, activate=activate)

    # ------------------------------------------------------------------ busy state
    def _on_busy(self, busy: bool) -> None:
        for section in (self.scan_section, self.model_section, self.reconstruct_section,
                        self.segment_section):
            section.set_busy(busy)

    def event(self, ev: QEvent) -> bool:
        """Stop a running job when the dock is closed (napari then takes the widget out)."""
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.segment_section.live.close()
            self.tasks.stop()
            self.fit_tasks.stop()
            self.score_tasks.stop()
        return super().event(ev)
