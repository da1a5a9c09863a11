"""Anomaly maps: where a scan departs from normal anatomy, calibrated without labels.

Modes:

* **self** (no healthy reference): normal appearance is learned from the scan itself (a lesion
  is a small part of it); ``fpr`` of its head voxels are flagged, the highest scores first.
* **normative**: statistics fitted by :func:`fit_normative` on other (mostly healthy) scans,
  applied to a new one; ``model.anomaly["normative"]`` carries them in the model file.
* **normative+self** (``with_self``): both, voxels ranked by the mean of the two scores.

Methods (see ``docs/anomaly_benchmarks.md`` for the ablation that chose the default):

``features``
    Gaussian-mixture density of VAE encoder features (hypercolumn PCA + latent mean) with
    multi-scale intensity features; score = negative log-likelihood.
``knn``
    Mean distance to the 10 nearest reference samples in the same feature space.
``intensity`` (default on MR slices too small for ``dae``)
    The same density on the five intensity features only (intensity smoothed at 1, 2, 4
    voxels and its gradient magnitude; no VAE).
``contrast`` (default on CT, both modes)
    The same density on intensity, its Gaussian means at 2, 4, 8 mm, their
    centre-surround contrasts and an in-plane blob filter at 4 mm (no VAE): a nodule is a
    rare, round contrast with its surround.
``error``, ``ssim``, ``median``
    Plain reconstruction error ``|x - recon|`` (``reconstruct --error``); ``1 - SSIM(x,
    recon)`` in 7x7 windows; ``|x - median_5x5(x)|`` (a model-free baseline).
``dae`` (default on MR in both modes, see :func:`default_method`)
    A denoising autoencoder (:mod:`.anomaly_dae`) fitted on the scan, or once on a cohort
    (weights stored with the statistics); on CT ``contrast`` is better. Findings on both
    sides of the head are lowered (:mod:`.anomaly_symmetry`); on MR the score fades in over
    :data:`SURFACE_MM` and is drawn to its findings' edges (:mod:`.anomaly_guide`).

Every raw map is smoothed (``contrast``: 2.5 mm, others 1 voxel; in-plane for 2D models) and
calibrated: ``score`` is ``-log10`` of the fraction of the fit data's head voxels scoring
higher (0.1 -> 1, 0.001 -> 3; empirical quantiles, an exponential tail past them);
``threshold`` = ``-log10(fpr)`` flags ``fpr`` of the fit voxels (before the size filter).
The denoiser's normative MR score takes its rate from the scan (:data:`NORMATIVE_SCAN_RATE`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence

import numpy as np

from ..models.checkpoint import VAEModel
from ..runtime.device import network_device
from ..runtime.progress import check_stop, drive
from .anomaly_calibration import _calibrated, _threshold, calibrate, components
from .anomaly_dae import dae_stats_iter, dae_suits, nets_state
from .anomaly_guide import finish_mr, rank_like
from .anomaly_masks import (
    air_mask,
    bone_mask,
    depth_map,
    grid_factor,
    head_mask,
    smooth,
    to_coarse,
    to_fine,
)
from .anomaly_normative import fit_normative_dae_iter
from .anomaly_result import AnomalyResult
from .normalize import guess_modality

__all__ = ["METHODS", "DEFAULT_METHOD", "AnomalyResult", "anomaly_iter", "anomaly_map",
           "fit_normative_iter", "fit_normative", "head_mask", "depth_map", "calibrate",
           "components", "default_method", "bone_mask"]

METHODS = ("features", "knn", "intensity", "contrast", "error", "ssim", "median", "dae")
DEFAULT_METHOD = "intensity"  # MR slices too small for the denoiser (both modes: "dae")
CT_METHOD = "contrast"  # CT, both modes (session 17: 2-3.5x intensity's best Dice on nodules)
_NEEDS_MODEL = {"features", "knn", "error", "ssim"}
_DENSITY = ("features", "knn", "intensity", "contrast")
USE_DEPTH = False  # distance to the head's outside as a feature (see depth_map)
# CT: bone and metal (anomaly_masks.bone_mask) score 0 after calibration (session 12).
CT_SKIP_BONE = True
CT_SKIP_AIR = True  # and air (anomaly_masks.air_mask; session 17: the trachea, bowel gas)
# Calibrate on the voxels that can be flagged (CT: not bone, metal or air). Session 20, off:
# nodules' Dice at the threshold up, but whole lung2 flags 0.116 % of its tumour-free body.
CALIBRATE_SCORED_ONLY = False
SELF_BODY: float | None = 0.01  # self-mode denoiser: the top 1 % may be lesion (session 36)
# The normative denoiser on MR (not ``with_self``): calibrated on the scan, as in self mode
# (session 48: a cohort's tail is its own lesions', and little in a new brain crossed it).
NORMATIVE_SCAN_RATE = True
# The denoiser on MR: scores fade in from 10 to 20 mm inside the head's surface, after
# calibration (session 37: eyes, nose and scalp held its false positives). None: off.
SURFACE_MM: tuple[float, float] | None = (10.0, 20.0)
# The denoiser's MR score drawn to its findings' edges (:mod:`.anomaly_guide`; session 45:
# mean best Dice of nineteen MR cases 0.372 -> 0.444). False: the score as calibrated.
GUIDE = True
# Normative and self together (``with_self``): voxels in the order of the two scores' mean
# (session 46; False: the higher of the two, as it was).
SELF_MEAN_ORDER = True
SLICE_NORMALISE_DENSITY = False  # density scores centred, scaled per slice (session 12; off)
GMM_COMPONENTS = 6  # mixture size of the ``features`` / ``intensity`` densities
# The contrast density's score is smoothed in mm (in-plane): a full-size CT is scored as the
# benchmark's in-plane / 4 one (session 21: at 1 voxel the nodules' best Dice was half).
CONTRAST_SMOOTH_MM = 2.5
# ... on a grid of about this pixel size (in-plane block means; None: the scan's own), the
# score brought back: a quarter of the time on a full-size CT, half its false candidates.
CONTRAST_GRID_MM: float | None = 2.4


def _prepare(model: VAEModel | None, volume: np.ndarray, modality: str | None,
             spacing: Sequence[float] | None = None):
    """(normalised volume, scored mask) with the model's normalisation (percentiles without).

    The mask is the head / body (bone included: it is part of what the density learns as
    normal; :func:`anomaly_iter` sets bone's score to 0 afterwards on CT)."""
    from .normalize import Normalizer

    mask = head_mask(volume, modality)
    if model is not None:
        norm = Normalizer.from_dict(model.normalization or {"method": "percentile"})
    else:
        norm = Normalizer()
    norm.fit(volume, mask)
    return norm(volume), mask


def _recon(model: VAEModel, xnorm: np.ndarray) -> np.ndarray:
    from .infer import reconstruct_normalised

    return reconstruct_normalised(model, xnorm)


def _feature_rows(model, xnorm, mask, stats, method, stop_event, spacing=None):
    from .anomaly_features import feature_maps_iter, iter_contrast_features, n_contrast_columns

    if method == "contrast":  # column by column: the volumes are never held at once
        # Statistics stored before session 20 have no blob columns, and keep none.
        blob_mm = tuple(stats.get("blob_mm", ()))
        rows = np.empty((int(mask.sum()), n_contrast_columns(blob_mm)), np.float32)
        for col, f in iter_contrast_features(xnorm, spacing, blob_mm):
            check_stop(stop_event, "anomaly features")
            rows[:, col] = f[mask]
    else:
        use_model = model if method != "intensity" else None
        feats = yield from feature_maps_iter(use_model, xnorm, stats.get("space"),
                                             stop_event=stop_event)
        rows = feats[:, mask].T
    if stats.get("depth"):
        # Saturating smoothly at a few cm (deeper, the interior is alike; no point mass).
        d = depth_map(mask, spacing)[mask]
        d = d / (d + 30.0)
        rows = np.concatenate([rows, d[:, None]], axis=1)
    return rows


def _raw_iter(model, xnorm, mask, stats, method, stop_event, *, rows=None, recon=None,
              spacing=None, device=None):
    """Raw (unsmoothed) score map; 0 outside ``mask``."""
    from .anomaly_features import gmm_nll, knn_distance, ssim_map

    raw = np.zeros(xnorm.shape, dtype=np.float32)
    if method in _DENSITY:
        if rows is None:
            rows = yield from _feature_rows(model, xnorm, mask, stats, method, stop_event,
                                            spacing)
        check_stop(stop_event, "anomaly scoring")
        yield {"stage": "density", "done": 0, "total": 1}
        d = stats["density"]
        raw[mask] = knn_distance(rows, d) if d["kind"] == "knn" else gmm_nll(rows, d)
    elif method in ("error", "ssim"):
        y = _recon(model, xnorm) if recon is None else recon
        raw = np.abs(xnorm - y) if method == "error" else ssim_map(xnorm, y)
    elif method == "median":
        from scipy import ndimage

        raw = np.abs(xnorm - ndimage.median_filter(xnorm, (1, 5, 5)[-xnorm.ndim:]))
    elif method == "dae":  # smoothed and normalised per slice already
        raw = yield from dae_stats_iter(stats, xnorm, mask, spacing=spacing,
                                        device=network_device(model, device),
                                        stop_event=stop_event)
        return np.where(mask, raw, np.float32(np.nan))
    else:
        raise ValueError(f"unknown anomaly method {method!r}; choose one of {', '.join(METHODS)}")
    sd = model.config.spatial_dims if _by_model(model, stats) else 2  # model-free: in-plane
    # Statistics stored before session 21 have no "smoothing_mm": 1 voxel, as they were fitted.
    raw = smooth(raw.astype(np.float32), sd, float(stats.get("smoothing_sigma", 1.0)),
                 stats.get("smoothing_mm"), spacing)
    if SLICE_NORMALISE_DENSITY and method in _DENSITY and raw.ndim == 3:
        from .anomaly_dae import slice_normalise

        raw = slice_normalise(raw, mask)
    raw[~mask] = np.nan
    return raw


def _by_model(model: VAEModel | None, stats: dict) -> bool:
    """Whether a score takes the model's normalisation (as stored before session 22: yes)."""
    return model is not None and stats.get("normalization", "model") == "model"


def fit_normative_iter(
    model: VAEModel | None,
    volumes: Sequence[np.ndarray],
    *,
    modalities: Sequence[str | None] | None = None,
    method: str = "default",
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    stop_event: threading.Event | None = None,
    _keep: list | None = None,
    lower_symmetric: bool = True,
    device: str | None = None,
) -> Generator[dict, None, dict]:
    """Fit normative anomaly statistics on one or more scans; returns a plain dict.

    Store the result as ``model.anomaly["normative"]`` (saved with the model) or pass it as
    ``reference=`` to :func:`anomaly_iter`. ``volumes`` is read twice, one scan at a time (a
    lazy sequence may load each from disk): once for the density's sample, once for the
    calibration ("features" and "knn" read every scan once more, all held at once, for their
    feature space). ``spacing`` is one voxel size for every scan or a list of per-scan ones.
    ``device``: where the denoiser runs without a model (:func:`anomaly_iter`).
    """
    from .anomaly_features import density_sample, fit_density, fit_feature_space

    n = len(volumes)
    if not n:
        raise ValueError("fit_normative needs at least one volume")
    mods = list(modalities) if modalities is not None else [None] * n
    if method == "default":  # the first scan decides (MR: the denoiser, CT: contrast)
        method = default_method(volumes[0], mods[0])
    if method not in METHODS:
        raise ValueError(f"unknown anomaly method {method!r}; choose one of {', '.join(METHODS)}")
    if method in _NEEDS_MODEL and model is None:
        raise ValueError(f"the {method!r} method needs a fitted model")
    # A model-free score ignores the model's normalisation (session 22: on CT its clipped HU
    # window cost lung1's ground-glass nodules 0.266 -> 0.197 best Dice).
    norm_model = model if method in _NEEDS_MODEL else None
    # Decided once: a lazy sequence reads a scan for each item asked.
    per_scan = spacing is not None and np.ndim(spacing[0]) > 0

    # CT's unscored voxels are needed to zero the scan's own scores (self mode) or to leave
    # them out of the calibration; a normative fit's scans need them for neither by default.
    need_unscored = _keep is not None or CALIBRATE_SCORED_ONLY

    grid_mm = CONTRAST_GRID_MM if method == "contrast" else None

    def prepared(i: int, unscored: bool = False):
        """(normalised volume, mask, voxel size, voxels left unscored or None) of scan ``i``,
        on the coarser grid where the method has one."""
        sp = spacing[i] if per_scan else spacing
        vol = np.asarray(volumes[i], dtype=np.float32)
        f = grid_factor(vol.shape, sp, grid_mm)
        if f > 1:  # as anomaly_iter will score: a 2D scan is a one-slice volume there
            vol, sp = to_coarse(vol if vol.ndim == 3 else vol[None], sp, f)
        skip = _unscored(vol, mods[i], sp) if unscored else None
        return (*_prepare(norm_model, vol, mods[i], sp), sp, skip)

    stats: dict = {"method": method, "smoothing_sigma": 1.0, "n_scans": n,
                   "depth": USE_DEPTH, "seed": int(seed),
                   "normalization": "model" if norm_model is not None else "scan"}
    if method == "dae":
        stats["lower_symmetric"] = bool(lower_symmetric)
        if _keep is None:  # normative: one denoiser on every scan's slices, stored
            nets, stats["dae_fits"] = yield from fit_normative_dae_iter(
                [prepared(i)[:3] for i in range(n)], seed=seed, stop_event=stop_event,
                device=network_device(model, device))
            stats["nets"] = nets_state(nets)
    if method == "contrast":  # read here, so a probe can switch it
        from .anomaly_features import CONTRAST_BLOB_MM

        stats["blob_mm"] = [float(b) for b in CONTRAST_BLOB_MM]
        stats["smoothing_mm"] = float(CONTRAST_SMOOTH_MM)
        if grid_mm:
            stats["grid_mm"] = float(grid_mm)
    kept = None  # one scan: its features serve both passes
    if method in _DENSITY:
        if method in ("features", "knn") and model is not None:
            yield {"stage": "feature space", "done": 0, "total": 1}
            stats["space"] = dict(fit_feature_space(
                model, [prepared(i)[:2] for i in range(n)], seed=seed, stop_event=stop_event))
        rng, samples = np.random.default_rng(seed), []
        for i in range(n):
            x, m, sp, skip = prepared(i, unscored=n == 1 and need_unscored)
            rows = yield from _feature_rows(model, x, m, stats, method, stop_event, sp)
            samples.append(density_sample(rows, n, rng))
            kept = (x, m, sp, skip, rows) if n == 1 else None
            yield {"stage": "density sample", "done": i + 1, "total": n}
        yield {"stage": "density", "done": 0, "total": 1}
        stats["density"] = fit_density(samples, method, seed, GMM_COMPONENTS)
    raws = []
    for i in range(n):
        x, m, sp, skip, rows = (kept if kept is not None
                                else (*prepared(i, unscored=need_unscored), None))
        raw = yield from _raw_iter(model, x, m, stats, method, stop_event, rows=rows,
                                   spacing=sp, device=device)
        cal = m & ~skip if skip is not None and CALIBRATE_SCORED_ONLY else m
        raws.append(raw[cal])
        if _keep is not None:
            _keep.append((x, m, raw, skip))
        yield {"stage": "calibrate", "done": i + 1, "total": n}
    stats["calibration"] = calibrate(np.concatenate(raws),
                                     body=SELF_BODY if _keep is not None and method == "dae"
                                     else None)
    return stats


def _unscored(vol: np.ndarray, modality: str | None, spacing) -> np.ndarray | None:
    """CT voxels whose score is set to 0: bone and metal (the density flags dense bone as
    rare; lung1: the false positives' median 580 HU) and air (the contrast density's air
    pockets). None on MR, or with both rules off."""
    if not (CT_SKIP_BONE or CT_SKIP_AIR) or guess_modality(vol, modality) != "CT":
        return None
    out = bone_mask(vol, spacing) if CT_SKIP_BONE else np.zeros(vol.shape, bool)
    if CT_SKIP_AIR:
        out |= air_mask(vol)
    return out


def default_method(volume: np.ndarray, modality: str | None = None) -> str:
    """What ``"default"`` means: :data:`CT_METHOD` on CT; on MR ``dae`` where
    :func:`.anomaly_dae.dae_suits`, else :data:`DEFAULT_METHOD`. In both modes: fitted on a
    cohort the denoiser beats the intensity density too (session 34, docs/
    anomaly_benchmarks.md, "The denoiser as a normative model")."""
    v = np.asarray(volume)
    if v.ndim in (2, 3):
        modality = guess_modality(v if v.ndim == 3 else v[None], modality)
        if modality == "CT":
            return CT_METHOD
    return "dae" if dae_suits(volume, modality) else DEFAULT_METHOD


def fit_normative(model: VAEModel | None, volumes: Sequence[np.ndarray], *,
                  progress: Callable | None = None, **kwargs) -> dict:
    """Blocking version of :func:`fit_normative_iter`."""
    return drive(fit_normative_iter(model, volumes, **kwargs), progress)


def anomaly_iter(
    model: VAEModel | None,
    volume: np.ndarray,
    *,
    modality: str | None = None,
    method: str = "default",
    reference: dict | str | None = None,
    fpr: float = 1e-3,
    spacing: Sequence[float] | None = None,
    min_volume_ml: float = 0.05,
    error_map: bool = True,
    seed: int = 0,
    lower_symmetric: bool = True,
    with_self: bool = False,
    lower_surface: bool = True,
    stop_event: threading.Event | None = None,
    device: str | None = None,
) -> Generator[dict, None, AnomalyResult]:
    """Anomaly map of ``volume``, yielding progress; returns an :class:`AnomalyResult`.

    Parameters
    ----------
    model : VAEModel or None
        A fitted model; ``features``, ``knn``, ``error`` and ``ssim`` need one, the default
        methods (``dae`` on MR, ``contrast`` on CT) do not.
    volume : np.ndarray
        2D or 3D array (z, y, x) in its own intensity units.
    modality : str, optional
        ``"CT"``/``"MR"`` from the header.
    method : str
        One of :data:`METHODS`, or ``"default"`` (the normative statistics' method when a
        reference is used, else :func:`default_method`: ``dae`` on MR, ``contrast`` on CT).
    reference : dict or "model", optional
        Normative statistics from :func:`fit_normative`; ``"model"`` uses
        ``model.anomaly["normative"]``. None fits on the scan itself (self mode). The
        denoiser's MR score is calibrated on the scan (:data:`NORMATIVE_SCAN_RATE`).
    fpr : float
        False-positive rate that sets ``threshold``.
    spacing : sequence of float, optional
        Voxel size (mm, array-axis order) for candidate volumes in mL.
    min_volume_ml : float
        Candidates smaller than this are dropped.
    error_map : bool
        Also return the plain reconstruction error (needs a model).
    lower_symmetric : bool
        ``dae`` only: lower findings mirrored on both sides of the head (bilateral disease
        fades with it on; :mod:`.anomaly_symmetry`).
    with_self : bool
        With ``reference``: also fit the method on the scan itself. Voxels are ranked by the
        mean of the two calibrated scores and take the values of the higher of the two, less
        ``log10(2)`` (a Bonferroni correction: the false-positive rate stays at most
        ``fpr``), by rank. Costs a self-mode fit.
    lower_surface : bool
        ``dae`` on MR: scores fade in over :data:`SURFACE_MM` inside the head's surface
        (eyes, nose and scalp are not findings; False keeps superficial ones, e.g. breast).
    stop_event : threading.Event, optional
        Set to cancel; raises :class:`~napari_latentseg.runtime.progress.Cancelled`.
    device : str, optional
        Without a model: where the denoiser fits and runs (``auto``, ``cpu``, ``cuda``...;
        default the CPU). With one, the model's device.
    """
    t0 = time.perf_counter()
    vol = np.asarray(volume, dtype=np.float32)
    squeeze = vol.ndim == 2
    vol = vol[None] if squeeze else vol
    if vol.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {np.shape(volume)}")
    if isinstance(reference, str):
        if reference != "model" or model is None or "normative" not in (model.anomaly or {}):
            raise ValueError("reference='model' needs a model with normative statistics "
                             "(fit them with fit_normative)")
        reference = model.anomaly["normative"]
    if with_self and reference is None:
        raise ValueError("with_self needs a reference (normative statistics): without one the "
                         "scan is already its own reference")
    if reference is not None:
        method = reference["method"] if method == "default" else method
        if method != reference["method"]:
            raise ValueError(f"the reference was fitted for {reference['method']!r}, "
                             f"not {method!r}")
        mode = "normative"
        stats = reference
        # Statistics stored before session 21 have no grid: the scan's own, as they were fitted.
        f = grid_factor(vol.shape, spacing, stats.get("grid_mm"))
        vc, spc = to_coarse(vol, spacing, f)
        x, mask = _prepare(model if _by_model(model, stats) else None, vc, modality, spc)
        raw = yield from _raw_iter(model, x, mask, stats, method, stop_event, spacing=spc,
                                   device=device)
        if with_self:  # the same method fitted on the scan: its own calibrated score
            own, kept = yield from _fit_on_scan(
                model, vol, modality, method, spacing, seed, stop_event,
                bool(stats.get("lower_symmetric", lower_symmetric)), device)
            own_score = _calibrated(kept[2], own["calibration"])
            fo = grid_factor(vol.shape, spacing, own.get("grid_mm"))
            if fo != f:  # statistics stored on another grid (before session 21)
                own_score = to_coarse(to_fine(own_score, vol.shape, fo), spacing, f)[0]
    else:
        mode = "self"
        stats, (x, mask, raw, unscored) = yield from _fit_on_scan(
            model, vol, modality, method, spacing, seed, stop_event, lower_symmetric, device)
        method = stats["method"]
        f = grid_factor(vol.shape, spacing, stats.get("grid_mm"))
    yield {"stage": "calibrate", "done": 1, "total": 1}
    cal = stats["calibration"]
    mr_dae = method == "dae" and guess_modality(vol, modality) != "CT"
    alone = mode == "normative" and not with_self  # the cohort's denoiser alone
    if alone and mr_dae and NORMATIVE_SCAN_RATE:
        cal = calibrate(raw[mask], body=SELF_BODY)
    score = _calibrated(raw, cal)
    if with_self:  # either finding, at most fpr in all (session 35: "Normative and self"),
        higher = np.maximum(np.maximum(score, own_score) - np.float32(np.log10(2.0)), 0.0)
        # ranked by the two scores' mean (session 46: "Normative and self in the order of
        # their mean"), so the threshold still flags what the higher score less log10 2 does
        score = rank_like((score + own_score) / 2, higher, mask) if SELF_MEAN_ORDER else higher
    if mode == "normative":
        unscored = _unscored(vc, modality, spc)
    if unscored is not None:
        score[unscored] = 0.0
    if f > 1:  # back on the scan's grid (bone and air fade out), its own mask and rules
        score, mask = to_fine(score, vol.shape, f), head_mask(vol, modality)
        score[~mask] = 0.0
        unscored = _unscored(vol, modality, spacing)
        if unscored is not None:
            score[unscored] = 0.0
    surface = SURFACE_MM if lower_surface and mr_dae else None
    guide = mr_dae and GUIDE
    if guide:
        yield {"stage": "guide", "done": 0, "total": 1}
    score = finish_mr(score, vol, mask, spacing, squeeze, surface, guide, stop_event,
                      across=mr_dae and ("normative" if alone else "cap"))
    thr = _threshold(cal, fpr, mode)
    labels, cands = components((score > thr) & mask, score, spacing, min_volume_ml)
    err = None
    if error_map and model is not None:
        yield {"stage": "error map", "done": 0, "total": 1}
        # The VAE's normalisation, on the scan's grid.
        same = _by_model(model, stats) and f == 1
        xe = x if same else _prepare(model, vol, modality, spacing)[0]
        err = np.abs(xe - _recon(model, xe))
    if squeeze:
        score, labels, mask = score[0], labels[0], mask[0]
        err = err[0] if err is not None else None
        for c in cands:
            c["centroid"] = c["centroid"][1:]
    return AnomalyResult(score, thr, labels, cands, method,
                         "normative+self" if with_self else mode, err, mask,
                         time.perf_counter() - t0,
                         info={"fpr": fpr, "calibration": cal, "surface_mm": surface})


def _fit_on_scan(model, vol, modality, method, spacing, seed, stop_event, lower_symmetric,
                 device=None):
    """Self mode's fit: (statistics fitted on ``vol`` itself, its (x, mask, raw, unscored))."""
    keep: list = []
    stats = yield from fit_normative_iter(model, [vol], modalities=[modality], method=method,
                                          spacing=spacing, seed=seed, stop_event=stop_event,
                                          _keep=keep, lower_symmetric=lower_symmetric,
                                          device=device)
    return stats, keep[0]


def anomaly_map(model: VAEModel | None, volume: np.ndarray, *, progress: Callable | None = None,
                **kwargs) -> AnomalyResult:
    """Blocking version of :func:`anomaly_iter`."""
    return drive(anomaly_iter(model, volume, **kwargs), progress)
