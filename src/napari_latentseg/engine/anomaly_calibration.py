"""Calibration of anomaly scores without labels, and the candidates above a threshold.

Split from :mod:`~napari_latentseg.engine.anomaly`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["calibrate", "components"]

_TAIL_P = 0.10  # tail of calibrations saved before the empirical tables (see _calibrated)
_MIN_BEYOND = 10  # fit voxels needed beyond a quantile for the table to use it
# Quantile levels: percentiles to the 90th, then tenths of a decade down to 1e-8 survival.
_QS = np.concatenate([np.linspace(0.0, 0.9, 91), 1.0 - np.logspace(-1, -8, 71)[1:]])


def calibrate(fit_scores: np.ndarray, body: float | None = None) -> dict:
    """Calibration of raw scores from normal (or mostly normal) voxels: empirical quantiles.

    The quantiles go up to ``1 - 10 / n`` (ten fit voxels beyond the last one, so it is
    supported by the sample), in tenths of a decade from the 90th percentile; beyond that an
    exponential tail ``P(S > s) = tail_p * exp(-(s - tail_start) / tail_scale)`` with the
    heavier of the last two decades' slopes (extrapolating conservatively: more voxels
    flagged, not fewer). Returns a plain dict for :func:`_calibrated`.

    ``body``: the table stops at this survival (at most 0.1) and the tail is extrapolated
    beyond it, so that up to that fraction of the fit voxels may be abnormal without moving
    the threshold (a scan scored against itself holds its lesions).
    """
    v = np.asarray(fit_scores, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("calibration needs at least one finite score")
    if body is not None and not 0.0 < body <= _TAIL_P:
        raise ValueError(f"body must be in (0, {_TAIL_P}], got {body}")
    surv = 1.0 - _QS
    p = _QS[(surv >= max(min(_TAIL_P, _MIN_BEYOND / v.size), body or 0.0) - 1e-12)
            | (_QS == 0.0)]
    q = np.maximum.accumulate(np.quantile(v, p))
    # Tail slope from the top two supported decades (their heavier one), in raw units per e.
    k = -np.log10(np.maximum(1.0 - p, 1e-300))
    scales = []
    for lo in (k[-1] - 1.0, k[-1] - 2.0):
        i = int(np.argmin(np.abs(k - lo)))
        j = int(np.argmin(np.abs(k - (lo + 1.0))))
        if k[i] >= 1.0 - 1e-9 and k[j] > k[i]:
            scales.append(float(q[j] - q[i]) / ((k[j] - k[i]) * np.log(10.0)))
    if not scales:  # too few voxels for a decade beyond the 90th percentile: from the median
        i = int(np.argmin(np.abs(p - 0.5)))
        scales.append(float(q[-1] - q[i]) / max(np.log((1.0 - p[i]) / (1.0 - p[-1])), 1e-9))
    scale = max(max(scales), 1e-9)
    return {"p": p.tolist(), "q": q.tolist(), "tail_start": float(q[-1]),
            "tail_p": float(1.0 - p[-1]), "tail_scale": scale, "n": int(v.size)}


def _calibrated(raw: np.ndarray, cal: dict) -> np.ndarray:
    """Raw score -> ``-log10`` survival: empirical in the table, exponential beyond it.

    Tied quantiles (a flat table) take their lowest survival rank, so a voxel scores no higher
    than the fraction of fit voxels at or above it. Calibrations saved before the empirical
    tables (no ``tail_p``) keep their 90th-percentile tail.
    """
    p, q = np.asarray(cal["p"]), np.asarray(cal["q"])
    tail_p = float(cal.get("tail_p", _TAIL_P))
    keep = p <= 1 - tail_p + 1e-12
    p, q = p[keep], q[keep]
    # For runs of equal quantiles keep the first (lowest p): conservative and strictly rising.
    first = np.concatenate([[True], np.diff(q) > 0])
    p, q = p[first], q[first]
    logsurv = np.log10(np.maximum(1.0 - p, 1e-300))
    r = np.asarray(raw, dtype=np.float64)
    body = np.interp(r, q, logsurv) if q.size > 1 else np.zeros_like(r)
    tail = np.log10(tail_p) - (r - cal["tail_start"]) / (cal["tail_scale"] * np.log(10.0))
    out = -np.where(r > cal["tail_start"], np.minimum(tail, np.log10(tail_p)),
                    np.maximum(body, np.log10(tail_p)))
    out = np.minimum(out, 30.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def _threshold(cal: dict, fpr: float, mode: str) -> float:
    """Score whose survival on the fit data is ``fpr``: ``-log10(fpr)`` in both modes.

    Older calibrations (no ``tail_p``) keep their rule: the fit data's quantile in normative
    mode, the tail model's score in self mode.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
    if mode == "normative" and "tail_p" not in cal:
        raw_t = float(np.interp(1 - fpr, cal["p"], cal["q"]))
        return float(_calibrated(np.array([raw_t]), cal)[0])
    return float(-np.log10(fpr))


def components(labels_in: np.ndarray, score: np.ndarray, spacing: Sequence[float] | None = None,
               min_volume_ml: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """Connected components of a boolean map, with volume (mL), peak score and centroid.

    Parameters
    ----------
    labels_in : np.ndarray
        Boolean candidate map.
    score : np.ndarray
        Score map (for each component's peak).
    spacing : sequence of float, optional
        Voxel size in mm per array axis (1 mm when missing).
    min_volume_ml : float
        Components smaller than this are dropped.
    """
    from scipy import ndimage

    nd = labels_in.ndim
    sp = np.ones(nd) if spacing is None else np.asarray(spacing, float)[-nd:]
    voxel_ml = float(np.prod(sp)) / 1000.0
    lab, n = ndimage.label(labels_in)
    out = np.zeros(labels_in.shape, dtype=np.uint16)
    cands: list[dict] = []
    if n == 0:
        return out, cands
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(lab, dtype=np.int64), lab, idx)
    peaks = ndimage.maximum(score, lab, idx)
    cents = ndimage.center_of_mass(labels_in, lab, idx)
    order = np.argsort(-np.asarray(peaks))
    for i in order:
        if sizes[i] * voxel_ml < min_volume_ml:
            continue
        cands.append({"id": len(cands) + 1, "voxels": int(sizes[i]),
                      "volume_ml": float(sizes[i] * voxel_ml), "peak_score": float(peaks[i]),
                      "centroid": [float(c) for c in cents[i]], "_label": int(idx[i])})
        if len(cands) >= 65535:
            break
    remap = np.zeros(n + 1, dtype=np.uint16)
    for c in cands:
        remap[c.pop("_label")] = c["id"]
    return remap[lab], cands
