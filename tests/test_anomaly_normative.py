"""The denoiser as a normative model: fitted once on a healthy cohort, stored, applied."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def _healthy(like, seeds):
    from napari_latentseg.data.phantom import make_phantom

    return [make_phantom(like.image.shape, like.spacing, seed=s, n_lesions=0).image
            for s in seeds]


def test_healthy_phantom_has_no_lesion(small_phantom):
    from napari_latentseg.data.phantom import make_phantom

    ph = make_phantom(small_phantom.image.shape, small_phantom.spacing, seed=3, n_lesions=0)
    assert ph.info["lesions"] == 0 and not (ph.labels == 7).any()
    assert (ph.labels == 6).any()  # white matter where the lesions would go
    with pytest.raises(ValueError, match="n_lesions"):
        make_phantom((12, 40, 40), n_lesions=-1)


def test_normative_denoiser_stored_and_applied(tiny_model, small_phantom, tmp_path,
                                               monkeypatch):
    """Fitted on two healthy heads, the denoiser's weights go into the model file; a new
    scan is scored with them (no fit of its own) and its implanted block stands out."""
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative
    from napari_latentseg.models.checkpoint import load_model, save_model

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "30")
    stats = fit_normative(None, _healthy(small_phantom, (4, 5)), method="dae",
                          modalities=["MR", "MR"], spacing=small_phantom.spacing)
    assert stats["method"] == "dae" and stats["n_scans"] == 2
    assert len(stats["nets"]) == D.DAE_CYCLES
    model = dataclasses.replace(tiny_model, anomaly={**tiny_model.anomaly, "normative": stats})
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.anomaly["normative"]["calibration"] == stats["calibration"]

    def no_fit(*a, **k):
        raise AssertionError("a normative score must not fit the denoiser again")

    monkeypatch.setattr(D, "fit_unet_iter", no_fit)
    img = small_phantom.image.astype(np.float32).copy()
    truth = np.zeros(img.shape, bool)  # a bright block in white matter
    z, y, x = np.argwhere(small_phantom.labels == 6)[(small_phantom.labels == 6).sum() // 2]
    truth[z:z + 2, y - 3:y + 3, x - 3:x + 3] = True
    img[truth] = 1.6 * float(np.percentile(small_phantom.image, 99))
    res = anomaly_map(loaded, img, modality="MR", reference="model",
                      spacing=small_phantom.spacing, lower_surface=False)  # 48 mm thick
    assert res.mode == "normative" and res.method == "dae"
    tissue = np.isin(small_phantom.labels, (5, 6)) & ~truth
    assert np.median(res.score[truth]) > np.percentile(res.score[tissue], 90)
    again = anomaly_map(None, img, modality="MR", reference=stats, spacing=small_phantom.spacing,
                        error_map=False, lower_surface=False)
    np.testing.assert_array_equal(again.score, res.score)  # the file holds the same weights


def test_normative_and_self_rank_by_their_mean(small_phantom, monkeypatch):
    """``with_self``: voxels ranked by the mean of the normative and the self score, taking
    by rank the values of the higher of the two less log10(2), so the two together keep the
    requested false-positive rate."""
    import napari_latentseg.engine.anomaly as A
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "5")
    monkeypatch.setattr(A, "GUIDE", False)  # the rule itself; the guided step comes after it
    # with_self mixes the cohort-calibrated score: the plain normative map as it was
    monkeypatch.setattr(A, "NORMATIVE_SCAN_RATE", False)
    sp = small_phantom.spacing
    stats = fit_normative(None, _healthy(small_phantom, (4, 5)), method="dae",
                          modalities=["MR", "MR"], spacing=sp)
    img = small_phantom.image.astype(np.float32)
    # The rule before the surface's fade, which multiplies the combined score (tested apart).
    kw = dict(modality="MR", spacing=sp, error_map=False, lower_surface=False)
    norm = anomaly_map(None, img, reference=stats, **kw)
    own = anomaly_map(None, img, method="dae", **kw)
    both = anomaly_map(None, img, reference=stats, with_self=True, **kw)
    assert (norm.mode, own.mode, both.mode) == ("normative", "self", "normative+self")
    higher = np.maximum(np.maximum(norm.score, own.score) - np.log10(2.0), 0.0)
    m = both.mask
    # The same values as the higher score (so the same share over any threshold) ...
    np.testing.assert_allclose(np.sort(both.score[m]), np.sort(higher[m]), atol=1e-5)
    assert not both.score[~m].any()
    # ... in the order of the mean: a voxel of a higher mean never scores lower.
    order = np.argsort((norm.score + own.score)[m] / 2, kind="stable")
    assert (np.diff(both.score[m][order]) >= 0).all()
    assert both.threshold == norm.threshold
    monkeypatch.setattr(A, "SELF_MEAN_ORDER", False)  # the ablation: the higher score as is
    old = anomaly_map(None, img, reference=stats, with_self=True, **kw)
    np.testing.assert_allclose(old.score, higher, atol=1e-5)
    with pytest.raises(ValueError, match="with_self needs a reference"):
        anomaly_map(None, img, with_self=True, **kw)


def test_stored_denoiser_of_another_shape_is_a_clear_error():
    from napari_latentseg.engine.anomaly_dae import nets_from_state

    with pytest.raises(ValueError, match="stored denoiser"):
        nets_from_state([{"weight": np.zeros(3)}])


def test_cli_fits_a_normative_denoiser_and_scores_with_it(tmp_path, capsys, small_phantom,
                                                          monkeypatch):
    """``fit --normative --normative-method dae`` stores the cohort's denoiser; ``reconstruct
    --anomaly-map`` scores a new scan with it; ``info`` says so, and which fit was kept."""
    from napari_latentseg.cli import main
    from napari_latentseg.io import read_volume, save_volume
    from napari_latentseg.models.checkpoint import load_model

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "5")
    sp = small_phantom.spacing
    paths = [save_volume(tmp_path / f"h{i}.nrrd", v, spacing=sp)
             for i, v in enumerate(_healthy(small_phantom, (4, 5)))]
    out = tmp_path / "vae.pt"
    assert main(["fit", *map(str, paths), "-o", str(out), "--config", "tiny", "--steps", "2",
                 "--decoder-steps", "0", "--normative", "--normative-method", "dae",
                 "-q"]) == 0
    err = capsys.readouterr().err
    assert "normative statistics: dae of 2 scan(s)" in err
    assert "implanted spheres found per fit (average precision): seed 0 " in err
    assert err.count("(kept)") == 1
    assert load_model(out).anomaly["normative"]["method"] == "dae"
    new = save_volume(tmp_path / "new.nrrd", small_phantom.image, spacing=sp)
    assert main(["reconstruct", str(new), "-m", str(out), "-o", str(tmp_path / "r.nrrd"),
                 "--anomaly-map", str(tmp_path / "s.nrrd")]) == 0
    assert "anomaly scoring: dae (normative)" in capsys.readouterr().out
    assert read_volume(tmp_path / "s.nrrd").data.shape == small_phantom.image.shape
    assert main(["reconstruct", str(new), "-m", str(out), "-o", str(tmp_path / "r2.nrrd"),
                 "--anomaly-map", str(tmp_path / "s2.nrrd"), "--with-self"]) == 0
    assert "anomaly scoring: dae (normative+self)" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "normative anomaly statistics: dae of 2 scan(s), a denoiser fitted on them" in info
    from napari_latentseg.engine.anomaly_normative import NORMATIVE_FITS

    assert f"the best of {NORMATIVE_FITS} fits at finding implanted spheres (seed " in info


def test_denoiser_keeps_the_thread_cap(monkeypatch):
    """Without a VAE nothing else sets the threads up: the denoiser's fit and score must take
    ``$LATENTSEG_NUM_THREADS`` themselves (batch workers and side-by-side runs set it)."""
    import torch

    from napari_latentseg.engine.anomaly_dae import dae_score_iter, fit_dae_iter
    from napari_latentseg.runtime.device import THREADS_ENV
    from napari_latentseg.runtime.progress import drive

    before = torch.get_num_threads()
    x = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    mask = np.ones(x.shape, bool)
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv(THREADS_ENV, "1")
        nets = drive(fit_dae_iter([(x, mask, None)], steps=1))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        drive(dae_score_iter(nets, x, mask))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_with_self_on_statistics_of_another_grid(chest_ct):
    """Statistics stored before the contrast density's coarse grid (no ``grid_mm``) are
    applied on the scan's grid; the scan's own fit, on the coarse one, is brought to it."""
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative

    sp = (3.0, 0.6, 0.6)  # fine enough for a coarse grid of 4 x 4 pixels
    stats = fit_normative(None, [chest_ct(0)], method="contrast", modalities=["CT"], spacing=sp)
    assert stats.get("grid_mm")
    old = {k: v for k, v in stats.items() if k != "grid_mm"}
    new = chest_ct(1, nodule=True)
    res = anomaly_map(None, new, modality="CT", reference=old, with_self=True, spacing=sp,
                      error_map=False)
    assert res.mode == "normative+self" and res.score.shape == new.shape
    assert np.isfinite(res.score).all()


def test_check_spheres_sit_deep_in_the_head_and_leave_the_scan_alone():
    """The check's spheres: inside the mask and away from its surface, one per radius
    (their volume near the spheres'), the input untouched, and a score equal to them ranks
    them perfectly."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly_normative import (
        CHECK_RADII_MM,
        check_precision,
        synthetic_spheres,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.05, (48, 96, 96)).astype(np.float32)
    zz, yy, xx = np.indices(x.shape)
    mask = ((zz - 24) / 23.0) ** 2 + ((yy - 48) / 45.0) ** 2 + ((xx - 48) / 45.0) ** 2 < 1
    sp = (2.0, 1.0, 1.0)  # a head 46 mm deep
    before = x.copy()
    out, truth = synthetic_spheres(x, mask, sp, seed=3)
    np.testing.assert_array_equal(x, before)
    assert truth.any() and not (truth & ~mask).any()
    depth = ndimage.distance_transform_edt(mask, sampling=sp)
    assert depth[truth].min() > 12  # centres 20 mm deep
    lab, n = ndimage.label(truth)
    assert n == len(CHECK_RADII_MM)
    expected = sum(4 / 3 * np.pi * r ** 3 for r in CHECK_RADII_MM)
    assert 0.7 * expected < truth.sum() * np.prod(sp) < 1.3 * expected  # mm³
    far = ndimage.distance_transform_edt(~truth, sampling=sp) > 5  # past the soft edge (mm)
    assert not np.array_equal(out[truth], x[truth]) and np.array_equal(out[far], x[far])
    assert check_precision(truth.astype(float), truth, mask) == pytest.approx(1.0)
    assert check_precision(np.zeros(x.shape), np.zeros(x.shape, bool), mask) == 0.0
    with pytest.raises(ValueError, match="head voxels"):
        synthetic_spheres(x, np.zeros(x.shape, bool), sp)


def test_normative_denoiser_keeps_the_fit_the_check_prefers(monkeypatch):
    """Several fits with seeds of their own, each checked on the cohort's implanted spheres;
    the snapshots of the best-checked fit are returned, with every fit's figure; one fit
    checks nothing; ``LATENTSEG_DAE_STEPS`` still sets the steps."""
    import napari_latentseg.engine.anomaly_dae as D
    import napari_latentseg.engine.anomaly_normative as N
    from napari_latentseg.runtime.progress import drive

    fitted, fit = [], N.fit_dae_iter

    def spy(scans, *, steps=None, seed=0, **kw):  # records the steps the fit would take
        nets = yield from fit(scans, steps=1, seed=seed, **kw)
        fitted.append((D._steps(steps), seed, nets))
        return nets

    aps = iter([0.1, 0.5, 0.2])
    monkeypatch.setattr(N, "fit_dae_iter", spy)
    monkeypatch.setattr(N, "check_precision", lambda *a: next(aps))
    monkeypatch.delenv("LATENTSEG_DAE_STEPS", raising=False)
    vol = np.random.default_rng(1).normal(1.0, 0.05, (8, 40, 40)).astype(np.float32)
    mask = np.ones(vol.shape, bool)
    stages: list = []
    nets, report = drive(N.fit_normative_dae_iter([(vol, mask, (4.0, 1.5, 1.5))], seed=7,
                                                  fits=3), lambda p: stages.append(p["stage"]))
    assert [(s, k) for s, k, _ in fitted] == [(D.DAE_STEPS, 7), (D.DAE_STEPS, 8),
                                             (D.DAE_STEPS, 9)]
    assert nets is fitted[1][2]
    assert report == [{"seed": 7, "check_ap": 0.1}, {"seed": 8, "check_ap": 0.5},
                      {"seed": 9, "check_ap": 0.2}]
    assert {"normative: denoiser (fit 2 of 3)", "normative: check (fit 3 of 3)"} <= set(stages)
    fitted.clear()
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "2")
    nets, report = drive(N.fit_normative_dae_iter([(vol, mask, None)], fits=1))
    assert [(s, k) for s, k, _ in fitted] == [(2, 0)] and report == []
    with pytest.raises(ValueError, match="at least one fit"):
        drive(N.fit_normative_dae_iter([(vol, mask, None)], fits=0))


def test_normative_denoiser_takes_its_rate_from_the_scan(small_phantom, monkeypatch):
    """On MR the normative denoiser's score is calibrated on the scan's own head voxels (as in
    self mode), so a cohort calibration that nothing reaches (a cohort whose tail is its own
    lesions') still flags; the stored calibration serves other methods, and the switch."""
    import napari_latentseg.engine.anomaly as A
    from napari_latentseg.engine.anomaly import anomaly_map, calibrate, fit_normative

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "5")
    sp = small_phantom.spacing
    img = small_phantom.image.astype(np.float32)
    kw = dict(modality="MR", spacing=sp, error_map=False, lower_surface=False)
    never = calibrate(np.linspace(1e5, 1e6, 1000))  # no raw score of a head comes near
    fitted = {}
    for method in ("dae", "intensity"):
        stats = fitted[method] = fit_normative(None, _healthy(small_phantom, (4, 5)),
                                               method=method, modalities=["MR", "MR"],
                                               spacing=sp)
        res = anomaly_map(None, img, reference=stats, **kw)
        high = anomaly_map(None, img, reference={**stats, "calibration": never}, **kw)
        if method == "dae":  # the scan's own rate: the stored calibration is not read
            np.testing.assert_array_equal(high.score, res.score)
            assert res.info["calibration"]["n"] == int(res.mask.sum())
            # score 1 = a tenth of the scan's head voxels score higher
            assert 0.07 < (res.score[res.mask] > 1.0).mean() < 0.13
        else:  # other methods keep the cohort's calibration
            assert not high.score.any() and res.score.any()
    monkeypatch.setattr(A, "NORMATIVE_SCAN_RATE", False)  # the ablation: the cohort's rate
    high = anomaly_map(None, img, reference={**fitted["dae"], "calibration": never}, **kw)
    assert not (high.score > high.threshold).any()


def test_normative_map_alone_takes_its_own_rule_across_thick_slices(monkeypatch):
    """On thick slices the normative denoiser's map alone follows ``ACROSS_NORMATIVE`` (the
    geometric mean, session 48); ``with_self`` keeps self mode's cap."""
    import napari_latentseg.engine.anomaly_guide as G
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "5")
    sp = (8.0, 2.0, 2.0)  # thick: the denoiser reads each slice alone
    heads = [make_phantom((12, 40, 40), sp, seed=s, n_lesions=0).image for s in (4, 5)]
    img = make_phantom((12, 40, 40), sp, seed=3).image.astype(np.float32)
    stats = fit_normative(None, heads, method="dae", modalities=["MR", "MR"], spacing=sp)
    kw = dict(modality="MR", spacing=sp, error_map=False, lower_surface=False, reference=stats)
    maps = {}
    for rule in ("geo", "cap"):
        monkeypatch.setattr(G, "ACROSS_NORMATIVE", rule)
        maps[rule] = (anomaly_map(None, img, **kw).score,
                      anomaly_map(None, img, with_self=True, **kw).score)
    assert not np.array_equal(maps["geo"][0], maps["cap"][0])
    np.testing.assert_array_equal(maps["geo"][1], maps["cap"][1])
