"""Where the denoiser's findings are lowered: mirrored across the head's mid-sagittal plane
(``engine.anomaly_symmetry``) and near the head's surface (``anomaly_masks.surface_fade``)."""

from __future__ import annotations

import numpy as np
import pytest


def _head(angle_deg: float = 6.0, shift=(3.0, -4.0), shape=(4, 96, 96), seed=0):
    """An elliptic 'head' with a textured interior that is mirror-symmetric about a line
    through the centre (+ ``shift``) at ``angle_deg`` from the y axis; returns (image, mask,
    point, direction)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, h, w = shape
    p = np.array([h / 2 + shift[0], w / 2 + shift[1]])
    th = np.deg2rad(angle_deg)
    u = np.array([np.cos(th), np.sin(th)])  # along the midline
    n = np.array([-u[1], u[0]])  # across it
    yy, xx = np.mgrid[:h, :w].astype(float)
    a = (yy - p[0]) * u[0] + (xx - p[1]) * u[1]  # along
    b = (yy - p[0]) * n[0] + (xx - p[1]) * n[1]  # across (signed)
    mask2 = (a / 40) ** 2 + (b / 32) ** 2 < 1
    # A texture that depends on |b| only: the same on both sides.
    tex = ndimage.gaussian_filter(rng.normal(size=(200, 64)), 2)
    ai = np.clip(np.round(a + 100).astype(int), 0, 199)
    bi = np.clip(np.round(np.abs(b)).astype(int), 0, 63)
    img2 = np.where(mask2, 1.0 + 0.5 * tex[ai, bi] / tex.std(), 0.0)
    img = np.repeat(img2[None], z, 0).astype(np.float32)
    return img, np.repeat(mask2[None], z, 0), p, u, (a, b)


def test_the_search_correlates_as_mirroring_the_volume_would():
    """The plane search interpolates the twins at the mask's voxels only; it must score each
    plane as mirroring the whole volume does, planes reaching past the slice's edge too."""
    from napari_latentseg.engine.anomaly_symmetry import _corr, _Mirrored

    rng = np.random.default_rng(3)
    s = rng.normal(size=(3, 30, 23)).astype(np.float32)
    mask = rng.random(s.shape) > 0.4
    mirrored = _Mirrored(s, mask)
    for _ in range(50):
        p, u = rng.uniform(-15, 45, 2), rng.normal(size=2)
        assert mirrored.corr(p, u) == pytest.approx(_corr(s, mask, p, u), abs=1e-6)

def test_the_plane_is_found():
    from napari_latentseg.engine.anomaly_symmetry import fit_midplane

    img, mask, p, u, _ = _head()
    c, pf, uf = fit_midplane(img, mask, (5.0, 1.0, 1.0))
    assert c > 0.9
    cos = abs(float(np.dot(uf / np.linalg.norm(uf), u)))
    assert cos > np.cos(np.deg2rad(2.0))  # the direction within 2 degrees
    n = np.array([-u[1], u[0]])
    assert abs(float(np.dot(pf - p, n))) < 1.5  # the line within 1.5 voxels


def test_twins_are_lowered_single_and_midline_findings_kept():
    from napari_latentseg.engine.anomaly_symmetry import lower_bilateral

    img, mask, p, u, (a, b) = _head()
    score = np.zeros(img.shape, np.float32)
    blob = lambda a0, b0: ((a - a0) ** 2 + (b - b0) ** 2) < 16  # noqa: E731
    twins = blob(10, 20) | blob(10, -20)  # a pair 20 voxels either side of the plane
    single = blob(-15, 22)  # one side only
    midline = blob(25, 0)
    for m in (twins, single, midline):
        score[:, m] = 5.0
    info: dict = {}
    out = lower_bilateral(score, img, mask, (5.0, 1.0, 1.0), info=info)
    assert info["bilateral_lowered"] and info["symmetry"] > 0.9
    assert out[:, twins].max() < 0.5
    assert out[:, single].min() == pytest.approx(5.0)
    assert out[:, midline].min() == pytest.approx(5.0)
    assert np.allclose(out[:, ~(twins | single | midline)], 0.0)


def test_an_asymmetric_scan_is_left_alone():
    from napari_latentseg.engine.anomaly_symmetry import MIN_CORRELATION, lower_bilateral

    rng = np.random.default_rng(3)
    from scipy import ndimage

    img = ndimage.gaussian_filter(rng.normal(size=(3, 64, 64)), (0, 3, 3)).astype(np.float32)
    mask = np.ones(img.shape, bool)
    score = rng.normal(size=img.shape).astype(np.float32)
    info: dict = {}
    out = lower_bilateral(score, img, mask, (3.0, 1.0, 1.0), info=info)
    assert info["symmetry"] < MIN_CORRELATION and not info["bilateral_lowered"]
    np.testing.assert_array_equal(out, score)


def test_surface_fade_rises_from_the_surface_and_ignores_the_volumes_ends():
    """0 within ``inner_mm`` of the mask's outside, 1 from ``outer_mm``, linear between (3D
    distance in mm); a mask cut by the array's first slice has no surface there."""
    from napari_latentseg.engine.anomaly_masks import surface_fade

    mask = np.zeros((6, 40, 40), bool)
    mask[:, 5:35, 5:35] = True  # touches z = 0 and z = 5: cut by the volume, not a surface
    w = surface_fade(mask, (10.0, 2.0, 2.0), 4.0, 12.0)
    assert w.dtype == np.float32 and (w[~mask] == 0).all()
    assert w[3, 5, 20] == 0 and w[3, 6, 20] == 0  # 2 mm inside: within inner_mm
    assert w[3, 9, 20] == pytest.approx((10 - 4) / 8)  # 10 mm from the outside (y = 4)
    assert w[3, 20, 20] == 1 and w[0, 20, 20] == 1  # deep in-plane, at the volume's end too
    with pytest.raises(ValueError, match="inner_mm < outer_mm"):
        surface_fade(mask, None, 5.0, 5.0)


def test_denoiser_findings_fade_at_the_head_surface(small_phantom, monkeypatch):
    """On MR the denoiser's score is 0 within SURFACE_MM[0] of the head's outside, where
    ``lower_surface=False`` still scores; no candidate lies there; the result says so."""
    import napari_latentseg.engine.anomaly as A
    from napari_latentseg.engine.anomaly_masks import surface_fade

    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "3")
    img = small_phantom.image.astype(np.float32)
    kw = dict(modality="MR", method="dae", spacing=small_phantom.spacing, fpr=0.05)
    faded = A.anomaly_map(None, img, **kw)
    kept = A.anomaly_map(None, img, lower_surface=False, **kw)
    assert faded.info["surface_mm"] == A.SURFACE_MM and kept.info["surface_mm"] is None
    shell = faded.mask & (surface_fade(faded.mask, small_phantom.spacing, *A.SURFACE_MM) == 0)
    assert shell.any() and (faded.score[shell] == 0).all() and (faded.labels[shell] == 0).all()
    assert (kept.score[shell] > 0).mean() > 0.5
    deep = faded.mask & ~shell
    assert (faded.score[deep] > 0).any()
