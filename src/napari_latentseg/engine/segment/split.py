"""Rounds of three or more classes: the rarest class segmented again as an object.

A user who paints a tumour and the tissues around it (three or more classes) gets the
multi-class forest, without the rules that make the object-vs-background loop converge:
the background prior, the object's geodesic reach, momentum where the object shrinks and
the edge snapped to the image. Here the multi-class round runs as before, then the class it
finds rarest is segmented once more against all the others merged into one background, by
the object-vs-background round itself. That round decides where the rarest class is; the
multi-class round decides among the others.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from types import SimpleNamespace

import numpy as np

from .options import SegmentOptions
from .postprocess import normalised_entropy
from .state import SegmentationResult

__all__ = ["SPLIT", "splits", "split_round"]

# On: rounds of three or more classes segment their rarest class again as an object
# (docs/interactive_benchmarks.md, "The rarest class as an object").
SPLIT = True
# Probe: the rarest class's probability is this share the multi-class round's and the rest
# the object round's, and the labels are taken again from the mixed probabilities.
MIX_WHOLE = 0.0


def splits(opts: SegmentOptions, annotations: np.ndarray, has_head: bool) -> bool:
    """Whether a round with these options and annotations is split (forest rounds of three
    or more classes with a prior, no head)."""
    if not SPLIT or opts.background is None or opts.classifier != "forest":
        return False
    if opts.trains_head or has_head:
        return False
    ids = np.unique(np.asarray(annotations))
    return int(np.count_nonzero(ids > 0)) >= 3


def split_round(once: Callable, model, volume: np.ndarray, annotations: np.ndarray,
                opts: SegmentOptions, previous: SegmentationResult | None,
                **kw) -> Generator[dict, None, SegmentationResult]:
    """The multi-class round, then its rarest class against the rest (generator).

    ``once`` runs one unsplit round (``fewshot``'s), with keywords ``kw`` (modality, cache,
    stop_event, spacing) passed on; ``previous`` (the last split round's result) gives the
    object round its momentum.
    """
    ann = np.asarray(annotations)
    whole = yield from once(model, volume, ann, opts, previous=None, **kw)
    classes = list(whole.classes)
    labels = np.asarray(whole.labels)
    counts = np.array([np.count_nonzero(labels == c) for c in classes])
    r = int(np.argmin(counts))
    rid = classes[r]
    bg_id = classes[0] if r else classes[1]
    ann_obj = np.where(ann == rid, rid, np.where(ann > 0, bg_id, 0)).astype(ann.dtype)
    part = yield from once(model, volume, ann_obj, _object_options(opts, bg_id),
                           previous=_as_object_round(previous, rid, bg_id), **kw)
    out = _combine(whole, part, r, rid, ann)
    out.history.append({"stage": "split", "object": rid, "object_voxels": int(
        np.count_nonzero(out.labels == rid))})
    out.notes.append(f"class {rid}, the rarest, was segmented again against the other "
                     f"classes merged (object-vs-background rules: prior, reach, momentum, "
                     f"edge step)")
    return out


def _object_options(opts: SegmentOptions, bg_id: int) -> SegmentOptions:
    import dataclasses

    return dataclasses.replace(opts, background=int(bg_id))


def _as_object_round(previous: SegmentationResult | None, rid: int, bg_id: int):
    """The last split round seen as the object round it contained (for its momentum), or
    None (no previous round, or its rarest class was another)."""
    if previous is None or rid not in list(previous.classes):
        return None
    split = [h for h in previous.history if h.get("stage") == "split"]
    if not split or split[-1]["object"] != rid:
        return None
    p = np.asarray(previous.probabilities)
    p_obj = p[list(previous.classes).index(rid)]
    lab = np.asarray(previous.labels)
    order = sorted([bg_id, rid])
    probs = np.stack([p_obj if c == rid else 1.0 - p_obj for c in order])
    labels = np.where(lab == rid, rid, bg_id).astype(lab.dtype)
    return SimpleNamespace(labels=labels, probabilities=probs, classes=order,
                           grown=previous.grown)


def _combine(whole: SegmentationResult, part: SegmentationResult, r: int, rid: int,
             ann: np.ndarray) -> SegmentationResult:
    """The object round's rarest class over the multi-class round's other classes."""
    classes = list(whole.classes)
    pw = np.asarray(whole.probabilities)
    p_obj = np.asarray(part.probabilities)[list(part.classes).index(rid)]
    if MIX_WHOLE:
        p_obj = (1.0 - MIX_WHOLE) * p_obj + MIX_WHOLE * pw[r]
    others = [i for i in range(len(classes)) if i != r]
    rest = pw[others]
    norm = np.maximum(rest.sum(0), 1e-6)
    probs = np.empty_like(pw)
    probs[r] = p_obj
    for j, i in enumerate(others):
        probs[i] = (1.0 - p_obj) * rest[j] / norm
    labels = np.asarray(whole.labels).copy()
    obj = np.asarray(part.labels) == rid
    if MIX_WHOLE:
        from .annotations import ClassTable
        from .postprocess import labels_from_probabilities

        table = ClassTable(np.asarray(classes, dtype=labels.dtype))
        labels, _ = labels_from_probabilities(probs, ann.astype(labels.dtype), table, True)
        obj = labels == rid
    was = (labels == rid) & ~obj  # the multi-class round's rarest voxels the object left
    if was.any():
        ids = np.asarray(classes, dtype=labels.dtype)[others]
        labels[was] = ids[rest[:, was].argmax(0)]
    labels[obj] = rid
    painted = ann > 0
    labels[painted] = ann[painted]
    return SegmentationResult(
        labels, probs, normalised_entropy(probs), classes, whole.model, part.suggestion,
        whole.history + part.history, whole.seconds + part.seconds,
        whole.notes + [f"object round: {n}" for n in part.notes], whole.cache_hit,
        part.grown)
