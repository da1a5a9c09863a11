"""Section 4: clusters, few-shot segmentation from painted slices, fine-tuning, next slice.

Layers
------
- ``"<scan> clusters"``, ``"<scan> segmentation"`` (Labels) and ``"<scan> uncertainty"``
  (Image) are plugin-owned outputs on the scan's grid, updated on each run.
- The annotation layer is the user's: *New annotation layer* creates an empty one on the scan's
  grid (same shape, scale, translate, rotate) to paint in: 1 = background, 2, 3... = structures,
  0 = not annotated. The class table names them (layer ``features``) and colours them; the
  segmentation layer takes the same names and colours (class 1, the background by that
  convention, is transparent so the scan shows through) and *Save labels* writes the names.
- Locked classes (a tick in the table) keep their voxels of the segmentation layer as it is now
  in later rounds (:func:`~napari_latentseg.pipeline.keep_locked`).
- *Start from*, autosave and restore: see :mod:`._annotations`.

Accept corrections (the one explicit write to a user's layer)
-------------------------------------------------------------
The user may paint over mistakes in the segmentation layer. *Accept corrections* compares the
segmentation layer's current data with what the plugin last wrote there; every voxel that
differs and holds a label (> 0) is copied into the annotation layer with that label, through
``Labels.data_setitem`` so that Ctrl+Z in napari undoes it. Erased voxels (0) are ignored,
because 0 means "not annotated", not a class. The next *Segment* or *Fine-tune* round then
learns from the corrections.

Models
------
Each round retrains a random forest on the current annotations (seconds). A fine-tuning round
also trains an MLP head with the encoder and returns a new model holding both (the model it
started from is untouched); that model becomes active, so the next round continues from it and
*Save model* keeps the head. Features are cached per (scan, model): the summary says so.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ...engine.segment import continues_round, validate_annotations
from ...engine.segment.extra import given_columns
from ...engine.segment.options import STEADY_EDGE_MIN_P
from ...pipeline import cluster_job, segment_job
from ._annotations import AnnotationBox
from ._base import Section, checkbox
from ._classes import ClassSpinBox
from ._corrections import accept_corrections
from ._layers import (
    check_scan_layer,
    colour_like_annotations,
    find_output,
    layer_array,
    same_layer,
    scan_from_layer,
    upsert_output,
)
from ._live import LiveController
from ._score_column import ScoreColumn
from ._segment_save import ask_save_labels, save_segmentation
from ._suggestion import go_to_suggestion, suggestion_text

if TYPE_CHECKING:
    import napari.layers

    from ...engine.segment import ClusterResult, SegmentationResult
    from ...pipeline import JobResult
    from ._session import Session

__all__ = ["SegmentSection"]

def _kept(res) -> SimpleNamespace:
    """What the next round uses of a result (momentum, what the object gained, the round's
    number; with an object class, each round's own): not the model or the uncertainty. The
    labels are copied: the layer shows (and the user edits) the result's own array."""
    parts = res.object_parts
    return SimpleNamespace(probabilities=res.probabilities, classes=list(res.classes),
                           grown=res.grown, labels=np.array(res.labels, copy=True),
                           round_no=res.round_no,
                           object_parts=None if parts is None else tuple(map(_kept, parts)))


class SegmentSection(Section):
    """Clusters and few-shot segmentation of the chosen scan with the active model."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        # --- clusters
        self.k = QSpinBox()
        self.k.setRange(2, 16)
        self.k.setValue(4)
        self.k.setToolTip("Number of clusters (K).")
        self.method = QComboBox()
        self.method.addItems(["kmeans", "gmm"])
        self.method.setToolTip("k-means or a Gaussian mixture on the model's features.")
        self.cluster_btn = self.job_button(
            "Cluster", "Group voxels into K clusters without any annotation (labels ordered "
            "from dark to bright).", self.cluster)

        # --- few-shot
        self.box = AnnotationBox(session, self.set_segmentation)
        self.annotations, self.new_btn = self.box.combo, self.box.new_btn
        self.classes = self.box.table
        self.finetune_steps = QSpinBox()
        self.finetune_steps.setRange(1, 100_000)
        # 60 steps: a round stays under a minute on a 2-core CPU (lung CT 512x512x61: ~50 s).
        self.finetune_steps.setValue(60)
        self.finetune_steps.setSingleStep(20)
        self.finetune_steps.setToolTip(
            "Steps of training a network head together with the encoder on the annotated "
            "slices. The head is used only if it improves held-out annotations.")
        self.connected = checkbox(
            "Only regions touching a stroke", True,
            "Keep, for each class, only the regions connected to voxels you painted with it "
            "(the object is the one you painted). Untick to find lesions you did not paint.")
        self.snap = checkbox(
            "Snap the object's edge to the image", True,
            "Object-vs-background rounds: voxels within two of the object's edge take the side "
            "whose local mean intensity is closer. More of the object sooner (mean Dice over "
            "ten corrections +0.02 to +0.08 on six tumour benchmarks); a round steps back "
            "more often, mostly on small tumours (docs/interactive_benchmarks.md).")
        self.steady = checkbox(
            "Steady corrections (slower growth)", False, "The snapped edge adds a voxel to the "
            f"object only where the classifier gives it {STEADY_EDGE_MIN_P:g} or more. Since the "
            "strokes' distance it no longer steadies the loop on the benchmarks (15 of 64 runs "
            "with a round that makes the result worse, against 14; mean Dice -0.003).")
        self.snap.toggled.connect(self.steady.setEnabled)  # it gates the snapped edge's growth
        # (snap the object's edge, its growth floor): full rounds and live slices read both here
        self._edge = lambda: (self.snap.isChecked(), STEADY_EDGE_MIN_P * self.steady.isChecked())
        self.prior = checkbox(
            "Unpainted voxels are mostly background", True,
            "With two classes (the background: the class named so, else class 1), voxels you "
            "did not paint count as weak background, so one small background stroke does not "
            "let the object flood the scan, and the object fades beyond a reach from its "
            "strokes (measured through the image: edges count as distance; paint the part "
            "it misses to extend it). With three or more classes they count as weak evidence "
            "of the large classes, so the rarest one learns where it is not. Untick when the "
            "classes fill the scan alike.")
        self.object_class = ClassSpinBox(self.classes)  # 0 ("none"): every class alike
        self.object_class.setToolTip(
            "With three or more classes (a tumour painted beside the air and the body), the "
            "class with this id is segmented against all the others, as with two classes, and "
            "the others among themselves: brain2's tumour 0.22 -> 0.50 mean Dice over ten "
            "corrections, breast1 0.64 -> 0.78, brain1 0.67 -> 0.53.")
        self.score = ScoreColumn(session)
        self.anomaly = self.score.use  # "Use the anomaly score (MR)"
        self.segment_btn = self.job_button(
            "Segment", "Train a classifier on the painted voxels and label every voxel "
            "(seconds; the encoder is not changed).", lambda: self.segment(finetune=False))
        self.finetune_btn = self.job_button(
            "Fine-tune", "A round of training the classifier with the encoder on the current "
            "annotations, then label every voxel. Stop ends the training and still predicts.",
            lambda: self.segment(finetune=True))
        self.next_btn = QPushButton("Next slice")
        self.next_btn.setToolTip("Go to the slice where the segmentation is least certain: "
                                 "annotating it helps most.")
        self.next_btn.clicked.connect(lambda *_: self.go_to_suggestion())
        self.accept_btn = QPushButton("Accept corrections")
        self.accept_btn.setToolTip("Copy what you repainted in the segmentation layer into the "
                                   "annotation layer (undo with Ctrl+Z on that layer).")
        self.accept_btn.clicked.connect(lambda *_: self.accept_corrections())
        self.save_btn = QPushButton("Save labels\u2026")
        self.save_btn.setToolTip("Save the segmentation in the scan's geometry (NIfTI, NRRD, "
                                 "MetaImage).")
        self.save_btn.clicked.connect(lambda *_: ask_save_labels(self))
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.live = LiveController(session, lambda: self.segment(automatic=True),
                                   locked=lambda: self.classes.locked(),
                                   connected=lambda: self.connected.isChecked(),
                                   background=self.background,
                                   edge=self._edge,
                                   object_class=self._object_class,
                                   last_round=lambda: self._last_round,
                                   extra=self.anomaly_column, parent=self)
        self.live_box = checkbox(
            "Live: the slice follows your strokes", False,
            "After a stroke, the slice on screen is segmented again within about a second; "
            "the whole volume follows when you pause. On once a first round has run.")
        self.live_box.toggled.connect(self.live.set_enabled)
        self.live.failed.connect(show_error)

        clusters = QHBoxLayout()
        clusters.setContentsMargins(0, 0, 0, 0)
        clusters.addWidget(self.k)
        clusters.addWidget(self.method)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Clusters", clusters)
        form.addRow(self.cluster_btn)
        form.addRow(QLabel("<b>Few-shot from your annotations</b>"))
        form.addRow(self.box)
        form.addRow(self.connected)
        form.addRow(self.prior)
        form.addRow("Object class", self.object_class)
        form.addRow(self.snap)
        form.addRow(self.steady)
        form.addRow(self.score)
        form.addRow(self.live_box)
        form.addRow("Fine-tune steps", self.finetune_steps)
        buttons = QGridLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.segment_btn, 0, 0)
        buttons.addWidget(self.finetune_btn, 0, 1)
        buttons.addWidget(self.next_btn, 1, 0)
        buttons.addWidget(self.accept_btn, 1, 1)
        buttons.addWidget(self.save_btn, 2, 0, 1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 0, 4, 4)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.summary)

        self.suggestion: dict | None = None
        self._suggestion_scan: napari.layers.Layer | None = None
        self._written: dict[str, np.ndarray] = {}  # output key -> what the plugin last wrote
        self._live_offered = False
        self._score_line: tuple | None = None  # (scan, summary lines, the score's line)
        session.score_ready.connect(self._on_score_ready)
        # (scan layer, its annotations, result) of the last round: the next round averages it
        # in where the object shrinks, if it only adds strokes (SegmentOptions.momentum).
        self._last_round: tuple | None = None

    def _object_class(self) -> int | None:
        return int(self.object_class.value()) or None  # 0: "none"

    def set_busy(self, busy: bool) -> None:
        """Disable the job buttons here and in the annotation box."""
        super().set_busy(busy)
        self.box.set_busy(busy)

    # ------------------------------------------------------------------ checks
    def _scan_and_model(self, need_model: bool = True):
        """The scan layer and the active model (None without one when ``need_model`` is
        False: a forest round on the ilastik features needs no fit)."""
        layer = self.session.scan_layer()
        problem = check_scan_layer(layer)
        if problem:
            show_error(problem)
            return None, None
        model = self.session.active_model
        if model is None and need_model:
            show_error("No active model: fit one or load a model file in section 2 first "
                       "(Segment works without one, on the ilastik features).")
            return None, None
        return layer, model

    def background(self) -> int | str | None:
        """The background class for the prior: None when unticked, the class named so in the
        table, else the engine's rule (class 1 of a two-class task)."""
        from ...engine.segment.prior import background_from_names

        if not self.prior.isChecked():
            return None
        named = background_from_names(self.classes.classes())
        return "auto" if named is None else named

    def anomaly_column(self, scan) -> np.ndarray | None:
        """The anomaly score Reconstruct made for ``scan`` when ticked, else None."""
        return self.score.column(scan)

    # ------------------------------------------------------------------ clusters
    def cluster(self) -> bool:
        """Cluster the scan's voxels into K groups (Labels layer ``"<scan> clusters"``)."""
        layer, model = self._scan_and_model()
        if layer is None:
            return False
        scan = scan_from_layer(layer)
        k, method, device = int(self.k.value()), self.method.currentText(), self.session.device

        def job(stop):
            return cluster_job(model, scan, k=k, method=method, device=device, stop_event=stop)

        def done(job_result: JobResult) -> None:
            result: ClusterResult = job_result.result
            if layer not in self.viewer.layers:
                return
            upsert_output(self.viewer, layer, "clusters", result.labels, "labels", opacity=0.5)
            for note in job_result.notes:
                show_warning(note)
            self.summary.setText(f"{result.k} clusters ({result.method}), ordered from dark "
                                 f"to bright, in {result.seconds:.1f} s.")

        return self.session.tasks.start(f"Clustering '{layer.name}'", job, on_return=done,
                                     on_stopped=lambda: show_info(
                                         "Clustering stopped: nothing was changed."))

    # ------------------------------------------------------------------ annotations
    def new_annotation_layer(self) -> napari.layers.Labels | None:
        """Create an empty annotation layer on the scan's grid (see :class:`AnnotationBox`)."""
        return self.box.new_layer()

    def _annotation_array(self, scan) -> np.ndarray | None:
        ann_layer = self.annotations.layer()
        if ann_layer is None:
            show_error("No annotation layer: press New annotation layer, paint a few slices "
                       "(1 = background, 2, 3\u2026 = structures), then Segment.")
            return None
        ann = np.array(layer_array(ann_layer), copy=True)  # the user may paint meanwhile
        shape = layer_array(scan).shape
        if ann.shape != shape:
            show_error(f"The annotation layer '{ann_layer.name}' has shape {ann.shape} but the "
                       f"scan '{scan.name}' has shape {shape}: choose the annotations made for "
                       "this scan, or press New annotation layer to paint on its grid.")
            return None
        try:
            validate_annotations(ann, shape)
        except ValueError as exc:
            show_error(f"'{ann_layer.name}': {exc}.")
            return None
        return ann

    # ------------------------------------------------------------------ segmentation
    def segment(self, finetune: bool = False, automatic: bool = False) -> bool:
        """Few-shot segmentation (and, with ``finetune``, a fine-tuning round) in a worker;
        ``automatic`` for live mode's volume rounds, which give way to the user's jobs."""
        scan, model = self._scan_and_model(need_model=finetune)
        if scan is None:
            return False
        ann = self._annotation_array(scan)
        if ann is None:
            return False
        image = scan_from_layer(scan)
        steps = int(self.finetune_steps.value()) if finetune else 0
        cache = self.session.cache
        device = self.session.device
        connected, (snap, edge_min_p) = self.connected.isChecked(), self._edge()
        locked, previous = self._locked_and_previous(scan)
        background = self.background()
        last = self._last_round if self._last_round and self._last_round[0] is scan else None
        score = self.anomaly_column(scan)
        obj = self._object_class()
        inputs = self.live.round_inputs()

        def job(stop):
            # A round that only adds strokes continues the last one (momentum); any other
            # starts over. Compared here, off the GUI thread (a whole-volume comparison).
            last_round = last[2] if last is not None and continues_round(last[1], ann) else None
            return segment_job(model, image, ann, finetune_steps=steps,
                               keep_connected_regions=connected, cache=cache, device=device,
                               stop_event=stop, locked=locked, previous=previous,
                               background=background, last_round=last_round,
                               boundary_refine=snap, edge_min_p=edge_min_p,
                               extra_features=score, object_class=obj)

        def done(result: JobResult) -> None:
            self._last_round = (scan, ann, _kept(result.result))
            if score is None:  # made in the background for the next rounds, if it would help
                self.score.request(scan)
            self._show_segmentation(scan, result.result, finetune, score is not None,
                                    automatic)
            self.live.round_done(inputs)

        title = "Fine-tuning" if finetune else "Segmenting"
        return self.session.tasks.start(
            f"{title} '{scan.name}'", job, on_return=done, preemptible=automatic,
            on_stopped=None if automatic else lambda: show_info(
                f"{title} stopped: the previous segmentation and model are unchanged."))

    def _locked_and_previous(self, scan) -> tuple[list[int], np.ndarray | None]:
        """Locked classes and the segmentation they keep (the layer now, with the user's edits)."""
        locked = self.classes.locked()
        pred = find_output(self.viewer, scan.name, "segmentation")
        if not locked:
            return [], None
        if pred is None or layer_array(pred).shape != layer_array(scan).shape:
            show_info("Locked classes are kept from the previous segmentation: there is none "
                      "yet, so this round changes every class.")
            return [], None
        return locked, np.array(layer_array(pred), copy=True)

    def _show_prediction(self, scan, labels: np.ndarray, classes: list[int],
                         named: list[dict] | None = None):
        pred = upsert_output(self.viewer, scan, "segmentation", labels, "labels", opacity=0.5)
        colour_like_annotations(pred, classes, self.annotations.layer(),
                                self.classes.classes(), named)
        self._written[pred.metadata["latentseg_output"]] = np.array(labels, copy=True)
        return pred

    def set_segmentation(self, scan, labels: np.ndarray, classes: list[dict]) -> bool:
        """Show ``labels`` (on ``scan``'s grid) as the segmentation to correct, lock and save.

        Names in ``classes`` that the class table lacks are added to the annotation layer's.
        """
        if self.annotations.layer() is not None and classes:
            self.classes.merge(classes)
        values = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v > 0]
        self._show_prediction(scan, labels, values, classes)
        self.summary.setText(f"Starting segmentation with classes {', '.join(map(str, values))}"
                             ": correct it, lock finished classes, Segment or Save.")
        return True

    def _show_segmentation(self, scan, result: SegmentationResult, finetune: bool,
                           with_score: bool = False, automatic: bool = False) -> None:
        if scan not in self.viewer.layers:
            show_error(f"'{scan.name}' was removed meanwhile; the segmentation was dropped.")
            return
        self.classes.ensure(result.classes)  # a class painted without a row gets one
        selected = self.viewer.layers.selection.active  # new layers would take the selection
        pred = self._show_prediction(scan, result.labels, result.classes)
        ann_layer = self.annotations.layer()
        if ann_layer is not None:
            self.live.follow(scan, ann_layer, pred, self._written.get(
                pred.metadata["latentseg_output"]))
            if not self._live_offered:  # on by default once a first round has run
                self._live_offered = True
                self.live_box.setChecked(True)
        unc = result.uncertainty
        top = float(np.percentile(unc, 99.5)) if unc.size else 1.0
        upsert_output(self.viewer, scan, "uncertainty", unc, "image",
                      contrast_limits=(0.0, max(0.1, min(1.0, top))), colormap="magma",
                      blending="additive", opacity=0.8, visible=False)
        if selected is not None and selected in self.viewer.layers:  # they may paint on
            self.viewer.layers.selection.active = selected
        self.suggestion = dict(result.suggestion)
        self._suggestion_scan = scan
        if result.trained_head:  # forest-only rounds change no model: nothing new to keep
            rounds = (result.model.head or {}).get("rounds", 1)
            origin = f"segmentation round {rounds}" + (" (fine-tuned)" if finetune else "")
            self.session.add_model(result.model, origin)
        used = next((h["features"] for h in result.history if "features" in h), None)
        if used and with_score:  # the engine's words for the column, named as the user knows it
            used = used.replace(given_columns(1), "the anomaly score")
        names = self.classes.names()
        head = (f"'{pred.name}' updated in {result.seconds:.1f} s"
                + (" (features reused)" if result.cache_hit and not finetune else "") + ": "
                + ", ".join(f"{names.get(c) or 'class'} ({c})" for c in result.classes) + ".")
        lines = [head + (f" Features: {used}." if used else "")]
        lines.append(self._suggestion_text())
        score_note = self.score.note(scan, with_score)
        if score_note:
            lines.append(score_note)
        lines.extend(result.notes)
        self.summary.setText("<br>".join(lines))
        self._score_line = (scan, lines, len(lines) - 1 - len(result.notes)) \
            if score_note and self.session.score_tasks.busy else None
        if not automatic:  # one message a round; the engine's notes stay in the summary
            show_info(head + " Details: Segment's summary in the dock.")

    def _on_score_ready(self, scan) -> None:
        """The summary's "being made" line, once the score has come."""
        if self._score_line is not None and same_layer(self._score_line[0], scan):
            _, lines, i = self._score_line
            lines[i] = ("The anomaly score has come: the next rounds use it"
                        + (" (live mode runs one now)." if self.live.enabled else
                           " (press Segment)."))
            self.summary.setText("<br>".join(lines))
            self._score_line = None

    def _suggestion_text(self) -> str:
        return suggestion_text(self.suggestion, self._suggestion_scan)

    # ------------------------------------------------------------------ next slice
    def go_to_suggestion(self) -> bool:
        """Move the viewer to the suggested slice (:func:`._suggestion.go_to_suggestion`)."""
        return go_to_suggestion(self.viewer, self.suggestion, self._suggestion_scan,
                                self.annotations.layer())

    # ------------------------------------------------------------------ corrections
    def accept_corrections(self) -> int:
        """Copy the user's edits of the segmentation layer into the annotation layer
        (:func:`._corrections.accept_corrections`); returns the number of voxels copied."""
        return accept_corrections(self, self._written)

    # ------------------------------------------------------------------ saving
    def save_labels(self, path: str, *, overwrite: bool = False) -> bool:
        """Write the segmentation layer (with the user's edits) in the scan's geometry.

        ``path``: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``; ``overwrite`` replaces an
        existing file (the save dialog has asked the user). Returns whether the job started.
        """
        return save_segmentation(self, path, overwrite=overwrite)
