"""The annotation part of the Segment section: the layer painted on, its classes, where it
starts from, its autosave and the offer to restore it.

- *New annotation layer*: an empty Labels layer on the scan's grid, named classes 1 =
  background, 2 = structure (the :class:`~._classes.ClassTable` edits them).
- *Start from*: another Labels layer (or a label file, opened first as a layer of its own) is
  copied into a NEW annotation layer with its names and colours, or handed to the section as
  the starting segmentation. The source layer is never written to.
- Autosave: the chosen annotation layer is saved a few seconds after each change to the scan's
  recovery folder (:mod:`napari_latentseg.recovery`); choosing a scan that has copies not open
  as layers shows a *Restore* / *Discard* bar (never a modal dialog).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QFormLayout, QPushButton, QVBoxLayout

from ... import recovery
from .._layer_geometry import axis_kwargs_like
from ._autosave import AUTOSAVE_KEY, Autosaver, RecoveryBar
from ._base import Section, button_row, hint
from ._classes import ClassTable, apply_classes, layer_classes
from ._layers import (
    check_scan_layer,
    geometry_kwargs,
    layer_array,
    output_name,
    source_geometry,
)
from ._pickers import LayerCombo

if TYPE_CHECKING:
    import napari.layers

    from ...recovery import Snapshot
    from ._session import Session

__all__ = ["AnnotationBox", "scan_source"]

#: ``use_as_segmentation(scan, data, classes)``: the section shows ``data`` as its result.
UseAsSegmentation = Callable[["napari.layers.Image", np.ndarray, list], bool]


def scan_source(scan: napari.layers.Layer) -> str:
    """What names a scan for its recovery folder: its file, or its layer name."""
    src = (scan.metadata or {}).get("source_path")
    return str(src) if isinstance(src, str) and src else f"layer:{scan.name}"


class AnnotationBox(Section):
    """Annotation layer picker, class table, *Start from*, autosave and restore offer.

    Parameters
    ----------
    session : Session
        The dock's shared state (viewer, scan, task bar).
    use_as_segmentation : callable
        Called with ``(scan, labels, classes)`` by *Use as segmentation*.
    autosave_ms : int
        Autosave interval (see :class:`~._autosave.Autosaver`).
    """

    def __init__(self, session: Session, use_as_segmentation: UseAsSegmentation,
                 autosave_ms: int = 3000) -> None:
        super().__init__(session)
        self._use_as_segmentation = use_as_segmentation
        self.combo = LayerCombo(self.viewer, session.watcher, "labels", "none yet")
        self.combo.setToolTip("The labels layer you paint on.")
        self.new_btn = QPushButton("New annotation layer")
        self.new_btn.setToolTip("An empty labels layer on the scan's grid, ready to paint.")
        self.new_btn.clicked.connect(lambda *_: self.new_layer())
        self.table = ClassTable()
        self.source = LayerCombo(self.viewer, session.watcher, "labels", "no labels layer")
        self.source.setToolTip("A labels layer (or a label file you open) to start from.")
        self.copy_btn = QPushButton("As annotations")
        self.copy_btn.setToolTip("Copy it into a NEW annotation layer (it stays unchanged).")
        self.copy_btn.clicked.connect(lambda *_: self.copy_to_annotations())
        self.seed_btn = QPushButton("As segmentation")
        self.seed_btn.setToolTip("Use it as the segmentation to correct, lock and save.")
        self.seed_btn.clicked.connect(lambda *_: self.use_as_segmentation())
        self.open_btn = self.job_button("Open label file\u2026", "Open a label file (NIfTI, "
                                        "NRRD, MetaImage) as a layer to start from.",
                                        self._ask_open)
        self.recovery_bar = RecoveryBar()
        self.recovery_bar.restore_requested.connect(self._restore)
        self.autosaver = Autosaver(self.table, autosave_ms)
        self.autosaver.setParent(self)

        top, bottom = QFormLayout(), QFormLayout()
        for form in (top, bottom):
            form.setContentsMargins(0, 0, 0, 0)
        top.addRow("Annotations", self.combo)
        top.addRow(self.new_btn)
        bottom.addRow("Start from", self.source)
        bottom.addRow(button_row(self.copy_btn, self.seed_btn, self.open_btn))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.recovery_bar)
        lay.addLayout(top)
        # The wrapped hint sits in the box layout: a form layout gave it the height of its
        # lines at an earlier, wider width, and cut it in a narrow dock.
        lay.addWidget(hint("Paint a few slices: 1 = background, 2, 3\u2026 = structures "
                           "(0 = not annotated); name them below. Then Segment. A locked "
                           "class keeps its voxels in later rounds."))
        lay.addWidget(self.table)
        lay.addLayout(bottom)

        self.combo.currentIndexChanged.connect(lambda *_: self._on_layer_changed())
        session.scan_changed.connect(self.on_scan_changed)
        self._on_layer_changed()
        self.on_scan_changed()

    # ------------------------------------------------------------------ state
    def layer(self) -> napari.layers.Labels | None:
        """The annotation layer."""
        return self.combo.layer()

    def _recovery_folder(self, scan) -> Path | None:
        return recovery.scan_folder(scan_source(scan), layer_array(scan).shape)

    def _on_layer_changed(self) -> None:
        ann = self.combo.layer()
        self.table.set_layer(ann)
        scan = self.session.scan_layer()
        on_grid = (ann is not None and scan is not None and check_scan_layer(scan) is None
                   and layer_array(ann).shape == layer_array(scan).shape)
        if on_grid:
            self.autosaver.watch(ann, self._recovery_folder(scan), scan_source(scan))
        else:
            self.autosaver.watch(None, None)

    def on_scan_changed(self) -> None:
        """Autosave for the new scan and offer the copies it has that are not open."""
        self._on_layer_changed()
        scan = self.session.scan_layer()
        if scan is None or check_scan_layer(scan) is not None:
            self.recovery_bar.offer(None, set())
            return
        open_names = {str((lay.metadata or {}).get(AUTOSAVE_KEY)) for lay in self.viewer.layers
                      if (lay.metadata or {}).get(AUTOSAVE_KEY)}
        n = self.recovery_bar.offer(self._recovery_folder(scan), open_names)
        if n:
            show_info(f"Autosaved annotations of '{scan.name}' were found: Restore or Discard "
                      "them in the Segment section.")

    # ------------------------------------------------------------------ new layers
    def _add_annotation_layer(self, scan, data: np.ndarray, name: str, classes: list,
                              locked: list[int] | None = None,
                              autosave_name: str | None = None) -> napari.layers.Labels:
        metadata = {"annotation_for": scan.name, AUTOSAVE_KEY: autosave_name or name}
        try:
            metadata["latentseg_geometry"] = source_geometry(scan, data.shape)
        except ValueError:
            pass
        ann = self.viewer.add_labels(data, name=name, metadata=metadata, opacity=0.7,
                                     **geometry_kwargs(scan), **axis_kwargs_like(scan))
        if classes:
            apply_classes(ann, classes, locked)
        self.combo.set_layer(ann)
        self.table.set_layer(ann)
        if not classes:  # a fresh layer gets the default named rows
            apply_classes(ann, self.table.classes(), [])
        return ann

    def new_layer(self) -> napari.layers.Labels | None:
        """Create an empty annotation layer on the scan's grid and select it for painting."""
        scan = self.session.scan_layer()
        problem = check_scan_layer(scan)
        if problem:
            show_error(problem)
            return None
        shape = layer_array(scan).shape
        ann = self._add_annotation_layer(scan, np.zeros(shape, np.uint8),
                                         self._free_name(output_name(scan, "annotations")), [])
        self.viewer.layers.selection.active = ann
        ann.selected_label = 1
        ann.brush_size = max(3, int(min(shape[-2:]) // 25))
        ann.mode = "paint"
        show_info(f"Paint on '{ann.name}': label 1 = background, 2, 3\u2026 = structures (name "
                  "them in the class table), on a few slices; then press Segment.")
        return ann

    def _free_name(self, name: str) -> str:
        names = {lay.name for lay in self.viewer.layers}
        taken = names | {str((lay.metadata or {}).get(AUTOSAVE_KEY)) for lay in self.viewer.layers}
        if name not in taken:
            return name
        return next(f"{name} {i}" for i in range(2, 10_000) if f"{name} {i}" not in taken)

    # ------------------------------------------------------------------ start from
    def _source_on_grid(self):
        """(scan, source layer, copy of its data) or Nones after an error notification."""
        scan, src = self.session.scan_layer(), self.source.layer()
        problem = check_scan_layer(scan)
        if problem or src is None:
            show_error(problem or "No labels layer to start from: open a label file (Open "
                       "label file\u2026) or pick a labels layer under 'Start from'.")
            return None, None, None
        data, shape = layer_array(src), layer_array(scan).shape
        if data.shape != shape or not np.allclose(src.scale, scan.scale) or \
                not np.allclose(src.translate, scan.translate):
            show_error(f"'{src.name}' ({'x'.join(map(str, data.shape))} voxels) is not on the "
                       f"grid of '{scan.name}' ({'x'.join(map(str, shape))}): start from labels "
                       "made for this scan.")
            return None, None, None
        return scan, src, np.array(data, copy=True)  # never a view of the source's data

    def copy_to_annotations(self) -> napari.layers.Labels | None:
        """Copy the *Start from* layer into a new annotation layer (names and colours too)."""
        scan, src, data = self._source_on_grid()
        if scan is None:
            return None
        name = self._free_name(f"{scan.name} annotations (from {src.name})")
        ann = self._add_annotation_layer(scan, data, name, layer_classes(src))
        show_info(f"'{ann.name}' is a copy of '{src.name}' to paint on; '{src.name}' is "
                  "unchanged.")
        return ann

    def use_as_segmentation(self) -> bool:
        """Hand the *Start from* layer to the section as its segmentation."""
        scan, src, data = self._source_on_grid()
        if scan is None:
            return False
        return self._use_as_segmentation(scan, data, layer_classes(src))

    def _ask_open(self) -> None:
        scan = self.session.scan_layer()
        src = (scan.metadata or {}).get("source_path") if scan is not None else None
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a label file", str(Path(src).parent) if src else str(Path.home()),
            "Label volumes (*.nii.gz *.nii *.nrrd *.mha *.mhd);;All files (*)")
        if path:
            self.open_label_file(path)

    def open_label_file(self, path: str) -> bool:
        """Read a label file in a worker and add it as a Labels layer chosen under 'Start from'.

        The file's class names (NRRD header or sidecars) become the layer's ``features``.
        """
        from ...io import read_volume
        from .._reader import label_layer_kwargs, layer_data_from_volume

        def job(stop):
            yield {"stage": "read", "message": f"reading {Path(path).name}"}
            return read_volume(path)

        def done(vol) -> None:
            data, kwargs, kind = layer_data_from_volume(vol)
            if kind != "labels":
                if data.dtype.kind not in "iub":
                    show_error(f"{path} holds an image (not whole numbers), not labels: open it "
                               "with File > Open instead.")
                    return
                kwargs.pop("contrast_limits", None)
                kwargs.update(label_layer_kwargs(vol.metadata.get("label_classes"),
                                                 int(data.max(initial=0))))
            layer = self.viewer.add_labels(data, **kwargs)
            self.source.set_layer(layer)
            show_info(f"Opened '{layer.name}': press As annotations or As segmentation.")

        return self.session.tasks.start(f"Opening {Path(path).name}", job, on_return=done,
                                        stoppable=False)

    # ------------------------------------------------------------------ restore
    def _restore(self, snapshots: list[Snapshot]) -> None:
        scan = self.session.scan_layer()
        if scan is None:
            return
        shape = layer_array(scan).shape
        for snap in snapshots:
            if snap.labels.shape != shape:
                show_error(f"The autosaved '{snap.name}' has shape {snap.labels.shape}, the scan "
                           f"{shape}: it was not restored.")
                continue
            name = snap.name if snap.name not in {lay.name for lay in self.viewer.layers} \
                else f"{snap.name} (restored)"
            ann = self._add_annotation_layer(scan, snap.labels, name, snap.classes, snap.locked,
                                             autosave_name=snap.name)
            show_info(f"Restored '{ann.name}' ({snap.painted} annotated voxels).")
