"""The object's boundary moved by local region competition (object-vs-background rounds).

The forest labels a voxel from features of its own neighbourhood; near the object's edge
those mix both sides, and the forest's labels end a voxel or two short of (or past) the
edge. Here each voxel in a thin band around the labelled object's boundary takes the side
whose mean smoothed intensity, over the voxels of that side within a small in-plane window,
is closer to its own: a local, one-step version of region-competition active contours
(Chan-Vese with local means). Painted voxels keep their labels.
"""

from __future__ import annotations

import numpy as np

from ...runtime.parallel import map_slabs
from .postprocess import grown_box

__all__ = ["refine_object_boundary", "smoothed_image", "WINDOW", "BAND"]

WINDOW = 11  # in-plane window of the local means (voxels)
BAND = 2  # voxels either side of the boundary that may change side
MIN_SIDE = 0.05  # share of the window each side must hold for its mean to count
CHUNK = 16  # slices at a time (in-plane filters only)
# Only background voxels may join the object (a probe: more AUC on the lungs and brain2, larger
# drops on brain2; docs/interactive_benchmarks.md).
GROW_ONLY = False


def smoothed_image(cached: np.ndarray | None, run, level: int = 1,
                   z: slice = slice(None)) -> np.ndarray:
    """Slices ``z`` of the ilastik set's Gaussian at its sigma number ``level`` (1: 2
    voxels): the cached feature column, or computed from the normalised volume (in-plane, so
    a slice alone gives the same)."""
    if cached is not None:
        return cached[z][..., 4 * level]
    from scipy import ndimage

    from ..features import MULTISCALE_SIGMAS

    s = MULTISCALE_SIGMAS[level]
    return ndimage.gaussian_filter(run.norm(run.volume[z]).astype(np.float32), (0, s, s))


def refine_object_boundary(labels: np.ndarray, smooth: np.ndarray, annotations: np.ndarray,
                           object_id: int, background_id: int, window: int | None = None,
                           band: int | None = None, p_object: np.ndarray | None = None,
                           min_p: float = 0.0) -> int:
    """Move the object's boundary to the closer local mean, in place.

    Parameters
    ----------
    labels : np.ndarray
        (z, y, x) labels; only voxels labelled ``object_id`` or ``background_id`` near the
        object's boundary change between the two.
    smooth : np.ndarray
        (z, y, x) the smoothed normalised image (a view of the cached features is enough).
    annotations : np.ndarray
        (z, y, x) painted ids (0 = not painted); painted voxels are left alone.
    window, band
        The local means' in-plane window and the band's half-width (voxels); None:
        :data:`WINDOW`, :data:`BAND`.
    p_object : np.ndarray, optional
        (z, y, x) the object's probability, read with ``min_p``.
    min_p : float
        With ``p_object``: a voxel joins the object only where its probability is at least
        this (``SegmentOptions.edge_min_p``; 0: no floor). Shrinking is not gated.

    Returns
    -------
    int
        How many voxels changed side.
    """
    from scipy import ndimage as ndi

    window = WINDOW if window is None else window
    band = BAND if band is None else band
    square = np.ones((1, 3, 3), bool)  # in-plane 8-neighbourhood
    size = (1, window, window)
    margin = band + window // 2 + 1  # what a band voxel's window can reach

    def slab(z: slice) -> int:
        obj = labels[z] == object_id
        if not obj.any():
            return 0
        # Only the object's in-plane box and its margin: the same result, a fraction of a
        # CT's slices' area (session 39).
        box = grown_box(obj, margin, axes=(1, 2))
        obj = obj[box]
        sl = (z,) + box[1:]
        lab = labels[sl]
        ring = (ndi.binary_dilation(obj, square, iterations=band)
                & ~ndi.binary_erosion(obj, square, iterations=band, border_value=1))
        ring &= (annotations[sl] == 0) & ((lab == object_id) | (lab == background_id))
        if not ring.any():
            return 0
        img = np.asarray(smooth[sl], dtype=np.float32)
        o = obj.astype(np.float32)
        share = ndi.uniform_filter(o, size)
        mean_o = ndi.uniform_filter(img * o, size) / np.maximum(share, 1e-6)
        mean_b = ndi.uniform_filter(img * (1.0 - o), size) / np.maximum(1.0 - share, 1e-6)
        ring &= (share > MIN_SIDE) & (share < 1.0 - MIN_SIDE)
        to_obj = np.abs(img - mean_o) < np.abs(img - mean_b)
        new = np.where(to_obj, object_id, background_id).astype(lab.dtype)
        flip = ring & (new != lab)
        if GROW_ONLY:
            flip &= ~obj
        if p_object is not None and min_p:
            flip &= (new != object_id) | (np.asarray(p_object[sl]) >= min_p)
        lab[flip] = new[flip]
        return int(np.count_nonzero(flip))

    return sum(map_slabs(slab, labels.shape[0], CHUNK))

