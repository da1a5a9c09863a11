"""How far each voxel lies from the object's strokes: one more forest column a round.

The forest labels a voxel from its look and its neighbourhood's. Where the object and the
background are the same tissue (lung2's tumour and the heart at 47 HU, the first background
stroke on the heart), it can only learn the look of the few painted voxels, and the first
rounds find a fraction of the object. Interactive segmentation gives the classifier the
strokes themselves as input maps: the geodesic distance from the foreground's (and the
background's) clicks (GeoS, Criminisi et al. 2008; DeepIGeoS, Wang et al. 2019). Here the
column is the geodesic distance (mm, image edges counting as distance) from the object's
painted voxels, clipped at :data:`CLIP_MM`: the map the object's reach computes each round
(:mod:`.reach`, which reuses it), read per voxel by the forest. A second column from the
background's strokes was level and costs a second distance (session 52).
Object-vs-background rounds painted with strokes only (two classes, one of them the
background prior's, and no slice annotated whole: :data:`DENSE_SLICE`), where it was
measured:
``docs/interactive_benchmarks.md``, "The distance from the object's strokes as a forest
column".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .boundary import smoothed_image
from .forest import ForestFeatures
from .reach import geodesic_grid

__all__ = ["CLIP_MM", "DENSE_SLICE", "StrokeDistances", "WithStrokeDistances",
           "has_annotated_slice", "with_stroke_distances"]

CLIP_MM = 200.0  # farther is "far": the columns' range stays the same from scan to scan
# A slice (along any axis) painted over at least this share is an annotated slice, not a
# stroke: with one, the column is left out. Next to a whole slice's object the painted
# background lies a voxel away, so the forest learns "the object is where it was painted"
# and no longer finds it on the other slices (session 52, slices protocol: brain1 0.86 -> 0.75).
DENSE_SLICE = 0.5


class StrokeDistances:
    """Geodesic distance (mm) of every voxel from the painted voxels of each of ``classes``,
    kept on the coarse grid it is computed on and read per slice or per voxel.

    Parameters
    ----------
    smooth : np.ndarray
        (z, y, x) smoothed normalised image (a view is enough).
    annotations : np.ndarray
        (z, y, x) painted ids, 0 = not painted.
    classes : sequence of int
        The classes whose strokes give a column each, in order; each must be painted.
    spacing : sequence of float
        Voxel size (mm, z y x).
    """

    def __init__(self, smooth: np.ndarray, annotations: np.ndarray, classes: Sequence[int],
                 spacing: Sequence[float]) -> None:
        grids = []
        for c in classes:
            dist, self.grid = geodesic_grid(smooth, annotations == c, spacing)
            grids.append(dist)
        self.classes = list(classes)
        self.raw = np.stack(grids, -1)  # (z, y / grid, x / grid, k), unclipped
        self.cells = np.minimum(self.raw, np.float32(CLIP_MM))
        # Read-only: a live segmenter keeps the map for its next round (with_stroke_distances).
        self.raw.flags.writeable = self.cells.flags.writeable = False
        self.shape = annotations.shape
        self.k = len(grids)

    def of(self, cls: int) -> tuple[np.ndarray, int]:
        """Class ``cls``'s distance on its grid, unclipped, and the grid's step: what
        :func:`~.reach.geodesic_grid` gives for its strokes (the reach reads it)."""
        return self.raw[..., self.classes.index(cls)], self.grid

    def slices(self, zs: np.ndarray) -> np.ndarray:
        """(voxels, k) float32 rows of contiguous slices ``zs``, voxels in C order."""
        g, (_, h, w) = self.grid, self.shape
        a = self.cells[zs[0] : zs[-1] + 1].repeat(g, axis=1).repeat(g, axis=2)[:, :h, :w]
        return np.ascontiguousarray(a).reshape(-1, self.k)

    def at(self, flat: np.ndarray) -> np.ndarray:
        """(n, k) float32 rows of the voxels at C-order indices ``flat``."""
        _, h, w = self.shape
        z, r = np.divmod(np.asarray(flat, dtype=np.int64), h * w)
        y, x = np.divmod(r, w)
        return self.cells[z, y // self.grid, x // self.grid]


class WithStrokeDistances:
    """A :class:`~.forest.ForestFeatures` with the round's :class:`StrokeDistances` as its
    last columns, for the forest's training and prediction (the features' cache is shared
    and unchanged: the distances change with every stroke). Wrap features whose cache is
    filled already."""

    def __init__(self, base, distances: StrokeDistances) -> None:
        self.base, self.distances = base, distances
        self.run, self.cached = base.run, base.cached
        self.vae, self.contrast, self.n_extra = base.vae, base.contrast, base.n_extra
        self.n_multiscale = base.n_multiscale

    @property
    def batches(self) -> list[np.ndarray]:
        return self.base.batches

    @property
    def predict_batches(self) -> list[np.ndarray]:
        return self.base.predict_batches

    def prior_slices(self) -> np.ndarray | None:
        return self.base.prior_slices()

    def compute(self, zs: np.ndarray):
        torch = self.run.torch
        return torch.cat([self.base.compute(zs).float(),
                          torch.from_numpy(self.distances.slices(zs))], dim=1)

    def predict_rows(self, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The base features' rows of slices ``zs`` (a view of the float16 cache) and the
        distances' columns, joined by the forest only for the voxels it predicts."""
        return self.base.rows_of(zs), self.distances.slices(zs)

    def rows_at(self, flat: np.ndarray, stop_event=None) -> np.ndarray:
        return np.concatenate([self.base.rows_at(flat, stop_event),
                               self.distances.at(flat)], axis=1)

    # The base's sample of the annotated voxels, its rows read through this compute().
    annotated = ForestFeatures.annotated


def with_stroke_distances(features, annotations: np.ndarray, classes: Sequence[int],
                          spacing: Sequence[float] | None, options):
    """``features`` with the distance from the object's strokes in an object-vs-background
    round (two classes painted, one of them the background prior's, and no annotated slice:
    :func:`has_annotated_slice`) when ``options.stroke_distances``, else ``features``
    itself. Call after its cache is filled."""
    from .prior import effective_background

    bg = effective_background(options.background, classes)
    if (not options.stroke_distances or len(classes) != 2 or bg not in classes
            or has_annotated_slice(annotations)):
        return features
    obj = [c for c in classes if c != bg]
    spacing = tuple(float(v) for v in (spacing or (1.0, 1.0, 1.0)))
    # A background stroke leaves the object's distance as it was: live mode's features keep
    # the last one (lung2: 0.25 s of a 0.4 s stroke), keyed by where the object is painted.
    seeds = np.flatnonzero(annotations == obj[0])
    key = (obj[0], spacing, hashlib.blake2b(seeds.tobytes(), digest_size=16).digest())
    if features.stroke_memo is not None and features.stroke_memo[0] == key:
        return WithStrokeDistances(features, features.stroke_memo[1])
    smooth = smoothed_image(features.cached, features.run)  # the reach's image
    dist = StrokeDistances(smooth, annotations, obj, spacing)
    features.stroke_memo = (key, dist)
    return WithStrokeDistances(features, dist)


def has_annotated_slice(annotations: np.ndarray) -> bool:
    """Whether a slice along any axis (of two dimensions or more) is painted over at least
    :data:`DENSE_SLICE` of its voxels."""
    painted = annotations > 0
    for axis in range(painted.ndim):
        rest = [n for i, n in enumerate(painted.shape) if i != axis]
        if min(rest) < 2:
            continue
        share = painted.sum(axis=tuple(i for i in range(painted.ndim) if i != axis))
        if share.max() >= DENSE_SLICE * np.prod(rest):
            return True
    return False
