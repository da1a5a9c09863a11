"""Coarse-to-fine forest prediction: the levels, what is predicted again, and the result."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from napari_latentseg.engine.segment import coarse as F


class _Counting:
    """A fitted forest that counts the rows it is asked about."""

    def __init__(self, forest) -> None:
        self.forest, self.rows = forest, 0
        self.classes_ = forest.classes_

    def predict_proba(self, x):
        self.rows += len(x)
        return self.forest.predict_proba(x)


def _scene(b: int = 1, h: int = 256, w: int = 256):
    """Feature rows of discs of three classes on a smooth background, and a fitted forest."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    lab = np.zeros((b, h, w), np.int64)
    lab[:, (yy - 80) ** 2 + (xx - 90) ** 2 < 40**2] = 1
    lab[:, (yy - 170) ** 2 + (xx - 170) ** 2 < 30**2] = 2
    img = lab + 0.15 * rng.normal(size=lab.shape)
    feats = np.stack([img, np.broadcast_to(yy / h, img.shape),
                      np.broadcast_to(xx / w, img.shape)], -1).astype(np.float32)
    rows = feats.reshape(-1, 3)
    idx = rng.choice(len(rows), 4000, replace=False)
    clf = RandomForestClassifier(30, max_depth=8, random_state=0).fit(rows[idx],
                                                                      lab.reshape(-1)[idx])
    return rows, lab, clf


def test_stride_levels():
    assert F._stride(512, 512, 4) == 4
    assert F._stride(256, 256, 4) == 4
    assert F._stride(128, 128, 4) == 4  # a 32 x 32 coarse grid is enough
    assert F._stride(120, 45, 4) == 2  # breast1's slices: a 60 x 22 grid
    assert F._stride(60, 60, 4) == 1  # too small to share anything
    assert F._stride(512, 512, 2) == 2
    assert F._stride(512, 512, 1) == 1


def test_stride_one_is_every_voxel():
    rows, lab, clf = _scene(1)
    counted = _Counting(clf)
    p = F.forest_predict(counted, rows, lab.shape, 3, max_stride=1)
    assert counted.rows == lab.size
    np.testing.assert_allclose(p.reshape(3, -1).T, clf.predict_proba(rows), atol=1e-6)


@pytest.mark.parametrize("max_stride", [2, 4])
def test_coarse_to_fine_agrees_with_full_at_a_fraction_of_the_rows(max_stride):
    rows, lab, clf = _scene()
    full = F.forest_predict(clf, rows, lab.shape, 3, max_stride=1)
    counted = _Counting(clf)
    p = F.forest_predict(counted, rows, lab.shape, 3, max_stride=max_stride)
    assert p.shape == full.shape == (3,) + lab.shape
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    # Boundaries and unsure voxels are predicted at full resolution: the labels agree.
    assert (p.argmax(0) == full.argmax(0)).mean() > 0.995
    # No voxel is predicted twice, and the uniform interiors are not predicted at all.
    assert counted.rows < (0.5 if max_stride == 4 else 0.6) * lab.size
    # The coarsest grid's voxels keep their exact probability.
    s = max_stride
    np.testing.assert_allclose(p[:, :, ::s, ::s], full[:, :, ::s, ::s], atol=1e-6)


def test_refine_threshold_predicts_unsure_voxels_again(monkeypatch):
    monkeypatch.setattr(F, "REFINE_UNSURE_MAX_CLASSES", 3)
    rows, lab, clf = _scene()
    few, many = _Counting(clf), _Counting(clf)
    F.forest_predict(few, rows, lab.shape, 3, sure=0.0, max_stride=4)
    F.forest_predict(many, rows, lab.shape, 3, sure=1.01, max_stride=4)
    # sure > 1: every coarse voxel is unsure, so every voxel is predicted exactly once.
    assert many.rows == lab.size
    assert few.rows < many.rows


def test_odd_slice_sizes_keep_their_shape():
    rows, lab, clf = _scene(1, 259, 261)
    full = F.forest_predict(clf, rows, lab.shape, 3, max_stride=1)
    p = F.forest_predict(clf, rows, lab.shape, 3, max_stride=4)
    assert p.shape == (3, 1, 259, 261)
    np.testing.assert_allclose(p[:, :, ::4, ::4], full[:, :, ::4, ::4], atol=1e-6)
    assert (p.argmax(0) == full.argmax(0)).mean() > 0.995


def test_float16_rows_predict_as_their_float32_values():
    rows, lab, clf = _scene(1, 128, 128)
    half = rows.astype(np.float16)
    p16 = F.forest_predict(clf, half, lab.shape, 3)
    p32 = F.forest_predict(clf, half.astype(np.float32), lab.shape, 3)
    np.testing.assert_array_equal(p16, p32)


def test_upsampling_is_bilinear_between_coarse_voxels():
    rng = np.random.default_rng(0)
    p = rng.random((2, 1, 3, 4)).astype(np.float32)
    up = F._upsample2(p, 6, 7)  # an odd width: the last column is cropped
    assert up.shape == (2, 1, 6, 7)
    np.testing.assert_array_equal(up[..., ::2, ::2], p[..., :, :4])
    np.testing.assert_allclose(up[..., 1, 0], (p[..., 0, 0] + p[..., 1, 0]) / 2)
    np.testing.assert_allclose(up[..., 0, 1], (p[..., 0, 0] + p[..., 0, 1]) / 2)
    np.testing.assert_allclose(up[..., 3, 5], p[..., 1:3, 2:4].mean((-1, -2)), rtol=1e-6)
    np.testing.assert_array_equal(up[..., 5, 0], p[..., 2, 0])  # the edge repeats


def test_shared_voxels_keep_the_labels_of_nearest_sharing(monkeypatch):
    rows, lab, clf = _scene()
    bilinear = F.forest_predict(clf, rows, lab.shape, 3)

    def nearest(p, hf, wf):
        return p.repeat(2, axis=-2).repeat(2, axis=-1)[..., :hf, :wf]

    monkeypatch.setattr(F, "_upsample2", nearest)
    blocks = F.forest_predict(clf, rows, lab.shape, 3)
    np.testing.assert_array_equal(bilinear.argmax(0), blocks.argmax(0))
    # The probabilities are closer to the full prediction's: no coarse blocks in the map.
    full = F.forest_predict(clf, rows, lab.shape, 3, max_stride=1)
    assert np.abs(bilinear - full).mean() < np.abs(blocks - full).mean()


def test_unsure_is_the_runner_up_margin_with_three_classes():
    # Voxels: a clear winner at 0.75 (lead 0.6), a tie, a winner at 0.85.
    p = np.array([[0.75, 0.45, 0.85], [0.15, 0.45, 0.10], [0.10, 0.10, 0.05]], np.float32)
    np.testing.assert_array_equal(F._unsure(p, 0.8), [False, True, False])
    # Two classes: the lead is 2 p - 1, the same rule as the top probability below 0.8.
    two = np.array([[0.79, 0.81, 0.2], [0.21, 0.19, 0.8]], np.float32)
    np.testing.assert_array_equal(F._unsure(two, 0.8), [True, False, False])


def test_three_classes_refine_at_boundaries_only():
    # By default (REFINE_UNSURE_MAX_CLASSES = 2) "unsure" does not add rows with three classes.
    rows, lab, clf = _scene()
    few, many = _Counting(clf), _Counting(clf)
    F.forest_predict(few, rows, lab.shape, 3, sure=0.0, max_stride=4)
    F.forest_predict(many, rows, lab.shape, 3, sure=1.01, max_stride=4)
    assert few.rows == many.rows < lab.size
