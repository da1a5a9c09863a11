"""Live few-shot feedback: after a stroke, the displayed slice in well under a second.

A full round (:func:`~.fewshot.segment_iter`) predicts every voxel; while the user paints,
only the slice on screen needs an answer. :class:`LiveSegmenter` keeps the forest features of
one (image, model) pair cached, refits the forest on the annotated voxels (their features are
read from the cache) and predicts single slices. The dock shows that slice at once and lets a
full round follow in the background.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ...models.checkpoint import VAEModel
from .annotations import ClassTable
from .boundary import refine_object_boundary, smoothed_image
from .cache import FeatureCache
from .forest import ForestFeatures, forest_predict, training_set
from .gpu_forest import on_device
from .local import applies, corrections, local_slice, round_after
from .nomodel import features_only_model
from .options import SegmentOptions
from .postprocess import blend_momentum, keep_connected
from .runner import FeatureRunner
from .state import matching_labels
from .strokemaps import with_stroke_distances
from .unclear import training_rows

__all__ = ["LiveSegmenter", "SlicePrediction"]


@dataclass
class SlicePrediction:
    """One slice's labels and class probabilities (``(n_classes, y, x)``)."""

    index: int
    labels: np.ndarray
    probabilities: np.ndarray
    classes: list[int]
    seconds: float


class LiveSegmenter:
    """Slice-by-slice few-shot predictions from cached features.

    Parameters
    ----------
    model : VAEModel or None
        A fitted model (not modified; its features are computed once); None: the ilastik
        features alone, as a round without a model.
    volume : np.ndarray
        The image (z, y, x), in its own units.
    modality : str, optional
        For the model's normaliser.
    cache : FeatureCache, optional
        Shared with full rounds, so they reuse the same features.
    options : SegmentOptions, optional
        ``max_per_class``, ``seed``, ``vae_features`` (``"auto"``: the VAE's columns once an
        update has three or more classes) and the background prior's fields are used.
    device : str, optional
        Where the private copy of the model computes (``auto``, ``cpu``, ``cuda``...);
        default: the model's own device.
    spacing : tuple of float, optional
        Voxel size (mm, z y x), for the background prior's margin.
    extra_features : np.ndarray, optional
        More forest columns on the volume's grid, as a full round's (``segment_iter``).

    Notes
    -----
    Not thread-safe: one caller (the dock's live worker) at a time. ``update`` and
    ``predict_slice`` need :meth:`prepare` to have run (it computes the features of the
    whole volume once; without room in the cache, each slice's features are computed on
    demand, which is slower but still correct).
    """

    def __init__(self, model: VAEModel | None, volume: np.ndarray, *,
                 modality: str | None = None,
                 cache: FeatureCache | None = None,
                 options: SegmentOptions | None = None, device: str | None = None,
                 spacing: tuple[float, ...] | None = None,
                 extra_features: np.ndarray | None = None) -> None:
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"live segmentation needs a 3D volume, got shape {vol.shape}")
        self.options = options or SegmentOptions()
        if model is None:  # the ilastik set alone, as a round without a model
            model = features_only_model(vol, modality)
            self.options = dataclasses.replace(self.options, vae_features=False)
        if model.config.spatial_dims != 2:
            raise ValueError("live segmentation needs a 2D (slice-wise) model; full rounds "
                             "work with every model")
        self.volume = vol
        self.spacing = spacing
        self.cache = cache if cache is not None else FeatureCache()
        # A private copy: the runner switches the network's memory layout while it works,
        # and full rounds may run on the caller's model meanwhile.
        work = copy.deepcopy(model)
        if device is not None:
            from ...runtime.device import resolve_device

            work.to(resolve_device(device))
        self._run = FeatureRunner(work, vol, modality)
        self._extra = extra_features
        # The forest's columns, with and without the VAE's (``vae_features="auto"`` picks by
        # the classes, known at the first update; until then the ilastik set, the usual
        # object-vs-background case).
        self._sets: dict[bool, ForestFeatures] = {}
        self._features = self._feature_set(self.options.uses_vae(2))
        self._forest = None
        self._read = None
        self._table: ClassTable | None = None
        self._annotations: np.ndarray | None = None
        self._object: int | None = None
        self._local = False  # the next full round keeps only changes near corrections

    def _feature_set(self, vae: bool) -> ForestFeatures:
        feats = self._sets.get(vae)
        if feats is None:
            feats = self._sets[vae] = ForestFeatures(self._run, self.cache, vae, self._extra)
        elif feats.cached is None and self.cache is not None:
            feats.cached = self.cache.get(feats.key)  # a full round may have filled it since
        return feats

    @property
    def ready(self) -> bool:
        """Features are cached: updates and slice predictions are fast."""
        return self._features.cached is not None

    @property
    def classes(self) -> list[int]:
        """The class ids of the last :meth:`update` (empty before one)."""
        return list(self._table.classes) if self._table is not None else []

    @property
    def fitted(self) -> bool:
        """A forest has been fitted on annotations."""
        return self._forest is not None

    def prepare(self, stop_event: threading.Event | None = None
                ) -> Generator[dict, None, None]:
        """Compute and cache the features of the whole volume (generator, stoppable)."""
        yield from self._features.fill_cache(stop_event)

    def update(self, annotations: np.ndarray, stop_event: threading.Event | None = None,
               last_round=None) -> int:
        """Refit the forest on ``annotations`` (same shape; 0 = not annotated).

        ``last_round``: the full round these annotations continue (its ``labels`` and
        ``classes``), whose labels tell which painted voxels look unclear (:mod:`.unclear`),
        as the next full round will read them. Returns the number of annotated voxels used.
        Raises ``ValueError`` for annotations that cannot train a classifier (no voxel, a
        single class).
        """
        ann = np.asarray(annotations)
        table = ClassTable.from_annotations(ann, self.volume.shape)
        ann = ann.astype(table.dtype, copy=False)
        # The columns a full round of these classes reads: the first update with three or
        # more classes (``vae_features="auto"``) stores the VAE's, as prepare() did the others.
        self._features = self._feature_set(self.options.uses_vae(len(table)))
        for _ in self._features.fill_cache(stop_event):
            pass
        rng = np.random.default_rng(self.options.seed)
        # The same training set as a full round (background prior included), so the live
        # slice is the slice the next round gives.
        feats = with_stroke_distances(self._features, ann, table.classes, self.spacing,
                                      self.options)
        last = matching_labels(last_round, ann.shape, table.classes)
        rows, _ = training_rows(ann, table.classes, self.options, feats, last)
        ts = training_set(feats, ann, table, self.options, rng, self.spacing, stop_event,
                          rows)
        self._forest = on_device(ts.fit(self.options.seed), self._features.run.device)
        self._read = feats  # what the forest reads, the strokes' distances included
        self._table, self._annotations = table, ann
        # The object's class index where the full round's momentum applies ("shrink").
        self._object = (1 - ts.background_index
                        if ts.prior and len(table) == 2 else None)
        # Whether the next full round keeps only the changes its corrections touch.
        self._local = (last is not None and self._object is not None
                       and applies(self.options, round_after(last_round), self.spacing,
                                   self.volume.shape)
                       and bool(corrections(ann, last).any()))
        return int(len(ts.y) - ts.prior)

    def predict_slice(self, index: int, anchors: np.ndarray | None = None,
                      previous: np.ndarray | None = None,
                      grown: np.ndarray | None = None) -> SlicePrediction:
        """Labels and probabilities of axial slice ``index`` (painted voxels keep their label).

        Parameters
        ----------
        index : int
            The axial slice.
        anchors : np.ndarray, optional
            The slice's labels from the last full round (which applied the 3D
            connect-to-stroke rule). With them, the rule holds on the slice too: a region of
            class ``c`` that touches neither a stroke of ``c`` on this slice nor a voxel the
            last round gave ``c`` goes to its next most probable class, so look-alikes the
            volume round removed do not come back between rounds.
        previous : np.ndarray, optional
            The slice's probabilities ``(n_classes, y, x)`` from the last full round, when
            the strokes since only add to its annotations: averaged in as a full round does
            (``options.momentum``, ``momentum_where``, ``momentum_multiclass``), so the
            slice does not shrink now and grow back when the round arrives. Ignored when its
            shape differs.
        grown : np.ndarray, optional
            The slice of the last round's ``grown`` (what the object gained in it): let go
            at once, as the full round does (``fewshot.FRESH_SHRINKS_AT_ONCE``).
        """
        if self._forest is None or self._table is None:
            raise RuntimeError("call update(annotations) before predict_slice")
        z = int(index)
        if not 0 <= z < self.volume.shape[0]:
            raise IndexError(f"slice {z} is outside 0..{self.volume.shape[0] - 1}")
        t0 = time.perf_counter()
        zs = np.array([z])
        shape = (1,) + self.volume.shape[1:]
        n = len(self._table)
        rows, more = self._read.predict_rows(zs)
        probs = forest_predict(self._forest, rows, shape, n, more=more)[:, 0]
        self._blend(probs, previous, grown)
        ann = self._annotations[z]
        painted = ann > 0
        if painted.any():
            rows, cols = np.nonzero(painted)
            probs[:, rows, cols] = 0.0
            probs[self._table.index(ann[rows, cols]), rows, cols] = 1.0
        classes = np.asarray(self._table.classes, dtype=self._table.dtype)
        labels = classes[probs.argmax(0)]
        if anchors is not None:
            seeds = np.where(painted, ann, np.asarray(anchors).astype(ann.dtype, copy=False))
            labels = keep_connected(labels[None], probs[:, None], seeds[None],
                                    self._table.classes)[0][0]
        if self.options.boundary_refine and self._object is not None:
            # The full round's edge step: in-plane, so the slice alone gives the same.
            cls = self._table.classes
            refine_object_boundary(labels[None], smoothed_image(
                self._features.cached, self._run, 0, slice(z, z + 1)), ann[None],
                cls[self._object], cls[1 - self._object],
                p_object=probs[self._object][None], min_p=self.options.edge_min_p)
        if self._local and anchors is not None and previous is not None \
                and np.shape(previous) == probs.shape:
            labels, probs = local_slice(labels, probs, np.asarray(anchors).astype(
                labels.dtype, copy=False), np.asarray(previous, np.float32), ann)
        return SlicePrediction(z, labels, probs, self._table.classes,
                               time.perf_counter() - t0)

    def _blend(self, probs: np.ndarray, previous: np.ndarray | None,
               grown: np.ndarray | None) -> None:
        from . import fewshot  # its switch, read when used (the benchmark's ablation sets it)

        if previous is None or np.shape(previous) != probs.shape:
            return
        # As full rounds ("shrink-far" acts as "shrink" on a slice: the reach is a full
        # round's).
        weight, shrink = self.options.momentum_for(len(probs), self._object is not None)
        if weight <= 0:
            return
        spare = None
        if grown is not None and shrink and fewshot.FRESH_SHRINKS_AT_ONCE \
                and np.shape(grown) == probs.shape[1:]:
            spare = np.asarray(grown, bool)[None]
        blend_momentum(probs[:, None], np.asarray(previous, np.float32)[:, None],
                       weight, self._object if shrink else None, spare=spare,
                       floor=self.options.growth_floor)

    def close(self) -> None:
        """Give the model back its default memory layout."""
        self._run.close()
