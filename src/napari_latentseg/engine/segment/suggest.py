"""What to annotate next: the slice where the prediction is least sure."""

from __future__ import annotations

import numpy as np

__all__ = ["suggest_slices", "object_region"]


def suggest_slices(uncertainty: np.ndarray, annotations: np.ndarray,
                   mask: np.ndarray | None = None) -> dict:
    """The unannotated slice with the highest mean foreground uncertainty, per axis.

    Returns
    -------
    dict
        ``{"axis": a, "index": i, "score": s, "per_axis": [{"axis", "index", "score"}, ...]}``
        for the best slice overall; ``index`` is None when every slice is annotated.
    """
    unc = np.asarray(uncertainty, dtype=np.float32)
    fg = np.ones(unc.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    ann = np.asarray(annotations) > 0
    per_axis = []
    for axis in range(unc.ndim):
        other = tuple(a for a in range(unc.ndim) if a != axis)
        s = (unc * fg).sum(axis=other)
        n = fg.sum(axis=other)
        score = np.where(n > 0, s / np.maximum(n, 1), -1.0)
        annotated = ann.any(axis=other)
        score[annotated] = -1.0
        idx = int(np.argmax(score))
        per_axis.append({"axis": axis, "index": idx if score[idx] >= 0 else None,
                         "score": float(score[idx]) if score[idx] >= 0 else None})
    candidates = [p for p in per_axis if p["index"] is not None]
    best = max(candidates, key=lambda p: p["score"]) if candidates else \
        {"axis": 0, "index": None, "score": None}
    return dict(best, per_axis=per_axis)


def object_region(probs: np.ndarray, ann: np.ndarray, classes: list[int],
                   body: np.ndarray | None, sure: float = 0.9) -> np.ndarray | None:
    """Where the next annotation can help: the "foreground" of the slice suggestion.

    Voxels where the most painted class (usually the background) is below ``sure``, grown by
    two voxels, inside the body. Averaging uncertainty over the whole body sends the user to
    the outermost slices (vertex, lung apex), which look like nothing annotated yet; painting
    them as background taught the forest nothing about the object (brain1, simulated loop:
    Dice 0.59 -> 0.13 in 3 rounds, against 0.59 -> 0.81 with this region). Falls back to
    the body when nothing is in doubt.
    """
    from scipy import ndimage as ndi

    counts = [np.count_nonzero(ann == c) for c in classes]
    region = ndi.binary_dilation(probs[int(np.argmax(counts))] < sure, iterations=2)
    if body is not None:
        region &= np.asarray(body, dtype=bool)
    return region if region.any() else body
