"""One object among three or more classes: its voxels from a two-class round.

A round of three or more classes (the air, a tumour and the rest of the body) has none of
the object-vs-background round's rules for an object: the adaptive background prior, the
reach, the distance from the object's strokes, the edge step. On real scans its first round
can call most of the head tumour, and the tumour fades while the other classes are
corrected (brain2 as three classes: 844 thousand voxels called tumour, Dice 0.00). With
``SegmentOptions.object_class`` set, a two-class round on the same strokes (that class
against every other painted class as one background) decides where the object is, and the
multi-class round labels the rest: what it gave the object beyond the two-class round's
object takes its next most probable class there. Each round keeps its own last round
(:attr:`.state.SegmentationResult.object_parts`), so both continue as they would alone.
Measured as a benchmark probe (session 56; docs/interactive_benchmarks.md, "Rounds of three
or more classes on real scans"): mean Dice over ten correction rounds brain2 0.22 -> 0.50,
breast1 0.64 -> 0.78, lung1 0.81 -> 0.87, the shipped phantom (its lesions as the object)
0.73 -> 0.78; brain1 0.67 -> 0.53 (its two-class first round is weaker). An option, off by
default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator

import numpy as np

from ...runtime.progress import drive
from . import fewshot
from .options import _FIELDS, SegmentOptions, resolve_options
from .postprocess import normalised_entropy
from .state import SegmentationResult

__all__ = ["segment_iter", "segment", "object_round_applies", "combine", "combine_arrays",
           "two_class_annotations", "part_options", "OBJECT", "REST"]

OBJECT, REST = 2, 1  # the two-class round's ids


def object_round_applies(options: SegmentOptions, annotations: np.ndarray) -> str | None:
    """None when ``options.object_class`` takes the two-class round this time, else why not
    (a note for the user; "" when no object class is asked for)."""
    obj = options.object_class
    if obj is None:
        return ""
    painted = np.unique(np.asarray(annotations)[np.asarray(annotations) > 0])
    if int(obj) not in painted:
        return f"object class {obj} is not painted: a plain round of the painted classes"
    if len(painted) < 3:
        return (f"object class {obj} with {len(painted)} painted classes: the two-class "
                "round itself")
    return None


def part_options(options: SegmentOptions) -> tuple[SegmentOptions, SegmentOptions]:
    """The options of the two-class round and of the round of all classes."""
    inner = dataclasses.replace(options, object_class=None)
    return dataclasses.replace(
        inner, background=None if options.background is None else REST), inner


def two_class_annotations(annotations: np.ndarray, obj: int) -> np.ndarray:
    """The strokes of class ``obj`` as :data:`OBJECT`, every other painted class as
    :data:`REST` (0 stays not painted)."""
    ann = np.asarray(annotations)
    return np.where(ann == 0, 0, np.where(ann == obj, OBJECT, REST)).astype(np.uint8)


def segment_iter(model, volume: np.ndarray, annotations: np.ndarray,
                 options: SegmentOptions | None = None, *,
                 previous: SegmentationResult | None = None,
                 **kwargs) -> Generator[dict, None, SegmentationResult]:
    """:func:`.fewshot.segment_iter`, with ``options.object_class`` taken from a two-class
    round in rounds of three or more classes (see the module). Same arguments and result;
    the result's ``object_parts`` holds the two rounds."""
    legacy = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    opts = resolve_options(options, legacy)
    ann = np.asarray(annotations)
    why = object_round_applies(opts, ann)
    if why is not None:
        res = yield from fewshot.segment_iter(model, volume, ann, opts, previous=previous,
                                              **kwargs)
        if why:
            res.notes.append(why)
        return res
    obj = int(opts.object_class)
    parts = getattr(previous, "object_parts", None)
    prev_two, prev_multi = parts if parts is not None else (None, previous)
    two_opts, inner = part_options(opts)
    two = two_class_annotations(ann, obj)
    r2 = yield from fewshot.segment_iter(model, volume, two, two_opts, previous=prev_two,
                                         **kwargs)
    rm = yield from fewshot.segment_iter(model, volume, ann, inner, previous=prev_multi,
                                         **kwargs)
    return combine(r2, rm, obj)


def combine(r2: SegmentationResult, rm: SegmentationResult, obj: int) -> SegmentationResult:
    """The multi-class result ``rm`` with class ``obj`` where the two-class result ``r2``
    has its object; the other classes' probabilities share what ``r2`` leaves, in ``rm``'s
    proportions."""
    labels, p, let_go = combine_arrays(
        rm.labels, rm.probabilities, rm.classes,
        np.asarray(r2.probabilities)[list(r2.classes).index(OBJECT)],
        np.asarray(r2.labels) == OBJECT, obj)
    note = (f"class {obj} from a two-class round (it against the other painted classes), "
            "the other classes from the round of all of them")
    return dataclasses.replace(
        rm, labels=labels, probabilities=p, uncertainty=normalised_entropy(p),
        history=list(rm.history) + list(r2.history)
        + [{"stage": "object", "class": obj, "voxels": int(np.count_nonzero(labels == obj)),
            "let_go": int(let_go)}],
        notes=list(dict.fromkeys(list(r2.notes) + list(rm.notes) + [note])),
        seconds=r2.seconds + rm.seconds, cache_hit=r2.cache_hit and rm.cache_hit,
        grown=None, object_parts=(r2, rm))


def combine_arrays(labels: np.ndarray, probabilities: np.ndarray, classes: list[int],
                   p_object: np.ndarray, in_two: np.ndarray, obj: int
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`combine` on arrays of any grid (a volume, or one slice for live feedback).

    ``labels`` / ``probabilities`` (classes first) / ``classes``: the round of all classes;
    ``p_object``: the two-class round's probability of its object, ``in_two`` where it
    labelled the object. Returns new labels and probabilities, and the number of voxels the
    round of all classes gave the object that went to their next most probable class.
    """
    k = list(classes).index(obj)
    others = np.array([i for i in range(len(classes)) if i != k])
    p = np.array(probabilities, dtype=np.float32, copy=True)
    p_obj = np.asarray(p_object, dtype=np.float32)
    rest = p[others].sum(0)
    # Where the multi-class round left the others nothing, they share the rest alike.
    share = np.where(rest[None] > 1e-6, p[others] / np.maximum(rest, 1e-6)[None],
                     np.float32(1.0 / len(others)))
    p[others] = share * (1.0 - p_obj)[None]
    p[k] = p_obj
    out = np.array(labels, copy=True)
    let_go = (out == obj) & ~in_two
    if let_go.any():
        out[let_go] = np.asarray(classes, dtype=out.dtype)[others[
            p[others][:, let_go].argmax(0)]]
    out[in_two] = obj
    return out, p, int(np.count_nonzero(let_go))


def segment(model, volume: np.ndarray, annotations: np.ndarray,
            options: SegmentOptions | None = None, *, progress: Callable | None = None,
            **kwargs) -> SegmentationResult:
    """Blocking version of :func:`segment_iter`."""
    return drive(segment_iter(model, volume, annotations, options, **kwargs), progress)
