"""Helpers of the interactive benchmark's methods (``_loop_methods.py``): normalisation,
scikit-image's features, the class-capped sample, the forest, and the post-processing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from _loop_methods import LoopOptions

# scikit-image's trainable-segmentation example and the engine's _FOREST (engine/segment.py).
FOREST = {"n_estimators": 50, "max_depth": 10, "max_samples": 0.05}
MAX_PER_CLASS = 20_000


def normalise(image: np.ndarray, modality: str | None) -> np.ndarray:
    from napari_latentseg.engine.normalize import Normalizer, foreground_mask, guess_modality

    mod = guess_modality(image, modality)
    n = Normalizer.for_modality(mod).fit(image, foreground_mask(image, mod))
    return n(image).astype(np.float32)


def skimage_features(image_n: np.ndarray) -> np.ndarray:
    """(z, y, x, F) float32: scikit-image's multiscale_basic_features slice by slice."""
    from skimage.feature import multiscale_basic_features

    return np.stack([multiscale_basic_features(
        s, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16,
        channel_axis=None).astype(np.float32) for s in image_n])


def sample(ann: np.ndarray, rng: np.random.Generator, max_per_class: int = MAX_PER_CLASS):
    """Flat indices of a class-capped sample of the annotated voxels."""
    flat = ann.reshape(-1)
    idx = np.flatnonzero(flat)
    y = flat[idx]
    keep = np.concatenate([rng.permutation(idx[y == c])[:max_per_class] for c in np.unique(y)])
    return np.sort(keep)


def fit_forest(x: np.ndarray, y: np.ndarray, opts: LoopOptions, w: np.ndarray | None = None,
               seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier

    kw = dict(FOREST, n_estimators=opts.trees, min_samples_leaf=opts.min_leaf,
              max_features=opts.max_features)
    if opts.min_tree_samples and len(y) * kw["max_samples"] < opts.min_tree_samples:
        kw["max_samples"] = min(1.0, opts.min_tree_samples / len(y))
    if opts.balanced:
        kw["class_weight"] = "balanced"
    clf = RandomForestClassifier(**kw, n_jobs=1, random_state=seed)
    return clf.fit(x, y, sample_weight=w)


def predict(clf, feats: np.ndarray, shape: tuple, chunk: int = 1 << 18) -> np.ndarray:
    rows = feats.reshape(-1, feats.shape[-1])
    out = np.empty((len(clf.classes_), rows.shape[0]), dtype=np.float32)
    for i in range(0, len(rows), chunk):
        out[:, i : i + chunk] = clf.predict_proba(rows[i : i + chunk]).T
    return out.reshape((-1,) + tuple(shape))


def smooth_probs(probs: np.ndarray, sigma: float, spacing: tuple) -> np.ndarray:
    """Gaussian smoothing of each class's probability, sigma in in-plane voxels (same mm
    through-plane), renormalised."""
    from scipy import ndimage as ndi

    s = [0.0] + [sigma * spacing[1] / sp for sp in spacing]
    out = ndi.gaussian_filter(probs, s)
    return out / np.maximum(out.sum(0, keepdims=True), 1e-6)


def finish(probs: np.ndarray, classes: list[int], ann: np.ndarray, connected: bool) -> np.ndarray:
    """argmax, the user's strokes win, then the keep-connected rule."""
    from napari_latentseg.engine.segment import keep_connected

    table = np.asarray(classes)
    painted = ann > 0
    p = probs.copy()
    lut = np.zeros(int(max(classes)) + 1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    for ci in range(len(classes)):
        p[ci][painted] = (lut[ann[painted]] == ci).astype(np.float32)
    lab = table[p.argmax(0)]
    return keep_connected(lab, p, ann, classes)[0] if connected else lab


def suggest(probs: np.ndarray, classes: list[int], ann: np.ndarray) -> dict:
    """The engine's slice suggestion from any method's probabilities (its object region:
    where the most painted class is below 0.9, grown by two voxels)."""
    from scipy import ndimage as ndi

    from napari_latentseg.engine.segment import suggest_slices

    p = np.clip(probs, 1e-7, 1.0)
    unc = -(p * np.log(p)).sum(0) / np.log(len(classes))
    counts = [np.count_nonzero(ann == c) for c in classes]
    region = ndi.binary_dilation(probs[int(np.argmax(counts))] < 0.9, iterations=2)
    return suggest_slices(unc, ann, region if region.any() else None)


def walker(probs: np.ndarray, classes: list[int], ann: np.ndarray, beta: float,
           sure: float) -> np.ndarray:
    """Random walker on the probability maps (edges where they change), seeded by the
    strokes and by the voxels the forest is ``sure`` of; returns its probabilities."""
    from skimage.segmentation import random_walker

    lut = np.zeros(int(max(classes)) + 1, dtype=np.int64)
    lut[classes] = np.arange(1, len(classes) + 1)
    seeds = np.where(probs.max(0) >= sure, probs.argmax(0) + 1, 0)
    painted = ann > 0
    seeds[painted] = lut[ann[painted]]
    if len(np.unique(seeds[seeds > 0])) < 2 or (seeds > 0).all():
        return probs
    out = random_walker(probs, seeds, beta=beta, mode="cg_j", tol=1e-2, channel_axis=0,
                        return_full_prob=True)
    return out.astype(np.float32)
