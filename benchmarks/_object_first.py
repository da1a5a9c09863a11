"""Probe (session 56): a round of three or more classes whose object class takes the
two-class engine's answer.

A user who paints the air, a tumour and the rest of the body gets the engine's multi-class
round, which has none of the two-class round's object machinery (the adaptive background
prior, the reach, the distance from the object's strokes, the edge step). Here one engine
runs the two-class round on the same strokes, the object against every other painted class
as the background, and another the multi-class round; the object is where the two-class
round puts it, and the voxels the multi-class round gave the object that the two-class
round did not take the multi-class round's next most probable class.

The object class is the rarest class of the truth (the tumour of a ``-3class`` case, the
phantom's lesions): what a user would name as the object. Each engine keeps its own previous
round. Methods ``objfirst-<method>`` of ``bench_interactive.py`` (``<method>`` one of its
engine methods, e.g. ``objfirst-vae-anomaly``); docs/interactive_benchmarks.md, "Rounds of
three or more classes on real scans, and the object from the two-class engine". The engine's
option ``SegmentOptions.object_class`` does the same (it reproduces these runs to the digit).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from _loop_methods import Round

PREFIX = "objfirst-"


def object_class(truth: np.ndarray) -> int:
    """The rarest class of ``truth`` (0 = unlabelled does not count)."""
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    return int(ids[np.argmin(counts)])


class ObjectFirst:
    """Two engine methods made by ``build`` (a fresh one each call), combined per round."""

    def __init__(self, build: Callable[[], object], obj: int) -> None:
        self.two, self.multi = build(), build()
        self.obj = obj
        self.setup_s = self.two.setup_s

    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray) -> Round:
        # The two-class round: the object as class 2, every other painted class as 1.
        two = np.where(ann == 0, 0, np.where(ann == self.obj, 2, 1)).astype(ann.dtype)
        r2 = self.two(two, strokes_round)
        rm = self.multi(ann, strokes_round)
        labels = np.array(rm.labels, copy=True)
        classes = list(rm.classes)
        let_go = (labels == self.obj) & (r2.labels != 2)
        if let_go.any():
            p = np.asarray(rm.probs, dtype=np.float32).reshape((len(classes),) + labels.shape)
            others = np.array([i for i, c in enumerate(classes) if c != self.obj])
            labels[let_go] = np.asarray(classes)[others[p[others][:, let_go].argmax(0)]]
        labels[r2.labels == 2] = self.obj
        return Round(labels, rm.probs, classes, rm.suggestion)
