"""Section 3: reconstruct the scan with the active model; error map and anomaly candidates.

Outputs (plugin-owned, updated on re-run, overlaying the scan with its geometry):
``"<scan> reconstruction"`` (Image, hidden at first: tick its eye to compare with the scan),
``"<scan> error"`` (Image, the plain reconstruction error, a heat overlay, hidden at first),
``"<scan> anomaly score"`` (Image, the calibrated anomaly score: transparent below the
candidate threshold) and ``"<scan> anomalies"`` (Labels, each candidate outlined in cyan in 2D
views). The candidates are listed (volume, peak score); a click moves the view to one.
Without an active model only the anomaly layers are made (the default scores, the denoiser on
MR and the contrast density on CT, need no VAE), so a score is at hand before any fit.

When Segment would use an MR scan's score and there is none (``Session.score_wanted``), this
section makes it on the score bar, in the background, with its current choices: the anomaly
layers come hidden, the selected layer stays selected (the user may be painting), and the
rounds after it use the score. Reconstruct of the same scan with its score ticked stops such
a job (it makes the score itself); a user's Stop is remembered, so the next round does not
start it again for that scan.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QVBoxLayout,
)

from ...pipeline import reconstruct_job
from ._base import Section, checkbox, hint
from ._layers import (
    check_scan_layer,
    find_output,
    output_name,
    same_layer,
    scan_from_layer,
    scan_modality,
    upsert_output,
)

if TYPE_CHECKING:
    from ...engine.infer import ReconstructionResult
    from ...pipeline import JobResult
    from ._session import Session

__all__ = ["ReconstructSection"]


# (shown, engine method, tooltip): the measured choices of docs/anomaly_benchmarks.md.
_METHODS = (
    ("automatic (the best for the scan)", "default",
     "What the benchmark found best for the scan: the denoiser on MR (2-4 min on a CPU, seconds "
     "on a GPU), the contrast density on CT; the model's normative statistics when it holds "
     "them."),
    ("contrast density (seconds)", "contrast",
     "A density model of intensity and its contrast with the surroundings at 2-8 mm. Best on "
     "CT nodules."),
    ("intensity density (seconds)", "intensity",
     "A density model of local intensity features; behind the denoiser on every MR case "
     "measured, for slices too small for it."),
    ("denoiser (2-4 min on a CPU)", "dae",
     "A denoising autoencoder fitted on this scan (three cycles), or the healthy cohort's when "
     "the model holds normative statistics of one; its residual inside the head, normalised "
     "per slice. Finds brain1's tumour (best Dice 0.56-0.67 against 0.04 for any "
     "intensity window) and 8-13 mm spheres darker or brighter than white matter; not for "
     "CT."),
    ("reconstruction error", "error", "The VAE's plain error |x - reconstruction|."),
)


def _error_colormap():
    """Transparent for small errors, through red to yellow for the largest: a heat overlay."""
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[[1.0, 0.1, 0.0, 0.0], [1.0, 0.1, 0.0, 0.0], [1.0, 0.25, 0.0, 0.75],
                [1.0, 1.0, 0.2, 1.0]],
        controls=[0.0, 0.25, 0.6, 1.0],
        name="latentseg error",
    )


def _candidate_colormap():
    """Every anomaly candidate in one colour (cyan), so outlines read at a glance."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: [0.0, 1.0, 1.0, 1.0], 0: [0.0, 0.0, 0.0, 0.0]})


class ReconstructSection(Section):
    """Run the active model on the chosen scan."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.anomalies = QCheckBox("Anomaly score and candidates")
        self.anomalies.setChecked(True)
        self.anomalies.setToolTip("Score every voxel by how unusual it is against normal "
                                  "tissue (calibrated: 3 = one normal voxel in 1000 scores "
                                  "higher) and outline the regions above the threshold.")
        self.method = QComboBox()
        for text, key, tip in _METHODS:
            self.method.addItem(text, key)
            self.method.setItemData(self.method.count() - 1, tip,
                                    Qt.ItemDataRole.ToolTipRole)
        self.method.setToolTip("How the anomaly score is computed (docs/anomaly_benchmarks.md).")
        # Its longest entry would widen the whole dock past a 400 px dock area (clipped text).
        self.method.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method.setMinimumContentsLength(16)
        self.symmetric, self.surface = (checkbox(text, True, tip) for text, tip in (
            ("Lower findings on both sides of the head",
             "Denoiser only: what scores high at mirror-image places across the midline (the "
             "orbits, the skull base) is lowered; a finding on one side, or on the midline, "
             "keeps its score. Untick it to look for bilateral disease."),
            ("Fade findings near the surface (MR)",
             "Denoiser on MR only: scores fade in from 10 to 20 mm inside the head's surface "
             "(the eyes, nose and scalp are not lesions). Untick it for superficial findings, "
             "e.g. in the breast or the skin.")))
        self.with_self = QCheckBox("Also against the scan itself")
        session.model_changed.connect(self._on_model_changed)
        self.candidates = QListWidget()
        self.candidates.setToolTip("Anomaly candidates, highest peak first: click one to go "
                                   "to it.")
        self.candidates.setMaximumHeight(110)
        self.candidates.itemClicked.connect(self._go_to_candidate)
        self.candidates.setVisible(False)
        self._candidate_scan = None
        self.tile = QSpinBox()
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setValue(512)
        self.tile.setSuffix(" px")
        self.tile.setToolTip("Largest slice size processed at once; lower it if the GPU runs "
                             "out of memory.")
        self.run_btn = self.job_button(
            "Reconstruct", "Reconstruct the scan with the active model and map the error; "
            "without a model, the anomaly score alone (no VAE needed for it).",
            self.run)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.anomalies)
        form.addRow("Anomaly score", self.method)
        form.addRow(self.symmetric)
        form.addRow(self.surface)
        form.addRow(self.with_self)
        form.addRow("Tile size", self.tile)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 0, 4, 4)
        lay.addWidget(hint("Coloured in the anomaly score = what looks abnormal against "
                           "normal tissue; the error map (hidden at first) is what the model "
                           "could not reproduce. Results appear as new layers over the scan."))
        lay.addLayout(form)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.summary)
        lay.addWidget(self.candidates)
        self.method.currentIndexChanged.connect(lambda *_: self._update_denoiser_options())
        self.anomalies.toggled.connect(lambda *_: self._update_denoiser_options())
        session.scan_changed.connect(self._update_denoiser_options)
        session.score_wanted.connect(self.score_in_background)
        self._declined: weakref.WeakSet = weakref.WeakSet()  # scans whose score the user stopped
        self._superseded = False  # the background score is being stopped by Reconstruct
        self._background_scan = None  # the scan the background score is (or was last) for
        self._on_model_changed()

    def _denoiser_scores(self) -> bool:
        """Whether the score Reconstruct will make is the denoiser's (as the pipeline picks
        it: the model's normative method, else the denoiser on MR and not on CT)."""
        method = str(self.method.currentData())
        if method != "default":
            return method == "dae"
        model = self.session.active_model
        normative = (model.anomaly or {}).get("normative") if model is not None else None
        if normative:
            return normative.get("method") == "dae"
        layer = self.session.scan_layer()
        return layer is None or scan_modality(layer)[0] == "MR"

    def _update_denoiser_options(self) -> None:
        """The two denoiser-only options are greyed out where another score is made (a CT's
        automatic score, say), so nobody expects them to change it."""
        on = self.anomalies.isChecked() and self._denoiser_scores()
        for box in (self.symmetric, self.surface):
            box.setEnabled(on)

    def _on_model_changed(self) -> None:
        """*Also against the scan itself* means something only with normative statistics."""
        self._update_denoiser_options()
        model = self.session.active_model
        has = bool(model is not None and (model.anomaly or {}).get("normative"))
        self.with_self.setEnabled(has)
        self.with_self.setToolTip(
            "Also fit the score on this scan and rank voxels by the mean of the model's "
            "normative score and the scan's own (the same false-positive rate in all; "
            "denoiser: ~2-4 min more on a CPU)." if has else
            "Needs a model with normative anomaly statistics (section 2); without them the "
            "scan is scored against itself anyway.")

    def run(self) -> bool:
        """Reconstruct the chosen scan in a worker; returns False if it could not start."""
        layer = self.session.scan_layer()
        problem = check_scan_layer(layer)
        if problem:
            show_error(problem)
            return False
        model = self.session.active_model
        anomalies = self.anomalies.isChecked()
        method = str(self.method.currentData())
        if model is None and (not anomalies or method == "error"):
            show_error("No active model: fit one or load a model file in section 2 first (the "
                       "anomaly score alone needs none: tick it, with a score other than the "
                       "reconstruction error).")
            return False
        scan = scan_from_layer(layer)
        lower_symmetric = self.symmetric.isChecked()
        lower_surface = self.surface.isChecked()
        with_self = self.with_self.isChecked() and self.with_self.isEnabled()
        tile = int(self.tile.value())
        device = self.session.device
        background = self.session.score_tasks
        if (anomalies and background.busy and same_layer(self._background_scan, layer)
                and not self.session.tasks.busy):
            self._superseded = True  # this run makes that score: the background one stops
            background.stop()

        def job(stop):
            return reconstruct_job(model, scan, anomalies=anomalies, anomaly_map=anomalies,
                                   anomaly_method=method, tile=tile, device=device,
                                   lower_symmetric=lower_symmetric, with_self=with_self,
                                   lower_surface=lower_surface, stop_event=stop)

        shown: list[bool] = []  # the reconstruction was shown before the score

        def on_yield(ev: dict) -> None:
            if ev.get("partial") is not None:
                shown.append(self._show(layer, ev["partial"], partial=True))

        def done(result: JobResult) -> None:
            self._show(layer, result)

        def stopped() -> None:
            show_info("Anomaly scoring stopped: the reconstruction and error layers are this "
                      "run's, the anomaly layers unchanged." if any(shown) else
                      "Reconstruction stopped: the previous result layers are unchanged.")

        return self.session.tasks.start(f"Reconstructing '{layer.name}'", job, on_return=done,
                                     on_yield=on_yield, on_stopped=stopped)

    def score_in_background(self, layer) -> bool:
        """Make ``layer``'s anomaly score on the score bar, for Segment's next rounds.

        With this section's choices (the reconstruction error, which needs a VAE, becomes the
        automatic score), the model's normative statistics where it holds them, else the
        scan against itself; no reconstruction. On the CPU it waits between its steps while
        a job the user waits on runs. Returns whether it started: not while one runs, for a
        scan whose score the user stopped, or for an unusable scan.
        """
        bar = self.session.score_tasks
        if bar.busy or layer is None or layer in self._declined or check_scan_layer(layer):
            return False
        method = str(self.method.currentData())
        method = "default" if method == "error" else method
        model = self.session.active_model
        model = model if model is not None and (model.anomaly or {}).get("normative") else None
        scan = scan_from_layer(layer)
        lower_symmetric, lower_surface = self.symmetric.isChecked(), self.surface.isChecked()
        with_self = self.with_self.isChecked() and model is not None
        device = self.session.device
        self._superseded, self._background_scan = False, layer

        def job(stop):
            return reconstruct_job(model, scan, anomalies=True, anomaly_map=True,
                                   anomaly_method=method, device=device,
                                   lower_symmetric=lower_symmetric, with_self=with_self,
                                   lower_surface=lower_surface, reconstruction=False,
                                   stop_event=stop)

        def stopped() -> None:
            if not self._superseded:
                self._declined.add(layer)
                show_info(f"The anomaly score of '{layer.name}' was stopped: Segment's rounds "
                          "go on without it (Reconstruct makes it whenever you want).")

        return bar.start(f"Anomaly score of '{layer.name}' for Segment", job,
                         on_return=lambda result: self._show(layer, result, background=True),
                         on_stopped=stopped,
                         hold=self.session.user_waiting if device == "cpu" else None)

    def _show(self, layer, job: JobResult, partial: bool = False,
              background: bool = False) -> bool:
        """Show a job's layers; ``partial``: the reconstruction while the score computes;
        ``background``: the score made for Segment (hidden layers, the selection kept, and
        nothing if the scan is gone or has a score by now). Returns whether anything was
        shown."""
        result: ReconstructionResult | None = job.result  # None: the score alone, no model
        if layer not in self.viewer.layers or (
                background and find_output(self.viewer, layer.name, "anomaly score")):
            if not partial and not background:
                show_error(f"'{layer.name}' was removed while it was being reconstructed; "
                           "the result was dropped.")
            return False
        selected = self.viewer.layers.selection.active
        an = job.anomaly
        if result is not None:
            lo, hi = (float(v) for v in layer.contrast_limits)
            upsert_output(self.viewer, layer, "reconstruction", result.reconstruction, "image",
                          contrast_limits=(lo, hi), colormap="gray", visible=False)
            err = result.error
            top = float(np.percentile(err, 99.5)) if err.size else 1.0
            upsert_output(self.viewer, layer, "error", err, "image",
                          contrast_limits=(0.0, max(top, 1e-3)), colormap=_error_colormap(),
                          blending="translucent", opacity=0.9, visible=an is None)
            parts = [f"Mean error {float(err.mean()):.3f} of the intensity range"]
        else:
            parts = ["No model: the anomaly score alone (fit one for the reconstruction and "
                     "the error map)"]
        if an is not None:
            # Transparent below the threshold: only what is abnormal shows over the scan.
            peak = max(float(an.score.max(initial=0.0)), an.threshold + 1.0)
            score = upsert_output(self.viewer, layer, "anomaly score", an.score, "image",
                                  contrast_limits=(an.threshold, peak),
                                  colormap=_error_colormap(), blending="translucent",
                                  opacity=0.9, visible=not background)
            anom = upsert_output(self.viewer, layer, "anomalies", an.labels, "labels",
                                 opacity=1.0, colormap=_candidate_colormap(),
                                 visible=not background)
            if not background:  # asked for: shown, also where the background made them hidden
                score.visible = anom.visible = True
            anom.contour = 2
            n = len(an.candidates)
            ref = {"normative": ", against the model's normative statistics",
                   "normative+self": ", against the model's normative statistics and the "
                                     "scan itself"}.get(an.mode, "")
            parts.append(f"{n} anomaly candidate{'s' if n != 1 else ''} ({an.method}{ref})")
            self._list_candidates(layer, an.candidates)
        else:
            self.candidates.setVisible(False)
        seconds = ((result.seconds if result is not None else 0.0)
                   + (an.seconds if an is not None else 0.0))  # the score's too
        parts.append(f"{seconds:.1f} s on {job.metrics.get('device', '?')}")
        if partial:
            parts.append("scoring anomalies\u2026")
        if background:
            parts[0] = "Made in the background for Segment (layers hidden)"
        self.summary.setText(" \u00b7 ".join(parts) + ("" if partial else "."))
        if an is not None and not partial:
            self.session.score_ready.emit(layer)
        if background:  # the user may be painting: their layer stays the selected one
            if selected is not None and selected in self.viewer.layers:
                self.viewer.layers.selection.active = selected
            show_info(f"The anomaly score of '{layer.name}' is ready: Segment's next rounds "
                      f"use it. Tick the eye of '{output_name(layer, 'anomaly score')}' to "
                      "see what looks abnormal.")
            return True
        self.viewer.layers.selection.active = layer
        if partial:
            return True
        for note in job.notes:
            show_warning(note)
        show_info("Reconstruction done" + (
            f": '{output_name(layer, 'anomaly score')}' shows what looks abnormal and "
            f"'{output_name(layer, 'anomalies')}' outlines {len(an.candidates)} candidate(s)."
            if an is not None else f": '{output_name(layer, 'error')}' shows where the model "
            "differs from the scan."))
        return True

    def _list_candidates(self, layer, candidates: list[dict]) -> None:
        self.candidates.clear()
        self._candidate_scan = layer
        for c in candidates[:200]:
            item = QListWidgetItem(f"{c['id']}: {c['volume_ml']:.2f} mL, peak "
                                   f"{c['peak_score']:.1f}, slice {int(round(c['centroid'][0]))}")
            item.setData(256, list(c["centroid"]))  # Qt.UserRole
            self.candidates.addItem(item)
        self.candidates.setVisible(bool(candidates))

    def _go_to_candidate(self, item: QListWidgetItem) -> None:
        """Centre the view on a candidate and show its slice."""
        layer = self._candidate_scan
        if layer is None or layer not in self.viewer.layers:
            return
        centre = np.asarray(item.data(256), dtype=float)
        world = np.asarray(layer.data_to_world(centre), dtype=float)
        self.viewer.dims.point = tuple(world[-self.viewer.dims.ndim:])
        self.viewer.camera.center = tuple(world[-3:]) if world.size >= 3 else tuple(world)
