"""A weak prior for rounds of three or more classes: small classes learn where they are not.

Object-vs-background rounds draw unpainted voxels as weak background (:mod:`.prior`). A user
who paints three or more classes (the air, a tumour and the rest of the body, say) gets no
such prior, and a tumour class learns its look-alikes from a stroke or two. Here the same
uniform sample of unpainted voxels joins the rows, each labelled with the *large* class a
first forest finds most probable there; the classes that forest gives under
:data:`SMALL_SHARE` of the sample (a tumour, lesions) get none of them, so the sample tells
them where they are not. Its total weight follows the two-class prior's rule for the small
classes' share (:func:`.prior.adaptive_prior_weight`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .prior import ESTIMATE_TREES, adaptive_prior_weight, unpainted_sample

__all__ = ["add_multiclass_prior", "SMALL_SHARE"]

# Classes under this share of the unpainted sample (by the first forest) are "small"; None:
# no prior in rounds of three or more classes. Session 23, six seeds: tumour cases as three
# classes 0.470 against 0.384 mean AUC, three phantoms 0.744 against 0.730 (0.05: lower).
SMALL_SHARE: float | None = 0.02


def add_multiclass_prior(ts, features, annotations: np.ndarray, n_classes: int, options,
                         rng: np.random.Generator, spacing: Sequence[float] | None,
                         stop_event, fit: Callable):
    """``ts`` (a :class:`.forest.TrainingSet` of painted rows, three or more classes, no
    prior) with the unpainted sample appended as weak rows of the large classes, or as it was
    (off, nothing small or nothing large, no unpainted voxel). ``fit``: the forest fitter."""
    # ``background=None`` (the dock's box unticked, ``--background none``): no prior of any kind.
    if SMALL_SHARE is None or ts.prior or n_classes < 3 or options.background is None:
        return ts
    # Away from every stroke: the margin keeps the sample off the painted structures' edges.
    flat = unpainted_sample(annotations, -1, options.background_samples,
                            options.background_margin_mm, spacing, rng,
                            features.prior_slices())
    if flat.size == 0:
        return ts
    xu = features.rows_at(flat, stop_event)
    if ts.prototypes is not None:
        xu = ts.prototypes.extend(xu)
    first = fit(ts.x, ts.y, options.seed, None, ESTIMATE_TREES)
    p = np.zeros((len(flat), n_classes))
    p[:, np.asarray(first.classes_, dtype=int)] = first.predict_proba(xu)
    share = p.mean(0)
    # A first forest from balanced strokes overestimates a rare class (a tumour: ~25 % of
    # the sample after three strokes), so the rarest class is small whatever its estimate.
    small = (share < SMALL_SHARE) | (share == share.min())
    painted_small = np.isin(ts.y, np.flatnonzero(small))
    if not painted_small.any() or small.all():
        return ts
    yu = np.where(small[None], -1.0, p).argmax(1).astype(ts.y.dtype)
    total = adaptive_prior_weight(float(share[small].sum()), float(painted_small.sum()))
    w = np.ones(len(ts.y)) if ts.weight is None else ts.weight
    ts.x = np.concatenate([ts.x, xu.astype(ts.x.dtype, copy=False)])
    ts.y = np.concatenate([ts.y, yu])
    ts.weight = np.concatenate([w, np.full(len(flat), total / len(flat))])
    ts.prior = len(flat)
    k = int(small.sum())
    rarest = ("the rarest class learns where it is not" if k == 1
              else f"the {k} rarest classes learn where they are not")
    ts.note = (f"{len(flat)} unpainted voxels joined as weak evidence of the {n_classes - k} "
               f"largest classes: {rarest}")
    return ts
