"""VAE engine: fitting, stopping, reproducibility, inference and model files."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_latentseg.engine.infer import encode, reconstruct, reconstruct_iter
from napari_latentseg.engine.normalize import Normalizer, guess_modality
from napari_latentseg.engine.train import FitOptions, fit, fit_iter
from napari_latentseg.models.checkpoint import (
    ModelFileError,
    load_model,
    next_version_path,
    save_model,
)
from napari_latentseg.models.config import CONFIGS, ModelConfig, build_network
from napari_latentseg.runtime.progress import Cancelled


def _params_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_goes_down(small_phantom):
    res = fit(small_phantom.image, "tiny", FitOptions(steps=80, eval_every=20, patience=0))
    first = np.mean([h["recon"] for h in res.history[:10]])
    last = np.mean([h["recon"] for h in res.history[-10:]])
    assert last < 0.6 * first
    assert res.reason == "steps" and res.steps == 80
    vals = [h["val"] for h in res.history if "val" in h]
    assert min(vals) == pytest.approx(res.best_val)


def test_cosine_schedule_decays_the_learning_rate_to_zero(small_phantom):
    def lrs(schedule):
        opts = FitOptions(steps=30, eval_every=10, patience=0, lr_schedule=schedule)
        return [m["lr"] for m in fit_iter(small_phantom.image, "tiny", opts)
                if m.get("stage") == "fit" and "lr" in m and m.get("phase") != "decoder"]

    constant, cosine = lrs("constant"), lrs("cosine")
    assert len(constant) == len(cosine) == 30
    peak = FitOptions().lr
    assert constant[-1] == pytest.approx(peak)
    # Warm-up first (3 steps here), then a monotone decay that ends near zero.
    assert cosine[2] == pytest.approx(peak)
    assert all(b <= a for a, b in zip(cosine[2:], cosine[3:], strict=False))
    assert cosine[-1] < 0.02 * cosine[2]
    with pytest.raises(ValueError, match="lr_schedule"):
        FitOptions(lr_schedule="step")


def test_fit_is_reproducible_on_cpu(small_phantom):
    opts = FitOptions(steps=8, eval_every=4, seed=7, device="cpu")
    a = fit(small_phantom.image, "tiny", opts).model
    b = fit(small_phantom.image, "tiny", opts).model
    assert _params_equal(a.net, b.net)
    c = fit(small_phantom.image, "tiny", FitOptions(steps=8, eval_every=4, seed=8)).model
    assert not _params_equal(a.net, c.net)


def test_stop_event_returns_best_model(small_phantom):
    stop = threading.Event()
    gen = fit_iter(small_phantom.image, "tiny", FitOptions(steps=10_000, eval_every=5),
                   stop_event=stop)
    steps_seen = 0
    try:
        while True:
            ev = next(gen)
            if ev.get("stage") == "fit":
                steps_seen = ev["step"]
                if steps_seen == 12:
                    stop.set()
    except StopIteration as done:
        result = done.value
    assert result.reason == "stopped"
    assert result.steps == 12
    assert np.isfinite(result.best_val)
    assert result.model.anomaly["threshold"] > 0


def test_time_budget_ends_the_fit(small_phantom):
    res = fit(small_phantom.image, "tiny", FitOptions(steps=10**9, minutes=0.02, eval_every=10))
    assert res.reason == "time"
    assert res.seconds < 30


def test_model_file_round_trip_is_exact(tiny_model, tmp_path, small_phantom):
    path = save_model(tiny_model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert _params_equal(tiny_model.net, loaded.net)
    assert loaded.config == tiny_model.config
    assert loaded.normalization == tiny_model.normalization
    assert loaded.anomaly == pytest.approx(tiny_model.anomaly)
    assert loaded.info["fitted_on"] == ["phantom"]
    assert len(loaded.history) == len(tiny_model.history)
    a = reconstruct(tiny_model, small_phantom.image, anomalies=False).reconstruction
    b = reconstruct(loaded, small_phantom.image, anomalies=False).reconstruction
    np.testing.assert_array_equal(a, b)
    # The file holds weights and plain values only.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "napari-latentseg-model"


def test_models_are_never_overwritten(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        save_model(tiny_model, path)
    assert path.read_bytes() == before
    assert next_version_path(path).name == "m-v2.pt"
    save_model(tiny_model, tmp_path / "m-v2.pt")
    assert next_version_path(path).name == "m-v3.pt"
    assert next_version_path(tmp_path / "m-v2.pt").name == "m-v3.pt"


def test_bad_model_files(tmp_path, tiny_model):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(junk)
    good = save_model(tiny_model, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(cut)
    # A foreign object and a pickle that would execute code are refused, never run.
    torch.save({"hello": "world"}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a napari-latentseg model"):
        load_model(tmp_path / "foreign.pt")
    torch.save({"obj": threading.Event}, tmp_path / "code.pt")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "code.pt")
    # Weights that do not match the configuration they claim.
    raw = torch.load(good, weights_only=True)
    raw["config"]["channels"] = [16, 16]
    raw["config"]["norm_num_groups"] = 4
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="do not match configuration"):
        load_model(tmp_path / "mismatch.pt")


def test_plain_monai_state_dict_loads_with_config(tmp_path):
    kwargs = {"spatial_dims": 2, "channels": [8, 16], "latent_channels": 2,
              "num_res_blocks": 1, "norm_num_groups": 4,
              "attention_levels": [False, False]}
    cfg = ModelConfig(name="x", channels=(8, 16), latent_channels=2, norm_num_groups=4,
                      patch_size=(32, 32))
    net = build_network(cfg)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelFileError, match="plain state dict"):
        load_model(tmp_path / "sd.pt")
    m = load_model(tmp_path / "sd.pt", config=kwargs)
    assert _params_equal(m.net, net)
    assert m.config.channels == (8, 16)


def test_reconstruction_shapes_units_and_anomalies(tiny_model, small_phantom):
    img = small_phantom.image
    res = reconstruct(tiny_model, img)
    assert res.reconstruction.shape == img.shape == res.error.shape
    assert res.reconstruction.dtype == np.float32
    # Back in the input's units: same order of magnitude as the image's foreground.
    fg = small_phantom.labels > 1
    assert 0.3 < res.reconstruction[fg].mean() / img[fg].mean() < 3
    assert res.anomalies.shape == img.shape
    assert res.n_candidates == len(np.unique(res.anomalies)) - 1
    assert res.threshold == pytest.approx(tiny_model.anomaly["threshold"])


def test_anomaly_threshold_is_learned_from_the_fit_data(tiny_model, small_phantom):
    from napari_latentseg.engine.infer import normalizer_for, smooth_error

    thr = tiny_model.anomaly["threshold"]
    res = reconstruct(tiny_model, small_phantom.image)
    _, mask = normalizer_for(tiny_model, small_phantom.image, "MR")
    smoothed = smooth_error(res.error, tiny_model.config)
    # 99.5th percentile of the fit data's foreground: ~0.5 % of it lies above the threshold.
    above = (smoothed[mask] > thr).mean()
    assert 0.001 < above < 0.02
    # Candidates are exactly the thresholded foreground, minus components under min_size.
    cand = (smoothed > thr) & mask
    assert ((res.anomalies > 0) <= cand).all()


def test_detect_anomalies_drops_small_components():
    from napari_latentseg.engine.infer import detect_anomalies

    cand = np.zeros((6, 20, 20), dtype=bool)
    cand[1:4, 2:6, 2:6] = True  # 48 voxels
    cand[5, 15, 15] = True  # 1 voxel: noise
    cand[2:4, 10:13, 10:13] = True  # 18 voxels
    labels, n = detect_anomalies(cand, min_size=10)
    assert n == 2 and labels.max() == 2
    assert labels[5, 15, 15] == 0
    assert set(np.unique(labels[1:4, 2:6, 2:6])) == {labels[2, 3, 3]}


def test_large_slices_use_blended_tiles(tiny_model, small_phantom):
    img = small_phantom.image
    whole = reconstruct(tiny_model, img, anomalies=False).reconstruction
    tiled = reconstruct(tiny_model, img, anomalies=False, tile=24).reconstruction
    # Same network, different tiling: close everywhere (seams blended), not identical.
    rng_ = np.ptp(whole)
    assert np.abs(whole - tiled).mean() < 0.05 * rng_


def test_reconstruction_can_be_cancelled(tiny_model, small_phantom):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        list(reconstruct_iter(tiny_model, small_phantom.image, stop_event=stop,
                              batch_voxels=1600))


def test_2d_image_and_latent_correspondence(tiny_model, small_phantom):
    img2d = small_phantom.image[6]
    res = reconstruct(tiny_model, img2d)
    assert res.reconstruction.shape == img2d.shape
    lat = encode(tiny_model, small_phantom.image)
    f = tiny_model.config.downsampling
    assert lat.mu.shape == (2, 12, 40 // f, 40 // f)
    assert lat.scale == (1.0, f, f)
    assert lat.sigma.min() > 0


def test_3d_configuration(small_phantom):
    res = fit(small_phantom.image, "tiny-3d", FitOptions(steps=4, eval_every=2))
    rec = reconstruct(res.model, small_phantom.image)
    assert rec.reconstruction.shape == small_phantom.image.shape
    lat = encode(res.model, small_phantom.image)
    assert lat.mu.shape == (2, 6, 20, 20)


def test_context_slices_configuration(small_phantom):
    cfg = ModelConfig(name="t25", channels=(8, 8), latent_channels=2, norm_num_groups=4,
                      patch_size=(32, 32), batch_size=2, context_slices=1)
    res = fit(small_phantom.image, cfg, FitOptions(steps=4, eval_every=2))
    assert res.model.net.encoder.blocks[0].conv.in_channels == 3
    assert reconstruct(res.model, small_phantom.image).reconstruction.shape == (12, 40, 40)


def test_normalisation_by_modality():
    ct = np.full((4, 8, 8), -1000.0)
    ct[:, 2:6, 2:6] = 40.0
    assert guess_modality(ct) == "CT"
    assert guess_modality(ct, "MR") == "MR"
    n = Normalizer.for_modality("CT").fit(ct)
    assert (n.low, n.high) == (-1000.0, 1000.0)
    np.testing.assert_allclose(n.inverse(n(ct)), ct, atol=1e-3)
    mr = np.random.default_rng(0).gamma(2.0, 100.0, size=(4, 16, 16))
    m = Normalizer.for_modality("MR").fit(mr)
    y = m(mr)
    assert -0.2 <= y.min() and y.max() <= 1.5
    inside = (y > -0.2) & (y < 1.5)
    np.testing.assert_allclose(m.inverse(y)[inside], mr[inside], rtol=1e-4)


def test_bad_fit_input():
    with pytest.raises(ValueError, match="NaN"):
        fit(np.full((4, 32, 32), np.nan, dtype=np.float32), "tiny", FitOptions(steps=1))
    with pytest.raises(ValueError, match="2D or 3D"):
        fit(np.zeros((2, 2, 8, 8)), "tiny", FitOptions(steps=1))
    with pytest.raises(ValueError, match="unknown configuration"):
        fit(np.zeros((4, 32, 32)), "huge", FitOptions(steps=1))
    with pytest.raises(ValueError, match="steps"):
        FitOptions(steps=0)


def test_configs_are_consistent():
    for name, cfg in CONFIGS.items():
        assert cfg.name == name
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.description


def test_the_default_fits_large_slices_on_larger_crops():
    cfg = CONFIGS["cpu-2d-fine"]
    assert cfg.patch_size == (64, 64) and cfg.large_slice_patch == (96, 96)
    assert cfg.for_slices([(30, 256, 256), (5, 128, 200)]) is cfg
    assert cfg.for_slices([(30, 256, 256), (48, 512, 512)]).patch_size == (96, 96)
    assert CONFIGS["cpu-2d"].for_slices([(48, 512, 512)]).patch_size == (96, 96)
    with pytest.raises(ValueError, match="large_slice_patch"):
        ModelConfig(name="x", spatial_dims=3, patch_size=(32, 32, 32),
                    large_slice_patch=(64, 64))
    rng = np.random.default_rng(0)
    for side, crop, decoder in ((96, (64, 64), 3), (264, (96, 96), 1)):
        vol = rng.normal(100, 20, (3, side, side)).astype(np.float32)
        res = fit(vol, "cpu-2d-fine", FitOptions(steps=3, device="cpu", eval_every=1))
        # The model records the crop it was fitted on; a round trip keeps the preset's rule.
        assert res.model.config.patch_size == crop
        # The decoder phase takes the same seconds on larger crops: 3 * (64 / 96)^2 steps.
        assert res.decoder_steps == decoder
        assert ModelConfig.from_dict(res.model.config.to_dict()) == res.model.config


def test_a_model_used_on_another_modality_is_noted(tiny_model, small_phantom, annotations):
    """A model fitted on MR used on a CT says so (CLI, dock, batch summary), where the VAE
    serves: reconstructions, clusters, rounds with its columns; not two-class rounds."""
    from napari_latentseg.engine.normalize import modality_note
    from napari_latentseg.pipeline import Scan, cluster_job, reconstruct_job, segment_job
    from napari_latentseg.runtime.progress import drive

    img = small_phantom.image.astype(np.float32)
    ct = (img - img.min()) / np.ptp(img) * 1400 - 1000  # air at -1000 HU
    assert tiny_model.info["modalities"] == ["MR"]
    assert modality_note(["MR"], img, "MR") is None and modality_note(None, ct, None) is None
    note = modality_note(["MR"], ct, None)
    assert "fitted on MR scans but this scan is CT (guessed from its intensities)" in note
    assert "this scan is CT:" in modality_note(["MR"], img, "CT")  # the header wins
    job = drive(reconstruct_job(tiny_model, Scan(ct, {}, None, "ct"), anomalies=False))
    assert job.notes == [note] and job.metrics["note"] == note
    job = drive(reconstruct_job(tiny_model, Scan(img, {}, "MR", "mr"), anomalies=False))
    assert job.notes == [] and "note" not in job.metrics
    assert drive(cluster_job(tiny_model, Scan(ct, {}, None, "ct"), k=3)).notes == [note]
    job = drive(segment_job(tiny_model, Scan(ct, {}, None, "ct"), annotations))
    assert len(np.unique(annotations)) > 3 and note in job.notes  # the VAE's columns served
    two = np.where(annotations == 1, 1, np.where(annotations > 1, 2, 0)).astype(np.uint8)
    assert note not in drive(segment_job(tiny_model, Scan(ct, {}, None, "ct"), two)).notes
