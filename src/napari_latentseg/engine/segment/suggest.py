"""What to annotate next: the slice where the prediction is least sure."""

from __future__ import annotations

import numpy as np

from .postprocess import grown_box

__all__ = ["suggest_slices", "object_region", "object_end_slice", "toward_the_object"]


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
    weighted = unc * fg  # once, not once per axis (a CT: 16 M voxels)
    per_axis = []
    for axis in range(unc.ndim):
        other = tuple(a for a in range(unc.ndim) if a != axis)
        s = weighted.sum(axis=other)
        n = np.count_nonzero(fg, axis=other)
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

    doubt = probs[_most_painted(ann, classes)] < sure
    region = np.zeros(doubt.shape, dtype=bool)
    box = grown_box(doubt, 2)
    if box is not None:  # grown within the doubt's box only: the same region, less work
        region[box] = ndi.binary_dilation(doubt[box], iterations=2)
    if body is not None:
        region &= np.asarray(body, dtype=bool)
    return region if region.any() else body


def _most_painted(annotations: np.ndarray, classes: list[int]) -> int:
    """Index (in ``classes``) of the class with the most painted voxels: the background."""
    ann = np.asarray(annotations)
    return int(np.argmax([np.count_nonzero(ann == c) for c in classes]))


def toward_the_object(suggestion: dict, labels: np.ndarray, annotations: np.ndarray,
                      classes: list[int], uncertainty: np.ndarray | None = None) -> dict:
    """``suggestion``, or the slice past an end of the object (:func:`object_end_slice`)
    when the suggested slice is not within one slice of the object.

    The most uncertain slice is the better choice near the object (breast1: the tumour's
    next predicted slice, where the end rule would send the user past the tumour's true
    end); far from it, the object's missed neighbour is.
    """
    if suggestion.get("index") is None or np.ndim(labels) != 3 or len(labels) < 2:
        return suggestion
    bg = classes[_most_painted(annotations, classes)]
    lab = np.asarray(labels)
    axis, index = int(suggestion["axis"]), int(suggestion["index"])
    near = np.take(lab, range(max(0, index - 1), min(lab.shape[axis], index + 2)), axis=axis)
    if np.any((near > 0) & (near != bg)):
        return suggestion
    end = _end_slice(lab, np.asarray(annotations), bg)
    if end is None:
        return suggestion
    score = float(np.mean(uncertainty[end])) if uncertainty is not None else 0.0
    return dict(suggestion, axis=0, index=end, score=score,
                reason="the object ends on a slice you annotated: is it on the next one?")


def object_end_slice(labels: np.ndarray, annotations: np.ndarray,
                     classes: list[int]) -> int | None:
    """The unannotated axial slice just past an end of the object, when that end is a slice
    the user annotated (None otherwise).

    The object (every class but the most painted one, usually the background) rarely ends
    exactly on an annotated slice: more often the classifier, taught by that slice, misses
    the object's next one (brain2, 6.5 mm slices: slice 8 annotated, the tumour's 226
    voxels on slices 9-10 all missed, and the uncertainty sent the user to slice 3). Of the
    two ends, the one with more object on its annotated slice.
    """
    return _end_slice(np.asarray(labels), np.asarray(annotations),
                      classes[_most_painted(annotations, classes)])


def _end_slice(lab: np.ndarray, ann: np.ndarray, bg: int) -> int | None:
    obj = (lab > 0) & (lab != bg)
    area = obj.reshape(len(obj), -1).sum(1)
    zs = np.flatnonzero(area)
    if not zs.size:
        return None
    painted = ann.reshape(len(ann), -1).any(1)
    best, best_area = None, -1
    for end, step in ((int(zs[0]), -1), (int(zs[-1]), 1)):
        nxt = end + step
        if not (painted[end] and 0 <= nxt < len(painted)) or painted[nxt]:
            continue
        if area[end] > best_area:
            best, best_area = nxt, int(area[end])
    return best
