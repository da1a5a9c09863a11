"""Live slice predictions: the same forest as a full round, on one slice, from cached features."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.data.phantom import annotation_from_labels
from napari_latentseg.engine.segment import FeatureCache, LiveSegmenter, SegmentOptions, segment
from napari_latentseg.runtime.progress import drive

ANNOTATED = [2, 6, 9]


@pytest.fixture(scope="module")
def annotations(small_phantom):
    return annotation_from_labels(small_phantom.labels, ANNOTATED)


def test_slice_equals_the_full_round(tiny_model, small_phantom, annotations):
    cache = FeatureCache()
    live = LiveSegmenter(tiny_model, small_phantom.image, modality="MR", cache=cache)
    assert not live.ready
    drive(live.prepare())
    assert live.ready
    assert live.update(annotations) > 0
    full = segment(tiny_model, small_phantom.image, annotations, modality="MR", cache=cache,
                   keep_connected_regions=False)
    assert full.cache_hit  # the round reused the live segmenter's features
    for z in (0, 4, 6):
        pred = live.predict_slice(z)
        np.testing.assert_allclose(pred.probabilities, full.probabilities[:, z], atol=1e-6)
        np.testing.assert_array_equal(pred.labels, full.labels[z])
        assert pred.classes == full.classes
    live.close()


def test_painted_voxels_keep_their_label_and_strokes_change_the_slice(
        tiny_model, small_phantom, annotations):
    live = LiveSegmenter(tiny_model, small_phantom.image, modality="MR")
    drive(live.prepare())
    live.update(annotations)
    z = 4
    before = live.predict_slice(z).labels
    truth = small_phantom.labels[z]
    wrong = np.argwhere(before != truth)
    assert len(wrong), "the tiny model is perfect on this slice: pick another"
    y, x = wrong[0]
    stroke = annotations.copy()
    stroke[z, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = truth[y, x]
    live.update(stroke)
    after = live.predict_slice(z)
    painted = stroke[z] > 0
    np.testing.assert_array_equal(after.labels[painted], stroke[z][painted])
    assert after.labels[y, x] == truth[y, x]
    np.testing.assert_allclose(after.probabilities.sum(0), 1.0, atol=1e-5)


def test_bad_use_is_refused(tiny_model, small_phantom, annotations):
    live = LiveSegmenter(tiny_model, small_phantom.image)
    with pytest.raises(RuntimeError, match="update"):
        live.predict_slice(0)
    with pytest.raises(ValueError, match="only class"):
        live.update(np.where(annotations > 0, 1, 0))
    live.update(annotations)
    with pytest.raises(IndexError):
        live.predict_slice(99)
    with pytest.raises(ValueError, match="3D"):
        LiveSegmenter(tiny_model, small_phantom.image[0])


def test_anchors_apply_the_connect_to_stroke_rule_on_the_slice(tiny_model, small_phantom,
                                                                annotations):
    from scipy import ndimage as ndi

    # The rule alone: the edge step (test_segment_prior) would move the kept rim.
    live = LiveSegmenter(tiny_model, small_phantom.image, modality="MR",
                         options=SegmentOptions(boundary_refine=False))
    two = np.where(annotations == 1, 1, np.where(annotations == 6, 6, 0))  # object vs rest
    live.update(two)
    z = 4  # not annotated
    free = live.predict_slice(z)
    background = min(free.classes)
    anchors = np.full(free.labels.shape, background, dtype=free.labels.dtype)
    ruled = live.predict_slice(z, anchors)
    # Without a stroke or an anchor of its class on the slice, no region of another class stays.
    assert set(np.unique(ruled.labels)) == {background}
    # Anchored regions stay, whatever the rest.
    anchors = free.labels.copy()
    np.testing.assert_array_equal(live.predict_slice(z, anchors).labels, free.labels)
    # A region touching an anchor of its class is kept whole.
    cls = next(c for c in free.classes if c != background and (free.labels == c).any())
    comp, _ = ndi.label(free.labels == cls)
    first = comp == comp[tuple(np.argwhere(comp > 0)[0])]
    anchors = np.full(free.labels.shape, background, dtype=free.labels.dtype)
    anchors[tuple(np.argwhere(first)[0])] = cls
    kept = live.predict_slice(z, anchors).labels
    assert (kept[first] == cls).all()


def test_live_slices_take_the_columns_of_full_rounds(tiny_model, small_phantom, annotations):
    """With ``vae_features="auto"`` an object-vs-background update reads the ilastik set, an
    update with three or more classes the VAE's columns too, as full rounds do."""
    vol = small_phantom.image
    two = np.where(annotations == 1, 1, np.where(annotations == 6, 2, 0)).astype(np.uint8)
    cache = FeatureCache()
    live = LiveSegmenter(tiny_model, vol, modality="MR", cache=cache)
    drive(live.prepare())
    for ann in (two, annotations, two):
        live.update(ann)
        full = segment(tiny_model, vol, ann, modality="MR", cache=cache,
                       keep_connected_regions=False, object_reach=False)
        assert full.cache_hit  # the columns the live segmenter stored
        for z in (0, 6):
            pred = live.predict_slice(z)
            np.testing.assert_allclose(pred.probabilities, full.probabilities[:, z], atol=1e-6)
            np.testing.assert_array_equal(pred.labels, full.labels[z])
    live.close()
