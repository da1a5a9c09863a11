"""What the steps of one segmentation round share, and what the round returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...models.checkpoint import VAEModel
from .annotations import ClassTable
from .options import SegmentOptions

__all__ = ["RoundState", "SegmentationResult", "matching_labels", "spacing3"]


def matching_labels(previous, shape: tuple[int, ...], classes: list[int],
                    squeezed: bool = False) -> np.ndarray | None:
    """``previous.labels`` (3D; a squeezed 2D round's get their slice axis back) where the
    last round had these classes and this shape, else None (a round that does not continue
    it)."""
    prev = getattr(previous, "labels", None)
    if prev is None:
        return None
    prev = np.asarray(prev)
    prev = prev[None] if squeezed else prev
    if prev.shape != tuple(shape) or list(previous.classes) != list(classes):
        return None
    return prev


@dataclass
class RoundState:
    """The inputs of a round as its steps read them, and the record they append to.

    ``volume`` and ``annotations`` are 3D (a 2D image is one slice); ``annotations`` hold
    label ids in the classes' label type; ``model`` is the round's private copy.
    """

    model: VAEModel
    volume: np.ndarray
    annotations: np.ndarray
    table: ClassTable
    options: SegmentOptions
    rng: np.random.Generator
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spacing: tuple[float, ...] | None = None  # mm (z, y, x); None: unknown (1 mm)
    prior_background: int | None = None  # class index of the background prior's class
    far_from_object: np.ndarray | None = None  # beyond FAR_GROWTH of the reach ("shrink-far")
    fresh: bool = True  # the round does not continue an earlier one (no ``previous``)

    @property
    def spatial_dims(self) -> int:
        return self.model.config.spatial_dims

    @property
    def n_classes(self) -> int:
        return len(self.table)

    def previous_labels(self, previous: SegmentationResult | None,
                        squeezed: bool) -> np.ndarray | None:
        """The last round's labels (3D) where they have this round's classes and shape."""
        return matching_labels(previous, self.annotations.shape, self.table.classes,
                               squeezed)

    def grown(self, labels: np.ndarray, prev: np.ndarray | None) -> np.ndarray | None:
        """Object voxels the last round's labels ``prev`` did not label object (object-vs-
        background rounds). From the labels, not the probabilities: those leave out the edge
        step's moves (measured session 22, lung2 seed 0: a last-round drop of 0.12 against
        none)."""
        bg = self.prior_background
        if prev is None or bg is None or self.n_classes != 2:
            return None
        obj = self.table.classes[1 - bg]
        return (labels == obj) & (prev != obj)


@dataclass
class SegmentationResult:
    """Few-shot / fine-tuned segmentation outputs on the input grid."""

    labels: np.ndarray
    probabilities: np.ndarray  # (n_classes, *shape) float32, classes in ``classes`` order
    uncertainty: np.ndarray  # normalised entropy in [0, 1], float32
    classes: list[int]
    model: VAEModel  # a copy holding the head, if one was trained (the input is untouched)
    suggestion: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    cache_hit: bool = False
    # Object voxels that joined the object this round (object-vs-background rounds that
    # continued another; else None): the next round's momentum may let them go at once.
    grown: np.ndarray | None = None
    # The round's place in a chain of correction rounds: 1 for a round without ``previous``.
    round_no: int = 1
    # With ``SegmentOptions.object_class``: (the two-class round, the round of all classes),
    # each the next round's ``previous`` for its own kind (:mod:`.objectround`); else None.
    object_parts: tuple | None = None

    @property
    def trained_head(self) -> bool:
        """``model`` holds a head trained this round (worth saving; forest rounds train none)."""
        return bool(self.model.head)


def spacing3(spacing, squeezed: bool) -> tuple[float, ...] | None:
    """The voxel size as (z, y, x) of the round's 3D arrays (a 2D image gets a unit z)."""
    if spacing is None:
        return None
    sp = tuple(float(s) for s in spacing)
    if squeezed and len(sp) == 2:
        sp = (1.0,) + sp
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes (z, y, x) in mm, got {spacing}")
    return sp
