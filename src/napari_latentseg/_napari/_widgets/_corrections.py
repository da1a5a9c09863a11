"""*Accept corrections*: the one explicit write to a user's layer (see :mod:`._segment`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info

from ._layers import find_output, layer_array

if TYPE_CHECKING:
    from ._base import Section

__all__ = ["accept_corrections"]


def accept_corrections(section: Section, written_by_plugin: dict[str, np.ndarray]) -> int:
    """Copy the user's edits of the Segment ``section``'s segmentation layer into its
    annotation layer; ``written_by_plugin`` (output key -> what the plugin last wrote there)
    is updated, so the same edits are not copied twice.

    Returns
    -------
    int
        The number of voxels copied (0 when nothing was edited or on error).
    """
    scan = section.session.scan_layer()
    pred = find_output(section.viewer, scan.name, "segmentation") if scan else None
    key = pred.metadata.get("latentseg_output") if pred is not None else None
    if pred is None or key not in written_by_plugin:
        show_error("No segmentation to correct yet: press Segment, repaint its mistakes in "
                   "the segmentation layer, then Accept corrections.")
        return 0
    ann = section.annotations.layer()
    current = layer_array(pred)
    if ann is None or layer_array(ann).shape != current.shape:
        show_error("Choose the annotation layer of this scan (same shape) under "
                   "'Annotations' to receive the corrections.")
        return 0
    written = written_by_plugin[key]
    if written.shape != current.shape:
        show_error("The segmentation layer changed shape since it was computed: press "
                   "Segment again.")
        return 0
    changed = (current != written) & (current > 0)
    n = int(changed.sum())
    if n == 0:
        show_info("No corrections found: paint the right label over mistakes in the "
                  f"'{pred.name}' layer first, then Accept corrections.")
        return 0
    index = np.nonzero(changed)
    ann.data_setitem(index, current[index].astype(layer_array(ann).dtype))
    written_by_plugin[key] = np.array(current, copy=True)
    slices = np.unique(index[0]).size if current.ndim == 3 else 1
    show_info(f"Copied {n} corrected voxels on {slices} slice(s) into '{ann.name}' (Ctrl+Z "
              "on that layer undoes it). Press Segment or Fine-tune to learn from them.")
    return n
