"""Autosave of the annotation layer and the offer to restore it after a crash.

:class:`Autosaver` watches one annotation layer. The first paint stroke (or data change)
after a save starts a single-shot timer; when it fires, the layer's data is copied on the GUI
thread and written by :func:`napari_latentseg.recovery.save_snapshot` in a worker thread
(atomically). Strokes made meanwhile do not restart the timer, so a user painting
continuously is saved at most every :attr:`Autosaver.interval_ms` and never later than that
after a change. Where the copies live and how they are named is :mod:`napari_latentseg.recovery`.

:class:`RecoveryBar` is the non-modal offer shown in the Segment section when the scan just
opened has copies that are not open as layers: *Restore* or *Discard*.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout

from ... import recovery
from ._base import button_row
from ._layers import layer_array

if TYPE_CHECKING:
    import napari.layers

    from ._classes import ClassTable

__all__ = ["AUTOSAVE_KEY", "Autosaver", "RecoveryBar"]

#: Layer metadata: the name its copies are saved under (kept when the layer is renamed).
AUTOSAVE_KEY = "latentseg_autosave"


class Autosaver(QObject):
    """Saves the watched annotation layer a few seconds after it changed, in a worker thread.

    Parameters
    ----------
    table : ClassTable
        Its names, colours and locks are saved with the labels.
    interval_ms : int
        Longest time between a change and its save; also the shortest time between saves.

    Signals
    -------
    saved(str)
        The path written (after the worker finished).
    """

    saved = Signal(str)

    def __init__(self, table: ClassTable, interval_ms: int = 3000) -> None:
        super().__init__()
        self.table = table
        self._layer: napari.layers.Labels | None = None
        self._folder: Path | None = None
        self._source: str | None = None
        self._worker = None
        self._pending = False
        self._warned = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(int(interval_ms))
        self.timer.timeout.connect(self.save_now)

    @property
    def folder(self) -> Path | None:
        """The recovery folder of the watched layer's scan, or None when nothing is watched."""
        return self._folder

    def watch(self, layer: napari.layers.Labels | None, folder: Path | None,
              source: str | None = None) -> None:
        """Autosave ``layer`` into ``folder`` from now on (None: stop autosaving)."""
        if self._layer is not None:
            for event in (self._layer.events.paint, self._layer.events.data):
                event.disconnect(self._on_edit)
        self._layer, self._folder, self._source = layer, folder, source
        if layer is None or folder is None:
            self._layer = self._folder = None
            self.timer.stop()
            return
        if not (layer.metadata or {}).get(AUTOSAVE_KEY):
            layer.metadata = dict(layer.metadata or {}, **{AUTOSAVE_KEY: layer.name})
        for event in (layer.events.paint, layer.events.data):
            event.connect(self._on_edit)

    def _on_edit(self, *_args) -> None:
        if not self.timer.isActive():
            self.timer.start()

    def save_now(self) -> bool:
        """Copy the layer now and write it in a worker; returns whether a save started."""
        from napari.qt.threading import create_worker

        layer, folder = self._layer, self._folder
        if layer is None or folder is None:
            return False
        if self._worker is not None:  # one save at a time: this change is saved next
            self._pending = True
            return False
        data = np.array(layer_array(layer), copy=True)
        name = str((layer.metadata or {}).get(AUTOSAVE_KEY) or layer.name)
        classes, locked, source = self.table.classes(), self.table.locked(), self._source

        def write() -> str:
            return str(recovery.save_snapshot(folder, name, data, classes=classes,
                                              locked=locked, source=source))

        worker = create_worker(write, _start_thread=False)
        # Methods, not lambdas: PyQt drops these connections if the dock is deleted meanwhile.
        worker.returned.connect(self._on_saved)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return True

    def _on_saved(self, path: str) -> None:
        self.saved.emit(path)

    def _on_error(self, exc: BaseException) -> None:
        if self._warned:  # once per session: a full disk would otherwise repeat it every save
            return
        self._warned = True
        show_error(f"Autosave of the annotations failed ({exc}); save your work by hand "
                   "(File > Save Selected Layers).")

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self.timer.start()


class RecoveryBar(QFrame):
    """The offer to restore annotations autosaved for this scan (hidden when there are none).

    Signals
    -------
    restore_requested(list)
        The :class:`~napari_latentseg.recovery.Snapshot` objects the user wants back.
    """

    restore_requested = Signal(list)

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.restore_btn = QPushButton("Restore")
        self.restore_btn.setToolTip("Add the autosaved annotations as new layers.")
        self.restore_btn.clicked.connect(lambda *_: self.restore())
        self.discard_btn = QPushButton("Discard")
        self.discard_btn.setToolTip("Delete the autosaved copies (this cannot be undone).")
        self.discard_btn.clicked.connect(lambda *_: self.discard())
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.text)
        lay.addLayout(button_row(self.restore_btn, self.discard_btn))
        self.paths: list[Path] = []
        self._snapshots: list[recovery.Snapshot] = []  # read once, for the offer
        self.setVisible(False)

    def offer(self, folder: Path | None, open_names: set[str]) -> int:
        """Show the copies in ``folder`` that are not open (by autosave name); returns how many."""
        self.paths = []
        snapshots = []
        for path in recovery.list_snapshots(folder) if folder is not None else []:
            try:
                snap = recovery.load_snapshot(path)
            except ValueError:
                continue
            if snap.name not in open_names:
                self.paths.append(path)
                snapshots.append(snap)
        if snapshots:
            items = "; ".join(f"'{s.name}' ({s.painted} voxels, "
                              f"{time.strftime('%d %b %H:%M', time.localtime(s.saved_at))})"
                              for s in snapshots)
            self.text.setText(f"<b>Unsaved annotations of this scan were found</b>: {items}.")
        self._snapshots = snapshots
        self.setVisible(bool(snapshots))
        return len(snapshots)

    def restore(self) -> list[recovery.Snapshot]:
        """Ask for the offered copies as layers (the files stay autosaved)."""
        snaps, self._snapshots = self._snapshots, []
        self.setVisible(False)
        self.restore_requested.emit(snaps)
        return snaps

    def discard(self) -> int:
        """Delete the offered copies."""
        n = recovery.discard_snapshots(self.paths)
        self.paths, self._snapshots = [], []
        self.setVisible(False)
        return n
