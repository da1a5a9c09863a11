"""The anomaly score drawn to the shape of what it found, with the scan as the guide.

The denoiser's score is a smooth bump over a lesion: its residual is smoothed at 3 mm and
its readings combined, so it peaks at the lesion's centre and falls to half of that at its
edge, while the lesion's edge in the image is sharp (session 45: on 1.2 mm heads with
grey-matter-intensity implants, the best threshold covered 36-78 % of the lesions it found).
:func:`guided_max` gives each voxel the highest score of a neighbour within
:data:`RADIUS_MM` whose intensity is like its own (a joint-bilateral maximum): a lesion's rim
takes its centre's score, the tissue around it, of another intensity, keeps its own.
Before that, on thick slices, :func:`across_slices` holds a finding to what the slices
beside it show.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from ..runtime.progress import check_stop
from .anomaly_dae import thick_slices

__all__ = ["across_slices", "finish_mr", "guided_max", "noise_level", "rank_like", "spacing3",
           "thick_slices", "ACROSS_NORMATIVE", "ACROSS_RATIO", "ACROSS_SLICES", "RADIUS_MM",
           "SIGMA_NOISE", "PASSES"]

#: Neighbourhood of one pass (mm; a ball, so thick slices take in-plane neighbours only).
RADIUS_MM = 3.6
#: Intensity difference (in units of the scan's noise, :func:`noise_level`) at which a
#: neighbour's score counts exp(-1/2): voxels of one tissue differ by about 1.4 noise units.
SIGMA_NOISE = 4.0
#: Passes: each reaches one more radius into a region of like intensity.
PASSES = 3
#: On thick slices a finding must carry into a neighbouring slice (:func:`across_slices`;
#: session 47: nineteen MR cases' mean best Dice 0.444 -> 0.469 in self mode). False: off.
ACROSS_SLICES = True
#: How far a voxel's score may stand above the higher of its neighbours across slices.
ACROSS_RATIO = 1.5
#: The rule for a normative map (scored by a cohort's denoiser, calibrated on the scan):
#: ``"geo"``, the geometric mean with the higher neighbour (session 48: eighteen brain cases'
#: mean best Dice 0.392 -> 0.411, AUPRC 0.356 -> 0.378, level at the threshold), or
#: ``"cap"``, self mode's rule (there the geometric mean emptied brain1's flags, session 47).
ACROSS_NORMATIVE = "geo"


def noise_level(volume: np.ndarray, mask: np.ndarray) -> float:
    """The scan's noise inside ``mask``: the robust spread (MAD) of its residual from an
    in-plane 3x3 median filter, scaled to a standard deviation."""
    from scipy import ndimage

    r = volume - ndimage.median_filter(volume, (1, 3, 3))
    d = r[mask]
    if d.size == 0:
        return 1.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / 0.85, 1e-6)


def spacing3(spacing: Sequence[float] | None, flat: bool = False) -> tuple[float, ...]:
    """The (z, y, x) spacing of a 3D working array; ``flat``: a 2D image stacked as one
    slice (no neighbours across slices)."""
    sp = tuple(float(s) for s in spacing) if spacing is not None else ()
    if flat:
        return (np.inf,) + (sp[-2:] if len(sp) >= 2 else (1.0, 1.0))
    return sp if len(sp) == 3 else (1.0, 1.0, 1.0)


def _offsets(spacing: Sequence[float], radius_mm: float) -> list[tuple[int, int, int]]:
    """Voxel offsets in the ball of ``radius_mm`` (mm; an infinite spacing: none there), at
    least the nearest neighbours along the finest axis (a coarse scan still gets some)."""
    radius_mm = max(radius_mm, min(spacing))
    n = [int(radius_mm // s) for s in spacing]
    out = []
    for a in range(-n[0], n[0] + 1):
        for b in range(-n[1], n[1] + 1):
            for c in range(-n[2], n[2] + 1):
                d2 = sum((k * s) ** 2 for k, s in zip((a, b, c), spacing, strict=True) if k)
                if 0 < d2 <= radius_mm ** 2:
                    out.append((a, b, c))
    return out


def guided_max(score: np.ndarray, guide: np.ndarray, mask: np.ndarray,
               spacing: Sequence[float] | None = None, *, radius_mm: float = RADIUS_MM,
               sigma_noise: float = SIGMA_NOISE, passes: int = PASSES,
               stop_event: threading.Event | None = None) -> np.ndarray:
    """Joint-bilateral maximum of ``score`` (3D) with the image ``guide`` (same shape).

    Each pass sets a voxel to the maximum over itself and its neighbours within
    ``radius_mm`` of the neighbour's score times ``exp(-d^2 / 2 s^2)``, where ``d`` is the
    two voxels' intensity difference and ``s`` is ``sigma_noise`` times the scan's noise
    inside ``mask``. Only voxels in ``mask`` give or take scores. A score never falls.
    """
    spacing = tuple(spacing) if spacing is not None else (1.0,) * score.ndim
    if score.shape != guide.shape or score.shape != mask.shape or score.ndim != 3:
        raise ValueError(f"score, guide and mask must be one 3D shape, got {score.shape}, "
                         f"{guide.shape}, {mask.shape}")
    out = np.where(mask, score, np.float32(0)).astype(np.float32)
    offs = _offsets(spacing, radius_mm)
    if not offs or passes < 1 or not mask.any():
        return out
    # Work on the mask's bounding box: the head, not the air around it.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    g = np.asarray(guide, dtype=np.float32)[box]
    m = mask[box]
    inv = np.float32(-0.5 / (sigma_noise * noise_level(np.asarray(guide, np.float32), mask)) ** 2)
    cur = out[box]
    shape = cur.shape
    # The ball holds o and -o, whose weights are equal (d * d of -d is d * d to the bit):
    # one weight serves both directions, half the exponentials (session 65: 27-39 % faster).
    half = [o for o in offs if o > (0, 0, 0)]
    for _ in range(passes):
        src_score = cur.copy()
        for o in half:
            check_stop(stop_event, "anomaly scoring")
            dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(o, shape, strict=True))
            src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(o, shape, strict=True))
            diff = g[dst] - g[src]
            wgt = np.exp(diff * diff * inv)
            np.maximum(cur[dst], src_score[src] * wgt, out=cur[dst])
            np.maximum(cur[src], src_score[dst] * wgt, out=cur[src])
        cur[~m] = 0.0
    return out  # cur is a view of out's box


def rank_like(score: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``score`` given ``reference``'s values in ``mask`` by rank: the k-th lowest voxel of
    ``score`` takes the k-th lowest value of ``reference``. The order of the voxels (so best
    Dice and precision-recall) is ``score``'s, the share of the head above any threshold is
    ``reference``'s: :func:`guided_max` raises scores, and without this the calibrated
    threshold would flag more of the head than its false-positive rate says."""
    out = np.zeros(score.shape, dtype=np.float32)
    order = np.argsort(score[mask], kind="stable")
    vals = np.empty(order.size, dtype=np.float32)
    vals[order] = np.sort(reference[mask])
    out[mask] = vals
    return out


def across_slices(score: np.ndarray, ratio: float = ACROSS_RATIO, rule: str = "cap"
                  ) -> np.ndarray:
    """Each voxel's score capped at ``ratio`` times the higher of the voxels above and below
    it (one neighbour at the first and last slice), negative scores as 0; with ``rule``
    ``"geo"`` the geometric mean of the score and that neighbour's instead.

    On thick slices the denoiser reads each slice alone, so a tissue fold cut obliquely or a
    partial-volume patch stands out on one slice, while a lesion as thick as two slices
    stands out on both (session 47: on the 4 mm phantom the three false candidates lay on
    one slice each, the largest lesion on five).
    """
    s = np.maximum(np.asarray(score, dtype=np.float32), 0.0)
    nb = np.zeros_like(s)
    if s.shape[0] > 1:
        nb[:-1] = s[1:]
        np.maximum(nb[1:], s[:-1], out=nb[1:])
    if rule == "geo":
        return np.sqrt(s * nb)
    if rule != "cap":
        raise ValueError(f"unknown rule across slices {rule!r}: 'cap' or 'geo'")
    return np.minimum(s, np.float32(ratio) * nb)


def finish_mr(score: np.ndarray, volume: np.ndarray, mask: np.ndarray, spacing, flat: bool,
              surface: tuple[float, float] | None, guide: bool,
              stop_event: threading.Event | None = None, across: bool | str = True
              ) -> np.ndarray:
    """The denoiser's calibrated MR score made final: faded in over ``surface`` (mm inside
    the head; None: not faded), with ``across`` on thick slices held to the slices beside
    them (:func:`across_slices`, while :data:`ACROSS_SLICES`; a string names its rule,
    ``"normative"`` :data:`ACROSS_NORMATIVE`, True ``"cap"``), then, with ``guide``, drawn
    to its findings' edges (:func:`guided_max`), and given the faded score's values by rank
    (:func:`rank_like`). Scores of other methods pass with ``across`` and ``guide`` False
    and no ``surface``: unchanged.

    The fade comes first: guided before it, the scalp's and eyes' scores reached 10 mm past
    it into the brain (session 45: normative best Dice on a 1.2 mm head 0.498 against
    0.636). Voxels the fade sets to 0 neither give nor take a score, so nothing is found
    there still.
    """
    from .anomaly_masks import surface_fade

    keep = mask
    if surface:  # after calibration: the threshold keeps its rate, the surface flags less
        fade = surface_fade(mask, spacing, *surface)
        score = score * fade
        keep = mask & (fade > 0)
    rule = across if isinstance(across, str) else "cap"
    rule = ACROSS_NORMATIVE if rule == "normative" else rule
    across = across and ACROSS_SLICES and thick_slices(spacing, flat) and score.shape[0] > 1
    if not (guide or across):
        return score
    out = across_slices(score, rule=rule) if across else score
    if guide:
        out = guided_max(out, volume, keep, spacing3(spacing, flat), stop_event=stop_event)
    return rank_like(out, score, mask)  # the threshold keeps its false-positive rate
