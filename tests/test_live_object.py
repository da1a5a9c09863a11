"""Live slices with an object class (engine/segment/objectlive.py): the slice the full round
with ``SegmentOptions.object_class`` gives, each part continuing its own last round."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.engine.segment import (
    FeatureCache,
    LiveSegmenter,
    ObjectLiveSegmenter,
    SegmentOptions,
    live_segmenter,
    segment,
)
from napari_latentseg.runtime.progress import drive

# The full round's volume-wide rules a slice cannot apply (as tests/test_live.py).
VOLUME_ONLY = dict(keep_connected_regions=False, object_reach=False)


@pytest.fixture(scope="module")
def three(small_phantom):
    """The air (1), white matter (2, the object) and the rest of the head (3), one disk of
    radius 3 per class on the class's middle slice."""
    t = small_phantom.labels
    truth = np.where(t == 1, 1, np.where(t == 6, 2, 3)).astype(np.int64)
    ann = np.zeros(truth.shape, np.uint8)
    yy, xx = np.mgrid[: truth.shape[1], : truth.shape[2]]
    for c in (1, 2, 3):
        z = int(np.median(np.flatnonzero((truth == c).any((1, 2)))))
        ys, xs = np.nonzero(truth[z] == c)
        i = len(ys) // 2
        ann[z][((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 <= 9) & (truth[z] == c)] = c
    return truth, ann


def _live(small_phantom, cache, obj=2):
    live = live_segmenter(None, small_phantom.image, modality="MR", cache=cache,
                          spacing=small_phantom.spacing,
                          options=SegmentOptions(object_class=obj))
    drive(live.prepare())
    return live


def test_the_slice_is_the_full_rounds_slice(small_phantom, three):
    truth, ann = three
    img, sp = small_phantom.image, small_phantom.spacing
    cache = FeatureCache()
    live = _live(small_phantom, cache)
    assert isinstance(live, ObjectLiveSegmenter) and live.ready and not live.fitted
    assert live.update(ann) > 0 and live.classes == [1, 2, 3]
    full = segment(None, img, ann, SegmentOptions(object_class=2), spacing=sp, cache=cache,
                   **VOLUME_ONLY)
    assert full.cache_hit and full.object_parts is not None
    for z in range(0, img.shape[0], 3):
        pred = live.predict_slice(z)
        np.testing.assert_array_equal(pred.labels, full.labels[z])
        np.testing.assert_allclose(pred.probabilities, full.probabilities[:, z], atol=1e-6)
        assert pred.classes == [1, 2, 3] and pred.index == z
    # The object's voxels are the two-class part's, not the round of all classes'.
    z = int(np.argmax((full.labels == 2).sum((1, 2))))
    pred = live.predict_slice(z)
    multi = live.multi.predict_slice(z)
    assert np.any((pred.labels == 2) != (multi.labels == 2))
    np.testing.assert_array_equal(pred.labels == 2, full.object_parts[0].labels[z] == 2)
    live.close()


def test_each_part_continues_its_own_last_round(small_phantom, three, monkeypatch):
    truth, ann = three
    img, sp = small_phantom.image, small_phantom.spacing
    cache = FeatureCache()
    opts = SegmentOptions(object_class=2)
    first = segment(None, img, ann, opts, spacing=sp, cache=cache, **VOLUME_ONLY)
    more = ann.copy()
    z = int(np.flatnonzero((truth == 3).any((1, 2)))[2])
    more[z][truth[z] == 3] = 3  # a body correction on another slice
    seen = []  # (classes of the part, the previous slice it got)
    predict = LiveSegmenter.predict_slice
    monkeypatch.setattr(LiveSegmenter, "predict_slice", lambda self, i, anchors=None,
                        previous=None, grown=None: seen.append((self.classes, previous))
                        or predict(self, i, anchors, previous, grown))
    live = _live(small_phantom, cache)
    live.update(more, last_round=first)
    # The combined last round's probabilities are not what either part averages in.
    pred = live.predict_slice(z, previous=np.zeros((3,) + img.shape[1:], np.float32))
    r2, rm = first.object_parts
    assert [c for c, _ in seen] == [[1, 2], [1, 2, 3]]
    np.testing.assert_array_equal(seen[0][1], r2.probabilities[:, z])
    np.testing.assert_array_equal(seen[1][1], rm.probabilities[:, z])
    second = segment(None, img, more, opts, spacing=sp, cache=cache, previous=first,
                     **VOLUME_ONLY)
    np.testing.assert_array_equal(pred.labels, second.labels[z])
    np.testing.assert_allclose(pred.probabilities, second.probabilities[:, z], atol=1e-6)
    painted = more[z] > 0
    np.testing.assert_array_equal(pred.labels[painted], more[z][painted])
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    # A plain last round (no parts) continues the part of all classes only.
    seen.clear()
    plain = segment(None, img, ann, spacing=sp, cache=cache)
    live.update(more, last_round=plain)
    live.predict_slice(z)
    assert seen[0][1] is None
    np.testing.assert_array_equal(seen[1][1], plain.probabilities[:, z])


def test_without_the_object_painted_it_is_the_plain_live_slice(small_phantom, three):
    truth, ann = three
    cache = FeatureCache()
    plain = LiveSegmenter(None, small_phantom.image, modality="MR", cache=cache,
                          spacing=small_phantom.spacing)
    plain.update(ann)
    for obj, strokes in ((5, ann), (2, np.where(ann == 3, 0, ann))):  # not painted; 2 classes
        live = _live(small_phantom, cache, obj)
        live.update(strokes)
        if obj == 2:
            plain.update(strokes)
        np.testing.assert_array_equal(live.predict_slice(4).labels,
                                      plain.predict_slice(4).labels)
    assert isinstance(live_segmenter(None, small_phantom.image), LiveSegmenter)
    with pytest.raises(ValueError, match="object_class"):
        ObjectLiveSegmenter(None, small_phantom.image, options=SegmentOptions())
    with pytest.raises(RuntimeError, match="update"):
        _live(small_phantom, cache).predict_slice(0)
