"""A few-shot segmentation round: forest, head, fine-tuning, prediction, post-processing."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...models.checkpoint import VAEModel
from ...runtime.device import thread_count
from ...runtime.parallel import each_in_threads, map_slabs
from ...runtime.progress import check_stop, drive
from .annotations import ClassTable
from .boundary import refine_object_boundary, smoothed_image
from .cache import FeatureCache
from .finetune import finetune
from .forest import ForestFeatures, ForestProbabilities, forest_features_name, training_set
from .head import HeadProbabilities, train_head
from .holdout import check_head, holdout
from .local import local_round, round_after
from .nomodel import NO_MODEL_NOTE, features_only_model
from .options import SegmentOptions, resolve_options
from .postprocess import (
    CHUNK,
    blend_momentum,
    boundary_band,
    labels_from_probabilities,
    normalised_entropy,
)
from .runner import FeatureRunner, slice_runs
from .state import RoundState, SegmentationResult, spacing3
from .strokemaps import WithStrokeDistances, with_stroke_distances
from .suggest import object_region, suggest_slices, toward_the_object
from .unclear import training_rows

if TYPE_CHECKING:  # torch is imported when a round runs, not with the package
    from ...models.head import SegmentationHead

__all__ = ["segment_iter", "segment"]

# Far from the object, suggest the slice past an end of it that lies on an annotated slice
# instead of the most uncertain one (suggest.toward_the_object; switchable for the ablation).
SUGGEST_OBJECT_END = True
# momentum_where="shrink-far": the object's growth is averaged too where its geodesic
# distance from its strokes exceeds this fraction of the reach's radius.
FAR_GROWTH = 0.5
# The edge step's moved voxels swap their two probabilities (so they agree with the labels).
# Off: with momentum it is a ratchet, each round's step adds a layer the next round's
# momentum holds, and lung2's object creeps outward (session 14, interactive_benchmarks.md).
SWAP_MOVED = False
# The shrink's momentum spares the voxels that joined the object in the last round, so growth
# a correction shows to be wrong goes at once (session 22: with the edge step, the default
# since, mean AUC of seven cases 0.772 against 0.740, lung2 no longer steps back;
# docs/interactive_benchmarks.md, "The edge step with fresh growth let go").
FRESH_SHRINKS_AT_ONCE = True
# Threads predicting cached-feature batches at once (None: thread_count(); 1: one batch at a
# time, as before session 39).
PREDICT_THREADS: int | None = None


@dataclass
class _HeadRound:
    """The head this round trained, and how it was trained."""

    head: SegmentationHead
    proba: HeadProbabilities  # on the fine-tuned encoder's features after fine-tuning
    held: np.ndarray | None  # annotated voxels the head never saw (forest rounds)
    finetuned: bool
    stopped: bool  # the user ended fine-tuning early: later steps must not cancel


def segment_iter(
    model: VAEModel | None,
    volume: np.ndarray,
    annotations: np.ndarray,
    options: SegmentOptions | None = None,
    *,
    modality: str | None = None,
    cache: FeatureCache | None = None,
    stop_event: threading.Event | None = None,
    spacing: tuple[float, ...] | None = None,
    previous: SegmentationResult | None = None,
    extra_features: np.ndarray | None = None,
    **legacy_kwargs,
) -> Generator[dict, None, SegmentationResult]:
    """Few-shot segmentation from sparse annotations, optionally with a fine-tuning round.

    Few-shot (the default): a random forest on compact per-voxel features (the ilastik
    multiscale set, the VAE latent mean and the encoder's principal components) of the
    annotated voxels predicts every voxel. With ``finetune_steps``, an MLP head on the full
    encoder hypercolumn is trained with the encoder on crops around the annotated voxels, except
    a random 20 % of the annotated 32x32 tiles. A forest fitted without those tiles checks the
    head on them: only if averaging the head's probabilities with the forest's near class
    boundaries raises Dice there is the head used, within 3 voxels of the forest's boundaries
    (far from them it extrapolates). ``history`` holds the check (stage ``"holdout"``) and
    ``notes`` say when the head was not used.

    Parameters
    ----------
    model : VAEModel or None
        A fitted (possibly already fine-tuned) model; it is never modified. None: the forest
        on the ilastik multiscale features alone, before or without any fit (forest rounds
        only; the result's ``model`` is then a stand-in not worth saving).
    volume : np.ndarray
        Image (z, y, x) in its own units.
    annotations : np.ndarray
        Same shape; 0 = not annotated, other ids = classes (any size: labels take the
        smallest unsigned type holding them, uint32 past 65535).
    options : SegmentOptions, optional
        Classifier, fine-tuning and sampling options; the defaults without it.
    modality : str, optional
        The image's modality, for the model's normaliser.
    cache : FeatureCache, optional
        Reuse features of the same image and model across rounds.
    stop_event : threading.Event, optional
        Stops fine-tuning at the next step (what was learnt is used); elsewhere cancels.
    spacing : tuple of float, optional
        Voxel size (mm, z y x), for the background prior's margin; 1 mm when unknown.
    previous : SegmentationResult, optional
        The last round's result on the same image, when this round only adds strokes:
        with ``options.momentum`` > 0 its probabilities are averaged in (by default where the
        object's probability fell, in object-vs-background rounds; ignored, with a note,
        when its classes or shape differ).
    extra_features : np.ndarray, optional
        More forest columns on the image's grid (``volume.shape`` or ``volume.shape + (k,)``),
        e.g. the scan's anomaly score (:mod:`.extra`; forest rounds only).
    **legacy_kwargs
        Fields of :class:`SegmentOptions` as keywords (``finetune_steps=50``, ...), applied
        over ``options``.

    Yields progress dicts; returns a :class:`SegmentationResult`.
    """
    import torch

    opts = resolve_options(options, legacy_kwargs)
    t0 = time.perf_counter()
    no_model = model is None
    if no_model:  # few-shot on the ilastik set alone: nothing to fit first
        if opts.classifier != "forest" or opts.finetune_steps:
            raise ValueError("segmenting without a model is the forest on the ilastik "
                             "features; fine-tuning and the MLP head need a fitted model")
        opts = dataclasses.replace(opts, vae_features=False)
        model = features_only_model(volume, modality)
    st, squeeze = _start_round(model, volume, annotations, opts)
    if opts.vae_features == "auto":  # the VAE's columns where they paid (three or more classes)
        opts = st.options = dataclasses.replace(opts, vae_features=opts.uses_vae(len(st.table)))
    st.spacing = spacing3(spacing, squeeze)
    st.fresh = previous is None
    if no_model:
        st.notes.append(NO_MODEL_NOTE)
    torch.manual_seed(opts.seed)
    use_forest = opts.classifier == "forest"
    # Features are computed once per round even without a caller's cache.
    cache = cache if cache is not None else FeatureCache()
    run = FeatureRunner(st.model, st.volume, modality)
    if extra_features is not None and not use_forest:
        raise ValueError("extra feature columns are columns of the forest: not available "
                         "with classifier='mlp'")
    extra = (None if extra_features is None
             else np.asarray(extra_features)[None] if squeeze else extra_features)
    forest_feats = ForestFeatures(run, cache, opts.vae_features, extra) if use_forest else None
    hit = use_forest and forest_feats.cached is not None
    head_round = None
    last_labels = st.previous_labels(previous, squeeze)  # None: the round starts afresh
    round_no = round_after(previous)
    try:
        yield {"stage": "segment: features", "done": 0, "total": 1}
        forest, forest_feats = ((yield from _fit_forest(st, forest_feats, stop_event,
                                                        last_labels))
                                if use_forest else (None, None))
        # A fine-tuned model's head keeps contributing in later rounds (the loop continues
        # from it).
        if opts.trains_head or model.head:
            head_round = yield from _train_head(st, run, modality, use_forest, stop_event)
        # Stop meant "end fine-tuning": predict with what was learnt, don't cancel.
        later_stop = None if head_round is not None and head_round.stopped else stop_event
        blend = forest is not None and head_round is not None
        if blend and head_round.held is not None:
            blend = yield from _check_head(st, forest_feats, head_round, later_stop)
        predict = (ForestProbabilities(forest, forest_feats, st.n_classes)
                   if forest is not None else head_round.proba)
        batches = forest_feats.predict_batches if forest is not None else run.volume_batches
        threads = (PREDICT_THREADS or thread_count()) if (
            forest is not None and forest_feats.cached is not None) else 1
        probs = yield from _predict(st, batches, predict, later_stop, threads)
        if forest is not None and opts.object_reach and st.prior_background is not None:
            yield from _apply_reach(st, probs, forest_feats, run)
        if previous is not None and opts.momentum > 0:
            _blend_previous(st, probs, previous, squeeze)
        yield {"stage": "segment: labels", "done": 0, "total": 1}
        labels, changed = labels_from_probabilities(probs, st.annotations, st.table,
                                                    opts.keep_connected_regions)
        if (forest is not None and opts.boundary_refine and st.prior_background is not None
                and len(probs) == 2):
            _move_boundary(st, labels, probs, forest_feats, run)
        if blend:
            labels, changed = yield from _refine_boundaries(
                st, probs, labels, head_round.proba, len(run.volume_batches[0]), later_stop)
        if changed:
            st.notes.append(f"{changed} voxels in regions not connected to a stroke of their "
                            "class went to their next most probable class")
        labels, probs = local_round(st, labels, probs, last_labels, previous, round_no)
        grown = st.grown(labels, last_labels)
        uncertainty = normalised_entropy(probs)
        region = object_region(probs, st.annotations, st.table.classes, run.mask)
        suggestion = suggest_slices(uncertainty, st.annotations, region)
        if SUGGEST_OBJECT_END:
            suggestion = toward_the_object(suggestion, labels, st.annotations,
                                           st.table.classes, uncertainty)
        if head_round is not None:
            st.model.head = _head_record(st, head_round)
    finally:
        run.close()
        if head_round is not None:
            head_round.proba.run.close()
    st.model.info = dict(st.model.info, parent=model.source_path)
    st.model.source_path = None
    if squeeze:
        labels, probs, uncertainty = labels[0], probs[:, 0], uncertainty[0]
        grown = grown[0] if grown is not None else None
        suggestion = dict(suggestion, note="2D image: index refers to rows/columns")
    return SegmentationResult(labels, probs, uncertainty, st.table.classes, st.model,
                              suggestion, st.history, time.perf_counter() - t0, st.notes, hit,
                              grown, round_no)


def segment(model: VAEModel, volume: np.ndarray, annotations: np.ndarray,
            options: SegmentOptions | None = None, *, progress: Callable | None = None,
            **kwargs) -> SegmentationResult:
    """Blocking version of :func:`segment_iter`."""
    return drive(segment_iter(model, volume, annotations, options, **kwargs), progress)


# --------------------------------------------------------------------------- the steps
def _start_round(model: VAEModel, volume: np.ndarray, annotations: np.ndarray,
                 opts: SegmentOptions) -> tuple[RoundState, bool]:
    """Checked 3D inputs and the round's private model; True when the image was 2D."""
    vol, ann = np.asarray(volume), np.asarray(annotations)
    squeeze = vol.ndim == 2
    if squeeze:
        vol, ann = vol[None], ann[None]
    table = ClassTable.from_annotations(ann, vol.shape)
    # Work on a copy: the caller's model (and its file) stay as they are. Only a round that
    # trains a head changes the network; a forest round shares it (a deep copy took 0.03-0.04
    # s, a fifth of a round on breast1).
    trains = opts.trains_head or bool(model.head)
    mine = copy.deepcopy(model) if trains else copy.copy(model)
    st = RoundState(mine, vol, ann.astype(table.dtype, copy=False), table, opts,
                    np.random.default_rng(opts.seed))
    return st, squeeze


def _fit_forest(st: RoundState, forest_feats: ForestFeatures, stop_event,
                last_labels: np.ndarray | None):
    """The random forest on a balanced sample of the annotated voxels (less the unclear
    ones, :mod:`.unclear`), plus the background prior when asked (generator). Returns the
    forest and the features it reads (with the strokes' distances, :mod:`.strokemaps`)."""
    yield from forest_feats.fill_cache(stop_event)
    forest_feats = with_stroke_distances(forest_feats, st.annotations, st.table.classes,
                                         st.spacing, st.options)
    rows, unclear = training_rows(st.annotations, st.table.classes, st.options, forest_feats,
                                  last_labels)
    if unclear:
        st.history.append({"stage": "unclear strokes", "left_out": unclear})
        st.notes.append(f"{unclear} painted object voxels that look like the background "
                        "around them did not train the classifier (they keep their label)")
    ts = training_set(forest_feats, st.annotations, st.table, st.options, st.rng, st.spacing,
                      stop_event, rows)
    if ts.note:
        st.notes.append(ts.note)
    if st.fresh and ts.adaptive:
        ts.scale = st.options.fresh_prior_scale
    if ts.prior and st.n_classes == 2:
        st.prior_background = ts.background_index
    yield {"stage": "segment: forest", "done": 0, "total": 1}
    forest = ts.fit(st.options.seed)
    st.history.append({"stage": "forest", "voxels": len(ts.y) - ts.prior,
                       "prior_voxels": ts.prior, "object_share": ts.object_share,
                       "vae": forest_feats.vae,
                       "features": forest_features_name(forest_feats.vae, forest_feats.contrast,
                                                        forest_feats.n_extra)
                       + (" + distance from the object's strokes"
                          if isinstance(forest_feats, WithStrokeDistances) else "")
                       + (" + background prior" if ts.prior and st.n_classes == 2 else
                          " + unpainted prior" if ts.prior else "")
                       + (" + class prototypes" if ts.prototypes is not None else "")
                       + (f" (adaptive: the object ~{100 * ts.object_share:.1f} % of the scan)"
                          if ts.object_share is not None else "")})
    yield {"stage": "segment: forest", "done": 1, "total": 1}
    return forest, forest_feats


def _train_head(st: RoundState, run: FeatureRunner, modality: str | None, with_forest: bool,
                stop_event) -> Generator[dict, None, _HeadRound]:
    """The head on frozen features, then fine-tuning with the encoder if asked."""
    train_ann, held = st.annotations, None
    if with_forest:
        # Tiles of the annotations the head never sees, to check it helps the forest.
        held = holdout(st.annotations, st.options.seed)
        if held is None:
            st.notes.append("too few annotations to check the fine-tuned head on held-out "
                            "voxels: its probabilities are used near the forest's boundaries "
                            "unchecked")
        else:
            train_ann = np.where(held, 0, st.annotations)
    head = yield from train_head(st, run, train_ann, stop_event)
    if st.options.finetune_steps == 0:
        return _HeadRound(head, HeadProbabilities(head, run, st.n_classes), held, False, False)
    steps = yield from finetune(st, head, run, train_ann, stop_event)
    stopped = stop_event is not None and stop_event.is_set()
    if stopped:
        st.notes.append(f"fine-tuning stopped by the user after {steps} steps")
    # The encoder changed: its hypercolumn is recomputed (the forest keeps the input model's
    # cached features).
    tuned = FeatureRunner(st.model, st.volume, modality)
    return _HeadRound(head, HeadProbabilities(head, tuned, st.n_classes), held, True, stopped)


def _check_head(st: RoundState, forest_feats: ForestFeatures, head_round: _HeadRound,
                stop_event) -> Generator[dict, None, bool]:
    """Whether held-out annotations allow the head to refine the forest (see check_head)."""
    yield {"stage": "segment: check head", "done": 0, "total": 1}
    check = check_head(st, forest_feats, head_round.proba, head_round.held, stop_event)
    st.history.append(dict(check, stage="holdout"))
    if check["used"] is False:
        st.notes.append(
            "the fine-tuned head did not improve the forest on held-out annotated voxels "
            f"(Dice near boundaries {check['dice_with_head']:.3f} against "
            f"{check['dice_forest']:.3f}): the forest's result is kept (the saved model "
            "still holds the head for later rounds)")
    elif check["used"] is None:
        st.notes.append("no held-out annotated voxel lies near a class boundary: the "
                        "fine-tuned head's probabilities are used unchecked")
    yield {"stage": "segment: check head", "done": 1, "total": 1}
    return check["used"] is not False


def _predict(st: RoundState, batches: list[np.ndarray], predict: Callable, stop_event,
             threads: int = 1) -> Generator[dict, None, np.ndarray]:
    """(n_classes, *shape) probabilities of every voxel, batch by batch (in ``threads``
    threads: cached features only, the batches then read no model)."""
    probs = np.empty((st.n_classes,) + st.volume.shape, dtype=np.float32)
    yield {"stage": "segment: predict", "done": 0, "total": len(batches)}

    def one(zs: np.ndarray) -> None:
        check_stop(stop_event, "segmentation")
        probs[:, zs[0] : zs[-1] + 1] = predict(zs)

    for i in each_in_threads(one, batches, threads):
        yield {"stage": "segment: predict", "done": i + 1, "total": len(batches)}
    return probs


def _apply_reach(st: RoundState, probs: np.ndarray, forest_feats: ForestFeatures,
                 run: FeatureRunner) -> Generator[dict, None, None]:
    """Fade the object's probability beyond its geodesic reach from its strokes, in place
    (object-vs-background rounds with the prior; :mod:`.reach`)."""
    from .reach import (
        count_by_grid,
        geodesic_grid,
        reach_gate,
        reach_radius,
        scale_by_grid,
        upsample_grid,
    )

    yield {"stage": "segment: reach", "done": 0, "total": 1}
    bg = st.prior_background
    obj = 1 - bg
    seeds = st.annotations == st.table.classes[obj]
    spacing = st.spacing or (1.0, 1.0, 1.0)
    # On the distance's grid: the gate is a function of the distance alone, so each cell's
    # voxels share it, and it scales the probabilities without a full-size copy.
    known = getattr(forest_feats, "distances", None)  # the forest's column, when it has it
    dist, grid = (known.of(st.table.classes[obj]) if known is not None else geodesic_grid(
        smoothed_image(forest_feats.cached, run), seeds, spacing))
    radius = reach_radius(seeds, spacing)
    gate = reach_gate(dist, radius)
    if st.options.momentum_where == "shrink-far":  # a whole-volume mask: only when used
        st.far_from_object = upsample_grid(dist, grid, seeds.shape) > FAR_GROWTH * radius
    far = gate < 0.5

    def slab(z: slice) -> int:  # slabs of slices in threads (cells are in-plane)
        n = count_by_grid(probs[obj, z] > probs[bg, z], far[z], grid)
        scale_by_grid(probs[obj, z], gate[z], grid)
        np.subtract(1.0, probs[obj, z], out=probs[bg, z])
        return n

    faded = sum(map_slabs(slab, probs.shape[1], CHUNK))
    st.history.append({"stage": "reach", "radius_mm": round(radius, 1), "faded": faded})
    if faded:
        st.notes.append(f"{faded} voxels beyond the object's reach ({radius:.0f} mm from its "
                        "strokes, image edges counting as distance) went to the background")
    yield {"stage": "segment: reach", "done": 1, "total": 1}


def _move_boundary(st: RoundState, labels: np.ndarray, probs: np.ndarray,
                   forest_feats: ForestFeatures, run: FeatureRunner) -> None:
    """The object's boundary to the closer local mean intensity (:mod:`.boundary`), in
    place (with ``SWAP_MOVED``, the moved voxels' two probabilities swap too; with
    ``options.edge_min_p``, a voxel joins the object only at that probability or more)."""
    bg = st.prior_background
    classes = st.table.classes
    before = labels.copy() if SWAP_MOVED else None  # the probe needs the moved voxels
    moved = refine_object_boundary(labels, smoothed_image(forest_feats.cached, run, 0),
                                   st.annotations, classes[1 - bg], classes[bg],
                                   p_object=probs[1 - bg], min_p=st.options.edge_min_p)
    if before is not None and moved:
        flip = labels != before
        to_obj = labels[flip] == classes[1 - bg]
        # The side a voxel moved to takes the larger of its two probabilities (a tie, just
        # above one half).
        p_side = np.maximum(probs[:, flip].max(0), 0.5 + 1e-3)
        probs[1 - bg][flip] = np.where(to_obj, p_side, 1.0 - p_side)
        probs[bg][flip] = np.where(to_obj, 1.0 - p_side, p_side)
    st.history.append({"stage": "boundary", "moved": moved})
    gate = st.options.edge_min_p
    st.notes.append(f"the object's edge snapped to the image: {moved} voxels changed side "
                    "to the closer local mean intensity" + (
                        f" (joining the object only at probability {gate:g} or more)"
                        if gate else ""))


def _blend_previous(st: RoundState, probs: np.ndarray, previous: SegmentationResult,
                    squeezed: bool) -> None:
    """Average ``probs`` in place with the previous round's (momentum;
    ``options.momentum_where``: everywhere, or where the object's probability fell; rounds
    of three or more classes everywhere at ``options.momentum_multiclass``)."""
    bg = st.prior_background
    weight, shrink = st.options.momentum_for(len(probs), bg is not None)
    if weight <= 0:
        return
    prev = np.asarray(previous.probabilities)
    if squeezed:
        prev = prev[:, None]
    if list(previous.classes) != list(st.table.classes) or prev.shape != probs.shape:
        st.notes.append("the previous round had other classes or another shape: its "
                        "probabilities were not averaged in")
        return
    far = st.far_from_object
    fresh = getattr(previous, "grown", None) if FRESH_SHRINKS_AT_ONCE and shrink else None
    if fresh is not None:
        fresh = fresh[None] if squeezed else fresh
        fresh = fresh if fresh.shape == probs.shape[1:] else None
    blend_momentum(probs, prev, weight, 1 - bg if shrink else None, far, fresh,
                   st.options.growth_floor)
    where = " where the object's probability fell" if shrink else ""
    if st.options.growth_floor is not None and shrink:
        where += " or rose to under {:g} (at {:g})".format(*st.options.growth_floor)
    if far is not None:
        where += " or rose far from its strokes"
    st.notes.append(f"averaged with the previous round's probabilities{where} "
                    f"(momentum {weight:g})")
    if fresh is not None and fresh.any():
        st.notes.append(f"{int(fresh.sum())} voxels the object gained last round were free "
                        "to go at once")


def _refine_boundaries(st: RoundState, probs: np.ndarray, labels: np.ndarray,
                       head_proba: HeadProbabilities, per: int, stop_event):
    """Average the fine-tuned head's probabilities in near the forest's class boundaries.

    Far from them the head extrapolates (brain1: Dice 0.07 with a plain average, false
    positives joined to the tumour), so it may not add regions. Only the band's voxels go
    through the head. Returns the new labels (generator).
    """
    band = boundary_band(labels, radius=3) & ~(st.annotations > 0)
    if st.spatial_dims == 2:
        zs_band = np.flatnonzero(band.reshape(band.shape[0], -1).any(1))
        batches = [r[i : i + per] for r in slice_runs(zs_band) for i in range(0, len(r), per)]
    else:
        batches = [np.arange(st.volume.shape[0])] if band.any() else []
    for i, zs in enumerate(batches):
        check_stop(stop_event, "segmentation")
        ph, end = head_proba.at(zs, band[zs]), 0  # the band's voxels, slice after slice
        for z in zs:
            b, start = band[z], end
            end += int(np.count_nonzero(b))
            probs[:, z][:, b] = 0.5 * (probs[:, z][:, b] + ph[:, start:end])
        yield {"stage": "segment: refine", "done": i + 1, "total": len(batches)}
    return labels_from_probabilities(probs, st.annotations, st.table,
                                     st.options.keep_connected_regions)


def _head_record(st: RoundState, head_round: _HeadRound) -> dict:
    """What the model keeps of the head (models/head.py's format), one round further."""
    from ...models.head import encoder_finetuned, head_rounds, pack_head

    before = st.model.head  # the input model's head, if any
    return pack_head(
        head_round.head, st.table.classes, rounds=head_rounds(before) + 1,
        finetuned_encoder=(head_round.finetuned and st.options.finetune_encoder)
        or encoder_finetuned(before),
        annotated_voxels=int(np.count_nonzero(st.annotations)))
