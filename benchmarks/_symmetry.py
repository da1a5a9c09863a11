"""Prototype: two model-free anomaly scores for MR (issue #14, session 18; both lose).

1. **Left-right asymmetry.** A lesion rarely has a twin across the mid-sagittal plane. The
   plane is the head mask's long axis through its centroid, refined by a search (+-8 degrees,
   +-8 voxels) for the reflection that correlates best with the smoothed scan; the score is
   ``|G * x - mirror(G * x)|`` (Gaussian ``G`` at 1 or 2 voxels in-plane), raw (``abs``),
   divided by the local gradient magnitude (``absn``), and kept only on the side further from
   the parenchyma's median (``side``, ``siden``: the lesion's mirror twin is normal tissue).
2. **Local texture density.** The ``contrast`` density's Gaussian mixture on the intensity
   with its local means and local standard deviations (``sqrt(G*x^2 - (G*x)^2)``) at 2 and 4
   mm (``tex24``), 2-8 mm (``tex248``), the standard deviations alone (``sd248``), and the
   contrast features with the deviations at 2 and 4 mm (``contrast+sd``): a tissue-like
   lesion is a region of intermediate intensity and low variance, where a tissue boundary of
   the same mean intensity varies.

Both on ``bench_anomaly``'s cases (no VAE), best Dice over thresholds in the scored voxels.
Usage: ``PYTHONPATH=src python benchmarks/_symmetry.py [--texture]``. Measured in
``docs/anomaly_benchmarks.md`` ("Asymmetry and local texture").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
import bench_anomaly as ba  # noqa: E402

from napari_latentseg.engine.anomaly_symmetry import mirror  # noqa: E402 (the engine's, since s27)


def fit_axis(v: np.ndarray, head: np.ndarray, sigma: float = 2.0):
    """(correlation, (point, direction)) of the best mid-sagittal reflection."""
    yy, xx = np.nonzero(head.any(0))
    w = head.sum(0)[yy, xx].astype(float)
    p0 = np.array([np.average(yy, weights=w), np.average(xx, weights=w)])
    u0 = np.linalg.eigh(np.cov(np.stack([yy - p0[0], xx - p0[1]]), aweights=w))[1][:, 1]
    s = ndimage.gaussian_filter(v, (0, sigma, sigma))
    n = np.array([-u0[1], u0[0]])
    th0 = np.arctan2(u0[1], u0[0])
    best = (-2.0, None)
    for dth in np.deg2rad(np.arange(-8, 8.1, 1)):
        u = np.array([np.cos(th0 + dth), np.sin(th0 + dth)])
        for dn in np.arange(-8, 8.1, 1):
            p = p0 + dn * n
            r = np.corrcoef(s[head], mirror(s, p, u)[head])[0, 1]
            if r > best[0]:
                best = (r, (p, u))
    return best


def asymmetry_scores(v, head, sp) -> dict:
    _, (p, u) = fit_axis(v, head)
    brain = ndimage.distance_transform_edt(head, sampling=sp) > 15
    med = np.median(v[brain])
    out = {}
    for sig in (1.0, 2.0):
        s = ndimage.gaussian_filter(v, (0, sig, sig))
        m = mirror(s, p, u)
        d = np.abs(s - m)
        g = ndimage.gaussian_gradient_magnitude(v, (0, sig, sig))
        dn = d / (np.median(g[head]) + g)
        side = np.abs(s - med) > np.abs(m - med)
        out.update({f"s{sig:g}-abs": d, f"s{sig:g}-absn": dn, f"s{sig:g}-side": d * side,
                    f"s{sig:g}-siden": dn * side})
    return out


def texture_features(x, sp, scales=(2.0, 4.0), means=True, sds=True) -> list:
    out = [x]
    for s in scales:
        sg = s / np.asarray(sp, float)
        sg[0] = min(sg[0], 1.0)
        m = ndimage.gaussian_filter(x, sg)
        if means:
            out.append(m)
        if sds:
            out.append(np.sqrt(np.maximum(ndimage.gaussian_filter(x * x, sg) - m * m, 0)))
    return out


def density(feats, mask, seed: int = 0) -> np.ndarray:
    from napari_latentseg.engine.anomaly_features import fit_gmm, gmm_nll

    x = np.stack([f[mask] for f in feats], 1).astype(np.float32)
    idx = np.random.default_rng(seed).choice(len(x), min(20000, len(x)), replace=False)
    s = np.zeros(mask.shape, np.float32)
    s[mask] = gmm_nll(x, fit_gmm(x[idx], 6, seed))
    return s


def texture_scores(v, head, sp) -> dict:
    from napari_latentseg.engine.anomaly_features import contrast_features

    lo, hi = np.percentile(v[head], [1, 99])
    x = ((v - lo) / (hi - lo)).astype(np.float32)
    variants = {
        "contrast": contrast_features(x, sp),
        "tex24": texture_features(x, sp),
        "tex248": texture_features(x, sp, (2.0, 4.0, 8.0)),
        "sd248": texture_features(x, sp, (2.0, 4.0, 8.0), means=False),
        "contrast+sd": contrast_features(x, sp)
        + texture_features(x, sp, (2.0, 4.0), means=False)[1:],
    }
    return {k: density(f, head) for k, f in variants.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texture", action="store_true", help="the texture densities (all cases)")
    a = p.parse_args()
    cases, _ = ba.build_cases(False)
    for c in cases:
        if c["group"] != "mr" and not a.texture:
            continue
        v, truth, sp = c["v"], c["truth"], c["sp"]
        mask, smask, _ = ba.case_masks(c)
        scores = texture_scores(v, mask, sp) if a.texture else asymmetry_scores(v, mask, sp)
        row = [f"{c['name']:22s} oracle {ba.oracle_window(v, truth, smask):.3f}"]
        row += [f"{k} {ba.curve_metrics(s, truth, smask)[0]:.3f}" for k, s in scores.items()]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
