"""Every voxel's forest probabilities, coarse to fine.

The forest is the costly part of a round on big scans, so it first runs on a coarse in-plane
grid (every 2nd or 4th voxel); each finer level is predicted only where the level above has a
class boundary or is unsure, and elsewhere a voxel takes the bilinear mean of the coarse
voxels around it (sessions 9-19, docs/interactive_benchmarks.md "The round's cost").
The forest may be a :class:`~.gpu_forest.DeviceForest`: its trees then run on a GPU, the
rows are gathered here. (Session 39 also ran every level on the GPU with the features copied
there: level in total on the H200 machine, 1.49 s both, so not kept.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["forest_predict"]

# Coarse-to-fine prediction (forest_predict): the coarsest in-plane stride, the smallest grid a
# slice may be first predicted on, and the top probability under which a coarse voxel is
# predicted again at the finer level (besides class boundaries).
MAX_STRIDE = 4
MIN_COARSE_PLANE = 32 * 32
REFINE_BELOW = 0.8
# With three or more classes "unsure" is the top class's lead over the runner-up below
# 2 * REFINE_BELOW - 1 (the same rule as the top probability for two classes); False: the top
# probability below REFINE_BELOW (before session 15: with seven classes most of the phantom's
# voxels were unsure although their label was clear).
REFINE_BY_MARGIN = True
# Unsure voxels are refined only in rounds of at most this many classes. Session 19, the
# phantom's seven classes: the unsure voxels away from any class boundary were 10-30 % of the
# finest level's predictions and changed label in 0.02-0.3 % of them; boundaries alone.
REFINE_UNSURE_MAX_CLASSES = 2
# Rows a predict_proba call gets.
PROBA_CHUNK = 1 << 18


def _forest_proba(forest, rows: np.ndarray, n_cls: int,
                  more: np.ndarray | None = None) -> np.ndarray:
    """(voxels, n_classes) probabilities of feature rows (``more`` columns of the same voxels
    and the forest's prototype columns appended, when there are), with zeros for a class no
    tree saw."""
    protos = getattr(forest, "prototypes_", None)
    out = np.zeros((len(rows), n_cls), dtype=np.float32)
    # In chunks: float16 cache rows become float32 (and get their prototype columns) only a
    # chunk at a time.
    for i in range(0, len(rows), PROBA_CHUNK):
        x = rows[i : i + PROBA_CHUNK]
        if more is not None:
            x = np.concatenate([x, more[i : i + PROBA_CHUNK]], axis=1, dtype=np.float32)
        x = np.asarray(x, dtype=np.float32) if protos is None else protos.extend(x)
        out[i : i + PROBA_CHUNK, forest.classes_] = forest.predict_proba(x)
    return out


def _stride(h: int, w: int, max_stride: int) -> int:
    """The coarsest in-plane stride (a power of two up to ``max_stride``) whose grid still
    has at least ``MIN_COARSE_PLANE`` voxels a slice (1: predict every voxel)."""
    s = 1
    while s * 2 <= max_stride and (h // (s * 2)) * (w // (s * 2)) >= MIN_COARSE_PLANE:
        s *= 2
    return s


def _upsample2(p: np.ndarray, hf: int, wf: int) -> np.ndarray:
    """(k, b, hf, wf) from (k, b, h, w) at twice the in-plane resolution, bilinear: the
    coarse voxels keep their values, a voxel between two (or four) takes their mean (the last
    row and column repeat the edge).

    Where the refinement leaves a voxel alone its coarse neighbours share one class, and a
    mean of probability vectors with the same top class keeps that class: the labels are
    those of nearest-neighbour sharing, and the probabilities (the uncertainty map) do not
    show the coarse grid's blocks.
    """
    k, b, h, w = p.shape
    out = np.empty((k, b, 2 * h, 2 * w), dtype=p.dtype)
    out[..., ::2, ::2] = p
    rows = out[..., 1:-1:2, ::2]  # between two coarse rows
    np.add(p[..., :-1, :], p[..., 1:, :], out=rows)
    rows *= 0.5
    out[..., -1, ::2] = p[..., -1, :]
    even = out[..., ::2]  # every row's coarse columns, now filled
    cols = out[..., 1:-1:2]
    np.add(even[..., :-1], even[..., 1:], out=cols)
    cols *= 0.5
    out[..., -1] = even[..., -1]
    return out[..., :hf, :wf]


def _unsure(p: np.ndarray, sure: float) -> np.ndarray:
    """Where the (n_classes, ...) probabilities ``p`` are unsure: the top class's lead over the
    runner-up below ``2 * sure - 1`` (for two classes: top probability below ``sure``)."""
    if not REFINE_BY_MARGIN or len(p) <= 2:
        return p.max(0) < sure
    top2 = np.partition(p, len(p) - 2, axis=0)[-2:]
    return top2[1] - top2[0] < 2.0 * sure - 1.0


def forest_predict(forest, rows: np.ndarray, shape: tuple[int, int, int], n_cls: int,
                   sure: float | None = None, max_stride: int | None = None,
                   more: np.ndarray | None = None) -> np.ndarray:
    """(n_classes, *shape) forest probabilities, coarse to fine.

    The forest is the costly part on big scans, so it first runs on a coarse in-plane grid
    (every 2nd or 4th voxel, see :func:`_stride`); each finer level (half the stride) is then
    predicted only where the level above has a class boundary within one of its voxels or,
    with at most ``REFINE_UNSURE_MAX_CLASSES`` classes, is unsure (:func:`_unsure`: the top
    class leads the runner-up by less than ``2 sure - 1``).
    Elsewhere a voxel takes the bilinear mean of the coarse voxels around it
    (:func:`_upsample2`): the neighbourhood agrees on the class.
    Voxels the level above predicted are not predicted again. ``more``: (voxels, k) columns
    read after ``rows``' (the strokes' distances, :mod:`.strokemaps`), joined only for the
    voxels predicted.
    """
    from scipy import ndimage as ndi

    sure = REFINE_BELOW if sure is None else sure
    b, h, w = shape
    grid = rows.reshape(b, h, w, -1)
    extra = None if more is None else more.reshape(b, h, w, -1)
    s = _stride(h, w, MAX_STRIDE if max_stride is None else max_stride)
    level = np.ascontiguousarray(grid[:, ::s, ::s])
    p = _forest_proba(forest, level.reshape(-1, grid.shape[-1]), n_cls,
                      None if extra is None else extra[:, ::s, ::s].reshape(-1, extra.shape[-1]))
    # Classes first: the upsampling and the class reductions run on contiguous planes.
    p = np.ascontiguousarray(p.T).reshape((n_cls,) + level.shape[:3])
    while s > 1:
        s //= 2
        fine = grid[:, ::s, ::s]
        hf, wf = fine.shape[1:3]
        lab = p.argmax(0)
        refine = ndi.maximum_filter(lab, size=(1, 3, 3)) != ndi.minimum_filter(lab, size=(1, 3, 3))
        if n_cls <= REFINE_UNSURE_MAX_CLASSES:
            refine |= _unsure(p, sure)
        p = _upsample2(p, hf, wf)
        z, y, x = _children(refine, hf, wf)
        if len(z):
            p[:, z, y, x] = _forest_proba(forest, fine[z, y, x], n_cls, None if extra is None
                                          else extra[:, ::s, ::s][z, y, x]).T
    return p


def _children(refine: np.ndarray, hf: int, wf: int) -> tuple[np.ndarray, ...]:
    """Indices (z, y, x) at the finer level of the voxels under the ``refine`` voxels of the
    level above, less those voxels themselves (already exact), within (hf, wf). Index
    arrays, not a full-size mask: on a 61 x 512 x 512 scan, expanding the mask took longer
    than the voxels' prediction."""
    zc, yc, xc = np.nonzero(refine)
    zs, ys, xs = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        y, x = 2 * yc + dy, 2 * xc + dx
        keep = (y < hf) & (x < wf)
        zs.append(zc[keep])
        ys.append(y[keep])
        xs.append(x[keep])
    return np.concatenate(zs), np.concatenate(ys), np.concatenate(xs)

