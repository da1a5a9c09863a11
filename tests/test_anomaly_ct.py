"""Anomaly scoring on CT: bone and metal left out, nodules found by their contrast, the score
smoothed in mm on a coarser grid (moved from test_anomaly.py, which grew past 500 lines)."""

from __future__ import annotations

import numpy as np


def test_ct_bone_is_not_scored_but_a_dense_nodule_is():
    """On CT, dense structures over 5 mL (bone) get score 0 after calibration; a calcified
    nodule (dense, small) is still scored and found."""
    from napari_latentseg.engine.anomaly import anomaly_map, bone_mask

    rng = np.random.default_rng(0)
    ct = np.full((12, 64, 64), -1000.0, np.float32)  # air around the body
    ct[:, 4:60, 4:60] = rng.normal(40.0, 20.0, (12, 56, 56))  # soft tissue
    ct[:, 14:50, 14:50] = rng.normal(-850.0, 30.0, (12, 36, 36))  # lung
    ct[:, 6:12, 10:54] = rng.normal(900.0, 30.0, (12, 6, 44))  # a rib-like bar: 6.3 mL
    ct[5:7, 40:43, 30:33] = 400.0  # a calcified nodule: 0.04 mL
    spacing = (2.0, 1.0, 1.0)
    bone = bone_mask(ct, spacing)
    assert bone[:, 6:12, 10:54].all() and bone[:, 5, 10:54].all()  # grown by a voxel
    assert not bone[5:7, 40:43, 30:33].any()
    res = anomaly_map(None, ct, modality="CT", method="intensity", spacing=spacing,
                      error_map=False)
    assert (res.score[bone] == 0).all()
    assert res.score[5:7, 40:43, 30:33].mean() > res.threshold
    assert bone_mask(np.full((2, 8, 8), -1000.0, np.float32)).sum() == 0
    # Metal of any size (a skin marker), grown by two voxels: not scored either.
    ct[6, 59, 30] = 2600.0
    metal = bone_mask(ct, spacing)
    assert metal[6, 57:62, 30].all() and metal[4:9, 59, 30].all()
    assert not metal[5:7, 40:43, 30:33].any()


def test_ct_default_finds_a_nodule_by_its_contrast():
    """The CT default (``contrast``) scores a soft-tissue nodule in lung above the lung and
    the chest wall; air inside the body (an airway in the wall) gets score 0; the features
    are in mm: the same scan at half the in-plane voxel size gives the same nodule/lung
    contrast feature at the nodule's centre."""
    from napari_latentseg.engine.anomaly import anomaly_map
    from napari_latentseg.engine.anomaly_features import contrast_features

    rng = np.random.default_rng(1)
    ct = np.full((10, 64, 64), -1000.0, np.float32)
    ct[:, 4:60, 4:60] = rng.normal(40.0, 20.0, (10, 56, 56))  # chest wall
    ct[:, 12:52, 12:52] = rng.normal(-850.0, 30.0, (10, 40, 40))  # lung
    zz, yy, xx = np.indices(ct.shape)
    nodule = ((zz - 5) * 2.0) ** 2 + ((yy - 32) * 1.5) ** 2 + ((xx - 26) * 1.5) ** 2 <= 5.0 ** 2
    ct[nodule] = rng.normal(40.0, 20.0, int(nodule.sum()))
    ct[:, 55:57, 28:34] = -1000.0  # an airway in the chest wall
    spacing = (2.0, 1.5, 1.5)
    res = anomaly_map(None, ct, modality="CT", spacing=spacing, error_map=False)
    assert res.method == "contrast" and res.mode == "self"
    assert res.mask[:, 55:57, 28:34].all() and (res.score[:, 55:57, 28:34] == 0).all()
    lung = np.zeros(ct.shape, bool)
    lung[:, 14:50, 14:50] = True
    lung &= ~nodule
    assert np.median(res.score[nodule]) > np.percentile(res.score[lung], 99)
    assert res.labels[5, 32, 26] > 0  # a candidate at the default threshold
    one = anomaly_map(None, ct[5], modality="CT", spacing=spacing[1:], error_map=False)
    assert one.method == "contrast" and one.score.shape == ct[5].shape  # a 2D slice
    feats = contrast_features(ct[:, :, :], spacing)
    assert len(feats) == 8  # intensity, 3 means, 3 contrasts, the 4 mm blob
    assert feats[7][5, 32, 26] > 0  # the nodule is a bright blob
    fine = np.repeat(np.repeat(ct, 2, axis=1), 2, axis=2)
    feats_fine = contrast_features(fine, (2.0, 0.75, 0.75))
    for a, b in zip(feats[4:], feats_fine[4:], strict=True):  # the contrasts
        assert abs(a[5, 32, 26] - b[5, 64, 52]) < 0.1 * abs(a[5, 32, 26]) + 5.0


def test_blob_column_sees_blobs_not_edges():
    """The blob column is positive on a bright disk, negative on a dark one, zero on a
    straight edge; normative statistics stored without blob columns (before session 20)
    still score a scan, with their own seven columns."""
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative
    from napari_latentseg.engine.anomaly_features import _blob

    yy, xx = np.indices((64, 96))
    img = np.zeros((1, 64, 96), np.float32)
    img[0, :, 64:] = 100.0  # an edge at x = 64
    img[0][(yy - 32) ** 2 + (xx - 16) ** 2 <= 16] = 100.0  # bright disk
    img[0][(yy - 32) ** 2 + (xx - 80) ** 2 <= 16] = 0.0  # dark disk on the bright side
    b = _blob(img, np.array([0.0, 3.0, 3.0]), np.ones(3))
    assert b[0, 32, 16] > 5 and b[0, 32, 80] < -5
    assert abs(b[0, 5, 64]) < 1e-3 and abs(b[0, 5, 63]) < 1e-3  # along the edge, far from both
    rng = np.random.default_rng(0)
    ct = np.full((6, 48, 48), -1000.0, np.float32)
    ct[:, 4:44, 4:44] = rng.normal(40.0, 20.0, (6, 40, 40))  # chest wall
    ct[:, 10:38, 10:38] = rng.normal(-850.0, 30.0, (6, 28, 28))  # lung
    ref = fit_normative(None, [ct], method="contrast", spacing=(2.0, 1.5, 1.5),
                        modalities=["CT"])
    assert ref["blob_mm"] == [4.0] and len(ref["density"]["mu"]) == 8
    assert ref["smoothing_mm"] == 2.5
    import napari_latentseg.engine.anomaly_features as af

    saved = af.CONTRAST_BLOB_MM
    try:  # a density of seven columns, as stored before the blob column
        af.CONTRAST_BLOB_MM = ()
        seven = fit_normative(None, [ct], method="contrast", spacing=(2.0, 1.5, 1.5),
                              modalities=["CT"])
    finally:
        af.CONTRAST_BLOB_MM = saved
    assert "blob_mm" in seven and seven["blob_mm"] == []
    del seven["blob_mm"], seven["smoothing_mm"]  # as stored before sessions 20 and 21
    assert len(seven["density"]["mu"]) == 7
    res = anomaly_map(None, ct, modality="CT", reference=seven, spacing=(2.0, 1.5, 1.5),
                      error_map=False)
    assert res.mode == "normative" and np.isfinite(res.score).all()


def test_score_smoothing_in_mm_follows_the_voxel_size():
    """The contrast score is smoothed by a width in mm (the same physical smoothing at every
    voxel size); without a voxel size, or for statistics stored before, by 1 voxel."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly_masks import smooth as _smooth

    raw = np.zeros((3, 33, 33), np.float32)
    raw[1, 16, 16] = 1.0
    np.testing.assert_allclose(_smooth(raw, 2, 1.0, 3.0, (5.0, 1.5, 1.5)),
                               ndimage.gaussian_filter(raw, (0, 2, 2)), atol=1e-7)
    np.testing.assert_allclose(_smooth(raw, 3, 1.0, 3.0, (5.0, 1.5, 0.75)),
                               ndimage.gaussian_filter(raw, (0.6, 2, 4)), atol=1e-7)
    np.testing.assert_allclose(_smooth(raw, 2, 1.0), ndimage.gaussian_filter(raw, (0, 1, 1)))
    np.testing.assert_allclose(_smooth(raw, 2, 1.0, 3.0, None),
                               ndimage.gaussian_filter(raw, (0, 1, 1)))
    one = raw[1:2]  # a 2D scan's one-slice volume with its in-plane spacing
    np.testing.assert_allclose(_smooth(one, 2, 1.0, 3.0, (1.5, 1.5)),
                               ndimage.gaussian_filter(one, (0, 2, 2)), atol=1e-7)


def test_fine_ct_is_scored_on_a_coarser_grid():
    """A CT of 0.5 mm pixels is scored on a grid of about 2.4 mm (block means) and its score
    brought back to the scan's grid: the nodule is found there, the airway is not scored;
    normative statistics record the grid, and those stored without one (before session 21)
    score on the scan's own grid."""
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative
    from napari_latentseg.engine.anomaly_masks import grid_factor, to_coarse, to_fine

    ramp = np.tile(np.arange(23, dtype=np.float32), (2, 17, 1))  # x = 0..22, 23 % 5 != 0
    coarse, sp = to_coarse(ramp, (3.0, 0.5, 0.5), 5)
    assert coarse.shape == (2, 4, 5) and sp == (3.0, 2.5, 2.5)
    assert coarse[0, 0, 1] == 7.0  # the mean of pixels 5..9
    back = to_fine(coarse, ramp.shape, 5)
    assert back.shape == ramp.shape and np.allclose(back[:, :, 4:18], ramp[:, :, 4:18])
    assert grid_factor((10, 192, 192), (2.0, 0.5, 0.5), 2.4) == 5
    assert grid_factor((10, 64, 64), (2.0, 0.5, 0.5), 2.4) == 2  # 32 pixels a side at least
    assert grid_factor((10, 192, 192), None, 2.4) == grid_factor((9, 9), (1, 1), None) == 1

    rng = np.random.default_rng(1)
    ct = np.full((10, 64, 64), -1000.0, np.float32)
    ct[:, 4:60, 4:60] = rng.normal(40.0, 20.0, (10, 56, 56))
    ct[:, 12:52, 12:52] = rng.normal(-850.0, 30.0, (10, 40, 40))
    zz, yy, xx = np.indices(ct.shape)
    nodule = ((zz - 5) * 2.0) ** 2 + ((yy - 32) * 1.5) ** 2 + ((xx - 26) * 1.5) ** 2 <= 5.0 ** 2
    ct[nodule] = rng.normal(40.0, 20.0, int(nodule.sum()))
    ct[:, 55:57, 28:34] = -1000.0  # an airway in the chest wall
    fine = np.repeat(np.repeat(ct, 3, axis=1), 3, axis=2)  # (10, 192, 192) at 0.5 mm
    nod = np.repeat(np.repeat(nodule, 3, axis=1), 3, axis=2)
    lung = np.zeros(fine.shape, bool)
    lung[:, 42:150, 42:150] = True
    lung &= ~nod
    spacing = (2.0, 0.5, 0.5)
    # A toy scan: the 5 mm nodule is two pixels of the grid, its flagged core 0.02 mL.
    res = anomaly_map(None, fine, modality="CT", spacing=spacing, error_map=False,
                      min_volume_ml=0.01)
    assert res.score.shape == res.mask.shape == res.labels.shape == fine.shape
    assert np.median(res.score[nod]) > np.percentile(res.score[lung], 99)
    assert res.labels[5, 97, 79] == res.candidates[0]["id"] > 0
    assert (res.score[:, 166:170, 85:101] == 0).all()  # the airway
    ref = fit_normative(None, [fine], method="contrast", spacing=spacing, modalities=["CT"])
    assert ref["grid_mm"] == 2.4
    new = anomaly_map(None, fine, modality="CT", spacing=spacing, reference=ref,
                      error_map=False, min_volume_ml=0.01)
    assert new.mode == "normative" and new.labels[5, 97, 79] > 0
    del ref["grid_mm"]
    old = anomaly_map(None, fine, modality="CT", spacing=spacing, reference=ref,
                      error_map=False)
    assert old.score.shape == fine.shape and np.isfinite(old.score).all()


def test_a_scan_with_almost_no_body_is_a_clear_error():
    """A tiny binary image (nibabel's ``standard.nii.gz`` is one) leaves the density too few
    body voxels to fit: a ValueError that says so, not scikit-learn's."""
    import pytest

    from napari_latentseg.engine.anomaly import anomaly_map

    v = np.zeros((4, 5, 7), np.float32)
    v[1:3, 1:4, 2:5] = 255.0
    with pytest.raises(ValueError, match="voxels inside the body"):
        anomaly_map(None, v, method="intensity")
