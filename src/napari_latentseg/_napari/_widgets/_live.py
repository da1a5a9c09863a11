"""Live mode: the displayed slice follows the user's strokes, the volume follows in the back.

After a first Segment round the features of the (scan, model) pair are cached. From then on
each paint stroke on the annotation layer (napari's ``events.paint``) starts, after a short
pause, a live job: the forest is refitted from cached features and the slice on screen is
predicted (:class:`~napari_latentseg.engine.segment.LiveSegmenter`, two of them with an
object class), then written into the plugin's own segmentation layer. A newer stroke
supersedes an older one: strokes that arrive while a live job runs are folded into the next
job. When the strokes stop, a full round follows through the task bar, so the whole volume
(with the connectivity rule and the uncertainty) catches up; a stroke during that round
stops it and the cycle starts again.
When the active model changes (a fit running alongside has finished, or the user picked
another), the volume is segmented again with its features after the same pause.

The user's annotation layer is only read (a copy is taken on the GUI thread).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ._layers import layer_array, same_layer, scan_from_layer

if TYPE_CHECKING:
    import napari.layers

    from ._session import Session

__all__ = ["LiveController"]

#: Pause after a stroke before the slice is predicted (strokes come in bursts).
STROKE_PAUSE_MS = 120
#: Pause without strokes before the whole volume is segmented again.
VOLUME_PAUSE_MS = 1500


class LiveController(QObject):
    """Runs live slice predictions for one scan and its annotation layer.

    Parameters
    ----------
    session : Session
        The dock's shared state (viewer, active model, device, feature cache, task bar).
    full_round : callable
        Starts a full Segment round through the task bar (returns False if it could not).
    locked, connected, background, object_class : callable
        The Segment section's locked classes, connect-to-stroke rule, background class
        (``SegmentOptions.background``) and object class (``SegmentOptions.object_class``),
        read when a slice job starts.

    Signals
    -------
    slice_updated(int, float)
        Slice index and seconds from the stroke to the slice shown.
    """

    slice_updated = Signal(int, float)
    failed = Signal(str)

    def __init__(self, session: Session, full_round, locked=lambda: [],
                 connected=lambda: True, background=lambda: "auto",
                 last_round=lambda: None, extra=lambda scan: None,
                 edge=lambda: (True, 0.0), object_class=lambda: None,
                 parent: QObject | None = None) -> None:
        # Parented to the Segment section: its timers die with the dock, never firing into
        # deleted widgets.
        super().__init__(parent)
        self.session = session
        self._full_round = full_round
        self._locked = locked
        self._connected = connected
        self._background = background
        self._last_round = last_round  # (scan, annotations, result) of the last full round
        self._extra = extra  # scan -> more forest columns (the anomaly score) or None
        self._edge = edge  # (snap the object's edge, its growth floor), as full rounds
        self._object_class = object_class  # SegmentOptions.object_class, as full rounds
        self._round_labels: np.ndarray | None = None
        self.enabled = False
        self._scan: napari.layers.Image | None = None
        self._annotations: napari.layers.Labels | None = None
        self._output: napari.layers.Labels | None = None
        self._segmenter: Any = None
        self._extra_seen: np.ndarray | None = None
        self._segmenter_key: tuple | None = None
        self._worker = None
        self._pending = False
        self._stroke_at: float | None = None
        self._stroke_timer = QTimer(self)
        self._stroke_timer.setSingleShot(True)
        self._stroke_timer.setInterval(STROKE_PAUSE_MS)
        self._stroke_timer.timeout.connect(self._start_job)
        self._volume_timer = QTimer(self)
        self._volume_timer.setSingleShot(True)
        self._volume_timer.setInterval(VOLUME_PAUSE_MS)
        self._volume_timer.timeout.connect(self._start_volume)
        self._volume_running = False
        self._paints = 0  # strokes seen: a round's inputs are (this, the model)
        self._round_model: int | None = None  # id of the active model at the last round
        session.tasks.task_finished.connect(lambda _, outcome: self.volume_round_finished(outcome))
        session.model_changed.connect(self._on_model_changed)
        session.score_ready.connect(self._on_score_ready)

    # ------------------------------------------------------------------ wiring
    def follow(self, scan: napari.layers.Image, annotations: napari.layers.Labels,
               output: napari.layers.Labels, round_labels: np.ndarray | None = None) -> None:
        """Watch ``annotations`` (strokes) and write slices of ``scan`` into ``output``.

        ``round_labels`` is the last full round's result (kept, not copied: the plugin's own
        array), whose regions anchor the connect-to-stroke rule on live slices.
        """
        self._round_labels = round_labels
        self._round_model = id(self.session.active_model)
        if self._annotations is not None and not same_layer(self._annotations, annotations):
            self._disconnect()
        if self._annotations is None or not same_layer(self._annotations, annotations):
            annotations.events.paint.connect(self._on_paint)
        self._scan, self._annotations, self._output = scan, annotations, output

    def _followed_layers_gone(self) -> bool:
        """True (and stop following) when the scan or the annotations are no longer in the
        viewer, e.g. closed during the pause: a due round then does nothing, silently."""
        layers = self.session.viewer.layers
        if self._scan is None or self._annotations is None:
            return True
        if self._scan not in layers or self._annotations not in layers:
            self._disconnect()
            return True
        return False

    def _disconnect(self) -> None:
        if self._annotations is not None:
            try:
                self._annotations.events.paint.disconnect(self._on_paint)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._annotations = None

    def set_enabled(self, on: bool) -> None:
        """Turn live mode on or off (off: strokes wait for the Segment button)."""
        self.enabled = bool(on)
        if not on:
            self._stroke_timer.stop()
            self._volume_timer.stop()
            if self._worker is None:  # no slice is due any more
                self.session.live_busy = False

    def volume_round_finished(self, outcome: str = "done") -> None:
        """The task bar's job ended (done, stopped or failed)."""
        if self._volume_running and outcome == "stopped" and self.enabled:
            self._volume_timer.start()  # stopped for a stroke or another job: still due
        self._volume_running = False

    def round_inputs(self) -> tuple[int, int]:
        """The strokes' and the active model's state now, for :meth:`round_done`."""
        return self._paints, id(self.session.active_model)

    def round_done(self, inputs: tuple[int, int]) -> None:
        """A full round on ``inputs`` ended: a volume round due on the same strokes and
        model would only redo it (and hold the task bar a while)."""
        if inputs == self.round_inputs():
            self._volume_timer.stop()

    def _on_model_changed(self) -> None:
        # A new active model (a fit ended): the volume catches up with its features. Saving
        # a model also signals a change, but the model is the same one: nothing to redo.
        if (self.enabled and self._scan is not None
                and id(self.session.active_model) != self._round_model):
            self._round_model = id(self.session.active_model)
            self._volume_timer.start()

    def _on_score_ready(self, scan) -> None:
        # The followed scan's anomaly score came: the volume catches up with its column, as
        # after a fit (the rounds before it went without). Not where rounds do not read it
        # (a CT scan, the box unticked): the round would only redo the last one.
        if (self.enabled and self._scan is not None and same_layer(scan, self._scan)
                and self._extra(self._scan) is not None):
            self._volume_timer.start()

    # ------------------------------------------------------------------ strokes
    def _on_paint(self, _event=None) -> None:
        self._paints += 1
        if not self.enabled or self._scan is None:
            return
        self._stroke_at = self._stroke_at or time.perf_counter()
        # A slice is due: a background job (a fit, the anomaly score) holds from now, so its
        # step in flight ends during the pause rather than beside the slice's work.
        self.session.live_busy = True
        self._volume_timer.stop()
        if self._volume_running:  # the volume round is out of date: stop it, keep the strokes
            self.session.tasks.stop()
        self._stroke_timer.start()

    def _current_slice(self) -> int:
        point = np.asarray(self.session.viewer.dims.point, dtype=float)
        ndim = self._scan.ndim
        data = np.asarray(self._scan.world_to_data(point[-ndim:]), dtype=float)
        return int(np.clip(round(float(data[0])), 0, layer_array(self._scan).shape[0] - 1))

    def _start_job(self) -> None:
        if self._worker is not None:  # a job runs: the next one takes these strokes too
            self._pending = True
            return
        try:
            self._launch_slice()
        finally:  # none started (the layers gone, or an error): nothing holds background jobs
            if self._worker is None:
                self.session.live_busy = False

    def _launch_slice(self) -> None:
        model = self.session.active_model  # None: the ilastik features, as full rounds
        if self._followed_layers_gone():
            return
        ann = np.array(layer_array(self._annotations), copy=True)  # the user paints on
        z = self._current_slice()
        # The slice as the last full round left it: anchors of the connect-to-stroke rule.
        anchors = (np.array(self._round_labels[z], copy=True)
                   if self._round_labels is not None and self._connected() else None)
        background = self._background()
        extra = self._extra(self._scan)  # the full rounds' columns: the same slice
        snap, edge_min_p = self._edge()
        obj = self._object_class()
        key = (id(model), id(self._scan), self.session.device, background,
               None if extra is None else id(extra), snap, edge_min_p, obj)
        self._extra_seen = extra  # held, so that no new array takes its id while keyed
        segmenter = self._segmenter if key == self._segmenter_key else None
        volume = layer_array(self._scan)
        modality = (self._scan.metadata or {}).get("modality")
        cache, device, started = self.session.cache, self.session.device, self._stroke_at
        spacing = scan_from_layer(self._scan).spacing  # what full rounds use (segment_job)
        last = self._last_round()
        last = last if last is not None and last[0] is self._scan else None
        self._stroke_at = None
        self._pending = False

        session = self.session

        def job():
            try:
                return _slice(segmenter)
            finally:  # at once, not when the GUI thread hears of it: a fit waits on this
                session.live_busy = False

        def _slice(seg):
            from ...engine.segment import SegmentOptions, continues_round, live_segmenter
            from ...runtime.progress import drive

            if seg is None:  # its own copy of the model: a full round may use the shared one
                seg = live_segmenter(model, volume, modality=modality, cache=cache,
                                     device=device, spacing=spacing,
                                     options=SegmentOptions(background=background,
                                                            boundary_refine=snap,
                                                            edge_min_p=edge_min_p,
                                                            object_class=obj),
                                     extra_features=extra)
                drive(seg.prepare())
            # As the full round after the pause will: the last round read for unclear
            # strokes and averaged in (momentum).
            cont = last is not None and continues_round(last[1], ann)
            seg.update(ann, last_round=last[2] if cont else None)
            cont = cont and list(last[2].classes) == seg.classes
            previous = last[2].probabilities[:, z] if cont else None
            grown = last[2].grown[z] if cont and last[2].grown is not None else None
            return seg, key, seg.predict_slice(z, anchors, previous, grown), started

        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.returned.connect(self._on_slice)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        session.live_busy = True
        worker.start()

    def _on_slice(self, result) -> None:
        seg, key, pred, started = result
        self._segmenter, self._segmenter_key = seg, key
        out = self._output
        if out is None or out not in self.session.viewer.layers:
            return
        data = out.data
        labels = pred.labels
        locked = [c for c in self._locked() if c in pred.classes]
        if locked:  # as in full rounds: locked classes keep exactly the voxels shown now
            from ...pipeline import keep_locked

            labels = keep_locked(pred.labels, pred.probabilities, pred.classes,
                                 np.asarray(data[pred.index]), locked)[0]
        if data.dtype.kind in "iu" and labels.max(initial=0) <= np.iinfo(data.dtype).max:
            data[pred.index] = labels.astype(data.dtype, copy=False)  # the plugin's own layer
            if self._round_labels is not None and self._round_labels.shape == data.shape:
                # What the plugin wrote, so Accept corrections takes only the user's repaints.
                self._round_labels[pred.index] = labels
            out.refresh()
        seconds = time.perf_counter() - started if started is not None else pred.seconds
        self.slice_updated.emit(pred.index, seconds)

    def _on_error(self, exc: BaseException) -> None:
        from ...runtime.errors import DOCK_HINTS, explain

        self.failed.emit(f"Live segmentation: {explain(exc, DOCK_HINTS).message}")

    def _on_finished(self) -> None:
        self._worker = None
        # Also if the job never ran (a fit must not wait on it); still busy if a stroke came
        # meanwhile and its slice is due.
        self.session.live_busy = self._stroke_timer.isActive()
        if self._pending:
            self._start_job()
        elif self.enabled:
            self._volume_timer.start()

    def _start_volume(self) -> None:
        if not self.enabled:
            return
        if self._followed_layers_gone():
            return
        if self._worker is not None or self._pending or self.session.tasks.busy:
            self._volume_timer.start()  # try again after the next pause
            return
        self._volume_running = bool(self._full_round())

    def close(self) -> None:
        """Stop listening (the dock is closing)."""
        self.set_enabled(False)
        self._disconnect()
        if self._segmenter is not None:
            self._segmenter.close()
            self._segmenter = None

