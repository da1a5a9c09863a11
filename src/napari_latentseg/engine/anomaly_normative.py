"""The normative denoiser: several fits on a healthy cohort, the one that best finds spheres
implanted in the cohort's own scans kept.

A denoiser fitted on other heads swings with its seed far more than with its length: on a
synthetic 1.2 mm head with eight grey-matter-intensity spheres in its white matter, three
fits of the recipe on the same two healthy heads found them at 0.149, 0.155 and 0.300 mean
best Dice, six of twice the length at 0.067-0.284 (session 42, docs/anomaly_benchmarks.md,
"Choosing the normative denoiser's fit"). Averaging fits pulls a good one down to the
others; picking one needs a signal without labels. The
cohort is healthy, so lesions can be made there: :func:`synthetic_spheres` blends spheres
of another head voxel's intensity (with the scan's own noise) deep inside each checked scan,
and the fit whose score ranks them highest (average precision) is the one kept.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

import numpy as np

from .anomaly_dae import dae_score_iter, fit_dae_iter

__all__ = ["check_precision", "fit_normative_dae_iter", "synthetic_spheres",
           "CHECK_RADII_MM", "CHECK_SCANS", "NORMATIVE_FITS"]

#: Fits of the cohort's denoiser, seeds ``seed``, ``seed + 1``...; the best by the check
#: is kept (its snapshots alone go into the model file). Each fit is the self-mode recipe's
#: length (600 steps a cycle made no better fits, session 42).
NORMATIVE_FITS = 3
#: Radii (mm) of the check's spheres, one sphere each.
CHECK_RADII_MM = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5)
#: Spheres sit at least this deep inside the head (mm), away from the surface the score
#: fades at and from the skull.
CHECK_INSET_MM = 20.0
#: Scans of the cohort the check scores (the first ones): each costs a scoring per fit.
CHECK_SCANS = 2
_CHECK_SEED = 4242


def synthetic_spheres(x: np.ndarray, mask: np.ndarray, spacing, seed: int = 0,
                      radii_mm=CHECK_RADII_MM) -> tuple[np.ndarray, np.ndarray]:
    """``x`` with spheres of radii ``radii_mm`` blended in deep inside ``mask``; returns
    (volume, sphere mask).

    Each sphere takes the 2-voxel-smoothed intensity of a random head voxel (another
    tissue's, or the same one's: then it is invisible, as some lesions are) plus Gaussian
    noise of the scan's own fine-scale spread, with a soft edge half a voxel wide. Centres
    are :data:`CHECK_INSET_MM` inside the head (less where the head is smaller) and the
    spheres do not touch. ``x`` is not changed.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    sp = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    x = np.asarray(x, dtype=np.float32)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("the check's spheres need head voxels")
    depth = ndimage.distance_transform_edt(mask, sampling=sp)
    inset = min(CHECK_INSET_MM, 0.5 * float(depth.max()))
    smooth = ndimage.gaussian_filter(x, 2)[mask]
    fine = x - ndimage.gaussian_filter(x, 1)
    sigma = float(np.std(fine[mask]))
    out, truth = x.copy(), np.zeros(x.shape, bool)
    for r in radii_mm:
        free = (depth > inset) & ~ndimage.binary_dilation(truth, iterations=3)
        cand = np.flatnonzero(free)
        if not len(cand):
            break
        c = np.array(np.unravel_index(cand[rng.integers(len(cand))], x.shape))
        half = np.ceil((r + 2 * sp.max()) / sp).astype(int)
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, x.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.meshgrid(*[(np.arange(a, b) - ci) * s for a, b, ci, s
                             in zip(lo, hi, c, sp, strict=True)], indexing="ij")
        d = np.sqrt(sum(g ** 2 for g in grid))
        a = 1.0 / (1.0 + np.exp((d - r) / (0.5 * sp[1:].mean())))
        a[a < 1e-3] = 0  # the tail left alone: the scan is changed at the spheres only
        level = float(smooth[rng.integers(len(smooth))])
        tex = level + sigma * rng.normal(size=d.shape)
        out[box] = (out[box] * (1 - a) + tex * a).astype(np.float32)
        truth[box] |= (a >= 0.5) & mask[box]
    return out, truth


def check_precision(score: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of ``score`` for ``truth`` over the voxels of ``mask``."""
    from sklearn.metrics import average_precision_score

    t = truth[mask]
    if not t.any():
        return 0.0
    return float(average_precision_score(t, score[mask]))


def fit_normative_dae_iter(scans, *, steps: int | None = None, seed: int = 0,
                           device: str = "cpu", fits: int | None = None,
                           stop_event: threading.Event | None = None,
                           ) -> Generator[dict, None, tuple[list, list[dict]]]:
    """Fit the cohort's denoiser ``fits`` times and keep the fit the check prefers.

    Parameters
    ----------
    scans : sequence of (volume, mask, spacing)
        The cohort as :func:`.anomaly_dae.fit_dae_iter` takes it (normalised volumes).
    steps, seed, device, stop_event
        As :func:`.anomaly_dae.fit_dae_iter`; fit ``k`` uses seed ``seed + k``.
    fits : int, optional
        Fits to choose from (default :data:`NORMATIVE_FITS`); 1 fits once and checks nothing.

    Returns
    -------
    (nets, report)
        The kept fit's snapshots, and per fit ``{"seed", "check_ap"}`` (empty with one fit).
    """
    fits = NORMATIVE_FITS if fits is None else int(fits)
    if fits < 1:
        raise ValueError(f"the normative denoiser needs at least one fit, got {fits}")
    checks = [(*synthetic_spheres(x, m, sp, seed=_CHECK_SEED + i), m, sp)
              for i, (x, m, sp) in enumerate(list(scans)[:CHECK_SCANS])] if fits > 1 else []
    best, report = None, []
    for k in range(fits):
        tag = f" (fit {k + 1} of {fits})" if fits > 1 else ""
        nets = yield from fit_dae_iter(scans, steps=steps, seed=seed + k, device=device,
                                       stop_event=stop_event,
                                       stage="normative: denoiser" + tag)
        if fits == 1:
            return nets, []
        aps = []
        for i, (xc, truth, m, sp) in enumerate(checks):
            yield {"stage": "normative: check" + tag, "done": i, "total": len(checks)}
            s = yield from dae_score_iter(nets, xc, m, spacing=sp, device=device,
                                          lower_symmetric=False, stop_event=stop_event)
            aps.append(check_precision(s, truth, m))
        ap = float(np.mean(aps))
        report.append({"seed": int(seed + k), "check_ap": round(ap, 5)})
        if best is None or ap > best[0]:
            best = (ap, nets)
    return best[1], report
