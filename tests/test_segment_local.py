"""Late correction rounds keep only the changes their corrections touch (FocalClick's
progressive merge, ``SegmentOptions.local_from_round``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from napari_latentseg.engine.segment import FeatureCache, SegmentOptions, segment
from napari_latentseg.engine.segment.local import corrections, keep_near_corrections, merges

SPACING = (4.0, 1.0, 1.0)  # thick slices: the merge applies there only
ISOTROPIC = (1.0, 1.0, 1.0)
# The forest and the prior alone: no momentum, reach, connectivity rule or edge step, so
# the far change below is the forest's own.
PLAIN = dict(momentum=0.0, object_reach=False, keep_connected_regions=False,
             boundary_refine=False, unclear_share=0.0)


@pytest.fixture(scope="module")
def scene():
    """A bright object the last round missed (its stroke is the correction) and, far from
    it, a dark region the last round wrongly called object (no stroke there)."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0.0, 0.3, (8, 48, 96)).astype(np.float32)
    obj = np.zeros(vol.shape, bool)
    obj[1:7, 16:32, 8:24] = True
    vol[obj] += 3.0
    wrong = np.zeros(vol.shape, bool)
    wrong[:, 20:40, 60:90] = True
    ann = np.zeros(vol.shape, np.uint8)
    ann[3:5, 21:27, 13:19] = 2  # the object stroke, inside the missed object
    ann[3:5, 2:6, 30:90] = 1  # the background, along the top
    labels = np.where(wrong, 2, 1).astype(np.uint8)
    p_obj = np.where(wrong, 0.9, 0.1).astype(np.float32)
    previous = SimpleNamespace(labels=labels, probabilities=np.stack([1 - p_obj, p_obj]),
                               classes=[1, 2], grown=None, round_no=1)
    return vol, ann, obj, wrong, previous


def _touching_a_correction(res_labels, last_labels, ann) -> bool:
    changed = res_labels != last_labels
    comp, _ = ndimage.label(changed, structure=ndimage.generate_binary_structure(3, 1))
    ids = np.unique(comp[corrections(ann, last_labels) & changed])
    return bool(np.isin(comp[changed], ids[ids > 0]).all())


def test_a_late_round_keeps_the_last_result_away_from_its_corrections(scene):
    vol, ann, obj, wrong, previous = scene
    cache = FeatureCache()
    every = segment(None, vol, ann, SegmentOptions(local_from_round=None, **PLAIN),
                    cache=cache, spacing=SPACING, previous=previous)
    # The merge in 3D (an object correction's reach to the other slices: the next test).
    local = segment(None, vol, ann, SegmentOptions(local_from_round=2, local_in_plane=False,
                                                   **PLAIN),
                    cache=cache, spacing=SPACING, previous=previous)
    assert every.round_no == local.round_no == 2
    # Without the rule the forest clears the wrong region the user never touched ...
    assert (every.labels[wrong] == 1).mean() > 0.9
    assert not _touching_a_correction(every.labels, previous.labels, ann)
    # ... with it that region keeps the last round's labels and probabilities,
    np.testing.assert_array_equal(local.labels[wrong], 2)
    np.testing.assert_allclose(local.probabilities[1][wrong], 0.9)
    # and so do the voxels no round changed (the next round's momentum reads them).
    still = (every.labels == previous.labels) & (local.labels == previous.labels)
    still[:, :, :40] = False  # away from the corrected object's changes
    assert still.sum() > 1000
    np.testing.assert_allclose(local.probabilities[1][still], 0.1)
    assert not np.allclose(every.probabilities[1][still], 0.1)
    assert any("kept the last round's labels" in n for n in local.notes)
    # while the corrected object is found as without it, and every change touches a
    # correction.
    assert (local.labels[obj] == 2).mean() > 0.6  # its corners cut by the edge step
    np.testing.assert_array_equal(local.labels[obj], every.labels[obj])
    assert _touching_a_correction(local.labels, previous.labels, ann)
    # Painted voxels keep their labels.
    np.testing.assert_array_equal(local.labels[ann > 0], ann[ann > 0])


def test_early_rounds_and_fresh_rounds_change_everything(scene):
    vol, ann, _, wrong, previous = scene
    cache = FeatureCache()
    early = segment(None, vol, ann, SegmentOptions(local_from_round=3, **PLAIN),
                    cache=cache, spacing=SPACING, previous=previous)
    assert early.round_no == 2 and (early.labels[wrong] == 1).mean() > 0.9
    assert not any("kept the last round's labels" in n for n in early.notes)
    fresh = segment(None, vol, ann, SegmentOptions(local_from_round=2, **PLAIN),
                    cache=cache, spacing=SPACING)
    assert fresh.round_no == 1
    # The round number carries on along the chain (the dock passes it back).
    later = segment(None, vol, ann, SegmentOptions(local_from_round=3, **PLAIN),
                    cache=cache, spacing=SPACING,
                    previous=SimpleNamespace(**{**vars(previous), "round_no": 2}))
    assert later.round_no == 3 and (later.labels[wrong] == 2).all()


def test_live_slices_hold_what_the_full_round_holds(scene):
    from napari_latentseg.engine.segment import LiveSegmenter
    from napari_latentseg.runtime.progress import drive

    vol, ann, _, wrong, previous = scene
    cache = FeatureCache()
    opts = SegmentOptions(**PLAIN)  # the default: local from the sixth round
    late = SimpleNamespace(**{**vars(previous), "round_no": 5})
    res = segment(None, vol, ann, opts, cache=cache, spacing=SPACING, previous=late)
    assert res.round_no == 6 and (res.labels[wrong] == 2).all()
    live = LiveSegmenter(None, vol, cache=cache, options=opts, spacing=SPACING)
    drive(live.prepare())
    live.update(ann, last_round=late)
    # The painted slice, and a slice without corrections (it keeps the last round's).
    for z in (3, 0):
        got = live.predict_slice(z, anchors=previous.labels[z],
                                 previous=previous.probabilities[:, z])
        np.testing.assert_array_equal(got.labels, res.labels[z])
    # A round before the sixth changes the slice as the full round does.
    live.update(ann, last_round=previous)
    got = live.predict_slice(3, anchors=previous.labels[3], previous=previous.probabilities[:, 3])
    assert (got.labels[wrong[3]] == 1).mean() > 0.9


def test_the_merge_itself():
    last = np.ones((1, 6, 12), np.uint8)
    last[0, 1:3, 8:11] = 2  # an object far from the correction
    new = np.ones_like(last)
    new[0, 2:5, 1:4] = 2  # grown where the user painted the object
    ann = np.zeros_like(last)
    ann[0, 3, 2] = 2
    probs = np.stack([(new == 1), (new == 2)]).astype(np.float32)
    last_probs = np.stack([(last == 1), (last == 2)]).astype(np.float32)
    labels, p, held = keep_near_corrections(new.copy(), probs.copy(), last, last_probs, ann)
    assert held == 6  # the far object, which this round dropped, stays
    np.testing.assert_array_equal(labels[0, 1:3, 8:11], 2)
    np.testing.assert_array_equal(labels[0, 2:5, 1:4], 2)
    np.testing.assert_array_equal(p[1], labels == 2)
    np.testing.assert_array_equal(labels[new != labels], 2)  # only the held voxels moved
    # Nothing corrected (the painted voxel was already right) or nothing changed: no merge.
    assert keep_near_corrections(new, probs, last, last_probs, np.where(last == 2, 2, 0)
                                 .astype(np.uint8)) is None
    assert keep_near_corrections(last, last_probs, last, last_probs, ann) is None


def test_on_thick_slices_a_change_connects_within_its_slice(scene):
    """The object spans slices 1-6, its strokes 3-4: on thick slices the late round finds
    it on the painted slices and holds the others (live slices show the same); a change
    that connects to an object correction through 3D only is kept without the rule, and
    near-isotropic scans go without the merge."""
    from napari_latentseg.engine.segment import LiveSegmenter
    from napari_latentseg.runtime.progress import drive

    vol, ann, obj, wrong, previous = scene
    thick = SPACING
    cache = FeatureCache()
    late = SimpleNamespace(**{**vars(previous), "round_no": 5})
    runs = {flag: segment(None, vol, ann, SegmentOptions(local_in_plane=flag, **PLAIN),
                          cache=cache, spacing=thick, previous=late) for flag in (True, False)}
    painted, other = obj.copy(), obj.copy()
    painted[[1, 2, 5, 6]] = False
    other[[3, 4]] = False
    assert (runs[True].labels[painted] == 2).mean() > 0.6  # its corners cut by the edge step
    np.testing.assert_array_equal(runs[True].labels[other], 1)  # the last round's
    assert any("an object correction reaches only its own slice" in n for n in runs[True].notes)
    assert (runs[False].labels[other] == 2).mean() > 0.6
    np.testing.assert_array_equal(runs[True].labels[wrong], 2)  # still held, as before
    # Near-isotropic voxels: no merge at all (every round may change everything).
    iso = segment(None, vol, ann, SegmentOptions(**PLAIN), cache=FeatureCache(),
                  spacing=ISOTROPIC, previous=late)
    assert (iso.labels[other] == 2).mean() > 0.6
    assert (iso.labels[wrong] == 1).mean() > 0.9
    assert not any("kept the last round's labels" in n for n in iso.notes)
    # Every live slice now shows what the full round holds, slices without corrections too.
    live = LiveSegmenter(None, vol, cache=cache, options=SegmentOptions(**PLAIN), spacing=thick)
    drive(live.prepare())
    live.update(ann, last_round=late)
    for z in (1, 3):
        got = live.predict_slice(z, anchors=previous.labels[z],
                                 previous=previous.probabilities[:, z])
        np.testing.assert_array_equal(got.labels, runs[True].labels[z])


def test_the_merge_in_plane():
    last = np.ones((3, 6, 6), np.uint8)
    new = last.copy()
    new[0:2, 1:4, 1:4] = 2  # grown on the painted slice and on the one before it
    ann = np.zeros_like(last)
    ann[1, 2, 2] = 2
    probs = np.stack([(new == 1), (new == 2)]).astype(np.float32)
    last_probs = np.stack([(last == 1), (last == 2)]).astype(np.float32)
    assert keep_near_corrections(new.copy(), probs, last, last_probs, ann) is None  # 3D
    labels, p, held = keep_near_corrections(new.copy(), probs, last, last_probs, ann,
                                            in_plane_class=2)
    assert held == 9
    np.testing.assert_array_equal(labels[0], 1)
    np.testing.assert_array_equal(labels[1], new[1])
    np.testing.assert_array_equal(p[1], labels == 2)
    # A background correction's changes still connect through the slices: the last round's
    # object on both slices, taken back after a background stroke on one of them.
    gone = np.ones_like(last)
    assert keep_near_corrections(gone.copy(), last_probs, new, probs,
                                 np.where(ann > 0, 1, 0).astype(np.uint8),
                                 in_plane_class=2) is None


def test_the_merge_applies_on_thick_slices_only():
    assert merges((4.0, 1.0, 1.0), (8, 10, 10))
    assert not merges((2.0, 1.0, 1.0), (8, 10, 10))  # twice the in-plane voxel: not thick
    assert not merges((4.0, 1.0, 1.0), (1, 10, 10))  # a 2D image
    assert not merges(None, (8, 10, 10))  # unknown voxel size


def test_options_check_the_round():
    assert SegmentOptions().local_from_round == 6 and SegmentOptions().local_in_plane
    with pytest.raises(ValueError, match="local_from_round"):
        SegmentOptions(local_from_round=1)
