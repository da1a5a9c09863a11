"""The fine-tuned head is used only where held-out annotations say it helps the forest."""

from __future__ import annotations

import numpy as np

from ...runtime.progress import check_stop
from .forest import ForestFeatures, ForestProbabilities, training_set
from .head import HeadProbabilities
from .postprocess import boundary_band
from .runner import slice_runs
from .state import RoundState

__all__ = ["holdout", "check_head"]


def holdout(ann: np.ndarray, seed: int, tile: int = 32, fraction: float = 0.2
            ) -> np.ndarray | None:
    """A random ``fraction`` of in-plane ``tile`` x ``tile`` tiles of the annotated voxels.

    Returns a boolean volume, or None when no draw leaves every class both in the held-out
    tiles and in the rest (too few annotations to hold any out).
    """
    pts = np.flatnonzero(ann)
    z, y, x = np.unravel_index(pts, ann.shape)
    ny, nx = -(-ann.shape[1] // tile), -(-ann.shape[2] // tile)
    key = (z.astype(np.int64) * ny + y // tile) * nx + x // tile
    tiles, inv = np.unique(key, return_inverse=True)
    labels = ann.reshape(-1)[pts]
    n_cls = np.unique(labels).size
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        pick = rng.random(len(tiles)) < fraction
        out = pick[inv]
        if np.unique(labels[out]).size == n_cls and np.unique(labels[~out]).size == n_cls:
            held = np.zeros(ann.shape, dtype=bool)
            held.reshape(-1)[pts[out]] = True
            return held
    return None


def _mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    d = [2 * np.sum((pred == c) & (truth == c)) / (np.sum(pred == c) + np.sum(truth == c))
         for c in np.unique(truth)]
    return float(np.mean(d))


def check_head(st: RoundState, forest_feats: ForestFeatures, head_proba: HeadProbabilities,
               held: np.ndarray, stop_event) -> dict:
    """Does averaging the head in the forest's boundary band help on held-out annotations?

    A forest fitted without the held-out tiles (the head never saw them either) predicts the
    slices holding them; on held-out voxels within 3 voxels of that forest's boundaries, the
    mean Dice over classes of the forest alone is compared with the forest averaged with the
    head, as the final prediction does. ``used`` is None when no such voxel exists.
    """
    ann, n_cls = st.annotations, st.n_classes
    train = np.where(held, 0, ann)
    ts = training_set(forest_feats, train, st.table, st.options, st.rng, st.spacing,
                      stop_event)
    forest = ForestProbabilities(ts.fit(st.options.seed), forest_feats, n_cls)
    del ts
    if st.spatial_dims == 2:
        batches = slice_runs(np.flatnonzero(held.reshape(held.shape[0], -1).any(1)))
    else:
        batches = forest_feats.batches
    truth, alone, blend = [], [], []
    for zs in batches:
        check_stop(stop_event, "segmentation")
        pf = forest(zs)
        band = boundary_band(pf.argmax(0), radius=3, through=1) & held[zs[0] : zs[-1] + 1]
        if not band.any():
            continue
        ph = head_proba(zs)
        truth.append(st.table.index(ann[zs[0] : zs[-1] + 1][band]))
        alone.append(pf[:, band].argmax(0))
        blend.append((pf[:, band] + ph[:, band]).argmax(0))
    if not truth:
        return {"used": None, "voxels": 0}
    t = np.concatenate(truth)
    d_forest = _mean_dice(np.concatenate(alone), t)
    d_head = _mean_dice(np.concatenate(blend), t)
    return {"used": bool(d_head >= d_forest), "voxels": int(len(t)),
            "dice_forest": round(d_forest, 4), "dice_with_head": round(d_head, 4)}
