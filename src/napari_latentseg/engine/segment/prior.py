"""The background prior of object-vs-background rounds: unpainted voxels as weak background.

With one stroke of "background" on one tissue and one stroke of the object, a few-shot forest
labels everything unlike the background stroke as the object (the tumour floods the slab:
Dice 0.09 on brain1's first round). In an object task most of the volume is background, so a
uniform sample of the voxels nobody painted is mostly background: it trains the forest as
background at a low weight (positive-unlabelled learning). Voxels near the object's strokes
are left out, since the object is there. By default the prior's weight follows the
object's estimated share of the scan (:func:`adaptive_prior_weight`). Measured in
``docs/interactive_benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BACKGROUND_NAMES", "background_from_names", "resolve_background",
           "effective_background", "unpainted_sample", "adaptive_prior_weight",
           "MIN_TREE_SAMPLES", "ADAPT_KAPPA", "ADAPT_POWER", "ADAPT_CAP"]

# Names by which a class is the background (matched case-insensitively, whole name).
BACKGROUND_NAMES = ("background", "bg", "outside", "other", "rest", "normal", "healthy")
# With the prior the forest sees thousands of rows: each tree bootstraps at least this many
# (5 % of 2000 rows would give a tree ~2 of the object's voxels).
MIN_TREE_SAMPLES = 500
# Trees of the forests that only estimate the classes' shares (the adaptive prior's first
# forest, :mod:`.multiprior`'s; session 10: 16 trees level with 50 on AUC over six cases, the
# round up to 2x faster).
ESTIMATE_TREES = 16


def background_from_names(classes: Iterable[Mapping[str, Any]] | None) -> int | None:
    """The label id of the class named as the background (``BACKGROUND_NAMES``), if exactly
    one is; None otherwise.

    ``classes``: dicts with ``value`` (label id) and ``name``, as in label sidecars and the
    dock's class table.
    """
    hits = [int(c["value"]) for c in classes or ()
            if str(c.get("name", "")).strip().lower() in BACKGROUND_NAMES]
    return hits[0] if len(hits) == 1 else None


def effective_background(spec: int | str | None, painted: Sequence[int]) -> int | None:
    """The background class of a round: ``spec`` itself, or for ``"auto"`` class 1 when
    exactly two classes, 1 among them, are painted (1 = background, the dock's convention)."""
    if spec == "auto":
        return 1 if len(painted) == 2 and 1 in painted else None
    return None if spec is None else int(spec)


def resolve_background(spec: str | int | None,
                       classes: Iterable[Mapping[str, Any]] | None = None) -> int | str | None:
    """The background a user asked for, as :class:`SegmentOptions` takes it.

    ``spec``: ``"auto"`` (the class named as the background in ``classes`` if one is, else
    the engine's ``"auto"`` rule), ``"none"`` or None (no prior), a label id, or a class name
    from ``classes``.

    Raises
    ------
    ValueError
        A name no class has, or an id below 1.
    """
    if spec is None:
        return None
    if str(spec).strip().lower() == "auto":
        named = background_from_names(classes)
        return "auto" if named is None else named
    text = str(spec).strip()
    if text.lower() == "none":
        return None
    if text.lstrip("+-").isdigit():
        if int(text) < 1:
            raise ValueError(f"the background must be a class id >= 1, got {text}")
        return int(text)
    named = [int(c["value"]) for c in classes or ()
             if str(c.get("name", "")).strip().lower() == text.lower()]
    if not named:
        known = ", ".join(f"{c.get('name')} ({c['value']})" for c in classes or ()) or "none"
        raise ValueError(f"no class is named {text!r} (classes with names: {known}); give "
                         "the background's label id instead")
    return named[0]


# Adaptive weighting, measured (docs/interactive_benchmarks.md, "The weight's slope"): the
# square root of the odds (1 - share) / share. The plain odds (kappa 0.5) buried objects of a
# few % (lung2's crop: 0.27 against 0.65 with the fixed weight) and made brain1's first round
# too cautious; the root reaches the cap for tumours under ~1 % of a scan all the same. The
# cap keeps an underestimated share (a first pass that missed most of the object) from
# burying it.
ADAPT_KAPPA = 1.0
ADAPT_POWER = 0.5
ADAPT_CAP = 10.0


def adaptive_prior_weight(object_share: float, n_object: float, scale: float = 1.0) -> float:
    """Total weight of the prior for an object filling ``object_share`` of the scan.

    Positive-unlabelled learning: a uniform sample holds the object in proportion to its
    share, so the smaller the object, the surer an unpainted voxel is background and the
    more the prior may weigh. Returns ``n_object`` times
    ``scale ADAPT_KAPPA ((1 - share) / share) ** ADAPT_POWER``, clipped to
    ``[1, ADAPT_CAP]`` (``scale``: lighter in a fresh round, ``SegmentOptions``).
    """
    share = float(np.clip(object_share, 1e-6, 1.0))
    odds = (1.0 - share) / share
    kappa = scale * ADAPT_KAPPA
    return float(n_object) * float(np.clip(kappa * odds**ADAPT_POWER, 1.0, ADAPT_CAP))


def unpainted_sample(annotations: np.ndarray, background: int, n: int, margin_mm: float,
                     spacing: Sequence[float] | None, rng: np.random.Generator,
                     slices: np.ndarray | None = None) -> np.ndarray:
    """Flat (C-order) indices of up to ``n`` unpainted voxels drawn uniformly, none within
    ``margin_mm`` of a voxel painted with a class other than ``background``.

    Parameters
    ----------
    annotations : np.ndarray
        (z, y, x) label ids, 0 = not painted.
    spacing : sequence of float, optional
        Voxel size (mm) per axis; 1 mm when unknown.
    slices : np.ndarray, optional
        Draw only from these axial slices (the features of the others are not at hand).
    """
    from scipy import ndimage as ndi

    free = annotations == 0
    if slices is not None:
        keep = np.zeros(annotations.shape[0], dtype=bool)
        keep[slices] = True
        free &= keep.reshape((-1,) + (1,) * (annotations.ndim - 1))
    obj = (annotations > 0) & (annotations != background)
    if margin_mm > 0 and obj.any():
        sp = tuple(spacing) if spacing is not None else (1.0,) * annotations.ndim
        # Only the strokes' box plus the margin can be near them: a distance map of a big
        # scan costs seconds, of the box milliseconds.
        idx = np.argwhere(obj)
        pad = [int(np.ceil(margin_mm / s)) + 1 for s in sp]
        box = tuple(slice(max(0, int(lo) - p), min(n, int(hi) + p + 1)) for lo, hi, p, n
                    in zip(idx.min(0), idx.max(0), pad, obj.shape, strict=True))
        free[box] &= ndi.distance_transform_edt(~obj[box], sampling=sp) > margin_mm
    return _draw_true(free, int(n), rng)


def _draw_true(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of up to ``n`` of ``mask``'s true voxels drawn without
    replacement: ``np.sort(rng.choice(np.flatnonzero(mask), n, replace=False))``, the same
    draw, without listing every candidate (a CT's 15 M indices took 0.15 s a round): the
    drawn ranks are found row by row."""
    rows = mask.reshape(-1, mask.shape[-1]) if mask.ndim > 1 else mask.reshape(1, -1)
    per_row = np.count_nonzero(rows, axis=1)
    total = int(per_row.sum())
    if total == 0:
        return np.zeros(0, dtype=np.intp)
    # The generator's draw depends on the population's size alone, not on its values.
    ranks = np.sort(rng.choice(total, min(n, total), replace=False))
    ends = np.cumsum(per_row)
    row = np.searchsorted(ends, ranks, side="right")
    within = ranks - (ends[row] - per_row[row])  # the rank among the row's true voxels
    seen = np.cumsum(rows[row], axis=1)
    col = np.count_nonzero(seen <= within[:, None], axis=1)
    return (row * rows.shape[1] + col).astype(np.intp)
