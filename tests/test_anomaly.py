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
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative
    from napari_latentseg.models.checkpoint import load_model, save_model

    refs = [make_phantom((12, 40, 40), spacing=(4.0, 4.0, 4.0), seed=s).image for s in (4, 5)]
    stats = fit_normative(tiny_model, refs, modalities=["MR", "MR"], method="intensity")
    assert stats["method"] == "intensity" and stats["n_scans"] == 2
    # A copy: the session fixture is shared with other tests.
    model = dataclasses.replace(tiny_model, anomaly={**tiny_model.anomaly, "normative": stats})
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.anomaly["normative"]["calibration"] == stats["calibration"]
    img, truth = _implant(small_phantom.image, small_phantom.labels)
    res = anomaly_map(loaded, img, modality="MR", reference="model")
    assert res.mode == "normative" and res.method == "intensity"
    normal = res.score[res.mask & ~truth]
    assert res.score[truth].mean() > normal.mean() + 0.2
    assert res.score[truth].max() > np.percentile(normal, 90)
    with pytest.raises(ValueError, match="reference"):
        anomaly_map(tiny_model, img, reference="nope")


def test_calibration_gives_requested_fpr_on_fit_data(rng):
    from scipy import stats

    from napari_latentseg.engine.anomaly import _calibrated, _threshold, calibrate

    fit_scores = rng.gamma(2.0, 1.0, size=200_000)
    cal = calibrate(fit_scores)
    score = _calibrated(fit_scores, cal)
    assert np.all(np.diff(score[np.argsort(fit_scores)]) >= -1e-6)  # monotone
    for fpr in (1e-2, 1e-3, 1e-4):
        # Empirical quantiles: the rate is met on the fit data, in both modes.
        for mode in ("self", "normative"):
            t = _threshold(cal, fpr, mode)
            assert fpr / 1.5 < (score > t).mean() < 1.5 * fpr
    # 1e-6 is beyond what 200 000 voxels support: the exponential tail extrapolates; on the
    # true distribution the rate is close, and not far under (conservative extrapolation).
    grid = np.linspace(0.0, 40.0, 400_001)
    raw_t = grid[np.argmax(_calibrated(grid, cal) > _threshold(cal, 1e-6, "self"))]
    assert 0.5e-6 < stats.gamma.sf(raw_t, 2.0) < 3e-6
    # Self mode with 1 % of lesion voxels in the fit data: the requested fraction is flagged,
    # all of it lesion.
    dirty = np.concatenate([fit_scores, 50.0 + rng.uniform(0.0, 5.0, 2000)])
    score2 = _calibrated(dirty, calibrate(dirty))
    t2 = _threshold(calibrate(dirty), 1e-3, "self")
    assert 1e-3 / 1.5 < (score2 > t2).mean() < 1.5e-3
    assert not (score2[:-2000] > t2).any()
    # Tied scores take their lowest rank: 1 % of voxels at one value are not a 0.1 % tail.
    tied = np.concatenate([fit_scores, np.full(2000, 50.0)])
    score3 = _calibrated(tied, calibrate(tied))
    assert (score3 > t2).mean() < 1.5e-3 and np.all(score3[-2000:] > 1.9)
    with pytest.raises(ValueError, match="fpr"):
        _threshold(cal, 0.0, "self")


def test_self_calibration_body_leaves_room_for_lesions(rng):
    """calibrate(body=0.01), the denoiser's self mode: lesions up to 1 % of the scan do not
    raise the threshold, so a lesion of 0.5 % is flagged whole, and a lesion-free scan still
    flags about the requested rate."""
    from napari_latentseg.engine.anomaly import _calibrated, _threshold, calibrate

    normal = rng.gamma(2.0, 1.0, size=200_000)
    lesion = 50.0 + rng.uniform(0.0, 5.0, 1000)
    dirty = np.concatenate([normal, lesion])
    t = _threshold(calibrate(dirty), 1e-3, "self")
    plain = _calibrated(dirty, calibrate(dirty))
    assert (plain[-1000:] > t).mean() < 0.5  # the top 0.1 %: under half the lesion
    score = _calibrated(dirty, calibrate(dirty, body=0.01))
    assert (score[-1000:] > t).all()
    assert (score[:-1000] > t).mean() < 1.5e-3
    clean = _calibrated(normal, calibrate(normal, body=0.01))
    assert 0.5e-3 < (clean > t).mean() < 2e-3
    with pytest.raises(ValueError, match="body"):
        calibrate(normal, body=0.5)


def test_calibration_saved_before_empirical_tables_still_reads():
    from napari_latentseg.engine.anomaly import _calibrated, _threshold

    # The earlier format: percentiles, an exponential tail from the 90th percentile.
    p = np.concatenate([np.linspace(0.0, 0.9, 91), 1.0 - np.logspace(-1, -5, 41)[1:]])
    old = {"p": p.tolist(), "q": (10 * p).tolist(), "tail_start": 9.0, "tail_scale": 1.0,
           "n": 1000}
    s = _calibrated(np.array([5.0, 9.0, 9.0 + np.log(10.0)]), old)
    assert s == pytest.approx([np.log10(2.0), 1.0, 2.0], abs=1e-3)
    assert _threshold(old, 1e-3, "self") == pytest.approx(3.0)
    # Normative: the score of the fit data's 99th percentile (raw 9.9) under that tail.
    assert _threshold(old, 1e-2, "normative") == pytest.approx(1 + 0.9 / np.log(10.0), abs=1e-3)


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


def test_denoiser_score_finds_an_implanted_block(tiny_model, small_phantom, monkeypatch):
    """``dae``: a denoising autoencoder fitted on the scan itself (a few steps here) scores
    an implanted block above the tissue around it; the error map still uses the VAE's own
    normalisation."""
    from napari_latentseg.engine.anomaly import anomaly_map

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "30")
    img, truth = _implant(small_phantom.image, small_phantom.labels)
    # Without the fade at the surface (tested on its own): this phantom is 48 mm thick, so
    # nearly all of it lies within 20 mm of its top or bottom.
    res = anomaly_map(tiny_model, img, modality="MR", method="dae",
                      spacing=small_phantom.spacing, lower_surface=False)
    tissue = np.isin(small_phantom.labels, (5, 6)) & ~truth
    assert res.method == "dae" and res.mode == "self"
    assert res.score.dtype == np.float32 and res.score.shape == img.shape
    assert np.median(res.score[truth]) > np.percentile(res.score[tissue], 90)
    assert res.error is not None and res.error.shape == img.shape


def test_denoiser_slice_normalisation():
    from napari_latentseg.engine.anomaly_dae import slice_normalise

    rng = np.random.default_rng(0)
    r = rng.gamma(2.0, 1.0, size=(3, 30, 30)).astype(np.float32)
    r[1] *= 5.0  # an end slice with larger residuals everywhere
    mask = np.ones(r.shape, bool)
    out = slice_normalise(r, mask)
    for k in range(3):  # every slice centred on 0 with unit MAD
        assert abs(np.median(out[k])) < 1e-5
        assert np.median(np.abs(out[k])) == pytest.approx(1.0, rel=1e-3)


def test_denoiser_residual_ignores_what_lies_outside_the_head():
    """The denoised output outside the head (never fitted) does not reach the score inside
    it, and the snapshots' mean comes back on one scale per slice."""
    from napari_latentseg.engine.anomaly_dae import residual_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 32, 32)).astype(np.float32)
    mask = np.zeros(x.shape, bool)
    mask[:, 6:26, 6:26] = True
    outs = [x + 0.1 * rng.normal(size=x.shape).astype(np.float32) for _ in range(2)]
    wild = [o.copy() for o in outs]
    for o in wild:
        o[~mask] += 50.0  # garbage where the net was never trained
    a, b = residual_score(x, outs, mask), residual_score(x, wild, mask)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)
    for k in range(3):
        v = a[k][mask[k]]
        assert abs(np.median(v)) < 1e-4
        assert np.median(np.abs(v)) == pytest.approx(1.0, rel=1e-3)
    # A denoiser that heals a block: the block scores above the rest of its slice.
    healed = [x.copy() for _ in range(2)]
    for o in healed:
        o[1, 12:18, 12:18] -= 2.0
    s = residual_score(x, [h + 0.05 * rng.normal(size=x.shape).astype(np.float32)
                           for h in healed], mask)
    assert s[1, 14, 14] > np.percentile(s[1][mask[1]], 95)


def test_denoiser_residual_is_smoothed_across_thin_slices_only():
    """On thin slices the residual is smoothed across slices at the in-plane width in mm, so
    a lesion seen on one slice alone scores lower than one seen on its neighbours too; thick
    slices are scored slice by slice as before."""
    from napari_latentseg.engine.anomaly_dae import SMOOTH_SIGMA, residual_score, z_sigma

    assert z_sigma((6.5, 1.56, 1.56)) == 0.0 and z_sigma((4.0, 1.6, 1.6)) == 0.0
    assert z_sigma(None) == 0.0 and z_sigma((1.0, 1.0)) == 0.0
    assert z_sigma((1.2, 1.2, 1.2)) == pytest.approx(SMOOTH_SIGMA)
    assert z_sigma((1.0, 1.5, 1.5)) == pytest.approx(SMOOTH_SIGMA * 1.5)
    assert z_sigma((4.0, 5.0, 5.0)) == pytest.approx(SMOOTH_SIGMA * 1.5 / 4.0)  # 3 mm at most
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 32, 32)).astype(np.float32)
    mask = np.ones(x.shape, bool)
    outs = [x + 0.05 * rng.normal(size=x.shape).astype(np.float32)]
    outs[0][4, 12:18, 12:18] -= 2.0  # healed on slice 4 only
    outs[0][2:7, 20:26, 20:26] -= 2.0  # healed on five slices
    flat = residual_score(x, outs, mask)
    np.testing.assert_array_equal(flat, residual_score(x, outs, mask, 0.0))
    deep = residual_score(x, outs, mask, z_sigma((1.0, 1.0, 1.0)))
    assert flat[4, 14, 14] > 0.8 * flat[4, 22, 22]  # alike slice by slice
    assert deep[4, 14, 14] < 0.6 * deep[4, 22, 22]  # across slices the five-slice one wins


def test_reconstruct_job_uses_normative_statistics_only_for_their_method(tiny_model,
                                                                       small_phantom):
    """A model holding normative statistics (``intensity``) scores with them by default, also
    without the reconstruction; a different method chosen in the dock or with
    --anomaly-method scores the scan against itself instead of failing."""
    from napari_latentseg.engine.anomaly import fit_normative
    from napari_latentseg.pipeline import Scan, reconstruct_job
    from napari_latentseg.runtime.progress import drive

    img = small_phantom.image.astype(np.float32)
    stats = fit_normative(tiny_model, [img], modalities=["MR"], method="intensity")
    model = dataclasses.replace(tiny_model, anomaly={**tiny_model.anomaly, "normative": stats})
    scan = Scan(img, {}, "MR", "phantom")
    for method, mode in (("default", "normative"), ("median", "self")):
        job = drive(reconstruct_job(model, scan, anomalies=True, anomaly_method=method))
        assert job.anomaly.mode == mode
    alone = drive(reconstruct_job(model, scan, reconstruction=False))  # the dock's, for Segment
    assert alone.result is None and set(alone.outputs) == {"anomaly_map", "anomalies"}
    assert alone.anomaly.mode == "normative" and "mean_error" not in alone.metrics


def test_reconstruct_job_without_a_model_gives_the_score_alone(small_phantom):
    """No model: the anomaly outputs of a model-free method (the denoiser on MR), on the device
    asked for; nothing to reconstruct; a method that needs the VAE says so."""
    from napari_latentseg.pipeline import Scan, reconstruct_job
    from napari_latentseg.runtime.progress import drive

    img = small_phantom.image.astype(np.float32)
    scan = Scan(img, {}, "MR", "phantom")
    job = drive(reconstruct_job(None, scan, anomalies=True, anomaly_map=True, device="cpu"))
    assert job.result is None and set(job.outputs) == {"anomaly_map", "anomalies"}
    assert job.anomaly.method == "dae" and job.metrics["device"] == "cpu"
    assert job.outputs["anomaly_map"].data.shape == img.shape
    with pytest.raises(ValueError, match="only the anomaly score"):
        drive(reconstruct_job(None, scan, anomalies=False))
    with pytest.raises(ValueError, match="needs a fitted model"):
        drive(reconstruct_job(None, scan, anomalies=True, anomaly_method="error"))


def test_default_method_is_the_denoiser_on_mr_only(small_phantom):
    """``"default"``: the denoiser on MR (header or intensities), the contrast density on CT,
    the intensity density on slices too small for the denoiser's crops; in self mode and in
    normative statistics alike (session 34: the denoiser fitted on a cohort wins there too)."""
    from napari_latentseg.engine.anomaly import anomaly_map, default_method, fit_normative

    img = small_phantom.image.astype(np.float32)  # 40 x 40 slices, MR-like values
    ct = np.full((4, 40, 40), -1000.0, np.float32)
    ct[:, 8:32, 8:32] = 40.0
    assert default_method(img) == "dae" and default_method(img, "MR") == "dae"
    assert default_method(img[0]) == "dae"  # a 2D slice
    assert default_method(ct) == "contrast" and default_method(img, "CT") == "contrast"
    assert default_method(ct[0]) == "contrast"  # a 2D slice
    assert default_method(img[:, :20, :20], "MR") == "intensity"  # under 32 x 32
    res = anomaly_map(None, img, modality="MR", spacing=small_phantom.spacing)
    assert (res.method, res.mode) == ("dae", "self")
    assert fit_normative(None, [img], modalities=["MR"])["method"] == "dae"
    assert fit_normative(None, [img[:, :20, :20]], modalities=["MR"])["method"] == "intensity"
    assert fit_normative(None, [ct], modalities=["CT"])["method"] == "contrast"


def test_denoiser_steps_from_the_environment(small_phantom, monkeypatch):
    """``LATENTSEG_DAE_STEPS`` sets the denoiser's training steps per cycle (worker processes
    and the CLI read it too); a value that is not a whole number is a clear error."""
    from napari_latentseg.engine.anomaly import anomaly_map
    from napari_latentseg.engine.anomaly_dae import DAE_CYCLES

    img = small_phantom.image.astype(np.float32)
    seen = []
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "3")
    anomaly_map(None, img, modality="MR", method="dae",
                progress=lambda p: seen.append(p.get("total")) if "denoiser" in
                str(p.get("stage")) else None)
    assert seen and set(seen) == {3 * DAE_CYCLES}
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "many")
    with pytest.raises(ValueError, match="whole number"):
        anomaly_map(None, img, modality="MR", method="dae")


def test_denoiser_fits_a_near_isotropic_scan_more_often_for_fewer_steps(monkeypatch):
    """Self mode on a near-isotropic scan fits the denoiser :data:`DAE_FITS_THIN` times for
    :data:`DAE_STEPS_THIN` steps a cycle, seeds ``seed``, ``seed + 1``..., each with its own
    progress stage; thick slices fit once for :data:`DAE_STEPS`, normative cohorts
    :data:`.NORMATIVE_FITS` times for as many;
    ``LATENTSEG_DAE_STEPS`` still sets the steps."""
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly import fit_normative
    from napari_latentseg.engine.anomaly_normative import NORMATIVE_FITS
    from napari_latentseg.runtime.progress import drive

    assert D.DAE_FITS_THIN == 3 and D.DAE_STEPS_THIN < D.DAE_STEPS
    seen, fit = [], D.fit_unet_iter

    def spy(steps, loss_of, *, seed=0, **kw):  # records the plan, fits one step
        seen.append((steps, seed))
        return (yield from fit(1, loss_of, seed=seed, **kw))

    monkeypatch.setattr(D, "fit_unet_iter", spy)
    monkeypatch.delenv("LATENTSEG_DAE_STEPS", raising=False)
    vol = np.random.default_rng(0).normal(1.0, 0.05, (32, 40, 40)).astype(np.float32)
    mask = np.ones(vol.shape, bool)
    stages: list = []
    iso = drive(D.dae_raw_iter(vol, mask, spacing=(1.2, 1.2, 1.2), seed=5),
                lambda p: stages.append(p["stage"]))
    assert seen == [(D.DAE_STEPS_THIN, 5 + k) for k in range(3)] and iso.shape == vol.shape
    assert {f"anomaly: denoiser (fit {k} of 3)" for k in (1, 2, 3)} <= set(stages)
    seen.clear()
    drive(D.dae_raw_iter(vol, mask, spacing=(6.5, 0.8, 0.8), lower_symmetric=False))
    fit_normative(None, [vol], spacing=(1.2, 1.2, 1.2), modalities=["MR"], method="dae")
    # A cohort: NORMATIVE_FITS fits of the recipe's length, the check's best kept.
    assert seen == [(D.DAE_STEPS, 0)] + [(D.DAE_STEPS, k) for k in range(NORMATIVE_FITS)]
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "2")
    seen.clear()
    drive(D.dae_raw_iter(vol, mask, spacing=(1.2, 1.2, 1.2), lower_symmetric=False))
    assert seen == [(2, 0), (2, 1), (2, 2)]


def test_denoiser_cycles_keep_a_snapshot_each():
    """Two one-cycle runs back to back: progress counts both, each cycle's end is kept as a
    snapshot, the second goes on from the first's weights (they differ), and the returned
    network is the last snapshot's."""
    import torch

    from napari_latentseg.engine.anomaly_dae import fit_unet_iter

    x = torch.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16)

    def loss_of(net, rng, gen, cycle):
        return ((net(x + 0.1 * torch.randn(x.shape, generator=gen)) - x) ** 2).mean()

    snaps: list = []
    gen = fit_unet_iter(4, loss_of, cycles=2, snapshots=snaps)
    done = []
    try:
        while True:
            done.append(next(gen)["done"])
    except StopIteration as stop:
        net = stop.value
    assert done[-1] == 8 and len(snaps) == 2
    p0, p1 = (torch.cat([p.flatten() for p in s.parameters()]) for s in snaps)
    assert not torch.equal(p0, p1)
    assert torch.equal(p1, torch.cat([p.flatten() for p in net.parameters()]))


def test_denoiser_second_cycle_draws_coarser_noise(small_phantom, monkeypatch):
    """Each cycle trains on its own noise grid (:data:`DAE_NOISE_RES`: the second coarser),
    and the coarser grid gives smoother noise (neighbouring voxels more alike)."""
    import torch

    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly import anomaly_map

    assert len(D.DAE_NOISE_RES) == D.DAE_CYCLES and D.DAE_NOISE_RES[1] < D.DAE_NOISE_RES[0]
    seen, engine = [], D.noisy_batch

    def spy(*args, res=D._NOISE_RES, **kw):
        seen.append(res)
        return engine(*args, res=res, **kw)

    monkeypatch.setattr(D, "noisy_batch", spy)
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "3")
    anomaly_map(None, small_phantom.image.astype(np.float32), modality="MR", method="dae")
    assert seen == [r for r in D.DAE_NOISE_RES for _ in range(3)]
    ones = torch.ones(32, 1, 64, 64)
    steps = {}
    for res in D.DAE_NOISE_RES:
        n = D._coarse_noise(32, 64, ones, torch.Generator().manual_seed(0), res=res)
        steps[res] = float((n[..., 1:] - n[..., :-1]).abs().mean() / n.abs().mean())
    assert steps[D.DAE_NOISE_RES[1]] < 0.7 * steps[D.DAE_NOISE_RES[0]]


def test_model_free_score_is_the_same_with_a_model_loaded(tiny_model):
    """A score that does not use the VAE (the CT default) ignores the model's normalisation:
    a CT model's clipped HU window gave another map than the one measured without a model.
    Statistics stored before that change follow the model's normalisation, as fitted."""
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative
    from napari_latentseg.engine.normalize import Normalizer

    rng = np.random.default_rng(2)
    ct = rng.normal(-850.0, 30.0, (6, 48, 48)).astype(np.float32)  # lung
    ct[:, :, :6] = rng.normal(1200.0, 50.0, (6, 48, 6))  # dense bone, past the window
    ct[2:4, 20:26, 20:26] = rng.normal(-450.0, 30.0, (2, 6, 6))  # ground glass
    ct_model = dataclasses.replace(
        tiny_model, normalization=Normalizer.for_modality("CT").to_dict())
    spacing = (2.0, 2.0, 2.0)
    kw = dict(modality="CT", spacing=spacing, min_volume_ml=0.01)
    free = anomaly_map(None, ct, error_map=False, **kw)
    loaded = anomaly_map(ct_model, ct, **kw)
    assert loaded.method == "contrast" and loaded.error is not None
    np.testing.assert_array_equal(loaded.score, free.score)
    ref = fit_normative(ct_model, [ct], method="contrast", spacing=spacing, modalities=["CT"])
    assert ref["normalization"] == "scan"
    new = anomaly_map(ct_model, ct, reference=ref, error_map=False, **kw)
    np.testing.assert_array_equal(new.score, anomaly_map(None, ct, reference=ref,
                                                         error_map=False, **kw).score)
    del ref["normalization"]  # as stored before: the model's window
    old = anomaly_map(ct_model, ct, reference=ref, error_map=False, **kw)
    assert not np.array_equal(old.score, new.score)
    assert fit_normative(tiny_model, [ct], method="error", spacing=spacing,
                         modalities=["CT"])["normalization"] == "model"


def test_denoiser_reads_a_near_isotropic_scan_in_three_orientations(monkeypatch):
    """On a near-isotropic scan the denoiser is fitted on, and scores, axial, coronal and
    sagittal slices (their sum normalised per axial slice); thick slices stay axial."""
    import napari_latentseg.engine.anomaly as A
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import anomaly_map

    big = (40, 64, 64)
    assert D.planes((1.0, 1.0, 1.0), big) == D.PLANES
    assert D.planes((1.0, 0.6, 0.6), big) == D.PLANES
    for thick in ((6.5, 0.78, 0.78), (2.1, 0.66, 0.66), None, (1.0, 1.0)):
        assert D.planes(thick, big) == D.PLANES[:1]
    assert D.planes((1.0, 1.0, 1.0), (6, 64, 64)) == D.PLANES[:1]  # a slab: axial only
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    xo, mo, so = D._oriented(x, x > 5, (3.0, 2.0, 1.0), (2, 0, 1))
    assert xo.shape == (4, 2, 3) and so == (1.0, 3.0, 2.0) and mo.shape == xo.shape
    np.testing.assert_array_equal(np.transpose(xo, np.argsort((2, 0, 1))), x)

    ph = make_phantom((36, 40, 44), (2.0, 2.0, 2.0), seed=3, n_lesions=0)
    img = ph.image.astype(np.float32)
    truth = np.zeros(img.shape, bool)
    truth[18:24, 16:22, 16:22] = True
    truth &= ph.labels == 6
    img[truth] = 250.0  # far darker than white matter (720)
    seen, plane = [], D._plane_score

    def spy(nets, x, *args):
        seen.append(x.shape)
        return (yield from plane(nets, x, *args))

    monkeypatch.setattr(D, "_plane_score", spy)
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "30")
    # The readings' own score: with the guided step (anomaly_guide) this 30-step fit's block,
    # weaker than the textured white matter's strongest findings, falls in rank (median
    # 1.34 -> 0.89; docs/anomaly_benchmarks.md, "The score drawn to the lesion's edge").
    monkeypatch.setattr(A, "GUIDE", False)
    events: list[dict] = []
    res = anomaly_map(None, img, modality="MR", method="dae", spacing=ph.spacing,
                      lower_surface=False, progress=events.append)
    # Each of the DAE_FITS_THIN fits scores the three orientations.
    assert seen == [(36, 40, 44), (40, 36, 44), (44, 36, 40)] * D.DAE_FITS_THIN
    assert res.score.shape == img.shape
    for name, n in (("axial", 36), ("coronal", 40), ("sagittal", 44)):  # progress per plane
        last = [e for e in events if e.get("stage") == f"anomaly: denoise ({name} slices)"][-1]
        assert last["done"] == last["total"] == n * len(D.DAE_NOISE_RES)
    tissue = np.isin(ph.labels, (5, 6)) & ~truth
    assert np.median(res.score[truth]) > np.percentile(res.score[tissue], 90)
