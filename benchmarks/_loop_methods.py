"""Segmentation methods of the interactive benchmark, and the loop prototypes.

Every method is a callable ``method(ann, strokes_round) -> Round`` on one (possibly cropped)
volume; ``setup_s`` is what it spends before its first round can start (feature computation,
the VAE fit for VAE methods).

- ``skimage-rf``: scikit-image's trainable segmentation (multiscale_basic_features per axial
  slice, sigma 1-16, + RandomForestClassifier with the scikit-image example's settings);
- ``skimage-rf-connected``: the same + napari-latentseg's keep_connected rule;
- ``vae-default``: ``napari_latentseg.engine.segment.segment`` as it is (forest on ilastik +
  VAE features, keep-connected rule), sharing one FeatureCache across rounds;
- ``vae-finetune``: the same with a fine-tuning round each time, continuing from the previous
  round's model (as the dock and ``--save-model`` do);
- ``forest-*`` prototypes: the engine's forest path re-implemented here on the engine's own
  cached forest features (``FeatureCache``, kind ``"forest"``: 20 ilastik columns, then the
  VAE latent and encoder principal components), so columns can be dropped (``novae``: the
  ablation) and the loop changed (``LoopOptions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from _loop_helpers import (
    finish,
    fit_forest,
    normalise,
    predict,
    sample,
    skimage_features,
    smooth_probs,
    walker,
)
from _loop_helpers import suggest as suggest  # re-exported: probes call lm.suggest

N_MULTISCALE = 20  # 4 features x 5 sigmas (engine.features.MULTISCALE_SIGMAS)
LATENT_COLUMNS = 4  # the default VAE's latent mean channels, after the ilastik set


@dataclass
class Round:
    labels: np.ndarray
    probs: np.ndarray  # (n_classes, *shape) float32
    classes: list[int]
    suggestion: dict | None = None


@dataclass
class LoopOptions:
    """Changes to the forest loop, all off by default (= the engine's forest path)."""

    vae: bool = True  # use the VAE columns (False: the ablation)
    ilastik: bool = True  # use the ilastik columns (False: the VAE columns alone, a probe)
    min_tree_samples: int = 0  # bootstrap at least this many voxels per tree (0: 5 %)
    balanced: bool = False  # class_weight="balanced"
    correction_weight: float = 1.0  # sample weight of corrective strokes
    smooth: float = 0.0  # Gaussian sigma (in-plane voxels, isotropic in mm) on probabilities
    connected: bool = True  # keep_connected rule
    stable_radius: float = 0.0  # mm: farther from the new stroke, keep the previous label...
    stable_p: float = 0.9  # ...unless the new top probability reaches this
    momentum: float = 0.0  # weight of last round's probabilities in this round's
    momentum_where: str = "all"  # "all"; "far": only farther than momentum_radius from the
    #   newest stroke; "shrink": only where the object's probability fell (the object grows
    #   at once, shrinks at half speed); "unsettled": only where last round's label had
    #   just changed (a voxel flipping back is held; everywhere in the first correction)
    momentum_radius: float = 20.0  # mm, for "far"
    walker_beta: float = 0.0  # > 0: random walker on the probabilities, seeded by strokes
    walker_sure: float = 0.97  # ... and by voxels the forest is this sure of
    walker_mix: float = 1.0  # weight of the walker's probabilities against the forest's
    stable_gain_only: bool = False  # the rule only stops far voxels joining the new class
    anchor: int = 0  # train also on this many voxels per class of last round's labels...
    anchor_weight: float = 0.2  # ... at this weight, far from the newest stroke
    anchor_radius: float = 10.0  # mm
    classifier: str = "forest"  # "forest", "knn" (feature-space neighbours) or "both"
    k: int = 15
    min_leaf: int = 1  # forest min_samples_leaf (smoother probabilities)
    trees: int = 50
    max_features: str | float | None = "sqrt"  # features a split draws from (scikit-learn's)
    seed: int = 0  # forest seed (the seed study: how much of a curve is chance)
    pu: int = 0  # two-class tasks: this many unpainted voxels join the background class...
    pu_frac: float = 1.0  # ... with this much total weight (x the painted voxels' count) ...
    pu_exclude: float = 0.0  # ... none within this many mm of an object stroke
    pu_class: int = 1  # the background class's label
    pu_obj: bool = False  # weight relative to the object's painted voxels (the engine's)
    pu_adapt: float = 0.0  # > 0: two passes; the second weighs the prior by the object's
    #                        estimated share pi of the sample: kappa (1 - pi) / pi x object
    pu_cap: float = 50.0  # ... at most this many times the object's painted voxels
    pu_power: float = 1.0  # ... kappa ((1 - pi) / pi) ** power (0.5: gentler on big objects)
    pu_early: float = 0.0  # > 0: kappa in the first ``early_rounds`` rounds (a lighter prior
    early_rounds: int = 0  #   while the object is barely painted)
    pu_refine: float = 0.0  # > 0: refit without prior voxels whose out-of-bag object
    #                         probability exceeds this (reliable negatives, PU learning)
    reach: float = 0.0  # > 0 (mm): two-class tasks, the object's probability fades beyond
    #   max(reach, reach_factor x the object strokes' spread) from the nearest object stroke
    reach_factor: float = 1.5
    reach_geodesic: float = 0.0  # > 0: the reach's distance is geodesic through the image,
    #   each mm costing 1 + this x the smoothed image's gradient (normalised units per mm)
    reach_on: str = "image"  # the geodesic cost's channels: "image" (the ilastik set's
    #   smoothed image), "latent" (the VAE latent mean's channels) or "both"
    extra: tuple = ()  # extra columns (bench_interactive.extra_columns): "dae", "vaectx"


# --------------------------------------------------------------------------- methods
class SkimageRF:
    """scikit-image trainable segmentation (the baseline), optionally + keep_connected."""

    def __init__(self, image, modality, spacing, connected: bool = False,
                 opts: LoopOptions | None = None):
        t0 = time.perf_counter()
        self.feats = skimage_features(normalise(image, modality))
        self.setup_s = time.perf_counter() - t0
        self.opts = opts or LoopOptions(connected=connected)
        self.opts.connected = connected
        self.spacing = spacing

    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray) -> Round:
        rng = np.random.default_rng(self.opts.seed)
        idx = sample(ann, rng)
        flat = self.feats.reshape(-1, self.feats.shape[-1])
        clf = fit_forest(flat[idx], ann.reshape(-1)[idx], self.opts, seed=self.opts.seed)
        classes = [int(c) for c in clf.classes_]
        probs = predict(clf, self.feats, ann.shape)
        if self.opts.smooth:
            probs = smooth_probs(probs, self.opts.smooth, self.spacing)
        return Round(finish(probs, classes, ann, self.opts.connected), probs, classes)


class VAEDefault:
    """The engine's segment() as it is; ``finetune_steps`` > 0 continues from each round's
    fine-tuned model."""

    def __init__(self, model, image, modality, fit_s: float, cache, finetune_steps: int = 0,
                 seed: int = 0, spacing=None, **options):
        self.seed = seed
        self.model, self.image, self.modality = model, image, modality
        self.cache = cache
        self.ft = finetune_steps
        self.setup_s = fit_s
        self.spacing = spacing
        # Engine constants patched for an ablation, (module, name) -> value: the bootstrap
        # floor without the prior, the prototypes' columns (session 8), the object-end
        # suggestion (session 12).
        self.patch = {where: options.pop(key) for key, where in (
            ("tree_floor", ("forest", "TREE_FLOOR_WITHOUT_PRIOR")),
            ("proto_columns", ("forest", "PROTOTYPE_COLUMNS")),
            ("suggest_end", ("fewshot", "SUGGEST_OBJECT_END")),
            ("adapt_kappa", ("prior", "ADAPT_KAPPA")),
            ("far_growth", ("fewshot", "FAR_GROWTH")),
            ("fresh_shrinks", ("fewshot", "FRESH_SHRINKS_AT_ONCE")),
            ("swap_moved", ("fewshot", "SWAP_MOVED")),
            ("refine_margin", ("coarse", "REFINE_BY_MARGIN")),
            ("forest", ("forest", "FOREST")),
            ("boundary_grow_only", ("boundary", "GROW_ONLY")),
            ("boundary_band", ("boundary", "BAND")),
            ("contrast_columns", ("forest", "CONTRAST_WITHOUT_VAE")),
            ("forest_kind", ("forest", "FOREST_KIND")),
            ("refine_unsure_classes", ("coarse", "REFINE_UNSURE_MAX_CLASSES")),
            ("lean_forest", ("forest", "LEAN_FOREST")),
            ("small_share", ("multiprior", "SMALL_SHARE")),
            ("iterate_connected", ("postprocess", "ITERATE_CONNECTED")),
            ("min_move_p", ("postprocess", "MIN_MOVE_P")),
            ("growth_floor", ("options", "MARGINAL_GROWTH")),
            ("growth_weight", ("options", "MARGINAL_WEIGHT"))) if key in options}
        # The prior's scale in the first round(s) only (probe, session 13): a number (the
        # first round) or a list (round by round; the default's scale after it).
        self.first_kappa = options.pop("first_kappa", None)
        # The edge step (boundary_refine) in the first N rounds only (probe, session 19).
        self.boundary_rounds = options.pop("boundary_rounds", None)
        # Extra forest columns (z, y, x, k): the engine's extra_features (session 37's probe,
        # the engine's own argument since session 38).
        self.extra = options.pop("extra", None)
        self.round = 0
        self.options = options  # SegmentOptions fields (background, vae_features...)
        self.last = None  # the previous round's result (momentum)

    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray) -> Round:
        import napari_latentseg.engine.segment.boundary as boundary
        import napari_latentseg.engine.segment.coarse as coarse
        import napari_latentseg.engine.segment.fewshot as fewshot
        import napari_latentseg.engine.segment.forest as forest
        import napari_latentseg.engine.segment.multiprior as multiprior
        import napari_latentseg.engine.segment.options as seg_options
        import napari_latentseg.engine.segment.postprocess as postprocess
        import napari_latentseg.engine.segment.prior as prior
        from napari_latentseg.engine.segment import segment

        kw = {"finetune_steps": self.ft} if self.ft else {}
        if self.boundary_rounds is not None:
            kw["boundary_refine"] = self.round < self.boundary_rounds
        modules = {"forest": forest, "coarse": coarse, "fewshot": fewshot, "prior": prior,
                   "boundary": boundary, "multiprior": multiprior, "postprocess": postprocess,
                   "options": seg_options}
        patch = dict(self.patch)
        ramp = self.first_kappa
        if ramp is not None and not isinstance(ramp, (list, tuple)):
            ramp = [ramp]
        if ramp is not None and self.round < len(ramp):
            patch[("prior", "ADAPT_KAPPA")] = ramp[self.round]
        self.round += 1
        saved = {(m, name): getattr(modules[m], name) for m, name in patch}
        for (m, name), value in patch.items():
            setattr(modules[m], name, value)
        try:
            res = segment(self.model, self.image, ann, modality=self.modality,
                          cache=self.cache, seed=self.seed, spacing=self.spacing,
                          previous=self.last, extra_features=self.extra, **kw, **self.options)
        finally:
            for (m, name), value in saved.items():
                setattr(modules[m], name, value)
        self.last = res
        if self.ft:
            self.model = res.model
        return Round(np.asarray(res.labels, dtype=np.int64), res.probabilities,
                     list(res.classes), res.suggestion)


def engine_forest_features(model, image, modality, cache, ann) -> np.ndarray:
    """The engine's cached forest features (z, y, x, F) float16 (one segment() call fills
    the cache if it is empty)."""
    from napari_latentseg.engine.segment import segment

    key = cache.key(model, image, "forest")
    f = cache.get(key)
    if f is None:
        segment(model, image, ann, modality=modality, cache=cache)
        f = cache.get(key)
    return f


class ForestLoop:
    """The engine's forest path on its own features, with the loop changes of ``opts``."""

    def __init__(self, feats: np.ndarray, spacing, opts: LoopOptions, setup_s: float,
                 extra: np.ndarray | None = None):
        self.all_feats = feats  # the reach may measure on the VAE's channels (reach_on)
        self.feats = feats if opts.vae else feats[..., :N_MULTISCALE]
        if not opts.ilastik:  # how much the VAE columns know on their own
            self.feats = feats[..., N_MULTISCALE:]
        if extra is not None:
            self.feats = np.concatenate([self.feats, extra.astype(self.feats.dtype)], -1)
        self.opts = opts
        self.spacing = spacing
        self.setup_s = setup_s
        self.prev: np.ndarray | None = None
        self.prev_prev: np.ndarray | None = None  # labels two rounds back
        self.prev_probs: np.ndarray | None = None
        self.mu = self.sd = None

    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray) -> Round:
        o = self.opts
        self.round = int(strokes_round.max()) - 1  # 0: the first strokes' round
        rng = np.random.default_rng(o.seed)
        idx = sample(ann, rng)
        flat = self.feats.reshape(-1, self.feats.shape[-1])
        y = ann.reshape(-1)[idx]
        w = None
        if o.correction_weight != 1.0:
            # strokes_round: 1 = first strokes, r + 1 = the correction of round r.
            w = np.where(strokes_round.reshape(-1)[idx] > 1, o.correction_weight, 1.0)
        if o.anchor and self.prev is not None:
            aidx = self._anchors(ann, strokes_round, rng)
            w = np.ones(len(idx)) if w is None else w
            w = np.concatenate([w, np.full(len(aidx), o.anchor_weight)])
            y = np.concatenate([y, self.prev.reshape(-1)[aidx]])
            idx = np.concatenate([idx, aidx])
        n_painted = len(idx)
        if o.pu and len(np.unique(y)) == 2 and o.pu_class in y:
            uidx = self._unlabelled(ann, rng)
            w = np.ones(len(idx)) if w is None else w
            base = (w * (y != o.pu_class)).sum() if o.pu_obj else w.sum()
            wu = o.pu_frac * base / max(len(uidx), 1)
            w = np.concatenate([w, np.full(len(uidx), wu)])
            y = np.concatenate([y, np.full(len(uidx), o.pu_class, dtype=y.dtype)])
            idx = np.concatenate([idx, uidx])
        x = flat[idx].astype(np.float32)
        classes = [int(c) for c in np.unique(y)]
        probs = 0.0
        if o.classifier in ("forest", "both"):
            clf = fit_forest(x, y, o, w, o.seed)
            if o.pu_refine and o.pu and len(classes) == 2 and w is not None:
                clf = self._refine(clf, x, y, w, n_painted)
            if o.pu_adapt and o.pu and len(classes) == 2 and w is not None:
                clf = self._adapt(clf, x, y, w, n_painted)
            probs = predict(clf, self.feats, ann.shape)
        if o.classifier in ("knn", "both"):
            pk = self._knn(x, y, w, ann.shape)
            probs = pk if o.classifier == "knn" else 0.5 * (probs + pk)
        if o.smooth:
            probs = smooth_probs(probs, o.smooth, self.spacing)
        if o.momentum and self.prev_probs is not None and \
                self.prev_probs.shape == probs.shape:
            m = self._momentum_weight(probs, classes, strokes_round)
            probs = ((1 - m) * probs + m * self.prev_probs).astype(np.float32)
        self.prev_probs = probs
        if o.reach and len(classes) == 2 and o.pu_class in classes:
            probs = self._reach(probs, classes, ann)
        if o.walker_beta:
            pw = walker(probs, classes, ann, o.walker_beta, o.walker_sure)
            probs = o.walker_mix * pw + (1 - o.walker_mix) * probs
        labels = finish(probs, classes, ann, o.connected)
        if o.stable_radius and self.prev is not None:
            labels = self._stabilise(labels, probs, ann, strokes_round)
        self.prev_prev, self.prev = self.prev, labels
        return Round(labels, probs, classes)

    def _reach(self, probs, classes, ann):
        """The object's probability times the engine's reach gate (engine/segment/reach.py)
        with this loop's floor and factor; the distance Euclidean, or geodesic on the
        ilastik set's Gaussian at 2 voxels on a fixed in-plane / 4 grid (as measured)."""
        from scipy import ndimage as ndi

        from napari_latentseg.engine.segment.reach import (
            geodesic_distance,
            reach_gate,
            reach_radius,
        )

        o = self.opts
        obj_c = [c for c in classes if c != o.pu_class][0]
        oi = classes.index(obj_c)
        painted = ann == obj_c
        r = reach_radius(painted, self.spacing, o.reach, o.reach_factor)
        if o.reach_geodesic:
            lat = slice(N_MULTISCALE, N_MULTISCALE + LATENT_COLUMNS)
            src = {"image": lambda: self.all_feats[..., 4],
                   "latent": lambda: self.all_feats[..., lat],
                   "both": lambda: self.all_feats[..., [4] + list(range(lat.start, lat.stop))],
                   "latent-smooth": lambda: self._smooth_latent(lat),
                   }[o.reach_on]()
            d = geodesic_distance(src, painted, self.spacing, o.reach_geodesic, grid=4)
        else:
            d = ndi.distance_transform_edt(~painted, sampling=self.spacing)
        out = probs.copy()
        out[oi] = probs[oi] * reach_gate(d, r)
        out[1 - oi] = 1.0 - out[oi]
        self.last_reach = r
        return out

    def _smooth_latent(self, lat: slice) -> np.ndarray:
        """The latent channels smoothed in-plane (Gaussian, 2 voxels, as the image's column
        4), computed once."""
        if getattr(self, "_lat_smooth", None) is None:
            from scipy import ndimage as ndi

            v = self.all_feats[..., lat].astype(np.float32)
            self._lat_smooth = np.stack([ndi.gaussian_filter(v[..., k], (0, 2, 2))
                                         for k in range(v.shape[-1])], -1)
        return self._lat_smooth

    def _momentum_weight(self, probs, classes, strokes_round):
        """Momentum per voxel (a scalar for "all"): where the last round's probabilities are
        averaged into this round's."""
        from scipy import ndimage as ndi

        o = self.opts
        if o.momentum_where == "all":
            return o.momentum
        if o.momentum_where == "far":
            newest = strokes_round == strokes_round.max()
            near = ndi.distance_transform_edt(~newest, sampling=self.spacing) <= o.momentum_radius
            return np.where(near, 0.0, o.momentum).astype(np.float32)
        if o.momentum_where == "shrink":
            # Two-class tasks: the object is the class other than the prior's background.
            obj = [i for i, c in enumerate(classes) if c != o.pu_class]
            if len(classes) != 2 or len(obj) != 1:
                return o.momentum
            return np.where(probs[obj[0]] < self.prev_probs[obj[0]], o.momentum,
                            0.0).astype(np.float32)
        if o.momentum_where == "unsettled":
            if self.prev_prev is None:
                return o.momentum
            return np.where(self.prev != self.prev_prev, o.momentum, 0.0).astype(np.float32)
        raise ValueError(f"unknown momentum_where {o.momentum_where!r}")

    def _adapt(self, clf, x, y, w, n_painted):
        """Refit with the prior weighted by the object's share of the scan, estimated from
        the first forest's calls on the prior's own (uniform) voxels."""
        o = self.opts
        obj = [i for i, c in enumerate(clf.classes_) if c != o.pu_class][0]
        n_prior = len(y) - n_painted
        pi = max(float((clf.predict_proba(x[n_painted:])[:, obj] > 0.5).mean()),
                 1.0 / n_prior)
        n_obj = float((w[:n_painted] * (y[:n_painted] != o.pu_class)).sum())
        kappa = o.pu_early if o.pu_early and self.round < o.early_rounds else o.pu_adapt
        total = n_obj * float(np.clip(kappa * ((1 - pi) / pi) ** o.pu_power, 1.0, o.pu_cap))
        w2 = w.copy()
        w2[n_painted:] = total / n_prior
        self.last_pi = pi
        return fit_forest(x, y, o, w2, o.seed)

    def _refine(self, clf, x, y, w, n_painted):
        """Drop prior voxels the first forest calls the object, refit (each light prior voxel
        is in a tree's bootstrap rarely, so its prediction is nearly out-of-bag)."""
        o = self.opts
        obj = [i for i, c in enumerate(clf.classes_) if c != o.pu_class][0]
        p = clf.predict_proba(x[n_painted:])[:, obj]
        keep = np.concatenate([np.ones(n_painted, bool), p <= o.pu_refine])
        return fit_forest(x[keep], y[keep], o, w[keep], o.seed)

    def _unlabelled(self, ann, rng) -> np.ndarray:
        """A uniform sample of unpainted voxels (mostly background in an object task: the
        positive-unlabelled prior), away from the object's strokes."""
        from scipy import ndimage as ndi

        free = ann == 0
        obj = (ann > 0) & (ann != self.opts.pu_class)
        if self.opts.pu_exclude and obj.any():
            free &= ndi.distance_transform_edt(~obj, sampling=self.spacing) > self.opts.pu_exclude
        cand = np.flatnonzero(free.reshape(-1))
        return np.sort(rng.choice(cand, min(self.opts.pu, len(cand)), replace=False))

    def _anchors(self, ann, strokes_round, rng) -> np.ndarray:
        """Voxels of last round's labels (a sample per class) far from the newest stroke."""
        from scipy import ndimage as ndi

        newest = strokes_round == strokes_round.max()
        far = ndi.distance_transform_edt(~newest, sampling=self.spacing) > self.opts.anchor_radius
        far &= ann == 0
        prev = self.prev.reshape(-1)
        cand = np.flatnonzero(far.reshape(-1))
        out = [rng.permutation(cand[prev[cand] == c])[: self.opts.anchor]
               for c in np.unique(prev[cand])]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _knn(self, x, y, w, shape):
        """Class probabilities from the ``k`` nearest annotated voxels in standardised
        feature space (class-balanced: each class's votes divided by its share)."""
        from sklearn.neighbors import KNeighborsClassifier

        if self.mu is None:
            rows = self.feats.reshape(-1, self.feats.shape[-1])
            sub = rows[:: max(1, len(rows) // 50_000)].astype(np.float32)
            self.mu, self.sd = sub.mean(0), sub.std(0) + 1e-3
        k = min(self.opts.k, len(y))
        clf = KNeighborsClassifier(k, weights="distance").fit((x - self.mu) / self.sd, y)
        rows = self.feats.reshape(-1, self.feats.shape[-1])
        out = np.empty((len(clf.classes_), len(rows)), dtype=np.float32)
        share = np.bincount(np.searchsorted(clf.classes_, y)) / len(y)
        for i in range(0, len(rows), 1 << 16):
            p = clf.predict_proba((rows[i : i + (1 << 16)].astype(np.float32) - self.mu)
                                  / self.sd)
            if self.opts.balanced:
                p = p / share
                p /= p.sum(1, keepdims=True)
            out[:, i : i + (1 << 16)] = p.T
        return out.reshape((-1,) + tuple(shape))

    def _stabilise(self, labels, probs, ann, strokes_round):
        """Far from the newest stroke, keep last round's label unless strongly contradicted."""
        from scipy import ndimage as ndi

        newest = strokes_round == strokes_round.max()
        dist = ndi.distance_transform_edt(~newest, sampling=self.spacing)
        keep = (dist > self.opts.stable_radius) & (probs.max(0) < self.opts.stable_p)
        keep &= ann == 0
        if self.opts.stable_gain_only:
            c = int(np.bincount(ann[newest]).argmax())
            keep &= (labels == c) & (self.prev != c)
        out = labels.copy()
        out[keep] = self.prev[keep]
        return out


@dataclass
class MethodSpec:
    name: str
    kind: str  # skimage | vae | forest
    connected: bool = False
    finetune_steps: int = 0
    opts: LoopOptions = field(default_factory=LoopOptions)
