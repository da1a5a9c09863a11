"""Locked classes: a later segmentation round never changes their voxels (headless)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.pipeline import Scan, keep_locked, segment_job
from napari_latentseg.runtime.progress import drive


def test_keep_locked_restores_and_excludes():
    labels = np.array([[1, 2, 3, 3]], np.uint8)
    previous = np.array([[3, 2, 1, 3]], np.uint8)
    # classes 1, 2, 3: where the new round says 3 outside the locked region, the best of 1/2
    probs = np.array([[[0.1, 0.2, 0.3, 0.1]],
                      [[0.2, 0.7, 0.1, 0.1]],
                      [[0.7, 0.1, 0.6, 0.8]]], np.float32)
    unc = np.full((1, 4), 0.5, np.float32)
    out, out_unc = keep_locked(labels, probs, [1, 2, 3], previous, [3], unc)
    np.testing.assert_array_equal(out, [[3, 2, 1, 3]])  # voxel 2: 3 -> class 1 (0.3 > 0.1)
    np.testing.assert_array_equal(out_unc, [[0.0, 0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(labels, [[1, 2, 3, 3]])  # inputs untouched
    # every predicted class locked: intruders become 0 (not annotated)
    out, _ = keep_locked(labels, probs, [1, 2, 3], previous, [1, 2, 3])
    np.testing.assert_array_equal(out, previous)
    with pytest.raises(ValueError, match="shape"):
        keep_locked(labels, probs, [1, 2, 3], previous[:, :2], [3])


def test_segment_job_keeps_locked_classes(small_phantom, tiny_model):
    image, truth = small_phantom.image, small_phantom.labels
    scan = Scan(image, {}, "MR", "phantom")
    classes = [int(c) for c in np.unique(truth) if c > 0]
    ann = np.zeros_like(truth)
    for z in (3, 8):
        ann[z] = truth[z]
    from napari_latentseg.engine.segment import FeatureCache

    cache = FeatureCache()  # features computed once for the three rounds
    first = drive(segment_job(tiny_model, scan, ann, cache=cache))
    locked = classes[1]
    # The user corrected the previous result: the locked class is exactly what they drew.
    previous = first.outputs["labels"].data.copy()
    previous[previous == locked] = classes[0]
    previous[5, 10:20, 10:20] = locked
    region = previous == locked

    ann2 = ann.copy()
    ann2[6] = truth[6]  # a new painted slice, which also paints the locked class elsewhere
    second = drive(segment_job(tiny_model, scan, ann2, locked=[locked], previous=previous,
                                     cache=cache))
    labels = second.outputs["labels"].data
    np.testing.assert_array_equal(labels == locked, region)  # same voxels, no more, no fewer
    assert second.result.labels is labels
    assert float(second.outputs["uncertainty"].data[region].max()) == 0.0
    assert any("Locked" in n for n in second.notes)
    # without the lock the class does grow into the new slice
    free = drive(segment_job(tiny_model, scan, ann2, cache=cache)).outputs["labels"].data
    assert ((free == locked) & ~region).any()

    with pytest.raises(ValueError, match="previous segmentation"):
        drive(segment_job(tiny_model, scan, ann, locked=[locked]))
