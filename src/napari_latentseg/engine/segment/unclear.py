"""Painted object voxels that look like the background around them, kept out of the forest.

A stroke on an object's faint edge (on thick slices, the partial-volume end slice a mask still
gives a tumour) teaches the forest that the faint look is the object, and the next round grows
that look around the object and onto the neighbouring slices: in session 51's traces, 13 of
the 21 rounds that made the result worse by more than 0.02 Dice followed a stroke of about
half the object's contrast. Such voxels stay painted (their labels are the user's); only the
classifier does not learn from them.

Which painted voxels look faint is read against the last round's labels: a painted object
voxel whose smoothed intensity lies closer to the mean of the last round's background than to
the mean of its object, both over a window of 3 slices x 11 x 11 voxels around it, is unclear.
At most a share of the painted object voxels (the least object-like first) is left out, so an
object that is faint throughout still trains on its strokes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .postprocess import grown_box

__all__ = ["unclear_object_voxels", "WINDOW"]

WINDOW = (3, 11, 11)  # slices, rows, columns of the local means
MIN_SIDE = 0.05  # share of the window each side must hold for its mean to count


def unclear_object_voxels(annotations: np.ndarray, last_labels: np.ndarray, object_id: int,
                          smooth: Callable[[tuple[slice, ...]], np.ndarray],
                          max_share: float) -> np.ndarray | None:
    """The painted object voxels to keep out of the classifier's training.

    Parameters
    ----------
    annotations : np.ndarray
        (z, y, x) painted ids (0 = not painted).
    last_labels : np.ndarray
        (z, y, x) the labels of the round this one continues.
    object_id : int
        The object's class id (object-vs-background rounds).
    smooth : callable
        ``smooth(box)``: the smoothed image over the box (a tuple of three slices).
    max_share : float
        At most this share of the painted object voxels is left out (0: none).

    Returns
    -------
    np.ndarray or None
        (z, y, x) bool, or None when none is left out.
    """
    from scipy import ndimage as ndi

    painted = annotations == object_id
    most = int(max_share * np.count_nonzero(painted))
    if most == 0:
        return None
    # Every painted voxel's whole window lies in the box: the same means as over the volume.
    box = grown_box(painted, margin=max(WINDOW) // 2)
    img = np.asarray(smooth(box), dtype=np.float32)
    obj = (last_labels[box] == object_id).astype(np.float32)
    share = ndi.uniform_filter(obj, WINDOW)
    mean_o = ndi.uniform_filter(img * obj, WINDOW) / np.maximum(share, 1e-6)
    mean_b = ndi.uniform_filter(img * (1.0 - obj), WINDOW) / np.maximum(1.0 - share, 1e-6)
    contrast = mean_o - mean_b
    # Where the voxel sits between the background's mean (0) and the object's (1).
    where = (painted[box] & (share > MIN_SIDE) & (share < 1.0 - MIN_SIDE)
             & (np.abs(contrast) > 1e-6))
    t = np.full(img.shape, np.inf, dtype=np.float32)
    t[where] = (img[where] - mean_b[where]) / contrast[where]
    unclear = t < 0.5
    n = int(np.count_nonzero(unclear))
    if n == 0:
        return None
    if n > most:  # the least object-like first
        idx = np.flatnonzero(unclear)
        keep = idx[np.argsort(t.ravel()[idx], kind="stable")[:most]]
        unclear = np.zeros(img.shape, bool)
        unclear.ravel()[keep] = True
    out = np.zeros(annotations.shape, bool)
    out[box] = unclear
    return out


def training_rows(annotations: np.ndarray, classes: list[int], options, features,
                  last_labels: np.ndarray | None) -> tuple[np.ndarray, int]:
    """The annotations whose painted voxels train the forest, and how many were left out.

    ``annotations`` itself unless the round is object-vs-background (the background prior's
    class and one object painted), continues a round (``last_labels``) and
    ``options.unclear_share`` is above 0; then a copy without :func:`unclear_object_voxels`.
    ``features``: the round's :class:`~.forest.ForestFeatures` (the smoothed image).
    """
    from .boundary import smoothed_image
    from .prior import effective_background

    bg = effective_background(options.background, classes)
    if (last_labels is None or not options.unclear_share or len(classes) != 2
            or bg not in classes):
        return annotations, 0
    obj = classes[1 - classes.index(bg)]
    cached, run = features.cached, features.run
    unclear = unclear_object_voxels(
        annotations, last_labels, obj,
        lambda box: smoothed_image(cached, run, 1, box[0])[:, box[1], box[2]],
        options.unclear_share)
    if unclear is None:
        return annotations, 0
    rows = annotations.copy()
    rows[unclear] = 0
    return rows, int(np.count_nonzero(unclear))
