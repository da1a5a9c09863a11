"""Painted object voxels that look like the background kept out of the forest
(engine/segment/unclear.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_latentseg.engine.segment import FeatureCache, SegmentOptions, segment
from napari_latentseg.engine.segment.unclear import unclear_object_voxels


def _disk(shape, r, cy=32, cx=32):
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    return np.broadcast_to((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, shape).copy()


def _whole(img):
    return lambda box: img[box]


def test_painted_object_voxels_on_the_background_side_are_unclear_up_to_the_share():
    shape = (5, 64, 64)
    obj = _disk(shape, 12)
    img = obj.astype(np.float32)  # object 1, background 0
    last = np.where(obj, 2, 1).astype(np.uint8)
    ann = np.zeros(shape, np.uint8)
    ann[2, 28:37, 28:37] = 2  # 81 voxels inside the object
    ann[2, 32, 45:48] = 2  # 3 voxels painted as object on the background, beside it
    ann[2, 32, 58] = 2  # far from the object: no object in its window, not judged
    out = unclear_object_voxels(ann, last, 2, _whole(img), 0.25)
    assert out.sum() == 3 and out[2, 32, 45:48].all()
    ann[2, 32, 58] = 0
    # A faint stripe: the least object-like first, at most the share of the painted object.
    img2 = img.copy()
    img2[2, 24:41, 45:50] = np.linspace(0.05, 0.4, 17)[:, None]
    ann[2, 24:41, 45:50] = 2  # 85 faint voxels, with 81 clear ones: 166 painted
    out = unclear_object_voxels(ann, last, 2, _whole(img2), 0.25)
    assert out.sum() == int(0.25 * (ann == 2).sum()) == 41
    left = img2[out]
    kept = img2[(ann == 2) & ~out & ~obj]
    assert left.mean() < kept.mean()  # the least object-like (by local means) went first
    assert unclear_object_voxels(ann, last, 2, _whole(img2), 0.0) is None
    clear = np.where(obj & (ann > 0), ann, 0).astype(np.uint8)
    assert unclear_object_voxels(clear, last, 2, _whole(img), 0.25) is None


def _faint_stroke_scene():
    """A bright object, a first round, then an object stroke on its faint blurred rim."""
    rng = np.random.default_rng(3)
    truth = _disk((4, 64, 64), 12)
    vol = ndimage.gaussian_filter(truth.astype(np.float32) * 2.0, (0, 2.0, 2.0))
    vol += rng.normal(0, 0.1, vol.shape).astype(np.float32)
    ann = np.zeros(vol.shape, np.uint8)
    ann[1:3, 29:36, 29:36] = 2
    ann[1:3, 2:8, 2:8] = 1
    more = ann.copy()
    more[1:3, 31:34, 44:48] = 2  # past the rim (radius 12 ends at x = 44): faint voxels
    return vol, ann, more


def test_a_continued_round_leaves_unclear_strokes_out_and_keeps_their_labels():
    vol, ann, more = _faint_stroke_scene()
    cache = FeatureCache()
    opts = SegmentOptions(keep_connected_regions=False)
    first = segment(None, vol, ann, opts, cache=cache)
    res = segment(None, vol, more, opts, cache=cache, previous=first)
    left = [h for h in res.history if h.get("stage") == "unclear strokes"]
    assert left and 0 < left[0]["left_out"] <= int(0.25 * (more == 2).sum())
    assert any("did not train the classifier" in n for n in res.notes)
    forest = next(h for h in res.history if h.get("stage") == "forest")
    assert forest["voxels"] == (more > 0).sum() - left[0]["left_out"]
    assert (res.labels[more == 2] == 2).all()  # painted voxels keep their labels
    # Off, or without a round to continue: every painted voxel trains.
    for r in (segment(None, vol, more, SegmentOptions(keep_connected_regions=False,
                                                       unclear_share=0.0),
                      cache=cache, previous=first),
              segment(None, vol, more, opts, cache=cache)):
        assert not [h for h in r.history if h.get("stage") == "unclear strokes"]
        assert next(h for h in r.history if h.get("stage") == "forest")["voxels"] == \
            (more > 0).sum()
    with pytest.raises(ValueError, match="unclear_share"):
        SegmentOptions(unclear_share=1.0)


def test_a_live_slice_reads_the_last_round_as_the_full_round_does():
    from napari_latentseg.engine.segment import LiveSegmenter
    from napari_latentseg.runtime.progress import drive

    vol, ann, more = _faint_stroke_scene()
    cache = FeatureCache()
    # Live slices skip the reach and the connectivity rule (test_segment_prior's helper).
    opts = SegmentOptions(keep_connected_regions=False, momentum=0.0, object_reach=False)
    first = segment(None, vol, ann, opts, cache=cache)
    res = segment(None, vol, more, opts, cache=cache, previous=first)
    live = LiveSegmenter(None, vol, cache=cache, options=opts)
    drive(live.prepare())
    live.update(more, last_round=first)
    for z in range(vol.shape[0]):
        np.testing.assert_array_equal(live.predict_slice(z).labels, res.labels[z])
