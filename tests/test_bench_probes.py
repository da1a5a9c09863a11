"""The benchmark probes: they patch the engine only while they run, as they say, the
inpainting prototype hides every voxel once, and the momentum rules average where they say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _dae_noise  # noqa: E402


def _roughness(res) -> float:
    """Mean |neighbour difference| / std of the patched coarse noise on a 64 x 64 crop."""
    import torch

    import napari_latentseg.engine.anomaly_dae as D

    with _dae_noise.patched(res, 0.2):
        # As the engine's noisy_batch calls it: its own cycle's ``res`` is overridden.
        n = D._coarse_noise(8, 64, torch.ones(8, 1, 64, 64), torch.Generator().manual_seed(0),
                            res=D.DAE_NOISE_RES[-1])
    n = n.numpy()
    assert n.shape == (8, 1, 64, 64)
    return float(np.abs(np.diff(n, axis=-1)).mean() / n.std())


def test_noise_patch_sets_the_grid_and_restores_the_engine():
    import napari_latentseg.engine.anomaly_dae as D

    original = D._coarse_noise
    coarse, fine = _roughness(4), _roughness(16)
    assert D._coarse_noise is original  # restored after each use
    # Cells of 16 voxels vary about four times slower than cells of 4.
    assert fine > 2.5 * coarse
    mixed = _roughness((4, 16))
    assert coarse * 0.9 <= mixed <= fine * 1.1


def test_inpainting_passes_hide_every_voxel_exactly_once():
    import _inpaint

    hole = 4
    passes = [_inpaint.checkerboard((20, 27), hole, oy, ox)
              for oy, ox in ((0, 0), (0, hole), (hole, 0), (hole, hole))]
    assert np.array_equal(np.sum(passes, axis=0), np.ones((20, 27)))
    # Each hole is hole x hole and keeps a visible border of the same width around it.
    first = passes[0]
    assert first[:hole, :hole].all() and not first[hole : 2 * hole, :].any()


def test_momentum_rules_average_only_where_they_say():
    """Session 6's momentum rules: none within the radius of the newest stroke ("far"), only
    where the object's probability fell ("shrink"), only at voxels that just changed
    ("unsettled")."""
    import dataclasses

    import _loop_methods as lm

    shape = (3, 8, 8)
    feats = np.zeros(shape + (lm.N_MULTISCALE + 2,), np.float16)
    strokes = np.zeros(shape, np.int64)
    strokes[1, 0, 0] = 1
    strokes[1, 6, 6] = 3  # the newest stroke (the second correction)
    o = lm.LoopOptions(momentum=0.5, momentum_where="far", momentum_radius=2.0)
    loop = lm.ForestLoop(feats, (1.0, 1.0, 1.0), o, 0.0)
    loop.prev_probs = np.full((2,) + shape, 0.5, np.float32)
    m = loop._momentum_weight(loop.prev_probs, [1, 2], strokes)
    assert m[1, 6, 6] == 0 and m[1, 4, 6] == 0 and m[1, 0, 0] == 0.5

    loop.opts = dataclasses.replace(o, momentum_where="shrink")  # class 2 is the object
    probs = loop.prev_probs.copy()
    probs[1, :, 0] = 0.2  # the object's probability falls in row 0 only
    m = loop._momentum_weight(probs, [1, 2], strokes)
    assert (m[:, 0] == 0.5).all() and (m[:, 1:] == 0).all()

    loop.opts = dataclasses.replace(o, momentum_where="unsettled")
    assert loop._momentum_weight(probs, [1, 2], strokes) == 0.5  # the first correction
    loop.prev_prev = np.ones(shape, np.int64)
    loop.prev = loop.prev_prev.copy()
    loop.prev[2] = 2
    m = loop._momentum_weight(probs, [1, 2], strokes)
    assert (m[2] == 0.5).all() and (m[:2] == 0).all()


def test_engine_ablations_patch_the_forest_only_during_a_round():
    """The benchmark's pre-session-8 engine (no bootstrap floor) and prototypes of every
    column: set for the round, restored after it, and the round says what it used."""
    import _loop_methods as lm

    import napari_latentseg.engine.segment.forest as forest
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.segment import FeatureCache

    ph = make_phantom((6, 32, 32), spacing=(4.0, 4.0, 4.0), seed=1)
    ann = np.zeros(ph.labels.shape, np.uint8)
    ann[3] = ph.labels[3]  # one annotated slice, every class
    seen = {}
    original = forest.fit_forest

    def spy(*args, **kwargs):
        seen.update(floor=forest.TREE_FLOOR_WITHOUT_PRIOR, cols=forest.PROTOTYPE_COLUMNS)
        return original(*args, **kwargs)

    forest.fit_forest = spy
    try:
        m = lm.VAEDefault(None, ph.image.astype(np.float32), "MR", 0.0, FeatureCache(),
                          tree_floor=False, proto_columns="all")
        r = m(ann, (ann > 0).astype(np.int64))
    finally:
        forest.fit_forest = original
    assert seen == {"floor": False, "cols": "all"}
    assert forest.TREE_FLOOR_WITHOUT_PRIOR is True and forest.PROTOTYPE_COLUMNS == "ilastik"
    painted = ann > 0
    np.testing.assert_array_equal(r.labels[painted], ann[painted])


def test_extra_trees_and_contrast_switches_serve_one_round_only():
    """Session 18's probes: extremely randomised trees and the centre-surround columns are
    used during the benchmark's round and the engine's defaults come back after it."""
    import _loop_methods as lm
    from sklearn.ensemble import ExtraTreesClassifier

    import napari_latentseg.engine.segment.forest as forest
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.segment import FeatureCache

    ph = make_phantom((6, 32, 32), spacing=(4.0, 4.0, 4.0), seed=1)
    ann = np.zeros(ph.labels.shape, np.uint8)
    ann[3] = ph.labels[3]
    fitted = []
    original = forest.fit_forest

    def spy(*args, **kwargs):
        fitted.append(original(*args, **kwargs))
        return fitted[-1]

    forest.fit_forest = spy
    try:
        m = lm.VAEDefault(None, ph.image.astype(np.float32), "MR", 0.0, FeatureCache(),
                          forest_kind="extra", contrast_columns=True)
        r = m(ann, (ann > 0).astype(np.int64))
    finally:
        forest.fit_forest = original
    assert fitted and all(isinstance(f, ExtraTreesClassifier) for f in fitted)
    assert fitted[-1].n_features_in_ == 24 + len(np.unique(ann[ann > 0]))  # + prototypes
    assert forest.FOREST_KIND == "random" and forest.CONTRAST_WITHOUT_VAE is False
    painted = ann > 0
    np.testing.assert_array_equal(r.labels[painted], ann[painted])


def test_self_calibration_probe_replays_the_engine_and_restores_it(tmp_path, monkeypatch):
    """The probe re-calibrates the recorded raw map; its row for the engine's own body must
    equal the engine's map (checked inside), and the engine is left as it was."""
    import json

    import _self_calibration as sc

    import napari_latentseg.engine.anomaly as A
    import napari_latentseg.engine.anomaly_guide as G

    before = (A.calibrate, A._calibrated)
    monkeypatch.setattr(sc, "HERE", tmp_path)
    sc.main(["0", "phantom-h7"])
    assert (A.calibrate, A._calibrated) == before
    assert A.GUIDE and G.ACROSS_SLICES  # the steps it switches off are back on
    row = json.loads((tmp_path / "results" / "self-calibration.jsonl").read_text())
    assert row["case"] == "phantom-h7" and row["method"] == "dae"
    assert set(row["variants"]) == {f"{b}/{f:g}{t}" for b in sc.BODIES for f in sc.FPRS
                                    for t in sc.SURFACES}
    assert all(v["dice_thr"] is None and v["fp_pct"] >= 0 for v in row["variants"].values())


def test_anomaly_benchmark_split_keeps_its_names_and_checks_the_device():
    """``bench_anomaly`` re-exports the cases' and metrics' names the probes use, its oracle
    window finds an exact intensity band, and ``--device`` refuses what cannot run here."""
    import _anomaly_cases
    import _anomaly_metrics
    import bench_anomaly as B
    import pytest
    import torch

    assert B.case_masks is _anomaly_cases.case_masks and B.load is _anomaly_cases.load
    assert B.curve_metrics is _anomaly_metrics.curve_metrics
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 100, size=(4, 16, 16)).astype(np.float32)
    truth = (v > 40) & (v < 60)
    mask = np.ones(v.shape, bool)
    assert B.oracle_window(v, truth, mask) > 0.97
    best, ap = B.curve_metrics(-np.abs(v - 50), truth, mask)
    assert best > 0.99 and ap > 0.99
    assert B._resolved("cpu") == "cpu"
    assert B._resolved("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit, match="auto, cpu, cuda"):
        B._resolved("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            B._resolved("cuda")


def test_context_denoisers_score_a_block_and_restore_the_engine(monkeypatch):
    """Session 41's probes: the denoiser with neighbouring slices as input (2.5D) and in 3D
    run through the engine's self-mode path on a small near-isotropic phantom, score an
    implanted dark block above the tissue, and leave the engine's UNet and score in place."""
    import _dae_context

    import napari_latentseg.engine.anomaly as A
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.data.phantom import make_phantom

    ph = make_phantom((36, 40, 44), (2.0, 2.0, 2.0), seed=3, n_lesions=0)
    img = ph.image.astype(np.float32)
    truth = np.zeros(img.shape, bool)
    truth[18:24, 16:22, 16:22] = True
    truth &= ph.labels == 6
    img[truth] = 250.0  # far darker than white matter (720), as the engine's own test
    tissue = np.isin(ph.labels, (5, 6)) & ~truth
    unet, stats_iter = D._unet, A.dae_stats_iter
    for variant, steps in (("2.5d:1", "30"), ("3d", "10")):
        monkeypatch.setenv("LATENTSEG_DAE_STEPS", steps)
        with _dae_context.patched(variant):
            assert A.dae_stats_iter is not stats_iter
            res = A.anomaly_map(None, img, modality="MR", method="dae", spacing=ph.spacing,
                                lower_surface=False)
        assert res.score.shape == img.shape
        assert np.median(res.score[truth]) > np.percentile(res.score[tissue], 90), variant
        assert D._unet is unet and A.dae_stats_iter is stats_iter


def test_dae_seed_probe_replays_the_engine_and_restores_it(small_phantom, tmp_path):
    """`_dae_seeds.py`: a saved fit scored again gives the engine's own map; two fits combine
    into a map of their own; the engine's denoiser is restored after each."""
    import _dae_seeds

    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly import anomaly_map

    v = small_phantom.image.astype(np.float32)
    case = {"name": "tiny", "v": v, "truth": small_phantom.labels == 7, "mod": "MR",
            "sp": small_phantom.spacing}
    original = D.dae_raw_iter
    rows = [_dae_seeds._fit(case, s, tmp_path / f"tiny_s{s}.npz") for s in (0, 1)]
    assert D.dae_raw_iter is original
    engine = anomaly_map(None, v, modality="MR", spacing=case["sp"], error_map=False)
    replay = _dae_seeds._combo(case, [tmp_path / "tiny_s0.npz"], "min", "single 0")
    assert D.dae_raw_iter is original
    assert replay["best_dice"] == rows[0]["best_dice"]
    assert replay["n_candidates"] == rows[0]["n_candidates"] == len(engine.candidates)
    both = _dae_seeds._combo(case, [tmp_path / f"tiny_s{s}.npz" for s in (0, 1)], "min",
                             "min 0,1")
    assert D.dae_raw_iter is original and both["variant"] == "min 0,1"
    assert 0.0 <= both["best_dice"] <= 1.0


def test_dae_seed_probe_views_are_equivariant():
    """`_dae_seeds._viewed`: a denoiser read through flipped (and transposed) views, its
    outputs mapped back and averaged, answers a flipped slice with the flipped answer, and is
    not the plain reading."""
    import _dae_seeds
    import torch

    from napari_latentseg.engine.anomaly_dae import _unet

    torch.manual_seed(0)
    net = _unet().eval()
    x = torch.randn(2, 1, 16, 24)
    sq = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        for name in ("x", "xy"):
            v = _dae_seeds._viewed(net, _dae_seeds.VIEWS[name])
            assert torch.allclose(v(torch.flip(x, [-1])), torch.flip(v(x), [-1]), atol=1e-5)
        assert not torch.allclose(_dae_seeds._viewed(net, _dae_seeds.VIEWS["x"])(x), net(x))
        d8 = _dae_seeds._viewed(net, _dae_seeds.VIEWS["d8"])
        assert torch.allclose(d8(sq.transpose(-1, -2)), d8(sq).transpose(-1, -2), atol=1e-5)


def test_dae_seed_probe_flips_whole_samples_of_a_batch():
    """`_dae_seeds._flipping`: each sample of a training batch is flipped left to right or
    left alone, the same way in the noisy crop, the clean crop and the mask."""
    import _dae_seeds
    import torch

    base = torch.arange(64 * 24, dtype=torch.float32).reshape(64, 1, 4, 6)

    def batch_fn():
        return base, base + 1, base * 2

    noisy, clean, mask = _dae_seeds._flipping(batch_fn, seed=0)()
    flipped = [bool(torch.equal(noisy[i], base[i].flip(-1))) for i in range(64)]
    for i, f in enumerate(flipped):
        expect = base[i].flip(-1) if f else base[i]
        assert torch.equal(noisy[i], expect)
        assert torch.equal(clean[i], expect + 1) and torch.equal(mask[i], expect * 2)
    assert 16 < sum(flipped) < 48


def test_contrast_detail_spheres_sit_apart_at_their_contrast():
    """`_contrast_detail`: five disjoint spheres inside the region, each at its own contrast
    in the requested direction, and per-sphere rows that read a score and flags on them."""
    import _contrast_detail as cd

    rng = np.random.default_rng(0)
    v = (500 + 10 * rng.normal(size=(8, 80, 80))).astype(np.float32)
    region = np.zeros(v.shape, bool)
    region[1:7, 8:72, 8:72] = True
    sp = (4.0, 1.0, 1.0)
    for sign in (-1, 1):
        vol, masks = cd.graded_spheres(v, region, region, sp, 500.0, 10.0, sign, 4.0, 0)
        assert len(masks) == len(cd.KS) and all(m.sum() > 20 for m in masks)
        assert not np.any(np.sum(masks, axis=0) > 1) and all((m <= region).all() for m in masks)
        score = np.zeros(v.shape, np.float32)
        score[masks[-1]] = 5.0
        rows = cd.sphere_rows(vol, masks, score, score > 3, 10.0)
        contrast = [r["contrast_sigma"] for r in rows]
        assert [np.sign(c) for c in contrast] == [sign] * len(cd.KS)
        # The soft edge and the ring's distance dilute each sphere's step, not its order.
        assert abs(contrast[-1]) > abs(contrast[0]) and abs(contrast[-1]) > 7
        assert [r["flagged"] for r in rows] == [0.0] * (len(cd.KS) - 1) + [1.0]
        assert rows[-1]["peak"] == 5.0 and rows[0]["peak"] == 0.0
