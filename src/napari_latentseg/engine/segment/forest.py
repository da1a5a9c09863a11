"""The random forest of few-shot rounds and its compact per-voxel features."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from ...runtime.progress import check_stop
from .annotations import ClassTable, annotated_batches, sample_annotated
from .cache import FeatureCache
from .coarse import forest_predict
from .extra import as_extra_columns, extra_kind, given_columns
from .gpu_forest import on_device
from .multiprior import add_multiclass_prior
from .options import SegmentOptions
from .prior import (
    ESTIMATE_TREES,
    MIN_TREE_SAMPLES,
    adaptive_prior_weight,
    effective_background,
    unpainted_sample,
)
from .prototypes import MIN_CLASSES, Prototypes
from .runner import FeatureRunner, to_rows
from .trees import fit_lean_forest

__all__ = ["ForestFeatures", "ForestProbabilities", "fit_forest", "forest_predict",
           "forest_features_name", "training_set", "TrainingSet"]

_ENCODER_PCS = 4
# The MIN_TREE_SAMPLES floor also without sample weights (False: 5 % of the painted rows, the
# engine before session 8; kept switchable for the benchmark's ablation).
TREE_FLOOR_WITHOUT_PRIOR = True
# Which columns the class prototypes are built from: "ilastik" (the multiscale set) or "all".
PROTOTYPE_COLUMNS = "ilastik"
# scikit-image's trainable-segmentation settings, measured on the benchmark cases.
FOREST = {"n_estimators": 50, "max_depth": 10, "max_samples": 0.05}
# "random": scikit-learn's random forest; "extra": extremely randomised trees (random split
# thresholds, the same draws of rows). Session 18: extra trees lose with the VAE columns.
FOREST_KIND = "random"
# Grow the random forest's trees through :mod:`.trees` (the same trees, less overhead; False:
# scikit-learn's class, kept for the benchmark's timing ablation).
LEAN_FOREST = True
# Voxels a prediction batch may hold (cached features).
PREDICT_VOXELS = 1 << 22
# True: without VAE columns, four centre-surround contrasts join the ilastik set (each
# scale's smoothed intensity minus the next wider one). Session 18: level with the ilastik set
# alone in the engine (+0.002 mean AUC over seven cases), so off; kept for the benchmark.
CONTRAST_WITHOUT_VAE = False


def forest_features_name(vae: bool, contrast: bool = False, extra: int = 0) -> str:
    """What the forest saw, in words for results and logs (``extra``: the caller's columns)."""
    more = f" + {given_columns(extra)}" if extra else ""
    if vae:
        return "ilastik multiscale set + VAE latent and encoder components" + more
    if contrast:
        return "ilastik multiscale set + centre-surround contrasts" + more + " (no VAE features)"
    return "ilastik multiscale set" + (more if more else " only") + " (no VAE features)"


class ForestFeatures:
    """Compact per-voxel features for the random forest, computed slice batch by slice batch.

    The ilastik set (smoothed intensity, gradient magnitude, Hessian eigenvalues at sigma 1-16
    voxels, in-plane) on the normalised image, the VAE's latent mean, and the top principal
    components of the encoder levels (fitted on evenly spaced slices, independent of the
    annotations, so the features can be cached per image and model), then the caller's
    ``extra`` columns (``shape + (k,)``, :mod:`.extra`), if any.
    """

    def __init__(self, run: FeatureRunner, cache: FeatureCache | None,
                 vae: bool = True, extra: np.ndarray | None = None) -> None:
        from ..features import MULTISCALE_SIGMAS

        self.run = run
        self.vae = vae  # False: the ilastik set alone (the ablation of the VAE features)
        self.stroke_memo = None  # the object strokes' last distance map (.strokemaps)
        self.contrast = not vae and CONTRAST_WITHOUT_VAE
        self.enc = slice(0, sum(run.hyper.tap_channels))
        self.n_multiscale = 4 * len(MULTISCALE_SIGMAS)  # the ilastik set: the first columns
        self.n_features = self.n_multiscale + (
            run.hyper.latent_channels + _ENCODER_PCS if vae
            else len(MULTISCALE_SIGMAS) - 1 if self.contrast else 0)
        self.extra = as_extra_columns(extra, run.volume.shape)
        self.n_extra = 0 if self.extra is None else self.extra.shape[-1]
        self.n_features += self.n_extra
        self.cache = cache
        kind = ("forest" if vae else "forest-contrast" if self.contrast
                else "forest-ilastik") + extra_kind(self.extra)
        self.key = cache.key(run.model, run.volume, kind) if cache is not None else None
        self.cached = cache.get(self.key) if cache is not None else None
        self._pca = None

    @property
    def batches(self) -> list[np.ndarray]:
        return self.run.volume_batches

    def _fit_pca(self) -> None:
        torch = self.run.torch
        z = self.run.volume.shape[0]
        if self.run.cfg.spatial_dims == 2:
            # 8 slices, 4 for big slices (>= 512x512): enough voxels for a 4-component PCA.
            n = int(np.clip((1 << 20) // int(np.prod(self.run.volume.shape[1:])), 4, 8))
            picks = np.unique(np.linspace(0, z - 1, min(z, n)).round().astype(int))
        else:
            picks = [None]
        # A fixed seed: the cached features must not depend on the caller's seed.
        g = torch.Generator().manual_seed(0)
        per = -(-50_000 // len(picks))
        parts = []
        for p in picks:  # sampled slice by slice: 4 full 512x512 hypercolumns are 0.5 GB
            zs = np.arange(z) if p is None else np.array([p])
            x = to_rows(self.run.compute(zs), self.run.cfg.spatial_dims)
            parts.append(x[torch.randperm(len(x), generator=g)[:per].to(x.device), self.enc])
        sub = torch.cat(parts)
        mean, std = sub.mean(0), sub.std(0) + 1e-4
        _, _, v = torch.linalg.svd((sub - mean) / std, full_matrices=False)
        self._pca = (mean, std, v[:_ENCODER_PCS].T.contiguous())

    def _parts(self, zs: np.ndarray):
        """The ilastik set (B, C, h, w) and the VAE columns ((B, K, h, w); (1, K, z, h, w)
        for 3D models), or without them the centre-surround contrasts (B, 4, h, w) or None,
        of slices ``zs``, float32 on the CPU."""
        from ..features import multiscale_features

        torch = self.run.torch
        if self._pca is None and self.vae:
            self._fit_pca()
        if self.run.cfg.spatial_dims == 2:
            c = self.run.cfg.context_slices
            x = self.run.input_block(zs)[:, c : c + 1]
        else:
            x = self.run.norm(self.run.volume)[:, None]
        with torch.inference_mode():
            ms = multiscale_features(torch.from_numpy(np.ascontiguousarray(x)).to(
                self.run.device)).float().cpu()
        if not self.vae:
            # Smoothed intensities sit at columns 0, 4, 8...: each minus the next wider one.
            return ms, (ms[:, 0:-4:4] - ms[:, 4::4]) if self.contrast else None
        return ms, self.run.compute_projected(zs, self._pca).float().cpu()

    def compute(self, zs: np.ndarray):
        """Features of slices ``zs`` (all slices for 3D models) as (voxels, F) float32 rows."""
        if self.cached is not None:
            return self.run.torch.from_numpy(self.rows_of(zs)).float()
        ms, more = self._parts(zs)
        dims = self.run.cfg.spatial_dims if self.vae else 2
        parts = [to_rows(ms, 2)] + ([] if more is None else [to_rows(more, dims)])
        if self.extra is not None:
            parts.append(self._extra_rows(zs))
        return parts[0] if len(parts) == 1 else self.run.torch.cat(parts, dim=1)

    def _extra_rows(self, zs: np.ndarray):
        """The caller's columns of slices ``zs`` (any, not only a run) as (voxels, k) rows,
        in the C order of the other columns."""
        rows = self.extra[np.asarray(zs)].reshape(-1, self.n_extra)
        return self.run.torch.from_numpy(rows)

    @property
    def predict_batches(self) -> list[np.ndarray]:
        """Slice batches of the forest's prediction: the feature batches, or with cached
        features batches of up to ``PREDICT_VOXELS`` voxels (scikit-learn's forest costs
        ~0.1 ms a tree a call: a 512x512 CT in 24 small batches spent more in that than in
        its trees)."""
        if self.cached is None:
            return self.batches
        z = self.run.volume.shape[0]
        per = max(1, PREDICT_VOXELS // int(np.prod(self.run.volume.shape[1:])))
        return [np.arange(i, min(i + per, z)) for i in range(0, z, per)]

    def predict_rows(self, zs: np.ndarray) -> tuple[np.ndarray, None]:
        """What the forest predicts slices ``zs`` from: :meth:`rows_of`, and no columns to
        join (:class:`~.strokemaps.WithStrokeDistances` has some)."""
        return self.rows_of(zs), None

    def rows_of(self, zs: np.ndarray) -> np.ndarray:
        """Feature rows of slices ``zs`` as numpy: a view of the float16 cache when there is
        one (the forest converts only the rows it predicts), else computed float32."""
        if self.cached is not None:
            return self.cached[zs[0] : zs[-1] + 1].reshape(-1, self.n_features)
        return self.compute(zs).numpy()

    def fill_cache(self, stop_event) -> Generator[dict, None, None]:
        """One pass over the volume storing the features, when they fit in the cache."""
        if self.cache is None or self.cached is not None or not self.cache.fits(
                self.n_features, self.run.volume.shape):
            return
        shape = self.run.volume.shape
        store = np.empty(shape + (self.n_features,), dtype=np.float16)
        for i, zs in enumerate(self.batches):
            check_stop(stop_event, "segmentation")
            # Written in place, cast on the way: no float32 row copies of the batch.
            dst = self.run.torch.from_numpy(store[zs[0] : zs[-1] + 1])
            ms, vae = self._parts(zs)
            dst[..., : self.n_multiscale].copy_(ms.permute(0, 2, 3, 1))
            if vae is not None:
                grid = vae.permute(0, 2, 3, 1) if vae.ndim == 4 else vae[0].permute(1, 2, 3, 0)
                dst[..., self.n_multiscale : self.n_features - self.n_extra].copy_(grid)
            if self.extra is not None:
                dst[..., self.n_features - self.n_extra :].copy_(self.run.torch.from_numpy(
                    self.extra[zs[0] : zs[-1] + 1]))
            yield {"stage": "segment: features", "done": i + 1, "total": len(self.batches)}
        self.cached = store
        self.cache.put(self.key, store)

    def annotated(self, annotations: np.ndarray, max_per_class: int,
                  rng: np.random.Generator, stop_event):
        """Features (numpy) and ids of a class-balanced sample of the annotated voxels."""
        batches = annotated_batches(annotations, len(self.run.batches[0]),
                                    self.run.cfg.spatial_dims)
        x, y = sample_annotated(annotations, self.compute, batches, max_per_class, rng,
                                stop_event)
        return x.numpy(), y

    def prior_slices(self) -> np.ndarray | None:
        """Slices the background prior may draw from: all when the features are cached,
        else those of up to four evenly spaced batches (each costs a feature pass)."""
        if self.cached is not None:
            return None
        b = self.batches
        picks = np.unique(np.linspace(0, len(b) - 1, min(4, len(b))).round().astype(int))
        return np.concatenate([b[i] for i in picks])

    def rows_at(self, flat: np.ndarray, stop_event=None) -> np.ndarray:
        """Feature rows (float32) of the voxels at C-order indices ``flat``."""
        if self.cached is not None:
            return self.cached.reshape(-1, self.n_features)[flat].astype(np.float32)
        plane = int(np.prod(self.run.volume.shape[1:]))
        z = flat // plane
        out = np.empty((len(flat), self.n_features), dtype=np.float32)
        for zs in self.batches:
            sel = (z >= zs[0]) & (z <= zs[-1])
            if sel.any():
                check_stop(stop_event, "segmentation")
                out[sel] = self.compute(zs).numpy()[flat[sel] - int(zs[0]) * plane]
        return out


@dataclass
class TrainingSet:
    """What the forest learns from: rows, class indices, weights (None: all 1), how many
    rows (the last ones) are the background prior's, and a note for the user (or None).

    ``adaptive`` (with a prior): :meth:`fit` estimates the object's share of the scan from a
    first forest's calls on the prior's uniform sample and refits with the prior weighted by
    it (:func:`.prior.adaptive_prior_weight`); ``object_share`` then holds the estimate.
    """

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None = None
    prior: int = 0
    note: str | None = None
    background_index: int | None = None
    adaptive: bool = False
    object_share: float | None = None
    prototypes: Prototypes | None = None  # columns appended to ``x`` (and at prediction)
    scale: float = 1.0  # of the adaptive weight (adaptive_prior_weight)

    def _fit(self, seed: int, weight: np.ndarray | None, trees: int | None = None):
        forest = fit_forest(self.x, self.y, seed, weight, trees)
        # The forest carries them: its predictions append the same columns to their rows.
        forest.prototypes_ = self.prototypes
        return forest

    def fit(self, seed: int):
        two_pass = self.adaptive and self.prior and self.weight is not None
        # The first forest of the adaptive prior only estimates the object's share.
        forest = self._fit(seed, self.weight, ESTIMATE_TREES if two_pass else None)
        if not two_pass:
            return forest
        n = len(self.y) - self.prior
        bg = list(forest.classes_).index(self.background_index)
        p_obj = 1.0 - forest.predict_proba(self.x[n:])[:, bg]
        self.object_share = max(float(np.mean(p_obj > 0.5)), 1.0 / self.prior)
        n_obj = float(np.count_nonzero(self.y[:n] != self.background_index))
        w = self.weight.copy()
        w[n:] = adaptive_prior_weight(self.object_share, n_obj, self.scale) / self.prior
        self.weight = w
        return self._fit(seed, w)


def training_set(features: ForestFeatures, annotations: np.ndarray, table: ClassTable,
                 options: SegmentOptions, rng: np.random.Generator,
                 spacing: Sequence[float] | None = None, stop_event=None,
                 rows: np.ndarray | None = None) -> TrainingSet:
    """The painted voxels (a class-capped sample) at weight 1 and, with
    ``options.background``, the background prior's unpainted voxels (:mod:`.prior`) as that
    class at a low weight; without the prior and with three or more classes, the class
    prototypes' distances as more columns (:mod:`.prototypes`) and :mod:`.multiprior`.
    ``rows``: the painted voxels that become rows, where not all of ``annotations``
    (:mod:`.unclear`); the prior still avoids every painted voxel."""
    ts = _training_set(features, annotations, table, options, rng, spacing, stop_event,
                       annotations if rows is None else rows)
    if options.prototypes and not ts.prior and len(table.classes) >= MIN_CLASSES:
        cols = features.n_multiscale if PROTOTYPE_COLUMNS == "ilastik" else None
        ts.prototypes = Prototypes.fit(ts.x, ts.y, cols)
        ts.x = ts.prototypes.extend(ts.x)
    return add_multiclass_prior(ts, features, annotations, len(table.classes), options, rng,
                                spacing, stop_event, fit_forest)


def _training_set(features, annotations, table, options, rng, spacing, stop_event, rows):
    """:func:`training_set` before the prototypes: the painted rows and the prior."""
    x, ids = features.annotated(rows, options.max_per_class, rng, stop_event)
    y = table.index(ids)
    bg = effective_background(options.background, table.classes)
    if bg is None:
        return TrainingSet(x, y)
    if int(bg) not in table.classes:
        return TrainingSet(x, y, note=f"background class {bg} is not painted: no background "
                                      f"prior this round (painted classes {table.classes})")
    flat = unpainted_sample(annotations, int(bg), options.background_samples,
                            options.background_margin_mm, spacing, rng,
                            features.prior_slices())
    if flat.size == 0:
        return TrainingSet(x, y, note="no unpainted voxel is far from the object: no "
                                      "background prior this round")
    xu = features.rows_at(flat, stop_event)
    ib = table.classes.index(int(bg))
    # The prior weighs as much as the object's painted voxels: with a stroke or two it is what
    # tells the forest the scan is mostly background; once whole slices of background are
    # painted it fades (its few object voxels must not outweigh the painted object).
    n_obj = int(np.count_nonzero(y != ib))
    w = np.concatenate([np.ones(len(y)),
                        np.full(len(flat), options.background_weight * n_obj / len(flat))])
    yu = np.full(len(flat), ib, dtype=y.dtype)
    return TrainingSet(np.concatenate([x, xu]), np.concatenate([y, yu]), w, len(flat),
                       background_index=ib, adaptive=options.background_adaptive)


def fit_forest(x: np.ndarray, y: np.ndarray, seed: int, sample_weight: np.ndarray | None = None,
               trees: int | None = None):
    """A random forest predicting class indices ``y`` from feature rows ``x``.

    Each tree bootstraps a fraction ``max(5 %, MIN_TREE_SAMPLES / rows)`` of the rows. With
    ``sample_weight`` (the background prior), each tree draws rows with probability
    proportional to their weight (scikit-learn's frequency semantics), as many as that
    fraction of the weights' sum: the object's few painted voxels and the prior's many light
    ones are drawn about as often as they weigh.
    """
    import torch
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    kw = dict(FOREST)
    if trees is not None:
        kw["n_estimators"] = int(trees)
    frac = max(kw["max_samples"], min(1.0, MIN_TREE_SAMPLES / len(y)))
    if sample_weight is not None:
        # As an integer: the same count scikit-learn derives from the fraction, no warning.
        kw["max_samples"] = max(1, int(frac * float(np.sum(sample_weight))))
    elif TREE_FLOOR_WITHOUT_PRIOR:
        # Strokes without the prior (three or more classes): 5 % of a few hundred painted
        # voxels would give each tree ~20 of them, a handful per class.
        kw["max_samples"] = max(1, int(round(frac * len(y))))
    # As many jobs as torch threads, which a batch worker may have limited.
    threads = torch.get_num_threads()
    if FOREST_KIND == "random" and LEAN_FOREST:
        lean = fit_lean_forest(x, y, seed, kw["n_estimators"], kw["max_depth"],
                               kw["max_samples"], sample_weight, threads)
        if lean is not None:  # the same trees without scikit-learn's per-tree overhead
            return lean
    if FOREST_KIND == "extra":  # max_samples needs bootstrap: the same draws of rows
        return ExtraTreesClassifier(**kw, bootstrap=True, n_jobs=threads,
                                    random_state=seed).fit(x, y, sample_weight=sample_weight)
    return RandomForestClassifier(**kw, n_jobs=threads,
                                  random_state=seed).fit(x, y, sample_weight=sample_weight)


class ForestProbabilities:
    """The forest's class probabilities (n_classes, len(zs), *slice shape) of slice batches."""

    def __init__(self, forest, features: ForestFeatures, n_classes: int) -> None:
        self.forest = on_device(forest, features.run.device)  # the GPU's, when there is one
        self.features = features
        self.n_classes = n_classes

    def __call__(self, zs: np.ndarray) -> np.ndarray:
        shape = (len(zs),) + self.features.run.volume.shape[1:]
        rows, more = self.features.predict_rows(zs)
        return forest_predict(self.forest, rows, shape, self.n_classes, more=more)
