"""The result of an anomaly map (split from :mod:`~napari_latentseg.engine.anomaly`, which
re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AnomalyResult"]


@dataclass
class AnomalyResult:
    """Outputs of :func:`anomaly_iter`, all on the input's grid.

    Attributes
    ----------
    score : np.ndarray
        float32, higher = more abnormal: ``-log10`` of the estimated fraction of normal head
        voxels scoring higher (0 outside the head).
    threshold : float
        Score above which voxels are candidates (its false-positive rate is ``fpr``).
    labels : np.ndarray
        Candidates labelled 1..n (uint16), components under ``min_volume_ml`` dropped.
    candidates : list of dict
        Per candidate: ``id``, ``voxels``, ``volume_ml``, ``peak_score``, ``centroid``
        (voxel index, array-axis order), sorted by peak score.
    method, mode : str
        The method used; ``"self"``, ``"normative"`` or ``"normative+self"``.
    error : np.ndarray or None
        The plain reconstruction error map (normalised units), when a model was given.
    mask : np.ndarray
        The head / body mask scored.
    seconds : float
        Wall time.
    info : dict
        ``fpr``, the calibration used, ``surface_mm`` (the fade at the head's surface
        applied, or None).
    """

    score: np.ndarray
    threshold: float
    labels: np.ndarray
    candidates: list[dict]
    method: str
    mode: str
    error: np.ndarray | None = None
    mask: np.ndarray | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
