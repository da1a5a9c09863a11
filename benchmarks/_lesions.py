"""Synthetic lesions for the anomaly benchmarks: spheres carrying a scan's own noise, and
where they go in a brain MR (the cerebrum's white matter)."""

from __future__ import annotations

import numpy as np


def noise_sigma(v: np.ndarray, region: np.ndarray) -> float:
    """The scan's noise in ``region``: the engine's estimate (robust spread of the in-plane
    median-filter residual, :func:`~napari_latentseg.engine.anomaly_guide.noise_level`)."""
    from napari_latentseg.engine.anomaly_guide import noise_level

    return noise_level(v, region)


def implant(v, region, spacing, level, radii_mm, sigma, seed, avoid=None, margin_mm=1.0,
            centres=None):
    """Spheres with a soft edge at ``level`` + the scan's noise, inside ``region`` (centred in
    ``centres`` too where given); returns (volume, mask)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing)
    out = v.copy()
    truth = np.zeros(v.shape, bool)
    grid = np.indices(v.shape).astype(np.float32)
    free = region.copy() if avoid is None else region & ~avoid
    for r in radii_mm:
        # Centres deep enough in the region that the sphere stays inside.
        inner = ndimage.distance_transform_edt(free, sampling=sp) > r + margin_mm
        inner &= ~ndimage.binary_dilation(truth, iterations=3)
        if centres is not None:
            inner &= centres
        cand = np.argwhere(inner)
        if not len(cand):
            cand = np.argwhere(free & ~truth)
        c = cand[rng.integers(len(cand))]
        d = np.sqrt(sum(((grid[i] - c[i]) * sp[i]) ** 2 for i in range(3)))
        a = 1.0 / (1.0 + np.exp((d - r) / (0.5 * sp[1:].mean())))
        tex = level + sigma * rng.normal(size=v.shape).astype(np.float32)
        out = out * (1 - a) + tex * a
        truth |= a >= 0.5
    return out.astype(np.float32), truth


def white_matter(v, head, tumour, sp, cv_max=0.25, tumour_mm=15.0):
    """(cerebrum, white matter, scored voxels) for lesions centred in the cerebrum's white
    matter and lying inside the cerebrum.

    The cerebrum's slices are those whose interior (> 15 mm inside the head in-plane) is
    homogeneous (coefficient of variation <= ``cv_max``: brain1 11-21, brain2 10-18; the skull
    base's sinuses, bone and orbits lift it to 0.3-0.6); white matter is where the
    3 mm-smoothed image is above the interior's median there (T1). Centres stay ``tumour_mm``
    from the real tumour, and the tumour grown by 10 mm is not scored (the head elsewhere is).
    """
    from scipy import ndimage

    depth = np.stack([ndimage.distance_transform_edt(h, sampling=sp[1:]) for h in head])
    inner = depth > 15.0
    cv = np.array([v[z][inner[z]].std() / max(float(v[z][inner[z]].mean()), 1e-6)
                   if inner[z].sum() > 50 else np.inf for z in range(v.shape[0])])
    cerebrum = inner & (cv <= cv_max)[:, None, None]
    smooth = ndimage.gaussian_filter(v, (0, 3.0 / sp[1], 3.0 / sp[2]))
    wm = cerebrum & (smooth > np.median(smooth[cerebrum]))
    near = ndimage.distance_transform_edt(~tumour, sampling=sp)
    far = near > tumour_mm
    return cerebrum & far, wm & far, head & (near > 10.0)


def midline(v, head, sp, within_mm=3.0):
    """Voxels within ``within_mm`` (in-plane) of the head's fitted mid-sagittal plane: where
    the denoiser's lowering of findings mirrored on both sides must leave lesions alone."""
    from napari_latentseg.engine.anomaly_symmetry import fit_midplane, plane_distance

    _, p, u = fit_midplane(v, head, sp)
    near = plane_distance(v.shape[1:], p, u, sp) <= within_mm
    return np.broadcast_to(near[None], v.shape) & head
