"""Options of a segmentation round, checked once when they are made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SegmentOptions", "resolve_options", "STEADY_EDGE_MIN_P"]

CLASSIFIERS = ("forest", "mlp")
MOMENTUM_WHERE = ("all", "shrink", "shrink-far", "shrink-marginal")
# "shrink-marginal" (the default since session 39): the object's growth is averaged too
# where its new probability stays under MARGINAL_GROWTH, at MARGINAL_WEIGHT (None: the
# momentum's): growth the forest is unsure of waits a round or two.
MARGINAL_GROWTH = 0.6
MARGINAL_WEIGHT: float | None = 0.5
# The measured ``edge_min_p`` of a steady loop (session 50): what the dock's "Steady
# corrections" sets.
STEADY_EDGE_MIN_P = 0.35
# From the sixth round (five corrections) on, a round changes only what its corrections touch
# (session 53): the early rounds' far changes are mostly right, the late ones' mostly leaks.
LOCAL_FROM_ROUND = 6


@dataclass(frozen=True)
class SegmentOptions:
    """Options of :func:`~napari_latentseg.engine.segment.segment_iter`.

    Parameters
    ----------
    classifier : {"forest", "mlp"}
        ``"forest"``: the random forest (plus the fine-tuned head when fine-tuning);
        ``"mlp"``: the MLP head alone (the encoder's hypercolumn, no forest).
    keep_connected_regions : bool
        Apply :func:`~napari_latentseg.engine.segment.keep_connected`: a region of a class
        must touch a voxel painted with it.
    finetune_steps : int
        Steps of fine-tuning the head and (``finetune_encoder``) the encoder on crops around
        the annotated voxels; 0 trains no head unless ``classifier="mlp"`` or the model has one.
    finetune_encoder : bool
        Train the encoder too (at ``finetune_lr * encoder_lr_factor``), not only the head.
    finetune_lr : float
        Adam learning rate of the head while fine-tuning.
    encoder_lr_factor : float
        The encoder's learning rate relative to ``finetune_lr``.
    head_steps : int
        Steps of training the MLP head alone on frozen features first (MLP or fine-tuning).
    hidden : int
        Hidden channels of a new MLP head.
    max_per_class : int
        At most this many annotated voxels per class train the forest and the head.
    seed : int
        Seed of voxel sampling, held-out tiles and the head's initial weights.
    vae_features : bool or "auto"
        The forest sees the VAE's latent and encoder components besides the ilastik set.
        ``"auto"`` (default since session 55): in rounds of three or more classes (and in
        rounds that train a head), not in rounds of an object and its background. Measured
        (strokes, ten rounds): the latent adds +0.020 mean Dice over the rounds on three
        synthetic heads of six tissues and a lesion, and -0.013 to +0.003 on the tumours
        against their background, whose rounds it makes up to a quarter slower
        (``docs/interactive_benchmarks.md``, "The VAE's share on the phantoms and the
        lungs"). True: every round; False: none (the ablation, the ilastik set alone).
    background : int, "auto" or None
        Label id of the background class of an object-vs-background task: a uniform sample
        of the unpainted voxels (``background_samples``, together weighing
        ``background_weight`` times the object's painted voxels, none within
        ``background_margin_mm`` of the object's strokes) trains the forest as weak
        background (``prior.py``). ``"auto"`` (default): class 1 when exactly two classes,
        1 among them, are painted (the dock's convention: 1 = background); None: no prior
        (nor :mod:`.multiprior`'s, which rounds of three or more classes get otherwise).
    background_samples : int
        How many unpainted voxels the prior draws.
    background_weight : float
        Their total weight relative to the count of painted voxels of the other classes.
    background_margin_mm : float
        No prior voxel this close (mm) to a stroke of the object.
    background_adaptive : bool
        Weigh the prior by the object's share of the scan, estimated by a first forest
        (two fits a round; ``prior.adaptive_prior_weight``: the square root of the odds,
        1x to 10x the painted object). On whole scans it converges and leads the fixed
        weight (False: as much as the painted object) on every tumour measured; on objects
        of several % of the volume (lung2's crop, 7 %) the fixed weight still does better
        (``docs/interactive_benchmarks.md``).
    fresh_prior_scale : float
        The adaptive prior's weight is scaled by this in a round that does not continue an
        earlier one (no ``previous`` given to :func:`segment`: the first round, or one after
        strokes were erased); rounds that pass ``previous`` weigh it in full. 1 (default):
        no change. 0.5 makes a first result from two strokes cover more of the object
        (brain1 0.59 Dice against 0.36, six seeds) but the next rounds shrink it again
        (worst drop 0.08 against 0.02): for a one-off segmentation, not a correction loop
        (``docs/interactive_benchmarks.md``).
    momentum : float
        With ``previous`` (the last round's result) given to :func:`segment`, this round's
        probabilities are averaged with it at this weight before labelling (a running
        average over the rounds; see ``momentum_where``). The dock passes the last round
        when the new one only adds strokes (:func:`~.annotations.continues_round`), and
        its live slices take the last round's slice (:class:`~.live.LiveSegmenter`).
        0.85 (default since session 14; 0.7 before): over six seeds of four small tumour
        cases, 3 of 24 stroke runs step back by more than 0.02 Dice in some round against
        7 of 24, at the same mean AUC (0.725); 0.9 loses (0.714). The price: a false
        positive stroked out fades over three rounds instead of two.
    momentum_where : str
        ``"shrink-marginal"`` (default since session 39): as ``"shrink"``, and where the
        object's new probability is under ``MARGINAL_GROWTH`` (0.6) its growth is averaged
        too, at ``MARGINAL_WEIGHT`` (0.5): a voxel the forest is barely sure of joins the
        object after a round or two. Measured (strokes, 10 rounds, whole scans, seeds 0-5,
        brain1, brain1-unequal, brain2, breast1 with the anomaly column, lung2): runs
        stepping back by more than 0.02 Dice 6 of 30 against 15 of 30 (worst 0.069 against
        0.116), final Dice >= 0.85 in 21 of 30 against 17; the price, mean AUC -0.007
        (brain1 -0.021, lung2 -0.012; lung1, seeds 0-2, level). Rounds of three or more
        classes are unchanged.
        ``"shrink"``: in object-vs-background rounds with the prior, only voxels whose
        object probability fell since the last round are averaged, so the object grows at
        once and shrinks at the momentum's pace; rounds of three or more classes are
        averaged everywhere at ``momentum_multiclass``, two-class rounds without the prior
        not at all.
        Measured (strokes, 10 rounds, whole scans, seeds 0-5): the worst round-to-round
        drop on breast1 0.05 against 0.18, mean AUC +0.003 to +0.028 on five tumour cases,
        -0.006 on brain2. ``"all"``: every voxel (0.5 held lung2 back, 0.558 against 0.626
        AUC; on the phantom's six tissues 0.713 against 0.721). ``"shrink-far"``: as
        ``"shrink"``, and the object's growth is averaged too beyond ``FAR_GROWTH`` of its
        reach (geodesic, :mod:`.reach`) from its strokes.
    momentum_multiclass : float
        With the ``"shrink"`` kinds, rounds of three or more classes average
        every voxel with the last round at this weight instead (0: not at all, the default
        before session 24). 0.5 (default): strokes, 10 rounds, seeds 0-5, runs stepping back
        by more than 0.02 Dice fell on three phantoms and three tumours painted with the air
        and the body, at a level mean AUC (``docs/interactive_benchmarks.md``, "Momentum for
        three or more classes"). Needs ``momentum`` > 0.
    object_reach : bool
        Object-vs-background rounds with the prior: the object's probability fades beyond
        a geodesic distance from its strokes (``reach.py``; at least 40 mm, crossing image
        edges counts as distance), so a region of the same tissue far from the tumour does
        not join it. Not applied to live slice previews.
    boundary_refine : bool
        Object-vs-background forest rounds with the prior: voxels within 2 of the object's
        labelled boundary take the side whose local mean smoothed intensity (11x11 in-plane)
        is closer (``boundary.py``; painted voxels keep their labels; the probabilities are
        the forest's, so the uncertainty map does not follow the moved voxels: making them
        follow lets momentum hold each round's moved layer, and lung2's object creeps).
        On by default since session 22, with the shrink's momentum sparing the last round's
        growth (``fewshot.FRESH_SHRINKS_AT_ONCE``): strokes, 10 rounds, seeds 0-2 (lungs
        0-1), mean AUC against session 21's default brain1 0.720 / 0.699, brain1-unequal
        0.717 / 0.701, brain2 0.627 / 0.568, breast1 0.947 / 0.931, lung1 0.944 / 0.915,
        lung2 0.719 / 0.635; Dice >= 0.85 within 10 strokes on brain1 and lung2 in every
        run; but brain2 steps back by over 0.02 in every run (up to 0.12; before, none).
    edge_min_p : float
        With ``boundary_refine``: a voxel joins the object only where the forest (after
        momentum) gives the object at least this probability; 0 (default): the step as
        measured above. 0.35 made the loop a little steadier at a cost in speed in session
        51 (with ``unclear_share``; strokes, 10 rounds, model-free engine, MR seeds 0-11
        with the anomaly column, CT seeds 0-7): runs stepping back by more than 0.02 Dice
        10 of 64 against 12, mean AUC 0.769 against 0.793. With ``stroke_distances``
        (session 52, same runs) it no longer does: 15 of 64 against 14, mean AUC 0.808
        against 0.811 (``docs/interactive_benchmarks.md``, "The edge step's growth gated by
        the forest", "Unclear strokes kept out of the forest" and "The distance from the
        object's strokes as a forest column").
    unclear_share : float
        Object-vs-background rounds that continue another: painted object voxels whose
        smoothed intensity is closer to the last round's local background mean than to its
        object's (3 slices x 11 x 11 voxels) do not train the forest, at most this share of
        the painted object (the least object-like first); they keep their labels
        (:mod:`.unclear`). 0: every painted voxel trains. Session 51 (strokes, 10 rounds,
        the model-free engine with the anomaly column on MR, MR seeds 0-11, CT 0-7):
        see ``docs/interactive_benchmarks.md``, "Unclear strokes kept out of the forest".
    stroke_distances : bool
        Object-vs-background forest rounds with the prior, painted with strokes (no slice
        annotated whole): one more forest column, each voxel's geodesic distance (mm, image
        edges counting as distance) from the object's strokes, the reach's map of the round
        (:mod:`.strokemaps`). Session 52 (strokes, 10
        rounds, the model-free engine with the anomaly column on MR, MR seeds 0-11, CT
        0-7): mean Dice over rounds 0.793 -> 0.811, final Dice under 0.85 on brain1 and
        lung2 in 1 of 20 runs against 6 (``docs/interactive_benchmarks.md``, "The distance
        from the object's strokes as a forest column"). False: the image's features alone.
    local_from_round : int or None
        From this round of a chain of correction rounds on (the first round is 1; a round
        continues the chain when it gets ``previous``), object-vs-background rounds with
        the prior on thick slices (more than twice the in-plane voxel size) keep only the
        changes connected to a correction (a painted voxel the last round labelled
        otherwise); elsewhere the last round's labels and probabilities stay (:mod:`.local`;
        FocalClick's progressive merge). A round without a correction keeps all its
        changes. None, near-isotropic scans and 2D images: every round may change
        everything (session 54: on six synthetic heads of 1.6 mm voxels with three lesions,
        36 runs, the merge cost 0.005 mean Dice over rounds and 0.016 final Dice). Session
        53 (strokes, 10 rounds, the model-free engine with the anomaly column on MR, MR
        seeds 0-11, CT 0-7): from the sixth round, runs stepping back by more than 0.02
        Dice 9 of 64 against 14, the worst step back 0.056 against 0.116, mean Dice over
        rounds level (0.811); from the second round on the loop is as steady but much lower
        (0.791; 31 of 64 runs end under 0.85 Dice against 7): the early rounds' far changes
        are mostly right (``docs/interactive_benchmarks.md``, "Changes kept near the
        stroke").
    local_in_plane : bool
        In the rounds ``local_from_round`` applies to (thick slices), an object correction
        keeps only the changes connected to it within its own slice (the slice the user
        painted); a background correction's changes stay face-connected in 3D. False: all
        face-connected in 3D. Session 54 (as for ``local_from_round``): runs stepping back
        4 of 64 against 9, mean Dice over rounds 0.812 against 0.811; every correction held
        to its slice stalls lung2's background strokes on a leak across slices
        (``docs/interactive_benchmarks.md``, "Late corrections stay on their slice").
    prototypes : bool
        Rounds of three or more classes without the background prior get one more forest
        column per class: each voxel's distance to the mean features of that class's painted
        voxels (``prototypes.py``; measured on the phantom's tissue classes). False: the
        forest on the features alone.
    object_class : int or None
        In rounds of three or more classes, this class's voxels come from a two-class round
        on the same strokes (it against every other painted class as the background), the
        other classes from the round of all of them (``objectround.py``): one structure
        among several painted classes gets the object's rules. None (default): off.
    """

    classifier: str = "forest"
    keep_connected_regions: bool = True
    finetune_steps: int = 0
    finetune_encoder: bool = True
    finetune_lr: float = 1e-3
    encoder_lr_factor: float = 0.1
    head_steps: int = 300
    hidden: int = 64
    max_per_class: int = 20_000
    seed: int = 0
    vae_features: bool | str = "auto"
    background: int | str | None = "auto"
    background_samples: int = 2000
    background_weight: float = 1.0
    background_margin_mm: float = 10.0
    background_adaptive: bool = True
    fresh_prior_scale: float = 1.0
    momentum: float = 0.85
    momentum_where: str = "shrink-marginal"
    momentum_multiclass: float = 0.5
    object_reach: bool = True
    prototypes: bool = True
    boundary_refine: bool = True
    edge_min_p: float = 0.0
    unclear_share: float = 0.25
    stroke_distances: bool = True
    local_from_round: int | None = LOCAL_FROM_ROUND
    local_in_plane: bool = True
    object_class: int | None = None

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be 'forest' or 'mlp', got {self.classifier!r}")
        for name in ("finetune_steps", "head_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hidden", "max_per_class"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        if not self.encoder_lr_factor >= 0:
            raise ValueError(f"encoder_lr_factor must be >= 0, got {self.encoder_lr_factor}")
        if self.background is not None and self.background != "auto" and (
                isinstance(self.background, str) or int(self.background) < 1):
            raise ValueError("background must be a class id >= 1, 'auto' or None, got "
                             f"{self.background!r}")
        if self.object_class is not None and (isinstance(self.object_class, (str, bool))
                                              or int(self.object_class) < 1):
            raise ValueError(f"object_class must be a class id >= 1 or None, got "
                             f"{self.object_class!r}")
        if int(self.background_samples) < 1:
            raise ValueError(f"background_samples must be >= 1, got {self.background_samples}")
        if not self.background_weight > 0:
            raise ValueError(f"background_weight must be > 0, got {self.background_weight}")
        if not self.background_margin_mm >= 0:
            raise ValueError("background_margin_mm must be >= 0, got "
                             f"{self.background_margin_mm}")
        if not self.fresh_prior_scale > 0:
            raise ValueError(f"fresh_prior_scale must be > 0, got {self.fresh_prior_scale}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.momentum_multiclass < 1.0:
            raise ValueError("momentum_multiclass must be in [0, 1), got "
                             f"{self.momentum_multiclass}")
        if not 0.0 <= self.edge_min_p < 1.0:
            raise ValueError(f"edge_min_p must be in [0, 1), got {self.edge_min_p}")
        if not 0.0 <= self.unclear_share < 1.0:
            raise ValueError(f"unclear_share must be in [0, 1), got {self.unclear_share}")
        if self.local_from_round is not None and int(self.local_from_round) < 2:
            raise ValueError("local_from_round must be >= 2 (the first round has nothing to "
                             f"keep) or None, got {self.local_from_round}")
        if self.momentum_where not in MOMENTUM_WHERE:
            raise ValueError(f"momentum_where must be one of {', '.join(MOMENTUM_WHERE)}, "
                             f"got {self.momentum_where!r}")
        if self.vae_features not in (True, False, "auto"):
            raise ValueError(f"vae_features must be True, False or 'auto', got "
                             f"{self.vae_features!r}")
        if not self.vae_features and self.classifier != "forest":
            raise ValueError("vae_features=False is an option of the forest: the MLP head "
                             "is the VAE's features")

    def uses_vae(self, n_classes: int) -> bool:
        """Whether a forest round of ``n_classes`` classes reads the VAE's columns
        (``vae_features``; ``"auto"``: three or more classes, or a round that trains a
        head)."""
        if self.vae_features == "auto":
            return self.trains_head or n_classes >= 3
        return bool(self.vae_features)

    @property
    def trains_head(self) -> bool:
        """Whether this round trains a head whatever the model holds (MLP or fine-tuning)."""
        return self.classifier == "mlp" or self.finetune_steps > 0

    @property
    def momentum_on_shrink(self) -> bool:
        """Whether momentum averages only where the object shrinks ("shrink", "shrink-far"):
        object-vs-background rounds with the prior only."""
        return self.momentum_where in ("shrink", "shrink-far", "shrink-marginal")

    @property
    def growth_floor(self) -> tuple[float, float] | None:
        """(object probability, weight): growth under that probability is averaged too, at
        that weight ("shrink-marginal"); else None."""
        if self.momentum_where != "shrink-marginal":
            return None
        return MARGINAL_GROWTH, self.momentum if MARGINAL_WEIGHT is None else MARGINAL_WEIGHT

    def momentum_for(self, n_classes: int, object_round: bool) -> tuple[float, bool]:
        """(weight, averaged only where the object shrinks) of a round's momentum:
        ``object_round``: object-vs-background with the prior. Weight 0: no averaging."""
        if self.momentum <= 0:
            return 0.0, False
        if not self.momentum_on_shrink:
            return self.momentum, False
        if object_round:
            return self.momentum, True
        return (self.momentum_multiclass if n_classes >= 3 else 0.0), False


_FIELDS = frozenset(f.name for f in dataclasses.fields(SegmentOptions))


def resolve_options(options: SegmentOptions | None, overrides: dict[str, Any],
                    caller: str = "segment_iter") -> SegmentOptions:
    """``options`` (or the defaults) with keyword arguments of the older signature applied.

    Raises
    ------
    TypeError
        A keyword that is no option, as Python says of an unknown argument.
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    base = options if options is not None else SegmentOptions()
    return dataclasses.replace(base, **overrides) if overrides else base
