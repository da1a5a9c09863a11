"""Momentum between correction rounds: the last round's probabilities averaged in where the
object shrinks, where its growth is marginal, everywhere with three or more classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_latentseg.engine.segment import FeatureCache, LiveSegmenter, SegmentOptions, segment
from napari_latentseg.runtime.progress import drive

SPACING = (3.0, 1.0, 1.0)


def _assert_averaged(mom, plain, first, ann) -> None:
    """``mom`` is ``plain`` averaged half and half with ``first`` where nothing is painted
    (painted voxels are one-hot in every round and keep their label), and says so."""
    free = ann == 0
    np.testing.assert_allclose(mom.probabilities[:, free],
                               0.5 * plain.probabilities[:, free]
                               + 0.5 * first.probabilities[:, free], atol=1e-6)
    assert any("momentum 0.5" in n for n in mom.notes)
    painted = ann > 0
    np.testing.assert_array_equal(mom.labels[painted], ann[painted])


def test_momentum_averages_the_previous_round_in(scene):
    vol, ann, _ = scene
    first = segment(None, vol, ann, spacing=SPACING)
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1  # a corrective background stroke
    plain = segment(None, vol, ann2, spacing=SPACING)
    mom = segment(None, vol, ann2, SegmentOptions(momentum=0.5, momentum_where="all"),
                  spacing=SPACING, previous=first)
    _assert_averaged(mom, plain, first, ann2)
    # Momentum 0 ignores the previous round, and one with other classes is not averaged in.
    same = segment(None, vol, ann2, SegmentOptions(momentum=0.0), spacing=SPACING,
                   previous=first)
    np.testing.assert_array_equal(same.probabilities, plain.probabilities)
    other = segment(None, vol, np.where(ann2 == 1, 3, ann2).astype(np.uint8),
                    SegmentOptions(background=3), spacing=SPACING, previous=first)
    assert any("other classes" in n for n in other.notes)
    with pytest.raises(ValueError, match="momentum"):
        SegmentOptions(momentum=1.0)


def test_rounds_of_three_classes_average_every_voxel(scene):
    """With three or more classes (no object, so no "shrink"), a round that continues
    another averages every voxel at ``momentum_multiclass``; 0 switches it off, and so does
    ``momentum`` 0."""
    vol, ann, _ = scene
    ann3 = ann.copy()
    ann3[4, 2:5, 2:5] = 3  # the dark field as a third class
    first = segment(None, vol, ann3, spacing=SPACING)
    ann4 = ann3.copy()
    ann4[3, 40:43, 40:43] = 1
    plain = segment(None, vol, ann4, SegmentOptions(momentum_multiclass=0.0),
                    spacing=SPACING, previous=first)
    assert not any("momentum" in n for n in plain.notes)
    mom = segment(None, vol, ann4, spacing=SPACING, previous=first)  # the default, 0.5
    _assert_averaged(mom, plain, first, ann4)
    off = segment(None, vol, ann4, SegmentOptions(momentum=0.0), spacing=SPACING,
                  previous=first)
    np.testing.assert_array_equal(off.probabilities, plain.probabilities)
    # A live slice given the last round's slice averages it in as the full round does.
    cache = FeatureCache()
    segment(None, vol, ann4, spacing=SPACING, cache=cache)  # fills the cache
    live = LiveSegmenter(None, vol, cache=cache, spacing=SPACING)
    drive(live.prepare())
    live.update(ann4)
    pred = live.predict_slice(3, previous=first.probabilities[:, 3])
    np.testing.assert_allclose(pred.probabilities, mom.probabilities[:, 3], atol=1e-6)
    live.close()
    with pytest.raises(ValueError, match="momentum_multiclass"):
        SegmentOptions(momentum_multiclass=1.0)


def test_shrink_momentum_lets_the_object_grow_at_once(scene):
    """``momentum_where="shrink"``: voxels whose object probability rose take this round's
    probabilities; those where it fell are averaged with the last round's."""
    vol, ann, _ = scene
    first = segment(None, vol, ann, spacing=SPACING)
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    plain = segment(None, vol, ann2, SegmentOptions(momentum=0.0), spacing=SPACING)
    res = segment(None, vol, ann2, SegmentOptions(momentum=0.5, momentum_where="shrink"),
                  spacing=SPACING, previous=first)
    free = ann2 == 0
    new, old = plain.probabilities[1], first.probabilities[1]  # class 2, the object
    fell, rose = free & (new < old - 1e-6), free & (new > old + 1e-6)
    assert fell.any() and rose.any()
    np.testing.assert_allclose(res.probabilities[1][rose], new[rose], atol=1e-6)
    np.testing.assert_allclose(res.probabilities[1][fell], 0.5 * (new[fell] + old[fell]),
                               atol=1e-6)
    assert any("where the object's probability fell" in n for n in res.notes)
    # Without the prior (or with three classes) "shrink" averages nothing in.
    free_rounds = [segment(None, vol, ann2, SegmentOptions(background=None, momentum=m,
                                                           momentum_where="shrink"),
                           spacing=SPACING, previous=p) for m, p in ((0.5, None), (0.5, first))]
    np.testing.assert_array_equal(*(r.probabilities for r in free_rounds))
    with pytest.raises(ValueError, match="momentum_where"):
        SegmentOptions(momentum_where="far")
    SegmentOptions(momentum_where="shrink-far")  # valid


def test_marginal_growth_waits_a_round(scene):
    """The default ``momentum_where="shrink-marginal"``: growth to an object probability of
    0.6 or more comes at once, growth to less is averaged at 0.5, and where the probability
    fell it is averaged at the momentum's weight."""
    from napari_latentseg.engine.segment.options import MARGINAL_GROWTH, MARGINAL_WEIGHT

    vol, ann, _ = scene
    # The rule on a forest of the image's features alone: with the strokes' distance column
    # this scene's growth stays under 0.6 everywhere, and the rule's "sure" case is not met.
    opts = dict(stroke_distances=False)
    first = segment(None, vol, ann, SegmentOptions(**opts), spacing=SPACING)
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    plain = segment(None, vol, ann2, SegmentOptions(momentum=0.0, **opts), spacing=SPACING)
    assert SegmentOptions().momentum_where == "shrink-marginal"
    res = segment(None, vol, ann2, SegmentOptions(momentum=0.8, **opts), spacing=SPACING,
                  previous=first)
    free = ann2 == 0
    new, old = plain.probabilities[1], first.probabilities[1]
    fell, rose = free & (new < old - 1e-6), free & (new > old + 1e-6)
    sure, unsure = rose & (new >= MARGINAL_GROWTH), rose & (new < MARGINAL_GROWTH)
    assert fell.any() and sure.any() and unsure.any()
    got = res.probabilities[1]
    np.testing.assert_allclose(got[sure], new[sure], atol=1e-6)
    w = MARGINAL_WEIGHT
    np.testing.assert_allclose(got[unsure], (1 - w) * new[unsure] + w * old[unsure],
                               atol=1e-6)
    np.testing.assert_allclose(got[fell], 0.2 * new[fell] + 0.8 * old[fell], atol=1e-6)
    assert any("rose to under 0.6 (at 0.5)" in n for n in res.notes)


def test_shrink_far_momentum_also_averages_far_growth(scene, monkeypatch):
    """``momentum_where="shrink-far"``: as "shrink" near the object's strokes; beyond
    ``FAR_GROWTH`` of the reach its growth is averaged too (0: almost everywhere, as "all")."""
    import napari_latentseg.engine.segment.fewshot as fewshot

    vol, ann, _ = scene
    first = segment(None, vol, ann, spacing=SPACING)
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    free = ann2 == 0

    def round_(where):
        return segment(None, vol, ann2, SegmentOptions(momentum=0.5, momentum_where=where),
                       spacing=SPACING, previous=first)

    monkeypatch.setattr(fewshot, "FAR_GROWTH", 1e9)  # nothing is far: "shrink" exactly
    np.testing.assert_array_equal(round_("shrink-far").probabilities,
                                  round_("shrink").probabilities)
    monkeypatch.setattr(fewshot, "FAR_GROWTH", 0.0)  # all but the strokes' own grid cells
    far, every = round_("shrink-far"), round_("all")
    same = np.isclose(far.probabilities[1], every.probabilities[1], atol=1e-6)[free]
    assert same.mean() > 0.95
    assert any("rose far from its strokes" in n for n in far.notes)


def test_growth_of_the_last_round_shrinks_at_once(scene, monkeypatch):
    """The shrink's momentum spares the voxels that joined the object in the last round (a
    correction that shows them wrong takes them back at once); the round records them."""
    import napari_latentseg.engine.segment.fewshot as fewshot

    vol, ann, _ = scene
    first = segment(None, vol, ann, spacing=SPACING)
    assert first.grown is None  # a fresh round: nothing to compare with
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    second = segment(None, vol, ann2, SegmentOptions(momentum=0.5), spacing=SPACING,
                     previous=first)
    np.testing.assert_array_equal(second.grown, (second.labels == 2) & (first.labels != 2))
    # As if all of the object had just grown: nothing is averaged in where it fell.
    spared = dataclasses.replace(first, grown=first.labels == 2)
    ann3 = ann.copy()
    ann3[3, 30:33, 30:33] = 1
    plain = segment(None, vol, ann3, SegmentOptions(momentum=0.0), spacing=SPACING)
    res = segment(None, vol, ann3, SegmentOptions(momentum=0.5), spacing=SPACING,
                  previous=spared)
    obj = first.labels == 2
    np.testing.assert_allclose(res.probabilities[:, obj], plain.probabilities[:, obj],
                               atol=1e-6)
    assert any("the object gained last round were free to go" in n for n in res.notes)
    monkeypatch.setattr(fewshot, "FRESH_SHRINKS_AT_ONCE", False)
    held = segment(None, vol, ann3, SegmentOptions(momentum=0.5), spacing=SPACING,
                   previous=spared)
    fell = obj & (plain.probabilities[1] < first.probabilities[1] - 1e-6) & (ann3 == 0)
    assert fell.any()
    assert (held.probabilities[1][fell] > plain.probabilities[1][fell]).all()
