"""Section 1: open a scan from a file or a DICOM folder (with a series picker)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QVBoxLayout, QWidget

from ...io import list_dicom_series, read_volume
from .._reader import layer_data_from_volume, widen_contrast_range
from ._base import Section, button_row, hint

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["ScanSection"]

FILE_FILTER = ("Medical images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm *.ima);;"
               "All files (*)")


class ScanSection(Section):
    """Open a NIfTI/NRRD/MetaImage file or a DICOM series; the new layer becomes the scan."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.open_btn = self.job_button(
            "Open file\u2026", "Open a NIfTI, NRRD, MetaImage or DICOM file.", self._ask_file)
        self.dicom_btn = self.job_button(
            "Open DICOM folder\u2026", "Choose a folder of DICOM files; if it holds several "
            "series you pick one below.", self._ask_folder)
        self.series = QComboBox()
        self.series.setToolTip("Series found in the DICOM folder, largest first.")
        self.load_series_btn = self.job_button(
            "Load series", "Open the chosen DICOM series.", self.load_selected_series)
        self.series_row = QWidget()
        row = QHBoxLayout(self.series_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.series, 1)
        row.addWidget(self.load_series_btn)
        self.series_row.setVisible(False)
        self._folder: str | None = None
        self._series: list[dict] = []

        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 0, 4, 4)
        lay.addLayout(button_row(self.open_btn, self.dicom_btn))
        lay.addWidget(self.series_row)
        lay.addWidget(hint("The scan keeps its voxel spacing and position, so every result "
                           "overlays it here and in other viewers. Or: File > Open Sample > "
                           "napari-latentseg > Head phantom."))

    # ------------------------------------------------------------------ dialogs
    def _start_dir(self) -> str:
        layer = self.session.scan_layer()
        src = (layer.metadata or {}).get("source_path") if layer is not None else None
        return str(Path(src).parent) if src else str(Path.home())

    def _ask_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a scan", self._start_dir(),
                                              FILE_FILTER)
        if path:
            self.open_path(path)

    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a DICOM folder", self._start_dir())
        if folder:
            self.list_series(folder)

    # ------------------------------------------------------------------ actions
    def open_path(self, path: str, series_uid: str | None = None) -> bool:
        """Read ``path`` (file or DICOM folder) in a worker and add it as the scan.

        Returns False if another job is running.
        """
        name = Path(path).name

        def job(stop):
            yield {"stage": "read", "message": f"reading {name}"}
            # A single DICOM file stands for its series, as in Slicer and ITK-SNAP.
            return read_volume(path, series_uid=series_uid, whole_series=True)

        return self.session.tasks.start(f"Opening {name}", job, on_return=self._add_volume,
                                     stoppable=False)

    def _add_volume(self, vol) -> None:
        data, kwargs, kind = layer_data_from_volume(vol)
        layer = (self.viewer.add_labels if kind == "labels" else self.viewer.add_image)(
            data, **kwargs)
        if kind != "labels":
            widen_contrast_range(layer)  # the opening window is a start, not a limit
        if kind == "labels":
            show_info(f"'{layer.name}' looks like a label file and was opened as labels; open "
                      "the image it belongs to as the scan.")
            return
        self.session.scan.set_layer(layer)

    def list_series(self, folder: str) -> bool:
        """List the DICOM series under ``folder`` (in a worker) and offer them to choose from."""

        def job(stop):
            yield {"stage": "scan", "message": f"looking for DICOM series in {Path(folder).name}"}
            return list_dicom_series(folder)

        def done(series: list[dict]) -> None:
            self._folder, self._series = folder, list(series)
            if not series:
                show_error(f"No DICOM images were found in {folder}: choose the folder that "
                           "holds the .dcm files (or one above it).")
                self.series_row.setVisible(False)
                return
            if len(series) == 1:
                self.series_row.setVisible(False)
                uid = series[0]["uid"]
                self.session.tasks.after(lambda: self.open_path(folder, uid))
                return
            self.series.clear()
            for s in series:
                shape = " \u00d7 ".join(str(v) for v in (s.get("shape") or []))
                self.series.addItem(f"{s.get('description') or '(no description)'} \u00b7 "
                                    f"{s.get('modality') or '?'} \u00b7 {shape}")
            self.series_row.setVisible(True)
            show_info(f"{len(series)} series in {Path(folder).name}: choose one under "
                      "'Open a scan' and press Load series.")

        return self.session.tasks.start("Reading the DICOM folder", job, on_return=done,
                                     stoppable=False)

    def load_selected_series(self) -> bool:
        """Open the series chosen in the series picker."""
        i = self.series.currentIndex()
        if self._folder is None or not 0 <= i < len(self._series):
            show_error("No DICOM series to load: press Open DICOM folder\u2026 first.")
            return False
        return self.open_path(self._folder, self._series[i]["uid"])
