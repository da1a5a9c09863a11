"""Live slices for rounds with an object class (``SegmentOptions.object_class``).

A full round with an object class is two rounds on the same strokes (:mod:`.objectround`):
the object against every other painted class, and the round of all classes. The live slice
does the same with two :class:`~.live.LiveSegmenter` (sharing the feature cache) and combines
their slices as the full round combines its volumes, so the slice shown while painting is the
slice the next full round gives (with the connect-to-stroke rule and the reach off, as for
:class:`~.live.LiveSegmenter`). Each part continues its own part of the last round.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator

import numpy as np

from .live import LiveSegmenter, SlicePrediction
from .objectround import (
    OBJECT,
    REST,
    combine_arrays,
    object_round_applies,
    part_options,
    two_class_annotations,
)
from .options import SegmentOptions

__all__ = ["ObjectLiveSegmenter", "live_segmenter"]


def live_segmenter(model, volume: np.ndarray, *, options: SegmentOptions | None = None,
                   **kwargs):
    """A :class:`~.live.LiveSegmenter`, or an :class:`ObjectLiveSegmenter` when ``options``
    name an object class; same arguments."""
    if options is not None and options.object_class is not None:
        return ObjectLiveSegmenter(model, volume, options=options, **kwargs)
    return LiveSegmenter(model, volume, options=options, **kwargs)


class ObjectLiveSegmenter:
    """:class:`~.live.LiveSegmenter`'s interface for ``options.object_class``.

    Parameters
    ----------
    model, volume, **kwargs
        As :class:`~.live.LiveSegmenter` (``cache``, ``modality``, ``device``, ``spacing``,
        ``extra_features``).
    options : SegmentOptions
        With ``object_class`` set.

    Notes
    -----
    Updates whose strokes do not take the two-class round (the object not painted, fewer
    than three classes) are plain live updates, as the full round is then a plain round.
    """

    def __init__(self, model, volume: np.ndarray, *, options: SegmentOptions, **kwargs) -> None:
        if options is None or options.object_class is None:
            raise ValueError("ObjectLiveSegmenter needs options with an object_class")
        self.options = options
        two_opts, inner = part_options(options)
        self.multi = LiveSegmenter(model, volume, options=inner, **kwargs)
        # The same cache: the two parts' ilastik columns are computed once.
        kwargs["cache"] = self.multi.cache
        self.two = LiveSegmenter(model, volume, options=two_opts, **kwargs)
        self._parts: tuple | None = None  # the last round's (two-class, all classes) parts
        self._split = False  # the last update took the object from the two-class part

    @property
    def ready(self) -> bool:
        """Features are cached: updates and slice predictions are fast."""
        return self.multi.ready and self.two.ready

    @property
    def classes(self) -> list[int]:
        """The class ids of the last :meth:`update` (empty before one)."""
        return self.multi.classes

    @property
    def fitted(self) -> bool:
        """A forest has been fitted on annotations."""
        return self.multi.fitted

    def prepare(self, stop_event: threading.Event | None = None
                ) -> Generator[dict, None, None]:
        """Compute and cache the features of the whole volume (generator, stoppable)."""
        yield from self.multi.prepare(stop_event)
        yield from self.two.prepare(stop_event)

    def update(self, annotations: np.ndarray, stop_event: threading.Event | None = None,
               last_round=None) -> int:
        """As :meth:`.LiveSegmenter.update`: both parts refit, each reading its own part of
        ``last_round`` (its ``object_parts``; a plain last round continues the part of all
        classes, as in :func:`.objectround.segment_iter`)."""
        ann = np.asarray(annotations)
        if object_round_applies(self.options, ann) is not None:
            self._split, self._parts = False, None
            return self.multi.update(ann, stop_event, last_round)
        parts = getattr(last_round, "object_parts", None)
        prev_two, prev_multi = parts if parts is not None else (None, last_round)
        used = self.multi.update(ann, stop_event, prev_multi)
        self.two.update(two_class_annotations(ann, int(self.options.object_class)),
                        stop_event, prev_two)
        self._split, self._parts = True, (prev_two, prev_multi)
        return used

    def predict_slice(self, index: int, anchors: np.ndarray | None = None,
                      previous: np.ndarray | None = None,
                      grown: np.ndarray | None = None) -> SlicePrediction:
        """As :meth:`.LiveSegmenter.predict_slice`.

        With the object from the two-class part, ``previous`` and ``grown`` (the combined
        last round's) are not used: each part averages in its own part of the last round
        given to :meth:`update`. ``anchors`` (the displayed slice) anchor the two-class part
        as object / rest, and the part of all classes by that part's own last labels when
        there are some.
        """
        if not self._split:
            return self.multi.predict_slice(index, anchors, previous, grown)
        t0 = time.perf_counter()
        z, obj = int(index), int(self.options.object_class)
        prev_two, prev_multi = self._parts
        a_two = a_multi = None
        if anchors is not None:
            a = np.asarray(anchors)
            a_two = np.where(a == obj, OBJECT, REST).astype(np.uint8)
            a_multi = np.asarray(prev_multi.labels[z]) if _continues(
                prev_multi, self.multi, a.shape) else a
        s2 = self.two.predict_slice(z, a_two, *_last_slice(prev_two, self.two, z))
        sm = self.multi.predict_slice(z, a_multi, *_last_slice(prev_multi, self.multi, z))
        labels, probs, _ = combine_arrays(
            sm.labels, sm.probabilities, sm.classes,
            s2.probabilities[s2.classes.index(OBJECT)], s2.labels == OBJECT, obj)
        return dataclasses.replace(sm, labels=labels, probabilities=probs,
                                   seconds=time.perf_counter() - t0)

    def close(self) -> None:
        """Give the model copies back their default memory layout."""
        self.multi.close()
        self.two.close()


def _continues(last, seg: LiveSegmenter, slice_shape: tuple[int, ...]) -> bool:
    """``last`` is a round of ``seg``'s classes on its grid."""
    return (last is not None and list(last.classes) == seg.classes
            and np.shape(last.labels)[1:] == tuple(slice_shape))


def _last_slice(last, seg: LiveSegmenter, z: int):
    """(previous, grown) of slice ``z`` from ``last`` for ``seg``, or (None, None)."""
    if not _continues(last, seg, seg.volume.shape[1:]):
        return None, None
    grown = getattr(last, "grown", None)
    return (np.asarray(last.probabilities)[:, z],
            None if grown is None else np.asarray(grown)[z])
