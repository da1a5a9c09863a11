"""The state the dock's sections share, passed to each of them (they never see the dock).

A :class:`Session` holds the scan everything works on, this session's models (one active),
the device chosen for computing, the feature cache that lets rounds reuse features and the
task bars (one job at a time on the main bar; a fit on its own bar, alongside; the anomaly
score Segment asked for on a third), with signals for what changes. Sections talk to each
other only through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

if TYPE_CHECKING:
    import napari.layers
    import napari.viewer

    from ...engine.segment import FeatureCache
    from ...models.checkpoint import VAEModel
    from ._pickers import LayerCombo, LayerWatcher
    from ._tasks import TaskBar

__all__ = ["Session", "ModelEntry", "MAX_MODELS"]

#: Models kept in memory per session (older, unsaved ones are dropped first).
MAX_MODELS = 8


@dataclass
class ModelEntry:
    """A model of this session: where it came from and whether it is saved."""

    model: VAEModel
    origin: str  # "fitted", "stopped fit", "loaded", "segmentation round N"
    path: str | None = None

    @property
    def label(self) -> str:
        """One line for the model list."""
        saved = Path(self.path).name if self.path else "not saved"
        return f"{self.model.describe()} [{self.origin}; {saved}]"


class Session(QObject):
    """Shared state of the dock's sections.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    watcher : LayerWatcher
        Layer list changes, for pickers.
    scan : LayerCombo
        The scan picker at the top of the dock.
    tasks : TaskBar
        Runs one long job at a time, with progress and Stop.
    cache : FeatureCache
        Features per (scan, model), reused by clustering and segmentation rounds.
    fit_tasks : TaskBar
        Runs a fit alongside the main bar's jobs.
    score_tasks : TaskBar
        Runs the anomaly score Segment asks for (:attr:`score_wanted`) alongside.

    Signals
    -------
    score_wanted(layer)
        Segment would use the scan's anomaly score and there is none: the Reconstruct
        section makes it on :attr:`score_tasks` (in the background).
    score_ready(layer)
        The scan's anomaly score layer was made (in the background or by Reconstruct):
        Segment's next rounds use it, and live mode's volume round catches up with it.
    """

    model_changed = Signal()
    scan_changed = Signal()
    device_changed = Signal(str)
    score_wanted = Signal(object)
    score_ready = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer, watcher: LayerWatcher, scan: LayerCombo,
                 tasks: TaskBar, cache: FeatureCache, fit_tasks: TaskBar,
                 score_tasks: TaskBar) -> None:
        super().__init__()
        self.viewer = viewer
        self.watcher = watcher
        self.scan = scan
        self.tasks = tasks
        self.fit_tasks = fit_tasks
        self.score_tasks = score_tasks
        self.cache = cache
        self.models: list[ModelEntry] = []
        self._active: ModelEntry | None = None
        self._device = "cpu"
        self.live_busy = False  # a live slice is due or computing (set by live mode)

    # ------------------------------------------------------------------ scan
    def scan_layer(self) -> napari.layers.Image | None:
        """The chosen scan layer, or None."""
        return self.scan.layer()

    def user_waiting(self) -> bool:
        """True while a job the user waits on runs: the main bar's, or a live slice (from its
        stroke on, through the stroke pause).

        A fit or the background anomaly score on the CPU holds its next step meanwhile (read
        from their threads)."""
        return self.tasks.busy or self.live_busy

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> str:
        """Where every job computes (``"cpu"``, ``"cuda"``, ``"mps"``)."""
        return self._device

    def set_device(self, name: str) -> None:
        """Choose the device for every job (fit, reconstruct, cluster, segment)."""
        name = name or "cpu"
        if name != self._device:
            self._device = name
            self.device_changed.emit(name)

    # ------------------------------------------------------------------ models
    @property
    def active_model(self) -> VAEModel | None:
        """The model sections 3 and 4 use, or None."""
        return self._active.model if self._active is not None else None

    @property
    def active_entry(self) -> ModelEntry | None:
        """The active :class:`ModelEntry`, or None."""
        return self._active

    def add_model(self, model: VAEModel, origin: str, path: str | None = None, *,
                  activate: bool = True) -> ModelEntry:
        """Add a model to this session's list (and make it active)."""
        entry = ModelEntry(model, origin, path)
        self.models.append(entry)
        while len(self.models) > MAX_MODELS:
            old = next((e for e in self.models if e is not self._active and e.path), None) or \
                next(e for e in self.models if e is not self._active and e is not entry)
            self.models.remove(old)
        if activate or self._active is None:
            self._active = entry
        self.model_changed.emit()
        return entry

    def replace_model(self, entry: ModelEntry, model: VAEModel, origin: str, *,
                      keep_path: bool = False) -> None:
        """Put ``model`` in ``entry``'s place (a fit's finished model after its encoder's);
        whether it is active is unchanged. A new model is not saved (``keep_path``: the same
        model, relabelled)."""
        entry.model, entry.origin = model, origin
        if not keep_path:
            entry.path = None
        self.model_changed.emit()

    def mark_saved(self, entry: ModelEntry, path: str) -> None:
        """Record that ``entry``'s model was written to ``path``."""
        entry.path = path
        entry.model.source_path = path
        self.model_changed.emit()

    def set_active(self, entry: ModelEntry | None) -> None:
        """Make ``entry`` (one of :attr:`models`) the active model."""
        if entry is self._active:
            return
        self._active = entry
        self.model_changed.emit()
