"""The denoiser's score is drawn to the edge of what it found, with the scan as the guide: a
lesion's rim takes its centre's score, the tissue around it keeps its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

SHAPE = (24, 32, 32)


def _scan_and_bump(seed: int = 0):
    """Tissue at 100 with noise 5, a dark sphere (radius 6 voxels) at 40, and a score that is
    a smooth bump on the sphere's centre, half its peak at the sphere's edge."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    d = np.sqrt((z - 12) ** 2 + (y - 16) ** 2 + (x - 16) ** 2)
    lesion = d <= 6
    scan = np.where(lesion, 40.0, 100.0) + rng.normal(0, 5, SHAPE)
    score = (4.0 * np.exp(-(d / 7.0) ** 2)).astype(np.float32)
    return scan.astype(np.float32), score, lesion, np.ones(SHAPE, bool)


def test_rim_takes_the_centres_score_and_the_surround_keeps_its_own():
    from napari_latentseg.engine.anomaly_guide import guided_max

    scan, score, lesion, mask = _scan_and_bump()
    out = guided_max(score, scan, mask, (1.0, 1.0, 1.0), radius_mm=3.0, passes=2)
    rim = lesion & ~np.roll(lesion, 1, 0) | lesion & ~np.roll(lesion, -1, 2)
    outside = ~lesion & np.roll(lesion, 1, 0)  # the tissue just past the edge
    assert score[rim].mean() < 2.2  # the bump is low at the rim before
    assert out[rim].mean() > 3.0  # and close to the centre's peak after
    assert out[outside].mean() < score[outside].mean() + 0.3  # the surround barely moves
    # Thresholded where the bump crossed the edge, the guided score outlines the sphere.
    t = 2.5
    dice = lambda a: 2 * (a & lesion).sum() / (a.sum() + lesion.sum())  # noqa: E731
    assert dice(out > t) > dice(score > t) + 0.2
    assert dice(out > t) > 0.85


def test_a_score_never_falls_and_stays_inside_the_mask():
    from napari_latentseg.engine.anomaly_guide import guided_max

    scan, score, _, mask = _scan_and_bump(1)
    mask[:, :, :4] = False
    out = guided_max(score, scan, mask, (1.0, 1.0, 1.0))
    assert (out[mask] >= score[mask]).all()
    assert (out[~mask] == 0).all()
    assert out.dtype == np.float32 and out.shape == score.shape


def test_each_pass_is_the_maximum_over_the_ball():
    """Each voxel takes the largest of its own score and each neighbour's, weighed by their
    intensity difference, read from the scores the pass started with (a plain loop over
    every offset and voxel, on an anisotropic grid)."""
    from napari_latentseg.engine.anomaly_guide import _offsets, guided_max, noise_level

    rng = np.random.default_rng(4)
    shape, sp = (4, 9, 8), (2.0, 1.0, 1.5)
    scan = rng.normal(100, 5, shape).astype(np.float32)
    score = rng.gamma(1.0, size=shape).astype(np.float32)
    mask = rng.random(shape) > 0.2
    out = guided_max(score, scan, mask, sp, radius_mm=3.0, sigma_noise=2.0, passes=2)
    inv = -0.5 / (2.0 * noise_level(scan, mask)) ** 2
    cur = np.where(mask, score, 0).astype(np.float64)
    for _ in range(2):
        start = cur.copy()
        for v in zip(*np.nonzero(mask), strict=True):
            for o in _offsets(sp, 3.0):
                u = tuple(a - b for a, b in zip(v, o, strict=True))
                if all(0 <= a < n for a, n in zip(u, shape, strict=True)):
                    d = float(scan[v]) - float(scan[u])
                    cur[v] = max(cur[v], start[u] * np.exp(d * d * inv))
        cur[~mask] = 0
    np.testing.assert_allclose(out, cur, rtol=1e-5, atol=1e-6)

def test_thick_slices_and_flat_images_take_in_plane_neighbours_only():
    from napari_latentseg.engine.anomaly_guide import _offsets, guided_max, spacing3

    assert all(o[0] == 0 for o in _offsets((6.5, 0.8, 0.8), 3.6))
    assert len(_offsets((1.0, 1.0, 1.0), 1.0)) == 6
    assert len(_offsets((4.0, 4.0, 4.0), 3.6)) == 6  # a coarse scan: nearest neighbours
    assert spacing3((0.5, 0.7), flat=True)[0] == np.inf
    assert spacing3(None) == (1.0, 1.0, 1.0)
    assert _offsets(spacing3((0.5, 0.7), flat=True), 2.0) and \
        all(o[0] == 0 for o in _offsets(spacing3((0.5, 0.7), flat=True), 2.0))
    # One hot slice does not spread to the next on a flat stack.
    score = np.zeros((2, 16, 16), np.float32)
    score[0, 8, 8] = 5.0
    out = guided_max(score, np.ones_like(score), np.ones(score.shape, bool),
                     spacing3((1.0, 1.0), flat=True))
    assert out[1].max() == 0 and out[0, 8, 10] == pytest.approx(5.0)


def test_rank_like_keeps_the_order_and_takes_the_values():
    from napari_latentseg.engine.anomaly_guide import rank_like

    mask = np.array([True, True, True, False, True])
    score = np.array([5.0, 1.0, 3.0, 9.0, 2.0], np.float32)
    ref = np.array([0.1, 0.4, 0.2, 7.0, 0.3], np.float32)
    np.testing.assert_allclose(rank_like(score, ref, mask), [0.4, 0.1, 0.3, 0.0, 0.2])


def test_bad_shapes_and_cancel_are_clear():
    from napari_latentseg.engine.anomaly_guide import guided_max
    from napari_latentseg.runtime.progress import Cancelled

    scan, score, _, mask = _scan_and_bump()
    with pytest.raises(ValueError, match="one 3D shape"):
        guided_max(score, scan[:-1], mask)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        guided_max(score, scan, mask, stop_event=stop)


def test_the_engine_guides_the_denoisers_score_on_mr_only(small_phantom, monkeypatch):
    """``anomaly.GUIDE`` switches the step (the benchmark's ablation); CT scores skip it."""
    import napari_latentseg.engine.anomaly as A
    import napari_latentseg.engine.anomaly_dae as D
    import napari_latentseg.engine.anomaly_guide as G

    seen = []
    real = G.guided_max

    def spy(score, *a, **k):
        out = real(score, *a, **k)
        seen.append((score.copy(), out))
        return out

    monkeypatch.setattr(G, "guided_max", spy)
    monkeypatch.setattr(D, "DAE_FITS_THIN", 1)
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "3")
    kw = dict(modality="MR", method="dae", spacing=small_phantom.spacing, error_map=False,
              lower_surface=False)
    on = A.anomaly_map(None, small_phantom.image, **kw)
    assert len(seen) == 1
    before, after = seen[0]
    assert (after >= before).all() and (after > before + 1e-3).any()
    # The guided order, the calibrated values: the threshold flags as much of the head.
    np.testing.assert_array_equal(on.score, G.rank_like(after, before, on.mask))
    monkeypatch.setattr(A, "GUIDE", False)
    off = A.anomaly_map(None, small_phantom.image, **kw)
    assert len(seen) == 1
    np.testing.assert_array_equal(off.score, before)
    for t in (0.5, 1.0, on.threshold):
        assert abs(int((on.score > t).sum()) - int((off.score > t).sum())) <= 2
    monkeypatch.setattr(A, "GUIDE", True)
    A.anomaly_map(None, small_phantom.image, modality="CT", method="contrast",
                  spacing=small_phantom.spacing, error_map=False)
    assert len(seen) == 1


def test_the_guide_leaves_the_faded_shell_at_zero(small_phantom, monkeypatch):
    """Guided after the surface fade: voxels the fade sets to 0 neither give nor take a
    score, so the guided map finds nothing there either."""
    from napari_latentseg.engine.anomaly_guide import finish_mr
    from napari_latentseg.engine.anomaly_masks import head_mask, surface_fade

    img = small_phantom.image.astype(np.float32)
    mask = head_mask(img, "MR")
    sp = (2.0, 2.0, 2.0)
    score = np.where(mask, np.random.default_rng(0).random(img.shape) * 4, 0).astype(np.float32)
    out = finish_mr(score, img, mask, sp, False, (4.0, 8.0), True)
    shell = mask & (surface_fade(mask, sp, 4.0, 8.0) == 0)
    assert shell.any() and (out[shell] == 0).all() and (out[mask & ~shell] > 0).any()
    np.testing.assert_array_equal(finish_mr(score, img, mask, sp, False, None, False), score)


def test_on_thick_slices_a_finding_must_carry_into_a_neighbouring_slice(monkeypatch):
    """Thick slices are read one at a time: a blob that stands out on one slice only (a fold
    cut obliquely) falls below one that stands out on two (a lesion), at the same peak; a
    score may stand at most 1.5x above its stronger neighbour. The values stay the faded
    score's by rank, thin slices and the switch leave the score as it was, and the first
    and last slices compare with their one neighbour."""
    import napari_latentseg.engine.anomaly_guide as G

    score = np.zeros((6, 12, 12), np.float32)
    score[2, 2:5, 2:5] = 4.0  # one slice
    score[3:5, 7:10, 7:10] = 4.0  # two slices
    score[0, 2:5, 7:10] = 4.0  # the first slice, with its neighbour below
    score[1, 2:5, 7:10] = 2.0
    across = G.across_slices(score, ratio=1.5)
    assert (across[2, 2:5, 2:5] == 0).all()
    np.testing.assert_allclose(across[3:5, 7:10, 7:10], 4.0)
    np.testing.assert_allclose(across[0, 2:5, 7:10], 3.0)  # 1.5 x its one neighbour
    np.testing.assert_allclose(across[1, 2:5, 7:10], 2.0)  # under 1.5 x 4: kept

    scan = np.full(score.shape, 100.0, np.float32)
    mask = np.ones(score.shape, bool)
    thick, thin = (4.0, 1.0, 1.0), (1.0, 1.0, 1.0)
    assert G.thick_slices(thick) and not G.thick_slices(thin)
    assert not G.thick_slices(thick, flat=True) and not G.thick_slices(None)
    out = G.finish_mr(score, scan, mask, thick, False, None, False)
    assert out[2, 3, 3] < out[3, 8, 8]
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(score.ravel()))
    np.testing.assert_array_equal(G.finish_mr(score, scan, mask, thin, False, None, False),
                                  score)
    np.testing.assert_array_equal(  # what anomaly_map asks for CT and other methods
        G.finish_mr(score, scan, mask, thick, False, None, False, across=False), score)
    monkeypatch.setattr(G, "ACROSS_SLICES", False)
    np.testing.assert_array_equal(G.finish_mr(score, scan, mask, thick, False, None, False),
                                  score)


def test_a_normative_map_takes_the_geometric_mean_across_thick_slices(monkeypatch):
    """The normative rule (:data:`ACROSS_NORMATIVE`): the geometric mean of a score and its
    stronger neighbour across slices, so a one-slice finding falls to 0 and a two-slice one
    keeps its value; ``across="normative"`` follows the switch, an unknown rule is an error."""
    import napari_latentseg.engine.anomaly_guide as G

    score = np.zeros((5, 8, 8), np.float32)
    score[1, 1:3, 1:3] = 4.0  # one slice
    score[2:4, 5:7, 5:7] = 4.0  # two slices
    score[3, 1:3, 1:3] = 1.0  # beside a weaker neighbour above and below: sqrt(1 x 1)
    score[4, 1:3, 1:3] = 1.0
    geo = G.across_slices(score, rule="geo")
    assert (geo[1, 1:3, 1:3] == 0).all()
    np.testing.assert_allclose(geo[2:4, 5:7, 5:7], 4.0)
    np.testing.assert_allclose(geo[3, 1:3, 1:3], 1.0)
    np.testing.assert_allclose(geo[0, 1:3, 1:3], 0.0)  # sqrt(0 x 4): a score of 0 stays 0
    with pytest.raises(ValueError, match="rule across slices"):
        G.across_slices(score, rule="mean")

    scan = np.full(score.shape, 100.0, np.float32)
    mask = np.ones(score.shape, bool)
    thick = (4.0, 1.0, 1.0)
    monkeypatch.setattr(G, "ACROSS_NORMATIVE", "geo")
    norm = G.finish_mr(score, scan, mask, thick, False, None, False, across="normative")
    np.testing.assert_array_equal(norm, G.rank_like(geo, score, mask))
    monkeypatch.setattr(G, "ACROSS_NORMATIVE", "cap")  # self mode's rule, as it was
    np.testing.assert_array_equal(
        G.finish_mr(score, scan, mask, thick, False, None, False, across="normative"),
        G.finish_mr(score, scan, mask, thick, False, None, False))
