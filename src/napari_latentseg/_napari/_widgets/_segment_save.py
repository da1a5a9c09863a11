"""Saving the Segment section's result in the scan's geometry (with its class names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ...io import save_labels
from ._layers import find_output, layer_array, source_geometry

if TYPE_CHECKING:  # the Segment section (not imported: it imports this module)
    from ._base import Section

__all__ = ["ask_save_labels", "save_segmentation"]


def ask_save_labels(section: Section) -> None:
    """Ask where to save the segmentation, then save it (overwriting what the dialog
    confirmed)."""
    scan = section.session.scan_layer()
    if scan is None or find_output(section.viewer, scan.name, "segmentation") is None:
        show_error("No segmentation to save yet: press Segment first.")
        return
    src = (scan.metadata or {}).get("source_path")
    folder = Path(src).parent if src else Path.home()
    default = folder / f"{scan.name.replace(' ', '_')}_segmentation.nii.gz"
    path, _ = QFileDialog.getSaveFileName(
        section, "Save the segmentation", str(default),
        "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)")
    if path:
        save_segmentation(section, path, overwrite=True)  # the dialog asked before replacing a file


def save_segmentation(section: Section, path: str, *, overwrite: bool = False) -> bool:
    """Write the segmentation layer (with the user's edits) in the scan's geometry.

    Parameters
    ----------
    path : str
        ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` file.
    overwrite : bool
        Replace an existing file (the save dialog has asked the user).

    Returns
    -------
    bool
        Whether the save job started.
    """
    scan = section.session.scan_layer()
    pred = find_output(section.viewer, scan.name, "segmentation") if scan else None
    if pred is None:
        show_error("No segmentation to save yet: press Segment first.")
        return False
    data = np.array(layer_array(pred), copy=True)
    try:
        geometry = source_geometry(scan, data.shape)
    except ValueError as exc:
        show_error(f"Cannot save: the scan's geometry is unusable ({exc}).")
        return False
    reference = (scan.metadata or {}).get("source_path")
    table = section.classes.classes() or (pred.metadata or {}).get("label_classes") or []

    def job(stop):
        yield {"stage": "save", "message": f"writing {Path(path).name}"}
        present = set(np.flatnonzero(np.bincount(data.ravel())).tolist()) if table else set()
        classes = [c for c in table if c["value"] in present] or None  # names of what is in
        return save_labels(path, data, geometry, classes=classes, overwrite=overwrite,
                           reference=reference if isinstance(reference, str) else None)

    def done(written) -> None:
        named = " with its class names" if table else ""
        show_info(f"Saved the segmentation to {written}{named}, in the geometry of "
                  f"'{scan.name}' (it overlays the scan in other viewers).")

    return section.session.tasks.start("Saving the labels", job, on_return=done,
                                 stoppable=False)
