"""Interactive correction loop: simulated strokes and suggested slices, Dice per round.

Protocols (the annotator is benchmarks/_interactive.py):

- ``strokes``: one disk stroke (radius 4 voxels) per class, then each round one corrective
  stroke at the most interior voxel of the largest 3D error component, with the true label;
- ``slices``: one fully annotated axial slice (the largest object area; the phantom's middle),
  then each round the slice the method suggests (engine: ``SegmentationResult.suggestion``;
  other methods: the engine's ``suggest_slices`` on their own probabilities).

Cases: the phantom's tissue classes, tumour vs background in brain1, brain2, lung1, lung2,
breast1 (/work/shared/data/pyradiomics; skipped when missing) and ``brain1-unequal`` /
``phantom-unequal`` (the background stroke has radius 1: 5 voxels against 49).
Dice is over all voxels: the tumour (pyradiomics) or the mean over the phantom's tissues.

Methods: see benchmarks/_loop_methods.py and benchmarks/_semisup.py. VAEs are fitted once per
scan (the product default, 450 steps; ``LATENTSEG_BENCH_FIT_MINUTES`` caps it) and cached in
benchmarks/.cache/interactive (``LATENTSEG_BENCH_CACHE``).

Usage: ``python benchmarks/bench_interactive.py [--cases ...] [--methods ...] [--rounds 10]
[--protocols strokes slices] [--quick] [--seeds N]``; writes
``benchmarks/results/interactive.json`` and ``interactive.md``. ``--quick`` crops around the
object and runs 6 stroke rounds and 3 slice rounds (fine-tuning: 20 steps, 2 and 1 rounds).
``--seeds N`` repeats every run with seeds 0..N-1 and adds a mean ± sd table (one seed
moves a case's AUC by up to 0.15).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _interactive as ia  # noqa: E402
import _loop_methods as lm  # noqa: E402
import _semisup as ss  # noqa: E402
from _loop_methods import LoopOptions as LO  # noqa: E402

FINETUNE_STEPS = 60
# The default's forest loop (the engine reproduces it round for round): the background
# prior weighted by the root of the object's odds; the sqrt1-* variants change one thing.
R = dataclasses.replace
SQRT1 = LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True, pu_adapt=1.0,
           pu_cap=10.0, pu_power=0.5)
# The loop changes measured (benchmarks/_loop_methods.py); "loop" is the combination kept.
LOOPS = {
    "forest-engine": LO(),  # the engine's forest path re-implemented (sanity check)
    "novae": LO(vae=False),  # ablation: the engine's forest without the VAE columns
    "loop-bootstrap": LO(min_tree_samples=500),
    "loop-balanced": LO(min_tree_samples=500, balanced=True),
    "loop-smooth": LO(min_tree_samples=500, balanced=True, smooth=1.0),
    "loop-weight": LO(min_tree_samples=500, balanced=True, smooth=1.0, correction_weight=3.0),
    "loop-stable": LO(min_tree_samples=500, balanced=True, smooth=1.0, stable_radius=20.0),
    "loop-momentum": LO(min_tree_samples=500, balanced=True, smooth=1.0, momentum=0.5),
    "loop-walker": LO(min_tree_samples=500, balanced=True, walker_beta=30.0),
    "loop-wm": LO(min_tree_samples=500, balanced=True, smooth=1.0, correction_weight=3.0,
                  momentum=0.5),
    "loop-knn": LO(classifier="knn", balanced=True, smooth=1.0),
    "loop-both": LO(classifier="both", min_tree_samples=500, balanced=True, smooth=1.0),
    "loop-gain": LO(min_tree_samples=500, balanced=True, smooth=1.0, stable_radius=15.0,
                    stable_gain_only=True),
    "loop-gain2": LO(min_tree_samples=500, balanced=True, smooth=1.0, stable_radius=10.0,
                     stable_gain_only=True, stable_p=0.98),
    "loop-anchor": LO(min_tree_samples=500, balanced=True, anchor=1000),
    "loop-anchor-s": LO(min_tree_samples=500, balanced=True, smooth=1.0, anchor=1000),
    "loop-anchor-e": LO(anchor=1000),
    "loop-bal": LO(balanced=True),
    "loop-bal-mom": LO(balanced=True, momentum=0.5),
    "loop-leaf": LO(balanced=True, min_leaf=5, min_tree_samples=500),
    "loop-trees": LO(balanced=True, trees=200),
    "loop-walker-mix": LO(balanced=True, walker_beta=30.0, walker_mix=0.5),
    "loop-walker-b": LO(balanced=True, walker_beta=30.0),
    # The change kept: class-balanced forest weights (unequal strokes); the others lost.
    "loop": LO(balanced=True),
    # positive-unlabelled prior for object-vs-background: unpainted voxels as weak background
    "pu": LO(pu=2000, min_tree_samples=500),
    "pu-novae": LO(vae=False, pu=2000, min_tree_samples=500),
    "pu-half": LO(pu=2000, pu_frac=0.5, min_tree_samples=500),
    "pu-2": LO(pu=2000, pu_frac=2.0, min_tree_samples=500),
    "pu-ex": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500),
    "pu-ex-novae": LO(vae=False, pu=2000, pu_exclude=10.0, min_tree_samples=500),
    "pu-obj": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True),  # = engine
    "pu-obj-r5": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                    pu_refine=0.5),
    "pu-obj-r3": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                    pu_refine=0.3),
    "pu-obj-gain": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                      stable_radius=15.0, stable_gain_only=True),
    "pu-obj-gain25": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                        stable_radius=25.0, stable_gain_only=True),
    "pu-obj-mom": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                     momentum=0.5),
    "pu-obj-walk": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                      walker_beta=30.0, walker_mix=0.5),
    "pu-adapt": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True, pu_adapt=0.5),
    "pu-adapt25": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                     pu_adapt=0.25),
    "pu-adapt-c10": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                       pu_adapt=0.5, pu_cap=10.0),
    "pu-adapt-c5": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                      pu_adapt=0.5, pu_cap=5.0),
    "pu-adapt-c3": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                      pu_adapt=0.5, pu_cap=3.0),
    "loop-novae": LO(vae=False, min_tree_samples=500, balanced=True, smooth=1.0),
    # The default's features split: the ilastik columns alone, the VAE columns alone.
    "pu-adapt-c10-novae": LO(vae=False, pu=2000, pu_exclude=10.0, min_tree_samples=500,
                             pu_obj=True, pu_adapt=0.5, pu_cap=10.0),
    # The weight's slope: kappa ((1 - pi) / pi) ** 0.5, gentler where the object is a few %.
    "pu-adapt-sqrt": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                        pu_adapt=0.5, pu_cap=10.0, pu_power=0.5),
    "pu-adapt-sqrt1": SQRT1,  # = the engine's default
    "pu-adapt-sqrt1-novae": R(SQRT1, vae=False),
    # The random walker (session 1's only two-case gain) on top of the default's prior.
    "pu-adapt-c10-walk": LO(pu=2000, pu_exclude=10.0, min_tree_samples=500, pu_obj=True,
                            pu_adapt=0.5, pu_cap=10.0, walker_beta=30.0, walker_mix=0.5),
    # Extra columns (issue #13 session 4): the denoiser's anomaly score; wider VAE context.
    "sqrt1-dae": R(SQRT1, extra=("dae",)),
    "sqrt1-dae-novae": R(SQRT1, vae=False, extra=("dae",)),
    "sqrt1-vaectx": R(SQRT1, extra=("vaectx",)),
    # The latent of the scan at half resolution (session 17): context the filters lack.
    "sqrt1-vaecoarse": R(SQRT1, extra=("vaecoarse",)),
    "sqrt1-dog": R(SQRT1, extra=("dog",)),
    "sqrt1-dog-novae": R(SQRT1, vae=False, extra=("dog",)),
    # The VAE posterior's log sigma (session 9): how sure the encoder is, 4 more columns.
    "sqrt1-vaesigma": R(SQRT1, extra=("vaesigma",)),
    # How many columns a split draws from (session 5): with more VAE columns the default
    # draws the ilastik ones less often; half or all of them, with and without the VAE.
    "sqrt1-mf05": R(SQRT1, max_features=0.5),
    "sqrt1-mf05-novae": R(SQRT1, vae=False, max_features=0.5),
    "sqrt1-mf1": R(SQRT1, max_features=None),
    "sqrt1-mf1-novae": R(SQRT1, vae=False, max_features=None),
    # Momentum on the current default (session 5): last round's probabilities averaged in.
    "sqrt1-mom": R(SQRT1, momentum=0.5),
    "sqrt1-mom3": R(SQRT1, momentum=0.3),
    # Momentum only where the loop oscillates (session 6): far from the newest stroke, where
    # the object shrinks, or where the last label had just changed.
    "sqrt1-mom-far": R(SQRT1, momentum=0.5, momentum_where="far", momentum_radius=20.0),
    "sqrt1-mom-far10": R(SQRT1, momentum=0.5, momentum_where="far", momentum_radius=10.0),
    "sqrt1-mom-shrink": R(SQRT1, momentum=0.5, momentum_where="shrink"),
    "sqrt1-mom-unsettled": R(SQRT1, momentum=0.5, momentum_where="unsettled"),
    # The object's probability fading beyond a reach from its strokes (session 10: Euclidean,
    # lost; session 11: geodesic through the image's edges).
    "sqrt1-reach": R(SQRT1, reach=20.0),
    "sqrt1-geo50": R(SQRT1, reach=20.0, reach_geodesic=50.0),
    "sqrt1-geo200": R(SQRT1, reach=20.0, reach_geodesic=200.0),
    "sqrt1-reach40": R(SQRT1, reach=40.0),
    "sqrt1-geo50-r40": R(SQRT1, reach=40.0, reach_geodesic=50.0),
    "sqrt1-geo20-r40": R(SQRT1, reach=40.0, reach_geodesic=20.0),
    # With the reach holding far tissue back, does a lighter prior find the object sooner?
    "geo-k05": R(SQRT1, reach=40.0, reach_geodesic=50.0, pu_adapt=0.5),
    "geo-cap5": R(SQRT1, reach=40.0, reach_geodesic=50.0, pu_cap=5.0),
    "geo-k05-early3": R(SQRT1, reach=40.0, reach_geodesic=50.0, pu_early=0.5, early_rounds=3),
    # Session 12: the reach measured through the VAE latent's channels instead of the image
    # (each channel in its standard deviations; raw or smoothed in-plane at 2 voxels), or
    # both; and the ablation's reach.
    "geo-latent50": R(SQRT1, reach=40.0, reach_geodesic=50.0, reach_on="latent"),
    "geo-latent15": R(SQRT1, reach=40.0, reach_geodesic=15.0, reach_on="latent"),
    "geo-both50": R(SQRT1, reach=40.0, reach_geodesic=50.0, reach_on="both"),
    "geo-latsm50": R(SQRT1, reach=40.0, reach_geodesic=50.0, reach_on="latent-smooth"),
    "geo-latsm15": R(SQRT1, reach=40.0, reach_geodesic=15.0, reach_on="latent-smooth"),
    "geo-novae": R(SQRT1, vae=False, reach=40.0, reach_geodesic=50.0),
    "pu-adapt-c10-vaeonly": LO(ilastik=False, pu=2000, pu_exclude=10.0, min_tree_samples=500,
                               pu_obj=True, pu_adapt=0.5, pu_cap=10.0),
}
# The engine's segment() as the dock and CLI call it, with these SegmentOptions fields.
ENGINE = {
    "vae-default": {},
    "vae-finetune": {},
    "engine-noprior": {"background": None},  # the default before the background prior
    "engine-novae": {"vae_features": False},  # ablation of the VAE columns, same prior
    # Session 18 (both lose): centre-surround columns without the VAE's; extremely randomised
    # trees in place of the random forest, with and without the VAE's columns.
    "engine-novae-dog": {"vae_features": False, "contrast_columns": True},
    "vae-extra": {"forest_kind": "extra"},
    "engine-novae-extra": {"vae_features": False, "forest_kind": "extra"},
    # Session 19: unsure voxels refined with any number of classes (the default before).
    "vae-refine-unsure": {"refine_unsure_classes": 1 << 30},
    # ... and scikit-learn's forest class: the engine of session 18 (its times).
    "vae-s18": {"refine_unsure_classes": 1 << 30, "lean_forest": False},
    "nomodel": {"no_model": True},  # no fit at all: the first result while the VAE fits
    # The prior's weight: adaptive (the default since it was measured on whole volumes) or
    # fixed (as much as the painted object; the default before).
    "vae-fixed": {"background_adaptive": False},
    "engine-novae-fixed": {"vae_features": False, "background_adaptive": False},
    "prior-w2": {"background_weight": 2.0, "background_adaptive": False},
    "prior-w05": {"background_weight": 0.5, "background_adaptive": False},
    # Momentum (session 5, opt-in): the previous round's probabilities averaged in.
    "vae-momentum": {"momentum": 0.5, "momentum_where": "all"},
    # Session 12, with the reach: momentum everywhere at 0.3, only where the object shrinks
    # at 0.5 or 0.7 (the default since), and none (the default before).
    "vae-mom03": {"momentum": 0.3, "momentum_where": "all"},
    "vae-mom-shrink": {"momentum": 0.5, "momentum_where": "shrink"},
    "vae-mom07-shrink": {"momentum": 0.7, "momentum_where": "shrink"},
    "vae-nomomentum": {"momentum": 0.0},
    # Session 12: the next slice past an end of the object on an annotated slice (the
    # default), or the most uncertain slice alone (the suggestion before).
    "vae-suggest-uncertain": {"suggest_end": False},
    # Session 11: the object's geodesic reach (the default); without it, the engine before.
    "vae-noreach": {"object_reach": False},
    "vae-k05": {"adapt_kappa": 0.5},  # a lighter prior, now that momentum holds the shrink
    "vae-k07": {"adapt_kappa": 0.7},
    # The prior's scale in the first round(s) only (session 13): the probe patching the
    # constant, ramps, and the engine's option (vae-fresh05 = vae-first-k05 round for round).
    "vae-first-k05": {"first_kappa": 0.5},
    "vae-first-k03": {"first_kappa": 0.3},
    "vae-ramp": {"first_kappa": [0.5, 0.75]},  # then 1
    "vae-ramp3": {"first_kappa": [0.5, 0.67, 0.83]},
    "vae-fresh05": {"fresh_prior_scale": 0.5},
    "vae-boundary": {"boundary_refine": True},  # local region competition at the edge
    "vae-boundary-grow": {"boundary_refine": True, "boundary_grow_only": True},
    "vae-boundary-b1": {"boundary_refine": True, "boundary_band": 1},
    # Session 14: the edge step's moved voxels swap their probabilities (a probe, off in the
    # engine), with momentum 0.85 (the default since) and 0.7 (the default before).
    "vae-boundary-swap": {"boundary_refine": True, "swap_moved": True},
    "vae-boundary-swap-m70": {"boundary_refine": True, "swap_moved": True, "momentum": 0.7},
    "vae-m85": {"momentum": 0.85},
    "vae-m90": {"momentum": 0.9},
    "vae-m70": {"momentum": 0.7},  # the default before session 14
    # Session 15: with three or more classes, "unsure" was the top probability below 0.8
    # (refined again at the finer level) before the runner-up's margin replaced it.
    "vae-topsure": {"refine_margin": False},
    # Session 16: fewer trees in the round's forest (breast1's trees are stumps; each costs
    # scikit-learn's per-tree overhead).
    "vae-trees25": {"forest": {"n_estimators": 25, "max_depth": 10, "max_samples": 0.05}},
    "vae-boundary-grow-sf": {"boundary_refine": True, "boundary_grow_only": True,
                             "momentum_where": "shrink-far"},
    # momentum also on the object's growth far from its strokes (the growth drops)
    "vae-shrinkfar": {"momentum_where": "shrink-far"},
    "vae-shrinkfar25": {"momentum_where": "shrink-far", "far_growth": 0.25},
    "vae-shrinkfar75": {"momentum_where": "shrink-far", "far_growth": 0.75},
    # The engine before session 8: without the prior (three or more classes) each tree saw
    # 5 % of the painted voxels, not at least MIN_TREE_SAMPLES.
    "vae-tree5pct": {"tree_floor": False},
    "engine-novae-tree5pct": {"vae_features": False, "tree_floor": False},
    # Session 8: class-prototype columns in rounds of three or more classes (the default).
    "vae-noproto": {"prototypes": False},
    "vae-proto-all": {"proto_columns": "all"},  # prototypes of every column, VAE's included
    "engine-novae-noproto": {"vae_features": False, "prototypes": False},
}
# Semi-supervised rounds (benchmarks/_semisup.py, issue #13): encoder + head on the strokes and
# the background prior, the VAE's loss keeping the encoder an autoencoder.
SEMISUP = {
    "semisup": ss.SemiOptions(),  # the network's probabilities
    "semisup-ce": ss.SemiOptions(recon=0.0),  # ablation: no VAE loss (fine-tuning + prior)
    "semisup-mix": ss.SemiOptions(mix=0.5),  # averaged with the engine forest's
    "semisup-forest": ss.SemiOptions(forest_on_tuned=True),  # forest on the tuned encoder
}
BASE = ["skimage-rf", "skimage-rf-connected", "vae-default", "engine-novae", "engine-noprior",
        "nomodel", "vae-finetune"]
CASES = ["phantom", "brain1", "brain2", "lung1", "lung2", "breast1", "brain1-unequal"]


def build(method: str, env: dict, quick: bool, seed: int = 0):
    """A fresh method (state such as a fine-tuned model starts over) for one case."""
    if method in ("skimage-rf", "skimage-rf-connected"):
        m = lm.SkimageRF(env["image"], env["modality"], env["spacing"],
                         connected=method.endswith("connected"), opts=LO(seed=seed))
        return m
    if method in ENGINE:
        from napari_latentseg.engine.segment import FeatureCache

        ft = (20 if quick else FINETUNE_STEPS) if method == "vae-finetune" else 0
        opts = dict(ENGINE[method])  # the default background="auto": class 1 of tumour cases
        model, setup = env["model"], env["fit_s"]
        if opts.pop("no_model", False):
            model, setup = None, 0.0
        return lm.VAEDefault(model, env["image"], env["modality"], setup, FeatureCache(), ft,
                             seed, env["spacing"], **opts)
    if method in SEMISUP:
        opts = dataclasses.replace(SEMISUP[method], seed=seed)
        return ss.SemiSup(env["model"], env["image"], env["modality"], env["spacing"],
                          env["fit_s"], opts)
    if method in LOOPS:
        opts = dataclasses.replace(LOOPS[method], seed=seed)
        feats, feat_s, ms_s = env_features(env)
        setup = env["fit_s"] + feat_s if opts.vae else ms_s
        extra, extra_s = extra_columns(env, opts.extra, feats)
        return lm.ForestLoop(feats, env["spacing"], opts, setup + extra_s, extra)
    raise ValueError(f"unknown method {method!r}")


def env_features(env: dict):
    """The engine's forest features of the case (computed once, timed) and the time of the
    ilastik columns alone."""
    if "feats" not in env:
        import torch

        from napari_latentseg.engine.features import multiscale_features
        from napari_latentseg.engine.infer import normalizer_for
        from napari_latentseg.engine.segment import FeatureCache

        t0 = time.perf_counter()
        cache = FeatureCache()
        env["feats"] = lm.engine_forest_features(env["model"], env["image"], env["modality"],
                                                 cache, env["first_ann"])
        env["feat_s"] = time.perf_counter() - t0  # a whole first round: an upper bound
        t0 = time.perf_counter()
        norm = normalizer_for(env["model"], env["image"], env["modality"])[0]
        x = torch.from_numpy(np.ascontiguousarray(norm(env["image"])[:, None], np.float32))
        with torch.inference_mode():
            for i in range(0, len(x), 8):
                multiscale_features(x[i : i + 8])
        env["ms_s"] = time.perf_counter() - t0
    return env["feats"], env["feat_s"], env["ms_s"]


def extra_columns(env: dict, names, feats) -> tuple[np.ndarray | None, float]:
    """Extra forest columns (z, y, x, k) of a case and their seconds: ``dae``, the denoising
    autoencoder's anomaly score fitted on the whole scan (then cropped); ``vaesigma``, the VAE
    posterior's log sigma (nearest-upsampled to voxels); ``vaectx``, the VAE
    columns averaged over a wider neighbourhood (Gaussian, 1 slice x 6 voxels)."""
    if not names:
        return None, 0.0
    cols, secs = [], 0.0
    for name in names:
        if name not in env.setdefault("extra", {}):
            t0 = time.perf_counter()
            if name == "dae":
                from napari_latentseg.engine.anomaly import anomaly_map

                res = anomaly_map(None, env["full_image"], modality=env["modality"],
                                  method="dae", spacing=env["spacing"], error_map=False)
                col = res.score[env["box"]][..., None]
            elif name == "vaesigma":
                from napari_latentseg.engine.infer import encode

                lat = encode(env["model"], env["full_image"], modality=env["modality"])
                ls = np.log(np.maximum(lat.sigma, 1e-6)).astype(np.float32)
                shape, f = env["full_image"].shape, int(lat.scale[-1])  # latent cell: f voxels
                ls = ls.repeat(f, axis=-2).repeat(f, axis=-1)[..., : shape[-2], : shape[-1]]
                col = np.moveaxis(ls, 0, -1)[env["box"]]
            elif name == "vaecoarse":
                # The encoder's latent mean of the scan at half the in-plane resolution (each
                # latent cell sees twice the context), bilinearly back to voxels.
                from scipy import ndimage

                from napari_latentseg.engine.infer import encode

                img = env["full_image"].astype(np.float32)
                half = ndimage.zoom(img, (1, 0.5, 0.5), order=1)
                mu = encode(env["model"], half, modality=env["modality"]).mu
                shape = img.shape
                up = [ndimage.zoom(m, (1, shape[1] / m.shape[1], shape[2] / m.shape[2]),
                                   order=1)[:, : shape[1], : shape[2]] for m in mu]
                col = np.stack(up, -1)[env["box"]]
            elif name == "dog":
                # Centre-surround contrasts of the normalised image in-plane (sigma 1-8
                # voxels against twice as wide): what the anomaly score on CT gained by.
                from scipy import ndimage

                from napari_latentseg.engine.infer import normalizer_for

                norm = normalizer_for(env["model"], env["image"], env["modality"])[0]
                x = norm(env["image"]).astype(np.float32)
                col = np.stack([ndimage.gaussian_filter(x, (0, s_, s_))
                                - ndimage.gaussian_filter(x, (0, 2 * s_, 2 * s_))
                                for s_ in (1.0, 2.0, 4.0, 8.0)], -1)
            elif name == "vaectx":
                from scipy import ndimage

                v = feats[..., lm.N_MULTISCALE:].astype(np.float32)
                col = np.stack([ndimage.gaussian_filter(v[..., k], (1, 6, 6))
                                for k in range(v.shape[-1])], -1)
            else:
                raise ValueError(f"unknown extra column {name!r}")
            env["extra"][name] = (col.astype(np.float32), time.perf_counter() - t0)
        cols.append(env["extra"][name][0])
        secs += env["extra"][name][1]
    return np.concatenate(cols, -1), secs


def case_env(case: str, data: Path, quick: bool, config: str | None = None,
             **fit_kw) -> dict:
    """The case's scan, truth and VAE (``config``: a preset other than the default;
    ``fit_kw``: fit options other than the default, as ``_interactive.get_model`` takes them)."""
    base = case.split("-")[0]
    image, truth, modality, spacing = ia.load_case(base, data)
    # Segmentation reads the encoder only: VAEs cached before the decoder phase still serve.
    model, fit_s = ia.get_model(base, image, modality, config=config, encoder_only=True,
                                **fit_kw)
    full, box = image, tuple(slice(0, s) for s in image.shape)
    if quick:
        box = ia.crop_box(base, truth)
        image, truth = np.ascontiguousarray(image[box]), np.ascontiguousarray(truth[box])
    classes = sorted(int(c) for c in np.unique(truth))
    radii = {1: 1} if case.endswith("-unequal") else None
    env = {"image": image, "truth": truth, "modality": modality, "spacing": spacing,
           "full_image": full, "box": box,
           "model": model, "fit_s": fit_s, "classes": classes, "radii": radii,
           "eval": ia.eval_classes(base, truth), "first_ann": ia.first_strokes(truth, classes,
                                                                               radii)}
    return env


def run_strokes(method, env: dict, rounds: int) -> dict:
    truth = env["truth"]
    ann = env["first_ann"].copy()
    sr = (ann > 0).astype(np.int64)
    n_strokes = len(env["classes"])
    dices, strokes, secs, where = [], [], [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        res = method(ann, sr)
        secs.append(time.perf_counter() - t0)
        dices.append(ia.dice(res.labels, truth, env["eval"]))
        strokes.append(n_strokes)
        if r == rounds - 1:
            break
        corr = ia.corrective_stroke(res.labels, truth)
        if corr is None:
            break
        ann[corr.stroke] = corr.label
        sr[corr.stroke] = r + 2
        n_strokes += 1
        where.append([corr.z, corr.y, corr.x, corr.label, corr.component_voxels])
    return {"dice": [round(d, 4) for d in dices], "strokes": strokes,
            "seconds": [round(s, 2) for s in secs], "corrections": where,
            **ia.summarise(dices, strokes, secs, method.setup_s + secs[0])}


def run_slices(method, env: dict, rounds: int) -> dict:
    truth = env["truth"]
    ann = np.zeros_like(truth)
    if env["eval"] == [2]:
        z0 = int(np.argmax((truth == 2).reshape(truth.shape[0], -1).sum(1)))
    else:
        z0 = truth.shape[0] // 2
    ia.annotate_slice(ann, truth, 0, z0)
    sr = (ann > 0).astype(np.int64)
    dices, secs, slices = [], [], [[0, z0]]
    for r in range(rounds):
        t0 = time.perf_counter()
        res = method(ann, sr)
        secs.append(time.perf_counter() - t0)
        dices.append(ia.dice(res.labels, truth, env["eval"]))
        if r == rounds - 1:
            break
        sug = res.suggestion or lm.suggest(res.probs, res.classes, ann)
        if sug.get("index") is None:
            break
        ia.annotate_slice(ann, truth, sug["axis"], sug["index"])
        sr[ann > 0] = np.maximum(sr[ann > 0], 1)
        sr[(ann > 0) & (sr == 0)] = r + 2
        slices.append([sug["axis"], sug["index"]])
    n = list(range(1, len(dices) + 1))
    return {"dice": [round(d, 4) for d in dices], "slices": slices,
            "seconds": [round(s, 2) for s in secs],
            **ia.summarise(dices, n, secs, method.setup_s + secs[0])}


def to_markdown(rows: list[dict], info: dict) -> str:
    out = [f"Machine: {info['machine']}; threads: {info['threads']}; "
           f"{'quick (cropped, see crop column)' if info['quick'] else 'full volumes'}; "
           f"{info['rounds']} rounds", ""]
    for proto in ("strokes", "slices"):
        rs = [r for r in rows if r["protocol"] == proto]
        if not rs:
            continue
        unit = "strokes" if proto == "strokes" else "slices"
        out += [f"### Protocol: {proto}", "",
                f"| case | method | AUC (mean Dice) | final | NoC@80 | NoC@90 ({unit}) | "
                "max drop | drops > 0.02 | s / round | first result s | Dice per round |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            curve = " ".join(f"{d:.2f}" for d in r["dice"])
            name = r["method"] + (f" (seed {r['seed']})" if r.get("seed") else "")
            out.append(f"| {r['case']} | {name} | {r['auc']:.3f} | {r['final']:.3f} | "
                       f"{r['noc80'] or '-'} | {r['noc90'] or '-'} | {r['max_drop']:.3f} | "
                       f"{r['drops_over_002']} | {r['round_s']:.2f} | "
                       f"{r['first_result_s']:.1f} | {curve} |")
        out.append("")
    seeds = sorted({r.get("seed", 0) for r in rows})
    if len(seeds) > 1:
        out += [f"### AUC over seeds {seeds[0]}-{seeds[-1]} (mean ± sd; min-max)", "",
                "| protocol | case | method | AUC | range | max drop (worst seed) |",
                "|---|---|---|---|---|---|"]
        keys = list(dict.fromkeys((r["protocol"], r["case"], r["method"]) for r in rows))
        for k in keys:
            a = [r["auc"] for r in rows if (r["protocol"], r["case"], r["method"]) == k]
            dr = max(r["max_drop"] for r in rows if (r["protocol"], r["case"], r["method"]) == k)
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {np.mean(a):.3f} ± {np.std(a):.3f} | "
                       f"{min(a):.3f}-{max(a):.3f} | {dr:.3f} |")
        out.append("")
    crops = {r["case"]: r["shape"] for r in rows}
    out.append("Volumes (z, y, x): " + "; ".join(f"{k} {tuple(v)}" for k, v in crops.items()))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=CASES)
    p.add_argument("--methods", nargs="+", default=BASE + ["loop"])
    p.add_argument("--protocols", nargs="+", default=["strokes", "slices"])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--slice-rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", type=Path, default=ia.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tag", default="interactive")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat each run with forest seeds 0..N-1 (curves vary a lot by seed)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (more seeds for a run)")
    p.add_argument("--config", default=None,
                   help="the VAEs of this preset (or a _psnr_latent.py variant), fitted once "
                        "per case and cached (default: the product's preset)")
    p.add_argument("--fit-steps", type=int, default=None,
                   help="the VAEs fitted with this many steps (cached per case)")
    p.add_argument("--fit-seed", type=int, default=None,
                   help="the VAEs fitted with this seed (cached per case; default 0)")
    p.add_argument("--fit-kl-weight", type=float, default=None,
                   help="the VAEs fitted with this KL weight (cached per case; default 1e-6)")
    args = p.parse_args()
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    import platform

    import torch

    rounds = args.rounds or (6 if args.quick else 10)
    slice_rounds = args.slice_rounds or (3 if args.quick else 5)
    info = {"machine": f"{platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads(), "quick": args.quick, "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    config = args.config
    if config is not None:  # a preset's name, or one of _psnr_latent.py's variants
        from _psnr_latent import variants

        config = variants().get(config, config)
    fit_kw = {} if args.fit_seed is None else {"seed": args.fit_seed}
    if args.fit_kl_weight is not None:
        fit_kw["kl_weight"] = args.fit_kl_weight
    t_all = time.perf_counter()
    for case in args.cases:
        base = case.split("-")[0]
        if not base.startswith("phantom") and not (args.data / f"{base}_image.nrrd").exists():
            print(f"skipping {case}: {args.data / (base + '_image.nrrd')} not found")
            continue
        env = case_env(case, args.data, args.quick, config=config, steps=args.fit_steps,
                       **fit_kw)
        for proto in args.protocols:
            if proto == "slices" and case.endswith("-unequal"):
                continue
            for method, seed in [(m, s) for m in args.methods
                                 for s in range(args.first_seed,
                                                args.first_seed + args.seeds)]:
                m = build(method, env, args.quick, seed)
                fn = run_strokes if proto == "strokes" else run_slices
                n = rounds if proto == "strokes" else slice_rounds
                if method == "vae-finetune" and args.quick:
                    n = min(n, 2 if proto == "strokes" else 1)  # ~50x a forest round
                r = fn(m, env, n)
                r.update(case=case, method=method, protocol=proto, seed=seed,
                         shape=list(env["truth"].shape))
                rows.append(r)
                print(f"{case} {proto} {method} seed {seed}: AUC {r['auc']:.3f} "
                      f"final {r['final']:.3f} "
                      f"NoC80 {r['noc80']} drop {r['max_drop']:.3f} "
                      f"{r['round_s']:.2f} s/round first {r['first_result_s']:.1f} s | "
                      + " ".join(f"{d:.2f}" for d in r["dice"]), flush=True)
                (args.out / f"{args.tag}.json").write_text(json.dumps(
                    {"info": info, "results": rows}, indent=1))
                (args.out / f"{args.tag}.md").write_text(to_markdown(rows, info))
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
