"""Anomaly maps: implanted blocks score above tissue, calibration, components, storage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def _implant(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bright 2 x 6 x 6 block inside white matter (label 6)."""
    img = image.astype(np.float32).copy()
    truth = np.zeros(img.shape, bool)
    z, y, x = np.argwhere(labels == 6)[len(np.argwhere(labels == 6)) // 2]
    truth[z : z + 2, y - 3 : y + 3, x - 3 : x + 3] = True
    img[truth] = 1.6 * float(np.percentile(image, 99))
    return img, truth


@pytest.mark.parametrize("method", ["features", "knn", "intensity"])
def test_implanted_block_scores_above_tissue(tiny_model, small_phantom, method):
    from napari_latentseg.engine.anomaly import anomaly_map

    img, truth = _implant(small_phantom.image, small_phantom.labels)
    res = anomaly_map(tiny_model, img, modality="MR", method=method,
                      spacing=small_phantom.spacing)
    tissue = np.isin(small_phantom.labels, (5, 6)) & ~truth
    assert res.score.dtype == np.float32 and res.score.shape == img.shape
    assert res.method == method and res.mode == "self"
    assert np.median(res.score[truth]) > np.percentile(res.score[tissue], 99)
    assert res.error is not None and res.error.shape == img.shape


def test_normative_mode_and_storage(tiny_model, small_phantom, tmp_path):
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import DEFAULT_METHOD, anomaly_map, fit_normative
    from napari_latentseg.models.checkpoint import load_model, save_model

    refs = [make_phantom((12, 40, 40), spacing=(4.0, 4.0, 4.0), seed=s).image for s in (4, 5)]
    stats = fit_normative(tiny_model, refs, modalities=["MR", "MR"])
    assert stats["method"] == DEFAULT_METHOD and stats["n_scans"] == 2
    # A copy: the session fixture is shared with other tests.
    model = dataclasses.replace(tiny_model, anomaly={**tiny_model.anomaly, "normative": stats})
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.anomaly["normative"]["calibration"] == stats["calibration"]
    img, truth = _implant(small_phantom.image, small_phantom.labels)
    res = anomaly_map(loaded, img, modality="MR", reference="model")
    assert res.mode == "normative" and res.method == DEFAULT_METHOD
    normal = res.score[res.mask & ~truth]
    assert res.score[truth].mean() > normal.mean() + 0.2
    assert res.score[truth].max() > np.percentile(normal, 90)
    with pytest.raises(ValueError, match="reference"):
        anomaly_map(tiny_model, img, reference="nope")


def test_calibration_gives_requested_fpr_on_fit_data(rng):
    from napari_latentseg.engine.anomaly import _calibrated, _threshold, calibrate

    fit_scores = rng.gamma(2.0, 1.0, size=200_000)
    cal = calibrate(fit_scores)
    score = _calibrated(fit_scores, cal)
    assert np.all(np.diff(score[np.argsort(fit_scores)]) >= -1e-6)  # monotone
    for fpr in (1e-2, 1e-3):
        # Normative: the fit data's own quantile, so the rate is exact on them.
        t = _threshold(cal, fpr, "normative")
        assert abs((score > t).mean() - fpr) < 0.15 * fpr
        # Self: the exponential tail fitted between the 90th and 98th percentiles.
        t = _threshold(cal, fpr, "self")
        assert 0.3 * fpr < (score > t).mean() < 2.0 * fpr
    # Self mode with 1 % of lesion voxels in the fit data: the tail model (90th-98th
    # percentiles) is moved a little, the lesion stays far above the threshold and normal
    # voxels stay under the requested rate.
    dirty = np.concatenate([fit_scores, np.full(2000, 50.0)])
    cal2 = calibrate(dirty)
    score2 = _calibrated(dirty, cal2)
    t2 = _threshold(cal2, 1e-3, "self")
    assert np.all(score2[-2000:] > t2 + 5)
    assert (score2[:-2000] > t2).mean() < 1e-3
    with pytest.raises(ValueError, match="fpr"):
        _threshold(cal, 0.0, "self")


def test_components_volume_peak_centroid():
    from napari_latentseg.engine.anomaly import components

    m = np.zeros((10, 20, 20), bool)
    m[2:4, 5:10, 5:10] = True  # 50 voxels
    m[7, 15, 15] = True  # 1 voxel
    score = np.zeros(m.shape, np.float32)
    score[3, 7, 7] = 9.0
    score[7, 15, 15] = 4.0
    labels, cands = components(m, score, spacing=(2.0, 0.5, 0.5), min_volume_ml=0.0)
    assert [c["voxels"] for c in cands] == [50, 1]
    assert cands[0]["volume_ml"] == pytest.approx(50 * 0.5 / 1000)
    assert cands[0]["peak_score"] == 9.0 and cands[0]["id"] == 1
    assert cands[0]["centroid"] == pytest.approx([2.5, 7.0, 7.0])
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 50
    labels, cands = components(m, score, spacing=(2.0, 0.5, 0.5), min_volume_ml=0.01)
    assert len(cands) == 1 and labels.max() == 1


def test_bad_method_is_a_clear_error(small_phantom):
    from napari_latentseg.engine.anomaly import anomaly_map

    with pytest.raises(ValueError, match="unknown anomaly method"):
        anomaly_map(None, small_phantom.image, method="magic")
    with pytest.raises(ValueError, match="needs a fitted model"):
        anomaly_map(None, small_phantom.image, method="features")
    res = anomaly_map(None, small_phantom.image.astype(np.float32), method="median")
    assert res.error is None and res.score.shape == small_phantom.image.shape


def test_reconstruction_restores_out_of_range_intensities(tiny_model, small_phantom):
    from napari_latentseg.engine.infer import normalizer_for, reconstruct

    img = small_phantom.image.astype(np.float32).copy()
    img[6, 20, 20] = 20 * img.max()  # far above the clipping range
    rec = reconstruct(tiny_model, img, modality="MR", anomalies=False)
    norm, _ = normalizer_for(tiny_model, img, "MR")
    assert rec.reconstruction[6, 20, 20] > norm.inverse(np.float32(norm.clip_high)) + 0.5 * \
        (img[6, 20, 20] - norm.inverse(np.float32(norm.clip_high)))
    assert np.allclose(norm.out_of_range(img)[img < norm.high], 0.0, atol=1e-3)
