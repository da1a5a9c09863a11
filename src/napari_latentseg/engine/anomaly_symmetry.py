"""Findings mirrored across the head's mid-sagittal plane, lowered in an anomaly score.

A lesion rarely has a twin on the other side of the head; the normal structures the
denoiser finds unusual do: the orbits' fat, the skull base's sinuses and muscles, paired
vessels. Where the score is high on both sides, the shared part (the smaller of the two) is
taken off. The plane is fitted to the scan (a reflection of each axial slice, the same for
all slices, that correlates best with the smoothed image), and only a scan that is
symmetric enough (a head in axial or coronal slices, not a sagittal slice or a knee) is
touched. Within a few mm of the plane a voxel's twin is itself, so the lowering fades in
from :data:`MIDLINE_MM`: a lesion on the midline keeps its score. Session 27, eight MR
cases, three denoiser seeds: mean best Dice 0.272 -> 0.356 (docs/anomaly_benchmarks.md,
"Findings on both sides of the head").
"""

from __future__ import annotations

import numpy as np

from .anomaly_masks import to_coarse

__all__ = ["fit_midplane", "lower_bilateral", "mirror", "plane_distance", "MIN_CORRELATION",
           "MIDLINE_MM"]

#: The fitted reflection must correlate at least this well with the scan (brains 0.78-0.85
#: and the phantom 0.90 in the benchmark).
MIN_CORRELATION = 0.7
#: Distance from the plane (mm) where the lowering starts, and where it is complete.
MIDLINE_MM = (5.0, 15.0)
#: The twin's score is the largest within this distance (mm, in-plane) of the mirrored
#: point: the plane is fitted, not known, and the two sides are not exact copies.
TOLERANCE_MM = 3.0
_FIT_MM = 3.0  # in-plane grid (mm) the plane is searched on


def mirror(v: np.ndarray, p, u, order: int = 1) -> np.ndarray:
    """Each axial slice of ``v`` (z, y, x) reflected across the in-plane line through the
    point ``p`` (y, x) along the direction ``u``."""
    from scipy import ndimage

    u = np.asarray(u, float) / np.linalg.norm(u)
    r = 2 * np.outer(u, u) - np.eye(2)
    m = np.eye(3)
    m[1:, 1:] = r
    off = np.zeros(3)
    off[1:] = np.asarray(p, float) - r @ np.asarray(p, float)
    return ndimage.affine_transform(v, m, offset=off, order=order, mode="nearest")


def _corr(s: np.ndarray, mask: np.ndarray, p, u) -> float:
    a, b = s[mask], mirror(s, p, u)[mask]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


class _Mirrored:
    """:func:`_corr` for many planes of one volume: the mirrored values are interpolated at
    the mask's voxels only, as :func:`mirror` (linear, ``mode="nearest"``) would give them
    there, instead of mirroring the whole volume for each plane (session 65: the search's
    ~350 planes took 4.5 s of brain1's score, with no progress or stop in between)."""

    def __init__(self, s: np.ndarray, mask: np.ndarray) -> None:
        self.shape = s.shape[1:]
        zi, yi, xi = np.nonzero(mask)
        self.base = zi * (self.shape[0] * self.shape[1])  # flat offset of each voxel's slice
        self.yx = np.stack([yi, xi]).astype(np.float64)
        self.flat = s.ravel()
        a = s[mask]
        self.a = a - a.mean()
        self.aa = float((self.a * self.a).sum())

    def corr(self, p, u) -> float:
        u = np.asarray(u, float) / np.linalg.norm(u)
        r = 2 * np.outer(u, u) - np.eye(2)
        p = np.asarray(p, float)
        q = r @ self.yx + (p - r @ p)[:, None]  # where each voxel's twin lies (y, x)
        val = np.zeros(q.shape[1])
        h, w = self.shape
        q0 = np.clip(q[0], 0, h - 1)  # "nearest": the edge voxel beyond the slice
        q1 = np.clip(q[1], 0, w - 1)
        y0, x0 = np.floor(q0).astype(np.intp), np.floor(q1).astype(np.intp)
        fy, fx = q0 - y0, q1 - x0
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        for yy, wy in ((y0, 1 - fy), (y1, fy)):
            for xx, wx in ((x0, 1 - fx), (x1, fx)):
                val += wy * wx * self.flat[self.base + yy * w + xx]
        b = val.astype(np.float32)
        b = b - b.mean()
        return float((self.a * b).sum() / (np.sqrt(self.aa * (b * b).sum()) + 1e-12))


def fit_midplane(x: np.ndarray, mask: np.ndarray, spacing=None):
    """The best in-plane reflection of the volume ``x`` (z, y, x) inside ``mask``.

    Searched on a 3 mm grid from both principal axes of the mask's footprint, +-12 degrees
    and +-15 mm, then refined. Returns ``(correlation, point, direction)`` with the point
    (y, x) and direction on the grid of ``x``.
    """
    from scipy import ndimage

    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing[-2:])
    f = max(1, int(round(_FIT_MM / max(min(sp), 1e-6))))
    xs = to_coarse(np.where(mask, x, 0).astype(np.float32), sp, f)[0]
    ms = to_coarse(mask.astype(np.float32), sp, f)[0] >= 0.5
    if ms.sum() < 50:
        return 0.0, np.zeros(2), np.array([1.0, 0.0])
    s = ndimage.gaussian_filter(xs, (0, 1, 1))
    yy, xx = np.nonzero(ms.any(0))
    wt = ms.sum(0)[yy, xx].astype(float)
    p0 = np.array([np.average(yy, weights=wt), np.average(xx, weights=wt)])
    axes = np.linalg.eigh(np.cov(np.stack([yy - p0[0], xx - p0[1]]), aweights=wt))[1].T
    reach = max(1, int(round(15.0 / (f * min(sp)))))
    best = (-2.0, p0, axes[0])
    mirrored = _Mirrored(s, ms)
    for u0 in axes:
        th0 = np.arctan2(u0[1], u0[0])
        n = np.array([-u0[1], u0[0]])
        for dth in np.deg2rad(np.arange(-12, 12.1, 2)):
            u = np.array([np.cos(th0 + dth), np.sin(th0 + dth)])
            for dn in range(-reach, reach + 1):
                c = mirrored.corr(p0 + dn * n, u)
                if c > best[0]:
                    best = (c, p0 + dn * n, u)
    c, p, u = best  # refine around the best: half-degree and quarter-cell steps
    th = np.arctan2(u[1], u[0])
    n = np.array([-u[1], u[0]])
    for dth in np.deg2rad(np.arange(-1.5, 1.6, 0.5)):
        uu = np.array([np.cos(th + dth), np.sin(th + dth)])
        for dn in np.arange(-1.0, 1.01, 0.25):
            cc = mirrored.corr(p + dn * n, uu)
            if cc > best[0]:
                best = (cc, p + dn * n, uu)
    c, p, u = best
    # Back to the grid of x: block centres sit at f * i + (f - 1) / 2.
    return float(c), p * f + (f - 1) / 2.0, u


def lower_bilateral(score: np.ndarray, x: np.ndarray, mask: np.ndarray, spacing=None,
                    *, info: dict | None = None) -> np.ndarray:
    """``score`` (z, y, x; normalised, 0 = typical) with what its mirror twin shares taken
    off: ``score - w * max(min(score, twin), 0)``, ``w`` fading in from the plane over
    :data:`MIDLINE_MM`. Unchanged where the scan is not symmetric enough; ``info`` (a dict)
    receives the plane's correlation and whether it was applied."""
    from scipy import ndimage

    c, p, u = fit_midplane(x, mask, spacing)
    if info is not None:
        info.update({"symmetry": round(c, 3), "bilateral_lowered": c >= MIN_CORRELATION})
    if c < MIN_CORRELATION:
        return score
    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing[-2:])
    twin = mirror(np.where(mask, score, 0).astype(np.float32), p, u)
    t = max(0, int(round(TOLERANCE_MM / max(min(sp), 1e-6))))
    if t:
        twin = ndimage.maximum_filter(twin, (1, 2 * t + 1, 2 * t + 1))
    lo, hi = MIDLINE_MM
    w = np.clip((plane_distance(score.shape[1:], p, u, sp) - lo) / (hi - lo), 0.0, 1.0)[None]
    shared = np.maximum(np.minimum(score, twin), 0.0)
    return (score - w * shared).astype(np.float32)


def plane_distance(shape, p, u, spacing=None) -> np.ndarray:
    """In-plane distance (mm) of each pixel of a ``shape`` (y, x) slice from the line through
    ``p`` along ``u`` (as :func:`fit_midplane` returns them)."""
    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing[-2:])
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    n = np.array([-u[1], u[0]]) / np.linalg.norm(u)
    return np.abs((yy - p[0]) * n[0] + (xx - p[1]) * n[1]) * float(np.sqrt(sp[0] * sp[1]))
