"""The scan's anomaly score (Reconstruct's output layer) as a column of Segment's forest.

Measured on MR tumours (docs/interactive_benchmarks.md, "The scan's anomaly score as a forest
column"): mean Dice over ten corrections +0.05 to +0.06 on the brains; on CT, where the score
is the contrast density, -0.01, so CT scans do not use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._layers import find_output, layer_array

if TYPE_CHECKING:
    import napari

__all__ = ["anomaly_column", "score_would_help"]


def _is_ct(scan) -> bool:
    from ...engine.normalize import guess_modality

    return guess_modality(layer_array(scan), (scan.metadata or {}).get("modality")) == "CT"


def anomaly_column(viewer: napari.viewer.Viewer, scan) -> np.ndarray | None:
    """The anomaly score layer Reconstruct made for ``scan`` (its data, not copied: the
    engine copies it), when it is on the scan's grid and the scan is not a CT; else None."""
    layer = find_output(viewer, scan.name, "anomaly score")
    if layer is None or layer_array(layer).shape != layer_array(scan).shape or _is_ct(scan):
        return None
    return layer_array(layer)


def score_would_help(viewer: napari.viewer.Viewer, scan) -> bool:
    """An MR scan with no anomaly score yet (Reconstruct makes one, with or without a model)."""
    return find_output(viewer, scan.name, "anomaly score") is None and not _is_ct(scan)
