"""The object's boundary moved to the closer local mean (engine/segment/boundary.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_latentseg.engine.segment import SegmentOptions, segment
from napari_latentseg.engine.segment.boundary import refine_object_boundary


def _disk(shape, r, cy=32, cx=32):
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    return np.broadcast_to((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, shape).copy()


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _blurred_disk():
    """A blurred object (the forest's edge and the image's differ, so the step moves voxels)
    and a stroke of each class."""
    rng = np.random.default_rng(1)
    truth = _disk((4, 64, 64), 14)
    vol = ndimage.gaussian_filter(truth.astype(np.float32) * 2.0, (0, 2.5, 2.5))
    vol += rng.normal(0, 0.15, vol.shape).astype(np.float32)
    ann = np.zeros(vol.shape, np.uint8)
    ann[2, 29:36, 29:36] = 2
    ann[2, 2:6, 2:6] = 1
    return vol, ann


def test_the_boundary_moves_to_the_image_edge_both_ways():
    shape = (3, 64, 64)
    truth = _disk(shape, 12)
    smooth = ndimage.gaussian_filter(truth.astype(np.float32), (0, 1, 1))
    ann = np.zeros(shape, np.uint8)
    ann[1, 30:35, 30:35] = 2
    for r in (10, 14):  # a label too small, then too large, by two voxels
        labels = np.where(_disk(shape, r), 2, 1).astype(np.uint8)
        before = labels.copy()
        moved = refine_object_boundary(labels, smooth, ann, 2, 1)
        assert moved > 0
        assert _dice(labels == 2, truth) > _dice(before == 2, truth) + 0.05
        far = ndimage.distance_transform_edt(before == 2) > 3
        far |= ndimage.distance_transform_edt(before != 2) > 3
        np.testing.assert_array_equal(labels[far], before[far])  # only the band changes
    # Painted voxels keep their labels, whatever their neighbourhood says.
    labels = np.where(_disk(shape, 10), 2, 1).astype(np.uint8)
    ann[1, 21, 32] = 1  # painted background just inside the true edge
    refine_object_boundary(labels, smooth, ann, 2, 1)
    assert labels[1, 21, 32] == 1
    # No object: nothing to do.
    empty = np.ones(shape, np.uint8)
    assert refine_object_boundary(empty, smooth, np.zeros(shape, np.uint8), 2, 1) == 0


def test_segment_records_the_boundary_step():
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 0.2, (4, 48, 48)).astype(np.float32)
    vol[:, 14:34, 14:34] += 2.0
    ann = np.zeros(vol.shape, np.uint8)
    ann[2, 22:26, 22:26] = 2
    ann[2, 2:5, 2:5] = 1
    res = segment(None, vol, ann, spacing=(3.0, 1.0, 1.0))  # on by default (session 22)
    step = [h for h in res.history if h["stage"] == "boundary"]
    assert len(step) == 1 and step[0]["moved"] >= 0
    painted = ann > 0
    np.testing.assert_array_equal(res.labels[painted], ann[painted])
    plain = segment(None, vol, ann, SegmentOptions(boundary_refine=False),
                    spacing=(3.0, 1.0, 1.0))
    assert not any(h["stage"] == "boundary" for h in plain.history)


def test_moved_voxels_keep_the_forests_probabilities_unless_swapped(monkeypatch):
    # A blurred object: the forest's edge and the image's differ, so the step moves voxels.
    # By default their probabilities stay the forest's (swapping them makes momentum a
    # ratchet); the probe's swap makes them agree with the labels.
    import napari_latentseg.engine.segment.fewshot as fewshot

    vol, ann = _blurred_disk()
    opts = SegmentOptions(boundary_refine=True, keep_connected_regions=False)
    free = ann == 0
    disagree = []
    for swap in (False, True):
        monkeypatch.setattr(fewshot, "SWAP_MOVED", swap)
        res = segment(None, vol, ann, opts, spacing=(3.0, 1.0, 1.0))
        moved = [h["moved"] for h in res.history if h["stage"] == "boundary"]
        assert moved and moved[0] > 0
        top = np.asarray(res.classes)[np.argmax(res.probabilities, axis=0)]
        disagree.append(int(np.count_nonzero(top[free] != res.labels[free])))
    assert disagree[0] == moved[0]  # every moved voxel, and only those
    assert disagree[1] == 0


def test_the_object_box_gives_the_whole_slices_result(monkeypatch):
    """Only the object's in-plane box and its margin are filtered: the same moves as over
    whole slices."""
    from scipy import ndimage as ndi

    from napari_latentseg.engine.segment import boundary

    rng = np.random.default_rng(3)
    for _ in range(60):
        shape = (int(rng.integers(1, 20)), int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        smooth = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2)
        labels = np.ones(shape, np.uint8)
        labels[smooth > rng.uniform(0.05, 0.4)] = 2
        ann = np.where(rng.random(shape) < 0.01, rng.integers(1, 3, shape), 0).astype(np.uint8)
        boxed, whole = labels.copy(), labels.copy()
        n_boxed = boundary.refine_object_boundary(boxed, smooth, ann, 2, 1)
        with monkeypatch.context() as m:
            m.setattr(boundary, "grown_box", lambda mask, margin, axes: (slice(None),) * 3)
            n_whole = boundary.refine_object_boundary(whole, smooth, ann, 2, 1)
        assert n_boxed == n_whole
        np.testing.assert_array_equal(boxed, whole)


def test_the_step_adds_only_voxels_the_forest_supports():
    """With the object's probability and a floor, a voxel joins the object only at that
    probability or more; shrinking is not gated."""
    shape = (3, 64, 64)
    truth = _disk(shape, 12)
    smooth = ndimage.gaussian_filter(truth.astype(np.float32), (0, 1, 1))
    ann = np.zeros(shape, np.uint8)
    # The forest backs the object out to radius 11 only.
    p_obj = np.where(_disk(shape, 11), 0.6, 0.1).astype(np.float32)
    small = np.where(_disk(shape, 10), 2, 1).astype(np.uint8)
    free, gated = small.copy(), small.copy()
    refine_object_boundary(free, smooth, ann, 2, 1)
    refine_object_boundary(gated, smooth, ann, 2, 1, p_object=p_obj, min_p=0.35)
    grown = (gated == 2) & (small != 2)
    assert grown.any() and (p_obj[grown] >= 0.35).all()
    assert ((free == 2) & (p_obj < 0.35)).any()  # without the floor it reaches past
    # No floor (0, the default) or a lower one lets the same growth through.
    for min_p in (0.0, 0.05):
        low = small.copy()
        refine_object_boundary(low, smooth, ann, 2, 1, p_object=p_obj, min_p=min_p)
        np.testing.assert_array_equal(low, free)
    large = np.where(_disk(shape, 14), 2, 1).astype(np.uint8)
    a, b = large.copy(), large.copy()
    refine_object_boundary(a, smooth, ann, 2, 1)
    refine_object_boundary(b, smooth, ann, 2, 1, p_object=p_obj, min_p=0.35)
    np.testing.assert_array_equal(a, b)


def test_edge_min_p_gates_the_steps_growth_in_rounds_and_live_slices():
    """``SegmentOptions.edge_min_p``: no voxel joins the object below it, in a full round
    and in a live slice alike; without it the step grows there."""
    from napari_latentseg.engine.segment import FeatureCache, LiveSegmenter
    from napari_latentseg.runtime.progress import drive

    vol, ann = _blurred_disk()
    cache = FeatureCache()
    # Live slices skip the reach and the connectivity rule (test_segment_prior's helper).
    plain = SegmentOptions(keep_connected_regions=False, object_reach=False)
    steady = SegmentOptions(keep_connected_regions=False, object_reach=False, edge_min_p=0.35)
    free_res = segment(None, vol, ann, plain, cache=cache, spacing=(3.0, 1.0, 1.0))
    res = segment(None, vol, ann, steady, cache=cache, spacing=(3.0, 1.0, 1.0))
    np.testing.assert_allclose(res.probabilities, free_res.probabilities)  # the same forest
    weak = (ann == 0) & (res.probabilities[1] < 0.35)
    assert (free_res.labels[weak] == 2).any()  # the ungated step grows there
    assert not (res.labels[weak] == 2).any()
    live = LiveSegmenter(None, vol, cache=cache, spacing=(3.0, 1.0, 1.0), options=steady)
    drive(live.prepare())
    live.update(ann)
    for z in range(vol.shape[0]):
        np.testing.assert_array_equal(live.predict_slice(z).labels, res.labels[z])
    with pytest.raises(ValueError, match="edge_min_p"):
        SegmentOptions(edge_min_p=1.0)
