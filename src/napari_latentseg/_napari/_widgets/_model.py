"""Section 2: fit a VAE on image layers (live loss curve, Stop), or load / save a model file.

A fit runs on the dock's fit bar, alongside the main bar: while it runs the user can open
scans, segment (on the ilastik features, or the active model's) and reconstruct with an
earlier model; only a second fit waits. When it ends, its model becomes active and the next
segmentation round of three or more classes uses its features (in live mode the volume is
segmented again by itself); an object against its background keeps the ilastik set.

Stop and the previous model: a stopped fit returns its best model so far (nothing is lost),
but it does not push aside a model the user already had. If a model was active, it stays
active and the stopped fit's model is added to the model list, one click away; if there was
none, the stopped fit's model becomes active. A fit that diverged is not used at all.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
)

from ...engine.normalize import fitted_modalities, modality_note
from ...engine.train import FitOptions, fit_iter
from ...models.checkpoint import load_model, next_version_path, save_model
from ...models.config import CONFIGS, DEFAULT_CONFIG
from ._base import Section, button_row, hint
from ._layers import check_scan_layer, layer_array, scan_from_layer
from ._loss_plot import LossPlot
from ._pickers import LayerChecklist

if TYPE_CHECKING:
    from ...engine.train import FitResult
    from ._session import Session

__all__ = ["ModelSection"]

_WARN = "#d9901a"  # amber: readable on napari's dark and light themes
_REASONS = {
    "steps": "all steps done",
    "time": "time limit reached",
    "early-stopping": "validation loss stopped improving",
    "stopped": "stopped",
    "decoder phase": "decoder still training (segmentation can use it now)",
}


def _normative_note(model, stopped: bool = False) -> str:
    """What a finished fit's message adds when it learned normative statistics."""
    if stopped:
        return " Normative statistics were stopped: the model holds none."
    norm = (model.anomaly or {}).get("normative")
    if not norm:
        return ""
    what = "a denoiser" if norm["method"] == "dae" else f"{norm['method']} density"
    return (f" It holds normative anomaly statistics ({what} of {norm['n_scans']} scan(s)): "
            "Reconstruct scores new scans against them.")


class _DeviceProbe(QObject):
    """Finds the available devices in a background thread (importing torch takes seconds)."""

    found = Signal(list)

    def start(self) -> None:
        def probe() -> None:
            from ...runtime.device import available_devices, warm_up

            try:
                devices = available_devices()
            except Exception:  # a broken CUDA install: the CPU is always there
                devices = ["cpu"]
            try:
                self.found.emit(devices)
            except RuntimeError:  # the dock was closed meanwhile
                pass
            try:  # now, not in the first background fit beside the user's strokes
                warm_up()
            except Exception:  # only a head start: the fit imports it anyway
                pass

        threading.Thread(target=probe, name="latentseg-device-probe", daemon=True).start()


class ModelSection(Section):
    """Choose image layers, configuration and device; fit, load or save the active model."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        # --- active model
        self.model_list = QComboBox()
        self.model_list.setToolTip("Models of this session; the active one is used by "
                                   "sections 3 and 4.")
        self.model_list.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_list.setMinimumContentsLength(8)
        self.model_list.activated.connect(self._on_pick_model)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)

        # --- fit options
        self.fit_on = LayerChecklist(self.viewer, session.watcher)
        self.fit_on.setToolTip("Tick the scans to fit on (e.g. several healthy scans). "
                               "With none ticked, the scan chosen at the top is used.")
        self.config = QComboBox()
        for name, cfg in CONFIGS.items():
            self.config.addItem(name)
            self.config.setItemData(self.config.count() - 1, cfg.description,
                                   Qt.ItemDataRole.ToolTipRole)
        self.config.setCurrentText(DEFAULT_CONFIG)
        self.config_info = hint("")
        self.config.currentTextChanged.connect(self._on_config)
        self.device_box = QComboBox()
        self.device_box.addItem("cpu")
        self.device_box.currentTextChanged.connect(session.set_device)
        self.device_box.setToolTip("Where every job computes (fit, reconstruct, cluster, "
                                   "segment). CUDA is offered only when a CUDA GPU is "
                                   "present (detected in the background).")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(FitOptions.steps)
        self.steps.setSingleStep(50)
        self.steps.setToolTip("Training steps; the fit may end earlier when the validation "
                              "loss stops improving. As many decoder-only steps follow: "
                              "sharper reconstructions (a brain MRI with cpu-2d-fine: 28.3 dB "
                              "PSNR against 27.3 dB), while segmentation can already use the "
                              "fitted encoder.")
        self.minutes = QSpinBox()
        self.minutes.setRange(0, 24 * 60)
        self.minutes.setSpecialValueText("none")
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip("Optional time limit; the fit ends at the steps or the time "
                                "limit, whichever comes first (60 % of it for the fit, the "
                                "rest for the decoder).")
        self.normative = QCheckBox("Normative anomaly statistics")
        self.normative.setToolTip(
            "After the fit, learn what the ticked scans look like (tick healthy ones) and "
            "keep it in the model: Reconstruct then scores a new scan against them rather "
            "than against itself (the contrast density on CT, seconds a scan; on MR a "
            "denoiser fitted three times on all of them, the best at finding implanted "
            "spheres kept: 3-15 min on a CPU).")
        self.fit_btn = self.job_button("Fit", "Fit a new model on the ticked scans (no labels "
                                       "needed). Progress and Stop are at the bottom.", self.fit)
        self.load_btn = self.job_button("Load model\u2026", "Open a model file (.pt).",
                                        self._ask_load)
        self.save_btn = self.job_button("Save model\u2026", "Save the active model; existing "
                                        "files are never overwritten.", self._ask_save)
        self.plot = LossPlot()

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Active model", self.model_list)
        form.addRow(self.model_info)
        form.addRow("Fit on", self.fit_on)
        form.addRow("Configuration", self.config)
        form.addRow(self.config_info)
        form.addRow("Device", self.device_box)
        form.addRow("Steps", self.steps)
        form.addRow("Time limit", self.minutes)
        form.addRow(self.normative)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 0, 4, 4)
        lay.addLayout(form)
        lay.addLayout(button_row(self.fit_btn, self.load_btn, self.save_btn))
        lay.addWidget(self.plot)

        self._fitting = False
        self._interim = None  # the running fit's encoder model, once handed over
        self._main_busy = False
        self._probe = _DeviceProbe(self)
        self._probe.found.connect(self._set_devices)
        self._probe.start()
        self._on_config(self.config.currentText())
        self._apply_theme()
        session.model_changed.connect(self._on_model_changed)
        session.scan_changed.connect(self._follow_scan)
        session.scan_changed.connect(self._on_model_changed)  # the modality check
        self._on_model_changed()
        self._follow_scan()

    # ------------------------------------------------------------------ small helpers
    def _apply_theme(self) -> None:
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            self.plot.set_colors(theme.text.as_hex(), theme.current.as_hex(),
                                 theme.warning.as_hex())
        except Exception:  # unknown theme: keep the plot's defaults
            pass

    def _set_devices(self, devices: list) -> None:
        current = self.device_box.currentText()
        self.device_box.clear()
        self.device_box.addItems([str(d) for d in devices])
        if current in devices:
            self.device_box.setCurrentText(current)

    def device(self) -> str:
        """The chosen device (the session's: every section computes there)."""
        return self.session.device

    def _follow_scan(self) -> None:
        # Unless the user ticked several scans, fit on the scan chosen at the top.
        scan = self.session.scan_layer()
        if scan is not None and len(self.fit_on.checked_layers()) <= 1:
            self.fit_on.set_checked([scan])

    def _on_config(self, name: str) -> None:
        cfg = CONFIGS.get(name)
        self.config_info.setText(cfg.description if cfg else "")

    def _on_pick_model(self, index: int) -> None:
        if 0 <= index < len(self.session.models):
            self.session.set_active(self.session.models[index])

    def _on_model_changed(self) -> None:
        session = self.session
        self.model_list.clear()
        for entry in session.models:
            self.model_list.addItem(entry.label)
        entry = session.active_entry
        if entry is None:
            self.model_list.setPlaceholderText("no model yet")
            self.model_list.setCurrentIndex(-1)
            self.model_info.setText("<i>No model yet: fit one on your scan (no labels needed) "
                                    "or load a model file.</i>")
            return
        self.model_list.setCurrentIndex(session.models.index(entry))
        model = entry.model
        info = model.info or {}
        lines = [f"<b>{model.describe()}</b>"]
        details = []
        if info.get("best_val_l1") is not None:
            details.append(f"validation L1 {float(info['best_val_l1']):.4f}")
        if info.get("stop_reason"):
            details.append(_REASONS.get(info["stop_reason"], str(info["stop_reason"])))
        fitted = fitted_modalities(info)
        if fitted:
            details.append(" and ".join(fitted) + " scans")
        if info.get("device"):
            details.append(f"fitted on {info['device']}")
        if details:
            lines.append(" \u00b7 ".join(details))
        scan = session.scan_layer()
        note = scan is not None and modality_note(fitted, layer_array(scan),
                                                  (scan.metadata or {}).get("modality"))
        if note:  # said before a job, not only after it
            lines.append(f"<span style='color:{_WARN}'>{note}</span>")
        if model.head:
            classes = model.head.get("classes", [])
            lines.append(f"segmentation head for classes {', '.join(map(str, classes))} "
                         f"(round {model.head.get('rounds', 1)})")
        lines.append(f"file: {entry.path}" if entry.path else "not saved yet")
        self.model_info.setText("<br>".join(lines))
        if not self._fitting:
            self.plot.set_history(model.history or [],
                                  caption="This model has no training history.")

    # ------------------------------------------------------------------ busy state
    def set_busy(self, busy: bool) -> None:
        """The main bar's job started or ended: Fit stays disabled while a fit runs."""
        self._main_busy = busy
        super().set_busy(busy)
        self.fit_btn.setEnabled(not busy and not self._fitting)

    def set_fitting(self, fitting: bool) -> None:
        """The fit bar's job started or ended (one fit at a time)."""
        self._fitting = fitting
        self.fit_btn.setEnabled(not fitting and not self._main_busy)

    # ------------------------------------------------------------------ fit
    def fit(self) -> bool:
        """Fit a model on the ticked scans (or the chosen scan) in a thread worker."""
        layers = self.fit_on.checked_layers() or [self.session.scan_layer()]
        for layer in layers:
            problem = check_scan_layer(layer)
            if problem:
                show_error(problem)
                return False
        # Each layer read once: its array, modality and the voxel size Reconstruct will score
        # new scans with (the file's geometry), for the normative statistics.
        scans = [scan_from_layer(layer) for layer in layers]
        volumes = [scan.data for scan in scans]
        modalities = [scan.modality for scan in scans]
        spacings = [scan.spacing for scan in scans]
        sources = [(layer.metadata or {}).get("source_path") or layer.name for layer in layers]
        config = self.config.currentText()
        steps = int(self.steps.value())
        minutes = float(self.minutes.value()) or None
        try:
            options = FitOptions(steps=steps, minutes=minutes, device=self.device(), seed=0,
                                 eval_every=max(5, min(50, steps // 10)))
        except ValueError as exc:
            show_error(f"Cannot fit: {exc}")
            return False
        names = ", ".join(f"'{layer.name}'" for layer in layers)
        self.plot.clear(total=steps + options.planned_decoder_steps,
                        caption=f"Fitting {config} on {names}\u2026")

        normative = self.normative.isChecked()
        normative_stopped: list[bool] = []  # set in the worker, read when the job returns

        def job(stop):
            result = yield from fit_iter(volumes, config, options, modalities=modalities,
                                         sources=sources, stop_event=stop)
            if normative and result.steps and result.reason not in ("stopped", "diverged"):
                from ...pipeline import normative_job
                from ...runtime.progress import Cancelled

                try:
                    yield from normative_job(result.model, volumes, spacings,
                                             modalities=modalities, stop_event=stop)
                except Cancelled:  # Stop during the statistics keeps the fitted model
                    normative_stopped.append(True)
            return result

        def on_yield(ev: dict) -> None:
            if "step" in ev and ev.get("total"):
                # The fit's own count: its decoder phase depends on the crops.
                self.plot.total = int(ev["total"])
            if ev.get("model") is not None:
                self._encoder_ready(ev["model"])
            elif ev.get("stage") == "fit":
                self.plot.add(int(ev["step"]), ev.get("loss"), ev.get("val"))

        tasks = self.session.fit_tasks
        # On the CPU the fit gives way to the user's other jobs (GPU fits leave it free).
        hold = self.session.user_waiting if self.device() == "cpu" else None
        started = tasks.start(f"Fitting {config}", job, on_yield=on_yield, hold=hold,
                              on_return=lambda r: self._fit_done(r, bool(normative_stopped)))
        if started:
            self.set_fitting(True)
            tasks.after(self._fit_ended)
        return started

    def _fit_ended(self) -> None:
        """The fit bar's job ended, whatever the outcome."""
        self.set_fitting(False)
        interim, self._interim = self._interim, None
        if interim is not None and interim in self.session.models:  # the decoder phase failed
            self.session.replace_model(interim, interim.model, "encoder only", keep_path=True)

    def _encoder_ready(self, model) -> None:
        """The main fit ended and the decoder trains on: segmentation can use the encoder."""
        self._interim = self.session.add_model(model, "decoder still training")
        show_info("The VAE's encoder is fitted: segmentation rounds of three or more "
                  "classes now use its features (an object against its background keeps the "
                  "ilastik set: there they added nothing on the benchmarks). The decoder "
                  "trains on for sharper reconstructions; the model is updated when it ends.")

    def _fit_done(self, result: FitResult, normative_stopped: bool = False) -> None:
        self._fitting = False  # so the new model's history replaces the live curve
        session = self.session
        interim, self._interim = self._interim, None
        if interim is not None and interim in session.models:
            # The encoder was handed over already: the finished model takes its place (beside
            # it, if the user saved the encoder's model meanwhile).
            stopped = result.reason == "stopped"
            origin = "decoder phase stopped" if stopped else "fitted"
            if interim.path:
                session.add_model(result.model, origin,
                                  activate=session.active_entry is interim)
            else:
                session.replace_model(interim, result.model, origin)
            ended = "stopped in the decoder phase" if stopped else "finished"
            show_info(f"Fit {ended}: {result.steps} steps, then {result.decoder_steps} of "
                      f"the decoder, in {result.seconds:.0f} s; the model takes the place of "
                      "the encoder's. Save it with Save model\u2026 to reuse it on "
                      f"other scans.{_normative_note(result.model, normative_stopped)}")
            return
        if result.reason == "diverged":
            show_warning("The fit diverged (the loss became infinite) and was discarded; the "
                         "active model is unchanged. Try fewer steps or another configuration.")
            return
        if result.steps == 0:
            show_info("The fit was stopped before its first step: nothing changed.")
            return
        stopped = result.reason == "stopped"
        previous = session.active_entry
        origin = f"stopped at step {result.steps}" if stopped else "fitted"
        keep_previous = stopped and previous is not None
        session.add_model(result.model, origin, activate=not keep_previous)
        if keep_previous:
            show_info(f"Fit stopped after {result.steps} steps. The active model is unchanged "
                      f"({previous.model.describe()}); the stopped fit's best model is in the "
                      "'Active model' list if you want to use or save it.")
        elif stopped:
            show_info(f"Fit stopped after {result.steps} steps: its best model so far is now "
                      "active. Save it with Save model\u2026 to keep it.")
        else:
            show_info(f"Fit finished after {result.steps} steps "
                      f"({_REASONS.get(result.reason, result.reason)}) in "
                      f"{result.seconds:.0f} s; the new model is active (segmentation "
                      "rounds of three or more classes use its features). Save it with "
                      "Save model\u2026 "
                      f"to reuse it on other scans."
                      f"{_normative_note(result.model, normative_stopped)}")

    # ------------------------------------------------------------------ files
    def _default_model_path(self) -> Path:
        layer = self.session.scan_layer()
        src = (layer.metadata or {}).get("source_path") if layer is not None else None
        folder = Path(src).parent if src else Path.home()
        stem = layer.name.replace(" ", "_") if layer is not None else "latentseg"
        model = self.session.active_model
        cfg = model.config.name if model is not None else "model"
        return next_version_path(folder / f"{stem}_{cfg}.pt")

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a model", str(
            self._default_model_path().parent), "Model files (*.pt *.pth);;All files (*)")
        if path:
            self.load_model_file(path)

    def _ask_save(self) -> None:
        if self.session.active_model is None:
            show_error("No model to save: fit one or load a model file first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the active model", str(self._default_model_path()),
            "Model files (*.pt)", options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.save_model_file(path)

    def load_model_file(self, path: str) -> bool:
        """Load a model file in a worker; it becomes the active model."""
        device = self.device()

        def job(stop):
            yield {"stage": "load", "message": f"loading {Path(path).name}"}
            return load_model(path, device=device)

        def done(model) -> None:
            self.session.add_model(model, "loaded", str(path))
            show_info(f"Loaded {Path(path).name}: {model.describe()}.")

        return self.session.tasks.start("Loading the model", job, on_return=done, stoppable=False)

    def save_model_file(self, path: str) -> bool:
        """Save the active model to ``path`` (or the next free ``-vN`` name) in a worker."""
        entry = self.session.active_entry
        if entry is None:
            show_error("No model to save: fit one or load a model file first.")
            return False
        target = Path(path)
        if not target.suffix:
            target = target.with_suffix(".pt")
        free = next_version_path(target)
        model = entry.model

        def job(stop):
            yield {"stage": "save", "message": f"saving {free.name}"}
            return save_model(model, free)

        def done(written: Path) -> None:
            self.session.mark_saved(entry, str(written))
            extra = (f" ({target.name} exists and models are never overwritten)"
                     if free != target else "")
            show_info(f"Model saved as {written}{extra}.")

        return self.session.tasks.start("Saving the model", job, on_return=done, stoppable=False)
