"""The denoiser's residual made a score: smoothed inside the head, normalised per slice, and
the scores of several readings (orientations, fits) combined by consensus.

Kept apart from :mod:`.anomaly_dae` (the networks and their fits) so both stay small; that
module re-exports these names.
"""

from __future__ import annotations

import numpy as np

__all__ = ["consensus", "residual_score", "slice_normalise", "snapshot_score", "SMOOTH_SIGMA"]

#: In-plane Gaussian sigma (voxels of the denoiser's 1.5 mm grid,
#: :data:`.anomaly_dae.TARGET_MM`, so 3 mm) of the residual,
#: taken with the residual set to 0 outside the head: what the net does there was never
#: fitted, and unmasked it leaked into the head's rim (session 27: mean best Dice of the
#: eight MR cases 0.208 -> 0.272; docs/anomaly_benchmarks.md, "The residual inside the head").
SMOOTH_SIGMA = 2.0


def slice_normalise(r: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Centre and scale each axial slice by its head voxels' median / MAD (the whole head's
    when a slice has fewer than 200 head voxels)."""
    r = r.astype(np.float32)
    med_all = float(np.median(r[mask]))
    mad_all = float(np.median(np.abs(r[mask] - med_all))) + 1e-6
    for k in range(len(r)):
        v = r[k][mask[k]]
        if v.size >= 200:
            med = float(np.median(v))
            mad = float(np.median(np.abs(v - med))) + 1e-6
        else:
            med, mad = med_all, mad_all
        r[k] = (r[k] - med) / mad
    return r


def snapshot_score(x: np.ndarray, out: np.ndarray, mask: np.ndarray,
                   sigma_z: float = 0.0) -> np.ndarray:
    """One denoised version's score: its residual inside the head (0 outside: what the net
    does there was never fitted), smoothed in-plane (:data:`SMOOTH_SIGMA`) and across slices
    at ``sigma_z`` (voxels; :func:`.anomaly_dae.z_sigma`), normalised per slice."""
    from scipy import ndimage

    err = np.where(mask, np.abs(x - out), np.float32(0))
    err = ndimage.gaussian_filter(err, (sigma_z, SMOOTH_SIGMA, SMOOTH_SIGMA)).astype(np.float32)
    return slice_normalise(err, mask)


def residual_score(x: np.ndarray, outs, mask: np.ndarray, sigma_z: float = 0.0) -> np.ndarray:
    """The score of denoised versions ``outs`` of ``x``: the mean of their
    :func:`snapshot_score` (``sigma_z``: across slices), normalised per slice again."""
    score = np.zeros(x.shape, dtype=np.float32)
    for out in outs:  # a snapshot ensemble
        score += snapshot_score(x, out, mask, sigma_z)
    # The mean of the snapshots' scores has a per-slice spread of its own (how much they
    # agree there): bring every slice to one scale again (session 27, part of the gain).
    return slice_normalise(score, mask)


def consensus(scores) -> np.ndarray:
    """The voxel-wise minimum of normalised scores (each in MAD units of its slice): a
    finding must stand out in every reading to stand out here.

    On a near-isotropic scan the denoiser reads the axial, coronal and sagittal slices, and
    self mode fits it twice. A lesion is unusual in every orientation and to every fit; a
    fold of grey matter reaching into the white matter looks like a blob in the slices across
    it but joins the cortex in the others, and what one fit's seed happens to heal the other
    need not. Summed, either reading's false finding survived; the minimum keeps what they
    agree on (session 43: mean best Dice on six 1.2 mm heads with grey-matter-intensity
    implants 0.256 -> 0.285; docs/anomaly_benchmarks.md, "Consensus of orientations").
    """
    out = None
    for s in scores:
        out = np.array(s, dtype=np.float32) if out is None else np.minimum(out, s)
    if out is None:
        raise ValueError("a consensus needs at least one score")
    return out
