"""The methods of ``bench_interactive.py``: the forest loop's variants (``LOOPS``), the engine's
``segment()`` with changed options (``ENGINE``), the semi-supervised prototypes (``SEMISUP``),
and the default run's methods and cases."""

from __future__ import annotations

import dataclasses

import _semisup as ss
from _loop_methods import LoopOptions as LO

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
    # Session 37: the scan's own anomaly score (the engine's default: the denoiser on MR, the
    # contrast density on CT, self mode) as one more forest column (tumours are what the
    # scan does not explain); session 4 measured a far weaker denoiser this way.
    "vae-anomaly": {"extra": ("anomaly",)},
    "engine-novae-anomaly": {"vae_features": False, "extra": ("anomaly",)},
    # Session 38: no VAE at all (the dock before or without a fit), with the model-free score.
    "nomodel-anomaly": {"no_model": True, "extra": ("anomaly",)},
    # Session 55: vae-default / vae-anomaly read the VAE's columns in rounds of three or more
    # classes only (vae_features="auto"); these read them in every round (the default before:
    # the VAE's share on object-vs-background cases).
    "vae-always": {"vae_features": True},
    "vae-anomaly-always": {"vae_features": True, "extra": ("anomaly",)},
    # Session 50 (an option: runs stepping back 20 -> 10 of 64, mean AUC -0.021): the edge
    # step adds a voxel to the object only where the forest gives it 0.35 or more.
    "nomodel-anomaly-steady": {"no_model": True, "extra": ("anomaly",), "edge_min_p": 0.35},
    "nomodel-steady": {"no_model": True, "edge_min_p": 0.35},
    # Session 51's ablation: every painted voxel trains the forest (the engine before its
    # unclear strokes, ``SegmentOptions.unclear_share``).
    "nomodel-anomaly-allstrokes": {"no_model": True, "extra": ("anomaly",),
                                   "unclear_share": 0.0},
    "nomodel-allstrokes": {"no_model": True, "unclear_share": 0.0},
    "vae-anomaly-allstrokes": {"extra": ("anomaly",), "unclear_share": 0.0},
    # Session 52's ablation: the forest without the strokes' geodesic distances as columns
    # (the engine before, ``SegmentOptions.stroke_distances``).
    "nomodel-anomaly-nodist": {"no_model": True, "extra": ("anomaly",),
                               "stroke_distances": False},
    "nomodel-nodist": {"no_model": True, "stroke_distances": False},
    "vae-anomaly-nodist": {"extra": ("anomaly",), "stroke_distances": False},
    # Session 53's ablation: every round may change everything (the engine before its late
    # rounds kept their changes near the corrections, ``SegmentOptions.local_from_round``);
    # and the merge from the second round on (the probe that lost).
    "nomodel-anomaly-global": {"no_model": True, "extra": ("anomaly",),
                               "local_from_round": None},
    "nomodel-global": {"no_model": True, "local_from_round": None},
    "vae-anomaly-global": {"extra": ("anomaly",), "local_from_round": None},
    "nomodel-anomaly-local2": {"no_model": True, "extra": ("anomaly",), "local_from_round": 2},
    # Session 54's ablation: on thick slices an object correction's changes connect through
    # 3D too (the engine before, ``SegmentOptions.local_in_plane``).
    "nomodel-anomaly-local3d": {"no_model": True, "extra": ("anomaly",),
                                "local_in_plane": False},
    "nomodel-local3d": {"no_model": True, "local_in_plane": False},
    # Session 44 (level: mean AUC +0.003, brain2 -0.03 to -0.06): the denoiser's inner
    # features as columns too (benchmarks/_dae_columns.py).
    "nomodel-anomaly-daemid": {"no_model": True, "extra": ("anomaly", "daemid")},
    "nomodel-anomaly-daeup": {"no_model": True, "extra": ("anomaly", "daeup")},
    "nomodel-anomaly-daeboth": {"no_model": True, "extra": ("anomaly", "daemid", "daeup")},
    # Session 39: growth under 0.6 object probability averaged too ("shrink-marginal", at
    # 0.5 the default since; at the shrink's 0.85, or under 0.55, the probes). vae-shrink
    # and vae-anomaly-shrink: the default before (growth at once).
    "vae-shrink": {"momentum_where": "shrink"},
    "vae-anomaly-shrink": {"momentum_where": "shrink", "extra": ("anomaly",)},
    "vae-marginal": {"momentum_where": "shrink-marginal", "growth_weight": None},
    "vae-anomaly-marginal": {"momentum_where": "shrink-marginal", "growth_weight": None,
                             "extra": ("anomaly",)},
    "vae-marginal-w05": {"momentum_where": "shrink-marginal", "growth_weight": 0.5},
    "vae-anomaly-marginal-w05": {"momentum_where": "shrink-marginal", "growth_weight": 0.5,
                                 "extra": ("anomaly",)},
    "vae-marginal55": {"momentum_where": "shrink-marginal", "growth_floor": 0.55,
                       "growth_weight": None},
    "vae-anomaly-marginal55": {"momentum_where": "shrink-marginal", "growth_floor": 0.55,
                               "growth_weight": None, "extra": ("anomaly",)},
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
    # Session 19: the edge step in the first three rounds only (its gain is early, its dips
    # later?).
    "vae-boundary-early3": {"boundary_rounds": 3},
    # Session 19: more trees (the rounds got cheaper): do the phantom's drops come from the
    # forest's variance?
    "vae-trees100": {"forest": {"n_estimators": 100, "max_depth": 10, "max_samples": 0.05}},
    "vae-boundary-grow": {"boundary_refine": True, "boundary_grow_only": True},
    "vae-boundary-b1": {"boundary_refine": True, "boundary_band": 1},
    # Session 14: the edge step's moved voxels swap their probabilities (a probe, off in the
    # engine), with momentum 0.85 (the default since) and 0.7 (the default before).
    "vae-boundary-swap": {"boundary_refine": True, "swap_moved": True},
    "vae-boundary-swap-m70": {"boundary_refine": True, "swap_moved": True, "momentum": 0.7},
    "vae-m85": {"momentum": 0.85},
    "vae-m90": {"momentum": 0.9},
    "vae-m70": {"momentum": 0.7},  # the default before session 14
    # Session 22: the edge step and fresh growth let go (the default since); the default of
    # session 21 (neither), the edge step alone (session 19's option), fresh growth alone.
    # The probe "shrink-marginal" (growth to an object probability under 0.7 / 0.6 averaged
    # too) lost and left the engine (code at commit f0de292).
    "vae-s21": {"boundary_refine": False, "fresh_shrinks": False},
    "vae-snap-only": {"fresh_shrinks": False},
    "vae-fresh-only": {"boundary_refine": False},
    # Session 23: the connectivity rule off. The probes "relative intensity columns"
    # (vae-relative, ...) and "sure regions no stroke touches kept" (vae-keepsure*, vae-s22)
    # lost and left the engine: their code is at commit 0523b33.
    "vae-noconnect": {"keep_connected_regions": False},
    # Session 23: the unpainted sample as weak rows of the large classes in rounds of three or
    # more classes (multiprior.py), classes under 2 % (the default since) / 5 % of the sample
    # being "small"; vae-nomultiprior: without it (the default before).
    "vae-multiprior": {"small_share": 0.02},
    "vae-nomultiprior": {"small_share": None},
    "engine-novae-nomultiprior": {"vae_features": False, "small_share": None},
    "vae-multiprior5": {"small_share": 0.05},
    "engine-novae-multiprior": {"vae_features": False, "small_share": 0.02},
    # Session 24: rounds of three or more classes averaged with the last round everywhere
    # (momentum_multiclass; 0.5 the default since, 0 the default before).
    "vae-mcmom0": {"momentum_multiclass": 0.0},
    "vae-mcmom03": {"momentum_multiclass": 0.3},
    "engine-novae-mcmom0": {"vae_features": False, "momentum_multiclass": 0.0},
    # Session 25: with three or more classes, a region the connectivity rule moves must
    # connect to its new class's strokes too (postprocess.ITERATE_CONNECTED; the default
    # since; probes at commit a875b48: vae-conncontact, the class it borders most;
    # vae-connplaus, the check only below a 0.2 probability); vae-conn1 is one pass (the
    # default before).
    "vae-conn1": {"iterate_connected": False},
    "engine-novae-conn1": {"vae_features": False, "iterate_connected": False},
    # ... and only to a class of at least 5 % probability there, else it stays (the default
    # too; vae-connmin5 in the session-25 result files); vae-conniter without the 5 %.
    "vae-conniter": {"min_move_p": 0.0},
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
